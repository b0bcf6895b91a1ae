/**
 * The handler route's fast path (a bodiless request with JSON headers, encoded from uWS's strings
 * without a header object) against the behaviours that depend on its message: a GET that a dying
 * handler took is sent again, byte for byte the same apart from the connection id, to another
 * handler. The real frontend process; the handlers are zeromq sockets in this test.
 */
import { connect } from 'node:net'
import t from 'tap'
import { Publisher, Pull } from 'zeromq'
import { encodeReply, parseRequest } from '../lib/protocol/mongrel2.js'
import { logRecord } from '../test/helpers/process.js'
import { startFrontendProcess, type RunningFrontend } from '../test/helpers/frontend.js'

const conf = `
h = Handler(send_spec='tcp://127.0.0.1:*', send_ident='h', recv_spec='tcp://127.0.0.1:*', recv_ident='')
main = Server(uuid='d1', name='main', chroot='./', default_host='localhost', bind_addr='127.0.0.1',
    port=6767, hosts=[Host(name='localhost', routes={'/': h})])
settings = {'limits.handler_lost_grace': 3000}
servers = [main]
`

let fe: RunningFrontend
t.before(async () => {
  fe = await startFrontendProcess(t.testdir(), conf)
})
t.teardown(() => fe.proc.stop())

interface Handler {
  pull: Pull
  pub: Publisher
  close(): void
}

/** A handler connected both ways, once the frontend counts `peers` handlers on h. */
async function handler(peers: number): Promise<Handler> {
  const pull = new Pull()
  const pub = new Publisher()
  const env = fe.handlerEnv('h')
  pull.connect(env.BAREKU_HANDLER_SEND_SPEC!)
  pub.connect(env.BAREKU_HANDLER_RECV_SPEC!)
  await fe.proc.waitFor((l) => {
    const r = logRecord(l)
    return r?.msg === 'handler peers' && r.peers === peers
  })
  return {
    pull,
    pub,
    close() {
      pull.close()
      pub.close()
    },
  }
}

t.test(
  'a GET taken by a handler that dies goes, unchanged but for its id, to another',
  async (t) => {
    const a = await handler(1)
    const b = await handler(2)
    t.teardown(() => {
      for (const h of [a, b]) if (!h.pull.closed) h.close()
    })
    const answer = fetch(`${fe.url}/some/path?q=1`, {
      headers: { 'x-test': 'retried', cookie: 'a=1' },
    })
    // Whichever handler PUSH picked takes it and dies (both sockets at once, as a killed process).
    const receives = [a, b].map((h) => h.pull.receive())
    const [first, i] = await Promise.race(receives.map(async (r, i) => [(await r)[0]!, i] as const))
    const taker = i === 0 ? a : b
    const other = i === 0 ? b : a
    taker.close()
    const [again] = await receives[1 - i]!
    const one = parseRequest(first)
    const two = parseRequest(again!)
    t.not(two.connId, one.connId, 'a new connection id')
    t.same({ ...two, connId: 0 }, { ...one, connId: 0 }, 'the same request otherwise')
    t.equal(one.headers.PATH, '/some/path')
    t.equal(one.headers.QUERY, 'q=1')
    t.equal(one.headers['x-test'], 'retried')
    t.equal(one.format, 'json')
    await other.pub.send(
      encodeReply({
        uuid: 'u',
        connIds: [two.connId],
        body: 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello',
      }),
    )
    const res = await answer
    t.equal(res.status, 200)
    t.equal(await res.text(), 'hello')
  },
)

/** Opens a raw connection, sends `head`, and returns what came back once `done` holds or it closed. */
function raw(
  head: string,
  after: (got: Buffer, write: (b: Buffer) => void) => boolean,
): Promise<{ got: Buffer; closed: boolean }> {
  return new Promise((resolve, reject) => {
    const sock = connect(fe.port, '127.0.0.1', () => sock.write(head))
    let got = Buffer.alloc(0)
    sock.on('data', (d) => {
      got = Buffer.concat([got, d])
      if (after(got, (b) => sock.write(b))) {
        sock.destroy()
        resolve({ got, closed: false })
      }
    })
    sock.on('close', () => resolve({ got, closed: true }))
    sock.on('error', reject)
  })
}

const handshake = (connection: string, path = '/chat'): string =>
  `GET ${path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: ${connection}\r\n` +
  'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n'

t.test('WebSocket upgrades that the handler answers later', async (t) => {
  const h = await handler(1)
  t.teardown(() => h.close())
  // The handler: a 101 for every handshake, every text frame echoed.
  void (async () => {
    for await (const [msg] of h.pull) {
      const req = parseRequest(msg!)
      if (req.path === '@*') continue
      const reply = (body: Buffer | string): Promise<void> =>
        h.pub.send(encodeReply({ uuid: 'h', connIds: [req.connId], body }))
      if (req.headers.METHOD === 'WEBSOCKET_HANDSHAKE') {
        // on /early, a first frame in the same message as the 101
        const first = req.path === '/early' ? Buffer.from([0x81, 1, 0x21]) : Buffer.alloc(0)
        const head =
          'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
          `Sec-WebSocket-Accept: ${req.body.toString()}\r\n\r\n`
        await reply(Buffer.concat([Buffer.from(head), first]))
      } else if (req.headers.FLAGS === '0x81') {
        await reply(Buffer.concat([Buffer.from([0x81, req.body.length]), req.body]))
      }
    }
  })().catch(() => {})

  const frame = Buffer.from([0x81, 0x82, 0, 0, 0, 0, 0x68, 0x69]) // "hi", masked with zeros
  const echoed = (got: Buffer, write: (b: Buffer) => void): boolean => {
    const end = got.indexOf('\r\n\r\n')
    if (end < 0) return false
    if (got.length === end + 4) write(frame)
    return got.length >= end + 4 + 4
  }
  // uWS 20.30's cork() closed some sockets right after such an upgrade (see cork-anchor.ts):
  // many in a row keep that in sight, though it came only now and then.
  let open = 0
  for (let i = 0; i < 100; i++) {
    const { got, closed } = await raw(handshake('Upgrade'), echoed)
    if (!closed && got.subarray(-4).equals(Buffer.from([0x81, 2, 0x68, 0x69]))) open++
  }
  t.equal(open, 100, 'every WebSocket stayed open and echoed its frame')
  t.notOk(
    fe.proc.lines.some((l) => l.includes('corked callback') || l.includes('cork anchor')),
    'uWS printed no warning of writes outside a cork, and the anchor was there',
  )

  const early = await raw(handshake('Upgrade', '/early'), (got) => {
    const end = got.indexOf('\r\n\r\n')
    return end >= 0 && got.length >= end + 4 + 3
  })
  t.same(early.got.subarray(-3), Buffer.from([0x81, 1, 0x21]), 'a frame sent with the 101 arrives')

  const refused = await raw(handshake('close'), () => false)
  t.match(
    refused.got.toString(),
    /^HTTP\/1\.1 400 [^]*Connection: Upgrade/,
    'no Upgrade token: 400',
  )
})
