// Placement as input -> expected output tables: spread, capacity, node down, stability, ports,
// handler env and the route table.
import t from 'tap'
import { parseRouteTable, type HandlerTarget, type ProxyTarget } from '../lib/config/routes.js'
import { renderWorkerConfig } from '../lib/config/worker-config.js'
import { parseHostList } from '../lib/protocol/host-list.js'
import {
  handlerIdent,
  isHandlerType,
  plan,
  senderId,
  type Plan,
  type PlanSettings,
} from './plan.js'
import { emptyState, type App, type NodeStatus, type Release, type State } from './state.js'

const SHA1 = '1'.repeat(64)
const SHA2 = '2'.repeat(64)

const SETTINGS: PlanSettings = {
  domain: 'localhost',
  frontendPort: 8080,
  handlerHost: '127.0.0.1',
  handlerPorts: { from: 9500, to: 9999 },
  webPorts: { from: 5000, to: 5999 },
}

function release(version: number, types: Record<string, string>, patch: Partial<Release> = {}) {
  return {
    version,
    slug: { sha256: version % 2 ? SHA1 : SHA2, size: 100 + version },
    processTypes: types,
    config: { GREETING: 'hi' },
    by: 'test',
    at: '2024-01-01T00:00:00.000Z',
    description: `v${version}`,
    ...patch,
  }
}

function app(
  name: string,
  formation: Record<string, number>,
  types: Record<string, string> = { web: 'node web.js', worker: 'node worker.js' },
  patch: Partial<App> = {},
): App {
  return {
    name,
    createdAt: '2024-01-01T00:00:00.000Z',
    config: {},
    formation,
    releases: [release(1, types)],
    current: 1,
    domains: [],
    restarts: {},
    ...patch,
  }
}

function state(nodes: Record<string, [capacity: number, status?: NodeStatus]>, apps: App[]): State {
  const s = emptyState()
  s.epoch = 1
  for (const [name, [capacity, status = 'up']] of Object.entries(nodes)) {
    s.nodes[name] = { name, addr: `10.0.0.${name.slice(-1)}`, capacity, lastSeen: 0, status }
  }
  for (const a of apps) s.apps[a.name] = a
  return s
}

/** Applies a plan to its state, as master.ts does, for the next round. */
function applied(s: State, p: Plan): State {
  const next = structuredClone(s)
  next.placement = p.placement
  next.nextPort = p.nextPort
  for (const a of Object.values(next.apps)) {
    delete a.handlerPorts
    delete a.retained
  }
  for (const [name, h] of Object.entries(p.handlers)) next.apps[name]!.handlerPorts = h
  for (const [name, r] of Object.entries(p.retained)) next.apps[name]!.retained = r
  return next
}

const nodesOf = (p: Plan): Record<string, string> =>
  Object.fromEntries(Object.entries(p.placement).map(([k, v]) => [k, v.node]))

