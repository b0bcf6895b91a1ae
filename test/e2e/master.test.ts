/**
 * The master as a real process (`bin/bareku master`, every endpoint on tcp://127.0.0.1:0), driven
 * with real ZeroMQ sockets: the control API over REQ (lib/cluster/control-client.ts), fake nodes
 * (a SUB for their host list and a PUSH of reports that say every listed instance is ready),
 * a DEALER on the slug store, and a kill -9 and restart on the same ports and home.
 *
 *   test ──REQ──────> control ROUTER      fake node ──PUSH reports──> stats PULL
 *   test ──DEALER───> slugs ROUTER        fake node <──SUB "NODE\0"── publish XPUB
 *
 * Waits are for log lines, replies or a condition polled with a deadline; never a fixed sleep.
 */
import { createHash, randomBytes } from 'node:crypto'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { Dealer, Push, Request, Subscriber } from 'zeromq'
import { callMaster } from '../../lib/cluster/control-client.js'
import { parseRouteTable } from '../../lib/config/routes.js'
import { parseControlReply, type ControlReply } from '../../lib/protocol/control.js'
import {
  parseHostList,
  parsePublication,
  topicFrame,
  type HostList,
  type Publication,
} from '../../lib/protocol/host-list.js'
import { encodeNodeReport, type NodeReport } from '../../lib/protocol/node-report.js'
import { encodeChunkRequest, parseChunkReply } from '../../lib/protocol/slug-chunk.js'
import { until } from '../helpers/cluster.js'
import { logRecord, REPO, startProcess, type Proc } from '../helpers/process.js'

const BAREKU = join(REPO, 'bin', 'bareku')
const TTL_MS = 1500
const REPORT_MS = 100

type Endpoints = { control: string; publish: string; stats: string; slugs: string; logs: string }

async function startMaster(
  t: Test,
  home: string,
  env: NodeJS.ProcessEnv,
  at?: Endpoints,
): Promise<{ proc: Proc; endpoints: Endpoints }> {
  const proc = startProcess(BAREKU, ['master'], {
    env: {
      BAREKU_HOME: home,
      BAREKU_MASTER_CONTROL: at?.control ?? 'tcp://127.0.0.1:0',
      BAREKU_MASTER_PUBLISH: at?.publish ?? 'tcp://127.0.0.1:0',
      BAREKU_MASTER_STATS: at?.stats ?? 'tcp://127.0.0.1:0',
      BAREKU_MASTER_SLUGS: at?.slugs ?? 'tcp://127.0.0.1:0',
      BAREKU_MASTER_LOGS: at?.logs ?? 'tcp://127.0.0.1:0',
      BAREKU_MASTER_NODE_TTL_MS: String(TTL_MS),
      LOG_LEVEL: 'info',
      ...env,
    },
  })
  t.teardown(() => proc.stop())
  const line = await proc.waitFor((l) => logRecord(l)?.msg === 'ready', 30_000)
  return { proc, endpoints: logRecord(line)!.endpoints as Endpoints }
}

/** A node without a worker: follows its host list and reports every instance ready. */
class FakeNode {
  readonly pubs: Publication[] = []
  list: HostList | undefined
  private readonly sub = new Subscriber({ linger: 0 })
  private readonly push = new Push({ linger: 0, sendTimeout: 0 })
  private timer: NodeJS.Timeout | undefined
  private closed = false

  constructor(
    readonly name: string,
    ep: Endpoints,
    readonly capacity = 10,
  ) {
    this.sub.connect(ep.publish)
    this.sub.subscribe(topicFrame(name))
    this.push.connect(ep.stats)
    void this.read()
    this.report()
    this.timer = setInterval(() => this.report(), REPORT_MS)
  }

  private async read(): Promise<void> {
    try {
      for await (const frames of this.sub) {
        const pub = parsePublication(frames)
        this.pubs.push(pub)
        this.list = parseHostList(pub.body, this.name)
      }
    } catch (err) {
      if (!this.closed) throw err
    }
  }

