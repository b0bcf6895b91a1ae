/**
 * @module bench/diprocd: how long the master takes to turn a scale change into running
 * instances, and what it weighs. Prints a Markdown table.
 *
 *   npm run bench:diprocd                 (under a minute)
 *   BENCH_RUNS=5 npm run bench:diprocd    scale changes measured per row (default 3; the median)
 *
 * Each row has a fresh real master (`bin/bareku master`, its own process group, ports 0, state in
 * a temp dir) and N nodes, each taking 20 instances of one process type:
 *
 *   simulated nodes: all in this process, each a real ZeroMQ SUB on the master's publish socket
 *     (topic "NODE\0") and a PUSH to its stats socket; on every host list it reports at once
 *     every listed instance as ready (and every second as a heartbeat). Nothing is spawned: the
 *     row measures the master (placement, publication, reports), not process start-up.
 *   real node (N = 1): `bin/bareku worker` + `bin/bareku client`, fetching and unpacking the
 *     test/fixtures/apps/sleeper slug and spawning 20 python processes (as nobody when root);
 *     a non-web instance counts as ready after staying up 1 s, so that second is in the figure.
 *
 * scale-to-ready: from sending `ps:scale` for 20*N instances to the first `deploy:status` answering
 * done (polled every 10 ms), the median of BENCH_RUNS changes 0 -> 20*N (scaled back to 0 and
 * settled, untimed, in between). master RSS: VmRSS of the master after the last run, every
 * instance placed and ready.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Push, Subscriber } from 'zeromq'
import { callMaster } from '../lib/cluster/control-client.js'
import { parseProcfile } from '../lib/config/procfile.js'
import { parseHostList, parsePublication, topicFrame } from '../lib/protocol/host-list.js'
import { encodeNodeReport, type NodeReport } from '../lib/protocol/node-report.js'
import { packSlug } from '../lib/slug/pack.js'

const REPO = fileURLToPath(new URL('../', import.meta.url))
const BAREKU = join(REPO, 'bin/bareku')
const SLEEPER = join(REPO, 'test/fixtures/apps/sleeper')
const PER_NODE = 20
const RUNS = positiveInt(process.env.BENCH_RUNS, 3)
const POLL_MS = 10
const HEARTBEAT_MS = 1000

function positiveInt(value: string | undefined, fallback: number): number {
  if (value === undefined || value === '') return fallback
  const n = Number(value)
  if (!Number.isInteger(n) || n < 1) {
    console.error(`bench: BENCH_RUNS must be a whole number >= 1, got "${value}"`)
    process.exit(1)
  }
  return n
}

// ---- processes: each in its own group, all stopped at the end (also on failure or Ctrl-C)

const groups = new Set<ChildProcess>()
function killAll(signal: NodeJS.Signals = 'SIGKILL'): void {
  for (const p of groups) {
    try {
      process.kill(-p.pid!, signal)
    } catch {
      // gone already
    }
  }
}
process.on('exit', () => killAll())
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    killAll()
    process.exit(1)
  })
}

interface Daemon {
  child: ChildProcess
  /** Resolves with the pino "ready" record. */
  ready: Promise<Record<string, unknown>>
  stop(): Promise<void>
}

function daemon(role: string, env: NodeJS.ProcessEnv): Daemon {
  const child = spawn(BAREKU, [role], {
    cwd: REPO,
    env: { ...process.env, LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  })
  groups.add(child)
  const tail: string[] = []
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  const ready = new Promise<Record<string, unknown>>((resolve, reject) => {
    let pending = ''
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', (chunk: string) => {
      pending += chunk
      const lines = pending.split('\n')
      pending = lines.pop() ?? ''
      for (const line of lines) {
        tail.push(line)
        if (tail.length > 20) tail.shift()
        if (!line.includes('"msg":"ready"')) continue
        try {
          resolve(JSON.parse(line) as Record<string, unknown>)
        } catch {
          // not a record after all
        }
      }
    })
    child.stderr.on('data', (chunk: Buffer) => tail.push(chunk.toString()))
    void exited.then(() =>
      reject(new Error(`bareku ${role} exited before it was ready:\n${tail.join('\n')}`)),
    )
  })
  return {
    child,
    ready,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        process.kill(-child.pid!, 'SIGTERM')
        const timer = setTimeout(() => process.kill(-child.pid!, 'SIGKILL'), 30_000)
        await exited
        clearTimeout(timer)
      }
      groups.delete(child)
    },
  }
}