t.test('spread: one app+type over distinct nodes first, then least loaded', async (t) => {
  const cases: [string, State, Record<string, string>][] = [
    [
      'THREE WEBS, THREE NODES',
      state({ n1: [10], n2: [10], n3: [10] }, [app('a', { web: 3 })]),
      { 'a.web.1': 'n1', 'a.web.2': 'n2', 'a.web.3': 'n3' },
    ],
    [
      'FOUR WEBS, TWO NODES',
      state({ n1: [10], n2: [10] }, [app('a', { web: 4 })]),
      { 'a.web.1': 'n1', 'a.web.2': 'n2', 'a.web.3': 'n1', 'a.web.4': 'n2' },
    ],
    [
      'TWO TYPES: EACH SPREAD',
      state({ n1: [10], n2: [10] }, [app('a', { web: 1, worker: 2 })]),
      { 'a.web.1': 'n1', 'a.worker.1': 'n2', 'a.worker.2': 'n1' },
    ],
    [
      'LEAST LOADED BY USED/CAPACITY',
      state({ n1: [2], n2: [10] }, [app('a', { worker: 1 }), app('b', { worker: 2 })]),
      { 'a.worker.1': 'n1', 'b.worker.1': 'n2', 'b.worker.2': 'n1' },
    ],
    [
      'DOWN NODES TAKE NOTHING',
      state({ n1: [10, 'down'], n2: [10] }, [app('a', { web: 2 })]),
      { 'a.web.1': 'n2', 'a.web.2': 'n2' },
    ],
    ['SCALED TO ZERO', state({ n1: [10] }, [app('a', { web: 0, worker: 0 })]), {}],
    [
      'NO RELEASE YET',
      state({ n1: [10] }, [app('a', {}, undefined, { releases: [], current: null })]),
      {},
    ],
    [
      'A FORMATION TYPE THE RELEASE LACKS',
      state({ n1: [10] }, [app('a', { web: 1, clock: 2 }, { web: 'w' })]),
      { 'a.web.1': 'n1' },
    ],
  ]
  for (const [name, s, expected] of cases) {
    const p = plan(s, SETTINGS)
    t.same(nodesOf(p), expected, name)
    t.same(p.unplaced, [], `${name}: nothing unplaced`)
  }
})

t.test('capacity: what does not fit is unplaced, with the reason', async (t) => {
  const full = plan(state({ n1: [1], n2: [1] }, [app('a', { web: 3 })]), SETTINGS)
  t.same(nodesOf(full), { 'a.web.1': 'n1', 'a.web.2': 'n2' })
  t.same(full.unplaced, [
    { instance: 'a.web.3', app: 'a', type: 'web', reason: 'every up node is full (capacity)' },
  ])
  t.same(full.hostLists.n1?.instances.length, 1, 'the unplaced one is in no host list')
  t.same(full.hostLists.n2?.instances.length, 1)

  const none = plan(state({ n1: [5, 'down'] }, [app('a', { worker: 1 })]), SETTINGS)
  t.same(none.unplaced, [
    { instance: 'a.worker.1', app: 'a', type: 'worker', reason: 'no node is up' },
  ])
  t.same(none.hostLists.n1, { host: 'n1', instances: [], slugs: {} }, 'a down node gets []')

  const zero = plan(state({ n1: [0] }, [app('a', { worker: 1 })]), SETTINGS)
  t.equal(zero.unplaced.length, 1, 'capacity 0 takes nothing')

  // A node whose capacity dropped keeps what fits; the rest moves.
  const s = state({ n1: [10], n2: [10] }, [app('a', { worker: 4 })])
  for (let n = 1; n <= 4; n++) s.placement[`a.worker.${n}`] = { node: 'n1', release: 1, restart: 0 }
  s.nodes.n1!.capacity = 2
  t.same(nodesOf(plan(s, SETTINGS)), {
    'a.worker.1': 'n1',
    'a.worker.2': 'n1',
    'a.worker.3': 'n2',
    'a.worker.4': 'n2',
  })
})

