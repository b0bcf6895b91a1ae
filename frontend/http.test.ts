/**
 * The handler route's fast path (a bodiless request with JSON headers, encoded from uWS's strings
 * without a header object) against the behaviours that depend on its message: a GET that a dying
 * handler took is sent again, byte for byte the same apart from the connection id, to another
 * handler. The real frontend process; the handlers are zeromq sockets in this test.
 */
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
