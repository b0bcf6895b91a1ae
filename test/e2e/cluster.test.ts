/**
 * The diprocd trio end to end: a real master, and per node a real worker and client
 * (`bin/bareku master|worker|client`), on loopback with kernel-picked ports, running the
 * test/fixtures/apps/sleeper slug (packed with the real packSlug, fetched and unpacked by the
 * client, run by the worker as nobody). Each scenario is a whole-cluster failure or change and
 * what the operator must see afterwards.
 *
 *   test ──control API (REQ)──> master ──XPUB host lists──> client ──worker.json──> worker
 *                                 ^  <──PUSH reports────────  │  <──run/status.json───┘
 *                                 └── slug store <──DEALER────┘          └──> python instances
 *
 * Every instance gets the config var BAREKU_E2E=<random tag>, so /proc tells which processes
 * run, by their DYNO (the instance's name on its node), across all nodes: "same pids", "no
 * duplicates" and the final sweep of anything a failing test left behind all read it. Waits are
 * for log records, replies or conditions polled with a deadline, never a fixed sleep. Daemons
 * live as long as their scenario (the top test), not the subtest that happened to start them.
 */
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { cpSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { setTimeout as delay } from 'node:timers/promises'
import { execa } from 'execa'
import t, { type Test } from 'tap'
import { pack as tarPack, type Pack } from 'tar-stream'
import { Dealer, Push, Request, Subscriber, XSubscriber } from 'zeromq'
import { parseProcfile } from '../../lib/config/procfile.js'
import { parseControlReply } from '../../lib/protocol/control.js'
import { parseHostList, parsePublication, topicFrame } from '../../lib/protocol/host-list.js'
import { encodeNodeReport, type NodeReport } from '../../lib/protocol/node-report.js'
import { encodeChunkRequest, parseChunkReply } from '../../lib/protocol/slug-chunk.js'
import { sha256File } from '../../lib/slug/sha.js'
import {
  BAREKU,
  event,
  freePortRange,
  killTagged,
  nodeStatus,
  records,
  reserveEndpoint,
  slugFrom,
  startClient,
  startMaster,
  startNode,
  startWorker,
  tagged,
  until,
  type LogRec,
  type MasterProc,
} from '../helpers/cluster.js'
import { REPO, type Proc } from '../helpers/process.js'

// Three clusters one after the other, each with its own failures to wait through.
t.setTimeout(300_000)

const SLEEPER = join(REPO, 'test/fixtures/apps/sleeper')
const PROCFILE = parseProcfile(readFileSync(join(SLEEPER, 'Procfile'), 'utf8'))
const MASTER_ENV = { BAREKU_MASTER_REPUBLISH_MS: '500', LOG_LEVEL: 'debug' }
/** Nodes stop their instances when the test stops them; kill -9 leaves them, as it should. */
const NODE_ENV = { BAREKU_WORKER_STOP_ON_EXIT: '1' }

interface Ps {
  name: string
  type: string
  node: string | null
  port: number | null
  release: number
  state: string
  restarts?: number
}

interface DeployStatus {
  done: boolean
  nodes: { node: string; desired: number; ready: number }[]
  errors: string[]
}

const ps = async (m: MasterProc, app = 'shop'): Promise<Ps[]> =>
  (await m.call('ps', { app })) as Ps[]

/** Waits until the app has `count` instances, every one reported ready; returns them. */
function allReady(m: MasterProc, count: number, app = 'shop', timeoutMs = 30_000) {
  return until(
    `${count} instances of ${app} ready`,
    async () => {
      const list = await ps(m, app)
      return list.length === count && list.every((i) => i.state === 'ready') && list
    },
    timeoutMs,
  )
}

/** Creates `app` with BAREKU_E2E=tag and releases the sleeper slug: v1. */
async function release(m: MasterProc, masterHome: string, tag: string, app = 'shop') {
  await m.call('apps:create', { name: app })
  await m.call('config:set', { app, vars: { BAREKU_E2E: tag } })
  const slug = await slugFrom(SLEEPER, masterHome)
  await m.call('releases:add', { app, slug, processTypes: PROCFILE })
  return slug
}

/**
 * An instance's master name from its name on the node (its DYNO): web and handler instances may
 * run under their release's name there ("shop.web.1-v2") so that a new release starts beside
 * the old one.
 */
const slotName = (dyno: string): string => dyno.replace(/-v\d+$/, '')

/** One live process per DYNO: its pid. Fails when a DYNO has several. */
function dynos(tag: string): Record<string, number> {
  const out: Record<string, number> = {}
  for (const [dyno, pids] of tagged(tag)) {
    if (pids.length !== 1)
      throw new Error(`${dyno} runs ${pids.length} processes: ${pids.join(', ')}`)
    out[dyno] = pids[0]!
  }
  return out
}

/** One live process per instance of the master's (e.g. "shop.web.1"): its pid. */
function onePidEach(tag: string): Record<string, number> {
  const out: Record<string, number> = {}
  for (const [dyno, pid] of Object.entries(dynos(tag))) {
    const slot = slotName(dyno)
    if (out[slot] !== undefined) throw new Error(`${slot} runs twice: ${out[slot]}, ${pid}`)
    out[slot] = pid
  }
  return out
}

/** The name instance `slot` runs under on its node, among `running` (a DYNO -> pid map). */
function dynoOf(running: Record<string, number>, slot: string): string {
  return Object.keys(running).find((d) => slotName(d) === slot) ?? slot
}

/** Waits until each instance runs as one process (a replacement or a removal is over). */
const settled = (tag: string) =>
  until('one process per instance', () => {
    try {
      return onePidEach(tag)
    } catch {
      return undefined
    }
  })

async function get(port: number): Promise<string> {
  const r = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(3000) })
  if (r.status !== 200) throw new Error(`GET :${port} answered ${r.status}`)
  return r.text()
}

