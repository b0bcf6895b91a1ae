/**
 * @module A Bareku cluster in tests: the real daemons (bin/bareku master|client|worker|frontend)
 * as processes on loopback with ports picked by the kernel, a control API caller, slugs made
 * from fixture directories with the real packSlug, and the instances found in /proc by a tag.
 *
 *   startMaster ──ready line──> endpoints          startNode = startWorker + startClient
 *   config var BAREKU_E2E=TAG ──> every instance's environment ──> tagged(TAG): DYNO -> pids
 *
 * Every wait is for a log record, a reply or a condition polled with a deadline, never a sleep.
 */
import { mkdirSync, readdirSync, readFileSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import { join } from 'node:path'
import type { Test } from 'tap'
import { callMaster } from '../../lib/cluster/control-client.js'
import { packSlug } from '../../lib/slug/pack.js'
import { logRecord, REPO, startProcess, type Proc } from './process.js'

export const BAREKU = join(REPO, 'bin', 'bareku')

/** A pino record as the daemons print them. */
export type LogRec = Record<string, unknown> & { msg: string; time: number }

/**
 * Stops `proc` in teardown; if the test failed, first shows its last lines (which daemon said
 * what is most of the diagnosis of a failed cluster scenario).
 */
export function stopInTeardown(t: Test, proc: Proc, name: string): void {
  t.teardown(async () => {
    if (!t.passing()) {
      t.comment(
        `last lines of ${name} (pid ${proc.child.pid}):\n${proc.lines.slice(-40).join('\n')}`,
      )
    }
    await proc.stop()
  })
}

/** Resolves once `proc` has printed its pino "ready" record; returns that record. */
export async function ready(proc: Proc, timeoutMs = 30_000): Promise<Record<string, unknown>> {
  return logRecord(await proc.waitFor((l) => logRecord(l)?.msg === 'ready', timeoutMs))!
}

/** Every pino record `proc` printed so far, optionally only those with this msg. */
export function records(proc: Proc, msg?: string): LogRec[] {
  return proc.lines
    .map(logRecord)
    .filter((r): r is LogRec => r !== undefined && (msg === undefined || r.msg === msg))
}

/**
 * Resolves with the `nth` record (past or future) of `proc` with this msg for which `pred`
 * holds; rejects when the process exits first or after `timeoutMs`.
 */
export async function event(
  proc: Proc,
  msg: string,
  pred: (r: LogRec) => boolean = () => true,
  { nth = 1, timeoutMs = 30_000 }: { nth?: number; timeoutMs?: number } = {},
): Promise<LogRec> {
  const matching = (): LogRec[] => records(proc, msg).filter(pred)
  await proc.waitFor((line) => {
    const r = logRecord(line) as LogRec | undefined
    return r?.msg === msg && pred(r) && matching().length >= nth
  }, timeoutMs)
  return matching()[nth - 1]!
}

/** Polls `check` (every 100 ms) until it returns a value other than undefined/false. */
export async function until<T>(
  what: string,
  check: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 30_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let last: unknown
  for (;;) {
    try {
      const v = await check()
      if (v !== undefined && v !== false) return v
    } catch (err) {
      last = err
    }
    if (Date.now() > deadline) {
      throw new Error(
        `timed out waiting until ${what}${last instanceof Error ? `: ${last.message}` : ''}`,
      )
    }
    await new Promise((r) => setTimeout(r, 100))
  }
}

function listen(port: number): Promise<Server | undefined> {
  return new Promise((resolve) => {
    const server = createServer()
    server.once('error', () => resolve(undefined))
    server.listen(port, '127.0.0.1', () => resolve(server))
  })
}

const closeAll = (servers: Server[]): Promise<void[]> =>
  Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))))

/** A tcp://127.0.0.1:PORT endpoint nothing listens on now (for a daemon not started yet). */
export async function reserveEndpoint(): Promise<string> {
  const server = (await listen(0))!
  const { port } = server.address() as { port: number }
  await closeAll([server])
  return `tcp://127.0.0.1:${port}`
}

/** The kernel's ephemeral port range (where port 0 binds and outgoing connections come from). */
function ephemeralRange(): [number, number] {
  try {
    const [lo, hi] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8')
      .trim()
      .split(/\s+/)
      .map(Number)
    if (lo !== undefined && hi !== undefined && lo > 0) return [lo, hi]
  } catch {
    // not Linux: assume its default
  }
  return [32768, 60999]
}

/**
 * A range "FROM-TO" of `count` ports on 127.0.0.1 that are free now: for BAREKU_WEB_PORTS, which
 * takes a range, not port 0. It is chosen at random below the ephemeral range, so no outgoing
 * connection takes one of its ports meanwhile, and checked by binding each port.
 */
export async function freePortRange(count: number): Promise<string> {
  const [ephemeralFrom] = ephemeralRange()
  const low = 10_000
  const high = ephemeralFrom - count
  for (let attempt = 0; attempt < 50; attempt++) {
    const from = low + Math.floor(Math.random() * Math.max(1, high - low))
    const held: Server[] = []
    let ok = true
    for (let p = from; ok && p < from + count; p++) {
      const s = await listen(p)
      if (s) held.push(s)
      else ok = false
    }
    await closeAll(held)
    if (ok) return `${from}-${from + count - 1}`
  }
  throw new Error(`no ${count} consecutive free ports found on 127.0.0.1`)
}

