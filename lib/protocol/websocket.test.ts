import t from 'tap'
import { AppError } from '../errors.js'
import {
  FrameParser,
  OPCODE,
  acceptKey,
  encodeClose,
  encodeFrame,
  isValidCloseCode,
  parseClosePayload,
  parseFrame,
  type ParseOptions,
  type WsFrame,
} from './websocket.js'

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex')
const b64 = (s: string): Buffer => Buffer.from(s, 'base64')

/** Frames as plain data, so tap diffs show payload bytes instead of Buffer internals. */
const view = (f: WsFrame) => ({ ...f, payload: f.payload.toString('hex') })

/** Walks `buf` with parseFrame the way a caller holding the whole input would. */
function parseAll(buf: Buffer, opts?: ParseOptions): { frames: WsFrame[]; rest: number } {
  const frames: WsFrame[] = []
  let offset = 0
  for (;;) {
    const r = parseFrame(buf, offset, opts)
    if (r === null) return { frames, rest: buf.length - offset }
    frames.push(r.frame)
    offset = r.next
  }
}

// Captured from Mongrel2: every client frame uses the masking key 37 fa 21 3d.
const MONGREL2_MASK = hex('37fa213d')
const BYTES_0_15 = Buffer.from(Array.from({ length: 16 }, (_, i) => i))
const L200 = Buffer.alloc(200, 'L')

const clientVectors = [
  {
    name: 'client text "Hello"',
    b64: 'gYU3+iE9f59NUVg=',
    opcode: OPCODE.TEXT,
    payload: Buffer.from('Hello'),
  },
  {
    name: 'client binary 0x00..0x0f',
    b64: 'gpA3+iE9N/sjPjP/Jzo/8ys2O/cvMg==',
    opcode: OPCODE.BINARY,
    payload: BYTES_0_15,
  },
  {
    name: 'client ping "ping!"',
    b64: 'iYU3+iE9R5NPWhY=',
    opcode: OPCODE.PING,
    payload: Buffer.from('ping!'),
  },
]

const serverVectors = [
  {
    name: 'server text "Hello"',
    bytes: b64('gQVIZWxsbw=='),
    opcode: OPCODE.TEXT,
    payload: Buffer.from('Hello'),
  },
  {
    name: 'server binary 0x00..0x0f',
    bytes: b64('ghAAAQIDBAUGBwgJCgsMDQ4P'),
    opcode: OPCODE.BINARY,
    payload: BYTES_0_15,
  },
  {
    name: 'server pong "ping!"',
    bytes: b64('igVwaW5nIQ=='),
    opcode: OPCODE.PONG,
    payload: Buffer.from('ping!'),
  },
  {
    name: 'server 200 "L"s, 16-bit length',
    bytes: Buffer.concat([b64('gX4AyA=='), L200]),
    opcode: OPCODE.TEXT,
    payload: L200,
  },
  {
    name: 'server close 1000 "bye"',
    bytes: b64('iAUD6GJ5ZQ=='),
    opcode: OPCODE.CLOSE,
    payload: hex('03e8 627965'),
  },
]

t.test('Mongrel2 client frames parse with requireMask and re-encode byte for byte', async (t) => {
  for (const v of clientVectors) {
    const bytes = b64(v.b64)
    const r = parseFrame(bytes, 0, { requireMask: true })
    t.same(
      r && { ...view(r.frame), next: r.next },
      {
        fin: true,
        rsv: 0,
        opcode: v.opcode,
        masked: true,
        payload: v.payload.toString('hex'),
        next: bytes.length,
      },
      v.name,
    )
    t.same(
      encodeFrame({ opcode: v.opcode, payload: v.payload, mask: MONGREL2_MASK }),
      bytes,
      `${v.name} encodes`,
    )
  }
})