/** GETs the port over and over until stopped: how many answered, and every failure. */
function pollWeb(port: number) {
  let ok = 0
  const failures: string[] = []
  let stopped = false
  const loop = (async () => {
    while (!stopped) {
      try {
        await get(port)
        ok++
      } catch (err) {
        failures.push(`${new Date().toISOString()} ${(err as Error).message}`)
      }
      // Pacing only: a request every 50 ms is "throughout" without hogging two cores.
      await delay(50)
    }
  })()
  return {
    async stop() {
      stopped = true
      await loop
      return { ok, failures }
    },
  }
}

t.test('two nodes: late client, kill -9 of the master, kill -9 of a worker', async (top) => {
  // Daemons started in a subtest belong to the whole scenario: their teardown is top's.
  const t = top
  const tag = randomBytes(6).toString('hex')
  t.teardown(() => killTagged(tag))
  const dir = t.testdir({ master: {}, node1: {}, node2: {} })
  const mHome = join(dir, 'master')
  const homes: Record<string, string> = { node1: join(dir, 'node1'), node2: join(dir, 'node2') }
  const control = await reserveEndpoint()
  const masterEnv = { ...MASTER_ENV, BAREKU_WEB_PORTS: await freePortRange(20) }

  // node1's client starts before any master is there.
  const w1 = await startWorker(t, homes.node1!, NODE_ENV)
  const c1 = await startClient(t, homes.node1!, control, { ...NODE_ENV, BAREKU_NODE: 'node1' })
  await event(c1, 'master not reachable, retrying')
  let m = await startMaster(t, mHome, masterEnv, { control })
  t.equal(m.control, control, 'the master binds the control endpoint the client waits on')
  const n2 = await startNode(t, homes.node2!, m.control, { ...NODE_ENV, BAREKU_NODE: 'node2' })
  const workers: Record<string, Proc> = { node1: w1, node2: n2.worker }
  const clients = { node1: c1, node2: n2.client }
  await until('both nodes up', async () => {
    const nodes = (await m.call('nodes')) as { name: string; status: string }[]
    return nodes.length === 2 && nodes.every((n) => n.status === 'up')
  })
  await release(m, mHome, tag)
  await m.call('ps:scale', { app: 'shop', formation: { web: 1, worker: 2 } })

  let list: Ps[] = []
  await t.test('both clients converge on their lists', async (t) => {
    list = await allReady(m, 3)
    t.same(
      list.map((i) => i.name),
      ['shop.web.1', 'shop.worker.1', 'shop.worker.2'],
      'the formation web=1 worker=2 is placed and ready',
    )
    t.same(
      new Set(list.filter((i) => i.type === 'worker').map((i) => i.node)),
      new Set(['node1', 'node2']),
      'the two workers are spread over the two nodes',
    )
    const pids = onePidEach(tag)
    t.same(
      Object.keys(pids).sort(),
      ['shop.web.1', 'shop.worker.1', 'shop.worker.2'],
      'one process per instance, across both nodes',
    )
    const web = list.find((i) => i.type === 'web')!
    t.equal(await get(web.port!), `${pids['shop.web.1']} v1\n`, 'the web serves')
    for (const name of ['node1', 'node2'] as const) {
      const mine = list.filter((i) => i.node === name).map((i) => i.name)
      t.same(
        nodeStatus(homes[name]!)
          .map((i) => slotName(i.name))
          .sort(),
        mine,
        `${name} runs exactly what the master placed there`,
      )
    }
  })

  await t.test('kill -9 of the master: everything keeps serving; a new one resumes', async (t) => {
    const pids = onePidEach(tag)
    const web = list.find((i) => i.type === 'web')!
    const poll = pollWeb(web.port!)
    const before = {
      apps: await m.call('apps'),
      releases: await m.call('releases', { app: 'shop' }),
      placement: list.map(({ name, node, port, release }) => ({ name, node, port, release })),
    }
    const { epoch } = (await m.call('status')) as { epoch: number }
    const endpoints = m.endpoints
    const killedAt = Date.now()
    m.proc.child.kill('SIGKILL')
    t.equal(await m.proc.exited, 'SIGKILL', 'the master is gone')
    // The clients notice: time has passed with no master, and nothing stopped.
    for (const c of Object.values(clients)) {
      await event(c, 'report dropped: master not connected', (r) => r.time >= killedAt)
    }
    t.same(onePidEach(tag), pids, 'every instance still runs, the same processes')

    m = await startMaster(top, mHome, masterEnv, endpoints)
    t.same(m.endpoints, endpoints, 'on the same endpoints')
    t.match(await m.call('status'), { epoch: epoch + 1 }, 'the epoch grew')
    t.same(await m.call('apps'), before.apps, 'same apps')
    t.same(await m.call('releases', { app: 'shop' }), before.releases, 'same releases')
    t.same(
      (await ps(m)).map(({ name, node, port, release }) => ({ name, node, port, release })),
      before.placement,
      'same placement',
    )
    await until('both nodes applied a list of the new epoch', async () => {
      const nodes = (await m.call('nodes')) as { applied?: { epoch: number } }[]
      return nodes.length === 2 && nodes.every((n) => n.applied?.epoch === epoch + 1)
    })
    await allReady(m, 3)
    const { ok, failures } = await poll.stop()
    t.same(failures, [], `the web answered throughout (${ok} requests)`)
    t.ok(ok > 0, 'and was asked while the master was down and back')
    t.same(onePidEach(tag), pids, 'nothing was restarted')

    // The client whose master restarted follows the new master's changes.
    await m.call('ps:scale', { app: 'shop', formation: { worker: 3 } })
    list = await allReady(m, 4)
    const now = onePidEach(tag)
    t.same(
      Object.keys(now).sort(),
      ['shop.web.1', 'shop.worker.1', 'shop.worker.2', 'shop.worker.3'],
      'ps:scale on the new master: the nodes run worker.3 too, once',
    )
    for (const [dyno, pid] of Object.entries(pids)) t.equal(now[dyno], pid, `${dyno} untouched`)
  })

  await t.test('kill -9 of a worker: instances run on; a new worker adopts them', async (t) => {
    const web = list.find((i) => i.type === 'web')!
    const node = web.node!
    const home = homes[node]!
    // Adoption is about the processes on the node, by their names there.
    const pids = dynos(tag)
    const webDyno = dynoOf(pids, 'shop.web.1')
    const mine = list.filter((i) => i.node === node).map((i) => dynoOf(pids, i.name))
    t.ok(mine.length >= 2, `${node} runs ${mine.join(', ')}`)
    const old = workers[node]!
    old.child.kill('SIGKILL')
    t.equal(await old.exited, 'SIGKILL', `${node}'s worker is gone`)
    t.same(dynos(tag), pids, 'every instance still runs')
    t.equal(await get(web.port!), `${pids[webDyno]} v1\n`, 'the web still serves')

    // One of them dies while no worker watches: the next worker must start it again, once.
    const victim = mine.find((n) => n !== webDyno)!
    process.kill(pids[victim]!, 'SIGKILL')
    await until(`${victim} gone`, () => !tagged(tag).has(victim))

    const w = await startWorker(top, home, NODE_ENV)
    workers[node] = w
    for (const name of mine.filter((n) => n !== victim)) {
      const adopted = await event(w, 'adopted', (r) => r.instance === name)
      t.equal(adopted.pid, pids[name], `${name} adopted with the same pid`)
    }
    const spawned = await event(w, 'spawned', (r) => r.instance === victim)
    t.not(spawned.pid, pids[victim], `${victim}, dead meanwhile, is started again`)
    await allReady(m, 4)
    const after = dynos(tag)
    t.same(after, { ...pids, [victim]: spawned.pid }, 'no duplicates: one process per instance')
    t.same(
      records(w, 'spawned').map((r) => r.instance),
      [victim],
      'the new worker spawned nothing else',
    )

    // Restarts resume: an adopted instance that crashes is restarted by the new worker.
    const adoptedWeb = pids[webDyno]!
    process.kill(adoptedWeb, 'SIGKILL')
    const exited = await event(w, 'exited', (r) => r.instance === webDyno)
    t.equal(exited.pid, adoptedWeb, 'the crash of the adopted web is noticed')
    const restarted = await event(w, 'spawned', (r) => r.instance === webDyno)
    await until('the web serves again', async () =>
      (await get(web.port!)) === `${String(restarted.pid)} v1\n` ? true : undefined,
    )
    await allReady(m, 4)
    t.same(dynos(tag), { ...after, [webDyno]: restarted.pid }, 'one process each')
  })
})

