import t from 'tap'
import { encodeDisconnect, parseRequest, type Headers } from '../protocol/mongrel2.js'
import { connectHandler, handlerOptionsFromEnv, toIncomingRequest } from './handler.js'
import {
  buildHttpResponse,
  buildStreamHead,
  buildWebSocketAccept,
  connectionAfter,
  encodeChunk,
  LAST_CHUNK,
  statusLine,
  type ResponseHeadOptions,
  type ResponseHeaders,
} from './http.js'

const SEND = 'tcp://127.0.0.1:9997'
const RECV = 'tcp://127.0.0.1:9996'

t.test('buildHttpResponse: input -> exact bytes', async (t) => {
  const cases: [string, number, ResponseHeaders, string, ResponseHeadOptions, string][] = [
    [
      'PLAIN 200',
      200,
      { 'Content-Type': 'text/plain' },
      'ok get_query\n',
      {},
      'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nok get_query\n',
    ],
    ['EMPTY BODY', 404, {}, '', {}, 'HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n'],
    [
      'HEAD',
      200,
      { 'Content-Type': 'text/plain' },
      'hello',
      { head: true },
      'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n',
    ],
    [
      'HEAD KEEPS GIVEN LENGTH',
      200,
      { 'content-length': 1234 },
      '',
      { head: true },
      'HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n',
    ],
    [
      'GIVEN LENGTH REPLACED',
      200,
      { 'Content-Length': 99 },
      'abc',
      {},
      'HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc',
    ],
    [
      'REPEATED HEADER',
      200,
      { 'Set-Cookie': ['a=1', 'b=2'] },
      '',
      {},
      'HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n',
    ],
    [
      'CLOSE ADDS HEADER',
      200,
      {},
      'x',
      { close: true },
      'HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx',
    ],
    [
      'CLOSE KEEPS APP HEADER',
      200,
      { Connection: 'close' },
      'x',
      { close: true },
      'HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx',
    ],
    [
      'HTTP/1.0 KEEP-ALIVE',
      200,
      {},
      'x',
      { keepAlive10: true },
      'HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\nx',
    ],
    ['204 NO LENGTH', 204, {}, '', {}, 'HTTP/1.1 204 No Content\r\n\r\n'],
    [
      '304 NO LENGTH',
      304,
      { ETag: '"a"' },
      '',
      {},
      'HTTP/1.1 304 Not Modified\r\nETag: "a"\r\n\r\n',
    ],
    [
      'OWN REASON',
      299,
      {},
      '',
      { reason: 'Fine' },
      'HTTP/1.1 299 Fine\r\nContent-Length: 0\r\n\r\n',
    ],
    ['UNKNOWN STATUS', 599, {}, '', {}, 'HTTP/1.1 599 Unknown\r\nContent-Length: 0\r\n\r\n'],
  ]
  for (const [name, status, headers, body, opts, want] of cases) {
    t.equal(buildHttpResponse(status, headers, body, opts).toString('latin1'), want, name)
  }
  const utf8 = buildHttpResponse(200, {}, 'é')
  t.equal(utf8.subarray(-2).toString('utf8'), 'é', 'UTF-8 BODY')
  t.match(utf8.toString('latin1'), /Content-Length: 2\r\n/, 'LENGTH IN BYTES')
})

t.test('buildHttpResponse refuses what would corrupt the response', async (t) => {
  const bad: [string, () => unknown][] = [
    ['CRLF IN VALUE', () => buildHttpResponse(200, { 'X-A': 'a\r\nX-B: b' }, '')],
    ['LF IN VALUE', () => buildHttpResponse(200, { 'X-A': 'a\nb' }, '')],
    ['SPACE IN NAME', () => buildHttpResponse(200, { 'X A': 'a' }, '')],
    ['COLON IN NAME', () => buildHttpResponse(200, { 'X:A': 'a' }, '')],
    ['BODY ON 204', () => buildHttpResponse(204, {}, 'x')],
    ['TRANSFER-ENCODING', () => buildHttpResponse(200, { 'Transfer-Encoding': 'chunked' }, 'x')],
    ['STATUS 99', () => statusLine(99)],
    ['STATUS 1000', () => statusLine(1000)],
    ['STATUS 200.5', () => statusLine(200.5)],
    ['CRLF IN REASON', () => statusLine(200, 'OK\r\nX: y')],
    ['STREAM 304', () => buildStreamHead(304, {}, true)],
    ['CRLF IN PROTOCOL', () => buildWebSocketAccept('abc', 'chat\r\nX: y')],
  ]
  for (const [name, fn] of bad) t.throws(fn, { code: 'E_HANDLER' }, name)
})

t.test('stream heads and chunks', async (t) => {
  t.equal(
    buildStreamHead(200, { 'Content-Type': 'text/plain', 'Content-Length': 5 }, true).toString(),
    'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n',
    'CHUNKED, GIVEN LENGTH DROPPED',
  )
  t.equal(
    buildStreamHead(200, {}, false, { close: true }).toString(),
    'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n',
    'HTTP/1.0: CLOSE-DELIMITED',
  )
  t.equal(encodeChunk('hello ').toString(), '6\r\nhello \r\n')
  t.equal(encodeChunk(Buffer.alloc(255, 'a')).subarray(0, 4).toString(), 'ff\r\n', 'HEX LENGTH')
  t.equal(encodeChunk('').length, 0, 'EMPTY CHUNK IS NOTHING (not the terminator)')
  t.equal(LAST_CHUNK.toString(), '0\r\n\r\n')
})

