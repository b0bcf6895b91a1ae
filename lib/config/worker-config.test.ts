import t from 'tap'
import {
  parseWorkerConfig,
  renderWorkerConfig,
  specHash,
  type InstanceSpec,
  type WorkerConfig,
} from './worker-config.js'

const web: InstanceSpec = {
  name: 'myapp.web.1',
  app: 'myapp',
  type: 'web',
  release: 7,
  command: 'node server.js',
  cwd: '/var/lib/bareku/apps/myapp/slug-7',
  env: { NODE_ENV: 'production', DATABASE_URL: 'postgres://secret@db/x' },
  port: 5001,
}
const worker: InstanceSpec = {
  name: 'myapp.worker.1',
  app: 'myapp',
  type: 'worker',
  release: 7,
  command: "bin/jobs --queue 'default'",
  cwd: '/var/lib/bareku/apps/myapp/slug-7',
  env: {},
  user: 'myapp',
  graceMs: 30_000,
}
const CONFIG: WorkerConfig = {
  version: 1,
  epoch: 3,
  seq: 41,
  host: 'web1',
  instances: [web, worker],
}

t.test('a full config renders and parses back to an equal config', async (t) => {
  const text = renderWorkerConfig(CONFIG)
  t.ok(text.endsWith('\n'), 'ends with a newline')
  t.same(parseWorkerConfig(text), CONFIG)
  t.same(parseWorkerConfig(JSON.stringify({ ...CONFIG, instances: [] })).instances, [], 'empty')
})

t.test('rendering is canonical: field and env order do not matter', async (t) => {
  const shuffled: InstanceSpec = {
    port: 5001,
    env: { DATABASE_URL: 'postgres://secret@db/x', NODE_ENV: 'production' },
    cwd: web.cwd,
    command: web.command,
    release: 7,
    type: 'web',
    app: 'myapp',
    name: 'myapp.web.1',
  }
  t.equal(
    renderWorkerConfig({ ...CONFIG, instances: [shuffled, worker] }),
    renderWorkerConfig(CONFIG),
  )
})

t.test('specHash: same content same hash, any change a new hash', async (t) => {
  const h = specHash(web)
  t.match(h, /^[0-9a-f]{64}$/)
  t.equal(
    specHash({ ...web, env: { DATABASE_URL: web.env.DATABASE_URL!, NODE_ENV: 'production' } }),
    h,
  )
  const changes: [string, InstanceSpec][] = [
    ['release', { ...web, release: 8 }],
    ['command', { ...web, command: 'node other.js' }],
    ['cwd', { ...web, cwd: '/srv/slug-8' }],
    ['env value', { ...web, env: { ...web.env, NODE_ENV: 'staging' } }],
    ['env key', { ...web, env: { ...web.env, EXTRA: '' } }],
    ['port', { ...web, port: 5002 }],
    ['user', { ...web, user: 'nobody' }],
    ['graceMs', { ...web, graceMs: 1 }],
  ]
  for (const [what, spec] of changes) t.not(specHash(spec), h, `a changed ${what}`)
})

t.test('renderWorkerConfig refuses what the parser would refuse', async (t) => {
  t.throws(() => renderWorkerConfig({ ...CONFIG, instances: [web, { ...worker, port: 5001 }] }), {
    code: 'E_WORKER_CONFIG',
  })
})

const good = (): Record<string, unknown> =>
  JSON.parse(JSON.stringify(CONFIG)) as Record<string, unknown>
const withSpec = (patch: Record<string, unknown>, drop?: string): string => {
  const c = good()
  const spec = { ...(c.instances as Record<string, unknown>[])[0], ...patch }
  if (drop) delete spec[drop]
  return JSON.stringify({ ...c, instances: [spec, (c.instances as unknown[])[1]] })
}
const withTop = (patch: Record<string, unknown>, drop?: string): string => {
  const c = { ...good(), ...patch }
  if (drop) delete c[drop]
  return JSON.stringify(c)
}
const full = renderWorkerConfig(CONFIG)

