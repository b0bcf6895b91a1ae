// The master's settings from an environment: defaults, overrides, and each bad value refused.
import t from 'tap'
import { loadConfig } from './config.js'

t.test('defaults', async (t) => {
  const c = loadConfig({ HOME: '/home/u' }, false)
  t.same(c, {
    home: '/home/u/.bareku',
    control: 'tcp://127.0.0.1:7070',
    publish: 'tcp://127.0.0.1:7071',
    stats: 'tcp://127.0.0.1:7072',
    slugs: 'tcp://127.0.0.1:7073',
    logs: 'tcp://127.0.0.1:7074',
    logMaxBytes: 10485760,
    slugDir: '/home/u/.bareku/slugs',
    nodeTtlMs: 10_000,
    republishMs: 2000,
    domain: 'localhost',
    frontendPort: 8080,
    handlerHost: '127.0.0.1',
    handlerPorts: { from: 9500, to: 9999 },
    webPorts: { from: 5000, to: 5999 },
    logLevel: 'info',
  })
  t.ok(Object.isFrozen(c))
  t.equal(loadConfig({}, true).home, '/var/lib/bareku', 'as root')
})

t.test('overrides', async (t) => {
  const c = loadConfig(
    {
      BAREKU_HOME: '/srv/b',
      BAREKU_MASTER_CONTROL: 'tcp://0.0.0.0:0',
      BAREKU_MASTER_PUBLISH: 'ipc:///tmp/pub',
      BAREKU_SLUG_DIR: '/data/slugs',
      BAREKU_MASTER_NODE_TTL_MS: '500',
      BAREKU_DOMAIN: 'Apps.Example.com',
      BAREKU_FRONTEND_PORT: '80',
      BAREKU_HANDLER_HOST: '10.0.0.5',
      BAREKU_HANDLER_PORTS: '7000-7001',
      BAREKU_WEB_PORTS: '6000-6000',
      LOG_LEVEL: 'debug',
    },
    false,
  )
  t.match(c, {
    home: '/srv/b',
    control: 'tcp://0.0.0.0:0',
    publish: 'ipc:///tmp/pub',
    slugDir: '/data/slugs',
    nodeTtlMs: 500,
    domain: 'apps.example.com',
    frontendPort: 80,
    handlerHost: '10.0.0.5',
    handlerPorts: { from: 7000, to: 7001 },
    webPorts: { from: 6000, to: 6000 },
    logLevel: 'debug',
  })
})

t.test('bad values: E_CONFIG naming the variable, the value and an example', async (t) => {
  const bad: [string, NodeJS.ProcessEnv, RegExp][] = [
    ['RELATIVE HOME', { BAREKU_HOME: 'rel' }, /BAREKU_HOME must be an absolute path, got "rel"/],
    ['BAD ENDPOINT', { BAREKU_MASTER_STATS: '127.0.0.1:7072' }, /BAREKU_MASTER_STATS.*e\.g\./],
    ['TTL ZERO', { BAREKU_MASTER_NODE_TTL_MS: '0' }, /BAREKU_MASTER_NODE_TTL_MS.*"0"/],
    ['TTL WORDS', { BAREKU_MASTER_REPUBLISH_MS: '2s' }, /BAREKU_MASTER_REPUBLISH_MS/],
    ['PORT TOO BIG', { BAREKU_FRONTEND_PORT: '70000' }, /BAREKU_FRONTEND_PORT.*70000/],
    ['RANGE BACKWARDS', { BAREKU_WEB_PORTS: '6000-5000' }, /BAREKU_WEB_PORTS.*5000-5999/],
    ['RANGE WORD', { BAREKU_WEB_PORTS: 'many' }, /BAREKU_WEB_PORTS/],
    ['ONE HANDLER PORT', { BAREKU_HANDLER_PORTS: '9500-9500' }, /at least two ports/],
    ['BAD DOMAIN', { BAREKU_DOMAIN: 'a b' }, /BAREKU_DOMAIN.*"a b"/],
    ['BAD HANDLER HOST', { BAREKU_HANDLER_HOST: 'tcp://x' }, /BAREKU_HANDLER_HOST/],
    ['BAD LOG LEVEL', { LOG_LEVEL: 'loud' }, /LOG_LEVEL/],
  ]
  for (const [name, env, message] of bad) {
    t.throws(() => loadConfig({ HOME: '/h', ...env }, false), { code: 'E_CONFIG', message }, name)
  }
})
