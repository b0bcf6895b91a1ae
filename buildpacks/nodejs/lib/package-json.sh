#!/usr/bin/env bash
# buildpacks/nodejs/lib/package-json.sh: reading package.json with the build host's node.
#   package_json::field FILE DOTTED.FIELD   prints the field when it is a string, else nothing;
#                                           fails with the parse error when FILE is not JSON
#   package_json::facts DIR                 prints what compile needs, one per line, in one node
#                                           start (each start costs ~60 ms of a deploy):
#     1 engines.node   2 the build script to run (heroku-postbuild, else build, else empty)
#     3 scripts.start  4 the number of packages to install: the dependencies package.json
#     declares (all kinds) plus the packages its lock lists besides the app itself
#     5 npm's version (read from its package.json: `npm --version` starts all of npm)
#     6 node's version (v20.x.y)
#   and fails with the parse error when package.json or the lock is not JSON
#   package_json::web_command DIR           prints the release YAML of the default web process
#                                           (see bin/release)

package_json::field() {
  # node -e runs CommonJS whatever package.json around the buildpack says; the script is JS
  # shellcheck disable=SC2016
  node -e '
    const [file, field] = process.argv.slice(1)
    let value
    try {
      value = JSON.parse(require("node:fs").readFileSync(file, "utf8"))
    } catch (err) {
      console.error(`${file.split("/").pop()} is not valid JSON: ${err.message}`)
      process.exit(2)
    }
    for (const key of field.split(".")) value = value !== null && typeof value === "object" ? value[key] : undefined
    if (typeof value === "string") process.stdout.write(value)
  ' "$1" "$2"
}

package_json::facts() {
  # shellcheck disable=SC2016
  node -e '
    const fs = require("node:fs")
    const path = require("node:path")
    const [dir, npmBin] = process.argv.slice(1)
    const read = (name, file = path.join(dir, name)) => {
      if (!fs.existsSync(file)) return undefined
      try {
        return JSON.parse(fs.readFileSync(file, "utf8"))
      } catch (err) {
        console.error(`${name} is not valid JSON: ${err.message}`)
        process.exit(2)
      }
    }
    const pkg = read("package.json") ?? {}
    const lock = read("npm-shrinkwrap.json") ?? read("package-lock.json") ?? {}
    const str = (v) => (typeof v === "string" ? v.replace(/\n/g, " ") : "")
    const keys = (o) => (o !== null && typeof o === "object" ? Object.keys(o) : [])
    const scripts = pkg.scripts ?? {}
    const build = ["heroku-postbuild", "build"].find((s) => str(scripts[s]) !== "") ?? ""
    const kinds = ["dependencies", "devDependencies", "optionalDependencies", "peerDependencies", "bundleDependencies", "bundledDependencies"]
    const declared = kinds.reduce((n, k) => n + keys(pkg[k]).length, 0)
    const locked = keys(lock.packages).filter((k) => k !== "").length + keys(lock.dependencies).length
    let npm = ""
    // npm bin -> .../npm/bin/npm-cli.js; its package.json is one directory up
    for (let d = path.dirname(fs.realpathSync(npmBin)); d !== path.dirname(d); d = path.dirname(d)) {
      const p = read("the package.json of npm", path.join(d, "package.json"))
      if (p?.name === "npm") {
        npm = str(p.version)
        break
      }
    }
    const engines = pkg.engines ?? {}
    process.stdout.write([str(engines.node), build, str(scripts.start), declared + locked, npm, process.version].join("\n") + "\n")
  ' "$1" "$(command -v npm)"
}

package_json::web_command() {
  # shellcheck disable=SC2016
  node -e '
    const fs = require("node:fs")
    const dir = process.argv[1]
    const pkg = JSON.parse(fs.readFileSync(`${dir}/package.json`, "utf8"))
    const scripts = pkg.scripts ?? {}
    const str = (v) => (typeof v === "string" ? v : "")
    let start = str(scripts.start)
    if (start === "" && fs.existsSync(`${dir}/server.js`)) start = "node server.js"
    let web = start
    // A hook that must run around it, or a script YAML would need quoting: npm runs it.
    const plain = /^[A-Za-z0-9_.\/][A-Za-z0-9_.\/ =:,@%+-]*$/.test(start)
    if (start !== "" && (str(scripts.prestart) + str(scripts.poststart) !== "" || !plain)) web = "npm start"
    process.stdout.write(web === "" ? "--- {}\n" : `---\ndefault_process_types:\n  web: ${web}\n`)
  ' "$1"
}
