#!/usr/bin/env bash
# buildpacks/nodejs/lib/package-json.sh: reading package.json with the build host's node.
#   package_json::field FILE DOTTED.FIELD   prints the field when it is a string, else nothing;
#                                           fails with the parse error when FILE is not JSON

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
