import t from 'tap'
import {
  FLAG_COMMAND,
  FLAG_LONG,
  FLAG_MORE,
  GREETING_SIZE,
  ZmtpParser,
  encodeCommand,
  encodeError,
  encodeFrame,
  encodeGreeting,
  encodeLegacySubscription,
  encodeMessages,
  encodePing,
  encodePong,
  encodeReady,
  encodeSubscribeCommand,
  parseCommand,
  parseError,
  parseGreeting,
  parseLegacySubscription,
  parseMetadata,
  parsePing,
  type Greeting,
} from './zmtp.js'

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex')

/** A greeting built byte by byte, so a test can break one field. */
function greeting(edit: (g: Buffer) => void = () => {}): Buffer {
  const g = Buffer.alloc(64)
  g[0] = 0xff
  g[9] = 0x7f
  g[10] = 3
  g[11] = 1
  g.write('NULL', 12, 'latin1')
  edit(g)
  return g
}

interface Got {
  greeting?: Greeting
  frames: { body: string; flags: number }[]
}

function collect(maxFrameSize?: number): { parser: ZmtpParser; got: Got } {
  const got: Got = { frames: [] }
  const parser = new ZmtpParser(
    {
      greeting: (g) => (got.greeting = g),
      frame: (body, flags) => got.frames.push({ body: body.toString('latin1'), flags }),
    },
    maxFrameSize,
  )
  return { parser, got }
}

t.test('encodeGreeting writes the 64-byte ZMTP 3 greeting', async (t) => {
  const g = encodeGreeting()
  t.equal(g.length, GREETING_SIZE)
  t.same(
    g,
    hex(`ff 0000000000000000 7f 03 01 4e554c4c ${'00'.repeat(16)} 00 ${'00'.repeat(31)}`),
    'signature, 3.1, NULL, as-client, filler',
  )
  t.equal(encodeGreeting({ minor: 0 })[11], 0, 'minor 0 = ZMTP 3.0')
  t.equal(encodeGreeting({ asServer: true })[32], 1)
  t.equal(encodeGreeting({ mechanism: 'CURVE' }).toString('latin1', 12, 17), 'CURVE')
  for (const bad of ['', 'null', 'X'.repeat(21), 'NU LL']) {
    t.throws(() => encodeGreeting({ mechanism: bad }), { code: 'E_ZMTP' }, `mechanism "${bad}"`)
  }
})

t.test('good greetings', async (t) => {
  const good: [string, Buffer, Greeting][] = [
    ['OURS', encodeGreeting(), { major: 3, minor: 1, mechanism: 'NULL', asServer: false }],
    [
      'ZMTP 3.0',
      greeting((g) => (g[11] = 0)),
      { major: 3, minor: 0, mechanism: 'NULL', asServer: false },
    ],
    [
      'HIGHER VERSION',
      greeting((g) => (g[10] = 4)),
      { major: 4, minor: 1, mechanism: 'NULL', asServer: false },
    ],
    [
      'PADDING IS NOT SIGNIFICANT',
      greeting((g) => g.fill(0xaa, 1, 9)),
      { major: 3, minor: 1, mechanism: 'NULL', asServer: false },
    ],
    [
      'FILLER IS NOT SIGNIFICANT',
      greeting((g) => g.fill(0x55, 33)),
      { major: 3, minor: 1, mechanism: 'NULL', asServer: false },
    ],
    [
      'CURVE AS SERVER',
      greeting((g) => {
        g.fill(0, 12, 32)
        g.write('CURVE', 12)
        g[32] = 1
      }),
      { major: 3, minor: 1, mechanism: 'CURVE', asServer: true },
    ],
    [
      '20-CHAR MECHANISM',
      greeting((g) => g.write('A-B_C.D+E0123456789Z', 12)),
      { major: 3, minor: 1, mechanism: 'A-B_C.D+E0123456789Z', asServer: false },
    ],
  ]
  for (const [name, bytes, want] of good) {
    t.same(parseGreeting(bytes), want, name)
    const { parser, got } = collect()
    parser.push(bytes)
    t.same(got.greeting, want, `${name}: through the parser`)
  }
})

