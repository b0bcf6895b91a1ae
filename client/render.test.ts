import t from 'tap'
import { renderWorkerConfig, type WorkerConfig } from '../lib/config/worker-config.js'
import type { HostInstance, HostList } from '../lib/protocol/host-list.js'
import { renderHost, type RenderInput } from './render.js'

const A = 'a'.repeat(64)
const B = 'b'.repeat(64)
const C = 'c'.repeat(64)

function inst(name: string, slug: string, patch: Partial<HostInstance> = {}): HostInstance {
  const [app = 'x', type = 'worker'] = name.split('.')
  return { name, app, type, release: 2, command: `run ${type}`, env: { K: 'v' }, slug, ...patch }
}

function list(...instances: HostInstance[]): HostList {
  const slugs: HostList['slugs'] = {}
  for (const i of instances) slugs[i.slug] = { size: 10 }
  return { host: 'node1', instances, slugs }
}

const dirs = new Map([
  [A, '/h/slugs/unpacked/' + A],
  [B, '/h/slugs/unpacked/' + B],
])

const current: WorkerConfig = {
  version: 1,
  epoch: 1,
  seq: 4,
  host: 'node1',
  instances: [
    {
      name: 'blog.web.1',
      app: 'blog',
      type: 'web',
      release: 1,
      command: 'old',
      cwd: '/old',
      env: {},
      port: 5001,
    },
    {
      name: 'blog.worker.1',
      app: 'blog',
      type: 'worker',
      release: 1,
      command: 'old',
      cwd: '/old',
      env: {},
    },
    {
      name: 'gone.worker.1',
      app: 'gone',
      type: 'worker',
      release: 1,
      command: 'old',
      cwd: '/old',
      env: {},
    },
    {
      name: 'shop.web.1',
      app: 'shop',
      type: 'web',
      release: 1,
      command: 'old',
      cwd: '/old',
      env: {},
      port: 5003,
    },
  ],
}

function input(l: HostList, patch: Partial<RenderInput> = {}): RenderInput {
  return {
    list: l,
    meta: { epoch: 2, seq: 9 },
    slugDirs: dirs,
    slugErrors: new Map(),
    current,
    ...patch,
  }
}

const names = (c: WorkerConfig) => c.instances.map((i) => `${i.name} ${i.cwd}`)

t.test('each instance runs from its unpacked slug; sorted; the meta is the list', async (t) => {
  const r = renderHost(
    input(list(inst('shop.worker.1', B), inst('blog.web.1', A, { type: 'web', port: 5000 }))),
  )
  t.same(r.errors, [])
  t.same(r.failed.size, 0)
  t.match(r.config, { version: 1, epoch: 2, seq: 9, host: 'node1' })
  t.same(names(r.config), [
    `blog.web.1 /h/slugs/unpacked/${A}`,
    `shop.worker.1 /h/slugs/unpacked/${B}`,
  ])
  t.same(r.config.instances[0], {
    name: 'blog.web.1',
    app: 'blog',
    type: 'web',
    release: 2,
    command: 'run web',
    cwd: `/h/slugs/unpacked/${A}`,
    env: { K: 'v' },
    port: 5000,
  })
  t.notOk('slug' in r.config.instances[0]!, 'the slug field is not copied')
  t.doesNotThrow(() => renderWorkerConfig(r.config), 'the worker would accept it')
  t.equal(
    renderWorkerConfig(
      renderHost(
        input(list(inst('blog.web.1', A, { type: 'web', port: 5000 }), inst('shop.worker.1', B))),
      ).config,
    ),
    renderWorkerConfig(r.config),
    'the same list in another order gives the same text',
  )
})

t.test('an empty list stops everything; an app not listed any more is gone', async (t) => {
  t.same(renderHost(input(list())).config.instances, [])
  const r = renderHost(input(list(inst('blog.worker.1', A))))
  t.same(names(r.config), [`blog.worker.1 /h/slugs/unpacked/${A}`], 'gone, shop and blog.web gone')
})

