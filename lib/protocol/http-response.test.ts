import { readdirSync, readFileSync } from 'node:fs'
import { isDeepStrictEqual } from 'node:util'
import t from 'tap'
import { isAppError } from '../errors.js'
import { ResponseParser, type ResponseEvent, type ResponseHead } from './http-response.js'

/*
 *   client ──request──> frontend ──Mongrel2──> handler
 *                          ^                      │
 *                          └── raw HTTP response ─┘  split across any number of messages
 *
 *   frontend: parser.expect(method)        once per request, in order
 *             parser.push(body)            per handler message -> head / data / end events
 *             parser.finish()              when the handler closes the connection
 */

/** Events as plain data: adjacent data chunks joined, so any split of the input compares equal. */
type Flat = ['head', ResponseHead] | ['informational', ResponseHead] | ['data', string] | ['end']

function flatten(events: ResponseEvent[]): Flat[] {
  const out: Flat[] = []
  for (const ev of events) {
    const last = out[out.length - 1]
    if (ev.type === 'data') {
      const s = ev.chunk.toString('latin1')
      if (last?.[0] === 'data') last[1] += s
      else out.push(['data', s])
    } else if (ev.type === 'end') out.push(['end'])
    else out.push([ev.type, ev.head])
  }
  return out.filter((f) => f[0] !== 'data' || f[1] !== '')
}

interface Feed {
  methods?: string[]
  finish?: boolean
  opts?: ConstructorParameters<typeof ResponseParser>[0]
}

/** Feeds `pieces` to a fresh parser and returns every event, flattened. */
function feed(pieces: Buffer[], { methods = [], finish = false, opts }: Feed = {}): Flat[] {
  const p = new ResponseParser(opts)
  for (const m of methods) p.expect(m)
  const events: ResponseEvent[] = []
  for (const piece of pieces) events.push(...p.push(piece))
  if (finish) events.push(...p.finish())
  return flatten(events)
}

const bin = (s: string): Buffer => Buffer.from(s, 'latin1')

function head(
  status: number,
  reason: string,
  headers: [string, string][],
  rest: Partial<ResponseHead> = {},
): ResponseHead {
  return {
    status,
    reason,
    version: 'HTTP/1.1',
    headers,
    framing: 'length',
    keepAlive: true,
    ...rest,
  }
}

interface Good extends Feed {
  input: string
  events: Flat[]
}