t.test('bad greetings', async (t) => {
  const bad: [string, Buffer][] = [
    ['HTTP REQUEST', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'.padEnd(64, ' '))],
    ['ZMTP 1.0 (length-prefixed identity)', greeting((g) => (g[0] = 0x01))],
    ['NO 0x7F AT OFFSET 9', greeting((g) => (g[9] = 0x7e))],
    ['ZMTP 2.0 (major 1)', greeting((g) => (g[10] = 1))],
    ['ZMTP 2.x (major 2)', greeting((g) => (g[10] = 2))],
    ['NO MECHANISM', greeting((g) => g.fill(0, 12, 32))],
    ['LOWERCASE MECHANISM', greeting((g) => g.write('null', 12))],
    ['ZERO INSIDE MECHANISM', greeting((g) => g.write('NU\0L', 12))],
    ['SPACE PADDED MECHANISM', greeting((g) => g.fill(0x20, 16, 32))],
    ['AS-SERVER 2', greeting((g) => (g[32] = 2))],
  ]
  for (const [name, bytes] of bad) {
    t.throws(() => parseGreeting(bytes), { code: 'E_ZMTP' }, name)
    const { parser, got } = collect()
    t.throws(() => parser.push(bytes), { code: 'E_ZMTP' }, `${name}: through the parser`)
    t.equal(got.greeting, undefined, `${name}: no greeting event`)
  }
  t.throws(() => parseGreeting(encodeGreeting().subarray(0, 63)), { code: 'E_ZMTP' }, 'SHORT')
  t.throws(
    () => parseGreeting(Buffer.concat([encodeGreeting(), hex('00')])),
    { code: 'E_ZMTP' },
    'LONG',
  )

  // Garbage is refused on its first byte, not after 64 bytes that may never come.
  const { parser } = collect()
  t.throws(() => parser.push(Buffer.from('G')), { code: 'E_ZMTP' }, 'one wrong byte is enough')
  const ok = collect()
  ok.parser.push(encodeGreeting().subarray(0, 9))
  t.equal(ok.got.greeting, undefined, 'a partial good greeting waits')
})

t.test('frames: encodings on the wire', async (t) => {
  const rows: [string, Buffer, string][] = [
    ['EMPTY', encodeFrame(Buffer.alloc(0)), '00 00'],
    ['SHORT', encodeFrame(Buffer.from('hi')), '00 02 6869'],
    ['MORE', encodeFrame(Buffer.from('hi'), true), '01 02 6869'],
    ['255 IS SHORT', encodeFrame(Buffer.alloc(255, 0x61)).subarray(0, 2), '00 ff'],
    ['256 IS LONG', encodeFrame(Buffer.alloc(256, 0x61)).subarray(0, 9), '02 0000000000000100'],
    ['LONG MORE', encodeFrame(Buffer.alloc(70000), true).subarray(0, 9), '03 0000000000011170'],
    ['COMMAND', encodeCommand('PONG'), '04 05 04504f4e47'],
    ['SUBSCRIBE ""', encodeSubscribeCommand(Buffer.alloc(0)), '04 0a 09535542534352494245'],
    [
      'SUBSCRIBE "ab"',
      encodeSubscribeCommand(Buffer.from('ab')),
      '04 0c 09535542534352494245 6162',
    ],
    ['CANCEL "ab"', encodeSubscribeCommand(Buffer.from('ab'), true), '04 09 0643414e43454c 6162'],
    ['LEGACY SUBSCRIBE ""', encodeLegacySubscription(Buffer.alloc(0)), '00 01 01'],
    ['LEGACY SUBSCRIBE "ab"', encodeLegacySubscription(Buffer.from('ab')), '00 03 01 6162'],
    ['LEGACY CANCEL "ab"', encodeLegacySubscription(Buffer.from('ab'), true), '00 03 00 6162'],
    ['PING', encodePing(100, Buffer.from('ctx')), '04 0a 0450494e47 0064 637478'],
    ['PONG', encodePong(Buffer.from('ctx')), '04 08 04504f4e47 637478'],
    ['ERROR', encodeError('no'), '04 09 054552524f52 02 6e6f'],
    [
      'READY PUSH',
      encodeReady({ 'Socket-Type': 'PUSH', Identity: 'id' }),
      '04 29 055245414459 0b536f636b65742d54797065 00000004 50555348 084964656e74697479 00000002 6964',
    ],
  ]
  for (const [name, bytes, want] of rows) t.same(bytes, hex(want), name)

  const bodies = [Buffer.alloc(0), Buffer.from('a'), Buffer.alloc(300, 0x62), Buffer.from('end')]
  t.same(
    encodeMessages(bodies),
    Buffer.concat(bodies.map((b) => encodeFrame(b))),
    'encodeMessages is the frames back to back',
  )
  t.same(encodeMessages([]), Buffer.alloc(0))
})

t.test('the parser reads frames whatever the chunking', async (t) => {
  const long = Buffer.alloc(70_000, 0x78)
  const stream = Buffer.concat([
    encodeGreeting(),
    encodeReady({ 'Socket-Type': 'PUB' }),
    encodeFrame(Buffer.from('one')),
    encodeFrame(Buffer.alloc(0)),
    encodeFrame(Buffer.from('part1'), true),
    encodeFrame(long),
    hex('02 0000000000000003 616263'), // a long size below 256 is legal
    encodePing(0),
    encodeFrame(Buffer.from('last')),
  ])
  const want = [
    {
      body: encodeReady({ 'Socket-Type': 'PUB' }).subarray(2).toString('latin1'),
      flags: FLAG_COMMAND,
    },
    { body: 'one', flags: 0 },
    { body: '', flags: 0 },
    { body: 'part1', flags: FLAG_MORE },
    { body: long.toString('latin1'), flags: FLAG_LONG },
    { body: 'abc', flags: FLAG_LONG },
    { body: encodePing(0).subarray(2).toString('latin1'), flags: FLAG_COMMAND },
    { body: 'last', flags: 0 },
  ]
  for (const size of [1, 2, 3, 7, 63, 64, 65, 100, 1000, 65536, stream.length]) {
    const { parser, got } = collect()
    for (let i = 0; i < stream.length; i += size) parser.push(stream.subarray(i, i + size))
    t.same(got.frames, want, `chunks of ${size}`)
    t.equal(got.greeting?.mechanism, 'NULL', `chunks of ${size}: greeting`)
  }
})

t.test('a frame within one chunk is a view, not a copy', async (t) => {
  const views: Buffer[] = []
  const p = new ZmtpParser({ greeting: () => {}, frame: (b) => views.push(b) })
  const chunk = Buffer.concat([encodeGreeting(), encodeFrame(Buffer.from('zero-copy'))])
  p.push(chunk)
  t.equal(views[0]!.buffer, chunk.buffer)
})

t.test('bad frames', async (t) => {
  const bad: [string, string, number?][] = [
    ['RESERVED BIT 3', '08 00'],
    ['RESERVED BIT 7', '80 00'],
    ['COMMAND WITH MORE', '05 00'],
    ['LONG COMMAND WITH MORE', '07 0000000000000000'],
    ['LONG SIZE ABOVE 64 MIB', '02 0000000004000001'],
    ['LONG SIZE ABOVE 4 GIB', '02 0000000100000000'],
    ['LONG SIZE 2^63', '02 8000000000000000'],
    ['SHORT SIZE ABOVE A SMALL MAX', '00 11', 16],
    ['LONG SIZE ABOVE A SMALL MAX', '02 0000000000000011', 16],
  ]
  for (const [name, frame, max] of bad) {
    const { parser, got } = collect(max)
    parser.push(encodeGreeting())
    t.throws(() => parser.push(hex(frame)), { code: 'E_ZMTP' }, name)
    t.same(got.frames, [], `${name}: no frame`)
    t.ok(parser.stopped, `${name}: the parser stops`)
    parser.push(encodeFrame(Buffer.from('after')))
    t.same(got.frames, [], `${name}: nothing is read after an error`)
  }
  const { parser, got } = collect(16)
  parser.push(Buffer.concat([encodeGreeting(), encodeFrame(Buffer.alloc(16))]))
  t.equal(got.frames.length, 1, 'a frame of exactly the max is fine')
})

t.test('stop() from an event ignores the rest of the chunk', async (t) => {
  const seen: string[] = []
  const p: ZmtpParser = new ZmtpParser({
    greeting: () => {},
    frame: (b) => {
      seen.push(b.toString())
      p.stop()
    },
  })
  p.push(
    Buffer.concat([encodeGreeting(), encodeFrame(Buffer.from('a')), encodeFrame(Buffer.from('b'))]),
  )
  t.same(seen, ['a'])
})

t.test('commands', async (t) => {
  const c = parseCommand(encodeCommand('SUBSCRIBE', Buffer.from('topic')).subarray(2))
  t.same(c, { name: 'SUBSCRIBE', data: Buffer.from('topic') })
  t.same(parseCommand(hex('04 50494e47')), { name: 'PING', data: Buffer.alloc(0) })
  const long = encodeCommand('READY', Buffer.alloc(400))
  t.same(long.subarray(0, 9), hex('06 0000000000000196'), 'a command above 255 bytes is long')

  const bad: [string, string][] = [
    ['EMPTY BODY', ''],
    ['ZERO-LENGTH NAME', '00 41'],
    ['NAME LONGER THAN BODY', '05 5245'],
    ['DIGIT IN NAME', '03 413141'],
    ['NUL IN NAME', '03 410041'],
  ]
  for (const [name, body] of bad) t.throws(() => parseCommand(hex(body)), { code: 'E_ZMTP' }, name)
  for (const name of ['', 'PING1', 'A'.repeat(256), 'P-NG']) {
    t.throws(() => encodeCommand(name), { code: 'E_ZMTP' }, `encode "${name}"`)
  }
})

t.test('READY metadata', async (t) => {
  const ready = parseCommand(
    encodeReady({ 'Socket-Type': 'PULL', Identity: Buffer.of(1, 0, 2), 'X-Empty': '' }).subarray(2),
  )
  t.equal(ready.name, 'READY')
  const m = parseMetadata(ready.data)
  t.equal(m.get('socket-type')?.toString(), 'PULL', 'names are looked up lowercased')
  t.same(m.get('identity'), Buffer.of(1, 0, 2), 'binary values')
  t.same(m.get('x-empty'), Buffer.alloc(0), 'empty values')
  t.equal(parseMetadata(Buffer.alloc(0)).size, 0, 'no properties')
  t.equal(
    parseMetadata(hex('0b 534f434b45542d54595045 00000003 505542')).get('socket-type')?.toString(),
    'PUB',
    'SOCKET-TYPE',
  )

  const bad: [string, string][] = [
    ['EMPTY NAME', '00 00000000'],
    ['NAME TRUNCATED', '0b 536f636b'],
    ['VALUE SIZE TRUNCATED', '01 41 0000'],
    ['VALUE LONGER THAN DATA', '01 41 00000005 6162'],
    ['VALUE SIZE ABOVE INT32', '01 41 80000000'],
    ['SPACE IN NAME', '02 4120 00000000'],
    ['DUPLICATE NAME', '01 41 00000000 01 61 00000000'],
  ]
  for (const [name, data] of bad) t.throws(() => parseMetadata(hex(data)), { code: 'E_ZMTP' }, name)
  t.throws(() => encodeReady({ 'bad name': 'x' }), { code: 'E_ZMTP' }, 'encode a bad name')
  t.throws(() => encodeReady({ '': 'x' }), { code: 'E_ZMTP' }, 'encode an empty name')
})

t.test('ERROR, subscriptions, PING and PONG', async (t) => {
  t.equal(
    parseError(parseCommand(encodeError('wrong socket type').subarray(2)).data),
    'wrong socket type',
  )
  t.equal(parseError(hex('00')), '', 'empty reason')
  t.equal(
    parseCommand(encodeError('x'.repeat(300)).subarray(9)).data.length,
    256,
    'reason cut to 255',
  )
  for (const [name, data] of [
    ['EMPTY', ''],
    ['SHORT', '05 6162'],
    ['LONG', '01 6162'],
  ] as const) {
    t.throws(() => parseError(hex(data)), { code: 'E_ZMTP' }, `ERROR ${name}`)
  }

  t.same(parseLegacySubscription(hex('01 6162')), { cancel: false, topic: Buffer.from('ab') })
  t.same(parseLegacySubscription(hex('00')), { cancel: true, topic: Buffer.alloc(0) })
  t.equal(parseLegacySubscription(hex('02 6162')), undefined, 'not a subscription')
  t.equal(parseLegacySubscription(Buffer.alloc(0)), undefined, 'empty is not a subscription')

  t.same(parsePing(hex('0064 637478')), { ttl: 100, context: Buffer.from('ctx') })
  t.same(parsePing(hex('0000')), { ttl: 0, context: Buffer.alloc(0) })
  t.throws(() => parsePing(hex('00')), { code: 'E_ZMTP' }, 'PING without ttl')
  t.throws(() => parsePing(Buffer.alloc(19)), { code: 'E_ZMTP' }, 'PING context above 16')
  t.throws(() => encodePing(0, Buffer.alloc(17)), { code: 'E_ZMTP' })
  t.throws(() => encodePong(Buffer.alloc(17)), { code: 'E_ZMTP' })
})
