/**
 * @module bench/floor-frontend: a reference for bench/frontend.ts, not a product. The least a
 * frontend can do per request on the platform ours is built on (uWebSockets.js 20.30, Node 20):
 *
 *   handler mode: Mongrel2's protocol with our ZMTP socket. REMOTE_ADDR, the request headers as
 *   JSON by plain concatenation, one message to the handler, the reply's id and body found by
 *   indexOf, one cork.
 *   proxy mode: HTTP/1.1 to a keep-alive upstream pool (node:net, reading into one buffer). The
 *   request line and Host written as one string, the reply's body found by indexOf, one cork.
 *
 * No routing, limits, escaping, header passing, reply parsing or error handling: it serves
 * exactly the bench's GET /bench from the bench's hello servers, whose replies are whole in one
 * read and have no header to pass on.
 *
 *   node --import tsx/dist/loader.mjs bench/floor-frontend.ts handler PORT SEND_SPEC RECV_SPEC
 *   node --import tsx/dist/loader.mjs bench/floor-frontend.ts proxy PORT UPSTREAM_PORT
 *
 * Prints "listening" once it serves. Its CPU per request beside ours, in the same run, is what
 * our frontend's generality costs; beside Mongrel2's or nginx's, how far the platform alone is
 * from a target.
 */
import { connect, type Socket } from 'node:net'
import uWS, { type HttpResponse, type TemplatedApp } from '../frontend/uws.js'
import { ZmtpHandlerSocket } from '../frontend/zmtp-socket.js'
import { createLogger } from '../lib/log.js'

const CRLF2 = Buffer.from('\r\n\r\n')
const [mode, port, ...rest] = process.argv.slice(2)
const app = uWS.App()
if (mode === 'handler' && rest.length === 2) await handlerMode(app, rest[0]!, rest[1]!)
else if (mode === 'proxy' && rest.length === 1) proxyMode(app, Number(rest[0]))
else {
  console.error(
    'usage: floor-frontend.ts handler PORT SEND_SPEC RECV_SPEC | proxy PORT UPSTREAM_PORT',
  )
  process.exit(2)
}
app.listen('127.0.0.1', Number(port), (listening) => {
  if (!listening) {
    console.error(`floor-frontend: cannot listen on 127.0.0.1:${port}`)
    process.exit(1)
  }
  console.log('listening')
})

async function handlerMode(app: TemplatedApp, sendSpec: string, recvSpec: string): Promise<void> {
  const SENDER = 'c0ffee00-0000-4000-8000-00000000b001'
  const waiting = new Map<number, HttpResponse>()
  let nextId = 1
  const socket = new ZmtpHandlerSocket(
    {
      kind: 'handler',
      sendSpec,
      sendIdent: SENDER,
      recvSpec,
      recvIdent: '',
      protocol: 'json',
      rawPayload: false,
    },
    { onReply, onReady: () => undefined },
    createLogger('floor', 'warn'),
  )
  await socket.bind()
  process.on('SIGTERM', () => {
    socket.close()
    process.exit(0)
  })

  let json = ''
  const collect = (name: string, value: string): void => {
    json += `,"${name}":"${value}"`
  }
  app.get('/*', (res, req) => {
    const id = nextId++
    const url = req.getUrl()
    json =
      `{"PATH":"${url}","METHOD":"GET","VERSION":"HTTP/1.1","URI":"${url}",` +
      `"PATTERN":"/bench","URL_SCHEME":"http","REMOTE_ADDR":"${remoteAddress(res)}"`
    req.forEach(collect)
    json += '}'
    waiting.set(id, res)
    res.onAborted(() => waiting.delete(id))
    socket.send(Buffer.from(`${SENDER} ${id} ${url} ${json.length}:${json},0:,`, 'latin1'), id)
  })

  /** UUID SP SIZE ":" ID "," SP HTTP-reply: one id, and a body after the head. */
  function onReply(msg: Buffer): void {
    const colon = msg.indexOf(0x3a, msg.indexOf(0x20))
    const comma = msg.indexOf(0x2c, colon)
    const id = Number(msg.toString('latin1', colon + 1, comma))
    const res = waiting.get(id)
    if (res === undefined) return
    waiting.delete(id)
    socket.settle(id)
    const body = msg.subarray(msg.indexOf(CRLF2, comma) + 4)
    res.cork(() => res.end(body))
  }
}

// The address as text, the string reused while the bytes are the same (as ours does).
let lastBytes = new Uint8Array(0)
let lastAddr = ''
function remoteAddress(res: HttpResponse): string {
  const bytes = new Uint8Array(res.getRemoteAddressAsText())
  if (bytes.length === lastBytes.length) {
    let i = 0
    while (i < bytes.length && bytes[i] === lastBytes[i]) i++
    if (i === bytes.length) return lastAddr
  }
  lastBytes = bytes
  lastAddr = Buffer.from(bytes).toString('latin1')
  return lastAddr
}

function proxyMode(app: TemplatedApp, upstreamPort: number): void {
  interface Upstream {
    socket: Socket
    res: HttpResponse | undefined
  }
  const idle: Upstream[] = []
  const queue: [HttpResponse, string][] = []
  const READ = Buffer.allocUnsafe(65536)
  let opened = 0
  process.on('SIGTERM', () => process.exit(0))

  function open(): Upstream {
    opened++
    const up: Upstream = { socket: undefined as unknown as Socket, res: undefined }
    up.socket = connect({
      host: '127.0.0.1',
      port: upstreamPort,
      onread: { buffer: READ, callback: (n) => (onRead(up, n), true) },
    })
    up.socket.setNoDelay(true)
    return up
  }
  function onRead(up: Upstream, n: number): void {
    const res = up.res
    if (res === undefined) return
    up.res = undefined
    const head = READ.subarray(0, n)
    const body = head.subarray(head.indexOf(CRLF2) + 4)
    if (!res.aborted) res.cork(() => res.end(body))
    const next = queue.shift()
    if (next === undefined) idle.push(up)
    else send(up, next[0], next[1])
  }
  function send(up: Upstream, res: HttpResponse, url: string): void {
    up.res = res
    up.socket.write(`GET ${url} HTTP/1.1\r\nHost: 127.0.0.1:${upstreamPort}\r\n\r\n`, 'latin1')
  }
  app.get('/*', (res, req) => {
    const url = req.getUrl()
    res.onAborted(() => {
      res.aborted = true
    })
    const up = idle.pop()
    if (up !== undefined) send(up, res, url)
    else if (opened < 64) send(open(), res, url)
    else queue.push([res, url])
  })
}