const good: Record<string, Good> = {
  'CONTENT-LENGTH': {
    input: 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello',
    events: [
      [
        'head',
        head(
          200,
          'OK',
          [
            ['Content-Type', 'text/plain'],
            ['Content-Length', '5'],
          ],
          { contentLength: 5 },
        ),
      ],
      ['data', 'hello'],
      ['end'],
    ],
  },
  'CONTENT-LENGTH 0': {
    input: 'HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n',
    events: [['head', head(200, 'OK', [['content-length', '0']], { contentLength: 0 })], ['end']],
  },
  'CHUNKED WITH EXTENSIONS AND TRAILERS': {
    input:
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Expires\r\n\r\n' +
      '5;name=value\r\nhello\r\n6 ; a=b;c\r\n world\r\nA\r\n0123456789\r\n' +
      '0\r\nExpires: never\r\nX-Sum: abc\r\n\r\n',
    events: [
      [
        'head',
        head(
          200,
          'OK',
          [
            ['Transfer-Encoding', 'chunked'],
            ['Trailer', 'Expires'],
          ],
          { framing: 'chunked' },
        ),
      ],
      ['data', 'hello world0123456789'],
      ['end'],
    ],
  },
  'CHUNKED LOWERCASE HEX, LEADING ZEROS, NO TRAILERS': {
    input:
      'HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, CHUNKED\r\n\r\n00b\r\nabcdefghijk\r\n000\r\n\r\n',
    events: [
      ['head', head(200, 'OK', [['transfer-encoding', 'gzip, CHUNKED']], { framing: 'chunked' })],
      ['data', 'abcdefghijk'],
      ['end'],
    ],
  },
  'CHUNKED WINS OVER CONTENT-LENGTH': {
    input:
      'HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n' +
      '3\r\nabc\r\n0\r\n\r\n',
    events: [
      [
        'head',
        head(
          200,
          'OK',
          [
            ['Transfer-Encoding', 'chunked'],
            ['X-A', '1'],
          ],
          { framing: 'chunked' },
        ),
      ],
      ['data', 'abc'],
      ['end'],
    ],
  },
  'CLOSE-DELIMITED': {
    input: 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the handler closes',
    finish: true,
    events: [
      [
        'head',
        head(200, 'OK', [['Content-Type', 'text/plain']], { framing: 'close', keepAlive: false }),
      ],
      ['data', 'until the handler closes'],
      ['end'],
    ],
  },
  'TRANSFER-ENCODING WITHOUT CHUNKED IS CLOSE-DELIMITED': {
    input: 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b',
    finish: true,
    events: [
      [
        'head',
        head(200, 'OK', [['Transfer-Encoding', 'gzip']], { framing: 'close', keepAlive: false }),
      ],
      ['data', '\x1f\x8b'],
      ['end'],
    ],
  },
  'HEAD WITH CONTENT-LENGTH': {
    input: 'HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n',
    methods: ['HEAD'],
    events: [
      [
        'head',
        head(200, 'OK', [['Content-Length', '1234']], { framing: 'none', contentLength: 1234 }),
      ],
      ['end'],
    ],
  },
  'HEAD WITH CHUNKED': {
    input: 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n',
    methods: ['HEAD'],
    events: [
      ['head', head(200, 'OK', [['Transfer-Encoding', 'chunked']], { framing: 'none' })],
      ['end'],
    ],
  },
  '204': {
    input: 'HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n',
    events: [['head', head(204, 'No Content', [['X-A', 'b']], { framing: 'none' })], ['end']],
  },
  '304 KEEPS CONTENT-LENGTH': {
    input: 'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 10\r\n\r\n',
    events: [
      [
        'head',
        head(
          304,
          'Not Modified',
          [
            ['ETag', '"x"'],
            ['Content-Length', '10'],
          ],
          { framing: 'none', contentLength: 10 },
        ),
      ],
      ['end'],
    ],
  },
  '100 CONTINUE THEN 200': {
    input: 'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok',
    methods: ['POST'],
    events: [
      ['informational', head(100, 'Continue', [], { framing: 'none' })],
      ['head', head(200, 'OK', [['Content-Length', '2']], { contentLength: 2 })],
      ['data', 'ok'],
      ['end'],
    ],
  },
  '103 THEN 200': {
    input:
      'HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n' +
      'HTTP/1.1 200 OK\r\nLink: </style.css>; rel=preload\r\nContent-Length: 3\r\n\r\nabc',
    events: [
      [
        'informational',
        head(103, 'Early Hints', [['Link', '</style.css>; rel=preload']], { framing: 'none' }),
      ],
      [
        'head',
        head(
          200,
          'OK',
          [
            ['Link', '</style.css>; rel=preload'],
            ['Content-Length', '3'],
          ],
          { contentLength: 3 },
        ),
      ],
      ['data', 'abc'],
      ['end'],
    ],
  },
  '101 THEN WEBSOCKET BYTES': {
    input:
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
      'Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x05Hello\x88\x02\x03\xe8' +
      'HTTP/1.1 200 OK\r\n\r\n',
    finish: true,
    events: [
      [
        'head',
        head(
          101,
          'Switching Protocols',
          [
            ['Upgrade', 'websocket'],
            ['Connection', 'Upgrade'],
            ['Sec-WebSocket-Accept', 's3pPLMBiTxaQ9kYGzzhZRbK+xOo='],
          ],
          { framing: 'none' },
        ),
      ],
      ['data', '\x81\x05Hello\x88\x02\x03\xe8HTTP/1.1 200 OK\r\n\r\n'],
      ['end'],
    ],
  },
  'TWO KEEP-ALIVE RESPONSES': {
    input:
      'HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nka 1' +
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nka 2\r\n0\r\n\r\n',
    methods: ['GET', 'GET'],
    events: [
      ['head', head(200, 'OK', [['Content-Length', '4']], { contentLength: 4 })],
      ['data', 'ka 1'],
      ['end'],
      ['head', head(200, 'OK', [['Transfer-Encoding', 'chunked']], { framing: 'chunked' })],
      ['data', 'ka 2'],
      ['end'],
    ],
  },
  'HEAD THEN GET ON ONE CONNECTION': {
    input:
      'HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n' +
      'HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody',
    methods: ['HEAD', 'GET'],
    events: [
      ['head', head(200, 'OK', [['Content-Length', '4']], { framing: 'none', contentLength: 4 })],
      ['end'],
      ['head', head(200, 'OK', [['Content-Length', '4']], { contentLength: 4 })],
      ['data', 'body'],
      ['end'],
    ],
  },
  'HTTP/1.0 IS NOT KEEP-ALIVE': {
    input: 'HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx',
    events: [
      [
        'head',
        head(200, 'OK', [['Content-Length', '1']], {
          version: 'HTTP/1.0',
          contentLength: 1,
          keepAlive: false,
        }),
      ],
      ['data', 'x'],
      ['end'],
    ],
  },
  'HTTP/1.0 WITH CONNECTION: KEEP-ALIVE': {
    input: 'HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\nx',
    events: [
      [
        'head',
        head(
          200,
          'OK',
          [
            ['Connection', 'Keep-Alive'],
            ['Content-Length', '1'],
          ],
          { version: 'HTTP/1.0', contentLength: 1 },
        ),
      ],
      ['data', 'x'],
      ['end'],
    ],
  },
  'HTTP/1.0 KEEP-ALIVE BUT CLOSE-DELIMITED': {
    input: 'HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\nx',
    finish: true,
    events: [
      [
        'head',
        head(200, 'OK', [['Connection', 'keep-alive']], {
          version: 'HTTP/1.0',
          framing: 'close',
          keepAlive: false,
        }),
      ],
      ['data', 'x'],
      ['end'],
    ],
  },
  'HTTP/1.1 CONNECTION: CLOSE': {
    input: 'HTTP/1.1 200 OK\r\nConnection: foo, Close\r\nContent-Length: 1\r\n\r\nx',
    events: [
      [
        'head',
        head(
          200,
          'OK',
          [
            ['Connection', 'foo, Close'],
            ['Content-Length', '1'],
          ],
          { contentLength: 1, keepAlive: false },
        ),
      ],
      ['data', 'x'],
      ['end'],
    ],
  },
  'BARE LF LINE ENDINGS': {
    input: 'HTTP/1.1 200 OK\nContent-Length: 2\n\nhi',
    events: [
      ['head', head(200, 'OK', [['Content-Length', '2']], { contentLength: 2 })],
      ['data', 'hi'],
      ['end'],
    ],
  },
  'BARE LF IN CHUNKED BODY': {
    input: 'HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n2\nhi\n0\nX: y\n\n',
    events: [
      ['head', head(200, 'OK', [['Transfer-Encoding', 'chunked']], { framing: 'chunked' })],
      ['data', 'hi'],
      ['end'],
    ],
  },
  'NO REASON': {
    input: 'HTTP/1.1 200\r\nContent-Length: 0\r\n\r\nHTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n',
    events: [
      ['head', head(200, '', [['Content-Length', '0']], { contentLength: 0 })],
      ['end'],
      ['head', head(404, '', [['Content-Length', '0']], { contentLength: 0 })],
      ['end'],
    ],
  },
  'REASON WITH SPACES, TAB AND OBS-TEXT': {
    input: "HTTP/1.1 418 I'm a\tteapot \xe9\r\nContent-Length: 0\r\n\r\n",
    events: [
      ['head', head(418, "I'm a\tteapot \xe9", [['Content-Length', '0']], { contentLength: 0 })],
      ['end'],
    ],
  },
  'REPEATED IDENTICAL CONTENT-LENGTH': {
    input: 'HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 003\r\n\r\nabc',
    events: [
      [
        'head',
        head(
          200,
          'OK',
          [
            ['Content-Length', '3, 3'],
            ['Content-Length', '003'],
          ],
          { contentLength: 3 },
        ),
      ],
      ['data', 'abc'],
      ['end'],
    ],
  },
  'VALUES TRIMMED, EMPTY VALUE, NAMES KEPT AS SENT': {
    input:
      'HTTP/1.1 200 OK\r\nX-Pad:  \t padded \t \r\nX-Empty:\r\nx-Dup: 1\r\nX-DUP: 2\r\n' +
      'Set-Cookie: a=\xe9\r\nContent-Length: 0\r\n\r\n',
    events: [
      [
        'head',
        head(
          200,
          'OK',
          [
            ['X-Pad', 'padded'],
            ['X-Empty', ''],
            ['x-Dup', '1'],
            ['X-DUP', '2'],
            ['Set-Cookie', 'a=\xe9'],
            ['Content-Length', '0'],
          ],
          { contentLength: 0 },
        ),
      ],
      ['end'],
    ],
  },
}

