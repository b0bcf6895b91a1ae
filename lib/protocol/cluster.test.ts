// Table tests of the cluster wire formats: host-list, node-report, control, slug-chunk.
import t from 'tap'
import {
  controlResult,
  encodeControlReply,
  encodeControlRequest,
  parseControlReply,
  parseControlRequest,
} from './control.js'
import {
  encodePublication,
  isNewer,
  parseHostList,
  parsePublication,
  topicFrame,
} from './host-list.js'
import { encodeNodeReport, parseNodeReport, type NodeReport } from './node-report.js'
import {
  encodeChunkReply,
  encodeChunkRequest,
  parseChunkReply,
  parseChunkRequest,
} from './slug-chunk.js'
import { AppError } from '../errors.js'

const SHA = 'a'.repeat(64)

t.test('publication: round trip and every refusal', async (t) => {
  const body = { host: 'node1', instances: [], slugs: {} }
  const frames = encodePublication('node1', 3, 7, body)
  t.equal(frames[0].toString(), 'node1\0')
  const p = parsePublication(frames)
  t.same(p, { topic: 'node1', meta: { epoch: 3, seq: 7, sha256: p.meta.sha256 }, body })
  t.match(p.meta.sha256, /^[0-9a-f]{64}$/)
  const meta = JSON.parse(frames[1].toString()) as Record<string, unknown>
  const bad: [string, Buffer[]][] = [
    ['TWO FRAMES', frames.slice(0, 2)],
    ['NO NUL', [Buffer.from('node1'), frames[1], frames[2]]],
    ['EMPTY TOPIC', [Buffer.from('\0'), frames[1], frames[2]]],
    ['META NOT JSON', [frames[0], Buffer.from('{'), frames[2]]],
    ['NEGATIVE EPOCH', [frames[0], Buffer.from(JSON.stringify({ ...meta, epoch: -1 })), frames[2]]],
    ['SHORT SHA', [frames[0], Buffer.from(JSON.stringify({ ...meta, sha256: 'ab' })), frames[2]]],
    ['BODY CHANGED', [frames[0], frames[1], Buffer.from(JSON.stringify({ ...body, host: 'x' }))]],
    ['BODY NOT JSON', encodePublication('n', 1, 1, 1).slice(0, 2).concat(Buffer.from('{'))],
  ]
  for (const [name, f] of bad) t.throws(() => parsePublication(f), { code: 'E_HOST_LIST' }, name)
  t.throws(() => topicFrame('a/b'), { code: 'E_HOST_LIST' })
  t.throws(() => topicFrame(''), { code: 'E_HOST_LIST' })
})

t.test('isNewer orders by epoch, then seq', async (t) => {
  const m = (epoch: number, seq: number) => ({ epoch, seq, sha256: SHA })
  t.ok(isNewer(m(1, 1), undefined))
  t.ok(isNewer(m(1, 2), m(1, 1)))
  t.notOk(isNewer(m(1, 1), m(1, 1)), 'the same is not newer')
  t.notOk(isNewer(m(1, 9), m(2, 1)), 'an older epoch loses whatever its seq')
  t.ok(isNewer(m(2, 1), m(1, 9)), 'a restarted master (new epoch) wins')
})

t.test('host list checks', async (t) => {
  const inst = { name: 'a.web.1', app: 'a', type: 'web', release: 1, command: 'x', env: {} }
  const good = {
    host: 'n1',
    instances: [{ ...inst, port: 5000, slug: SHA }],
    slugs: { [SHA]: { size: 10 } },
  }
  t.same(parseHostList(good, 'n1'), good)
  const bad: [string, unknown][] = [
    ['NOT AN OBJECT', []],
    ['OTHER HOST', { ...good, host: 'n2' }],
    ['NO INSTANCES', { ...good, instances: undefined }],
    ['SLUG NOT LISTED', { ...good, slugs: {} }],
    ['BAD SLUG SHA', { ...good, instances: [{ ...inst, slug: 'xyz' }] }],
    ['BAD SIZE', { ...good, slugs: { [SHA]: { size: -1 } } }],
    ['BAD SLUGS KEY', { ...good, slugs: { nothex: { size: 1 } } }],
  ]
  for (const [name, body] of bad)
    t.throws(() => parseHostList(body, 'n1'), { code: 'E_HOST_LIST' }, name)
})