t.test('the 101 matches the captured handler reply', async (t) => {
  t.equal(
    buildWebSocketAccept('s3pPLMBiTxaQ9kYGzzhZRbK+xOo=', 'chat').toString(),
    'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Protocol: chat\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n',
  )
  t.notMatch(buildWebSocketAccept('k').toString(), /Sec-WebSocket-Protocol/, 'NO PROTOCOL')
})

t.test('connectionAfter: what the request asks for', async (t) => {
  const cases: [string, Headers, ReturnType<typeof connectionAfter>][] = [
    ['HTTP/1.1', { VERSION: 'HTTP/1.1' }, 'keep'],
    ['HTTP/1.1 CLOSE', { VERSION: 'HTTP/1.1', connection: 'close' }, 'close'],
    [
      'HTTP/1.1 CLOSE MIXED CASE',
      { VERSION: 'HTTP/1.1', connection: 'Keep-Alive, Close' },
      'close',
    ],
    ['HTTP/1.0', { VERSION: 'HTTP/1.0' }, 'close'],
    ['HTTP/1.0 KEEP-ALIVE', { VERSION: 'HTTP/1.0', connection: 'Keep-Alive' }, 'keep-alive10'],
    ['REPEATED CONNECTION', { VERSION: 'HTTP/1.1', connection: ['close', 'x'] }, 'close'],
    ['NO VERSION (socket message)', { METHOD: 'JSON' }, 'keep'],
  ]
  for (const [name, headers, want] of cases) t.equal(connectionAfter(headers), want, name)
})

t.test('handlerOptionsFromEnv', async (t) => {
  const env = { BAREKU_HANDLER_SEND_SPEC: SEND, BAREKU_HANDLER_RECV_SPEC: RECV }
  const got = handlerOptionsFromEnv({ ...env, BAREKU_HANDLER_SENDER_ID: 'my-app-1' })
  t.same(got, { sendSpec: SEND, recvSpec: RECV, senderId: 'my-app-1' })
  t.match(handlerOptionsFromEnv(env).senderId, /^[0-9a-f-]{36}$/, 'DEFAULT: A RANDOM UUID')
  t.not(handlerOptionsFromEnv(env).senderId, handlerOptionsFromEnv(env).senderId)

  const bad: [string, NodeJS.ProcessEnv, RegExp][] = [
    ['NO SEND SPEC', { BAREKU_HANDLER_RECV_SPEC: RECV }, /BAREKU_HANDLER_SEND_SPEC.*tcp:\/\//],
    ['EMPTY RECV SPEC', { ...env, BAREKU_HANDLER_RECV_SPEC: '' }, /BAREKU_HANDLER_RECV_SPEC/],
    ['NOT AN ENDPOINT', { ...env, BAREKU_HANDLER_SEND_SPEC: '127.0.0.1:9997' }, /endpoint/],
    ['BAD SENDER', { ...env, BAREKU_HANDLER_SENDER_ID: 'a_b' }, /BAREKU_HANDLER_SENDER_ID/],
  ]
  for (const [name, e, message] of bad) {
    t.throws(() => handlerOptionsFromEnv(e), { code: 'E_HANDLER', message }, name)
  }
})

t.test('connectHandler rejects bad options without opening sockets', async (t) => {
  await t.rejects(connectHandler({ sendSpec: 'nope', recvSpec: RECV }), { code: 'E_HANDLER' })
  await t.rejects(connectHandler({ sendSpec: SEND, recvSpec: RECV, senderId: 'a b' }), {
    code: 'E_HANDLER',
  })
})

t.test('toIncomingRequest: the convenience fields', async (t) => {
  const base = {
    sender: 's',
    connId: 3,
    path: '/ws',
    body: Buffer.from('x'),
    format: 'json' as const,
  }
  const frame = toIncomingRequest({ ...base, headers: { METHOD: 'WEBSOCKET', FLAGS: '0x89' } })
  t.match(frame, {
    method: 'WEBSOCKET',
    isWebSocket: true,
    isWebSocketHandshake: false,
    isDisconnect: false,
    wsFlags: 0x89,
    wsOpcode: 0x9,
  })
  t.equal(
    toIncomingRequest({ ...base, headers: { METHOD: 'WEBSOCKET', FLAGS: '0xC1' } }).wsOpcode,
    1,
  )
  t.match(toIncomingRequest({ ...base, headers: { METHOD: 'WEBSOCKET_HANDSHAKE' } }), {
    isWebSocketHandshake: true,
    isWebSocket: false,
    wsFlags: undefined,
  })
  t.match(toIncomingRequest({ ...base, headers: { FLAGS: 'zz' } }), {
    method: '',
    wsFlags: undefined,
    wsOpcode: undefined,
  })
  t.match(toIncomingRequest(parseRequest(encodeDisconnect('s', 7))), {
    isDisconnect: true,
    method: 'JSON',
    connId: 7,
  })
})