  report(): void {
    const report: NodeReport = {
      node: this.name,
      addr: '127.0.0.1',
      time: Date.now(),
      applied: null,
      capacity: this.capacity,
      load: [0.1, 0.1, 0.1],
      mem: { total: 1000, free: 500 },
      instances: (this.list?.instances ?? []).map((i) => ({
        name: i.name,
        app: i.app,
        type: i.type,
        release: i.release,
        state: 'ready',
        restarts: 0,
        ...(i.port === undefined ? {} : { port: i.port }),
      })),
      errors: [],
    }
    // sendTimeout 0: a dead master must not block the node, as in the real client.
    this.push.send(encodeNodeReport(report)).catch(() => undefined)
  }

  stopReporting(): void {
    clearInterval(this.timer)
  }

  close(): void {
    this.closed = true
    this.stopReporting()
    this.sub.close()
    this.push.close()
  }
}

/** One raw request on a REQ: the reply as parsed, for what callMaster would not send. */
async function rawControl(endpoint: string, frame: Buffer): Promise<ControlReply> {
  const req = new Request({ linger: 0, receiveTimeout: 10_000 })
  try {
    req.connect(endpoint)
    await req.send(frame)
    const [reply] = await req.receive()
    return parseControlReply(reply!)
  } finally {
    req.close()
  }
}

