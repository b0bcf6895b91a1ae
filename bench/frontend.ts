/**
 * @module bench/frontend: our frontend against the real Mongrel2 1.12 (handler routes) and nginx
 * (proxy routes), on this machine over loopback, with wrk as the client. Prints a Markdown table
 * (req/s, p50, p99, errors, frontend and handler CPU per request) and the ratios the project's
 * targets are about. See bench/README.md.
 *
 *   npm run bench:frontend                     (about a minute)
 *   BENCH_SECONDS=10 npm run bench:frontend    measured seconds per row (default 5)
 *   BENCH_PROFILE=1 npm run bench:frontend     also profile our frontend under the node handler
 *   BENCH_FLOOR=0 npm run bench:frontend       without the floor rows (bench/floor-frontend.ts)
 *
 * Every process it starts gets its own process group, and every group is stopped at the end,
 * also on failure or Ctrl-C. Exit 0 when the benchmark ran (a missed target is only marked
 * FAIL); exit 1 when something could not run.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { request } from 'node:http'
import { createServer } from 'node:net'
import { availableParallelism, tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const REPO = fileURLToPath(new URL('../', import.meta.url))
const HELLO_TS = join(REPO, 'bench/handlers/hello.ts')
const TSX_LOADER = join(REPO, 'node_modules/tsx/dist/loader.mjs')
const HELLO_PY = join(REPO, 'bench/handlers/hello.py')
const FLOOR_TS = join(REPO, 'bench/floor-frontend.ts')
const PYTHON = '/usr/bin/python3' // Debian's python3-zmq is for this one, not a pyenv python3
const MONGREL2 = '/usr/bin/mongrel2'
const M2SH = '/usr/bin/m2sh'
const NGINX = '/usr/sbin/nginx'

const SECONDS = positiveInt(process.env.BENCH_SECONDS, 5)
const WARMUP_SECONDS = 1
const CONNECTIONS = 50
const PROFILE = process.env.BENCH_PROFILE === '1'
const FLOOR = process.env.BENCH_FLOOR !== '0'
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout) || 100

const SERVER_UUID = 'f400bf85-4538-4f7a-8908-67e313d515c2'
const SEND_IDENT = 'c0ffee00-0000-4000-8000-00000000b001'

type HandlerKind = 'node' | 'python'
type FrontendKind = 'mongrel2' | 'ours' | 'floor'

function positiveInt(value: string | undefined, fallback: number): number {
  if (value === undefined || value === '') return fallback
  const n = Number(value)
  if (!Number.isInteger(n) || n < 1) {
    console.error(`bench: BENCH_SECONDS must be a whole number of seconds >= 1, got "${value}"`)
    process.exit(1)
  }
  return n
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

// ------------------------------------------------------------------ tools

/** Installs wrk, Mongrel2, nginx and python3-zmq when missing (as root), or says how. */
function ensureTools(): void {
  const missing: string[] = []
  if (spawnSync('wrk', ['--version']).error) missing.push('wrk')
  if (!existsSync(MONGREL2) || !existsSync(M2SH)) missing.push('mongrel2-core')
  if (!existsSync(NGINX)) missing.push(nginxPackage())
  if (spawnSync(PYTHON, ['-c', 'import zmq']).status !== 0) missing.push('python3-zmq')
  if (missing.length === 0) return
  const line = `apt-get install -y ${missing.join(' ')}`
  if (process.getuid?.() !== 0) {
    console.error(`bench: missing ${missing.join(', ')}; install them as root:\n  ${line}`)
    process.exit(1)
  }
  console.error(`bench: installing ${missing.join(', ')}: ${line}`)
  const r = spawnSync('apt-get', ['install', '-y', ...missing], {
    stdio: 'inherit',
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
  })
  if (r.status !== 0) {
    console.error(`bench: "${line}" failed; try "apt-get update" first`)
    process.exit(1)
  }
}

/** nginx-light where the archive has it (Debian 12), nginx-core otherwise. */
function nginxPackage(): string {
  const policy = spawnSync('apt-cache', ['policy', 'nginx-light'], { encoding: 'utf8' }).stdout
  const candidate = /Candidate:\s*(\S+)/.exec(policy ?? '')?.[1]
  return candidate !== undefined && candidate !== '(none)' ? 'nginx-light' : 'nginx-core'
}

function versionOf(pkg: string): string {
  const r = spawnSync('dpkg-query', ['-W', '-f', '${Version}', pkg], { encoding: 'utf8' })
  return r.status === 0 ? r.stdout : '?'
}

