/**
 * @module Real processes in tests: spawn one, wait for a line it prints (never a sleep), and stop
 * it in teardown with SIGTERM, then SIGKILL after a deadline.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'

export const REPO = fileURLToPath(new URL('../../', import.meta.url))

// Children still running. A test file killed by tap's timeout never runs its teardown, so
// they are killed here when this process exits or is told to stop: no strays outlive a test.
const live = new Set<ChildProcess>()
function killAll(): void {
  for (const child of live) child.kill('SIGKILL')
}
process.on('exit', killAll)
// tap ends a test file that outlives its timeout with SIGALRM.
for (const signal of ['SIGTERM', 'SIGINT', 'SIGALRM'] as const) {
  process.once(signal, () => {
    killAll()
    process.exit(1)
  })
}

export interface Proc {
  child: ChildProcess
  /** Every line printed so far, stdout and stderr. */
  lines: string[]
  /** Resolves with the first line (past or future) that matches; rejects on exit or timeout. */
  waitFor(match: RegExp | ((line: string) => boolean), timeoutMs?: number): Promise<string>
  /** SIGTERM, SIGKILL after `graceMs`; resolves with the exit code (or signal name). */
  stop(graceMs?: number): Promise<number | string>
  exited: Promise<number | string>
}

export function startProcess(
  command: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {},
): Proc {
  const child = spawn(command, args, {
    cwd: opts.cwd ?? REPO,
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const lines: string[] = []
  const waiters = new Set<(line: string) => void>()
  for (const stream of [child.stdout, child.stderr]) {
    let pending = ''
    stream.setEncoding('utf8')
    stream.on('data', (chunk: string) => {
      pending += chunk
      const parts = pending.split('\n')
      pending = parts.pop() ?? ''
      for (const line of parts) {
        lines.push(line)
        for (const w of waiters) w(line)
      }
    })
  }
  live.add(child)
  const exited = new Promise<number | string>((resolve) => {
    child.on('exit', (code, signal) => {
      live.delete(child)
      resolve(code ?? signal ?? -1)
    })
  })
  const proc: Proc = {
    child,
    lines,
    exited,
    waitFor(match, timeoutMs = 15_000) {
      const test = typeof match === 'function' ? match : (l: string) => match.test(l)
      const seen = lines.find(test)
      if (seen !== undefined) return Promise.resolve(seen)
      return new Promise((resolve, reject) => {
        const done = (fn: () => void): void => {
          clearTimeout(timer)
          waiters.delete(waiter)
          fn()
        }
        const waiter = (line: string): void => {
          if (test(line)) done(() => resolve(line))
        }
        const timer = setTimeout(
          () =>
            done(() =>
              reject(
                new Error(
                  `timed out waiting for ${String(match)} from ${command}; output:\n${lines.slice(-20).join('\n')}`,
                ),
              ),
            ),
          timeoutMs,
        )
        waiters.add(waiter)
        void exited.then((code) =>
          done(() =>
            reject(
              new Error(
                `${command} exited (${code}) before printing ${String(match)}; output:\n${lines.slice(-20).join('\n')}`,
              ),
            ),
          ),
        )
      })
    },
    async stop(graceMs = 5000) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM')
        const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
        const code = await exited
        clearTimeout(timer)
        return code
      }
      return exited
    },
  }
  return proc
}

/** Parses a pino JSON log line, or returns undefined for any other line. */
export function logRecord(line: string): Record<string, unknown> | undefined {
  if (!line.startsWith('{')) return undefined
  try {
    return JSON.parse(line) as Record<string, unknown>
  } catch {
    return undefined
  }
}
