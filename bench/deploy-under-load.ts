/**
 * @module Deploys under load: a real one-node cluster (bin/bareku master, worker, client and a
 * frontend following the master, each a process on loopback) runs an app that answers with its
 * BAREKU_RELEASE; a load generator keeps N keep-alive connections busy against it through the
 * frontend while the app is redeployed R times in a row (config:set: a new release of the same
 * slug each time) and one of its instances is killed with SIGKILL. It prints requests sent,
 * answered by release, errors, lost requests, and p99 latency during the cutovers against the
 * steady state. Run: `npm run bench:deploy-under-load` (bounded: DEPLOY_SECONDS of load per
 * kind at most).
 *
 *   load (N conns) ──HTTP──> frontend ──> handler app (python3-zmq)  or  web app ($PORT, node)
 *   bench ──control API──> master: releases:add x R; SIGKILL one instance in between
 *
 * test/e2e/deploy.test.ts runs the same with small numbers and fails on any error.
 */
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { Agent, request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { callMaster } from '../lib/cluster/control-client.js'
import { packSlug } from '../lib/slug/pack.js'
import { logRecord, REPO, startProcess, type Proc } from '../test/helpers/process.js'

const BAREKU = join(REPO, 'bin', 'bareku')

export type AppKind = 'handler' | 'web'

export interface DeployRun {
  kind: AppKind
  /** Load connections (keep-alive, loopback). */
  connections: number
  redeploys: number
  /** Kill one instance with SIGKILL after this redeploy (1-based; 0: never). */
  killAfter: number
  /** Instances of the process type. */
  scale: number
  /** Where the cluster keeps its state; removed afterwards. */
  dir?: string
  /** Upper bound on the whole run, ms. */
  timeoutMs?: number
  log?: (line: string) => void
  /** Keep every sample and the cutover windows in the result, for a closer look. */
  keepSamples?: boolean
}

export interface DeployResult {
  kind: AppKind
  sent: number
  answered: number
  byRelease: Record<string, number>
  errors: number
  errorSamples: string[]
  lost: number
  p50: number
  p99Steady: number
  p99Cutover: number
  seconds: number
  samples?: Sample[]
  windows?: [number, number][]
}

export interface Sample {
  start: number
  ms: number
  release?: string
  error?: string
}

/**
 * A random block of `n` ports for the cluster's handler and web ports, below Linux's ephemeral
 * range (32768 and up), where an outgoing connection could hold one of them.
 */
function portBlock(n: number): string {
  const from = 20_000 + Math.floor(Math.random() * 120) * 100
  return `${from}-${from + n - 1}`
}

async function ready(proc: Proc): Promise<Record<string, unknown>> {
  return logRecord(await proc.waitFor((l) => logRecord(l)?.msg === 'ready', 30_000))!
}

/** The cluster: master, worker, client, frontend; stop() ends them all. */
export async function startCluster(home: string) {
  const procs: Proc[] = []
  const start = (args: string[], env: NodeJS.ProcessEnv): Proc => {
    const p = startProcess(BAREKU, args, { env: { BAREKU_HOME: home, LOG_LEVEL: 'info', ...env } })
    procs.push(p)
    return p
  }
  const stop = async (): Promise<void> => {
    for (const p of procs.reverse()) await p.stop(15_000)
  }
  try {
    mkdirSync(join(home, 'run'), { recursive: true })
    const master = start(['master'], {
      BAREKU_MASTER_CONTROL: 'tcp://127.0.0.1:0',
      BAREKU_MASTER_PUBLISH: 'tcp://127.0.0.1:0',
      BAREKU_MASTER_STATS: 'tcp://127.0.0.1:0',
      BAREKU_MASTER_SLUGS: 'tcp://127.0.0.1:0',
      BAREKU_MASTER_LOGS: 'tcp://127.0.0.1:0',
      BAREKU_HANDLER_PORTS: portBlock(60),
      BAREKU_WEB_PORTS: portBlock(60),
    })
    const control = ((await ready(master)).endpoints as Record<string, string>).control!
    const node = { BAREKU_MASTER: control }
    await ready(
      start(['worker'], { ...node, BAREKU_WORKER_TICK_MS: '100', BAREKU_WORKER_STOP_ON_EXIT: '1' }),
    )
    await ready(start(['client'], { ...node, BAREKU_CLIENT_REPORT_MS: '100' }))
    const frontend = start(['frontend', '--master', control], {
      BAREKU_FRONTEND_LISTEN: '127.0.0.1:0',
      BAREKU_FRONTEND_REPORT_MS: '200',
    })
    const rec = await ready(frontend)
    const port = (rec.endpoints as { servers: { port: number }[] }).servers[0]!.port
    return {
      control,
      port,
      frontend,
      stop,
      call: (cmd: string, args: Record<string, unknown> = {}) =>
        callMaster(control, cmd, args, { timeoutMs: 20_000 }),
    }
  } catch (err) {
    await stop()
    throw err
  }
}

/** One GET through the frontend on a keep-alive agent; resolves with the answering release. */
export function get(agent: Agent, port: number, host: string, path: string): Promise<Sample> {
  const start = performance.now()
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path, agent, headers: { host } }, (res) => {
      let body = ''
      res.setEncoding('utf8').on('data', (c: string) => (body += c))
      res.on('end', () => {
        const ms = performance.now() - start
        const m = /^release (v\d+) /.exec(body)
        if (res.statusCode === 200 && m) resolve({ start, ms, release: m[1]! })
        else resolve({ start, ms, error: `${res.statusCode}: ${body.slice(0, 120)}` })
      })
      res.on('error', (err) =>
        resolve({ start, ms: performance.now() - start, error: err.message }),
      )
    })
    req.on('error', (err) => resolve({ start, ms: performance.now() - start, error: err.message }))
    req.end()
  })
}