t.test('Mongrel2 fragmented client text: two frames in one buffer', async (t) => {
  const bytes = b64('AYQ3+iE9UYhAWoCEN/ohPVqfT0k=')
  const first = parseFrame(bytes, 0, { requireMask: true })
  t.ok(first, 'first frame complete')
  if (!first) return
  const second = parseFrame(bytes, first.next, { requireMask: true })
  t.ok(second, 'second frame complete')
  if (!second) return
  t.same(view(first.frame), {
    fin: false,
    rsv: 0,
    opcode: OPCODE.TEXT,
    masked: true,
    payload: Buffer.from('frag').toString('hex'),
  })
  t.same(view(second.frame), {
    fin: true,
    rsv: 0,
    opcode: OPCODE.CONTINUATION,
    masked: true,
    payload: Buffer.from('ment').toString('hex'),
  })
  t.equal(second.next, bytes.length, 'second frame ends the buffer')
  t.equal(parseFrame(bytes, second.next), null, 'nothing after the second frame')
  const again = Buffer.concat([
    encodeFrame({ opcode: OPCODE.TEXT, payload: 'frag', fin: false, mask: MONGREL2_MASK }),
    encodeFrame({ opcode: OPCODE.CONTINUATION, payload: 'ment', mask: MONGREL2_MASK }),
  ])
  t.same(again, bytes, 're-encodes byte for byte')
})

t.test('Mongrel2 server frames encode byte for byte and parse with forbidMask', async (t) => {
  for (const v of serverVectors) {
    t.same(encodeFrame({ opcode: v.opcode, payload: v.payload }), v.bytes, `${v.name} encodes`)
    const r = parseFrame(v.bytes, 0, { forbidMask: true })
    t.same(
      r && { ...view(r.frame), next: r.next },
      {
        fin: true,
        rsv: 0,
        opcode: v.opcode,
        masked: false,
        payload: v.payload.toString('hex'),
        next: v.bytes.length,
      },
      `${v.name} parses`,
    )
  }
  t.same(encodeClose(1000, 'bye'), b64('iAUD6GJ5ZQ=='), 'encodeClose(1000, "bye")')
  t.same(
    encodeFrame({ opcode: OPCODE.TEXT, payload: 'Hello' }),
    b64('gQVIZWxsbw=='),
    'string payload is UTF-8',
  )
})