/** [name, text, what the message must name] */
const BAD: [string, string, RegExp][] = [
  ['EMPTY FILE', '', /not valid JSON.*truncated or corrupt/],
  ['TRUNCATED', full.slice(0, full.length / 2), /not valid JSON.*truncated or corrupt/],
  ['TRUNCATED AT THE LAST BRACE', full.trimEnd().slice(0, -1), /truncated or corrupt/],
  ['GARBAGE', '\u0000\u0000\u0000', /not valid JSON/],
  ['NOT AN OBJECT', '[]', /the file must be a JSON object/],
  ['NULL', 'null', /the file must be a JSON object/],
  ['UNKNOWN TOP FIELD', withTop({ colour: 'blue' }), /unknown field colour/],
  ['VERSION 2', withTop({ version: 2 }), /version must be 1.*upgrade/],
  ['NO VERSION', withTop({}, 'version'), /version is missing/],
  ['NO INSTANCES', withTop({}, 'instances'), /instances is missing/],
  ['INSTANCES NOT ARRAY', withTop({ instances: {} }), /instances must be an array/],
  ['NEGATIVE EPOCH', withTop({ epoch: -1 }), /epoch must be an integer/],
  ['FRACTIONAL SEQ', withTop({ seq: 1.5 }), /seq must be an integer/],
  ['EMPTY HOST', withTop({ host: '' }), /host must be/],
  ['INSTANCE NOT OBJECT', withTop({ instances: ['x'] }), /instances\[0\] must be an object/],
  ['UNKNOWN SPEC FIELD', withSpec({ colour: 'blue' }), /unknown field instances\[0\]\.colour/],
  ['MISSING COMMAND', withSpec({}, 'command'), /instances\[0\]\.command is missing/],
  ['MISSING ENV', withSpec({}, 'env'), /instances\[0\]\.env is missing/],
  ['NAME WITH TILDE', withSpec({ name: 'myapp.web.1~abc' }), /instances\[0\]\.name must be/],
  ['NAME WITH SLASH', withSpec({ name: '../etc' }), /instances\[0\]\.name must be/],
  ['BAD TYPE', withSpec({ type: 'web:' }), /instances\[0\]\.type must be/],
  ['RELEASE 0', withSpec({ release: 0 }), /instances\[0\]\.release must be an integer from 1/],
  ['RELEASE STRING', withSpec({ release: '7' }), /instances\[0\]\.release/],
  ['EMPTY COMMAND', withSpec({ command: '' }), /instances\[0\]\.command must be/],
  ['NUL IN COMMAND', withSpec({ command: 'a\u0000b' }), /instances\[0\]\.command must be/],
  ['RELATIVE CWD', withSpec({ cwd: 'slug' }), /instances\[0\]\.cwd must be an absolute path/],
  ['ENV NOT OBJECT', withSpec({ env: ['A=1'] }), /instances\[0\]\.env must be an object/],
  ['ENV BAD KEY', withSpec({ env: { 'A-B': 'x' } }), /instances\[0\]\.env key must be/],
  ['ENV NUMBER', withSpec({ env: { A: 1 } }), /instances\[0\]\.env\.A must be a string/],
  ['BAD USER', withSpec({ user: 'a b' }), /instances\[0\]\.user must be/],
  ['PORT 0', withSpec({ port: 0 }), /instances\[0\]\.port must be an integer from 1 to 65535/],
  ['PORT 65536', withSpec({ port: 65536 }), /instances\[0\]\.port/],
  ['PORT STRING', withSpec({ port: '5001' }), /instances\[0\]\.port/],
  ['WEB WITHOUT PORT', withSpec({}, 'port'), /instances\[0\]\.port is missing: a web instance/],
  ['NEGATIVE GRACE', withSpec({ graceMs: -1 }), /instances\[0\]\.graceMs/],
  ['HUGE GRACE', withSpec({ graceMs: 3_600_001 }), /instances\[0\]\.graceMs/],
  ['DUPLICATE NAME', withSpec({ name: 'myapp.worker.1' }), /instances\[1\]\.name .* unique/],
  [
    'DUPLICATE PORT',
    JSON.stringify({ ...good(), instances: [web, { ...worker, port: 5001 }] }),
    /instances\[1\]\.port 5001 is also instances\[0\]\.port/,
  ],
]

t.test('bad files are refused with E_WORKER_CONFIG naming the field and the fix', async (t) => {
  for (const [name, text, message] of BAD) {
    t.throws(() => parseWorkerConfig(text), { code: 'E_WORKER_CONFIG', message }, name)
  }
})

t.test('messages never quote env values (they may be secrets)', async (t) => {
  const text = withSpec({ env: { PASSWORD: { secret: 'hunter2' } } })
  const err = t.throws(() => parseWorkerConfig(text), { code: 'E_WORKER_CONFIG' }) as Error
  t.notMatch(err.message, /hunter2/)
  t.match(err.message, /env\.PASSWORD must be a string/)
})