// ------------------------------------------------------------------ processes

interface Proc {
  name: string
  child: ChildProcess
  pid: number
  /** The last lines printed, stdout and stderr, for error messages. */
  lines: string[]
  exited: Promise<void>
  /** Resolves at the first line that matches; rejects if the process exits or time runs out. */
  waitFor(match: RegExp, timeoutMs: number): Promise<void>
}

/** Every process group started and not yet stopped. */
const running = new Set<Proc>()

function start(
  name: string,
  command: string,
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
): Proc {
  const child = spawn(command, args, {
    cwd: opts.cwd ?? REPO,
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true, // its own process group, so stop() reaches its children too
  })
  if (child.pid === undefined) throw new Error(`cannot start ${name} (${command})`)
  const lines: string[] = []
  const listeners = new Set<(line: string) => void>()
  for (const stream of [child.stdout, child.stderr]) {
    let pending = ''
    stream.setEncoding('utf8')
    stream.on('data', (chunk: string) => {
      const parts = (pending + chunk).split('\n')
      pending = parts.pop() ?? ''
      for (const line of parts) {
        lines.push(line)
        if (lines.length > 200) lines.shift()
        for (const listener of listeners) listener(line)
      }
    })
  }
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()))
  const proc: Proc = {
    name,
    child,
    pid: child.pid,
    lines,
    exited,
    waitFor(match, timeoutMs) {
      if (lines.some((l) => match.test(l))) return Promise.resolve()
      return new Promise((resolve, reject) => {
        const done = (err?: Error): void => {
          clearTimeout(timer)
          listeners.delete(listener)
          if (err) reject(err)
          else resolve()
        }
        const listener = (line: string): void => {
          if (match.test(line)) done()
        }
        const timer = setTimeout(
          () => done(new Error(`${name} printed no ${String(match)} in ${timeoutMs} ms`)),
          timeoutMs,
        )
        listeners.add(listener)
        void exited.then(() => done(new Error(`${name} exited before printing ${String(match)}`)))
      })
    },
  }
  running.add(proc)
  return proc
}

function alive(proc: Proc): boolean {
  return proc.child.exitCode === null && proc.child.signalCode === null
}

function killGroup(proc: Proc, signal: NodeJS.Signals): void {
  try {
    process.kill(-proc.pid, signal)
  } catch {
    // the group is gone already
  }
}

/** SIGTERM to the process group, SIGKILL after `graceMs`; resolves once the leader is gone. */
async function stop(proc: Proc | undefined, graceMs = 5000): Promise<void> {
  if (proc === undefined) return
  if (alive(proc)) {
    killGroup(proc, 'SIGTERM')
    const timer = setTimeout(() => killGroup(proc, 'SIGKILL'), graceMs)
    await proc.exited
    clearTimeout(timer)
  }
  killGroup(proc, 'SIGKILL') // whatever the leader left behind in its group
  running.delete(proc)
}

function killAll(): void {
  for (const proc of running) killGroup(proc, 'SIGKILL')
  running.clear()
}

process.on('exit', killAll)
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    console.error(`bench: ${signal}, stopping everything`)
    killAll()
    process.exit(1)
  })
}

function failure(proc: Proc, what: string): Error {
  const tail = proc.lines.slice(-15).join('\n')
  return new Error(`${what}; last output of ${proc.name}:\n${tail || '(none)'}`)
}

// ------------------------------------------------------------------ network

/** `n` distinct free TCP ports on 127.0.0.1: bind port 0 `n` times, read the numbers, close. */
async function freePorts(n: number): Promise<number[]> {
  const servers = Array.from({ length: n }, () => createServer())
  const ports = await Promise.all(
    servers.map(
      (server) =>
        new Promise<number>((resolve, reject) => {
          server.on('error', reject)
          server.listen(0, '127.0.0.1', () => {
            const address = server.address()
            resolve(typeof address === 'object' && address !== null ? address.port : 0)
          })
        }),
    ),
  )
  await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))))
  return ports
}

/** One GET /bench on a fresh connection: the status, or 0 for no answer within `timeoutMs`. */
function probe(port: number, timeoutMs = 1000): Promise<number> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path: '/bench', agent: false }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode ?? 0))
      res.on('error', () => resolve(0))
    })
    req.setTimeout(timeoutMs, () => req.destroy())
    req.on('error', () => resolve(0))
    req.end()
  })
}

/**
 * Probes until a 200 or the deadline; returns the last status (0: never answered). A steady
 * non-200 answer (a route that is not there) ends the wait after `settleMs`.
 */