t.test('stable placement; a node going down moves only its instances', async (t) => {
  const s0 = state({ n1: [10], n2: [10], n3: [10] }, [app('a', { web: 3, worker: 3 })])
  const p0 = plan(s0, SETTINGS)
  const s1 = applied(s0, p0)
  t.same(plan(s1, SETTINGS), p0, 'the same state gives the same plan')

  // A new node joins: nothing moves to it.
  const s2 = applied(s1, p0)
  s2.nodes.n4 = { name: 'n4', addr: '10.0.0.4', capacity: 10, lastSeen: 0, status: 'up' }
  const p2 = plan(s2, SETTINGS)
  t.same(nodesOf(p2), nodesOf(p0), 'a new node takes nothing that runs elsewhere')
  t.same(p2.placement, p0.placement, 'ports kept too')

  // Stability beats balance: everything on n1 stays on n1.
  const s3 = state({ n1: [10], n2: [10] }, [app('a', { worker: 3 })])
  for (let n = 1; n <= 3; n++)
    s3.placement[`a.worker.${n}`] = { node: 'n1', release: 1, restart: 0 }
  t.same(Object.values(nodesOf(plan(s3, SETTINGS))), ['n1', 'n1', 'n1'])

  // n2 goes down: its instances move, the others stay.
  const s4 = applied(s2, p2)
  s4.nodes.n2!.status = 'down'
  const p4 = plan(s4, SETTINGS)
  for (const [name, slot] of Object.entries(p2.placement)) {
    if (slot.node === 'n2') t.not(p4.placement[name]?.node, 'n2', `${name} moved off n2`)
    else t.same(p4.placement[name], slot, `${name} stayed`)
  }
  t.same(p4.hostLists.n2?.instances, [], 'the down node is told to run nothing')
  t.same(p4.unplaced, [])
  // The moved web instance gets a port free on its new node.
  const moved = Object.entries(p2.placement).find(([n, s]) => s.node === 'n2' && n.includes('web'))
  t.ok(moved, 'a web instance was on n2')
  const now = p4.placement[moved![0]]!
  t.ok(now.port, 'it has a port on its new node')

  // n2 comes back: nothing moves back.
  const s5 = applied(s4, p4)
  s5.nodes.n2!.status = 'up'
  t.same(plan(s5, SETTINGS).placement, p4.placement)
})

t.test(
  'web ports: unique per node, new for a new release or restart, kept otherwise',
  async (t) => {
    const types = { web: 'node web.js', worker: 'w' }
    const s0 = state({ n1: [50] }, [app('a', { web: 3, worker: 1 }, types), app('b', { web: 2 })])
    const p0 = plan(s0, SETTINGS)
    const ports0 = Object.values(p0.placement).flatMap((s) => (s.port ? [s.port] : []))
    t.same(ports0, [5000, 5001, 5002, 5003, 5004], 'web ports, one each, from the range start')
    t.equal(p0.placement['a.worker.1']?.port, undefined, 'a worker has no port')
    t.equal(p0.nextPort.n1, 5005)

    // New release of a: its webs get new ports, b keeps its own.
    const s1 = applied(s0, p0)
    s1.apps.a!.releases.push(release(2, types))
    s1.apps.a!.current = 2
    const p1 = plan(s1, SETTINGS)
    for (let n = 1; n <= 3; n++) {
      const before = p0.placement[`a.web.${n}`]!.port!
      const after = p1.placement[`a.web.${n}`]!.port!
      t.not(after, before, `a.web.${n}: new port for v2`)
      t.notOk(ports0.includes(after), `a.web.${n}: not a port in use before (surge-first)`)
    }
    t.same(p1.placement['b.web.1'], p0.placement['b.web.1'], 'b untouched')
    const all1 = Object.values(p1.placement).flatMap((s) => (s.port ? [s.port] : []))
    t.equal(new Set(all1).size, all1.length, 'ports unique on the node')
    t.same(plan(applied(s1, p1), SETTINGS).placement, p1.placement, 'kept on the next round')

    // ps:restart of web: new ports; the worker type keeps its slot (it has no port).
    const s2 = applied(s1, p1)
    s2.apps.a!.restarts = { web: 1 }
    const p2 = plan(s2, SETTINGS)
    t.not(p2.placement['a.web.1']!.port, p1.placement['a.web.1']!.port)
    t.equal(p2.placement['a.web.1']!.restart, 1)
    t.same(p2.placement['a.worker.1'], p1.placement['a.worker.1'])

    // The same port on two nodes is fine.
    const two = plan(state({ n1: [10], n2: [10] }, [app('a', { web: 2 })]), SETTINGS)
    t.same(
      [two.placement['a.web.1'], two.placement['a.web.2']],
      [
        { node: 'n1', release: 1, restart: 0, port: 5000 },
        { node: 'n2', release: 1, restart: 0, port: 5000 },
      ],
    )

    // Ports a node reports in use are avoided; the cursor wraps around the range.
    const busy = plan(state({ n1: [10] }, [app('a', { web: 2 })]), SETTINGS, {
      busyPorts: { n1: [5000, 5002] },
    })
    t.same(
      [busy.placement['a.web.1']?.port, busy.placement['a.web.2']?.port],
      [5001, 5003],
      'busy ports skipped',
    )
    const wrapState = state({ n1: [10] }, [app('a', { web: 2 })])
    wrapState.nextPort.n1 = 5999
    const wrap = plan(wrapState, SETTINGS)
    t.same([wrap.placement['a.web.1']?.port, wrap.placement['a.web.2']?.port], [5999, 5000])
    t.equal(wrap.nextPort.n1, 5001)

    // A range with no free port left: unplaced, with the reason.
    const tiny = { ...SETTINGS, webPorts: { from: 6000, to: 6001 } }
    const out = plan(state({ n1: [10] }, [app('a', { web: 3 })]), tiny)
    t.same(out.unplaced, [
      {
        instance: 'a.web.3',
        app: 'a',
        type: 'web',
        reason: 'no free port in BAREKU_WEB_PORTS on node n1',
      },
    ])
    t.notOk(out.placement['a.web.3'])
  },
)