t.test('the master, end to end', async (t) => {
  const home = t.testdir({})
  const slugDir = join(home, 'slugs')
  mkdirSync(slugDir, { recursive: true })
  // Bigger than two 1 MiB chunks, so the chunking is exercised.
  const slugBytes = randomBytes(2 * 1024 * 1024 + 12_345)
  const sha = createHash('sha256').update(slugBytes).digest('hex')
  writeFileSync(join(slugDir, `${sha}.sqfs`), slugBytes)
  const slug = { sha256: sha, size: slugBytes.length }

  const first = await startMaster(t, home, { BAREKU_MASTER_REPUBLISH_MS: '300' })
  const ep = first.endpoints
  for (const v of Object.values(ep)) t.match(v, /^tcp:\/\/127\.0\.0\.1:[1-9][0-9]*$/, v)
  const call = (cmd: string, args: Record<string, unknown> = {}) =>
    callMaster(ep.control, cmd, args)
  const nodes: FakeNode[] = []
  t.teardown(() => nodes.forEach((n) => n.close()))

  t.test('control API: round trips', async (t) => {
    t.same(await call('endpoints'), ep, 'endpoints: the bound ones')
    t.same(await call('apps'), [])
    t.match(await call('apps:create', { name: 'shop' }), {
      name: 'shop',
      url: 'http://shop.localhost:8080/',
      release: null,
    })
    t.match(await call('apps'), [{ name: 'shop', release: null }])
    t.same(await call('config:set', { app: 'shop', vars: { GREETING: 'hi', X: '1' } }), {
      config: { GREETING: 'hi', X: '1' },
      release: null,
    })
    t.same(await call('config:unset', { app: 'shop', keys: ['X'] }), {
      config: { GREETING: 'hi' },
      release: null,
    })
    t.same(await call('config', { app: 'shop' }), { GREETING: 'hi' })
    t.same(await call('domains:add', { app: 'shop', domain: 'shop.example.com' }), {
      domains: ['shop.example.com'],
    })
    t.same(await call('domains', { app: 'shop' }), {
      default: 'shop.localhost',
      domains: ['shop.example.com'],
    })
    const v1 = await call('releases:add', {
      app: 'shop',
      slug,
      processTypes: { web: 'node web.js', worker: 'node worker.js' },
      commit: 'abcdef1234',
      by: 'alice',
    })
    t.match(v1, {
      version: 1,
      slug,
      config: { GREETING: 'hi' },
      by: 'alice',
      description: 'Deploy abcdef1',
      formation: { web: 1, worker: 0 },
    })
    t.match(await call('config:set', { app: 'shop', vars: { GREETING: 'hello' } }), {
      release: 2,
    })
    t.match(await call('releases', { app: 'shop' }), [
      { version: 2, current: true, config: { GREETING: 'hello' }, slug },
      { version: 1, current: false, config: { GREETING: 'hi' } },
    ])
    t.match(await call('rollback', { app: 'shop', version: 1 }), {
      version: 3,
      config: { GREETING: 'hi' },
      description: 'Rollback to v1',
    })
    t.same(await call('config', { app: 'shop' }), { GREETING: 'hi' }, 'config rolled back too')
    t.match(await call('apps:info', { name: 'shop' }), {
      release: 3,
      formation: { web: 1, worker: 0 },
      hosts: ['shop.localhost', 'shop.example.com'],
      configKeys: ['GREETING'],
    })
    t.match(await call('ps', { app: 'shop' }), [
      { name: 'shop.web.1', state: 'unplaced', reason: 'no node is up' },
    ])
    t.match(await call('status'), { epoch: 1, nodes: [], apps: [{ name: 'shop', desired: 1 }] })
    t.same(await call('nodes'), [])
  })

  t.test('control API: every bad request is answered with a code', async (t) => {
    const garbage = await rawControl(ep.control, Buffer.from('garbage'))
    t.match(garbage, { ok: false, error: { code: 'E_CONTROL', message: /not JSON/ } })
    t.match(await rawControl(ep.control, Buffer.from('{"args":{}}')), {
      ok: false,
      error: { code: 'E_CONTROL', message: /needs "cmd"/ },
    })
    t.match(await rawControl(ep.control, Buffer.from('')), { ok: false })
    const refused: [string, string, Record<string, unknown>, string, RegExp][] = [
      [
        'UNKNOWN CMD',
        'apps:explode',
        {},
        'E_CONTROL',
        /unknown command "apps:explode".*apps:create/,
      ],
      ['MISSING ARG', 'apps:create', {}, 'E_CONTROL', /args\.name must be present/],
      [
        'BAD APP NAME',
        'apps:create',
        { name: '../etc' },
        'E_CONTROL',
        /args\.name must be an app name/,
      ],
      ['UNKNOWN ARG', 'apps', { verbose: true }, 'E_CONTROL', /args\.verbose/],
      ['EXISTS', 'apps:create', { name: 'shop' }, 'E_APP', /already exists/],
      ['NO SUCH APP', 'ps', { app: 'nope' }, 'E_APP', /no app named "nope".*apps:create/],
      [
        'BAD CONFIG KEY',
        'config:set',
        { app: 'shop', vars: { 'A-B': 'x' } },
        'E_CONTROL',
        /variable name/,
      ],
      [
        'CONFIG NOT STRING',
        'config:set',
        { app: 'shop', vars: { A: 1 } },
        'E_CONTROL',
        /args\.vars\.A must be a string without NUL bytes, got a number/,
      ],
      [
        'CONFIG VALUE NEVER ECHOED',
        'config:set',
        { app: 'shop', vars: { A: 'secret\0' } },
        'E_CONTROL',
        /^(?!.*secret).*got a string with a NUL byte/,
      ],
      [
        'UNKNOWN TYPE',
        'ps:scale',
        { app: 'shop', formation: { clock: 1 } },
        'E_APP',
        /no process type "clock".*web, worker/,
      ],
      [
        'NEGATIVE SCALE',
        'ps:scale',
        { app: 'shop', formation: { web: -1 } },
        'E_CONTROL',
        /formation\.web/,
      ],
      [
        'SLUG MISSING',
        'releases:add',
        { app: 'shop', slug: { sha256: 'f'.repeat(64), size: 1 }, processTypes: { web: 'x' } },
        'E_APP',
        /not in the slug store/,
      ],
      [
        'SLUG SIZE',
        'releases:add',
        { app: 'shop', slug: { ...slug, size: 5 }, processTypes: { web: 'x' } },
        'E_APP',
        /not 5/,
      ],
      [
        'NO TYPES',
        'releases:add',
        { app: 'shop', slug, processTypes: {} },
        'E_CONTROL',
        /at least one process type/,
      ],
      ['NO SUCH RELEASE', 'rollback', { app: 'shop', version: 99 }, 'E_APP', /no release v99/],
      [
        'DOMAIN TAKEN',
        'domains:add',
        { app: 'shop', domain: 'shop.localhost' },
        'E_APP',
        /already answers/,
      ],
      ['BAD DOMAIN', 'domains:add', { app: 'shop', domain: 'a/b' }, 'E_CONTROL', /host name/],
      [
        'DEPLOY STATUS NO RELEASE',
        'deploy:status',
        { app: 'shop', release: 9 },
        'E_APP',
        /no release v9/,
      ],
    ]
    for (const [name, cmd, args, code, message] of refused) {
      await t.rejects(call(cmd, args), { code, message }, name)
    }
    await call('apps:create', { name: 'empty' })
    await t.rejects(
      call('ps:scale', { app: 'empty', formation: { web: 1 } }),
      { code: 'E_APP', message: /push first/ },
      'NO RELEASE YET',
    )
    t.same(await call('apps:destroy', { name: 'empty' }), { name: 'empty', destroyed: true })
    t.match(await call('apps'), [{ name: 'shop' }], 'still running, state intact')
  })

  t.test(
    'a SUB gets its list at once and then periodically; garbage reports are dropped',
    async (t) => {
      const sub = new Subscriber({ linger: 0, receiveTimeout: 10_000 })
      t.teardown(() => sub.close())
      sub.connect(ep.publish)
      sub.subscribe(topicFrame('node1'))
      const a = parsePublication(await sub.receive())
      t.same(a.body, { host: 'node1', instances: [], slugs: {} }, 'an unknown node: run nothing')
      t.equal(a.meta.epoch, 1)
      const b = parsePublication(await sub.receive())
      t.equal(b.topic, 'node1')
      t.ok(b.meta.seq > a.meta.seq, 'seq grows')
      t.equal(b.meta.sha256, a.meta.sha256, 'same body')

      const push = new Push({ linger: 0 })
      t.teardown(() => push.close())
      push.connect(ep.stats)
      await push.send('not json')
      await push.send(['two', 'frames'])
      await push.send(JSON.stringify({ node: 'x' }))
      const dropped = (l: string) => logRecord(l)?.msg === 'node report dropped'
      await first.proc.waitFor((l) => dropped(l) && first.proc.lines.filter(dropped).length === 3)
      t.match(
        first.proc.lines.filter(dropped).map((l) => logRecord(l)?.err),
        [/must be JSON/, /one frame, got 2/, /applied must be/],
        'each dropped at warn, saying why',
      )
      t.match(await call('nodes'), [], 'no node from garbage')
    },
  )

  t.test('fake nodes appear; scaling spreads across them', async (t) => {
    nodes.push(new FakeNode('node1', ep), new FakeNode('node2', ep))
    const up = await until('two nodes up', async () => {
      const list = (await call('nodes')) as { name: string; status: string }[]
      return list.length === 2 && list.every((n) => n.status === 'up') && list
    })
    t.match(up, [
      { name: 'node1', addr: '127.0.0.1', capacity: 10, status: 'up' },
      { name: 'node2', addr: '127.0.0.1', capacity: 10, status: 'up' },
    ])
    const seen = (up[0] as unknown as { lastSeen: number }).lastSeen
    await until('lastSeen follows the reports, not only state changes', async () => {
      const list = (await call('nodes')) as { lastSeen: number }[]
      return list[0]!.lastSeen > seen
    })
    t.same(await call('ps:scale', { app: 'shop', formation: { web: 2, worker: 2 } }), {
      formation: { web: 2, worker: 2 },
    })
    type Ps = { name: string; node: string; port: number | null; state: string; release: number }
    const ps = await until('all four instances ready', async () => {
      const list = (await call('ps', { app: 'shop' })) as Ps[]
      return list.length === 4 && list.every((i) => i.state === 'ready') && list
    })
    const byName = Object.fromEntries(ps.map((i) => [i.name, i]))
    t.not(byName['shop.web.1']!.node, byName['shop.web.2']!.node, 'webs on distinct nodes')
    t.not(byName['shop.worker.1']!.node, byName['shop.worker.2']!.node, 'workers too')
    t.ok(byName['shop.web.1']!.port, 'webs have ports')
    t.equal(byName['shop.worker.1']!.port, null)
    const [n1, n2] = nodes as [FakeNode, FakeNode]
    t.equal(n1.list?.instances.length, 2)
    t.equal(n2.list?.instances.length, 2)
    const web = [...n1.list!.instances, ...n2.list!.instances].find((i) => i.type === 'web')!
    t.match(web.env, {
      GREETING: 'hi',
      BAREKU_APP: 'shop',
      BAREKU_RELEASE: 'v3',
      PORT: String(web.port),
    })
    t.same(n1.list?.slugs, { [sha]: { size: slug.size } })
    t.match(await call('deploy:status', { app: 'shop', release: 3 }), {
      current: true,
      done: true,
      unplaced: 0,
      nodes: [
        { node: 'node1', desired: 2, ready: 2 },
        { node: 'node2', desired: 2, ready: 2 },
      ],
      errors: [],
    })
    t.match(await call('deploy:status', { app: 'shop', release: 2 }), {
      current: false,
      done: false,
    })
    t.match(await call('status'), {
      apps: [{ name: 'shop', release: 3, desired: 4, placed: 4, ready: 4 }],
      unplaced: [],
    })

    // The frontend's route table: the app's hosts proxy to both web instances.
    const sub = new Subscriber({ linger: 0, receiveTimeout: 10_000 })
    t.teardown(() => sub.close())
    sub.connect(ep.publish)
    sub.subscribe(topicFrame('frontend'))
    const table = parseRouteTable(parsePublication(await sub.receive()).body)
    const hosts = table.servers[0]!.hosts
    t.same(
      hosts.map((h) => h.name),
      ['default', 'shop.localhost', 'shop.example.com'],
    )
    t.same(hosts[1]!.routes['/'], {
      kind: 'proxy',
      backends: ps
        .filter((i) => i.name.includes('web'))
        .map((i) => ({ addr: '127.0.0.1', port: i.port })),
    })
  })

  t.test('a silent node is marked down and its instances move', async (t) => {
    const [n1, n2] = nodes as [FakeNode, FakeNode]
    n2.stopReporting()
    await first.proc.waitFor((l) => {
      const r = logRecord(l)
      return r?.msg === 'node down, its instances move' && r.node === 'node2'
    }, 15_000)
    t.match(await call('nodes'), [
      { name: 'node1', status: 'up', instances: 4 },
      { name: 'node2', status: 'down', instances: 0 },
    ])
    await until('node1 lists all four', () => n1.list?.instances.length === 4)
    await until('node2 is told to run nothing', () => n2.list?.instances.length === 0)
    const ports = n1.list!.instances.flatMap((i) => (i.port ? [i.port] : []))
    t.equal(new Set(ports).size, 2, 'two web ports on node1, distinct')
    const ps = await until('all ready on node1', async () => {
      const list = (await call('ps', { app: 'shop' })) as { node: string; state: string }[]
      return list.every((i) => i.node === 'node1' && i.state === 'ready') && list
    })
    t.equal(ps.length, 4)
  })

  t.test('ps:restart gives web instances new ports; domains:remove', async (t) => {
    const [n1] = nodes as [FakeNode]
    const webPorts = () => n1.list!.instances.filter((i) => i.type === 'web').map((i) => i.port)
    const before = webPorts()
    t.same(await call('ps:restart', { app: 'shop', type: 'web' }), { restarted: ['web'] })
    await until('the webs restarted', () =>
      n1.list!.instances.filter((i) => i.type === 'web').every((i) => i.env.BAREKU_RESTART === '1'),
    )
    for (const port of webPorts()) t.notOk(before.includes(port), `new port ${port}`)
    t.ok(
      n1
        .list!.instances.filter((i) => i.type === 'worker')
        .every((i) => i.env.BAREKU_RESTART === '0'),
      'workers not restarted',
    )
    await until('the restarted webs are ready', async () => {
      const s = (await call('deploy:status', { app: 'shop', release: 3 })) as { done: boolean }
      return s.done
    })
    await t.rejects(call('ps:restart', { app: 'shop', type: 'clock' }), { code: 'E_APP' })
    t.same(await call('domains:remove', { app: 'shop', domain: 'shop.example.com' }), {
      domains: [],
    })
    await t.rejects(call('domains:remove', { app: 'shop', domain: 'shop.example.com' }), {
      code: 'E_APP',
      message: /no domain shop\.example\.com/,
    })
  })

  t.test('slug chunks are served; bad requests get error replies', async (t) => {
    const dealer = new Dealer({ linger: 0, receiveTimeout: 10_000 })
    t.teardown(() => dealer.close())
    dealer.connect(ep.slugs)
    const ask = async (req: Buffer) => {
      await dealer.send(req)
      return parseChunkReply(await dealer.receive())
    }
    const parts: Buffer[] = []
    let offset = 0
    for (;;) {
      const reply = await ask(encodeChunkRequest({ sha256: sha, offset, length: 1024 * 1024 }))
      if ('error' in reply) throw new Error(reply.error.message)
      t.equal(reply.size, slug.size)
      if (reply.data.length === 0) break
      parts.push(reply.data)
      offset += reply.data.length
    }
    t.equal(parts.length, 3, 'three chunks')
    t.equal(createHash('sha256').update(Buffer.concat(parts)).digest('hex'), sha, 'whole slug')

    const missing = 'e'.repeat(64)
    const bad: [string, Buffer, string, RegExp][] = [
      ['GARBAGE', Buffer.from('garbage'), '0'.repeat(64), /not JSON/],
      ['NO LENGTH', Buffer.from(JSON.stringify({ sha256: sha, offset: 0 })), sha, /length/],
      ['ZERO LENGTH', encodeChunkRequest({ sha256: sha, offset: 0, length: 0 }), sha, /at least 1/],
      [
        'TOO LONG',
        Buffer.from(JSON.stringify({ sha256: sha, offset: 0, length: 5e6 })),
        sha,
        /length/,
      ],
      [
        'BAD SHA',
        Buffer.from(JSON.stringify({ sha256: '../x', offset: 0, length: 1 })),
        '0'.repeat(64),
        /sha256/,
      ],
      [
        'MISSING SLUG',
        encodeChunkRequest({ sha256: missing, offset: 0, length: 10 }),
        missing,
        new RegExp(`${missing} is not in the slug store`),
      ],
      [
        'PAST THE END',
        encodeChunkRequest({ sha256: sha, offset: slug.size + 1, length: 10 }),
        sha,
        /past the end/,
      ],
    ]
    for (const [name, req, replySha, message] of bad) {
      t.match(await ask(req), { sha256: replySha, error: { code: 'E_SLUG', message } }, name)
    }
  })

  t.test('kill -9 and restart on the same ports and home: state intact, epoch grew', async (t) => {
    const before = {
      apps: await call('apps'),
      releases: await call('releases', { app: 'shop' }),
      config: await call('config', { app: 'shop' }),
      ps: (
        (await call('ps', { app: 'shop' })) as { name: string; node: string; port: number }[]
      ).map(({ name, node, port }) => ({ name, node, port })),
    }
    first.proc.child.kill('SIGKILL')
    t.equal(await first.proc.exited, 'SIGKILL')
    // A long republish period: whatever a new subscriber gets, it gets because it subscribed.
    const second = await startMaster(t, home, { BAREKU_MASTER_REPUBLISH_MS: '600000' }, ep)
    t.same(second.endpoints, ep, 'the same endpoints')
    t.match(await call('status'), { epoch: 2 })
    t.same(await call('apps'), before.apps)
    t.same(await call('releases', { app: 'shop' }), before.releases)
    t.same(await call('config', { app: 'shop' }), before.config)
    const ps = (await call('ps', { app: 'shop' })) as { name: string; node: string; port: number }[]
    t.same(
      ps.map(({ name, node, port }) => ({ name, node, port })),
      before.ps,
      'nothing moved',
    )

    const sub = new Subscriber({ linger: 0, receiveTimeout: 10_000 })
    t.teardown(() => sub.close())
    sub.connect(second.endpoints.publish)
    sub.subscribe(topicFrame('node1'))
    const pub = parsePublication(await sub.receive())
    t.equal(pub.meta.epoch, 2, 'at once on subscribe, in the new epoch')
    t.equal(parseHostList(pub.body, 'node1').instances.length, 4)
    const [n1] = nodes as [FakeNode]
    await until(
      'the fake node, reconnected, follows epoch 2',
      () => n1.pubs.at(-1)?.meta.epoch === 2,
    )
  })
})