function rssMB(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('VmRSS:'))
  return Number(line?.split(/\s+/)[1] ?? 0) / 1024
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function waitFor(
  what: string | (() => string),
  check: () => Promise<boolean> | boolean,
  timeoutMs = 60_000,
) {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) {
      throw new Error(`bench: timed out waiting until ${typeof what === 'string' ? what : what()}`)
    }
    await sleep(POLL_MS)
  }
}

// ---- simulated nodes

/** A node without processes: follows its host list and reports every instance ready at once. */
class SimNode {
  count = 0
  private instances: NodeReport['instances'] = []
  private readonly sub = new Subscriber({ linger: 0 })
  private readonly push = new Push({ linger: 0, sendTimeout: 0, sendHighWaterMark: 1000 })
  private readonly timer: NodeJS.Timeout
  private closed = false

  constructor(
    readonly name: string,
    ep: { publish: string; stats: string },
  ) {
    this.sub.connect(ep.publish)
    this.sub.subscribe(topicFrame(name))
    this.push.connect(ep.stats)
    void this.follow()
    this.timer = setInterval(() => this.report(), HEARTBEAT_MS)
    this.report()
  }

  private async follow(): Promise<void> {
    try {
      for await (const frames of this.sub) {
        const list = parseHostList(parsePublication(frames).body, this.name)
        this.instances = list.instances.map((i) => ({
          name: i.name,
          app: i.app,
          type: i.type,
          release: i.release,
          state: 'ready' as const,
          restarts: 0,
          ...(i.port === undefined ? {} : { port: i.port }),
        }))
        this.count = this.instances.length
        this.report()
      }
    } catch (err) {
      if (!this.closed) throw err
    }
  }

  private report(): void {
    const report: NodeReport = {
      node: this.name,
      addr: '127.0.0.1',
      time: Date.now(),
      applied: null,
      capacity: 50,
      load: [0, 0, 0],
      mem: { total: 1 << 30, free: 1 << 29 },
      instances: this.instances,
      errors: [],
    }
    this.push.send(encodeNodeReport(report)).catch(() => undefined)
  }

  close(): void {
    this.closed = true
    clearInterval(this.timer)
    this.sub.close()
    this.push.close()
  }
}

// ---- one row

interface Row {
  label: string
  nodes: number
  instances: number
  ms: number[]
  rssMB: number
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor((s.length - 1) / 2)]!
}

