// The master's log store: append, dedup of resends, rotation, restart (with and without its
// offsets file), the tail that `logs` answers, and the ROUTER loop with a real DEALER.
import { appendFileSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { Dealer, Router } from 'zeromq'
import { createLogger } from '../lib/log.js'
import {
  encodeLogBatch,
  parseLive,
  parseLogAck,
  type LogBatch,
  type LogLine,
} from '../lib/protocol/log-batch.js'
import { logDir, logsCommand, openLogStore, serveLogs, tailLogs } from './logs.js'
import type { State } from './state.js'

const log = createLogger('test', 'silent')

/** A batch of `texts` from `start`, each line `text\n`, of instance shop.TYPE.1. */
function batch(texts: string[], start = 0, over: Partial<LogBatch> = {}): LogBatch {
  let at = start
  const lines = texts.map((text) => {
    const l = { at, text }
    at += Buffer.byteLength(text) + 1
    return l
  })
  const type = over.type ?? 'web'
  return {
    node: 'node1',
    instance: `shop.${type}.1`,
    app: 'shop',
    type,
    release: 2,
    inode: 100,
    born: 5,
    start,
    end: at,
    time: Date.UTC(2026, 10, 23, 19),
    lines,
    ...over,
  }
}

const stored = (dir: string, file = 'shop.log'): LogLine[] =>
  readFileSync(join(dir, file), 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as LogLine)

const texts = (lines: LogLine[]): string[] => lines.map((l) => l.line)

t.test('lines are appended tagged, and a resend adds only what is new', async (t) => {
  const dir = t.testdir()
  const store = await openLogStore(dir, 1 << 20, log)
  const first = await store.accept(batch(['one', 'two']))
  t.same(first.ack, { node: 'node1', instance: 'shop.web.1', inode: 100, born: 5, end: 8 })
  t.same(stored(dir)[0], {
    time: '2026-11-23T19:00:00.000Z',
    app: 'shop',
    type: 'web',
    instance: 'shop.web.1',
    release: 2,
    node: 'node1',
    line: 'one',
    inode: 100,
    born: 5,
    end: 4,
  })
  t.same((await store.accept(batch(['one', 'two']))).lines, [], 'the same batch again adds nothing')
  const resend = await store.accept(batch(['one', 'two', 'three']))
  t.same(texts(resend.lines), ['three'], 'a resend from an older offset adds only the new line')
  t.equal(resend.ack.end, 14)
  t.same(
    (await store.accept(batch(['two'], 4))).ack.end,
    14,
    'an ack never goes back: the master has more than this batch',
  )
  const other = await store.accept(batch(['one'], 0, { inode: 101 }))
  t.same(texts(other.lines), ['one'], 'another file of the same instance is its own')
  const born = await store.accept(batch(['one'], 0, { born: 6 }))
  t.same(texts(born.lines), ['one'], 'a reused inode number (another birth time) too')
  t.same(texts(stored(dir)), ['one', 'two', 'three', 'one', 'one'])
})

t.test('a restarted store remembers what it has', async (t) => {
  const dir = t.testdir()
  const store = await openLogStore(dir, 1 << 20, log)
  await store.accept(batch(['a', 'b']))
  const again = await openLogStore(dir, 1 << 20, log)
  t.same(texts((await again.accept(batch(['a', 'b', 'c']))).lines), ['c'])
})

t.test(
  'without its offsets (a crash before they were saved) it catches up from the log',
  async (t) => {
    const dir = t.testdir()
    const store = await openLogStore(dir, 1 << 20, log)
    await store.accept(batch(['a', 'b']))
    await store.accept(batch(['x'], 0, { type: 'worker' }))
    const offsets = readFileSync(join(dir, 'offsets.json'), 'utf8')
    await store.accept(batch(['a', 'b', 'c']))
    writeFileSync(join(dir, 'offsets.json'), offsets)
    const stale = await openLogStore(dir, 1 << 20, log)
    t.same(
      (await stale.accept(batch(['a', 'b', 'c', 'd']))).lines.map((l) => l.line),
      ['d'],
    )
    rmSync(join(dir, 'offsets.json'))
    const none = await openLogStore(dir, 1 << 20, log)
    t.same((await none.accept(batch(['a', 'b', 'c', 'd']))).lines, [])
    t.same((await none.accept(batch(['x'], 0, { type: 'worker' }))).lines, [])
    writeFileSync(join(dir, 'offsets.json'), '{"sources": ')
    const corrupt = await openLogStore(dir, 1 << 20, log)
    t.same((await corrupt.accept(batch(['a'], 0))).lines, [], 'a corrupt offsets file is rebuilt')
    t.same(texts(stored(dir)), ['a', 'b', 'x', 'c', 'd'], 'no line twice')
  },
)

t.test(
  'half a line left by a crash is skipped, and the next batch starts a new line',
  async (t) => {
    const dir = t.testdir()
    const store = await openLogStore(dir, 1 << 20, log)
    await store.accept(batch(['a']))
    appendFileSync(join(dir, 'shop.log'), '{"time":"2026-')
    t.same(texts(await tailLogs(dir, 'shop', 10)), ['a'], 'a line being written is not read')
    await store.accept(batch(['b'], 2))
    t.same(texts(await tailLogs(dir, 'shop', 10)), ['a', 'b'])
  },
)

t.test('the history is rotated at maxBytes, and the tail reads across the two files', async (t) => {
  const dir = t.testdir()
  const store = await openLogStore(dir, 1000, log)
  let at = 0
  for (let i = 0; i < 20; i++) {
    const b = batch([`line ${i}`], at)
    await store.accept(b)
    at = b.end
  }
  const current = stored(dir)
  const old = stored(dir, 'shop.log.1')
  t.ok(readFileSync(join(dir, 'shop.log')).length <= 1000, 'APP.log stays under maxBytes')
  t.equal(current.at(-1)?.line, 'line 19')
  const first = current[0]!
  t.equal(old.at(-1)?.end, first.end - first.line.length - 1, '.1 holds what came just before')
  const tail = await tailLogs(dir, 'shop', current.length + 2)
  t.same(texts(tail), [...texts(old.slice(-2)), ...texts(current)], 'oldest first, across files')
  t.equal((await tailLogs(dir, 'shop', 1000)).length, current.length + old.length)

  // A crash after a rotation and its append, before the offsets were saved.
  const offsets = readFileSync(join(dir, 'offsets.json'), 'utf8')
  let b = batch([`line 20 ${'x'.repeat(1000)}`], at)
  await store.accept(b)
  t.equal(stored(dir).length, 1, 'rotated: the new APP.log holds only this line')
  writeFileSync(join(dir, 'offsets.json'), offsets)
  const again = await openLogStore(dir, 1000, log)
  t.same((await again.accept(b)).lines, [], 'the line in the new file is known after a restart')
  b = batch(['line 21'], b.end)
  t.same(texts((await again.accept(b)).lines), ['line 21'])
})

t.test('the tail: the last n, of one type, oldest first', async (t) => {
  const dir = t.testdir()
  const store = await openLogStore(dir, 1 << 20, log)
  await store.accept(batch(['w1', 'w2', 'w3']))
  await store.accept(batch(['k1'], 0, { type: 'worker' }))
  await store.accept(batch(['w4'], 9))
  t.same(texts(await tailLogs(dir, 'shop', 2)), ['k1', 'w4'])
  t.same(texts(await tailLogs(dir, 'shop', 3, 'web')), ['w2', 'w3', 'w4'])
  t.same(texts(await tailLogs(dir, 'shop', 10, 'worker')), ['k1'])
  t.same(await tailLogs(dir, 'nothing', 10), [], 'no log yet: no lines')
  // A chunk boundary inside a line: lines longer than the reader's chunk.
  const big = ['x'.repeat(70_000), 'y'.repeat(140_000), 'z']
  await store.accept(batch(big, 0, { type: 'big' }))
  t.same(
    (await tailLogs(dir, 'shop', 3, 'big')).map((l) => l.line.length),
    [70_000, 140_000, 1],
  )
})

t.test('the logs command checks its args and the app', async (t) => {
  const home = t.testdir()
  const store = await openLogStore(logDir(home), 1 << 20, log)
  await store.accept(batch(['hello']))
  const state = { apps: { shop: {} } } as unknown as State
  t.same(texts(await logsCommand({ app: 'shop' }, state, { home })), ['hello'])
  t.same(await logsCommand({ app: 'shop', n: 5, type: 'worker' }, state, { home }), [])
  await t.rejects(logsCommand({ app: 'nope' }, state, { home }), {
    code: 'E_APP',
    message: /no app named "nope"/,
  })
  await t.rejects(logsCommand({ app: 'shop', n: 0 }, state, { home }), /args\.n must be/)
  await t.rejects(logsCommand({ app: 'shop', n: 10_001 }, state, { home }), /args\.n must be/)
  await t.rejects(logsCommand({ app: 'shop', type: 'a b' }, state, { home }), /args\.type/)
  await t.rejects(logsCommand({ app: 'shop', lines: 5 }, state, { home }), /args\.lines/)
})

t.test('the ROUTER loop: stored, acked, published; a bad batch is dropped', async (t) => {
  const dir = t.testdir()
  const store = await openLogStore(dir, 1 << 20, log)
  const router = new Router({ linger: 0 })
  await router.bind('tcp://127.0.0.1:*')
  const dealer = new Dealer({ linger: 0, receiveTimeout: 5000 })
  dealer.connect(router.lastEndpoint!)
  const published: Buffer[][] = []
  const loop = serveLogs(router, store, (frames) => published.push(frames), log)
  t.teardown(async () => {
    dealer.close()
    router.close()
    await loop
  })
  await dealer.send(Buffer.from('not a batch'))
  await dealer.send(encodeLogBatch(batch(['hi'])))
  const [ack] = await dealer.receive()
  t.same(parseLogAck(ack!), { node: 'node1', instance: 'shop.web.1', inode: 100, born: 5, end: 3 })
  t.equal(published.length, 1)
  t.same(texts(parseLive(published[0]!).lines), ['hi'])
  await dealer.send(encodeLogBatch(batch(['hi'])))
  t.equal(parseLogAck((await dealer.receive())[0]!).end, 3, 'a duplicate is acked again')
  t.equal(published.length, 1, 'and not published again')
})