t.test('host lists: env, command, slug; the worker would accept them', async (t) => {
  const a = app('a', { web: 1, worker: 1 })
  a.releases[0]!.config = { GREETING: 'hi', PORT: 'overridden' }
  a.restarts = { worker: 2 }
  const p = plan(state({ n1: [10] }, [a]), SETTINGS)
  const list = parseHostList(JSON.parse(JSON.stringify(p.hostLists.n1)), 'n1')
  t.same(list, {
    host: 'n1',
    instances: [
      {
        name: 'a.web.1-v1',
        app: 'a',
        type: 'web',
        release: 1,
        command: 'node web.js',
        env: {
          GREETING: 'hi',
          PORT: '5000',
          DYNO: 'web.1',
          BAREKU_APP: 'a',
          BAREKU_RELEASE: 'v1',
          BAREKU_RESTART: '0',
        },
        slug: SHA1,
        port: 5000,
      },
      {
        name: 'a.worker.1',
        app: 'a',
        type: 'worker',
        release: 1,
        command: 'node worker.js',
        env: {
          GREETING: 'hi',
          PORT: 'overridden',
          DYNO: 'worker.1',
          BAREKU_APP: 'a',
          BAREKU_RELEASE: 'v1',
          BAREKU_RESTART: '2',
        },
        slug: SHA1,
      },
    ],
    slugs: { [SHA1]: { size: 101 } },
  })
  t.doesNotThrow(() =>
    renderWorkerConfig({
      version: 1,
      epoch: 1,
      seq: 1,
      host: 'n1',
      instances: list.instances.map(({ slug: _slug, ...i }) => ({ ...i, cwd: `/slugs/${SHA1}` })),
    }),
  )
})