async function waitOk(
  port: number,
  procs: Proc[],
  deadlineMs = 20_000,
  settleMs = 3000,
): Promise<number> {
  const start = Date.now()
  let firstAnswer = 0
  let status = 0
  while (Date.now() - start < deadlineMs) {
    for (const p of procs) if (!alive(p)) throw failure(p, `${p.name} exited`)
    status = await probe(port)
    if (status === 200) return status
    if (status !== 0 && firstAnswer === 0) firstAnswer = Date.now()
    if (firstAnswer !== 0 && Date.now() - firstAnswer > settleMs) return status
    await sleep(100)
  }
  return status
}

// ------------------------------------------------------------------ CPU time

interface Ticks {
  user: number
  sys: number
}

/** utime and stime, in clock ticks, summed over every process in process group `pgid`. */
function groupTicks(pgid: number): Ticks {
  const ticks = { user: 0, sys: 0 }
  for (const entry of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(entry)) continue
    let stat: string
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'latin1')
    } catch {
      continue // exited meanwhile
    }
    // Fields after the ")" closing the command name start at field 3 (state).
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    if (Number(fields[5 - 3]) !== pgid) continue
    ticks.user += Number(fields[14 - 3])
    ticks.sys += Number(fields[15 - 3])
  }
  return ticks
}

/** Busy clock ticks of the whole machine, all cores (the "cpu" line of /proc/stat). */
function machineBusyTicks(): number {
  const cpu = readFileSync('/proc/stat', 'latin1').split('\n')[0]!.split(/\s+/).slice(1)
  const [user, nice, system, , , irq, softirq, steal] = cpu.map(Number)
  return user! + nice! + system! + irq! + softirq! + (steal ?? 0)
}

function cmdline(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean)
  } catch {
    return []
  }
}

// ------------------------------------------------------------------ wrk

interface WrkResult {
  requests: number
  rps: number
  p50ms: number
  p99ms: number
  non2xx: number
  socketErrors: number
  socketDetail: string
}

const UNIT_MS: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000 }

function parseWrk(out: string): WrkResult {
  const num = (re: RegExp): number | undefined => {
    const m = re.exec(out)
    return m ? Number(m[1]) : undefined
  }
  const latency = (pct: string): number => {
    const m = new RegExp(`^\\s*${pct}%\\s+([0-9.]+)(us|ms|s|m)\\s*$`, 'm').exec(out)
    if (!m) throw new Error(`no ${pct}% latency in wrk's output:\n${out}`)
    return Number(m[1]) * UNIT_MS[m[2]!]!
  }
  const requests = num(/^\s*([0-9]+) requests in /m)
  const rps = num(/^Requests\/sec:\s+([0-9.]+)/m)
  if (requests === undefined || rps === undefined) throw new Error(`unexpected wrk output:\n${out}`)
  const sock =
    /Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+)/.exec(out)
  const counts = sock ? sock.slice(1, 5).map(Number) : [0, 0, 0, 0]
  const names = ['connect', 'read', 'write', 'timeout']
  return {
    requests,
    rps,
    p50ms: latency('50'),
    p99ms: latency('99'),
    non2xx: num(/Non-2xx or 3xx responses: ([0-9]+)/) ?? 0,
    socketErrors: counts.reduce((a, b) => a + b, 0),
    socketDetail: names
      .map((n, i) => (counts[i] ? `${n} ${counts[i]}` : ''))
      .filter(Boolean)
      .join(', '),
  }
}

/** Runs wrk against /bench for `seconds`, killed if it overruns by 15 s. */
async function wrk(port: number, seconds: number): Promise<WrkResult> {
  const args = ['-t1', `-c${CONNECTIONS}`, `-d${seconds}s`, '--latency']
  const proc = start('wrk', 'wrk', [...args, `http://127.0.0.1:${port}/bench`])
  const timer = setTimeout(() => killGroup(proc, 'SIGKILL'), (seconds + 15) * 1000)
  try {
    await proc.exited
  } finally {
    clearTimeout(timer)
    await stop(proc)
  }
  if (proc.child.exitCode !== 0) throw failure(proc, `wrk failed (${proc.child.exitCode})`)
  return parseWrk(proc.lines.join('\n'))
}

interface Measured {
  wrk: WrkResult
  /** CPU time per request, µs (user + sys): the frontend's process group and the handler's. */
  frontendUs: number
  handlerUs: number
  /** The frontend's share of it in system calls (stime), µs per request. */
  frontendSysUs: number
  /** Cores kept busy by everything else on the machine meanwhile: wrk, and anything not ours. */
  otherCores: number
  /** The measured window on the monotonic clock, µs (for cutting a CPU profile to it). */
  window: [number, number]
}