t.test('one node: crash backoff, surge-first replacement, scale 3 -> 1 -> 3', async (t) => {
  const tag = randomBytes(6).toString('hex')
  t.teardown(() => killTagged(tag))
  const dir = t.testdir({ master: {}, node: {} })
  const mHome = join(dir, 'master')
  const home = join(dir, 'node')
  const m = await startMaster(t, mHome, {
    ...MASTER_ENV,
    BAREKU_WEB_PORTS: await freePortRange(20),
  })
  const { worker } = await startNode(t, home, m.control, { ...NODE_ENV, BAREKU_NODE: 'node1' })
  await release(m, mHome, tag)
  await allReady(m, 1)

  await t.test('a crashing instance is restarted with a growing backoff', async (t) => {
    const slot = 'shop.crash.1'
    await m.call('ps:scale', { app: 'shop', formation: { crash: 1 } })
    await event(worker, 'spawned', (r) => r.instance === slot, { nth: 3, timeoutMs: 30_000 })
    const of = (msg: string) => records(worker, msg).filter((r) => r.instance === slot)
    const [exits, spawns, scheduled] = [of('exited'), of('spawned'), of('restart scheduled')]
    t.equal(exits[0]?.reason, 'exited with code 3', 'the exit is logged with its code')
    t.same(
      scheduled.slice(0, 2).map((r) => r.restarts),
      [1, 2],
      'restarts are counted',
    )
    const gaps = [0, 1].map((i) => spawns[i + 1]!.time - exits[i]!.time)
    t.ok(gaps[0]! >= 950, `first restart after about 1 s (${gaps[0]} ms)`)
    t.ok(gaps[1]! >= 1950, `second after about 2 s (${gaps[1]} ms)`)
    t.ok(gaps[1]! > gaps[0]! * 1.5, 'the backoff grows')
    await until('the master shows it in backoff', async () =>
      (await ps(m)).some((i) => i.name === slot && i.state === 'backoff'),
    )
    const shown = await until('the master counts the restarts', async () =>
      (await ps(m)).find((i) => i.name === slot && (i.restarts ?? 0) >= 2),
    )
    t.ok(shown.restarts! >= 2, `ps: ${shown.restarts} restarts`)
    const st = await until('status.json counts them too', () =>
      nodeStatus(home).find((i) => i.name === slot && i.restarts >= 2),
    )
    t.ok(st.restarts >= 2, `${st.restarts} restarts in the node's status`)
    await until('each run wrote to the instance log', () =>
      readFileSync(join(home, 'log', `${slot}.log`), 'utf8')
        .split('\n')
        .filter((l) => l.startsWith(`crash ${slot} `)).length >= 3
        ? true
        : undefined,
    )
    t.pass('each run wrote to the instance log')
    await m.call('ps:scale', { app: 'shop', formation: { crash: 0 } })
    await until('the crashing instance is gone', async () =>
      nodeStatus(home).every((i) => !i.name.startsWith(slot)),
    )
    await allReady(m, 1)
  })

  await t.test(
    'config:set makes a release; a changed instance is replaced surge-first',
    async (t) => {
      await m.call('ps:scale', { app: 'shop', formation: { worker: 1 } })
      const v1 = await allReady(m, 2)
      const old = onePidEach(tag)
      const oldWeb = v1.find((i) => i.type === 'web')!
      t.equal(await get(oldWeb.port!), `${old['shop.web.1']} v1\n`, 'v1 serves')
      const from = worker.lines.length
      const changedAt = Date.now()
      t.match(
        await m.call('config:set', { app: 'shop', vars: { GREETING: 'hello' } }),
        { release: 2 },
        'config:set makes release v2',
      )
      await until('release v2 ready everywhere', async () => {
        const s = (await m.call('deploy:status', { app: 'shop', release: 2 })) as DeployStatus
        return s.done
      })
      // The worker instance keeps its name across releases: the worker replaces it in its slot.
      const slot = 'shop.worker.1'
      await event(worker, 'promoted', (r) => r.instance === slot && r.time >= changedAt)
      const now = await settled(tag)
      const recs = records({ ...worker, lines: worker.lines.slice(from) })
      const at = (msg: string, pred: (r: LogRec) => boolean) =>
        recs.findIndex((r) => r.msg === msg && pred(r))
      const surge = (r: LogRec) => String(r.instance).startsWith(`${slot}~`)
      const steps = [
        at('spawned', surge),
        at('instance ready', surge),
        at('stopping', (r) => r.instance === slot && r.pid === old[slot]),
        at('exited', (r) => r.instance === slot && r.pid === old[slot]),
        at('promoted', (r) => r.instance === slot),
      ]
      t.ok(
        steps.every((s, k) => s >= 0 && (k === 0 || s > steps[k - 1]!)),
        `new spawned < new ready < old stopping < old exited < promoted (${steps.join(' ')})`,
      )
      t.equal(recs[steps[2]!]?.reason, 'replaced', 'the old one was stopped as replaced')
      t.not(now[slot], old[slot], `${slot} is a new process`)
      t.equal(recs[steps[0]!]?.pid, now[slot], 'the surge instance is the one running now')
      const log = readFileSync(join(home, 'log', `${slot}.log`), 'utf8').split('\n')
      const upNew = log.indexOf(`up ${slot} ${now[slot]}`)
      const termOld = log.indexOf(`term ${slot} ${old[slot]}`)
      t.ok(upNew >= 0 && termOld > upNew, 'the new one was up before the old one got SIGTERM')

      // The web of v2 has a port of its own, so both could run side by side.
      const web = (await allReady(m, 2)).find((i) => i.type === 'web')!
      t.not(web.port, oldWeb.port, 'the new web has a new port')
      t.not(now['shop.web.1'], old['shop.web.1'], 'and is a new process')
      t.equal(await get(web.port!), `${now['shop.web.1']} v2\n`, 'v2 serves')
    },
  )

  await t.test('ps:scale 3 -> 1 -> 3', async (t) => {
    await m.call('ps:scale', { app: 'shop', formation: { worker: 3 } })
    await allReady(m, 4)
    const three = onePidEach(tag)
    await m.call('ps:scale', { app: 'shop', formation: { worker: 1 } })
    await allReady(m, 2)
    const one = await until('two workers stopped', () => {
      const now = onePidEach(tag)
      return Object.keys(now).length === 2 && now
    })
    t.same(
      one,
      { 'shop.web.1': three['shop.web.1'], 'shop.worker.1': three['shop.worker.1'] },
      'worker.1 and the web run on, untouched',
    )
    await m.call('ps:scale', { app: 'shop', formation: { worker: 3 } })
    await allReady(m, 4)
    const again = onePidEach(tag)
    t.equal(again['shop.worker.1'], three['shop.worker.1'], 'worker.1 was never restarted')
    t.equal(again['shop.web.1'], three['shop.web.1'], 'nor the web')
    for (const slot of ['shop.worker.2', 'shop.worker.3']) {
      t.ok(again[slot] && again[slot] !== three[slot], `${slot} runs again, a new process`)
    }
  })
})

