import { createHash } from 'node:crypto'
import t from 'tap'
import { loadVectors } from '../../test/helpers/vectors.js'
import {
  encodeCredits,
  encodeDisconnect,
  encodeExtendedReply,
  encodeReply,
  encodeRequest,
  isDisconnect,
  noticeType,
  parseExtended,
  parseReply,
  parseRequest,
  ReplyReader,
  type HandlerRequest,
} from './mongrel2.js'

const UUID = 'a5a5a5a5-0000-4000-8000-0000000c0de1'
const vectors = loadVectors()

t.test(
  'every captured request decodes to what Mongrel2 sent, and re-encodes to the same bytes',
  async (t) => {
    let count = 0
    for (const c of vectors) {
      for (const e of c.events) {
        if (e.kind !== 'handler-recv' || !e.decoded) continue
        count++
        const name = `${c.name}/${e.file}`
        const req = parseRequest(e.bytes)
        const d = e.decoded
        t.equal(req.sender, d.sender, `${name}: sender`)
        t.equal(req.connId, Number(d.conn_id), `${name}: conn id`)
        t.equal(req.path, d.path, `${name}: path`)
        t.equal(req.format, d.header_format, `${name}: format`)
        t.same(Object.entries(req.headers), d.headers, `${name}: headers, in order`)
        t.equal(req.body.length, d.body_len, `${name}: body length`)
        t.equal(createHash('sha256').update(req.body).digest('hex'), d.body_sha256, `${name}: body`)
        t.same(encodeRequest(req), e.bytes, `${name}: re-encoded byte for byte`)
        t.same(parseRequest(encodeRequest(req)), req, `${name}: round trip`)
        t.equal(isDisconnect(req), req.path === '@*', `${name}: disconnect notice recognised`)
      }
    }
    t.ok(count >= 25, `${count} captured requests checked`)
  },
)

t.test('every captured reply decodes and re-encodes to the same bytes', async (t) => {
  let count = 0
  for (const c of vectors) {
    for (const e of c.events) {
      if (e.kind !== 'handler-send') continue
      count++
      const name = `${c.name}/${e.file}`
      const reply = parseReply(e.bytes)
      t.equal(reply.uuid, UUID, `${name}: uuid`)
      t.ok(reply.connIds.length >= 1, `${name}: ids`)
      t.same(encodeReply(reply), e.bytes, `${name}: re-encoded byte for byte`)
    }
  }
  t.ok(count >= 15, `${count} captured replies checked`)
  const multi = vectors
    .find((c) => c.name === 'multi_target')!
    .events.find((e) => e.kind === 'handler-send')!
  t.same(parseReply(multi.bytes).connIds, [25, 26], 'one reply to two ids')
  const close = vectors
    .find((c) => c.name === 'websocket')!
    .events.find((e) => e.file === '27-handler-send.bin')!
  t.equal(parseReply(close.bytes).body.length, 0, 'an empty body (close)')
})

t.test('the disconnect notice is exactly what Mongrel2 sends, in both formats', async (t) => {
  const json = vectors
    .find((c) => c.name === 'client_disconnect')!
    .events.find((e) => e.file === '03-handler-recv.bin')!
  t.same(encodeDisconnect('c0ffee00-0000-4000-8000-00000000a001', 23), json.bytes, 'json')
  const tnet = vectors
    .find((c) => c.name === 'tnetstring_protocol')!
    .events.find((e) => e.file === '05-handler-recv.bin')!
  t.same(
    encodeDisconnect('c0ffee00-0000-4000-8000-00000000a002', 20, 'tnetstring'),
    tnet.bytes,
    'tnetstring',
  )
  const credits = parseRequest(encodeCredits('s', 4, 76))
  t.equal(credits.headers.DOWNLOAD_CREDITS, '76')
  t.equal(noticeType(credits), 'credits')
  t.equal(
    encodeCredits('s', 4, 76).toString(),
    's 4 @* 41:{"METHOD":"JSON","DOWNLOAD_CREDITS":"76"},18:{"type":"credits"},',
  )
})

