/**
 * @module A Bareku cluster in tests: the real daemons (bin/bareku master|client|worker|frontend)
 * as processes on loopback with ports picked by the kernel, a control API caller, and slugs made
 * from fixture directories with the real packSlug.
 */
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import type { Test } from 'tap'
import { callMaster } from '../../lib/cluster/control-client.js'
import { packSlug } from '../../lib/slug/pack.js'
import { logRecord, REPO, startProcess, type Proc } from './process.js'

export const BAREKU = join(REPO, 'bin', 'bareku')

/** Resolves once `proc` has printed its pino "ready" record; returns that record. */
export async function ready(proc: Proc, timeoutMs = 30_000): Promise<Record<string, unknown>> {
  return logRecord(await proc.waitFor((l) => logRecord(l)?.msg === 'ready', timeoutMs))!
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
      throw new Error(`timed out waiting until ${what}${last ? `: ${String(last)}` : ''}`)
    }
    await new Promise((r) => setTimeout(r, 100))
  }
}

export interface MasterProc {
  proc: Proc
  control: string
  endpoints: Record<string, string>
  call(cmd: string, args?: Record<string, unknown>): Promise<unknown>
}

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
  const ep = (key: string) => ports?.[key] ?? 'tcp://127.0.0.1:0'
  const proc = startProcess(BAREKU, ['master'], {
    env: {
      BAREKU_HOME: home,
      BAREKU_MASTER_CONTROL: ep('control'),
      BAREKU_MASTER_PUBLISH: ep('publish'),
      BAREKU_MASTER_STATS: ep('stats'),
      BAREKU_MASTER_SLUGS: ep('slugs'),
      LOG_LEVEL: 'debug',
      ...env,
    },
  })
  t.teardown(() => proc.stop())
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

/** Starts a node: its worker and its client, sharing `home`. */
export async function startNode(
  t: Test,
  home: string,
  master: string,
  env: NodeJS.ProcessEnv = {},
): Promise<{ worker: Proc; client: Proc }> {
  mkdirSync(join(home, 'run'), { recursive: true })
  const common = { BAREKU_HOME: home, BAREKU_MASTER: master, LOG_LEVEL: 'debug', ...env }
  const worker = startProcess(BAREKU, ['worker'], {
    env: { BAREKU_WORKER_TICK_MS: '200', ...common },
  })
  t.teardown(() => worker.stop())
  await ready(worker)
  const client = startProcess(BAREKU, ['client'], {
    env: { BAREKU_CLIENT_REPORT_MS: '200', ...common },
  })
  t.teardown(() => client.stop())
  await ready(client)
  return { worker, client }
}

/** Packs `dir` into the master's slug dir; returns what releases:add takes. */
export async function slugFrom(dir: string, masterHome: string) {
  const slugs = join(masterHome, 'slugs')
  mkdirSync(slugs, { recursive: true })
  const { sha256, size } = await packSlug(dir, slugs)
  return { sha256, size }
}
