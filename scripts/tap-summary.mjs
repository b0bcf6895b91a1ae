#!/usr/bin/env node
// Runs node-tap with the given arguments, passes its output through unchanged, then prints the
// closing line "N passed, N failed, N skipped" that CI reads, and exits with tap's own code.
// tap's own summary ("# { total: .. }") is not a format CI recognises, hence this wrapper.
// Every failed assertion is listed again just above that line, with its subtest path and the
// start of its diagnostics: CI keeps only the end of a long log, and the coverage table that
// tap prints after the tests would push the failures out of it. A test file that died (a
// signal, an exit) is listed with the subtest it was in and the last lines of stderr, since a
// native crash explains itself only there.
import { spawn } from 'node:child_process'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'

const require = createRequire(import.meta.url)
const tapBin = join(dirname(require.resolve('tap/package.json')), 'dist/esm/run.mjs')

const child = spawn(process.execPath, [tapBin, ...process.argv.slice(2)], {
  stdio: ['inherit', 'pipe', 'pipe'],
})

/** the last lines of stderr, from every test file at once (they run in parallel) */
const STDERR_LINES = 40
const stderrTail = []
let stderrPending = ''
child.stderr.on('data', (buf) => {
  process.stderr.write(buf)
  stderrPending += buf.toString('utf8')
  const lines = stderrPending.split('\n')
  stderrPending = lines.pop() ?? ''
  stderrTail.push(...lines)
  if (stderrTail.length > STDERR_LINES) stderrTail.splice(0, stderrTail.length - STDERR_LINES)
})

let summary = null
let pending = ''
/** open "# Subtest: NAME" lines by indent, to name where a failure sits */
const subtests = []
/** every "not ok" with its path and up to MAX_DIAG lines of its YAML block */
const failures = []
const MAX_DIAG = 20
const SKIP_KEYS = new Set(['at', 'source', 'stdio', 'cwd', 'command', 'args'])
let diag = null

const track = (line) => {
  const indent = /^ */.exec(line)[0].length
  const text = line.slice(indent)
  if (diag) {
    if (indent > diag.indent && text !== '...') {
      // where the assertion sits is already in its path and stack: keep what went wrong
      const key = /^(\w+):/.exec(text)
      if (indent === diag.indent + 2 && key) diag.skipping = SKIP_KEYS.has(key[1])
      if (!diag.skipping && text !== '---' && diag.lines.length < MAX_DIAG)
        diag.lines.push(line.slice(diag.indent + 2))
      return
    }
    diag = null
  }
  const sub = /^# Subtest: (.*)$/.exec(text)
  if (sub) {
    while (subtests.length > 0 && subtests.at(-1).indent >= indent) subtests.pop()
    subtests.push({ indent, name: sub[1] })
    return
  }
  const result = /^(not )?ok \d+/.exec(text)
  if (!result) return
  if (result[1]) {
    // the subtest lines of an assertion sit 4 columns deeper than it, except its own
    const path = subtests.filter((s) => s.indent <= indent).map((s) => s.name)
    // subtests still open below a failed one never finished: its process died in them
    const running = subtests.filter((s) => s.indent > indent).map((s) => s.name)
    const failure = { path, running, line: text, indent, lines: [], skipping: false }
    failures.push(failure)
    diag = failure
  }
  // a result closes its own subtest (same indent) and any finished ones inside it
  while (subtests.length > 0 && subtests.at(-1).indent >= indent) subtests.pop()
}
child.stdout.on('data', (buf) => {
  process.stdout.write(buf)
  pending += buf.toString('utf8')
  const lines = pending.split('\n')
  pending = lines.pop() ?? ''
  for (const line of lines) {
    // e.g. "# { total: 14, pass: 12, fail: 1, todo: 1, skip: 1 }"
    const plain = line.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '')
    track(plain)
    const m = /^# \{ (total: \d+.*) \}\s*$/.exec(plain)
    if (m)
      summary = Object.fromEntries(
        [...m[1].matchAll(/(\w+): (\d+)/g)].map(([, k, v]) => [k, Number(v)]),
      )
  }
})

const finish = (code) => {
  const s = summary ?? {}
  const passed = s.pass ?? 0
  let failed = s.fail ?? 0
  if (code !== 0 && failed === 0) {
    // a runner crash, no test files, or a file that died outside an assertion
    process.stderr.write(`tap exited with code ${code} although no assertion failed\n`)
    failed = 1
  }
  const skipped = (s.skip ?? 0) + (s.todo ?? 0)
  // a failed subtest is also a "not ok" in its parent: list only the innermost ones
  const leaves = failures.filter(
    (f, i) => !failures.slice(0, i).some((g) => g.indent > f.indent && startsWith(g.path, f.path)),
  )
  if (leaves.length > 0) {
    process.stdout.write(`\n# failed (${leaves.length}):\n`)
    for (const f of leaves) {
      process.stdout.write(`# ${[...f.path, f.line].join(' > ')}\n`)
      if (f.running.length > 0) process.stdout.write(`#   died in: ${f.running.join(' > ')}\n`)
      for (const l of f.lines) process.stdout.write(`#   ${l}\n`)
    }
    if (leaves.some((f) => f.lines.some((l) => /^(signal|exitCode): [^n]/.test(l)))) {
      process.stdout.write(`# the last ${STDERR_LINES} lines of stderr (all files):\n`)
      for (const l of [...stderrTail, stderrPending]) if (l) process.stdout.write(`#   ${l}\n`)
    }
  }
  process.stdout.write(`\n${passed} passed, ${failed} failed, ${skipped} skipped\n`)
  process.exitCode = code
}

const startsWith = (path, prefix) => prefix.every((p, i) => path[i] === p)

child.on('error', (err) => {
  console.error(err)
  finish(1)
})
child.on('close', (code, signal) => finish(code ?? (signal ? 1 : 0)))
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => child.kill(sig))