t.test('lenient where real Mongrel2 output needs it', async (t) => {
  // Mongrel2 escapes only '"' and '\', so a TAB or 0x01 in a header value arrives raw.
  const json = '{"PATH":"/","x-odd":"a\tb\x01c","q":"\\""}'
  const raw = Buffer.from(`s 1 / ${json.length}:${json},0:,`, 'latin1')
  const req = parseRequest(raw)
  t.equal(req.headers['x-odd'], 'a\tb\x01c', 'raw control bytes in a value')
  t.equal(req.headers.q, '"', 'escaped quote')
  // Our own encoder writes strict JSON instead.
  const enc = encodeRequest(req).toString('latin1')
  t.match(enc, /a\\tb\\u0001c/, 'encoder escapes control characters')
  t.equal(
    noticeType({ ...req, headers: { METHOD: 'JSON' }, body: Buffer.from('not json') }),
    undefined,
  )
})

function req(extra: Partial<HandlerRequest> = {}): HandlerRequest {
  return {
    sender: 'c0ffee00',
    connId: 7,
    path: '/x',
    headers: { PATH: '/x', accept: ['a', 'b'], METHOD: 'GET' },
    body: Buffer.from('hi'),
    format: 'json',
    ...extra,
  }
}

t.test('encode and parse requests in both formats', async (t) => {
  for (const format of ['json', 'tnetstring'] as const) {
    const r = req({ format, headers: { PATH: '/x', 'x-ü': 'wert ü', accept: ['a', 'b'] } })
    t.same(parseRequest(encodeRequest(r)), r, `${format} round trip with UTF-8 and lists`)
  }
  const big = req({ body: Buffer.alloc(1 << 20, 7) })
  t.equal(parseRequest(encodeRequest(big)).body.length, 1 << 20, '1 MiB body')
  t.equal(
    encodeRequest(req({ headers: { PATH: '/x' }, body: Buffer.alloc(0) })).toString(),
    'c0ffee00 7 /x 13:{"PATH":"/x"},0:,',
  )
  t.throws(() => encodeRequest(req({ sender: 'a b' })), { code: 'E_M2_REQUEST' }, 'space in sender')
  t.throws(() => encodeRequest(req({ path: '' })), { code: 'E_M2_REQUEST' }, 'empty path')
  t.throws(() => encodeRequest(req({ connId: -1 })), { code: 'E_M2_REQUEST' }, 'negative id')
  t.throws(
    () => encodeRequest(req({ connId: 2 ** 32 })),
    { code: 'E_M2_REQUEST' },
    'id over uint32',
  )
})

t.test('bad requests: a clear error, never a crash, a hang or a huge allocation', async (t) => {
  const bad: [string, string][] = [
    ['EMPTY', ''],
    ['ONLY SENDER', 'uuid'],
    ['NO PATH', 'uuid 1'],
    ['NO HEADERS', 'uuid 1 /x '],
    ['EMPTY SENDER', ' 1 /x 2:{},0:,'],
    ['BAD CONN ID', 'uuid x1 /x 2:{},0:,'],
    ['CONN ID OVER UINT32', 'uuid 4294967296 /x 2:{},0:,'],
    ['DOUBLE SPACE', 'uuid  1 /x 2:{},0:,'],
    ['HEADERS WRONG LENGTH', 'uuid 1 /x 3:{},0:,'],
    ['HEADERS HUGE DECLARED SIZE', 'uuid 1 /x 9999999999:{},0:,'],
    ['HEADERS NO SEPARATOR', 'uuid 1 /x 2{},0:,'],
    ['HEADERS WRONG TAG', 'uuid 1 /x 2:{}#0:,'],
    ['HEADERS NOT JSON', 'uuid 1 /x 3:{x},0:,'],
    ['HEADERS A LIST', 'uuid 1 /x 2:[],0:,'],
    ['HEADER VALUE A NUMBER', 'uuid 1 /x 7:{"a":1},0:,'],
    ['HEADER LIST OF NUMBERS', 'uuid 1 /x 9:{"a":[1]},0:,'],
    ['TNET HEADER VALUE INT', 'uuid 1 /x 8:1:a,1:1#}0:,'],
    ['TNET HEADERS TRUNCATED', 'uuid 1 /x 8:1:a,1:b}0:,'],
    ['NO BODY', 'uuid 1 /x 2:{},'],
    ['BODY WRONG LENGTH', 'uuid 1 /x 2:{},5:hi,'],
    ['BODY HUGE DECLARED SIZE', 'uuid 1 /x 2:{},4294967295:hi,'],
    ['BODY NO COMMA', 'uuid 1 /x 2:{},2:hi'],
    ['TRAILING BYTES', 'uuid 1 /x 2:{},2:hi,extra'],
    ['NON-UTF-8 HEADERS', 'uuid 1 /x 10:{"a":"\xff"},0:,'],
    ['NON-UTF-8 PATH', 'uuid 1 /\xff 2:{},0:,'],
  ]
  for (const [name, input] of bad) {
    t.throws(() => parseRequest(Buffer.from(input, 'latin1')), { code: 'E_M2_REQUEST' }, name)
  }
})