const goodInputs = Object.entries(good).map(([name, c]) => [name, bin(c.input), c] as const)

t.test('good responses, fed whole', async (t) => {
  for (const [name, input, c] of goodInputs) t.same(feed([input], c), c.events, name)
})

t.test('good responses, split at every byte position and fed one byte at a time', async (t) => {
  for (const [name, input, c] of goodInputs) {
    const wrong: number[] = []
    for (let i = 1; i < input.length; i++)
      if (!isDeepStrictEqual(feed([input.subarray(0, i), input.subarray(i)], c), c.events))
        wrong.push(i)
    t.same(wrong, [], `${name}: every split`)
    const bytes = Array.from({ length: input.length }, (_, i) => input.subarray(i, i + 1))
    t.same(feed(bytes, c), c.events, `${name}: one byte at a time`)
  }
})

t.test('a reset parser reads every good response as a new one does', async (t) => {
  const p = new ResponseParser()
  for (const [name, input, c] of goodInputs) {
    // Leave it in the middle of something first: reset must forget it all.
    p.expect('HEAD')
    try {
      p.push(bin('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Half: 1'))
    } catch {
      // a parser finished or failed by an earlier case is reset all the same
    }
    p.reset()
    t.ok(p.idle, `${name}: idle after reset`)
    for (const m of c.methods ?? []) p.expect(m)
    const events: ResponseEvent[] = []
    try {
      events.push(...p.push(input))
      if (c.finish) events.push(...p.finish())
    } catch (err) {
      t.fail(`${name}: ${String(err)}`)
    }
    t.same(flatten(events), c.events, name)
  }
})