type Entry = { header: Parameters<Pack['entry']>[0]; body?: string }

/** Writes `entries` as a tar (tar-stream) into tar2sqfs, then names it `<sha256>.sqfs`. */
async function craftSlug(slugDir: string, entries: Entry[]) {
  const tmp = join(slugDir, `crafted-${randomBytes(4).toString('hex')}.tmp`)
  const pack = tarPack()
  const child = execa('tar2sqfs', ['--quiet', '--no-skip', '--compressor', 'zstd', tmp], {
    stdout: 'ignore',
  })
  const feeding = pipeline(pack, child.stdin)
  for (const { header, body } of entries) {
    const h = { uid: 0, gid: 0, mtime: new Date(0), ...header }
    if (body === undefined) pack.entry(h)
    else pack.entry(h, body)
  }
  pack.finalize()
  await feeding
  await child
  const sha256 = await sha256File(tmp)
  const size = readFileSync(tmp).length
  renameSync(tmp, join(slugDir, `${sha256}.sqfs`))
  return { sha256, size }
}

/** Sends `bytes` on a plain TCP connection to a ZeroMQ endpoint, then waits for it to close. */
function rawTcp(endpoint: string, bytes: Buffer): Promise<void> {
  const m = /^tcp:\/\/([^:]+):(\d+)$/.exec(endpoint)!
  return new Promise((resolve, reject) => {
    const sock = connect({ host: m[1], port: Number(m[2]) }, () => {
      sock.end(bytes)
    })
    sock.on('data', () => undefined)
    sock.once('error', (err) =>
      (err as NodeJS.ErrnoException).code === 'ECONNRESET' ? resolve() : reject(err),
    )
    sock.once('close', () => resolve())
  })
}

