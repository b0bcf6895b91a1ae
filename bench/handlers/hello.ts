/**
 * @module bench/handlers/hello: the frontend benchmark's hello-world servers, two modes.
 *
 *   hello.ts zmq         a Mongrel2 handler on the npm zeromq package: PULL connects to
 *                        BAREKU_HANDLER_SEND_SPEC, PUB to BAREKU_HANDLER_RECV_SPEC; every request
 *                        gets "200 OK, Hello, world!" and @* notices get no answer
 *   hello.ts http PORT   a node:http server on 127.0.0.1:PORT giving the same reply
 *
 * Run with node and tsx's loader (bench/frontend.ts does). Prints "ready" once its sockets are
 * set up. A request is taken apart only as far as the reply needs: the connection id is the
 * bytes between the first and second space, and a path (after the second space) starting with
 * "@" marks a notice. The headers are never parsed.
 */
import { createServer } from 'node:http'

const UUID = Buffer.from('a5a5a5a5-0000-4000-8000-00000000be11 ')
const HTTP = Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, world!')
const SPACE = 0x20
const AT = 0x40

async function zmqHandler(sendSpec: string, recvSpec: string): Promise<void> {
  const { Pull, Publisher } = await import('zeromq')
  const pull = new Pull()
  const pub = new Publisher()
  pull.connect(sendSpec)
  pub.connect(recvSpec)
  console.log('ready')
  for await (const [msg] of pull) {
    if (msg === undefined) continue
    const s1 = msg.indexOf(SPACE)
    const s2 = msg.indexOf(SPACE, s1 + 1)
    if (s1 < 0 || s2 < 0 || msg[s2 + 1] === AT) continue
    const id = msg.subarray(s1 + 1, s2)
    const len = String(id.length)
    // UUID SP LEN ":" ID "," SP HTTP, written straight into one buffer
    const out = Buffer.allocUnsafe(UUID.length + len.length + 1 + id.length + 2 + HTTP.length)
    let at = UUID.copy(out, 0)
    at += out.write(len, at, 'latin1')
    out[at++] = 0x3a
    at += id.copy(out, at)
    out[at++] = 0x2c
    out[at++] = SPACE
    HTTP.copy(out, at)
    await pub.send(out) // one send at a time, as zeromq.js requires
  }
}

function httpServer(port: number): void {
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'Content-Length': 13 })
    res.end('Hello, world!')
  })
  // nginx and our proxy keep upstream connections open; do not drop them between runs.
  server.keepAliveTimeout = 60_000
  server.listen(port, '127.0.0.1', () => console.log('ready'))
}

const [mode, port] = process.argv.slice(2)
const { BAREKU_HANDLER_SEND_SPEC: sendSpec, BAREKU_HANDLER_RECV_SPEC: recvSpec } = process.env
if (mode === 'zmq' && sendSpec && recvSpec) await zmqHandler(sendSpec, recvSpec)
else if (mode === 'http' && port) httpServer(Number(port))
else {
  console.error(
    'usage: BAREKU_HANDLER_SEND_SPEC=... BAREKU_HANDLER_RECV_SPEC=... hello.ts zmq | hello.ts http PORT',
  )
  process.exit(2)
}