t.test('handlers: endpoints in the env, ports per app and release', async (t) => {
  const types = { 'chat-handler': 'node chat.js', handler: 'node h.js', worker: 'w' }
  t.ok(isHandlerType('handler') && isHandlerType('chat-handler') && !isHandlerType('handlers'))
  t.equal(senderId('a.chat_handler.1'), 'a-chat-handler-1', 'only what Mongrel2 ids allow')
  const s0 = state({ n1: [10], n2: [10] }, [
    app('a', { 'chat-handler': 2, handler: 1, worker: 1 }, types),
    app('b', { handler: 1 }, { handler: 'h' }),
    app('c', { web: 1 }, { web: 'w' }),
  ])
  const p0 = plan(s0, SETTINGS)
  t.same(p0.handlers, {
    a: { '1': { sendPort: 9500, recvPort: 9501 } },
    b: { '1': { sendPort: 9502, recvPort: 9503 } },
  })
  const envOf = (p: Plan, name: string) =>
    Object.values(p.hostLists)
      .flatMap((l) => l.instances)
      .find((i) => i.name === name)?.env
  t.match(envOf(p0, 'a.chat-handler.2-v1'), {
    BAREKU_HANDLER_SEND_SPEC: 'tcp://127.0.0.1:9500',
    BAREKU_HANDLER_RECV_SPEC: 'tcp://127.0.0.1:9501',
    BAREKU_HANDLER_SENDER_ID: 'a-chat-handler-2',
  })
  t.match(envOf(p0, 'b.handler.1-v1'), { BAREKU_HANDLER_SEND_SPEC: 'tcp://127.0.0.1:9502' })
  t.notOk(envOf(p0, 'a.worker.1')?.BAREKU_HANDLER_SEND_SPEC, 'not for other types')
  t.notOk(envOf(p0, 'a.handler.1-v1')?.PORT, 'a handler has no $PORT')

  // A new release gets ports of its own; with no frontend reporting, the old one's are freed.
  const s1 = applied(s0, p0)
  s1.apps.a!.releases.push(release(2, types))
  s1.apps.a!.current = 2
  delete s1.apps.b
  s1.apps.d = app('d', { handler: 1 }, { handler: 'h' })
  const p1 = plan(s1, SETTINGS)
  t.same(p1.handlers, {
    a: { '2': { sendPort: 9502, recvPort: 9503 } },
    d: { '1': { sendPort: 9504, recvPort: 9505 } },
  })
  t.match(envOf(p1, 'a.handler.1-v2'), { BAREKU_HANDLER_SEND_SPEC: 'tcp://127.0.0.1:9502' })

  // No pair left: the handler instances are unplaced, with the reason.
  const tight = { ...SETTINGS, handlerPorts: { from: 9500, to: 9502 } }
  const p2 = plan(s0, tight)
  t.same(p2.handlers, { a: { '1': { sendPort: 9500, recvPort: 9501 } } })
  t.same(p2.unplaced, [
    {
      instance: 'b.handler.1',
      app: 'b',
      type: 'handler',
      reason: 'no two free ports left in BAREKU_HANDLER_PORTS for its handlers',
    },
  ])
})