function cli(args: string[]): Promise<{ code: number; stderr: string; stdout: string }> {
  return new Promise((resolve) => {
    execFile(BAREKU, args, { cwd: REPO }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0
      resolve({ code, stdout, stderr })
    })
  })
}

t.test('bad input through the stack: refused, logged, and the node keeps running', async (top) => {
  // Daemons started in a subtest belong to the whole scenario: their teardown is top's.
  const t = top
  const tag = randomBytes(6).toString('hex')
  t.teardown(() => killTagged(tag))
  const dir = t.testdir({ master: {}, node: {}, src: {} })
  const mHome = join(dir, 'master')
  const home = join(dir, 'node')
  const m = await startMaster(t, mHome, {
    ...MASTER_ENV,
    BAREKU_WEB_PORTS: await freePortRange(20),
  })
  const nodeEnv = { ...NODE_ENV, BAREKU_NODE: 'node1' }
  let { client } = await startNode(t, home, m.control, nodeEnv)
  const good = await release(m, mHome, tag)
  await m.call('ps:scale', { app: 'shop', formation: { worker: 1 } })
  const running = await allReady(m, 2)
  const pids = onePidEach(tag)
  const web = running.find((i) => i.type === 'web')!
  const untouched = async (t: Test, what: string) => {
    t.same(onePidEach(tag), pids, `${what}: the same processes run`)
    t.equal(await get(web.port!), `${pids['shop.web.1']} v1\n`, `${what}: web serves`)
  }

  await t.test('unknown app and bad args at the control API and the command', async (t) => {
    const refused: [string, string, Record<string, unknown>, string, RegExp][] = [
      ['unknown app', 'ps', { app: 'nope' }, 'E_APP', /no app named "nope"/],
      ['unknown app to scale', 'ps:scale', { app: 'nope', formation: { web: 1 } }, 'E_APP', /nope/],
      [
        'a count that is no number',
        'ps:scale',
        { app: 'shop', formation: { web: 'many' } },
        'E_CONTROL',
        /args\.formation\.web must be an integer/,
      ],
      [
        'a type the release lacks',
        'ps:scale',
        { app: 'shop', formation: { clock: 1 } },
        'E_APP',
        /no process type "clock"/,
      ],
      ['no formation', 'ps:scale', { app: 'shop' }, 'E_CONTROL', /formation/],
      ['unknown command', 'apps:explode', {}, 'E_CONTROL', /unknown command/],
    ]
    for (const [what, cmd, args, code, message] of refused) {
      await t.rejects(m.call(cmd, args), { code, message }, `control API: ${what} is ${code}`)
    }
    const unknown = await cli(['ps', 'nope', '--master', m.control])
    t.equal(unknown.code, 1, 'bareku ps nope: exit 1')
    t.match(unknown.stderr, /no app named "nope".*apps:create/, 'with the fix')
    const badArg = await cli(['ps:scale', 'shop', 'web=lots', '--master', m.control])
    t.equal(badArg.code, 1, 'bareku ps:scale shop web=lots: exit 1')
    t.match(badArg.stderr, /web=lots: the count must be a number/, 'saying what is wrong')
    const scaled = await cli(['ps', 'shop', '--json', '--master', m.control])
    t.equal(scaled.code, 0, 'bareku ps shop --json: exit 0')
    t.same(
      (JSON.parse(scaled.stdout) as Ps[]).map((i) => i.name),
      ['shop.web.1', 'shop.worker.1'],
      'the formation did not change',
    )
    await untouched(t, 'after bad commands')
  })

  await t.test('garbage on every master socket: the master keeps serving', async (t) => {
    const ep = m.endpoints as Record<'control' | 'publish' | 'stats' | 'slugs', string>
    const dropsBefore = records(m.proc, 'node report dropped').length
    // Plain TCP, no ZMTP at all: random bytes, and a greeting that turns to noise.
    const greeting = Buffer.concat([
      Buffer.from([0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0]),
      Buffer.from('NULL'),
      randomBytes(2000),
    ])
    for (const endpoint of Object.values(ep)) {
      await rawTcp(endpoint, randomBytes(4096))
      await rawTcp(endpoint, greeting)
      await rawTcp(endpoint, Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'))
    }

    // ZeroMQ peers sending what the master does not expect.
    const req = async (frame: Buffer) => {
      const sock = new Request({ linger: 0, receiveTimeout: 10_000 })
      try {
        sock.connect(ep.control)
        await sock.send(frame)
        return parseControlReply((await sock.receive())[0]!)
      } finally {
        sock.close()
      }
    }
    const refused = { ok: false, error: { code: 'E_CONTROL' } }
    t.match(await req(randomBytes(64)), refused, 'control: random bytes get E_CONTROL')
    t.match(
      await req(Buffer.from('{"cmd":"ps","args":[1]}')),
      { ok: false, error: { code: 'E_CONTROL', message: /"args" must be an object/ } },
      'control: args not an object',
    )
    t.match(await req(Buffer.alloc(1024 * 1024, 0x7b)), refused, 'control: 1 MiB of "{"')
    const dealer = new Dealer({ linger: 0, receiveTimeout: 10_000 })
    t.teardown(() => dealer.close())
    dealer.connect(ep.control)
    await dealer.send([Buffer.from('no delimiter')])
    t.match(
      parseControlReply((await dealer.receive())[0]!),
      { ok: false },
      'control: a DEALER without the empty delimiter is answered',
    )
    await dealer.send([Buffer.alloc(0), Buffer.from('{"cmd":"status"}'), Buffer.from('extra')])
    t.match(parseControlReply((await dealer.receive())[1]!), { ok: true }, 'extra frames ignored')

    const push = new Push({ linger: 0 })
    t.teardown(() => push.close())
    push.connect(ep.stats)
    const report: NodeReport = {
      node: 'constructor',
      addr: '127.0.0.1',
      time: Date.now(),
      applied: null,
      capacity: 5,
      load: [0, 0, 0],
      mem: { total: 1, free: 1 },
      instances: [],
      errors: [],
    }
    await push.send(randomBytes(100))
    await push.send([Buffer.from('two'), Buffer.from('frames')])
    await push.send(Buffer.from('{"node":"node1","instances":"all of them"}'))
    await push.send(encodeNodeReport(report))
    await push.send(Buffer.from(JSON.stringify({ ...report, node: 'x', load: [1, 2] })))
    await until('five reports dropped', () =>
      records(m.proc, 'node report dropped').length - dropsBefore >= 5 ? true : undefined,
    )

    const slugs = new Dealer({ linger: 0, receiveTimeout: 10_000 })
    t.teardown(() => slugs.close())
    slugs.connect(ep.slugs)
    for (const frames of [
      [randomBytes(50)],
      [Buffer.from('{"sha256":"../../etc/passwd","offset":0,"length":1}')],
      [Buffer.from('a'), Buffer.from('b'), Buffer.from('c')],
    ]) {
      await slugs.send(frames)
      t.match(
        parseChunkReply(await slugs.receive()),
        { error: { code: 'E_SLUG' } },
        `slugs: ${frames.length} bad frame(s) get E_SLUG`,
      )
    }

    // The subscription side of the XPUB: unsubscribes never subscribed, junk commands, names
    // no node can have, and a subscription to every topic at once.
    const xsub = new XSubscriber({ linger: 0 })
    t.teardown(() => xsub.close())
    xsub.connect(ep.publish)
    for (const msg of [
      Buffer.from([0]),
      Buffer.from('\x00node9\0'),
      Buffer.from([2, 3, 4]),
      Buffer.from('\x01../../etc\0'),
      Buffer.from('\x01no-nul'),
      Buffer.concat([Buffer.from([1]), Buffer.alloc(100_000, 0x61), Buffer.from([0])]),
      randomBytes(300),
    ]) {
      await xsub.send(msg)
    }
    const all = new Subscriber({ linger: 0, receiveTimeout: 10_000 })
    t.teardown(() => all.close())
    all.connect(ep.publish)
    all.subscribe()
    const topics = new Set<string>()
    while (!topics.has('node1') || !topics.has('frontend')) {
      topics.add(parsePublication(await all.receive()).topic)
    }
    t.pass('a subscription to everything gets every topic')

    // Still serving on every socket.
    const sub = new Subscriber({ linger: 0, receiveTimeout: 10_000 })
    t.teardown(() => sub.close())
    sub.connect(ep.publish)
    sub.subscribe(topicFrame('node1'))
    const list = parseHostList(parsePublication(await sub.receive()).body, 'node1')
    t.same(
      list.instances.map((i) => slotName(i.name)),
      ['shop.web.1', 'shop.worker.1'],
      'publish: a new subscriber gets its list at once',
    )
    await slugs.send(encodeChunkRequest({ sha256: good.sha256, offset: 0, length: 1024 }))
    t.match(parseChunkReply(await slugs.receive()), { size: good.size }, 'slugs: served')
    t.match(await m.call('status'), { nodes: [{ name: 'node1', status: 'up' }] }, 'control')
    // Each report says which publication the node applied last; republishes make it grow.
    const applied = async () =>
      ((await m.call('nodes')) as { applied?: { seq: number } }[])[0]?.applied?.seq ?? 0
    const seq = await applied()
    await until('stats: node1 still reports', async () => (await applied()) > seq)
    t.equal(m.proc.child.exitCode, null, 'the master is still running')
    t.same(
      records(m.proc).filter((r) => r.msg === 'socket loop stopped' || Number(r.level) >= 50),
      [],
      'no socket loop stopped, nothing logged at error',
    )
    t.same(
      (await ps(m)).map((i) => i.name),
      ['shop.web.1', 'shop.worker.1'],
      'the cluster state is unchanged',
    )
    await untouched(t, 'after garbage')
  })

  await t.test('a slug whose bytes do not match its hash: the node keeps v1', async (t) => {
    // The client is stopped while the release is added and its slug corrupted, so it cannot
    // fetch the good bytes first; its worker runs on meanwhile.
    await client.stop()
    const src = join(dir, 'src', 'v2')
    cpSync(SLEEPER, src, { recursive: true })
    writeFileSync(join(src, 'VERSION'), 'v2\n')
    const slug = await slugFrom(src, mHome)
    const added = (await m.call('releases:add', {
      app: 'shop',
      slug,
      processTypes: PROCFILE,
    })) as { version: number }
    const file = join(mHome, 'slugs', `${slug.sha256}.sqfs`)
    const bytes = readFileSync(file)
    bytes[bytes.length >> 1] = bytes[bytes.length >> 1]! ^ 0xff
    writeFileSync(file, bytes)

    client = await startClient(top, home, m.control, nodeEnv)
    const failed = await event(client, 'host list not fully applied', (r) =>
      String(r.reason).includes(slug.sha256),
    )
    t.match(failed.reason, /app shop not updated: slug [0-9a-f]{64}: .*sha256/, 'logged why')
    const status = await until('deploy:status shows the error', async () => {
      const s = (await m.call('deploy:status', {
        app: 'shop',
        release: added.version,
      })) as DeployStatus
      return s.errors.length > 0 && s
    })
    t.match(
      status,
      {
        done: false,
        errors: [new RegExp(`^node1: app shop not updated: slug ${slug.sha256}`)],
      },
      'deploy:status: not done, and why',
    )
    await untouched(t, 'after a corrupt slug')
  })

  const unsafe: [string, Entry, RegExp][] = [
    [
      'a setuid file',
      { header: { name: 'bin/su', type: 'file', mode: 0o4755 }, body: '#!/bin/sh\n' },
      /bin\/su has the setuid bit/,
    ],
    [
      'an escaping symlink',
      { header: { name: 'etc', type: 'symlink', linkname: '../../../etc', mode: 0o777 } },
      /symlink etc -> .* leads outside/,
    ],
  ]
  for (const [what, evil, reason] of unsafe) {
    await t.test(`a slug with ${what} is refused; the node keeps v1`, async (t) => {
      const slug = await craftSlug(join(mHome, 'slugs'), [
        { header: { name: 'sleep.py', type: 'file', mode: 0o644 }, body: 'print(1)\n' },
        evil,
      ])
      const added = (await m.call('releases:add', {
        app: 'shop',
        slug,
        processTypes: PROCFILE,
      })) as { version: number }
      const failed = await event(client, 'host list not fully applied', (r) =>
        String(r.reason).includes(slug.sha256),
      )
      t.match(failed.reason, reason, 'logged, naming the entry')
      const status = await until('deploy:status shows the error', async () => {
        const s = (await m.call('deploy:status', {
          app: 'shop',
          release: added.version,
        })) as DeployStatus
        return s.errors.some((e) => e.includes(slug.sha256)) && s
      })
      t.match(status.errors, [reason], 'deploy:status has the reason')
      t.equal(status.done, false, 'the release is not done')
      await untouched(t, `after a slug with ${what}`)
    })
  }

  await t.test('a rollback to v1 clears the errors', async (t) => {
    const back = (await m.call('rollback', { app: 'shop', version: 1 })) as { version: number }
    const s = await until('the rollback is ready everywhere', async () => {
      const s = (await m.call('deploy:status', {
        app: 'shop',
        release: back.version,
      })) as DeployStatus
      return s.done && s.errors.length === 0 && s
    })
    t.same(s.nodes, [{ node: 'node1', desired: 2, ready: 2 }], 'both instances ready')
    const now = await settled(tag)
    const webNow = (await allReady(m, 2)).find((i) => i.type === 'web')!
    t.equal(
      await get(webNow.port!),
      `${now['shop.web.1']} v${back.version}\n`,
      'the rolled-back release serves',
    )
  })
})
