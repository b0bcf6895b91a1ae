/**
 * The handler library against a fake Mongrel2 on real ZeroMQ sockets, with Mongrel2's captured
 * requests and replies (test/fixtures/mongrel2-vectors) where a capture exists.
 *
 *   test ──fake.send()──> PUSH bind ──request──> PULL  handler library  (in process, or
 *   test <─fake.nextReply()─ SUB bind <──reply── XPUB                    examples/*.ts as a child)
 */
import { readFile } from 'node:fs/promises'
import { pino } from 'pino'
import t, { type Test } from 'tap'
import { connectHandler, type Handler, type IncomingRequest } from '../../lib/handler/index.js'
import {
  encodeRequest,
  parseExtended,
  parseReply,
  parseRequest,
  type HandlerReply,
} from '../../lib/protocol/mongrel2.js'
import { encodeFrame, OPCODE } from '../../lib/protocol/websocket.js'
import { startFakeMongrel2, type FakeMongrel2 } from '../helpers/fake-mongrel2.js'
import { logRecord, startProcess, type Proc } from '../helpers/process.js'

// The uuid the capture's handler used, so whole reply messages compare byte for byte.
const UUID = 'a5a5a5a5-0000-4000-8000-0000000c0de1'
const VECTORS = new URL('../fixtures/mongrel2-vectors/', import.meta.url)
const vector = (name: string): Promise<Buffer> => readFile(new URL(name, VECTORS))

interface Setup {
  fake: FakeMongrel2
  h: Handler
  /** The next request the handler yields; rejects after `ms`. */
  next: (ms?: number) => Promise<IncomingRequest>
  logs: Record<string, unknown>[]
}