t.test('state between responses', async (t) => {
  const p = new ResponseParser()
  t.ok(p.idle, 'idle before anything')
  t.same(p.push(bin('HTTP/1.1 100 Continue\r\n\r\n')).length, 1)
  t.notOk(p.idle, 'not idle after an informational head: the final head is still owed')
  p.push(bin('HTTP/1.1 200 OK\r\nContent-Len'))
  t.notOk(p.idle, 'not idle inside a head')
  p.push(bin('gth: 3\r\n\r\nab'))
  t.notOk(p.idle, 'not idle inside a body')
  p.push(bin('c'))
  t.ok(p.idle, 'idle after the body')
  t.same(p.finish(), [], 'finish between responses returns nothing')
  t.throws(
    () => p.push(bin('HTTP/1.1 200 OK\r\n')),
    { code: 'E_HTTP_RESPONSE' },
    'push after finish',
  )

  const ws = new ResponseParser()
  ws.expect('GET')
  ws.push(bin('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n'))
  t.ok(ws.switched, 'switched after 101')
  t.notOk(ws.idle, 'a switched stream is never idle')
  t.same(flatten(ws.push(bin('\x81\x00'))), [['data', '\x81\x00']])
  t.ok(ws.switched)
  t.notOk(new ResponseParser().switched)

  const empty = new ResponseParser()
  t.same(empty.push(Buffer.alloc(0)), [], 'an empty push completes nothing')
})

t.test('body bytes are zero-copy views into the pushed buffer', async (t) => {
  const input = bin('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello')
  const events = new ResponseParser().push(input)
  t.same(
    events.map((e) => e.type),
    ['head', 'data', 'end'],
  )
  const data = events[1]
  if (data?.type !== 'data') throw new Error('expected data')
  t.equal(data.chunk.buffer, input.buffer, 'same memory')
  t.equal(data.chunk.byteOffset, input.byteOffset + input.length - 5)
})

t.test('a forged huge chunk size is not allocated', async (t) => {
  const p = new ResponseParser()
  const events = p.push(
    bin('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1fffffffffffff\r\nabc'),
  )
  t.same(flatten(events).slice(1), [['data', 'abc']])
  t.notOk(p.idle)
  t.throws(() => p.finish(), { code: 'E_HTTP_RESPONSE' }, 'finish inside the chunk')
  const max = new ResponseParser()
  max.push(bin('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'))
  t.same(flatten(max.push(bin('20000000000000\r\nx'))), [['data', 'x']], 'exactly 2^53 is accepted')
})

