import t from 'tap'
import { loadConfig } from './config.js'

t.test('defaults', async (t) => {
  t.same(loadConfig({ HOME: '/home/u' }, false, 'box1'), {
    home: '/home/u/.bareku',
    master: 'tcp://127.0.0.1:7070',
    node: 'box1',
    addr: '127.0.0.1',
    capacity: 50,
    reportMs: 1000,
    slugPruneMs: 600_000,
    workerConfig: '/home/u/.bareku/run/worker.json',
    logLevel: 'info',
  })
  t.equal(loadConfig({}, true, 'box1').home, '/var/lib/bareku', 'root uses /var/lib/bareku')
})

t.test('every setting from the environment', async (t) => {
  const env = {
    BAREKU_HOME: '/srv/b',
    BAREKU_MASTER: 'tcp://10.0.0.1:7070',
    BAREKU_NODE: 'web-2.dc1',
    BAREKU_NODE_ADDR: '10.0.0.2',
    BAREKU_NODE_CAPACITY: '8',
    BAREKU_CLIENT_REPORT_MS: '250',
    BAREKU_SLUG_PRUNE_MS: '5000',
    BAREKU_WORKER_CONFIG: '/etc/bareku/worker.json',
    LOG_LEVEL: 'debug',
  }
  t.same(loadConfig(env, false, 'x'), {
    home: '/srv/b',
    master: 'tcp://10.0.0.1:7070',
    node: 'web-2.dc1',
    addr: '10.0.0.2',
    capacity: 8,
    reportMs: 250,
    slugPruneMs: 5000,
    workerConfig: '/etc/bareku/worker.json',
    logLevel: 'debug',
  })
})

const bad: Array<[string, NodeJS.ProcessEnv, RegExp]> = [
  ['RELATIVE HOME', { BAREKU_HOME: 'b' }, /BAREKU_HOME must be an absolute path.*e\.g\./],
  ['MASTER NOT AN ENDPOINT', { BAREKU_MASTER: '10.0.0.1:7070' }, /BAREKU_MASTER=tcp:\/\//],
  [
    'NODE WITH A SLASH',
    { BAREKU_NODE: 'a/b' },
    /BAREKU_NODE must be a node name.*BAREKU_NODE=node1/,
  ],
  ['NODE WITH A NUL', { BAREKU_NODE: 'a\0' }, /BAREKU_NODE must be/],
  ['ADDR WITH A SPACE', { BAREKU_NODE_ADDR: '10.0.0.1 x' }, /BAREKU_NODE_ADDR must be/],
  ['CAPACITY ZERO', { BAREKU_NODE_CAPACITY: '0' }, /BAREKU_NODE_CAPACITY must be a positive/],
  ['REPORT MS WORD', { BAREKU_CLIENT_REPORT_MS: 'often' }, /BAREKU_CLIENT_REPORT_MS=1000/],
  ['LOG LEVEL', { LOG_LEVEL: 'loud' }, /LOG_LEVEL must be one of/],
]

t.test('bad values are E_CONFIG naming the variable and an example', async (t) => {
  for (const [name, env, message] of bad) {
    t.throws(
      () => loadConfig({ HOME: '/h', ...env }, false, 'n'),
      { code: 'E_CONFIG', message },
      name,
    )
  }
})
