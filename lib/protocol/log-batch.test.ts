// The log shipping wire format: batches, acks, live messages, line splitting and the Heroku form.
import t from 'tap'
import {
  encodeLive,
  encodeLogAck,
  encodeLogBatch,
  formatLine,
  isLogTopic,
  logTopic,
  MAX_BATCH_LINES,
  MAX_LINE,
  parseInstance,
  parseLive,
  parseLogAck,
  parseLogBatch,
  publicLine,
  splitLines,
  type LogBatch,
  type LogLine,
} from './log-batch.js'

const batch: LogBatch = {
  node: 'node1',
  instance: 'shop.web.1',
  app: 'shop',
  type: 'web',
  release: 3,
  inode: 1234,
  born: 1_700_000_000_000,
  start: 10,
  end: 24,
  time: 1_700_000_000_500,
  lines: [
    { at: 10, text: 'hello' },
    { at: 16, text: 'wörld' },
  ],
}

const line: LogLine = {
  time: '2026-11-23T19:00:00.000Z',
  app: 'shop',
  type: 'web',
  instance: 'shop.web.1',
  release: 3,
  node: 'node1',
  line: 'listening',
  inode: 1,
  born: 2,
  end: 3,
}

t.test('a batch, an ack and a live message survive the round trip', async (t) => {
  t.same(parseLogBatch(encodeLogBatch(batch)), batch)
  t.same(parseLogBatch(encodeLogBatch({ ...batch, release: null, lines: [] })).release, null)
  const ack = { node: 'node1', instance: 'shop.web.1', inode: 1234, born: 5, end: 24 }
  t.same(parseLogAck(encodeLogAck(ack)), ack)
  const frames = encodeLive('shop', [line])
  t.equal(frames[0].toString(), 'logs.shop\0', 'the topic ends in \\0 (SUB matches prefixes)')
  t.same(parseLive(frames), { app: 'shop', lines: [line] })
})

t.test('bad batches are E_LOGS naming the field', async (t) => {
  const bad: [string, string | Record<string, unknown>, RegExp][] = [
    ['NOT JSON', '{', /not JSON/],
    ['NOT AN OBJECT', '[1]', /not an object/],
    ['BAD NODE', { ...batch, node: '../x' }, /node must match/],
    ['BAD INSTANCE', { ...batch, instance: 'shop.web' }, /instance must match/],
    ['APP MISMATCH', { ...batch, app: 'other' }, /not of app other/],
    ['TYPE MISMATCH', { ...batch, type: 'worker' }, /type worker/],
    ['NEGATIVE INODE', { ...batch, inode: -1 }, /inode must be/],
    ['FRACTION BORN', { ...batch, born: 1.5 }, /born must be/],
    ['END BEFORE START', { ...batch, end: 5 }, /end 5 is before start 10/],
    ['LINE BEFORE START', { ...batch, lines: [{ at: 9, text: 'x' }] }, /lines\[0\]\.at 9/],
    ['LINE AT END', { ...batch, lines: [{ at: 24, text: 'x' }] }, /lines\[0\]\.at 24/],
    [
      'LINES OUT OF ORDER',
      {
        ...batch,
        lines: [
          { at: 16, text: 'b' },
          { at: 10, text: 'a' },
        ],
      },
      /lines\[1\]\.at 10/,
    ],
    ['TEXT NOT STRING', { ...batch, lines: [{ at: 10, text: 5 }] }, /text is not a string/],
    ['LINES NOT LIST', { ...batch, lines: 'x' }, /lines must be a list/],
    [
      'TOO MANY LINES',
      { ...batch, lines: Array.from({ length: MAX_BATCH_LINES + 1 }, () => ({})) },
      /more than 1000 lines/,
    ],
    ['BAD RELEASE', { ...batch, release: 'v3' }, /release must be/],
    ['NO TIME', { ...batch, time: undefined }, /time must be/],
  ]
  for (const [name, value, message] of bad) {
    const frame = Buffer.from(typeof value === 'string' ? value : JSON.stringify(value))
    t.throws(() => parseLogBatch(frame), { code: 'E_LOGS', message }, name)
  }
  t.throws(() => parseLogAck(Buffer.from('{"node":"n"}')), { code: 'E_LOGS' }, 'HALF AN ACK')
  t.throws(() => parseLive([Buffer.from('shop\0'), Buffer.from('[]')]), { code: 'E_LOGS' })
  t.throws(() => parseLive([Buffer.from('logs.shop\0'), Buffer.from('{}')]), { code: 'E_LOGS' })
  t.throws(() => parseLive([Buffer.from('logs.shop\0')]), { code: 'E_LOGS' }, 'ONE FRAME')
})

t.test('splitting bytes into lines', async (t) => {
  t.same(splitLines(Buffer.from('a\nbb\n\nc'), 100), {
    lines: [
      { at: 100, text: 'a' },
      { at: 102, text: 'bb' },
      { at: 105, text: '' },
    ],
    end: 106,
  })
  t.same(splitLines(Buffer.from('partial'), 0), { lines: [], end: 0 }, 'a line being written waits')
  t.same(splitLines(Buffer.from('a\nb\nc\n'), 0, 2).end, 4, 'at most maxLines')
  const long = Buffer.concat([Buffer.alloc(MAX_LINE + 10, 'x'), Buffer.from('\nend\n')])
  const split = splitLines(long, 0)
  t.same(
    split.lines.map((l) => [l.at, l.text.length]),
    [
      [0, MAX_LINE],
      [MAX_LINE, 10],
      [MAX_LINE + 11, 3],
    ],
    'a line over MAX_LINE is cut',
  )
  t.equal(split.end, long.length)
  t.same(splitLines(Buffer.alloc(MAX_LINE + 1, 'y'), 0).end, MAX_LINE, 'cut even without a \\n')
})

t.test('instance names, topics and the Heroku line form', async (t) => {
  t.same(parseInstance('shop.web.1'), { app: 'shop', type: 'web', dyno: 'web.1' })
  t.same(parseInstance('shop.web.2-v7'), { app: 'shop', type: 'web', dyno: 'web.2', release: 7 })
  t.same(parseInstance('my-app.my_type.10'), { app: 'my-app', type: 'my_type', dyno: 'my_type.10' })
  for (const bad of ['master', 'shop.web', 'Shop.web.1', 'shop.web.x', 'shop.web.1~abc']) {
    t.equal(parseInstance(bad), undefined, bad)
  }
  t.equal(formatLine(line), '2026-11-23T19:00:00.000Z app[web.1]: listening')
  t.equal(formatLine({ ...line, instance: 'shop.web.1-v3' }), `${line.time} app[web.1]: listening`)
  t.same(Object.keys(publicLine(line)), [
    'time',
    'app',
    'type',
    'instance',
    'release',
    'node',
    'line',
  ])
  t.equal(logTopic('shop'), 'logs.shop')
  t.throws(() => logTopic('Shop!'), { code: 'E_LOGS' })
  t.ok(isLogTopic('logs.shop'))
  t.notOk(isLogTopic('node1'))
})
