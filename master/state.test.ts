// The state file: round trip, epoch per start, and a corrupt file refused by name.
import { readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import {
  checkState,
  emptyState,
  loadState,
  openState,
  saveState,
  stateFile,
  type State,
} from './state.js'

const SHA = 'ab'.repeat(32)

function sample(): State {
  const s = emptyState()
  s.epoch = 4
  s.apps.shop = {
    name: 'shop',
    createdAt: '2024-01-01T00:00:00.000Z',
    config: { DATABASE_URL: 'postgres://x', EMPTY: '' },
    formation: { web: 2, worker: 0 },
    releases: [
      {
        version: 1,
        slug: { sha256: SHA, size: 1234 },
        processTypes: { web: 'node web.js', worker: 'node worker.js' },
        config: { DATABASE_URL: 'postgres://x' },
        commit: 'deadbeef',
        by: 'alice',
        at: '2024-01-01T00:00:01.000Z',
        description: 'Deploy deadbee',
      },
    ],
    current: 1,
    domains: ['shop.example.com'],
    handler: { sendPort: 9500, recvPort: 9501 },
    restarts: { web: 1 },
  }
  s.nodes.n1 = { name: 'n1', addr: '10.0.0.1', capacity: 50, lastSeen: 1700000000000, status: 'up' }
  s.placement['shop.web.1'] = { node: 'n1', release: 1, restart: 1, port: 5000 }
  s.placement['shop.web.2'] = { node: 'n1', release: 1, restart: 1, port: 5001 }
  s.nextPort.n1 = 5002
  return s
}

t.test('save and load round trip; a missing file is the empty state', async (t) => {
  const dir = t.testdir({ master: {} })
  const file = stateFile(dir)
  t.equal(file, join(dir, 'master', 'state.json'))
  t.same(loadState(file), emptyState(), 'no file yet')
  await saveState(file, sample())
  t.same(loadState(file), sample())
  t.same(readdirSync(join(dir, 'master')), ['state.json'], 'no temp file left behind')
  t.same(checkState(JSON.parse(JSON.stringify(sample()))), sample())
})

t.test('epoch grows by one at every start, and is saved', async (t) => {
  const dir = t.testdir({})
  const file = stateFile(dir)
  t.equal((await openState(file)).epoch, 1, 'first start (creates master/)')
  t.equal((await openState(file)).epoch, 2)
  t.equal(loadState(file).epoch, 2, 'saved')
  await saveState(file, sample())
  const s = await openState(file)
  t.equal(s.epoch, 5)
  t.same({ ...s, epoch: 4 }, sample(), 'nothing else changes')
})

t.test('a corrupt file is a clear E_MASTER error naming the file and field', async (t) => {
  const dir = t.testdir({ master: {} })
  const file = stateFile(dir)
  const good = JSON.stringify(sample())
  const edit = (fn: (s: State) => void): string => {
    const s = JSON.parse(good) as State
    fn(s)
    return JSON.stringify(s)
  }
  const cases: [string, string, RegExp][] = [
    ['TRUNCATED', good.slice(0, 100), /not JSON/],
    ['EMPTY', '', /not JSON/],
    ['NOT AN OBJECT', '[]', /state must be an object/],
    ['VERSION 2', edit((s) => (s.version = 2 as never)), /state\.version/],
    ['UNKNOWN FIELD', edit((s) => Object.assign(s, { extra: 1 })), /state\.extra/],
    ['MISSING APPS', edit((s) => delete (s as Partial<State>).apps), /state\.apps must be present/],
    ['BAD APP NAME', edit((s) => (s.apps['../x'] = s.apps.shop!)), /state\.apps key/],
    ['NAME NOT KEY', edit((s) => (s.apps.shop!.name = 'other')), /state\.apps\.shop\.name/],
    [
      'BAD SHA',
      edit((s) => (s.apps.shop!.releases[0]!.slug.sha256 = 'xyz')),
      /releases\[0\]\.slug\.sha256/,
    ],
    [
      'VERSION GAP',
      edit((s) => (s.apps.shop!.releases[0]!.version = 2)),
      /releases\[0\]\.version must be 1/,
    ],
    ['CURRENT MISSING', edit((s) => (s.apps.shop!.current = 7)), /shop\.current/],
    ['NEGATIVE FORMATION', edit((s) => (s.apps.shop!.formation.web = -1)), /formation\.web/],
    [
      'PROTO KEY',
      '{"version":1,"epoch":1,"apps":{},"nodes":{},"placement":{},"nextPort":{"__proto__":5000}}',
      /state\.nextPort key/,
    ],
    ['BAD STATUS', edit((s) => (s.nodes.n1!.status = 'maybe' as never)), /nodes\.n1\.status/],
    ['BAD SLOT', edit((s) => (s.placement['shop.web.1']!.port = 0)), /shop\.web\.1\.port/],
    ['BAD INSTANCE', edit((s) => (s.placement['shop/web'] = {} as never)), /state\.placement key/],
  ]
  for (const [name, text, message] of cases) {
    writeFileSync(file, text)
    t.throws(() => loadState(file), { code: 'E_MASTER', message }, name)
    try {
      loadState(file)
    } catch (err) {
      t.match((err as Error).message, file, `${name}: names the file`)
      t.match(
        (err as Error).message,
        /corrupt.*restore it from a backup/,
        `${name}: says what to do`,
      )
    }
    await t.rejects(openState(file), { code: 'E_MASTER' }, `${name}: a start fails`)
    t.equal(readFileSync(file, 'utf8'), text, `${name}: the file is left as it was`)
  }
})