async function setup(t: Test): Promise<Setup> {
  const fake = await startFakeMongrel2()
  t.teardown(() => fake.close())
  const logs: Record<string, unknown>[] = []
  const log = pino(
    { level: 'debug' },
    { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) },
  )
  const h = await connectHandler({
    sendSpec: fake.sendSpec,
    recvSpec: fake.recvSpec,
    senderId: UUID,
    log,
  })
  t.teardown(() => h.close())
  const it = h[Symbol.asyncIterator]()
  const next = async (ms = 2000): Promise<IncomingRequest> => {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no request within ${ms} ms`)), ms)
    })
    try {
      const r = await Promise.race([it.next(), timeout])
      if (r.done === true) throw new Error('the handler ended its iteration')
      return r.value
    } finally {
      clearTimeout(timer)
    }
  }
  return { fake, h, next, logs }
}

const text = (r: HandlerReply): string => r.body.toString('latin1')

t.test('replyHttp answers the captured GET with the captured reply, byte for byte', async (t) => {
  const { fake, h, next } = await setup(t)
  await fake.send(await vector('get_query/01-handler-recv.bin'))
  const req = await next()
  t.equal(req.method, 'GET')
  t.equal(req.connId, 2)
  t.equal(req.path, '/hello/world.html')
  t.equal(req.headers.QUERY, 'a=1&b=two&b=three&empty=')
  t.notOk(req.isDisconnect || req.isWebSocket || req.isWebSocketHandshake)
  t.equal(h.inFlight, 1, 'the request is in flight once yielded')
  await h.replyHttp(req, 200, { 'Content-Type': 'text/plain' }, 'ok get_query\n')
  t.equal(h.inFlight, 0, 'replyHttp is a final reply')
  const msg = await fake.nextMessage()
  t.same(msg, await vector('get_query/02-handler-send.bin'), 'the whole message')
  const reply = parseReply(msg)
  t.equal(reply.uuid, UUID)
  t.same(reply.connIds, [2])
  t.equal(
    text(reply),
    'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nok get_query\n',
  )
})

t.test('a HEAD gets the headers and Content-Length, without the body', async (t) => {
  const { fake, h, next } = await setup(t)
  await fake.send(await vector('head/01-handler-recv.bin'))
  const req = await next()
  t.equal(req.method, 'HEAD')
  await h.replyHttp(req, 200, { 'Content-Type': 'text/plain' }, 'hello')
  const msg = await fake.nextMessage()
  t.same(msg, await vector('head/02-handler-send.bin'), 'the captured HEAD reply')
  t.equal(
    text(parseReply(msg)),
    'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n',
  )
})

t.test('HTTP/1.0 without keep-alive and Connection: close are followed by a close', async (t) => {
  const { fake, h, next } = await setup(t)
  await fake.sendRequest({ connId: 4, headers: { VERSION: 'HTTP/1.0' } })
  await h.replyHttp(await next(), 200, {}, 'a')
  const r1 = await fake.nextReply()
  t.equal(text(r1), 'HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\na')
  const c1 = await fake.nextReply()
  t.same([c1.connIds, c1.body.length], [[4], 0], 'then the empty message')

  await fake.sendRequest({ connId: 5, headers: { VERSION: 'HTTP/1.0', connection: 'keep-alive' } })
  await h.replyHttp(await next(), 200, {}, 'b')
  t.equal(
    text(await fake.nextReply()),
    'HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\nb',
  )

  await fake.sendRequest({ connId: 6 })
  await h.replyHttp(await next(), 200, { Connection: 'close' }, 'c')
  t.equal(
    text(await fake.nextReply()),
    'HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nc',
  )
  const c3 = await fake.nextReply()
  t.same([c3.connIds, c3.body.length], [[6], 0], 'a response saying close is followed by a close')
  t.equal(h.inFlight, 0)
})

t.test('a stream arrives as head, one message per chunk, and the terminator', async (t) => {
  const { fake, h, next } = await setup(t)
  await fake.sendRequest({ connId: 7, path: '/events' })
  const req = await next()
  const s = h.stream(req, 200, { 'Content-Type': 'text/plain' })
  await s.write('hello ')
  await s.write(Buffer.from('world'))
  await s.write('')
  t.equal(h.inFlight, 1, 'still in flight until end')
  await s.end()
  t.equal(h.inFlight, 0)
  const got: string[] = []
  for (let i = 0; i < 4; i++) {
    const r = await fake.nextReply()
    t.same(r.connIds, [7])
    got.push(text(r))
  }
  t.same(got, [
    'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n',
    '6\r\nhello \r\n',
    '5\r\nworld\r\n',
    '0\r\n\r\n',
  ])
  await t.rejects(s.write('late'), { code: 'E_HANDLER' }, 'no write after end')
})

t.test('deliver sends one message per 128 ids; close sends the empty body', async (t) => {
  const { fake, h } = await setup(t)
  await h.deliver([1, 2, 3], 'x')
  const three = await fake.nextReply()
  t.same([three.connIds, text(three)], [[1, 2, 3], 'x'], 'three ids, one message')

  const ids = Array.from({ length: 200 }, (_, i) => 1000 + i)
  await h.deliver(new Set(ids), 'y')
  const a = await fake.nextReply()
  const b = await fake.nextReply()
  t.same(a.connIds, ids.slice(0, 128), 'first message: 128 ids')
  t.same(b.connIds, ids.slice(128), 'second message: the other 72')
  t.same([text(a), text(b)], ['y', 'y'])

  await h.close({ connId: 9 })
  const c = await fake.nextReply()
  t.same([c.connIds, c.body.length], [[9], 0])
  await h.close([10, 11])
  const d = await fake.nextReply()
  t.same([d.connIds, d.body.length], [[10, 11], 0])
})

t.test('a reply sent right after connecting is held until the frontend subscribed', async (t) => {
  const { fake, h } = await setup(t)
  // A plain PUB would drop this: the frontend's subscription has not been processed yet.
  await h.reply({ connId: 1 }, 'early')
  const r = await fake.nextReply()
  t.same([r.uuid, r.connIds, text(r)], [UUID, [1], 'early'])
})

t.test('ctl sends an extended reply', async (t) => {
  const { fake, h } = await setup(t)
  await h.ctl({ connId: 3 }, { 'keep-alive': true })
  const r = await fake.nextReply()
  t.ok(r.extended)
  t.same(r.connIds, [3])
  t.same(parseExtended(r.body), { key: 'ctl', value: { 'keep-alive': true } })
})

t.test('a tnetstring-format request is yielded with its headers', async (t) => {
  const { fake, h, next } = await setup(t)
  await fake.send(await vector('tnetstring_protocol/01-handler-recv.bin'))
  const req = await next()
  t.equal(req.format, 'tnetstring')
  t.equal(req.method, 'POST')
  t.equal(req.connId, 20)
  t.equal(req.path, '/tns/x/y')
  t.same(req.headers.accept, ['a', 'b'])
  t.equal(req.headers['x-quote'], 'say "hi"')
  t.equal(req.body.toString(), 'hello')
  await h.replyHttp(req, 200, { 'Content-Type': 'text/plain' }, 'ok tnetstring_protocol\n')
  t.same(await fake.nextMessage(), await vector('tnetstring_protocol/02-handler-send.bin'))
})

t.test('a garbage message is logged and dropped; the next request is answered', async (t) => {
  const { fake, h, next, logs } = await setup(t)
  await fake.send(Buffer.from('this is not a mongrel2 request'))
  await fake.sendRequest({ connId: 8, path: '/after' })
  const req = await next()
  t.equal(req.path, '/after', 'the first request yielded is the good one')
  await h.replyHttp(req, 204)
  t.equal(text(await fake.nextReply()), 'HTTP/1.1 204 No Content\r\n\r\n')
  const dropped = logs.find((l) => l.msg === 'dropped request')
  t.match(dropped, { level: 40, code: 'E_M2_REQUEST' }, 'warn with the error code')
})

t.test('disconnect notices are yielded and end what was in flight on that id', async (t) => {
  const { fake, h, next } = await setup(t)
  await fake.sendRequest({ connId: 2, path: '/slow' })
  await next()
  t.equal(h.inFlight, 1)
  await fake.send(await vector('get_query/05-handler-recv.bin'))
  const notice = await next()
  t.ok(notice.isDisconnect)
  t.same([notice.connId, notice.path, notice.method], [2, '@*', 'JSON'])
  t.equal(h.inFlight, 0, 'nothing left to wait for on a gone connection')
})

t.test('WebSocket: handshake, echo, ping and close, as the capture did', async (t) => {
  const { fake, h, next } = await setup(t)
  await fake.send(await vector('websocket/01-handler-recv.bin'))
  const hs = await next()
  t.ok(hs.isWebSocketHandshake)
  t.equal(hs.body.toString(), 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=')
  await h.acceptWebSocket(hs, { protocol: 'chat' })
  t.equal(h.inFlight, 0, 'the 101 is a final reply')
  const accept = await fake.nextMessage()
  t.same(accept, await vector('websocket/02-handler-send.bin'), 'the captured 101')
  t.match(text(parseReply(accept)), /\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=\r\n/)

  // text, binary, fragmented text, 200-byte text: each echoed as one unmasked frame.
  for (const [inFile, outFile] of [
    ['05', '06'],
    ['09', '10'],
    ['17', '18'],
    ['21', '22'],
  ]) {
    await fake.send(await vector(`websocket/${inFile}-handler-recv.bin`))
    const frame = await next()
    t.ok(frame.isWebSocket)
    await h.sendFrame(frame, frame.wsOpcode ?? -1, frame.body)
    const msg = await fake.nextMessage()
    t.same(msg, await vector(`websocket/${outFile}-handler-send.bin`), `echo of ${inFile}`)
    const body = parseReply(msg).body
    t.equal(body[1]! & 0x80, 0, 'unmasked')
    t.same(body, encodeFrame({ opcode: frame.wsOpcode ?? -1, payload: frame.body }))
  }
  t.equal(h.inFlight, 0, 'frames are not tracked')

  await fake.send(await vector('websocket/13-handler-recv.bin'))
  const ping = await next()
  t.same([ping.wsFlags, ping.wsOpcode], [0x89, OPCODE.PING])
  await h.pong(ping)
  t.same(await fake.nextMessage(), await vector('websocket/14-handler-send.bin'), 'pong')

  await fake.send(await vector('websocket/25-handler-recv.bin'))
  const close = await next()
  t.equal(close.wsOpcode, OPCODE.CLOSE)
  await h.closeWebSocket(close, 1000, 'bye')
  t.same(await fake.nextMessage(), await vector('websocket/26-handler-send.bin'), 'close frame')
  t.same(await fake.nextMessage(), await vector('websocket/27-handler-send.bin'), 'then the close')
})

t.test('drain waits for the request in flight, sends its answer, then ends', async (t) => {
  const { fake, h, next, logs } = await setup(t)
  await fake.sendRequest({ connId: 31, path: '/held' })
  const held = await next()
  const order: string[] = []
  const ended = next().then(
    () => order.push('yielded'),
    (err: Error) => order.push(err.message),
  )
  const drained = h.drain(5000).then((r) => {
    order.push('drained')
    return r
  })
  // Let the drain get as far as it can without the answer: it must still be waiting.
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve))
  t.same(order, [], 'neither drained nor ended while the request is held')
  t.equal(h.inFlight, 1)
  t.ok(logs.some((l) => l.msg === 'draining'))
  await h.replyHttp(held, 200, {}, 'late answer')
  const r = await fake.nextReply()
  t.same([r.connIds, text(r)], [[31], 'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nlate answer'])
  t.same(await drained, { drained: true, inFlight: 0 })
  await ended
  t.same(order, ['drained', 'the handler ended its iteration'], 'iteration ends after drain')
  await t.rejects(h.reply(held, 'x'), { code: 'E_HANDLER' }, 'no reply after the close')
})

t.test('drain gives up after its timeout', async (t) => {
  const { fake, h, next } = await setup(t)
  await fake.sendRequest({ connId: 32 })
  await next()
  t.same(await h.drain(50), { drained: false, inFlight: 1 })
})

function handlerEnv(fake: FakeMongrel2): NodeJS.ProcessEnv {
  return {
    BAREKU_HANDLER_SEND_SPEC: fake.sendSpec,
    BAREKU_HANDLER_RECV_SPEC: fake.recvSpec,
    BAREKU_HANDLER_SENDER_ID: UUID,
  }
}

function startExample(t: Test, file: string, fake: FakeMongrel2): Proc {
  const proc = startProcess(process.execPath, ['--import', 'tsx', file], { env: handlerEnv(fake) })
  t.teardown(() => proc.stop(1000))
  return proc
}

const isReady = (line: string): boolean => logRecord(line)?.msg === 'ready'

t.test('examples/hello.ts answers, then drains and exits 0 on SIGTERM', async (t) => {
  const fake = await startFakeMongrel2()
  t.teardown(() => fake.close())
  const proc = startExample(t, 'examples/hello.ts', fake)
  await proc.waitFor(isReady, 10_000)
  await fake.sendRequest({ connId: 41, path: '/hi' })
  const r = await fake.nextReply(5000)
  t.same(r.connIds, [41])
  t.equal(r.uuid, UUID)
  t.equal(
    text(r),
    'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 18\r\n\r\nHello from Bareku\n',
  )
  proc.child.kill('SIGTERM')
  t.equal(await proc.exited, 0, 'exit code 0')
  t.ok(proc.lines.some((l) => logRecord(l)?.msg === 'drained'))
})

t.test('examples/chat.ts broadcasts a text frame to every joined id in one message', async (t) => {
  const fake = await startFakeMongrel2()
  t.teardown(() => fake.close())
  const proc = startExample(t, 'examples/chat.ts', fake)
  await proc.waitFor(isReady, 10_000)
  const handshake = parseRequest(await vector('websocket/01-handler-recv.bin'))
  const ids = [51, 52, 53]
  for (const connId of ids) await fake.send(encodeRequest({ ...handshake, connId }))
  for (const connId of ids) {
    const r = await fake.nextReply(5000)
    t.same(r.connIds, [connId])
    t.match(text(r), /^HTTP\/1\.1 101 Switching Protocols\r\n/)
  }
  await fake.send(
    encodeRequest({
      ...handshake,
      connId: 52,
      headers: { ...handshake.headers, METHOD: 'WEBSOCKET', FLAGS: '0x81' },
      body: Buffer.from('hello, room'),
    }),
  )
  const b = await fake.nextReply(5000)
  t.same(b.connIds, ids, 'one message to all three')
  t.same(b.body, encodeFrame({ opcode: OPCODE.TEXT, payload: 'hello, room' }))
})