/** Keeps `connections` requests in flight until stop(); each loop awaits its own answers. */
export function startLoad(port: number, host: string, connections: number) {
  const agent = new Agent({ keepAlive: true, maxSockets: connections })
  const samples: Sample[] = []
  let sent = 0
  let stopping = false
  const loops = Array.from({ length: connections }, async (_, i) => {
    for (let n = 0; !stopping; n++) {
      sent++
      samples.push(await get(agent, port, host, `/load/${i}/${n}`))
    }
  })
  return {
    samples,
    /** Stops sending; waits (bounded) for every request in flight. */
    async stop(timeoutMs = 30_000): Promise<{ sent: number; lost: number }> {
      stopping = true
      let timer: NodeJS.Timeout | undefined
      await Promise.race([
        Promise.all(loops),
        new Promise((r) => (timer = setTimeout(r, timeoutMs))),
      ])
      clearTimeout(timer)
      agent.destroy()
      return { sent, lost: sent - samples.length }
    },
  }
}

function percentile(values: number[], p: number): number {
  if (values.length === 0) return 0
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!
}

interface WorkerStatus {
  instances: { name: string; state: string; pid?: number; release: number; type: string }[]
}

export function workerStatus(home: string): WorkerStatus {
  try {
    return JSON.parse(readFileSync(join(home, 'run', 'status.json'), 'utf8')) as WorkerStatus
  } catch {
    return { instances: [] }
  }
}

