import t from 'tap'
import { specHash, type InstanceSpec } from '../lib/config/worker-config.js'
import {
  backoffDelay,
  planReconcile,
  slotOf,
  surgeName,
  type Action,
  type LiveInstance,
} from './supervise.js'

const NOW = 1_700_000_000_000

function spec(name: string, patch: Partial<InstanceSpec> = {}): InstanceSpec {
  const [app = 'app', type = 'worker'] = name.split('.')
  return { name, app, type, release: 1, command: 'run', cwd: '/slug', env: {}, ...patch }
}

function live(
  name: string,
  s: InstanceSpec,
  state: LiveInstance['state'],
  patch: Partial<LiveInstance> = {},
): LiveInstance {
  return {
    name,
    specHash: specHash(s),
    state,
    restarts: 0,
    ...(state === 'crashed' ? {} : { pid: 1000 }),
    startedAt: NOW - 5000,
    ...(s.port !== undefined ? { port: s.port } : {}),
    ...patch,
  }
}

const w1 = spec('app.worker.1')
const w2 = spec('app.worker.2')
const w3 = spec('app.worker.3')
const web = spec('app.web.1', { type: 'web', port: 5001 })
const web2 = spec('app.web.1', { type: 'web', port: 5002, release: 2 })
const web2SamePort = spec('app.web.1', { type: 'web', port: 5001, release: 2 })
const surge = surgeName('app.web.1', specHash(web2))

/** [name, desired, live, expected actions] at NOW */
const TABLE: [string, InstanceSpec[], LiveInstance[], Action[]][] = [
  [
    'EMPTY NODE STARTS ALL',
    [w1, w2, web],
    [],
    [
      { kind: 'start', name: 'app.worker.1', slot: 'app.worker.1' },
      { kind: 'start', name: 'app.worker.2', slot: 'app.worker.2' },
      { kind: 'start', name: 'app.web.1', slot: 'app.web.1' },
    ],
  ],
  [
    'SAME SPEC DOES NOTHING',
    [w1, web],
    [live('app.worker.1', w1, 'running'), live('app.web.1', web, 'ready')],
    [],
  ],
  ['STARTING IS LEFT TO START', [w1], [live('app.worker.1', w1, 'starting')], []],
  [
    'EMPTY CONFIG STOPS ALL',
    [],
    [live('app.worker.1', w1, 'running'), live('app.web.1', web, 'starting')],
    [
      { kind: 'stop', name: 'app.worker.1', reason: 'removed' },
      { kind: 'stop', name: 'app.web.1', reason: 'removed' },
    ],
  ],
  [
    'REMOVED IS STOPPED, OTHERS KEPT',
    [w1],
    [live('app.worker.1', w1, 'running'), live('app.worker.2', w2, 'ready')],
    [{ kind: 'stop', name: 'app.worker.2', reason: 'removed' }],
  ],
  [
    'REMOVED AND CRASHED IS FORGOTTEN',
    [],
    [live('app.worker.2', w2, 'crashed', { exitedAt: NOW })],
    [{ kind: 'forget', name: 'app.worker.2' }],
  ],
  ['REMOVED AND STOPPING IS WAITED FOR', [], [live('app.worker.2', w2, 'stopping')], []],
  [
    'DUPLICATE IS STOPPED',
    [w1],
    [live('app.worker.1~0123abcd', w1, 'starting'), live('app.worker.1', w1, 'running')],
    [{ kind: 'stop', name: 'app.worker.1~0123abcd', reason: 'duplicate' }],
  ],
  [
    'CRASHED WITH AN OLDER SPEC STARTS AT ONCE',
    [web2],
    [
      live('app.web.1', web, 'crashed', {
        restarts: 6,
        exitedAt: NOW - 10,
        nextRestartAt: NOW + 50_000,
      }),
    ],
    [
      { kind: 'forget', name: 'app.web.1' },
      { kind: 'start', name: 'app.web.1', slot: 'app.web.1' },
    ],
  ],
  [
    'FLIP BACK WHILE THE SURGE STARTS STOPS THE SURGE',
    [web],
    [live('app.web.1', web, 'ready'), live(surge, web2, 'starting')],
    [{ kind: 'stop', name: surge, reason: 'replaced' }],
  ],
  [
    'A SURGE NAME STILL STOPPING IS WAITED FOR',
    [web2],
    [live('app.web.1', web, 'ready'), live(surge, web2, 'stopping')],
    [],
  ],
]

t.test('plans', async (t) => {
  for (const [name, desired, instances, expected] of TABLE) {
    t.same(planReconcile(desired, instances, NOW), expected, name)
  }
})

t.test('a changed spec is replaced surge-first', async (t) => {
  const steps: [string, LiveInstance[], Action[]][] = [
    [
      'new spec: start the surge, keep the old',
      [live('app.web.1', web, 'ready')],
      [{ kind: 'replace', name: 'app.web.1', surge }],
    ],
    [
      'surge starting: the old keeps serving',
      [live('app.web.1', web, 'ready'), live(surge, web2, 'starting')],
      [],
    ],
    [
      'surge crashed: the old keeps serving, the surge backs off',
      [
        live('app.web.1', web, 'ready'),
        live(surge, web2, 'crashed', { exitedAt: NOW, startedAt: NOW - 100 }),
      ],
      [{ kind: 'restartLater', name: surge, at: NOW + 1000, restarts: 1 }],
    ],
    [
      'surge ready: stop the old',
      [live('app.web.1', web, 'running'), live(surge, web2, 'ready')],
      [{ kind: 'stop', name: 'app.web.1', reason: 'replaced' }],
    ],
    [
      'old stopping: the name is still taken',
      [live('app.web.1', web, 'stopping'), live(surge, web2, 'ready')],
      [],
    ],
    [
      'old gone: promote the surge',
      [live(surge, web2, 'ready')],
      [{ kind: 'promote', name: surge, to: 'app.web.1' }],
    ],
    ['promoted: nothing to do', [live('app.web.1', web2, 'ready')], []],
  ]
  for (const [name, instances, expected] of steps) {
    t.same(planReconcile([web2], instances, NOW), expected, name)
  }
  t.equal(surge, `app.web.1~${specHash(web2).slice(0, 8)}`)
})