/** A 1 s warm-up, then the measured wrk run with the CPU time of both process groups around it. */
async function measure(port: number, frontend: Proc, handler: Proc): Promise<Measured> {
  await wrk(port, WARMUP_SECONDS)
  const fe0 = groupTicks(frontend.pid)
  const h0 = groupTicks(handler.pid)
  const busy0 = machineBusyTicks()
  const t0 = Number(process.hrtime.bigint() / 1000n)
  const result = await wrk(port, SECONDS)
  const t1 = Number(process.hrtime.bigint() / 1000n)
  const busy1 = machineBusyTicks()
  const fe1 = groupTicks(frontend.pid)
  const h1 = groupTicks(handler.pid)
  for (const p of [frontend, handler]) if (!alive(p)) throw failure(p, `${p.name} died under load`)
  const perRequest = (ticks: number): number =>
    result.requests > 0 ? ((ticks / CLK_TCK) * 1e6) / result.requests : Number.NaN
  const ours = fe1.user + fe1.sys - fe0.user - fe0.sys + h1.user + h1.sys - h0.user - h0.sys
  return {
    wrk: result,
    frontendUs: perRequest(fe1.user + fe1.sys - fe0.user - fe0.sys),
    handlerUs: perRequest(h1.user + h1.sys - h0.user - h0.sys),
    frontendSysUs: perRequest(fe1.sys - fe0.sys),
    otherCores: (busy1 - busy0 - ours) / CLK_TCK / ((t1 - t0) / 1e6),
    window: [t0, t1],
  }
}

// ------------------------------------------------------------------ servers

/** An m2sh config with one server on 127.0.0.1:`port` whose only route, /bench, is `target`. */
function m2shConfig(port: number, target: string): string {
  return `# written by bench/frontend.ts
bench = ${target}

main = Server(uuid='${SERVER_UUID}',
              access_log='/logs/access.log',
              error_log='/logs/error.log',
              chroot='./',
              pid_file='/run/mongrel2.pid',
              control_port='ipc://run/control',
              default_host='localhost',
              name='main',
              bind_addr='127.0.0.1',
              port=${port},
              hosts=[Host(name='localhost', routes={'/bench': bench})])

settings = {'server.daemonize': 0, 'disable.access_logging': 1, 'zeromq.threads': 1}

servers = [main]
`
}

function handlerTarget(sendPort: number, recvPort: number): string {
  return (
    `Handler(send_spec='tcp://127.0.0.1:${sendPort}', send_ident='${SEND_IDENT}', ` +
    `recv_spec='tcp://127.0.0.1:${recvPort}', recv_ident='')`
  )
}

function startMongrel2(dir: string, conf: string): Proc {
  for (const sub of ['logs', 'run', 'tmp']) mkdirSync(join(dir, sub))
  writeFileSync(join(dir, 'mongrel2.conf'), conf)
  const load = spawnSync(M2SH, ['load', '-config', 'mongrel2.conf', '-db', 'config.sqlite'], {
    cwd: dir,
    encoding: 'utf8',
  })
  if (load.status !== 0) throw new Error(`m2sh load failed:\n${load.stdout}${load.stderr}`)
  // As root it chroots to its dir ('./'); LOGNAME spares a warning there is no login to ask.
  return start('mongrel2', MONGREL2, ['config.sqlite', SERVER_UUID], {
    cwd: dir,
    env: { LOGNAME: 'root' },
  })
}

/** Ours, through bin/bareku (which execs node), or node directly with --cpu-prof. */
function startOurs(dir: string, conf: string, port: number, profileDir?: string): Proc {
  const file = join(dir, 'frontend.conf')
  writeFileSync(file, conf)
  const env = { BAREKU_FRONTEND_LISTEN: `127.0.0.1:${port}`, LOG_LEVEL: 'warn' }
  if (profileDir === undefined) {
    return start('our frontend', join(REPO, 'bin/bareku'), ['frontend', '--config', file], {
      cwd: dir,
      env,
    })
  }
  const args = ['--import', TSX_LOADER, '--cpu-prof', '--cpu-prof-dir', profileDir]
  return start(
    'our frontend (profiled)',
    process.execPath,
    [...args, join(REPO, 'bin/bareku.ts'), 'frontend', '--config', file],
    { cwd: dir, env },
  )
}

