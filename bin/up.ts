/**
 * @module `bareku up`: a whole one-node Bareku on loopback, in the foreground. It runs the four
 * daemons as child processes (master, worker, client, frontend: in that order, each started once
 * the one before logged "ready"), writes their logs to BAREKU_HOME/log/DAEMON.log, restarts one
 * that dies (with backoff), and on Ctrl-C stops them in reverse order: the worker stops the apps'
 * processes too, and the next `bareku up` starts them again from the master's saved state.
 *
 * Each daemon gets its own process group, so Ctrl-C reaches only `up`, which then stops the
 * daemons in order (a daemon that got the terminal's SIGINT directly would race the others).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import {
  chmodSync,
  closeSync,
  createWriteStream,
  mkdirSync,
  openSync,
  readFileSync,
  unlinkSync,
  writeSync,
} from 'node:fs'
import { createServer, type AddressInfo } from 'node:net'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { AppError } from '../lib/errors.js'

// From the repository root's level, so that it holds in bin/ and in the bundle in dist/.
const BIN = fileURLToPath(new URL('../bin/bareku', import.meta.url))

export const UP_USAGE = `usage: bareku up [--port PORT] [--home DIR]

Starts a one-node Bareku on this machine in the foreground: master, worker, client and
frontend, with their logs in DIR/log/. Apps answer at http://NAME.localhost:PORT/.
Ctrl-C stops everything, apps included; the next 'bareku up' starts them again.

options and settings:
  --port PORT        the frontend's port on 127.0.0.1 (BAREKU_PORT, default 8080)
  --home DIR         state directory (BAREKU_HOME, default /var/lib/bareku as root, else ~/.bareku)
  BAREKU_MASTER_CONTROL, BAREKU_MASTER_PUBLISH, BAREKU_MASTER_STATS, BAREKU_MASTER_SLUGS,
  BAREKU_MASTER_LOGS
                     the master's endpoints (default tcp://127.0.0.1:7070 to 7074)
`

/** How long a daemon may take to log "ready". */
const START_TIMEOUT_MS = 60_000

/** The master's endpoints (its ready line) and the settings that name them. */
const MASTER_ENDPOINTS = {
  control: 'BAREKU_MASTER_CONTROL',
  publish: 'BAREKU_MASTER_PUBLISH',
  stats: 'BAREKU_MASTER_STATS',
  slugs: 'BAREKU_MASTER_SLUGS',
  logs: 'BAREKU_MASTER_LOGS',
} as const

interface UpOptions {
  home: string
  port: number
}

export function parseUpArgs(args: string[], env: NodeJS.ProcessEnv): UpOptions {
  let port = env.BAREKU_PORT || '8080'
  let home = env.BAREKU_HOME || defaultHome(env)
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!
    if (arg === '--port') port = args[++i] ?? ''
    else if (arg.startsWith('--port=')) port = arg.slice(7)
    else if (arg === '--home') home = args[++i] ?? ''
    else if (arg.startsWith('--home=')) home = arg.slice(7)
    else throw new AppError('E_CONFIG', `bareku up: unknown argument "${arg}"\n\n${UP_USAGE}`)
  }
  const n = Number(port)
  if (!/^[0-9]+$/.test(port) || n > 65535) {
    throw new AppError(
      'E_CONFIG',
      `bareku up: --port must be 0..65535, got "${port}" (e.g. --port 8080)`,
    )
  }
  if (!home.startsWith('/')) {
    throw new AppError('E_CONFIG', `bareku up: the home must be an absolute path, got "${home}"`)
  }
  return { home, port: n }
}

async function freePort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

export function defaultHome(env: NodeJS.ProcessEnv): string {
  return process.getuid?.() === 0 ? '/var/lib/bareku' : join(env.HOME || '/tmp', '.bareku')
}

interface Daemon {
  name: 'master' | 'worker' | 'client' | 'frontend'
  child?: ChildProcess
  ready?: Record<string, unknown>
  restarts: number
}

/** Takes run/up.lock, or says which `bareku up` holds it. */
function lock(home: string): () => void {
  const path = join(home, 'run', 'up.lock')
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, 'wx')
      writeSync(fd, `${process.pid}\n`)
      closeSync(fd)
      return () => unlinkSync(path)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      const pid = Number(readFileSync(path, 'utf8').trim())
      let alive: boolean
      try {
        process.kill(pid, 0)
        alive = pid > 0
      } catch {
        alive = false
      }
      if (alive) {
        throw new AppError(
          'E_CONFIG',
          `another 'bareku up' (pid ${pid}) runs with ${home}: stop it (Ctrl-C there, or kill ${pid}) or use --home`,
        )
      }
      unlinkSync(path)
    }
  }
  throw new AppError('E_CONFIG', `cannot take ${path}: remove it if no 'bareku up' runs`)
}