const bad: Record<string, string | (Feed & { input: string })> = {
  'BAD VERSION 2.0': 'HTTP/2.0 200 OK\r\n\r\n',
  'BAD VERSION 1.2': 'HTTP/1.2 200 OK\r\n\r\n',
  'LOWERCASE VERSION': 'http/1.1 200 OK\r\n\r\n',
  'NOT HTTP': 'ICY 200 OK\r\n\r\n',
  'EMPTY LINE FOR STATUS LINE': '\r\nHTTP/1.1 200 OK\r\n\r\n',
  'TWO SPACES AFTER VERSION': 'HTTP/1.1  200 OK\r\n\r\n',
  'STATUS NOT DIGITS': 'HTTP/1.1 2x0 OK\r\n\r\n',
  'STATUS 2 DIGITS': 'HTTP/1.1 20 OK\r\n\r\n',
  'STATUS 4 DIGITS': 'HTTP/1.1 2000 OK\r\n\r\n',
  'STATUS BELOW 100': 'HTTP/1.1 099 Low\r\n\r\n',
  'STATUS ABOVE 599': 'HTTP/1.1 600 High\r\n\r\n',
  'STATUS WITHOUT SPACE BEFORE REASON': 'HTTP/1.1 200OK\r\n\r\n',
  'MISSING CRLF (BARE CR ENDS STATUS LINE)': 'HTTP/1.1 200 OK\rContent-Length: 0\r\n\r\n',
  'BARE CR ENDS HEADER LINE': 'HTTP/1.1 200 OK\r\nX-A: b\rContent-Length: 0\r\n\r\n',
  'CONTROL BYTE IN REASON': 'HTTP/1.1 200 O\x01K\r\n\r\n',
  'HEADER WITHOUT COLON': 'HTTP/1.1 200 OK\r\nContent-Length 0\r\n\r\n',
  'SPACE BEFORE COLON': 'HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n',
  'TAB BEFORE COLON': 'HTTP/1.1 200 OK\r\nContent-Length\t: 0\r\n\r\n',
  'EMPTY HEADER NAME': 'HTTP/1.1 200 OK\r\n: x\r\n\r\n',
  'NON-TOKEN HEADER NAME': 'HTTP/1.1 200 OK\r\nX(a): b\r\n\r\n',
  'OBS-FOLD': 'HTTP/1.1 200 OK\r\nX-A: a\r\n  b\r\nContent-Length: 0\r\n\r\n',
  'WHITESPACE BEFORE FIRST HEADER': 'HTTP/1.1 200 OK\r\n X-A: a\r\n\r\n',
  'NUL IN VALUE': 'HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n',
  'DEL IN VALUE': 'HTTP/1.1 200 OK\r\nX-A: a\x7fb\r\n\r\n',
  'CONFLICTING CONTENT-LENGTH IN ONE FIELD': 'HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n',
  'CONFLICTING CONTENT-LENGTH FIELDS':
    'HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\nhello',
  'NON-NUMERIC CONTENT-LENGTH': 'HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n',
  'NEGATIVE CONTENT-LENGTH': 'HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n',
  'PLUS-SIGNED CONTENT-LENGTH': 'HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n',
  'HEX CONTENT-LENGTH': 'HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n',
  'CONTENT-LENGTH WITH INNER SPACE': 'HTTP/1.1 200 OK\r\nContent-Length: 5 5\r\n\r\n',
  'EMPTY CONTENT-LENGTH': 'HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n',
  'CONTENT-LENGTH EMPTY LIST ITEM': 'HTTP/1.1 200 OK\r\nContent-Length: 5,,5\r\n\r\n',
  'CONTENT-LENGTH OVER 2^53': 'HTTP/1.1 200 OK\r\nContent-Length: 9007199254740993\r\n\r\n',
  'CONTENT-LENGTH 17 DIGITS': 'HTTP/1.1 200 OK\r\nContent-Length: 00000000000000005\r\n\r\n',
  'BAD CONTENT-LENGTH ON HEAD': {
    input: 'HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n',
    methods: ['HEAD'],
  },
  'CHUNKED TWICE': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n',
  'CHUNKED NOT LAST':
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n',
  'EMPTY TRANSFER-ENCODING': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: ,\r\n\r\n',
  'TRANSFER-ENCODING IN HTTP/1.0': 'HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n',
  'BAD CHUNK SIZE': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n',
  'EMPTY CHUNK SIZE': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n',
  'NEGATIVE CHUNK SIZE': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n',
  'CHUNK SIZE 2^53 + 1': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n20000000000001\r\n',
  'CHUNK SIZE 17 DIGITS':
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000005\r\n',
  'GARBAGE AFTER CHUNK SIZE':
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5x\r\nhello\r\n',
  'BARE CR AFTER CHUNK SIZE': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\rhello\r\n',
  'CONTROL BYTE IN CHUNK EXTENSION':
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\x00\r\nhello\r\n',
  'CHUNK EXTENSION OVER 4 KiB': `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;${'a'.repeat(5000)}\r\nhello\r\n`,
  'CHUNK WITHOUT CRLF AFTER DATA':
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n',
  'CHUNK WITH CR BUT NO LF AFTER DATA':
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\r\n0\r\n\r\n',
  'BAD TRAILER': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nno colon\r\n\r\n',
  'BODY AFTER 204': 'HTTP/1.1 204 No Content\r\n\r\nsurprise\r\n',
  'HEAD OVER THE LIMIT': {
    input: `HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(100)}\r\n\r\n`,
    opts: { maxHeaderBytes: 64 },
  },
  'HEAD OVER THE DEFAULT LIMIT': `HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(64 * 1024)}\r\n\r\n`,
  'HEAD WITHOUT END OVER THE LIMIT': `HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(70 * 1024)}`,
  'TRAILERS OVER THE LIMIT': {
    input: `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: ${'a'.repeat(100)}\r\n\r\n`,
    opts: { maxHeaderBytes: 64 },
  },
  'TOO MANY HEADERS': `HTTP/1.1 200 OK\r\n${'X-A: b\r\n'.repeat(201)}\r\n`,
  'TOO MANY HEADERS (maxHeaders 2)': {
    input: 'HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n',
    opts: { maxHeaders: 2 },
  },
  'FINISH IN A CONTENT-LENGTH BODY': {
    input: 'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello',
    finish: true,
  },
  'FINISH IN A STATUS LINE': { input: 'HTTP/1.1 200', finish: true },
  'FINISH IN A HEAD': { input: 'HTTP/1.1 200 OK\r\nContent-Length: 1\r\n', finish: true },
  'FINISH IN A CHUNKED BODY': {
    input: 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n',
    finish: true,
  },
  'FINISH IN A TRAILER SECTION': {
    input: 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\r\n',
    finish: true,
  },
  'FINISH AFTER 100 CONTINUE ONLY': { input: 'HTTP/1.1 100 Continue\r\n\r\n', finish: true },
}