/** The platform's floor, bench/floor-frontend.ts with `args` (its mode first): node itself. */
function startFloor(...args: (string | number)[]): Proc {
  return start('floor frontend', process.execPath, [
    '--import',
    TSX_LOADER,
    FLOOR_TS,
    ...args.map(String),
  ])
}

/** Checks that a frontend's pid is node itself (bin/bareku execs it), so /proc counts node. */
function checkIsNode(proc: Proc): void {
  const argv = cmdline(proc.pid)
  if (!/(^|\/)node[0-9.]*$/.test(argv[0] ?? '')) {
    throw new Error(
      `pid ${proc.pid} is "${argv.join(' ')}", not node: did bin/bareku stop exec-ing?`,
    )
  }
}

function startHandler(kind: HandlerKind, sendPort: number, recvPort: number): Proc {
  const env = {
    BAREKU_HANDLER_SEND_SPEC: `tcp://127.0.0.1:${sendPort}`,
    BAREKU_HANDLER_RECV_SPEC: `tcp://127.0.0.1:${recvPort}`,
  }
  return kind === 'node'
    ? start('node handler', process.execPath, ['--import', TSX_LOADER, HELLO_TS, 'zmq'], { env })
    : start('python handler', PYTHON, [HELLO_PY], { env })
}

function tempDir(name: string): string {
  const dir = mkdtempSync(join(tmpdir(), `bareku-bench-${name}-`))
  chmodSync(dir, 0o755) // nginx's workers drop root
  return dir
}

/** One handler row: `frontend` with /bench routed to a `kind` hello handler. */
async function runHandlerRow(
  frontendKind: FrontendKind,
  kind: HandlerKind,
  profileDir?: string,
): Promise<Measured> {
  const dir = tempDir(frontendKind)
  const [port, sendPort, recvPort] = (await freePorts(3)) as [number, number, number]
  const conf = m2shConfig(port, handlerTarget(sendPort, recvPort))
  let frontend: Proc | undefined
  let handler: Proc | undefined
  try {
    frontend =
      frontendKind === 'mongrel2'
        ? startMongrel2(dir, conf)
        : frontendKind === 'floor'
          ? startFloor(
              'handler',
              port,
              `tcp://127.0.0.1:${sendPort}`,
              `tcp://127.0.0.1:${recvPort}`,
            )
          : startOurs(dir, conf, port, profileDir)
    handler = startHandler(kind, sendPort, recvPort)
    await handler.waitFor(/^ready$/, 10_000)
    const status = await waitOk(port, [frontend, handler])
    if (status !== 200) throw failure(frontend, `GET /bench answered ${status || 'nothing'}`)
    if (frontendKind !== 'mongrel2') checkIsNode(frontend)
    return await measure(port, frontend, handler)
  } finally {
    await stop(frontend)
    await stop(handler)
    rmSync(dir, { recursive: true, force: true })
  }
}

function nginxConfig(dir: string, port: number, upstreamPort: number): string {
  return `# written by bench/frontend.ts
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  # nginx closes a keep-alive connection after 1000 requests by default; uWS does not
  keepalive_requests 1000000;
  upstream hello {
    server 127.0.0.1:${upstreamPort};
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://hello;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`
}

/** One proxy row: nginx or ours in front of the node:http hello server `backend` listens on. */
async function runProxyRow(
  server: 'nginx' | 'ours' | 'floor',
  backend: Proc,
  backendPort: number,
): Promise<Measured | string> {
  if (server === 'ours' && !existsSync(join(REPO, 'frontend/proxy.ts'))) {
    return 'n/a (proxy route not available: no frontend/proxy.ts)'
  }
  const dir = tempDir(server)
  const [port] = (await freePorts(1)) as [number]
  let frontend: Proc | undefined
  try {
    if (server === 'nginx') {
      mkdirSync(join(dir, 'tmp'))
      const conf = join(dir, 'nginx.conf')
      writeFileSync(conf, nginxConfig(dir, port, backendPort))
      frontend = start('nginx', NGINX, ['-c', conf, '-p', dir, '-g', 'daemon off;'])
    } else if (server === 'floor') {
      frontend = startFloor('proxy', port, backendPort)
    } else {
      const target = `Proxy(addr='127.0.0.1', port=${backendPort})`
      frontend = startOurs(dir, m2shConfig(port, target), port)
    }
    const status = await waitOk(port, [frontend, backend])
    if (status !== 200) {
      if (server === 'ours' && (status === 404 || status >= 500)) {
        return `n/a (proxy route not available: GET /bench answered ${status})`
      }
      throw failure(frontend, `GET /bench through ${server} answered ${status || 'nothing'}`)
    }
    if (server !== 'nginx') checkIsNode(frontend)
    return await measure(port, frontend, backend)
  } finally {
    await stop(frontend)
    rmSync(dir, { recursive: true, force: true })
  }
}