async function row(n: number, real: boolean): Promise<Row> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-diprocd-'))
  // Instances run as nobody when this runs as root: they must reach their slug under it.
  chmodSync(dir, 0o755)
  const masterHome = join(dir, 'master')
  const slugDir = join(masterHome, 'slugs')
  mkdirSync(slugDir, { recursive: true })
  const stops: (() => Promise<void>)[] = []
  const sims: SimNode[] = []
  try {
    const master = daemon('master', {
      BAREKU_HOME: masterHome,
      BAREKU_MASTER_CONTROL: 'tcp://127.0.0.1:0',
      BAREKU_MASTER_PUBLISH: 'tcp://127.0.0.1:0',
      BAREKU_MASTER_STATS: 'tcp://127.0.0.1:0',
      BAREKU_MASTER_SLUGS: 'tcp://127.0.0.1:0',
      BAREKU_MASTER_LOGS: 'tcp://127.0.0.1:0',
      BAREKU_MASTER_NODE_TTL_MS: '60000',
    })
    stops.push(() => master.stop())
    const ep = (await master.ready).endpoints as Record<string, string>
    const call = (cmd: string, args: Record<string, unknown> = {}) =>
      callMaster(ep.control!, cmd, args, { timeoutMs: 60_000 })

    let slug: { sha256: string; size: number }
    let processTypes: Record<string, string>
    let settled: (count: number) => boolean | Promise<boolean>
    if (real) {
      const packed = await packSlug(SLEEPER, slugDir)
      slug = { sha256: packed.sha256, size: packed.size }
      // Only its long-running type: a web would need a free $PORT and be checked by TCP.
      const procfile = parseProcfile(readFileSync(join(SLEEPER, 'Procfile'), 'utf8'))
      processTypes = { worker: procfile.worker! }
      const home = join(dir, 'node')
      mkdirSync(join(home, 'run'), { recursive: true })
      const common = { BAREKU_HOME: home, BAREKU_NODE: 'bench1' }
      const worker = daemon('worker', {
        ...common,
        BAREKU_WORKER_TICK_MS: '500',
        BAREKU_WORKER_STOP_ON_EXIT: '1',
      })
      stops.push(() => worker.stop())
      await worker.ready
      const client = daemon('client', { ...common, BAREKU_MASTER: ep.control })
      stops.unshift(() => client.stop())
      await client.ready
      const status = join(home, 'run', 'status.json')
      settled = (count) => {
        try {
          const s = JSON.parse(readFileSync(status, 'utf8')) as { instances: unknown[] }
          return s.instances.length === count
        } catch {
          return count === 0
        }
      }
    } else {
      // The master checks only that the slug is in its store with that size; nodes never fetch.
      const bytes = randomBytes(4096)
      const sha256 = createHash('sha256').update(bytes).digest('hex')
      writeFileSync(join(slugDir, `${sha256}.sqfs`), bytes)
      slug = { sha256, size: bytes.length }
      // ps:scale takes at most 1000 per type: 100 x 20 needs two.
      processTypes = { worker: 'sleep infinity', other: 'sleep infinity' }
      for (let i = 1; i <= n; i++) {
        sims.push(new SimNode(`sim${i}`, { publish: ep.publish!, stats: ep.stats! }))
      }
      settled = (count) => sims.reduce((sum, s) => sum + s.count, 0) === count
    }
    await waitFor(`${n} node(s) up`, async () => {
      const nodes = (await call('nodes')) as { status: string }[]
      return nodes.length === n && nodes.every((x) => x.status === 'up')
    })
    await call('apps:create', { name: 'bench' })
    await call('releases:add', { app: 'bench', slug, processTypes })
    const total = n * PER_NODE
    const types = Object.keys(processTypes)
    /** `count` instances in all, split evenly over the types. */
    const formation = (count: number) =>
      Object.fromEntries(
        types.map((type, i) => [
          type,
          Math.floor(count / types.length) + (i < count % types.length ? 1 : 0),
        ]),
      )
    await call('ps:scale', { app: 'bench', formation: formation(0) })

    const ms: number[] = []
    for (let run = 0; run < RUNS; run++) {
      if (run > 0) {
        await call('ps:scale', { app: 'bench', formation: formation(0) })
        await waitFor('every instance stopped', () => settled(0))
      }
      const start = process.hrtime.bigint()
      await call('ps:scale', { app: 'bench', formation: formation(total) })
      let last: unknown
      const what = () => `${total} instances ready (last deploy:status: ${JSON.stringify(last)})`
      await waitFor(what, async () => {
        const s = (await call('deploy:status', { app: 'bench', release: 1 })) as { done: boolean }
        last = s
        return s.done
      })
      ms.push(Number(process.hrtime.bigint() - start) / 1e6)
    }
    const rss = rssMB(master.child.pid!)
    // Scale to 0 first, so a real worker stops its processes while the client still listens.
    await call('ps:scale', { app: 'bench', formation: formation(0) })
    await waitFor('every instance stopped', () => settled(0))
    return {
      label: real ? `${n} real (client + worker)` : `${n} simulated`,
      nodes: n,
      instances: total,
      ms,
      rssMB: rss,
    }
  } finally {
    for (const s of sims) s.close()
    for (const stop of stops) await stop()
    rmSync(dir, { recursive: true, force: true })
  }
}

async function main(): Promise<void> {
  const rows: Row[] = []
  for (const [n, real] of [
    [1, true],
    [1, false],
    [10, false],
    [100, false],
  ] as const) {
    process.stderr.write(`bench: ${n} ${real ? 'real' : 'simulated'} node(s)...\n`)
    rows.push(await row(n, real))
  }
  const cells = rows.map((r) => [
    r.label,
    String(r.instances),
    median(r.ms).toFixed(0),
    `${Math.min(...r.ms).toFixed(0)}–${Math.max(...r.ms).toFixed(0)}`,
    r.rssMB.toFixed(1),
  ])
  const head = ['nodes', 'instances', 'scale-to-ready ms', `range of ${RUNS}`, 'master RSS MB']
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)))
  const line = (c: string[]) => `| ${c.map((x, i) => x.padEnd(widths[i]!)).join(' | ')} |`
  console.log(line(head))
  console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`)
  for (const c of cells) console.log(line(c))
  console.log(
    `\n${PER_NODE} instances per node; scale-to-ready is the median of ${RUNS} changes 0 -> all; master RSS after the last one.`,
  )
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err instanceof Error ? err.message : err)
    process.exit(1)
  },
)
