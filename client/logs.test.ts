// The node's log shipper against a fake master ROUTER (real ZeroMQ, real files): tags, partial
// lines, rotation by rename with the old file still written, resends without an ack, a restart
// from the offsets file, and no master at all.
import {
  appendFileSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  writeFileSync,
} from 'node:fs'
import { closeSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { Router } from 'zeromq'
import { createLogger } from '../lib/log.js'
import { until } from '../test/helpers/cluster.js'
import { encodeLogAck, parseLogBatch, type LogBatch } from '../lib/protocol/log-batch.js'
import { startLogShipper, type LogShipper } from './logs.js'

const log = createLogger('test', 'silent')

/** A fake master's logs socket: keeps every batch, acks them while `acking`. */
async function fakeMaster(t: Test) {
  const router = new Router({ linger: 0 })
  await router.bind('tcp://127.0.0.1:*')
  const batches: LogBatch[] = []
  const waiters = new Set<() => void>()
  const m = { endpoint: router.lastEndpoint!, batches, acking: true, received, lines }
  void (async () => {
    for await (const [id, body] of router) {
      const b = parseLogBatch(body!)
      batches.push(b)
      if (m.acking) {
        const { node, instance, inode, born, end } = b
        await router.send([id!, encodeLogAck({ node, instance, inode, born, end })])
      }
      for (const w of waiters) w()
    }
  })().catch(() => {})
  t.teardown(() => router.close())

  /** Resolves once `pred` holds for the batches received (checked on each new batch). */
  function received(what: string, pred: (b: LogBatch[]) => boolean, timeoutMs = 10_000) {
    if (pred(batches)) return Promise.resolve()
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        waiters.delete(check)
        reject(new Error(`timed out waiting for ${what}; got ${JSON.stringify(lines())}`))
      }, timeoutMs)
      const check = (): void => {
        if (!pred(batches)) return
        clearTimeout(timer)
        waiters.delete(check)
        resolve()
      }
      waiters.add(check)
    })
  }
  /** Every line received, as INSTANCE@INODE:AT TEXT. */
  function lines(): string[] {
    return batches.flatMap((b) => b.lines.map((l) => `${b.instance}@${b.inode}:${l.at} ${l.text}`))
  }
  return m
}

/** Distinct lines by their position in their file: what the master would keep. */
const distinct = (lines: string[]): string[] => [...new Set(lines)]
const texts = (lines: string[]): string[] => lines.map((l) => l.split(' ').slice(1).join(' '))

function home(t: Test): string {
  const dir = t.testdir({ log: {}, run: {} })
  writeFileSync(
    join(dir, 'run', 'worker.json'),
    JSON.stringify({ instances: [{ name: 'shop.web.1', release: 4 }] }),
  )
  return dir
}

function ship(t: Test, dir: string, endpoint?: string): LogShipper {
  const shipper = startLogShipper(
    {
      home: dir,
      node: 'node1',
      workerConfig: join(dir, 'run', 'worker.json'),
      pollMs: 30,
      ackTimeoutMs: 300,
    },
    log,
  )
  t.teardown(() => shipper.close())
  shipper.connect(endpoint)
  return shipper
}

const offsets = (dir: string): Record<string, { instance: string; offset: number }> =>
  (
    JSON.parse(readFileSync(join(dir, 'run', 'log-offsets.json'), 'utf8')) as {
      files: Record<string, { instance: string; offset: number }>
    }
  ).files

t.test(
  'complete lines are shipped tagged; a partial line waits; other files are not',
  async (t) => {
    const m = await fakeMaster(t)
    const dir = home(t)
    writeFileSync(join(dir, 'log', 'shop.web.1.log'), 'one\ntwo\nthr')
    writeFileSync(join(dir, 'log', 'shop.worker.1.log.1'), 'old\n')
    writeFileSync(join(dir, 'log', 'master.log'), '{"daemon":"master"}\n')
    writeFileSync(join(dir, 'log', 'notes.txt'), 'x\n')
    const before = Date.now()
    ship(t, dir, m.endpoint)
    await m.received('both files', (b) => b.length >= 2)
    const web = m.batches.find((b) => b.instance === 'shop.web.1')!
    t.match(web, {
      node: 'node1',
      app: 'shop',
      type: 'web',
      release: 4,
      start: 0,
      end: 8,
      lines: [
        { at: 0, text: 'one' },
        { at: 4, text: 'two' },
      ],
    })
    t.ok(web.time >= before && web.time <= Date.now(), 'stamped when read')
    t.match(
      m.batches.find((b) => b.instance === 'shop.worker.1'),
      { release: null, type: 'worker' },
    )
    appendFileSync(join(dir, 'log', 'shop.web.1.log'), 'ee\n')
    await m.received('the rest of the line', () => m.lines().some((l) => l.endsWith(':8 three')))
    t.same(distinct(texts(m.lines())).sort(), ['old', 'one', 'three', 'two'])
    t.same(
      new Set(m.batches.map((b) => b.instance)),
      new Set(['shop.web.1', 'shop.worker.1']),
      'only instance logs',
    )
    await until('the acked offset saved', () =>
      Object.values(offsets(dir)).some((o) => o.instance === 'shop.web.1' && o.offset === 14),
    )
    t.pass('the acked offset is saved in run/log-offsets.json')
  },
)