t.test('acceptKey: RFC 6455 section 1.3 example', async (t) => {
  t.equal(acceptKey('dGhlIHNhbXBsZSBub25jZQ=='), 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=')
})

t.test('good frames parse', async (t) => {
  const good: {
    name: string
    bytes: Buffer
    offset?: number
    opts?: ParseOptions
    frame: WsFrame
    next: number
  }[] = [
    {
      name: 'length 5 encoded non-minimally in 16 bits',
      bytes: hex('817e0005 48656c6c6f'),
      frame: {
        fin: true,
        rsv: 0,
        opcode: OPCODE.TEXT,
        masked: false,
        payload: Buffer.from('Hello'),
      },
      next: 9,
    },
    {
      name: 'length 5 encoded non-minimally in 64 bits',
      bytes: hex('817f0000000000000005 48656c6c6f'),
      frame: {
        fin: true,
        rsv: 0,
        opcode: OPCODE.TEXT,
        masked: false,
        payload: Buffer.from('Hello'),
      },
      next: 15,
    },
    {
      name: 'ping with a non-minimal 16-bit length',
      bytes: hex('897e0001 21'),
      frame: { fin: true, rsv: 0, opcode: OPCODE.PING, masked: false, payload: Buffer.from('!') },
      next: 5,
    },
    {
      name: 'all RSV bits are reported, not rejected',
      bytes: hex('f100'),
      frame: { fin: true, rsv: 7, opcode: OPCODE.TEXT, masked: false, payload: Buffer.alloc(0) },
      next: 2,
    },
    {
      name: 'RSV1 alone is 4',
      bytes: hex('c200'),
      frame: { fin: true, rsv: 4, opcode: OPCODE.BINARY, masked: false, payload: Buffer.alloc(0) },
      next: 2,
    },
    {
      name: 'unfinished continuation frame',
      bytes: hex('0003 616263'),
      frame: {
        fin: false,
        rsv: 0,
        opcode: OPCODE.CONTINUATION,
        masked: false,
        payload: Buffer.from('abc'),
      },
      next: 5,
    },
    {
      name: 'masked empty frame',
      bytes: hex('8a80 01020304'),
      frame: { fin: true, rsv: 0, opcode: OPCODE.PONG, masked: true, payload: Buffer.alloc(0) },
      next: 6,
    },
    {
      name: 'frame at a non-zero offset, trailing bytes left alone',
      bytes: hex('ffff 8201 2a 83'),
      offset: 2,
      frame: { fin: true, rsv: 0, opcode: OPCODE.BINARY, masked: false, payload: hex('2a') },
      next: 5,
    },
    {
      name: 'payload exactly maxPayload',
      bytes: hex('8203 010203'),
      opts: { maxPayload: 3 },
      frame: { fin: true, rsv: 0, opcode: OPCODE.BINARY, masked: false, payload: hex('010203') },
      next: 5,
    },
    {
      name: 'control payload of exactly 125 bytes',
      bytes: Buffer.concat([hex('897d'), Buffer.alloc(125, 1)]),
      frame: {
        fin: true,
        rsv: 0,
        opcode: OPCODE.PING,
        masked: false,
        payload: Buffer.alloc(125, 1),
      },
      next: 127,
    },
  ]
  for (const g of good) {
    const r = parseFrame(g.bytes, g.offset, g.opts)
    t.same(r && { ...view(r.frame), next: r.next }, { ...view(g.frame), next: g.next }, g.name)
  }
})

t.test('partial frames return null', async (t) => {
  const partial: { name: string; bytes: Buffer; offset?: number }[] = [
    { name: 'empty buffer', bytes: Buffer.alloc(0) },
    { name: 'offset at the end', bytes: hex('8100'), offset: 2 },
    { name: 'first byte only', bytes: hex('81') },
    { name: '16-bit length marker, no length', bytes: hex('817e') },
    { name: 'half a 16-bit length', bytes: hex('817e00') },
    { name: 'half a 64-bit length', bytes: hex('817f00000000') },
    { name: 'part of the masking key', bytes: hex('818537fa') },
    { name: 'masking key, part of the payload', bytes: hex('818537fa213d7f9f') },
    { name: '199 of 200 bytes', bytes: Buffer.concat([hex('817e00c8'), Buffer.alloc(199, 'L')]) },
  ]
  for (const p of partial) t.equal(parseFrame(p.bytes, p.offset), null, p.name)
})

t.test('a huge declared length is never allocated or awaited past maxPayload', async (t) => {
  const header = hex('827f 0010000000000000') // 2^52 bytes
  t.throws(() => parseFrame(header), { code: 'E_WS_FRAME' }, 'default maxPayload rejects 2^52')
  t.equal(
    parseFrame(header, 0, { maxPayload: Number.MAX_SAFE_INTEGER }),
    null,
    'within the limit: just waits',
  )
  const p = new FrameParser({ maxPayload: Number.MAX_SAFE_INTEGER })
  t.same(p.push(header), [], 'parser waits too')
  t.equal(p.buffered, 10, 'only the header is held')
})

t.test('bad frames throw E_WS_FRAME', async (t) => {
  const bad: { name: string; bytes: Buffer; offset?: number; opts?: ParseOptions }[] = [
    ...[0x3, 0x4, 0x5, 0x6, 0x7, 0xb, 0xc, 0xd, 0xe, 0xf].map((op) => ({
      name: `reserved opcode 0x${op.toString(16)}`,
      bytes: Buffer.from([0x80 | op, 0x00]),
    })),
    { name: 'reserved opcode seen from the first byte alone', bytes: hex('83') },
    { name: 'reserved opcode with FIN=0', bytes: hex('0b00') },
    { name: 'close with FIN=0', bytes: hex('0800') },
    { name: 'ping with FIN=0', bytes: hex('0905 70696e6721') },
    { name: 'pong with FIN=0, first byte alone', bytes: hex('0a') },
    { name: 'ping payload 126 (16-bit length)', bytes: hex('897e007e') },
    { name: 'close payload 126 (64-bit length)', bytes: hex('887f000000000000007e') },
    { name: 'pong payload 65535', bytes: hex('8a7effff') },
    { name: '64-bit length with the top bit set', bytes: hex('827f8000000000000000') },
    { name: '64-bit length all ones', bytes: hex('827fffffffffffffffff') },
    { name: 'declared 7-bit length > maxPayload', bytes: hex('8204'), opts: { maxPayload: 3 } },
    {
      name: 'declared 16-bit length > maxPayload',
      bytes: hex('827e0100'),
      opts: { maxPayload: 255 },
    },
    {
      name: 'declared 64-bit length > default maxPayload (16 MiB + 1)',
      bytes: hex('827f0000000001000001'),
    },
    {
      name: 'masked frame when forbidMask',
      bytes: b64('gYU3+iE9f59NUVg='),
      opts: { forbidMask: true },
    },
    {
      name: 'masked bit seen before the length bytes',
      bytes: hex('81fe'),
      opts: { forbidMask: true },
    },
    {
      name: 'unmasked frame when requireMask',
      bytes: b64('gQVIZWxsbw=='),
      opts: { requireMask: true },
    },
    { name: 'negative offset', bytes: hex('8100'), offset: -1 },
    { name: 'offset past the end', bytes: hex('8100'), offset: 3 },
    { name: 'fractional offset', bytes: hex('8100'), offset: 0.5 },
  ]
  for (const b of bad)
    t.throws(() => parseFrame(b.bytes, b.offset, b.opts), { code: 'E_WS_FRAME' }, b.name)
})

t.test('contradictory or invalid options throw E_CONFIG', async (t) => {
  const bad: { name: string; opts: ParseOptions }[] = [
    { name: 'requireMask and forbidMask', opts: { requireMask: true, forbidMask: true } },
    { name: 'negative maxPayload', opts: { maxPayload: -1 } },
    { name: 'NaN maxPayload', opts: { maxPayload: NaN } },
    { name: 'fractional maxPayload', opts: { maxPayload: 1.5 } },
  ]
  for (const b of bad) {
    t.throws(
      () => parseFrame(hex('8100'), 0, b.opts),
      { code: 'E_CONFIG' },
      `parseFrame: ${b.name}`,
    )
    t.throws(() => new FrameParser(b.opts), { code: 'E_CONFIG' }, `FrameParser: ${b.name}`)
  }
})

t.test('encodeFrame rejects what parseFrame would reject', async (t) => {
  const bad: { name: string; frame: Parameters<typeof encodeFrame>[0] }[] = [
    { name: 'mask of 3 bytes', frame: { opcode: OPCODE.TEXT, payload: 'x', mask: hex('010203') } },
    {
      name: 'mask of 5 bytes',
      frame: { opcode: OPCODE.TEXT, payload: 'x', mask: hex('0102030405') },
    },
    { name: 'mask of 0 bytes', frame: { opcode: OPCODE.TEXT, mask: Buffer.alloc(0) } },
    { name: 'rsv 8', frame: { opcode: OPCODE.TEXT, rsv: 8 } },
    { name: 'rsv -1', frame: { opcode: OPCODE.TEXT, rsv: -1 } },
    { name: 'rsv 1.5', frame: { opcode: OPCODE.TEXT, rsv: 1.5 } },
    { name: 'ping payload 126', frame: { opcode: OPCODE.PING, payload: Buffer.alloc(126) } },
    { name: 'pong payload 126', frame: { opcode: OPCODE.PONG, payload: 'p'.repeat(126) } },
    { name: 'close payload 126', frame: { opcode: OPCODE.CLOSE, payload: Buffer.alloc(126) } },
    { name: 'close with fin false', frame: { opcode: OPCODE.CLOSE, fin: false } },
    { name: 'reserved opcode 0x3', frame: { opcode: 0x3 } },
    { name: 'reserved opcode 0xb', frame: { opcode: 0xb } },
    { name: 'opcode 0x10', frame: { opcode: 0x10 } },
    { name: 'opcode -1', frame: { opcode: -1 } },
  ]
  for (const b of bad) t.throws(() => encodeFrame(b.frame), { code: 'E_WS_FRAME' }, b.name)
})

t.test('encodeFrame header fields', async (t) => {
  t.same(encodeFrame({ opcode: OPCODE.BINARY }), hex('8200'), 'no payload is empty')
  t.same(encodeFrame({ opcode: OPCODE.TEXT, fin: false, payload: 'a' }), hex('010161'), 'fin false')
  t.same(
    encodeFrame({ opcode: OPCODE.TEXT, rsv: 5, payload: 'a' }),
    hex('d10161'),
    'rsv 5 is RSV1 and RSV3',
  )
  t.same(
    encodeFrame({ opcode: OPCODE.PING, payload: Buffer.alloc(125) }).subarray(0, 2),
    hex('897d'),
    'ping 125',
  )
  t.same(
    encodeFrame({ opcode: OPCODE.TEXT, payload: 'é' }),
    hex('8102c3a9'),
    'UTF-8 length is in bytes',
  )
})

t.test('7-, 16- and 64-bit lengths round-trip, masked and not', async (t) => {
  const sizes = [0, 1, 125, 126, 127, 65535, 65536, 70000]
  const mask = hex('a1b2c3d4')
  for (const n of sizes) {
    const payload = Buffer.alloc(n)
    for (let i = 0; i < n; i++) payload[i] = (i * 31 + 7) & 0xff
    const ext = n <= 125 ? 0 : n <= 65535 ? 2 : 8
    for (const masked of [false, true]) {
      const bytes = encodeFrame({ opcode: OPCODE.BINARY, payload, mask: masked ? mask : undefined })
      const headerLength = 2 + ext + (masked ? 4 : 0)
      t.equal(bytes.length, headerLength + n, `${n} bytes, masked ${masked}: minimal header`)
      const lengthField = bytes[1]! & 0x7f
      t.equal(
        lengthField,
        ext === 0 ? n : ext === 2 ? 126 : 127,
        `${n} bytes, masked ${masked}: length marker`,
      )
      const r = parseFrame(bytes, 0, masked ? { requireMask: true } : { forbidMask: true })
      t.ok(r?.frame.payload.equals(payload), `${n} bytes, masked ${masked}: payload round-trips`)
      t.equal(r?.next, bytes.length, `${n} bytes, masked ${masked}: next is the end`)
      t.equal(
        parseFrame(bytes.subarray(0, bytes.length - 1)),
        null,
        `${n} bytes, masked ${masked}: one short`,
      )
    }
  }
})

t.test('close payloads', async (t) => {
  const good: { name: string; payload: Buffer; want: { code?: number; reason: string } }[] = [
    { name: 'empty: no code', payload: Buffer.alloc(0), want: { reason: '' } },
    { name: '1000 "bye"', payload: hex('03e8 627965'), want: { code: 1000, reason: 'bye' } },
    { name: '1001, no reason', payload: hex('03e9'), want: { code: 1001, reason: '' } },
    {
      name: 'application code 4000',
      payload: hex('0fa0 6f6b'),
      want: { code: 4000, reason: 'ok' },
    },
    { name: 'multi-byte reason', payload: hex('03e8 e282ac'), want: { code: 1000, reason: '€' } },
  ]
  for (const g of good) t.same(parseClosePayload(g.payload), g.want, g.name)

  const bad: { name: string; payload: Buffer }[] = [
    { name: 'exactly 1 byte', payload: hex('03') },
    { name: 'reason is a lone 0xff', payload: hex('03e8 ff') },
    { name: 'reason has a bad continuation byte', payload: hex('03e8 c328') },
    { name: 'reason ends mid code point', payload: hex('03e8 e282') },
    { name: 'reason is UTF-8-encoded surrogate', payload: hex('03e8 eda080') },
    { name: 'reason is an overlong "/"', payload: hex('03e8 c0af') },
    { name: 'code 0', payload: hex('0000') },
    { name: 'code 999', payload: hex('03e7') },
    { name: 'code 1005 (reserved: no status)', payload: hex('03ed') },
    { name: 'code 1006 (reserved: abnormal)', payload: hex('03ee') },
    { name: 'code 1015 (reserved: TLS)', payload: hex('03f7') },
    { name: 'code 2999', payload: hex('0bb7') },
    { name: 'code 5000', payload: hex('1388') },
    {
      name: 'payload over 125 bytes',
      payload: Buffer.concat([hex('03e8'), Buffer.alloc(124, 'a')]),
    },
  ]
  for (const b of bad) t.throws(() => parseClosePayload(b.payload), { code: 'E_WS_FRAME' }, b.name)
})

t.test('encodeClose', async (t) => {
  t.same(encodeClose(), hex('8800'), 'no code: empty body')
  t.same(encodeClose(1001), hex('8802 03e9'), 'code without reason')
  const longest = 'é'.repeat(61) + 'x' // 123 bytes
  const frame = parseFrame(encodeClose(4999, longest))
  t.same(
    frame && parseClosePayload(frame.frame.payload),
    { code: 4999, reason: longest },
    '123-byte reason',
  )
  for (const code of [1000, 1003, 1007, 1014, 3000, 4999])
    t.ok(isValidCloseCode(code), `${code} may be sent`)
  const bad: { name: string; code?: number; reason?: string }[] = [
    { name: 'reason of 124 bytes', code: 1000, reason: 'a'.repeat(124) },
    { name: 'reason of 124 UTF-8 bytes from 62 characters', code: 1000, reason: 'é'.repeat(62) },
    { name: 'reason without a code', reason: 'why' },
    { name: 'code 1005', code: 1005 },
    { name: 'code 1006', code: 1006 },
    { name: 'code 999', code: 999 },
    { name: 'code 5000', code: 5000 },
    { name: 'code 70000', code: 70000 },
    { name: 'code 1000.5', code: 1000.5 },
  ]
  for (const b of bad) t.throws(() => encodeClose(b.code, b.reason), { code: 'E_WS_FRAME' }, b.name)
})

t.test('FrameParser: a server stream split at every byte position', async (t) => {
  const stream = Buffer.concat([
    ...serverVectors.map((v) => v.bytes),
    encodeFrame({ opcode: OPCODE.TEXT, payload: 'frag', fin: false }),
    encodeFrame({ opcode: OPCODE.CONTINUATION, payload: '' }),
  ])
  const want = parseAll(stream, { forbidMask: true }).frames.map(view)
  t.equal(want.length, serverVectors.length + 2, 'reference walk finds every frame')
  let ok = 0
  for (let cut = 0; cut <= stream.length; cut++) {
    const p = new FrameParser({ forbidMask: true })
    const got = [...p.push(stream.subarray(0, cut)), ...p.push(stream.subarray(cut))].map(view)
    if (JSON.stringify(got) === JSON.stringify(want) && p.buffered === 0) ok++
    else t.same(got, want, `split at ${cut}`)
  }
  t.equal(ok, stream.length + 1, `all ${stream.length + 1} two-chunk splits give the same frames`)

  const p = new FrameParser({ forbidMask: true })
  const got: WsFrame[] = []
  for (let i = 0; i < stream.length; i++) got.push(...p.push(stream.subarray(i, i + 1)))
  t.same(got.map(view), want, 'one byte at a time')
  t.equal(p.buffered, 0, 'nothing left over')
})

t.test('FrameParser: Mongrel2 client frames split at every byte position', async (t) => {
  const stream = Buffer.concat([
    ...clientVectors.map((v) => b64(v.b64)),
    b64('AYQ3+iE9UYhAWoCEN/ohPVqfT0k='),
  ])
  const want = parseAll(stream, { requireMask: true }).frames.map(view)
  t.same(
    want.map((f) => Buffer.from(f.payload, 'hex').toString('latin1')),
    ['Hello', BYTES_0_15.toString('latin1'), 'ping!', 'frag', 'ment'],
    'reference walk unmasks every payload',
  )
  let ok = 0
  for (let cut = 0; cut <= stream.length; cut++) {
    const p = new FrameParser({ requireMask: true })
    const got = [...p.push(stream.subarray(0, cut)), ...p.push(stream.subarray(cut))].map(view)
    if (JSON.stringify(got) === JSON.stringify(want) && p.buffered === 0) ok++
    else t.same(got, want, `split at ${cut}`)
  }
  t.equal(ok, stream.length + 1, `all ${stream.length + 1} two-chunk splits give the same frames`)
})

t.test('FrameParser: 64-bit frame split around its header and in many chunks', async (t) => {
  const big = Buffer.alloc(70000, 'b')
  const stream = Buffer.concat([
    encodeFrame({ opcode: OPCODE.BINARY, payload: big, mask: MONGREL2_MASK }),
    encodeFrame({ opcode: OPCODE.PING, payload: 'p', mask: MONGREL2_MASK }),
  ])
  const cuts = [1, 2, 3, 9, 10, 13, 14, 15, 35000, 70013, 70014, 70015, stream.length - 1]
  for (const cut of cuts) {
    const p = new FrameParser({ requireMask: true })
    const first = p.push(stream.subarray(0, cut))
    const rest = p.push(stream.subarray(cut))
    const frames = [...first, ...rest]
    t.ok(
      frames.length === 2 &&
        frames[0]!.payload.equals(big) &&
        frames[1]!.payload.toString() === 'p',
      `split at ${cut}`,
    )
  }
  const p = new FrameParser({ requireMask: true })
  const frames: WsFrame[] = []
  for (let i = 0; i < stream.length; i += 1000) {
    frames.push(...p.push(stream.subarray(i, i + 1000)))
    if (frames.length === 0)
      t.equal(p.buffered, Math.min(i + 1000, stream.length), `holds ${i + 1000} bytes`)
  }
  t.equal(frames.length, 2, '1000-byte chunks give both frames')
  t.ok(frames[0]?.payload.equals(big), 'big payload intact')
})

t.test('FrameParser: buffered, empty chunks and packed chunks', async (t) => {
  const p = new FrameParser()
  t.same(p.push(Buffer.alloc(0)), [], 'empty chunk')
  t.equal(p.buffered, 0)
  t.same(p.push(hex('8105 4865')), [], 'partial frame')
  t.equal(p.buffered, 4, 'keeps the partial frame')
  const frames = p.push(hex('6c6c6f 8200 89'))
  t.same(
    frames.map((f) => [f.opcode, f.payload.toString()]),
    [
      [OPCODE.TEXT, 'Hello'],
      [OPCODE.BINARY, ''],
    ],
    'completes one frame, parses a packed one',
  )
  t.equal(p.buffered, 1, 'keeps the next header byte')
  t.same(p.push(Buffer.alloc(0)), [], 'empty chunk changes nothing')
  t.same(p.push(hex('00')).map(view), [
    { fin: true, rsv: 0, opcode: OPCODE.PING, masked: false, payload: '' },
  ])
  t.equal(p.buffered, 0)
})

t.test('FrameParser: an error poisons the parser', async (t) => {
  const bad: { name: string; chunks: Buffer[]; opts?: ParseOptions }[] = [
    { name: 'reserved opcode after a good frame', chunks: [hex('8100 83')] },
    { name: 'reserved opcode in a later chunk', chunks: [hex('8100'), hex('8500')] },
    {
      name: 'masked frame when forbidMask',
      chunks: [b64('gYU3+iE9f59NUVg=')],
      opts: { forbidMask: true },
    },
    {
      name: 'unmasked frame when requireMask',
      chunks: [b64('gQVIZWxsbw==')],
      opts: { requireMask: true },
    },
    {
      name: 'length over maxPayload, header split',
      chunks: [hex('827e'), hex('0100')],
      opts: { maxPayload: 255 },
    },
    { name: 'fragmented ping', chunks: [hex('0900')] },
    { name: '64-bit length with the top bit set', chunks: [hex('827f80'), hex('00000000000000')] },
  ]
  for (const b of bad) {
    const p = new FrameParser(b.opts)
    t.throws(
      () => {
        for (const c of b.chunks) p.push(c)
      },
      { code: 'E_WS_FRAME' },
      b.name,
    )
    t.throws(() => p.push(hex('8100')), { code: 'E_WS_FRAME' }, `${b.name}: later push throws`)
    t.equal(p.buffered, 0, `${b.name}: holds nothing`)
  }
})

/** mulberry32: tiny, seeded, and good enough to spread bytes around; fuzzing must be repeatable. */
function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = a
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 0x1_0000_0000
  }
}