// ------------------------------------------------------------------ CPU profile

interface CpuProfile {
  nodes: {
    id: number
    callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number }
  }[]
  startTime: number
  endTime: number
  samples: number[]
  timeDeltas: number[]
}

interface ProfileRow {
  name: string
  location: string
  selfUs: number
}

const sources = new Map<string, string[]>()

/**
 * The line a function is on. tsx strips line breaks from what it runs, so for the repo's
 * TypeScript the profile's own line numbers are useless: look the function's name up in the
 * source instead (a declaration, a method, or a `name = (` assignment). '?' when not found.
 */
function sourceLine(file: string, frame: CpuProfile['nodes'][number]['callFrame']): string {
  if (!/\.[mc]?ts$/.test(file) || file.startsWith('/')) return String(frame.lineNumber + 1)
  const name = frame.functionName.replace(/[^A-Za-z0-9_$]/g, '')
  if (name === '') return '?'
  let lines = sources.get(file)
  if (lines === undefined) {
    lines = existsSync(join(REPO, file)) ? readFileSync(join(REPO, file), 'utf8').split('\n') : []
    sources.set(file, lines)
  }
  const patterns = [
    new RegExp(`\\bfunction\\*?\\s+${name}\\b`),
    new RegExp(
      `^\\s*(?:(?:private|public|protected|static|async|get|set|readonly)\\s+)*${name}\\s*[(<]`,
    ),
    new RegExp(`\\b${name}\\s*=\\s*(?:async\\s*)?(?:\\(|function\\b|[A-Za-z_$][\\w$]*\\s*=>)`),
  ]
  for (const re of patterns) {
    const at = lines.findIndex((l) => re.test(l))
    if (at >= 0) return String(at + 1)
  }
  return '?'
}

/**
 * Self time per function (summed over every call path), from the samples inside `window` when
 * the profile's clock covers it, else from all of them. A sample lasts until the next one.
 */
function selfTimes(profile: CpuProfile, window: [number, number]) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n.callFrame]))
  const times: number[] = []
  let t = profile.startTime
  for (const delta of profile.timeDeltas) times.push((t += delta))
  const windowed = profile.startTime <= window[0] && window[1] <= profile.endTime
  const rows = new Map<string, ProfileRow>()
  let total = 0
  for (let i = 0; i + 1 < profile.samples.length; i++) {
    const at = times[i]!
    if (windowed && (at < window[0] || at > window[1])) continue
    const frame = byId.get(profile.samples[i]!)
    if (!frame) continue
    const duration = times[i + 1]! - at
    const url = frame.url.startsWith('file://') ? fileURLToPath(frame.url) : frame.url
    const file = url.startsWith(REPO) ? url.slice(REPO.length) : url
    const location = file === '' ? '' : `${file}:${sourceLine(file, frame)}`
    const key = `${frame.functionName}@${location}:${frame.columnNumber}`
    const row = rows.get(key) ?? { name: frame.functionName || '(anonymous)', location, selfUs: 0 }
    row.selfUs += duration
    rows.set(key, row)
    total += duration
  }
  return { rows: [...rows.values()].sort((a, b) => b.selfUs - a.selfUs), total, windowed }
}