t.test('replies: good ones', async (t) => {
  const good: [string, string, number[], boolean, string][] = [
    ['ONE ID', `${UUID} 1:7, hello`, [7], false, 'hello'],
    ['EMPTY BODY CLOSES', `${UUID} 1:7, `, [7], false, ''],
    ['THREE IDS', `${UUID} 5:1 2 3, x`, [1, 2, 3], false, 'x'],
    ['TRAILING SPACE IN IDS', `${UUID} 4:1 2 , x`, [1, 2], false, 'x'],
    ['EXTENDED', `${UUID} 4:X 12, 1:a]`, [12], true, '1:a]'],
    ['ANY UUID', `any-other-uuid-123 1:1, b`, [1], false, 'b'],
    ['BODY WITH SPACES AND CRLF', `u 1:1,  a b\r\n`, [1], false, ' a b\r\n'],
    ['MAX ID', `u 10:4294967295, b`, [4294967295], false, 'b'],
  ]
  for (const [name, input, ids, extended, body] of good) {
    const r = parseReply(Buffer.from(input))
    t.same([r.connIds, r.extended, r.body.toString()], [ids, extended, body], name)
  }
  const ids128 = Array.from({ length: 128 }, (_, i) => i + 1)
  t.same(
    parseReply(encodeReply({ uuid: UUID, connIds: ids128, body: 'x' })).connIds,
    ids128,
    '128 TARGETS',
  )
})

t.test('replies: bad ones', async (t) => {
  const ids129 = Array.from({ length: 129 }, (_, i) => i + 1).join(' ')
  const bad: [string, string][] = [
    ['EMPTY', ''],
    ['NO SPACE AFTER UUID', UUID],
    ['BAD UUID', `bad_uuid 1:1, x`],
    ['EMPTY UUID', ` 1:1, x`],
    ['NO TARGETS', `${UUID} `],
    ['NO LENGTH', `${UUID} :1, x`],
    ['LENGTH NOT A NUMBER', `${UUID} a:1, x`],
    ['TOO LONG NETSTRING', `${UUID} 3:1, x`],
    ['TOO SHORT NETSTRING', `${UUID} 1:12, x`],
    ['HUGE DECLARED SIZE', `${UUID} 99999:1, x`],
    ['LENGTH TOO MANY DIGITS', `${UUID} 999999999999:1, x`],
    ['NO COMMA', `${UUID} 1:1 x`],
    ['NO TRAILING SPACE', `${UUID} 1:1,x`],
    ['NOTHING AFTER COMMA', `${UUID} 1:1,`],
    ['ZERO IDS', `${UUID} 0:, x`],
    ['ID NOT A NUMBER', `${UUID} 1:a, x`],
    ['NEGATIVE ID', `${UUID} 2:-1, x`],
    ['ID OVER UINT32', `${UUID} 10:4294967296, x`],
    ['DOUBLE SPACE', `${UUID} 4:1  2, x`],
    ['LEADING SPACE', `${UUID} 2: 1, x`],
    ['129 TARGETS', `${UUID} ${ids129.length}:${ids129}, x`],
    ['EXTENDED WITHOUT IDS', `${UUID} 2:X , x`],
  ]
  for (const [name, input] of bad) {
    t.throws(() => parseReply(Buffer.from(input)), { code: 'E_M2_REPLY' }, name)
  }
  t.throws(
    () => encodeReply({ uuid: UUID, connIds: [], body: 'x' }),
    { code: 'E_M2_REPLY' },
    'encode: no ids',
  )
  t.throws(
    () => encodeReply({ uuid: UUID, connIds: Array.from({ length: 129 }, (_, i) => i), body: 'x' }),
    { code: 'E_M2_REPLY' },
    'encode: 129 ids',
  )
  t.throws(
    () => encodeReply({ uuid: 'a b', connIds: [1], body: 'x' }),
    { code: 'E_M2_REPLY' },
    'encode: bad uuid',
  )
  t.throws(
    () => encodeReply({ uuid: UUID, connIds: [1.5], body: 'x' }),
    { code: 'E_M2_REPLY' },
    'encode: bad id',
  )
})