export async function until<T>(
  what: string,
  check: () => T | undefined | false | Promise<T | undefined | false>,
  ms: number,
): Promise<T> {
  const deadline = Date.now() + ms
  for (;;) {
    const v = await check()
    if (v !== undefined && v !== false) return v
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting until ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** Runs the load against one app kind through `redeploys` releases; see the module comment. */
export async function deployUnderLoad(run: DeployRun): Promise<DeployResult> {
  const say = run.log ?? (() => {})
  const dir = run.dir ?? mkdtempSync(join(tmpdir(), 'bk-deploy-'))
  // Apps run as nobody when the worker is root: they must reach their slug below it.
  chmodSync(dir, 0o755)
  const home = join(dir, 'home')
  const deadline = Date.now() + (run.timeoutMs ?? 300_000)
  const left = (): number => Math.max(1000, deadline - Date.now())
  const cluster = await startCluster(home)
  try {
    const app = 'shop'
    const type = run.kind === 'handler' ? 'handler' : 'web'
    const fixture = join(
      REPO,
      'test/fixtures/apps',
      run.kind === 'handler' ? 'release-handler' : 'release-web',
    )
    mkdirSync(join(home, 'slugs'), { recursive: true })
    const { sha256, size } = await packSlug(fixture, join(home, 'slugs'))
    const slug = { sha256, size }
    const command = run.kind === 'handler' ? '/usr/bin/python3 handler.py' : 'node web.js'
    await cluster.call('apps:create', { name: app })
    await cluster.call('releases:add', { app, slug, processTypes: { [type]: command } })
    await cluster.call('ps:scale', { app, formation: { [type]: run.scale } })
    const host = `${app}.localhost`
    const agent = new Agent({ keepAlive: false })
    const answers = async (release: string): Promise<boolean> => {
      const s = await get(agent, cluster.port, host, '/probe')
      return s.release === release
    }
    await until('v1 answers', () => answers('v1'), left())
    say(`${run.kind}: v1 answers; load with ${run.connections} connections`)

    const load = startLoad(cluster.port, host, run.connections)
    const started = performance.now()
    const windows: [number, number][] = []
    // Steady state first, as the baseline.
    await until('steady samples', () => load.samples.length >= run.connections * 20, left())
    for (let i = 1; i <= run.redeploys; i++) {
      const version = i + 1
      const from = performance.now()
      await cluster.call('config:set', { app, vars: { DEPLOY: String(version) } })
      // The cutover is over when the old release's instances are gone from the node.
      await until(
        `v${version} serves and v${version - 1} is stopped`,
        () =>
          load.samples.some((s) => s.release === `v${version}` && s.start > from) &&
          !workerStatus(home).instances.some((x) => x.release < version && x.type === type),
        left(),
      )
      windows.push([from, performance.now()])
      say(`${run.kind}: v${version} serves, v${version - 1} drained and stopped`)
      if (i === run.killAfter) {
        const victim = workerStatus(home).instances.find((x) => x.type === type && x.pid)
        if (victim?.pid) {
          process.kill(victim.pid, 'SIGKILL')
          say(`${run.kind}: killed ${victim.name} (pid ${victim.pid}) with SIGKILL`)
          const mark = load.samples.length
          await until(
            'the worker restarted it',
            () =>
              workerStatus(home).instances.filter((x) => x.type === type && x.state === 'ready')
                .length >= run.scale && load.samples.length > mark + run.connections * 10,
            left(),
          )
        }
      }
    }
    const at = load.samples.length
    await until('a steady tail', () => load.samples.length >= at + run.connections * 10, left())
    const { sent, lost } = await load.stop()
    const seconds = (performance.now() - started) / 1000
    const inCutover = (s: Sample): boolean => windows.some(([a, b]) => s.start >= a && s.start <= b)
    const ok = load.samples.filter((s) => s.error === undefined)
    const errors = load.samples.filter((s) => s.error !== undefined)
    const byRelease: Record<string, number> = {}
    for (const s of ok) byRelease[s.release!] = (byRelease[s.release!] ?? 0) + 1
    return {
      kind: run.kind,
      sent,
      answered: ok.length,
      byRelease,
      errors: errors.length,
      errorSamples: [...new Set(errors.map((e) => e.error!))].slice(0, 5),
      lost,
      p50: percentile(
        ok.map((s) => s.ms),
        50,
      ),
      p99Steady: percentile(
        ok.filter((s) => !inCutover(s)).map((s) => s.ms),
        99,
      ),
      p99Cutover: percentile(
        ok.filter(inCutover).map((s) => s.ms),
        99,
      ),
      seconds,
      ...(run.keepSamples ? { samples: load.samples, windows } : {}),
    }
  } finally {
    await cluster.stop()
    if (run.dir === undefined) rmSync(dir, { recursive: true, force: true })
  }
}

/** The table the bench prints. */
export function formatResults(results: DeployResult[]): string {
  const rows = [
    [
      'app',
      'sent',
      'answered',
      'errors',
      'lost',
      'p50 ms',
      'p99 steady',
      'p99 cutover',
      'ratio',
      'by release',
    ],
    ...results.map((r) => [
      r.kind,
      String(r.sent),
      String(r.answered),
      String(r.errors),
      String(r.lost),
      r.p50.toFixed(1),
      r.p99Steady.toFixed(1),
      r.p99Cutover.toFixed(1),
      (r.p99Cutover / Math.max(r.p99Steady, 0.001)).toFixed(2),
      Object.entries(r.byRelease)
        .map(([k, v]) => `${k}:${v}`)
        .join(' '),
    ]),
  ]
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)))
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ')).join('\n')
}

async function main(): Promise<void> {
  const connections = Number(process.env.DEPLOY_CONNECTIONS ?? 50)
  const redeploys = Number(process.env.DEPLOY_REDEPLOYS ?? 5)
  const results: DeployResult[] = []
  for (const kind of ['handler', 'web'] as const) {
    results.push(
      await deployUnderLoad({
        kind,
        connections,
        redeploys,
        killAfter: 3,
        scale: 2,
        timeoutMs: Number(process.env.DEPLOY_SECONDS ?? 300) * 1000,
        log: (l) => process.stderr.write(`${l}\n`),
      }),
    )
  }
  process.stdout.write(`${formatResults(results)}\n`)
  for (const r of results) {
    if (r.errorSamples.length > 0)
      process.stdout.write(`${r.kind} errors: ${r.errorSamples.join(' | ')}\n`)
  }
  process.exitCode = results.every((r) => r.errors === 0 && r.lost === 0) ? 0 : 1
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) await main()