t.test('node report: round trip and refusals', async (t) => {
  const report: NodeReport = {
    node: 'n1',
    addr: '10.0.0.2',
    time: 1700000000000,
    applied: { epoch: 1, seq: 4 },
    capacity: 50,
    load: [0.5, 0.25, 0],
    mem: { total: 100, free: 50 },
    instances: [
      {
        name: 'a.web.1~1a2b3c4d',
        app: 'a',
        type: 'web',
        release: 2,
        state: 'starting',
        pid: 9,
        port: 5001,
        restarts: 0,
      },
    ],
    errors: ['slug x: sha256 mismatch'],
  }
  t.same(parseNodeReport(encodeNodeReport(report)), report)
  t.same(parseNodeReport(encodeNodeReport({ ...report, applied: null })).applied, null)
  const bad: [string, unknown][] = [
    ['BAD NODE', { ...report, node: '../x' }],
    ['BAD ADDR', { ...report, addr: 'a b' }],
    ['SHORT LOAD', { ...report, load: [1] }],
    ['NO MEM', { ...report, mem: null }],
    ['BAD STATE', { ...report, instances: [{ ...report.instances[0], state: 'zombie' }] }],
    ['ERROR NOT STRING', { ...report, errors: [1] }],
    ['TOO MANY ERRORS', { ...report, errors: Array(21).fill('x') }],
    ['NEGATIVE TIME', { ...report, time: -1 }],
  ]
  for (const [name, r] of bad) {
    t.throws(() => parseNodeReport(Buffer.from(JSON.stringify(r))), { code: 'E_NODE_REPORT' }, name)
  }
  t.throws(() => parseNodeReport(Buffer.from('garbage')), { code: 'E_NODE_REPORT' })
})

t.test('control request and reply', async (t) => {
  t.same(parseControlRequest(encodeControlRequest({ cmd: 'ps:scale', args: { a: 1 } })), {
    cmd: 'ps:scale',
    args: { a: 1 },
  })
  t.same(parseControlRequest(Buffer.from('{"cmd":"apps"}')), { cmd: 'apps', args: {} })
  for (const bad of ['', '{', '[]', '{"cmd":"Apps"}', '{"cmd":"apps","args":[]}', '{"args":{}}']) {
    t.throws(() => parseControlRequest(Buffer.from(bad)), { code: 'E_CONTROL' }, bad)
  }
  t.same(controlResult(parseControlReply(encodeControlReply({ result: [1] }))), [1])
  const err = parseControlReply(encodeControlReply({ error: new AppError('E_APP', 'no app x') }))
  t.same(err, { ok: false, error: { code: 'E_APP', message: 'no app x' } })
  t.throws(() => controlResult(err), { code: 'E_APP', message: 'no app x' })
  t.same(parseControlReply(encodeControlReply({ error: new Error('boom') })), {
    ok: false,
    error: { code: 'E_MASTER', message: 'boom' },
  })
  for (const bad of ['x', '{}', '{"ok":false}', '{"ok":true}']) {
    t.throws(() => parseControlReply(Buffer.from(bad)), { code: 'E_CONTROL' }, bad)
  }
})

t.test('slug chunks', async (t) => {
  t.same(parseChunkRequest(encodeChunkRequest({ sha256: SHA, offset: 5, length: 10 })), {
    sha256: SHA,
    offset: 5,
    length: 10,
  })
  for (const bad of [
    { sha256: 'x', offset: 0, length: 1 },
    { sha256: SHA, offset: -1, length: 1 },
    { sha256: SHA, offset: 0, length: 0 },
    { sha256: SHA, offset: 0, length: 4 * 1024 * 1024 + 1 },
  ]) {
    t.throws(() => parseChunkRequest(Buffer.from(JSON.stringify(bad))), { code: 'E_SLUG' })
  }
  const data = Buffer.from('hello')
  t.same(parseChunkReply(encodeChunkReply({ sha256: SHA, offset: 0, size: 5, data })), {
    sha256: SHA,
    offset: 0,
    size: 5,
    data,
  })
  const e = { sha256: SHA, error: { code: 'E_SLUG' as const, message: 'no such slug' } }
  t.same(parseChunkReply(encodeChunkReply(e)), e)
  const past = encodeChunkReply({ sha256: SHA, offset: 3, size: 5, data })
  t.throws(() => parseChunkReply(past), { code: 'E_SLUG' }, 'past the end')
  const empty = encodeChunkReply({ sha256: SHA, offset: 0, size: 5, data: Buffer.alloc(0) })
  t.throws(() => parseChunkReply(empty), { code: 'E_SLUG' }, 'empty before the end')
  t.throws(() => parseChunkReply([Buffer.from('{')]), { code: 'E_SLUG' })
})