t.test('deploys: the previous release runs beside the new one until it drained', async (t) => {
  const types = { handler: 'h', web: 'w', worker: 'k' }
  const s0 = state({ n1: [10] }, [app('a', { handler: 2, web: 1, worker: 1 }, types)])
  const p0 = plan(s0, SETTINGS)
  const s1 = applied(s0, p0)
  s1.apps.a!.releases.push(release(2, types))
  s1.apps.a!.current = 2
  const names = (p: Plan) => p.hostLists.n1!.instances.map((i) => i.name).sort()
  const route = (p: Plan) => p.routes.servers[0]!.hosts[1]!.routes['/']!

  // A frontend reports, still on v1: v1's web and handler instances stay (workers do not).
  const v1only = {
    a: { serving: 1, releases: [{ release: 1, ready: true, inFlight: 3, drained: false }] },
  }
  const p1 = plan(s1, SETTINGS, { frontend: {} })
  t.same(names(p1), [
    'a.handler.1-v1',
    'a.handler.1-v2',
    'a.handler.2-v1',
    'a.handler.2-v2',
    'a.web.1-v1',
    'a.web.1-v2',
    'a.worker.1',
  ])
  t.same(
    p1.retained.a?.map((r) => r.release),
    [1],
  )
  t.same(p1.handlers.a, {
    '1': { sendPort: 9500, recvPort: 9501 },
    '2': { sendPort: 9502, recvPort: 9503 },
  })
  const old = p0.hostLists.n1!.instances.find((i) => i.name === 'a.handler.1-v1')
  t.same(
    p1.hostLists.n1!.instances.find((i) => i.name === 'a.handler.1-v1'),
    old,
    'the retained instance is unchanged: the worker keeps it running',
  )
  const web1 = p0.placement['a.web.1']!.port
  const web2 = p1.placement['a.web.1']!.port
  t.not(web2, web1, 'the new web instance gets a new port')
  t.same(route(p1), {
    kind: 'releases',
    app: 'a',
    minReady: 1,
    releases: [
      { release: 2, target: { kind: 'proxy', backends: [{ addr: '10.0.0.1', port: web2 }] } },
      { release: 1, target: { kind: 'proxy', backends: [{ addr: '10.0.0.1', port: web1 }] } },
    ],
  })
  t.same(parseRouteTable(JSON.parse(JSON.stringify(p1.routes))), p1.routes, 'a valid table')

  // Kept while the frontend serves v1, or serves v2 with v1 still busy.
  const s2 = applied(s1, p1)
  const busy = {
    a: {
      serving: 2,
      releases: [
        { release: 2, ready: true, inFlight: 0, drained: false },
        { release: 1, ready: true, inFlight: 2, drained: false },
      ],
    },
  }
  for (const frontend of [v1only, busy]) {
    t.same(
      plan(s2, SETTINGS, { frontend }).retained.a?.map((r) => r.release),
      [1],
    )
  }
  // v2 serves and v1 drained: v1 goes, its ports are freed, the route is v2's alone.
  const drained = structuredClone(busy)
  drained.a.releases[1] = { release: 1, ready: true, inFlight: 0, drained: true }
  const p3 = plan(s2, SETTINGS, { frontend: drained })
  t.same(p3.retained, {})
  t.same(names(p3), ['a.handler.1-v2', 'a.handler.2-v2', 'a.web.1-v2', 'a.worker.1'])
  t.same(p3.handlers.a, { '2': { sendPort: 9502, recvPort: 9503 } })
  t.same(route(p3), { kind: 'proxy', backends: [{ addr: '10.0.0.1', port: web2 }] })

  // Two deploys in a row: v1 and v2 both stay until v3 serves.
  const s4 = applied(s2, plan(s2, SETTINGS, { frontend: busy }))
  s4.apps.a!.releases.push(release(3, types))
  s4.apps.a!.current = 3
  const p4 = plan(s4, SETTINGS, { frontend: busy })
  t.same(
    p4.retained.a?.map((r) => r.release),
    [2, 1],
  )
  const rel = route(p4)
  t.same(rel.kind === 'releases' ? rel.releases.map((r) => r.release) : [], [3, 2, 1])
  // The frontend gone silent (no frontend in observed): nothing is retained.
  t.same(plan(s4, SETTINGS).retained, {})
  // Scaled to 0: nothing takes over, so nothing is kept.
  const s6 = structuredClone(s4)
  s6.apps.a!.formation = { handler: 0, web: 0, worker: 1 }
  t.same(plan(s6, SETTINGS, { frontend: busy }).retained, {})
  // A retained instance on a node that went down is dropped.
  const s5 = structuredClone(s4)
  s5.apps.a!.retained = p4.retained.a
  s5.nodes.n1!.status = 'down'
  t.same(plan(s5, SETTINGS, { frontend: busy }).retained, {})
})

t.test('deploys: a handler release takes over once all its handlers are connected', async (t) => {
  const types = { handler: 'h' }
  const s0 = state({ n1: [10] }, [app('a', { handler: 3 }, types)])
  const s1 = applied(s0, plan(s0, SETTINGS))
  s1.apps.a!.releases.push(release(2, types))
  s1.apps.a!.current = 2
  const p1 = plan(s1, SETTINGS, { frontend: {} })
  const route = p1.routes.servers[0]!.hosts[1]!.routes['/']!
  t.match(route, { kind: 'releases', minReady: 3 })
  t.same(route.kind === 'releases' ? route.releases.map((r) => r.release) : [], [2, 1])
})