t.test('rotation: the renamed file is still followed while its process writes on', async (t) => {
  const m = await fakeMaster(t)
  const dir = home(t)
  const file = join(dir, 'log', 'shop.web.1.log')
  const fd = openSync(file, 'a')
  t.teardown(() => closeSync(fd))
  writeSync(fd, 'a1\n')
  ship(t, dir, m.endpoint)
  await m.received('a1', () => texts(m.lines()).includes('a1'))
  renameSync(file, `${file}.1`)
  writeSync(fd, 'a2\n') // the running process keeps its descriptor: into .1
  writeFileSync(file, 'b1\n') // a new spawn opens a fresh NAME.log
  await m.received('a2 and b1', () => ['a2', 'b1'].every((x) => texts(m.lines()).includes(x)))
  const inodes = new Set(m.batches.map((b) => b.inode))
  t.equal(inodes.size, 2, 'two files, told apart by inode')
  t.same(distinct(texts(m.lines())).sort(), ['a1', 'a2', 'b1'])
})

t.test('without an ack a batch is sent again from the acked offset', async (t) => {
  const m = await fakeMaster(t)
  m.acking = false
  const dir = home(t)
  writeFileSync(join(dir, 'log', 'shop.web.1.log'), 'x\n')
  ship(t, dir, m.endpoint)
  await m.received('the batch twice', (b) => b.length >= 2)
  t.same(
    m.batches.slice(0, 2).map((b) => [b.start, b.end]),
    [
      [0, 2],
      [0, 2],
    ],
  )
  m.acking = true
  const count = m.batches.length
  await m.received('an acked resend', (b) => b.length > count)
  // The next line goes from the ack once the shipper has it (a late one means a resend from 0).
  await until('the ack taken', () => Object.values(offsets(dir))[0]?.offset === 2)
  appendFileSync(join(dir, 'log', 'shop.web.1.log'), 'y\n')
  await m.received('the next line', () => texts(m.lines()).includes('y'))
  t.equal(m.batches.at(-1)!.start, 2, 'then it goes on from the ack')
})

t.test('a restarted shipper goes on from its saved offsets', async (t) => {
  const m = await fakeMaster(t)
  const dir = home(t)
  const file = join(dir, 'log', 'shop.web.1.log')
  writeFileSync(file, 'first\n')
  const first = ship(t, dir, m.endpoint)
  await m.received('first', () => texts(m.lines()).includes('first'))
  // The master has the batch; its ack may still be on the way back: close once it is taken.
  await until('the ack taken', () => Object.values(offsets(dir))[0]?.offset === 6)
  await first.close()
  t.equal(Object.values(offsets(dir))[0]?.offset, 6, 'the acked offset is saved')
  appendFileSync(file, 'second\n')
  const count = m.batches.length
  ship(t, dir, m.endpoint)
  await m.received('second', () => texts(m.lines()).includes('second'))
  t.same(
    m.batches.slice(count).map((b) => b.start),
    [6],
    'nothing sent again',
  )
})

t.test('no master: nothing blocks, and lines go once one is connected', async (t) => {
  const dir = home(t)
  mkdirSync(join(dir, 'log'), { recursive: true })
  writeFileSync(join(dir, 'log', 'shop.web.1.log'), 'waiting\n')
  // Nobody listens there: the DEALER never connects, sends fail at once.
  const shipper = ship(t, dir, 'tcp://127.0.0.1:1')
  const m = await fakeMaster(t)
  shipper.connect(m.endpoint)
  await m.received('the line', () => texts(m.lines()).includes('waiting'))
  const started = Date.now()
  await shipper.close()
  t.ok(Date.now() - started < 2000, 'closes at once')
})