async function runProfile(): Promise<string> {
  const profileDir = mkdtempSync(join(tmpdir(), 'bareku-bench-profile-'))
  try {
    const measured = await runHandlerRow('ours', 'node', profileDir)
    // CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile; thread 0 is the main thread (tsx's
    // loader hooks run on a thread of their own and write a profile too).
    const file = readdirSync(profileDir).find((f) => f.split('.')[4] === '0')
    if (file === undefined) throw new Error(`no .cpuprofile written in ${profileDir}`)
    const profile = JSON.parse(readFileSync(join(profileDir, file), 'utf8')) as CpuProfile
    const { rows, total, windowed } = selfTimes(profile, measured.window)
    const idle = rows.find((r) => r.name === '(idle)')?.selfUs ?? 0
    const busy = total - idle
    const out = [
      `## Where our frontend's time goes (node handler, --cpu-prof)`,
      '',
      `${fmt(measured.wrk.rps, 0)} req/s while profiled; ${windowed ? 'samples in the measured window' : 'all samples (the clock did not line up)'}: ` +
        `${fmt(total / 1000, 0)} ms, of which idle ${fmt((idle / total) * 100, 1)}%. ` +
        `Self % is of the ${fmt(busy / 1000, 0)} ms not idle. A function's self time ` +
        'includes the native code it calls (uWS socket writes inside res.cork, ZeroMQ send and ' +
        'receive): V8 does not sample inside native addons separately.',
      '',
      '| # | function | location | self ms | self % | µs/request |',
      '|---:|---|---|---:|---:|---:|',
    ]
    rows
      .filter((r) => r.name !== '(idle)')
      .slice(0, 25)
      .forEach((r, i) => {
        const perRequest = r.selfUs / (measured.wrk.requests || 1)
        out.push(
          `| ${i + 1} | ${r.name} | ${r.location} | ${fmt(r.selfUs / 1000, 1)} | ` +
            `${fmt((r.selfUs / busy) * 100, 1)} | ${fmt(perRequest, 2)} |`,
        )
      })
    return out.join('\n')
  } finally {
    rmSync(profileDir, { recursive: true, force: true })
  }
}

// ------------------------------------------------------------------ report

interface Row {
  server: string
  handler: string
  result: Measured | string
}

function fmt(n: number, digits: number): string {
  return Number.isFinite(n) ? n.toFixed(digits) : '?'
}

function ms(n: number): string {
  return n < 1 ? `${fmt(n * 1000, 0)} µs` : `${fmt(n, 2)} ms`
}

function errors(w: WrkResult): string {
  const total = w.non2xx + w.socketErrors
  if (total === 0) return '0'
  const parts = [w.non2xx ? `non-2xx ${w.non2xx}` : '', w.socketDetail].filter(Boolean)
  return `${total} (${parts.join(', ')})`
}

function table(rows: Row[]): string {
  const out = [
    '| server | handler | req/s | p50 | p99 | errors | frontend CPU µs/req | handler CPU µs/req ' +
      '| rest of machine, cores |',
    '|---|---|---:|---:|---:|---|---:|---:|---:|',
  ]
  for (const { server, handler, result: r } of rows) {
    if (typeof r === 'string') out.push(`| ${server} | ${handler} | ${r} | | | | | | |`)
    else {
      out.push(
        `| ${server} | ${handler} | ${fmt(r.wrk.rps, 0)} | ${ms(r.wrk.p50ms)} | ${ms(r.wrk.p99ms)} | ` +
          `${errors(r.wrk)} | ${fmt(r.frontendUs, 1)} (sys ${fmt(r.frontendSysUs, 1)}) | ` +
          `${fmt(r.handlerUs, 1)} | ${fmt(r.otherCores, 2)} |`,
      )
    }
  }
  return out.join('\n')
}

interface Ratio {
  what: string
  value: number | undefined
  target: string
  pass: (v: number) => boolean
}

function ratios(list: Ratio[]): string {
  const out = ['| ratio | value | target | result |', '|---|---:|---|---|']
  for (const r of list) {
    const ok =
      r.value === undefined || !Number.isFinite(r.value) ? 'n/a' : r.pass(r.value) ? 'PASS' : 'FAIL'
    out.push(
      `| ${r.what} | ${r.value === undefined ? 'n/a' : fmt(r.value, 2)} | ${r.target} | ${ok} |`,
    )
  }
  return out.join('\n')
}

function measured(rows: Row[], server: string, handler: string): Measured | undefined {
  const r = rows.find((x) => x.server === server && x.handler === handler)?.result
  return typeof r === 'object' ? r : undefined
}

function divide(
  a: Measured | undefined,
  b: Measured | undefined,
  get: (m: Measured) => number,
): number | undefined {
  return a && b ? get(a) / get(b) : undefined
}

// ------------------------------------------------------------------ main