// name, list, slugErrors, expected instances (name + cwd), expected error patterns
const failures: Array<[string, HostList, Map<string, string>, string[], RegExp[]]> = [
  [
    'SLUG FETCH FAILED',
    list(inst('blog.worker.1', C), inst('shop.worker.1', B)),
    new Map([[C, 'sha256 mismatch']]),
    ['blog.web.1 /old', 'blog.worker.1 /old', `shop.worker.1 /h/slugs/unpacked/${B}`],
    [
      /^app blog not updated: slug c{64}: sha256 mismatch; it keeps 2 instance\(s\) from before \(blog\.web\.1, blog\.worker\.1\)$/,
    ],
  ],
  [
    'SLUG NOT UNPACKED',
    list(inst('blog.worker.1', C)),
    new Map<string, string>(),
    ['blog.web.1 /old', 'blog.worker.1 /old'],
    [/^app blog not updated: slug c{64}: not unpacked;/],
  ],
  [
    'ONE BAD SLUG OF TWO FAILS THE APP',
    list(inst('blog.worker.1', A), inst('blog.web.1', C, { type: 'web', port: 5000 })),
    new Map([[C, 'unsafe: setuid file bin/x']]),
    ['blog.web.1 /old', 'blog.worker.1 /old'],
    [/unsafe: setuid file bin\/x/],
  ],
  [
    'NEW APP FAILS: NOTHING TO KEEP',
    list(inst('new.worker.1', C), inst('shop.worker.1', B)),
    new Map([[C, 'store says no such slug']]),
    [`shop.worker.1 /h/slugs/unpacked/${B}`],
    [/^app new not updated: .*it keeps 0 instance\(s\) from before$/],
  ],
  [
    'WEB WITHOUT PORT REFUSED',
    list(inst('blog.web.1', A, { type: 'web' }), inst('shop.worker.1', B)),
    new Map<string, string>(),
    ['blog.web.1 /old', 'blog.worker.1 /old', `shop.worker.1 /h/slugs/unpacked/${B}`],
    [
      /^app blog not updated: instance spec refused: worker config: instances\[0\]\.port is missing/,
    ],
  ],
  [
    'BAD ENV KEY REFUSED',
    list(inst('blog.worker.1', A, { env: { 'NO-DASH': 'x' } })),
    new Map<string, string>(),
    ['blog.web.1 /old', 'blog.worker.1 /old'],
    [/instance spec refused: .*env key/],
  ],
  [
    'TILDE NAME REFUSED',
    list(inst('blog.worker.1~1234', A)),
    new Map<string, string>(),
    ['blog.web.1 /old', 'blog.worker.1 /old'],
    [/instances\[0\]\.name must be/],
  ],
  [
    'GARBAGE ENV REFUSED, NO CRASH',
    list(inst('blog.worker.1', A, { env: null as unknown as Record<string, string> })),
    new Map<string, string>(),
    ['blog.web.1 /old', 'blog.worker.1 /old'],
    [/instance spec refused/],
  ],
  [
    'PORT CLASH BETWEEN LISTED APPS: THE LATER APP FAILS',
    list(
      inst('blog.web.1', A, { type: 'web', port: 5000 }),
      inst('shop.web.1', B, { type: 'web', port: 5000 }),
    ),
    new Map<string, string>(),
    [`blog.web.1 /h/slugs/unpacked/${A}`, 'shop.web.1 /old'],
    [
      /^app shop not updated: instance spec refused: port 5000 of shop\.web\.1 is also blog\.web\.1's/,
    ],
  ],
  [
    'PORT CLASH INSIDE ONE APP',
    list(
      inst('shop.web.1', B, { type: 'web', port: 5000 }),
      inst('shop.web.2', B, { type: 'web', port: 5000 }),
    ),
    new Map<string, string>(),
    ['shop.web.1 /old'],
    [/port 5000 of shop\.web\.2 is also shop\.web\.1's/],
  ],
  [
    'KEPT INSTANCE CLASHES WITH AN UPDATED ONE: DROPPED',
    list(inst('blog.worker.1', C), inst('shop.web.1', B, { type: 'web', port: 5001 })),
    new Map([[C, 'timed out']]),
    ['blog.worker.1 /old', `shop.web.1 /h/slugs/unpacked/${B}`],
    [
      /^app blog: its running instance blog\.web\.1 was dropped: port 5001 of blog\.web\.1 is also shop\.web\.1's$/,
      /^app blog not updated: slug c{64}: timed out; it keeps 1 instance\(s\) from before \(blog\.worker\.1\)$/,
    ],
  ],
]

t.test('a failed app keeps its instances from worker.json; the others update', async (t) => {
  for (const [name, l, slugErrors, expected, errors] of failures) {
    const r = renderHost(input(l, { slugErrors }))
    t.same(names(r.config), expected, `${name}: instances`)
    t.equal(r.errors.length, errors.length, `${name}: ${errors.length} error(s)`)
    errors.forEach((re, i) => t.match(r.errors[i], re, `${name}: error ${i}`))
    t.doesNotThrow(() => renderWorkerConfig(r.config), `${name}: the worker would accept it`)
  }
})

t.test('without a readable worker.json a failed app has nothing to keep', async (t) => {
  const r = renderHost(
    input(list(inst('blog.worker.1', C), inst('shop.worker.1', B)), {
      current: undefined,
      slugErrors: new Map([[C, 'x']]),
    }),
  )
  t.same(names(r.config), [`shop.worker.1 /h/slugs/unpacked/${B}`])
  t.same([...r.failed.keys()], ['blog'])
})