t.test('a static site is a Dir route over its release slug, with no instance', async (t) => {
  const site = app('site', {}, {}, { releases: [release(1, {}, { static: 'public' })] })
  const p = plan(state({ n1: [10] }, [site]), SETTINGS)
  t.same(p.hostLists.n1?.instances ?? [], [], 'nothing runs')
  const host = p.routes.servers[0]!.hosts.find((h) => h.name.startsWith('site.'))!
  t.same(host.routes['/'], {
    kind: 'dir',
    base: 'public/',
    indexFile: 'index.html',
    defaultCtype: 'application/octet-stream',
    cacheTtl: 0,
    slug: { app: 'site', sha256: SHA1, size: 101, release: 1 },
  })
  t.same(parseRouteTable(JSON.parse(JSON.stringify(p.routes))), p.routes, 'a valid table')

  // The same slug with a web process (a Procfile next to public/): the process is routed to.
  const web = app(
    'site',
    { web: 1 },
    { web: 'w' },
    {
      releases: [release(1, { web: 'w' }, { static: 'public' })],
    },
  )
  const p2 = plan(state({ n1: [10] }, [web]), SETTINGS)
  const host2 = p2.routes.servers[0]!.hosts.find((h) => h.name.startsWith('site.'))!
  t.match(host2.routes['/'], { kind: 'proxy' })
})

t.test(
  'a web app that becomes a static site keeps its processes until the site is served',
  async (t) => {
    const s0 = state({ n1: [10] }, [app('a', { web: 1 }, { web: 'w' })])
    const s1 = applied(s0, plan(s0, SETTINGS))
    s1.apps.a!.releases.push(release(2, {}, { static: 'public' }))
    s1.apps.a!.current = 2
    const names = (p: Plan) => (p.hostLists.n1?.instances ?? []).map((i) => i.name)
    const route = (p: Plan) => p.routes.servers[0]!.hosts[1]!.routes['/']!
    const dir = {
      kind: 'dir',
      base: 'public/',
      indexFile: 'index.html',
      defaultCtype: 'application/octet-stream',
      cacheTtl: 0,
      slug: { app: 'a', sha256: SHA2, size: 102, release: 2 },
    }

    // The frontend still serves v1 (it applies the Dir route once it has the files): v1 runs on.
    const p1 = plan(s1, SETTINGS, { frontend: {} })
    t.same(names(p1), ['a.web.1-v1'], "v1's web process is kept")
    t.same(
      p1.retained.a?.map((r) => r.release),
      [1],
    )
    t.same(route(p1), dir, 'the route is the site at once')
    // The site is served: v1 goes.
    const served = {
      a: { serving: 2, releases: [{ release: 2, ready: true, inFlight: 0, drained: false }] },
    }
    const p2 = plan(applied(s1, p1), SETTINGS, { frontend: served })
    t.same(p2.retained, {})
    t.same(names(p2), [], 'then nothing runs')
    t.same(route(p2), dir)
    // No frontend reporting: nothing to wait for.
    t.same(plan(s1, SETTINGS).retained, {})
  },
)