t.test('garbage never hangs or crashes: parseFrame and FrameParser agree', async (t) => {
  const rand = prng(0x5eed_6455)
  const int = (n: number) => Math.floor(rand() * n)
  const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => int(256)))
  const optionSets: (ParseOptions | undefined)[] = [
    undefined,
    { requireMask: true },
    { forbidMask: true },
    { maxPayload: 100 },
  ]
  const validOpcodes = Object.values(OPCODE)

  // Pure noise mostly dies on byte 0, so also build near-valid frames and corrupt them.
  function sample(): Buffer {
    switch (int(3)) {
      case 0:
        return bytes(int(40))
      case 1: {
        const head = Buffer.from([
          (int(2) << 7) | (int(8) << 4) | validOpcodes[int(validOpcodes.length)]!,
        ])
        return Buffer.concat([head, bytes(int(30))])
      }
      default: {
        const frames = Array.from({ length: 1 + int(4) }, () => {
          const opcode = validOpcodes[int(validOpcodes.length)]!
          const n = opcode >= 8 ? int(126) : [int(126), 126 + int(300), 65536 + int(10)][int(3)]!
          return encodeFrame({
            opcode,
            fin: opcode >= 8 || rand() < 0.7,
            rsv: int(8),
            // Random bytes for big payloads would dominate the run time; content is not the point.
            payload: n > 300 ? Buffer.alloc(n, int(256)) : bytes(n),
            mask: rand() < 0.5 ? bytes(4) : undefined,
          })
        })
        const buf = Buffer.concat(frames)
        for (let k = int(3); k > 0; k--) buf[int(buf.length)] = int(256)
        return rand() < 0.3 ? buf.subarray(0, int(buf.length + 1)) : buf
      }
    }
  }

  const failures: string[] = []
  const outcomes = { frames: 0, partial: 0, rejected: 0 }
  const isWsError = (err: unknown) => err instanceof AppError && err.code === 'E_WS_FRAME'
  for (let i = 0; i < 3000; i++) {
    const buf = sample()
    const opts = optionSets[int(optionSets.length)]
    let walk: { frames: WsFrame[]; rest: number } | undefined
    try {
      walk = parseAll(buf, opts)
      outcomes.frames += walk.frames.length
      if (walk.rest > 0) outcomes.partial++
    } catch (err) {
      if (!isWsError(err)) failures.push(`#${i} parseFrame ${buf.toString('hex')}: ${String(err)}`)
      outcomes.rejected++
    }

    const p = new FrameParser(opts)
    const got: WsFrame[] = []
    let threw = false
    try {
      for (let at = 0; at < buf.length;) {
        const step = 1 + int(Math.max(1, buf.length >> 1))
        got.push(...p.push(buf.subarray(at, at + step)))
        at += step
      }
    } catch (err) {
      threw = true
      if (!isWsError(err)) failures.push(`#${i} FrameParser ${buf.toString('hex')}: ${String(err)}`)
    }
    // Every check is on bytes already present, so chunking must not change the verdict.
    if (threw !== (walk === undefined)) {
      failures.push(
        `#${i} FrameParser ${threw ? 'threw' : 'passed'} but parseFrame did not: ${buf.toString('hex')}`,
      )
    } else if (walk !== undefined) {
      const want = walk
      const same =
        got.length === want.frames.length &&
        got.every((f, k) => JSON.stringify(view(f)) === JSON.stringify(view(want.frames[k]!))) &&
        p.buffered === want.rest
      if (!same)
        failures.push(`#${i} FrameParser frames differ from parseFrame: ${buf.toString('hex')}`)
    }
  }
  t.same(
    failures.slice(0, 5),
    [],
    'every call returned or threw E_WS_FRAME, and both parsers agree',
  )
  t.ok(outcomes.frames > 500, `garbage reached frame decoding (${outcomes.frames} frames)`)
  t.ok(outcomes.partial > 100, `garbage reached the partial path (${outcomes.partial})`)
  t.ok(outcomes.rejected > 500, `garbage was rejected (${outcomes.rejected})`)
})