t.test('bad responses throw E_HTTP_RESPONSE, fed whole and one byte at a time', async (t) => {
  for (const [name, c] of Object.entries(bad)) {
    const opts = typeof c === 'string' ? { input: c } : c
    const input = bin(opts.input)
    t.throws(() => feed([input], opts), { code: 'E_HTTP_RESPONSE' }, name)
    const bytes = Array.from({ length: input.length }, (_, i) => input.subarray(i, i + 1))
    t.throws(() => feed(bytes, opts), { code: 'E_HTTP_RESPONSE' }, `${name}: one byte at a time`)
  }
})

t.test('a head that never ends is refused as soon as it passes the limit', async (t) => {
  const p = new ResponseParser({ maxHeaderBytes: 100 })
  p.push(bin('HTTP/1.1 200 OK\r\nX: '))
  let pushed = 20
  t.throws(
    () => {
      for (; pushed < 1000; pushed++) p.push(bin('a'))
    },
    { code: 'E_HTTP_RESPONSE' },
  )
  t.equal(pushed, 100, 'thrown on the 101st byte')
  t.throws(() => p.push(bin('\r\n\r\n')), { code: 'E_HTTP_RESPONSE' }, 'unusable after an error')
  t.throws(() => p.finish(), { code: 'E_HTTP_RESPONSE' }, 'finish after an error')
})

/** mulberry32: small, deterministic, good enough to make garbage. */
function prng(seed: number): (n: number) => number {
  let a = seed >>> 0
  return (n) => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = a
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return Math.floor((((x ^ (x >>> 14)) >>> 0) / 4294967296) * n)
  }
}