t.test('route table: proxy over web instances, else handler endpoints', async (t) => {
  const s = state({ n1: [10], n2: [10] }, [
    app('a', { web: 2 }, { web: 'w' }, { domains: ['www.example.com'] }),
    app('b', { handler: 1 }, { handler: 'h' }),
    app('c', { worker: 1 }, { worker: 'w' }),
    app('d', { web: 0 }, { web: 'w' }),
  ])
  const p = plan(s, { ...SETTINGS, domain: 'apps.test', frontendPort: 80 })
  const table = parseRouteTable(JSON.parse(JSON.stringify(p.routes)))
  t.same(table, p.routes, 'a valid route table, every field given')
  const server = table.servers[0]!
  t.match(server, { uuid: 'bareku', name: 'bareku', bindAddr: '0.0.0.0', port: 80, chroot: '' })
  t.same(
    server.hosts.map((h) => [h.name, h.matching, Object.keys(h.routes)]),
    [
      ['default', 'default', []],
      ['a.apps.test', 'a.apps.test', ['/']],
      ['www.example.com', 'www.example.com', ['/']],
      ['b.apps.test', 'b.apps.test', ['/']],
    ],
    'no host for apps with nothing to route to',
  )
  t.equal(server.defaultHost, 'default')
  const proxy = server.hosts[1]!.routes['/'] as ProxyTarget
  t.same(proxy, {
    kind: 'proxy',
    backends: [
      { addr: '10.0.0.1', port: 5000 },
      { addr: '10.0.0.2', port: 5000 },
    ],
  })
  t.same(server.hosts[2]!.routes['/'], proxy, 'a custom domain routes the same')
  const handler = server.hosts[3]!.routes['/'] as HandlerTarget
  t.same(handler, {
    kind: 'handler',
    sendSpec: 'tcp://127.0.0.1:9500',
    sendIdent: handlerIdent('b'),
    recvSpec: 'tcp://127.0.0.1:9501',
    recvIdent: '',
    protocol: 'json',
    rawPayload: false,
  })
  t.match(handlerIdent('b'), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-a[0-9a-f]{3}-[0-9a-f]{12}$/)
  t.equal(handlerIdent('b'), handlerIdent('b'), 'stable')
  t.not(handlerIdent('b'), handlerIdent('a'))

  // A host name two apps claim (possible after BAREKU_DOMAIN changed) stays with the first.
  const clash = state({ n1: [10] }, [
    app('a', { web: 1 }, { web: 'w' }),
    app('b', { web: 1 }, { web: 'w' }, { domains: ['a.localhost'] }),
  ])
  const names = plan(clash, SETTINGS).routes.servers[0]!.hosts.map((h) => h.name)
  t.same(names, ['default', 'a.localhost', 'b.localhost'])
})

t.test(
  'route cutover on a restart: the old instance serves until the new one is ready',
  async (t) => {
    const types = { web: 'w' }
    const s0 = state({ n1: [10] }, [app('a', { web: 2 }, types)])
    const p0 = plan(s0, SETTINGS)
    const s1 = applied(s0, p0)
    s1.apps.a!.restarts = { web: 1 }
    const backends = (readyPorts: Record<string, Record<string, number[]>>) =>
      (
        plan(s1, SETTINGS, { readyPorts }).routes.servers[0]!.hosts[1]!.routes['/'] as ProxyTarget
      ).backends.map((b) => b.port)
    const [old1, old2] = [p0.placement['a.web.1']!.port!, p0.placement['a.web.2']!.port!]
    const p1 = plan(s1, SETTINGS)
    const [new1, new2] = [p1.placement['a.web.1']!.port!, p1.placement['a.web.2']!.port!]
    const cases: [string, Record<string, Record<string, number[]>>, number[]][] = [
      ['NOTHING REPORTED: THE PLANNED PORTS', {}, [new1, new2]],
      ['ONLY THE OLD READY', { n1: { 'a.web.1-v1': [old1], 'a.web.2-v1': [old2] } }, [old1, old2]],
      ['ONE NEW READY', { n1: { 'a.web.1-v1': [old1, new1], 'a.web.2-v1': [old2] } }, [new1, old2]],
      [
        'BOTH NEW READY',
        { n1: { 'a.web.1-v1': [new1], 'a.web.2-v1': [old2, new2] } },
        [new1, new2],
      ],
      ['READY ON ANOTHER NODE DOES NOT COUNT', { n9: { 'a.web.1-v1': [old1] } }, [new1, new2]],
    ]
    for (const [name, ready, expected] of cases) t.same(backends(ready), expected, name)
    t.same(
      plan(s1, SETTINGS, { readyPorts: { n1: { 'a.web.1-v1': [old1] } } }).placement,
      p1.placement,
      'readiness changes routes only, never placement',
    )
  },
)
