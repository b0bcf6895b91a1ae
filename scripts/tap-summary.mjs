#!/usr/bin/env node
// Runs node-tap with the given arguments, passes its output through unchanged, then prints the
// closing line "N passed, N failed, N skipped" that CI reads, and exits with tap's own code.
// tap's own summary ("# { total: .. }") is not a format CI recognises, hence this wrapper.
import { spawn } from 'node:child_process'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'

const require = createRequire(import.meta.url)
const tapBin = join(dirname(require.resolve('tap/package.json')), 'dist/esm/run.mjs')

const child = spawn(process.execPath, [tapBin, ...process.argv.slice(2)], {
  stdio: ['inherit', 'pipe', 'inherit'],
})

let summary = null
let pending = ''
child.stdout.on('data', (buf) => {
  process.stdout.write(buf)
  pending += buf.toString('utf8')
  const lines = pending.split('\n')
  pending = lines.pop() ?? ''
  for (const line of lines) {
    // e.g. "# { total: 14, pass: 12, fail: 1, todo: 1, skip: 1 }"
    const m = /^# \{ (total: \d+.*) \}\s*$/.exec(line.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, ''))
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
  process.stdout.write(`\n${passed} passed, ${failed} failed, ${skipped} skipped\n`)
  process.exitCode = code
}

child.on('error', (err) => {
  console.error(err)
  finish(1)
})
child.on('close', (code, signal) => finish(code ?? (signal ? 1 : 0)))
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => child.kill(sig))