export async function up(args: string[], env: NodeJS.ProcessEnv): Promise<void> {
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(UP_USAGE)
    return
  }
  const opts = parseUpArgs(args, env)
  // Apps' URLs name the port, so port 0 is resolved here, once, rather than by the frontend.
  if (opts.port === 0) opts.port = await freePort()
  for (const dir of ['run', 'log', 'repos', 'slugs'])
    mkdirSync(join(opts.home, dir), { recursive: true })
  // Apps run as nobody when we are root: they must be able to reach their slugs under the home.
  if (process.getuid?.() === 0) chmodSync(opts.home, 0o755)
  const unlock = lock(opts.home)
  let control = env.BAREKU_MASTER_CONTROL || 'tcp://127.0.0.1:7070'
  const daemonEnv: NodeJS.ProcessEnv = {
    ...env,
    BAREKU_HOME: opts.home,
    BAREKU_MASTER: control,
    BAREKU_MASTER_CONTROL: control,
    BAREKU_FRONTEND_PORT: String(opts.port),
    BAREKU_FRONTEND_LISTEN: `127.0.0.1:${opts.port}`,
    BAREKU_NODE: env.BAREKU_NODE || hostname().replace(/[^A-Za-z0-9_.-]/g, '-') || 'node1',
    BAREKU_WORKER_STOP_ON_EXIT: '1',
    // The daemons' "ready" lines are at info: a quieter level would hide them from us.
    LOG_LEVEL: ['debug', 'trace'].includes(env.LOG_LEVEL ?? '') ? env.LOG_LEVEL : 'info',
  }
  const daemons: Daemon[] = (['master', 'worker', 'client', 'frontend'] as const).map((name) => ({
    name,
    restarts: 0,
  }))
  let stopping = false

  const start = (d: Daemon): Promise<void> =>
    new Promise((resolve, reject) => {
      const log = createWriteStream(join(opts.home, 'log', `${d.name}.log`), { flags: 'a' })
      const child = spawn(BIN, [d.name], {
        env: daemonEnv,
        detached: true,
        stdio: ['ignore', 'pipe', 'pipe'],
      })
      d.child = child
      const startTimer = setTimeout(() => {
        child.kill('SIGKILL')
        reject(
          new AppError(
            'E_CONFIG',
            `the ${d.name} was not ready within ${START_TIMEOUT_MS / 1000} s; see ${join(opts.home, 'log', `${d.name}.log`)}`,
          ),
        )
      }, START_TIMEOUT_MS)
      let pending = ''
      let lastLine = ''
      child.stderr.pipe(log, { end: false })
      child.stdout.on('data', (chunk: Buffer) => {
        log.write(chunk)
        pending += chunk.toString('utf8')
        const lines = pending.split('\n')
        pending = lines.pop() ?? ''
        for (const line of lines) {
          let rec: Record<string, unknown> | undefined
          try {
            rec = JSON.parse(line) as Record<string, unknown>
          } catch {
            continue
          }
          if (rec.msg === 'ready' && d.ready === undefined) {
            d.ready = rec
            clearTimeout(startTimer)
            resolve()
          }
          if (typeof rec.level === 'number' && rec.level >= 50)
            lastLine = String(rec.err ?? rec.msg)
        }
      })
      child.stderr.on('data', (chunk: Buffer) => {
        const text = chunk.toString('utf8').trim()
        if (text) lastLine = text.split('\n').pop()!
      })
      child.on('exit', (code, signal) => {
        clearTimeout(startTimer)
        log.end()
        d.child = undefined
        if (d.ready === undefined) {
          reject(
            new AppError(
              'E_CONFIG',
              `the ${d.name} did not start (${signal ?? `exit ${code}`}): ${lastLine || 'no output'}; see ${join(opts.home, 'log', `${d.name}.log`)}`,
            ),
          )
          return
        }
        if (stopping) return
        d.restarts++
        const delay = Math.min(1000 * 2 ** Math.min(d.restarts - 1, 6), 60_000)
        process.stderr.write(
          ` !     the ${d.name} stopped (${signal ?? `exit ${code}`}: ${lastLine}); restarting in ${delay / 1000} s\n`,
        )
        setTimeout(() => {
          if (stopping) return
          d.ready = undefined
          start(d).catch((err: unknown) =>
            process.stderr.write(` !     ${(err as Error).message}\n`),
          )
        }, delay)
      })
    })

  const stopAll = async (): Promise<void> => {
    stopping = true
    for (const d of [...daemons].reverse()) {
      const child = d.child
      if (!child) continue
      const gone = new Promise((r) => child.once('exit', r))
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 70_000)
      await gone
      clearTimeout(timer)
    }
  }

  try {
    for (const d of daemons) {
      process.stdout.write(`-----> Starting the ${d.name}\n`)
      await start(d)
      if (d.name === 'master') {
        // With port 0 the master picked its ports: the others (and a restarted master) use those.
        const bound = (d.ready?.endpoints as Record<string, string> | undefined) ?? {}
        for (const [key, name] of Object.entries(MASTER_ENDPOINTS)) {
          if (bound[key]) daemonEnv[name] = bound[key]
        }
        control = daemonEnv.BAREKU_MASTER_CONTROL!
        daemonEnv.BAREKU_MASTER = control
      }
    }
  } catch (err) {
    await stopAll()
    unlock()
    throw err
  }
  const url = `http://APP.localhost:${opts.port}/`
  process.stdout.write(
    [
      '',
      `=====> Bareku is up (home ${opts.home}, logs in ${join(opts.home, 'log')})`,
      `       apps answer at ${url}`,
      `       master control API at ${control}`,
      '',
      '       Next, in another terminal:',
      '         ./bareku apps:create myapp',
      `         git remote add bareku ${join(opts.home, 'repos', 'myapp.git')}`,
      '         git push bareku master',
      `         curl http://myapp.localhost:${opts.port}/`,
      '',
      '       Ctrl-C stops Bareku and its apps; ./bareku up starts them again.',
      '',
    ].join('\n'),
  )
  await new Promise<void>((resolve) => {
    const onSignal = (): void => {
      if (stopping) return
      process.stdout.write('\n-----> Stopping (apps first, then the daemons)\n')
      void stopAll().then(resolve)
    }
    process.on('SIGINT', onSignal)
    process.on('SIGTERM', onSignal)
  })
  unlock()
  process.stdout.write('=====> Bareku stopped\n')
}