async function main(): Promise<number> {
  ensureTools()
  const m2 = `Mongrel2 ${versionOf('mongrel2-core')}`
  const ours = 'Bareku (ours)'
  const nginx = `nginx ${versionOf('nginx')}`
  const floor = 'floor (reference)'
  const problems: string[] = []
  const rows: Row[] = []

  const attempt = async (
    server: string,
    handler: string,
    run: () => Promise<Measured | string>,
  ): Promise<void> => {
    console.error(`bench: ${server} + ${handler} handler ...`)
    try {
      rows.push({ server, handler, result: await run() })
    } catch (err) {
      const reason = (err as Error).message
      problems.push(`${server} + ${handler}: ${reason}`)
      rows.push({ server, handler, result: `failed: ${reason.split('\n')[0]}` })
    }
  }

  for (const kind of ['node', 'python'] as const) {
    await attempt(m2, kind, () => runHandlerRow('mongrel2', kind))
    await attempt(ours, kind, () => runHandlerRow('ours', kind))
    if (FLOOR) await attempt(floor, kind, () => runHandlerRow('floor', kind))
  }

  const [backendPort] = (await freePorts(1)) as [number]
  const backend = start('node:http hello', process.execPath, [
    '--import',
    TSX_LOADER,
    HELLO_TS,
    'http',
    String(backendPort),
  ])
  try {
    await backend.waitFor(/^ready$/, 10_000)
    await attempt(nginx, 'node:http (proxy)', () => runProxyRow('nginx', backend, backendPort))
    await attempt(ours, 'node:http (proxy)', () => runProxyRow('ours', backend, backendPort))
    if (FLOOR) {
      await attempt(floor, 'node:http (proxy)', () => runProxyRow('floor', backend, backendPort))
    }
  } catch (err) {
    problems.push(`node:http hello server: ${(err as Error).message}`)
  } finally {
    await stop(backend)
  }

  let profile = ''
  if (PROFILE) {
    console.error('bench: profiling our frontend + node handler ...')
    try {
      profile = await runProfile()
    } catch (err) {
      problems.push(`profile: ${(err as Error).message}`)
    }
  }

  const list: Ratio[] = []
  for (const kind of ['node', 'python'] as const) {
    const a = measured(rows, ours, kind)
    const b = measured(rows, m2, kind)
    list.push(
      {
        what: `${kind} handler: ours/Mongrel2 frontend CPU per request`,
        value: divide(a, b, (m) => m.frontendUs),
        target: '<= 0.67',
        pass: (v) => v <= 0.67,
      },
      {
        what: `${kind} handler: ours/Mongrel2 req/s`,
        value: divide(a, b, (m) => m.wrk.rps),
        target: '>= 1',
        pass: (v) => v >= 1,
      },
      {
        what: `${kind} handler: ours/Mongrel2 p99`,
        value: divide(a, b, (m) => m.wrk.p99ms),
        target: '<= 1',
        pass: (v) => v <= 1,
      },
    )
  }
  if (FLOOR) {
    for (const kind of ['node', 'python'] as const) {
      list.push({
        what: `${kind} handler: floor/Mongrel2 frontend CPU per request (reference)`,
        value: divide(measured(rows, floor, kind), measured(rows, m2, kind), (m) => m.frontendUs),
        target: '<= 0.67 leaves room',
        pass: (v) => v <= 0.67,
      })
    }
  }
  const a = measured(rows, ours, 'node:http (proxy)')
  const b = measured(rows, nginx, 'node:http (proxy)')
  list.push(
    {
      what: 'proxy: ours/nginx req/s',
      value: divide(a, b, (m) => m.wrk.rps),
      target: '>= 1',
      pass: (v) => v >= 1,
    },
    {
      what: 'proxy: ours/nginx frontend CPU per request',
      value: divide(a, b, (m) => m.frontendUs),
      target: '<= 1',
      pass: (v) => v <= 1,
    },
  )
  if (FLOOR) {
    list.push({
      what: 'proxy: floor/nginx frontend CPU per request (reference)',
      value: divide(measured(rows, floor, 'node:http (proxy)'), b, (m) => m.frontendUs),
      target: '<= 1 leaves room',
      pass: (v) => v <= 1,
    })
  }

  console.log(
    [
      `# Frontend benchmark`,
      '',
      `wrk -t1 -c${CONNECTIONS} -d${SECONDS}s --latency (after a ${WARMUP_SECONDS} s warm-up), ` +
        `loopback, ${availableParallelism()} cores, node ${process.version}, CLK_TCK ${CLK_TCK}. ` +
        'CPU per request = utime+stime of the process group over the measured run / requests ' +
        '(sys: the stime part). Rest of machine = cores busy outside the frontend and handler: ' +
        'wrk (up to 1) plus anything else running; more than about 1 means the run was disturbed.',
      '',
      table(rows),
      '',
      ratios(list),
      ...(profile ? ['', profile] : []),
    ].join('\n'),
  )
  if (problems.length > 0) {
    console.error(`\nbench: could not run everything:\n- ${problems.join('\n- ')}`)
    return 1
  }
  return 0
}

main().then(
  (code) => {
    killAll()
    process.exit(code)
  },
  (err: unknown) => {
    killAll()
    console.error(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`)
    process.exit(1)
  },
)