t.test('extended replies', async (t) => {
  const credits = encodeExtendedReply(UUID, [9], 'ctl', { credits: 16384 })
  t.equal(
    credits.toString(),
    `${UUID} 3:X 9, 28:3:ctl,18:7:credits,5:16384#}]`,
    'the credits grant from the manual',
  )
  const r = parseReply(credits)
  t.ok(r.extended)
  t.same(parseExtended(r.body), { key: 'ctl', value: { credits: 16384 } })
  t.same(parseExtended(Buffer.from('31:3:ctl,21:10:keep-alive,4:true!}]')), {
    key: 'ctl',
    value: { 'keep-alive': true },
  })
  const bad: [string, string][] = [
    ['NOT A TNETSTRING', 'hello'],
    ['NOT A LIST', '3:ctl,'],
    ['ONE ELEMENT', '6:3:ctl,]'],
    ['THREE ELEMENTS', '15:3:ctl,0:~1:x,]'],
    ['KEY NOT A STRING', '7:1:1#0:~]'],
    ['TRAILING BYTES', '9:3:ctl,0:~]x'],
  ]
  for (const [name, input] of bad)
    t.throws(() => parseExtended(Buffer.from(input)), { code: 'E_M2_REPLY' }, name)
})

t.test('random garbage never crashes or hangs the parsers', async (t) => {
  let seed = 99
  const rand = (n: number): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31
    return seed % n
  }
  const alphabet = Buffer.from('0123456789 :,{}"X-ab@*#]\xff', 'latin1')
  const base = [Buffer.from('u 1 /x 2:{},0:,'), Buffer.from(`${UUID} 3:1 2, body`)]
  let rejected = 0
  for (let i = 0; i < 4000; i++) {
    const buf = Buffer.from(base[i % 2]!)
    for (let k = rand(4); k >= 0; k--) buf[rand(buf.length)] = alphabet[rand(alphabet.length)]!
    for (const parse of [parseRequest, parseReply]) {
      try {
        parse(buf)
      } catch (err) {
        const code = (err as { code?: string }).code
        if (code !== 'E_M2_REQUEST' && code !== 'E_M2_REPLY') throw err
        rejected++
      }
    }
  }
  t.ok(rejected > 0, `${rejected} mutated messages rejected with a code, none crashed`)
})

t.test('one ReplyReader reused reads each reply as parseReply does', async (t) => {
  const reader = new ReplyReader()
  const inputs = [
    `${UUID} 5:1 2 3, x`,
    `${UUID} 4:X 12, 1:a]`,
    'bad_uuid 1:1, x',
    `u 1:7, `,
    `${UUID} 0:, x`,
    `any-other-uuid-123 3:8 9, body`,
  ]
  for (const input of inputs) {
    const msg = Buffer.from(input)
    let want
    try {
      want = parseReply(msg)
    } catch (err) {
      t.throws(() => reader.read(msg), { code: 'E_M2_REPLY' }, `${input}: the same error`)
      t.equal((err as { code?: string }).code, 'E_M2_REPLY')
      continue
    }
    reader.read(msg)
    t.same(
      [
        msg.toString('latin1', 0, reader.uuidEnd),
        [...reader.ids],
        reader.extended,
        msg.subarray(reader.bodyAt).toString(),
      ],
      [want.uuid, want.connIds, want.extended, want.body.toString()],
      input,
    )
  }
})