t.test('random garbage: every call returns events or throws E_HTTP_RESPONSE', async (t) => {
  const rand = prng(0x5eed)
  const alphabet = bin('HTP/1.0 23456789:;,\r\n\r\n\t\x00\x7f\xffaAzZ-chunkedContent-Length')
  const bases = goodInputs.map(([, input]) => input)
  const outcomes = { events: 0, errors: 0 }
  const unexpected: string[] = []
  for (let n = 0; n < 3000; n++) {
    let buf: Buffer
    const base = bases[rand(bases.length)]!
    if (n % 4 === 0) {
      buf = Buffer.alloc(rand(200))
      for (let i = 0; i < buf.length; i++) buf[i] = rand(256)
    } else {
      // Mutate a valid response, so the parser gets past the status line and into the body states.
      buf = Buffer.from(base.subarray(0, rand(base.length + 1)))
      for (let k = rand(4); k >= 0 && buf.length > 0; k--)
        buf[rand(buf.length)] = alphabet[rand(alphabet.length)]!
    }
    const p = new ResponseParser({ maxHeaderBytes: 256, maxHeaders: 8 })
    for (let m = rand(3); m > 0; m--) p.expect(rand(3) === 0 ? 'HEAD' : 'GET')
    try {
      let pos = 0
      while (pos < buf.length) {
        const next = pos + 1 + rand(buf.length - pos)
        const events = p.push(buf.subarray(pos, next))
        if (!Array.isArray(events)) unexpected.push(`case ${n}: push returned ${typeof events}`)
        pos = next
      }
      if (rand(2) === 0) p.finish()
      outcomes.events++
    } catch (err) {
      if (isAppError(err, 'E_HTTP_RESPONSE')) outcomes.errors++
      else unexpected.push(`case ${n}: ${String(err)}`)
    }
  }
  t.same(unexpected, [], 'no other error')
  t.ok(
    outcomes.events > 100 && outcomes.errors > 100,
    `both outcomes seen: ${JSON.stringify(outcomes)}`,
  )
})

t.test('replies captured from Mongrel2 handlers', async (t) => {
  const root = new URL('../../test/fixtures/mongrel2-vectors/', import.meta.url)
  const cases = [
    'get_query',
    'head',
    'keepalive_two_requests',
    'large_body_inline',
    'post_form',
    'pattern_route',
    'tnetstring_protocol',
    'multi_target',
    'upload_content_length',
  ]
  for (const name of cases) {
    const dir = new URL(`${name}/`, root)
    const files = readdirSync(dir).sort()
    const request = readFileSync(new URL('00-client-send.bin', dir))
    const method = request.toString('latin1', 0, request.indexOf(0x20))
    const replies = files.filter((f) => f.endsWith('-handler-send.bin'))
    t.ok(replies.length > 0, `${name}: has handler replies`)
    for (const file of replies) {
      const frame = readFileSync(new URL(file, dir))
      // UUID SIZE:IDS, BODY: the first ", " ends the id list (a UUID holds no comma).
      const http = frame.subarray(frame.indexOf(', ') + 2)
      const events = feed([http], { methods: [method] })
      const label = `${name}/${file} (${method})`
      t.same(
        events.map((e) => e[0]),
        method === 'HEAD' ? ['head', 'end'] : ['head', 'data', 'end'],
        `${label}: one complete response`,
      )
      const first = events[0]
      if (first?.[0] !== 'head') continue
      const h = first[1]
      t.equal(h.status, 200, `${label}: status`)
      t.equal(h.framing, method === 'HEAD' ? 'none' : 'length', `${label}: framing`)
      const body = events[1]?.[0] === 'data' ? events[1][1] : ''
      t.equal(Buffer.byteLength(body, 'latin1'), method === 'HEAD' ? 0 : h.contentLength)
      const wrong: number[] = []
      for (let i = 1; i < http.length; i++)
        if (
          !isDeepStrictEqual(
            feed([http.subarray(0, i), http.subarray(i)], { methods: [method] }),
            events,
          )
        )
          wrong.push(i)
      t.same(wrong, [], `${label}: every split`)
    }
  }

  // Both replies of the keep-alive case on one connection, as the frontend would see them.
  const dir = new URL('keepalive_two_requests/', root)
  const frames = ['02-handler-send.bin', '06-handler-send.bin'].map((f) => {
    const frame = readFileSync(new URL(f, dir))
    return frame.subarray(frame.indexOf(', ') + 2)
  })
  t.same(
    feed(frames, { methods: ['GET', 'GET'] }).map((e) => (e[0] === 'data' ? e[1] : e[0])),
    ['head', 'ka 1\n', 'end', 'head', 'ka 2\n', 'end'],
    'keep-alive: two responses on one parser',
  )
})