t.test('a changed spec on the same port stops first, then starts', async (t) => {
  const steps: [string, LiveInstance[], Action[]][] = [
    [
      'stop the old: two cannot listen on one port',
      [live('app.web.1', web, 'ready')],
      [{ kind: 'stop', name: 'app.web.1', reason: 'replaced' }],
    ],
    ['wait while it stops', [live('app.web.1', web, 'stopping')], []],
    ['gone: start the new', [], [{ kind: 'start', name: 'app.web.1', slot: 'app.web.1' }]],
  ]
  for (const [name, instances, expected] of steps) {
    t.same(planReconcile([web2SamePort], instances, NOW), expected, name)
  }
})

t.test('a crashing instance backs off 1, 2, 4 ... 60, 60 s', async (t) => {
  const delays: number[] = []
  let restarts = 0
  let now = NOW
  for (let i = 0; i < 9; i++) {
    const crashed = live('app.worker.1', w1, 'crashed', {
      restarts,
      startedAt: now - 50,
      exitedAt: now,
    })
    const [step] = planReconcile([w1], [crashed], now)
    if (step?.kind !== 'restartLater')
      throw new Error(`expected restartLater, got ${JSON.stringify(step)}`)
    delays.push((step.at - now) / 1000)
    t.equal(step.restarts, restarts + 1, `restart ${i + 1} is counted`)
    const waiting = { ...crashed, nextRestartAt: step.at, restarts: step.restarts }
    t.same(planReconcile([w1], [waiting], step.at - 1), [], 'not before it is due')
    t.same(
      planReconcile([w1], [waiting], step.at),
      [{ kind: 'start', name: 'app.worker.1', slot: 'app.worker.1' }],
      'started when due',
    )
    restarts = step.restarts
    now = step.at + 50
  }
  t.same(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60])
  t.same([0, 1, 5, 6, 7, 100].map(backoffDelay), [1000, 2000, 32_000, 60_000, 60_000, 60_000])
})

t.test('10 s up resets the backoff', async (t) => {
  const crashedAfter = (upMs: number): LiveInstance =>
    live('app.worker.1', w1, 'crashed', { restarts: 5, startedAt: NOW - upMs, exitedAt: NOW })
  t.same(
    planReconcile([w1], [crashedAfter(10_000)], NOW),
    [{ kind: 'restartLater', name: 'app.worker.1', at: NOW + 1000, restarts: 1 }],
    'crashed after 10 s up: 1 s again',
  )
  t.same(
    planReconcile([w1], [crashedAfter(9_999)], NOW),
    [{ kind: 'restartLater', name: 'app.worker.1', at: NOW + 32_000, restarts: 6 }],
    'crashed after 9.999 s up: the backoff goes on',
  )
  const ready = (upMs: number): LiveInstance =>
    live('app.worker.1', w1, 'ready', { restarts: 5, startedAt: NOW - upMs })
  t.same(
    planReconcile([w1], [ready(10_000)], NOW),
    [{ kind: 'stable', name: 'app.worker.1' }],
    'ready for 10 s: stable',
  )
  t.same(planReconcile([w1], [ready(9_999)], NOW), [], 'ready for less: not yet')
  t.same(
    planReconcile([w1], [{ ...ready(60_000), state: 'running', restarts: 0 }], NOW),
    [],
    'running: already stable',
  )
})

t.test('scale 3 -> 1 -> 3', async (t) => {
  const three = [w1, w2, w3]
  const all = three.map((s) => live(s.name, s, 'running'))
  t.same(
    planReconcile([w1], all, NOW),
    [
      { kind: 'stop', name: 'app.worker.2', reason: 'removed' },
      { kind: 'stop', name: 'app.worker.3', reason: 'removed' },
    ],
    '3 -> 1 stops two',
  )
  const stopping = [
    all[0]!,
    { ...all[1]!, state: 'stopping' as const },
    { ...all[2]!, state: 'stopping' as const },
  ]
  t.same(planReconcile([w1], stopping, NOW), [], 'while they stop')
  t.same(planReconcile(three, stopping, NOW), [], 'back to 3 before they are gone: wait for them')
  t.same(
    planReconcile(three, [all[0]!], NOW),
    [
      { kind: 'start', name: 'app.worker.2', slot: 'app.worker.2' },
      { kind: 'start', name: 'app.worker.3', slot: 'app.worker.3' },
    ],
    'gone: 1 -> 3 starts two',
  )
})

t.test('names', async (t) => {
  t.equal(slotOf('app.web.1'), 'app.web.1')
  t.equal(slotOf('app.web.1~0123abcd'), 'app.web.1')
  t.equal(surgeName('app.web.1', 'abcdef0123456789'), 'app.web.1~abcdef01')
})