export interface MasterProc {
  proc: Proc
  control: string
  endpoints: Record<string, string>
  call(cmd: string, args?: Record<string, unknown>): Promise<unknown>
}

/** The master's bind endpoints; a key K is set by BAREKU_MASTER_K. */
const MASTER_SOCKETS = ['control', 'publish', 'stats', 'slugs', 'logs']

/**
 * Starts `bareku master` with its home in `home`; `ports` reuses the endpoints of an earlier
 * master (a restart on the same addresses), else every endpoint gets a free port.
 */
export async function startMaster(
  t: Test,
  home: string,
  env: NodeJS.ProcessEnv = {},
  ports?: Record<string, string>,
): Promise<MasterProc> {
  const binds: NodeJS.ProcessEnv = {}
  for (const key of new Set([...MASTER_SOCKETS, ...Object.keys(ports ?? {})])) {
    binds[`BAREKU_MASTER_${key.toUpperCase()}`] = ports?.[key] ?? 'tcp://127.0.0.1:0'
  }
  const proc = startProcess(BAREKU, ['master'], {
    env: { BAREKU_HOME: home, ...binds, LOG_LEVEL: 'debug', ...env },
  })
  stopInTeardown(t, proc, 'master')
  const rec = await ready(proc)
  const endpoints = rec.endpoints as Record<string, string>
  const control = endpoints.control!
  return {
    proc,
    control,
    endpoints,
    call: (cmd, args = {}) => callMaster(control, cmd, args, { timeoutMs: 10_000 }),
  }
}

/** Starts a node's worker on `home` and waits for its ready line. */
export async function startWorker(
  t: Test,
  home: string,
  env: NodeJS.ProcessEnv = {},
): Promise<Proc> {
  mkdirSync(join(home, 'run'), { recursive: true })
  const worker = startProcess(BAREKU, ['worker'], {
    env: { BAREKU_HOME: home, BAREKU_WORKER_TICK_MS: '200', LOG_LEVEL: 'debug', ...env },
  })
  stopInTeardown(t, worker, `worker ${home}`)
  await ready(worker)
  return worker
}

/** Starts a node's client on `home` following the master at `master`; waits for its ready line. */
export async function startClient(
  t: Test,
  home: string,
  master: string,
  env: NodeJS.ProcessEnv = {},
): Promise<Proc> {
  mkdirSync(join(home, 'run'), { recursive: true })
  const client = startProcess(BAREKU, ['client'], {
    env: {
      BAREKU_HOME: home,
      BAREKU_MASTER: master,
      BAREKU_CLIENT_REPORT_MS: '200',
      LOG_LEVEL: 'debug',
      ...env,
    },
  })
  stopInTeardown(t, client, `client ${home}`)
  await ready(client)
  return client
}

/** Starts a node: its worker and its client, sharing `home`. */
export async function startNode(
  t: Test,
  home: string,
  master: string,
  env: NodeJS.ProcessEnv = {},
): Promise<{ worker: Proc; client: Proc }> {
  const worker = await startWorker(t, home, env)
  const client = await startClient(t, home, master, env)
  return { worker, client }
}

/** Packs `dir` into the master's slug dir; returns what releases:add takes. */
export async function slugFrom(dir: string, masterHome: string) {
  const slugs = join(masterHome, 'slugs')
  mkdirSync(slugs, { recursive: true })
  const { sha256, size } = await packSlug(dir, slugs)
  return { sha256, size }
}

/** One instance as the worker last wrote it in BAREKU_HOME/run/status.json. */
export interface StatusInstance {
  name: string
  state: string
  pid?: number
  port?: number
  restarts: number
  release: number
}

/** The instances in a node's run/status.json (none while it does not exist). */
export function nodeStatus(home: string): StatusInstance[] {
  try {
    const v = JSON.parse(readFileSync(join(home, 'run', 'status.json'), 'utf8')) as {
      instances?: StatusInstance[]
    }
    return v.instances ?? []
  } catch {
    return []
  }
}

/**
 * The live processes (zombies have no environment) whose environment holds BAREKU_E2E=`tag`,
 * by their DYNO (the instance's slot name), pids sorted.
 */
export function tagged(tag: string): Map<string, number[]> {
  const found = new Map<string, number[]>()
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    let env: string[]
    try {
      env = readFileSync(`/proc/${entry}/environ`, 'utf8').split('\0')
    } catch {
      continue
    }
    if (!env.includes(`BAREKU_E2E=${tag}`)) continue
    const dyno = env.find((e) => e.startsWith('DYNO='))?.slice(5) ?? '?'
    found.set(
      dyno,
      [...(found.get(dyno) ?? []), Number(entry)].sort((a, b) => a - b),
    )
  }
  return found
}

/** SIGKILLs the process group of every process tagged `tag`: what a failed test left behind. */
export function killTagged(tag: string): void {
  for (const pids of tagged(tag).values()) {
    for (const pid of pids) {
      try {
        process.kill(-pid, 'SIGKILL')
      } catch {
        // gone already, or not a group leader any more
      }
    }
  }
}
