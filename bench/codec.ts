/**
 * @module bench/codec: encode and parse throughput of the wire formats in lib/protocol, on the
 * messages a frontend and a handler exchange for a typical browser GET. Prints a Markdown table.
 *
 *   npm run bench:codec            (about 10 s; each row is the best of 5 timed runs)
 *
 * Loops are bounded by count; the first run of each row warms the JIT and is not counted.
 */
import {
  encodeReply,
  encodeRequest,
  parseReply,
  parseRequest,
  type HandlerRequest,
} from '../lib/protocol/mongrel2.js'
import { encodeTnetstring, parseTnetstring } from '../lib/protocol/tnetstring.js'
import { encodeFrame, parseFrame, OPCODE } from '../lib/protocol/websocket.js'

const SENDER = 'c0ffee00-0000-4000-8000-00000000b001'
const UUID = 'a5a5a5a5-0000-4000-8000-0000000c0de1'

// What Chrome sends for a page, as the frontend turns it into Mongrel2 headers.
const headers = {
  PATH: '/hello/world.html',
  'x-forwarded-for': '127.0.0.1',
  host: 'localhost:8080',
  connection: 'keep-alive',
  'user-agent':
    'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36',
  accept: 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8',
  'accept-encoding': 'gzip, deflate, br',
  'accept-language': 'en-US,en;q=0.9',
  cookie: 'session=3f2a9c1e8b7d4f60a1b2c3d4e5f60718; theme=dark',
  METHOD: 'GET',
  VERSION: 'HTTP/1.1',
  URI: '/hello/world.html?a=1&b=two',
  QUERY: 'a=1&b=two',
  PATTERN: '/',
  URL_SCHEME: 'http',
  REMOTE_ADDR: '127.0.0.1',
}
const jsonReq: HandlerRequest = {
  sender: SENDER,
  connId: 1234,
  path: '/hello/world.html',
  headers,
  body: Buffer.alloc(0),
  format: 'json',
}
const tnetReq: HandlerRequest = { ...jsonReq, format: 'tnetstring' }
const postReq: HandlerRequest = { ...jsonReq, body: Buffer.alloc(16 * 1024, 0x61) }
const helloBody =
  'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world!'
const reply = { uuid: UUID, connIds: [1234], body: Buffer.from(helloBody) }
const reply128 = {
  uuid: UUID,
  connIds: Array.from({ length: 128 }, (_, i) => 1000 + i),
  body: Buffer.from('\x81\x05Hello', 'latin1'),
}
const frame = { opcode: OPCODE.TEXT, payload: Buffer.from('Hello, chat room!') }

const jsonBytes = encodeRequest(jsonReq)
const tnetBytes = encodeRequest(tnetReq)
const postBytes = encodeRequest(postReq)
const replyBytes = encodeReply(reply)
const reply128Bytes = encodeReply(reply128)
const tnetHeaders = encodeTnetstring(headers)
const frameBytes = encodeFrame(frame)

interface Row {
  name: string
  bytes: number
  run: () => unknown
}

const rows: Row[] = [
  {
    name: 'encodeRequest, JSON headers (GET)',
    bytes: jsonBytes.length,
    run: () => encodeRequest(jsonReq),
  },
  {
    name: 'parseRequest, JSON headers (GET)',
    bytes: jsonBytes.length,
    run: () => parseRequest(jsonBytes),
  },
  {
    name: 'encodeRequest, tnetstring headers (GET)',
    bytes: tnetBytes.length,
    run: () => encodeRequest(tnetReq),
  },
  {
    name: 'parseRequest, tnetstring headers (GET)',
    bytes: tnetBytes.length,
    run: () => parseRequest(tnetBytes),
  },
  {
    name: 'encodeRequest, JSON, 16 KiB body (POST)',
    bytes: postBytes.length,
    run: () => encodeRequest(postReq),
  },
  {
    name: 'parseRequest, JSON, 16 KiB body (POST)',
    bytes: postBytes.length,
    run: () => parseRequest(postBytes),
  },
  {
    name: 'encodeReply, 1 id (hello response)',
    bytes: replyBytes.length,
    run: () => encodeReply(reply),
  },
  {
    name: 'parseReply, 1 id (hello response)',
    bytes: replyBytes.length,
    run: () => parseReply(replyBytes),
  },
  {
    name: 'encodeReply, 128 ids (chat broadcast)',
    bytes: reply128Bytes.length,
    run: () => encodeReply(reply128),
  },
  {
    name: 'parseReply, 128 ids (chat broadcast)',
    bytes: reply128Bytes.length,
    run: () => parseReply(reply128Bytes),
  },
  {
    name: 'encodeTnetstring, header dict',
    bytes: tnetHeaders.length,
    run: () => encodeTnetstring(headers),
  },
  {
    name: 'parseTnetstring, header dict',
    bytes: tnetHeaders.length,
    run: () => parseTnetstring(tnetHeaders),
  },
  { name: 'encodeFrame, 17-byte text', bytes: frameBytes.length, run: () => encodeFrame(frame) },
  { name: 'parseFrame, 17-byte text', bytes: frameBytes.length, run: () => parseFrame(frameBytes) },
]

const ITERATIONS = 100_000
const RUNS = 5

function time(run: () => unknown): number {
  let sink: unknown
  const start = process.hrtime.bigint()
  for (let i = 0; i < ITERATIONS; i++) sink = run()
  const ns = Number(process.hrtime.bigint() - start)
  if (sink === undefined) throw new Error('benchmark returned nothing')
  return ns / ITERATIONS
}

const fmt = (n: number, digits = 0): string =>
  n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits })

console.log(
  `Node ${process.version}, ${ITERATIONS.toLocaleString('en-US')} iterations, best of ${RUNS} runs\n`,
)
console.log('| operation | message bytes | ops/s | ns/op | MB/s |')
console.log('| --- | ---: | ---: | ---: | ---: |')
for (const row of rows) {
  time(row.run) // warm-up
  let best = Infinity
  for (let r = 0; r < RUNS; r++) best = Math.min(best, time(row.run))
  const ops = 1e9 / best
  console.log(
    `| ${row.name} | ${fmt(row.bytes)} | ${fmt(ops)} | ${fmt(best)} | ${fmt((ops * row.bytes) / 1e6, 1)} |`,
  )
}
