/**
 * Replays every case captured from the real Mongrel2 1.12.2 (test/fixtures/mongrel2-vectors)
 * against the real frontend process: the client's bytes go in, and the handler must receive
 * equivalent messages (same sender, path, format, headers as a mapping, body); the handler's
 * captured replies go back (ids mapped to ours) and the client must read equivalent responses
 * (same status, headers but the ones uWS writes itself, and body; WebSocket frames byte for byte).
 *
 *   vector client bytes ──TCP──> frontend ──PUSH──> test PULL  (compare with handler-recv)
 *   vector handler bytes ─PUB──> frontend ──TCP───> test client (compare with client-recv)
 *
 * Deliberate differences skipped here, each documented in the README: disconnect notices for
 * connections whose response was already complete (uWS gives no event for an idle keep-alive
 * close), and the WebSocket close handshake (uWS answers a client's close frame itself).
 */
import { connect, type Socket } from 'node:net'
import t, { type Test } from 'tap'
import { Publisher, Pull } from 'zeromq'
import { ResponseParser, type ResponseHead } from '../../lib/protocol/http-response.js'
import {
  encodeReply,
  parseReply,
  parseRequest,
  type HandlerRequest,
} from '../../lib/protocol/mongrel2.js'
import { startFrontendProcess, type RunningFrontend } from '../helpers/frontend.js'
import { loadVectors, type VectorCase } from '../helpers/vectors.js'

const JSON_IDENT = 'c0ffee00-0000-4000-8000-00000000a001'
const TNET_IDENT = 'c0ffee00-0000-4000-8000-00000000a002'

const conf = (zmtp: string): string => `
cap_json = Handler(send_spec='tcp://127.0.0.1:*', send_ident='${JSON_IDENT}', recv_spec='tcp://127.0.0.1:*', recv_ident='')
cap_tnet = Handler(send_spec='tcp://127.0.0.1:*', send_ident='${TNET_IDENT}', recv_spec='tcp://127.0.0.1:*', recv_ident='', protocol='tnetstring')
main_host = Host(name='localhost', routes={'/': cap_json, '/tns/': cap_tnet, '/pat/([a-z]+)$': cap_json})
main = Server(uuid='f400bf85-4538-4f7a-8908-67e313d515c2', name='main', chroot='./', default_host='localhost',
    bind_addr='127.0.0.1', port=6767, hosts=[main_host])
settings = {'upload.temp_store': '/uploads/upload.XXXXXX', 'upload.temp_store_mode': '0644', 'frontend.zmtp': '${zmtp}'}
servers = [main]
`

interface FakeHandler {
  pull: Pull
  pub: Publisher
  /** The next request received, disconnect notices skipped. */
  next(): Promise<HandlerRequest>
}

function fakeHandler(fe: RunningFrontend, ident: string): FakeHandler {
  const env = fe.handlerEnv(ident)
  const pull = new Pull({ linger: 0 })
  const pub = new Publisher({ linger: 0 })
  pull.connect(env.BAREKU_HANDLER_SEND_SPEC!)
  pub.connect(env.BAREKU_HANDLER_RECV_SPEC!)
  return {
    pull,
    pub,
    async next() {
      // Notices are skipped, as the replay skips the captured ones (see the header comment).
      for (;;) {
        const [msg] = await pull.receive()
        const req = parseRequest(msg!)
        if (req.path !== '@*') return req
      }
    },
  }
}

class Client {
  private chunks: Buffer[] = []
  private wake: (() => void) | undefined
  closed = false
  constructor(readonly sock: Socket) {
    sock.on('data', (d) => {
      this.chunks.push(d)
      this.wake?.()
    })
    sock.on('close', () => {
      this.closed = true
      this.wake?.()
    })
  }
  static open(port: number): Promise<Client> {
    return new Promise((resolve, reject) => {
      const sock = connect(port, '127.0.0.1', () => resolve(new Client(sock)))
      sock.on('error', reject)
    })
  }
  /** Waits until `enough` is true of the bytes received so far, then takes them. */
  async read(enough: (b: Buffer) => number | undefined): Promise<Buffer> {
    for (;;) {
      const all = Buffer.concat(this.chunks)
      const n = enough(all)
      if (n !== undefined) {
        this.chunks = [all.subarray(n)]
        return all.subarray(0, n)
      }
      if (this.closed) throw new Error(`connection closed with ${all.length} unread bytes`)
      await new Promise<void>((resolve) => (this.wake = resolve))
    }
  }
  /** Reads one whole HTTP response (to `method`): its head and its body. */
  async response(method: string): Promise<{ head: ResponseHead; body: Buffer }> {
    let head: ResponseHead | undefined
    let body: Buffer[] = []
    await this.read((all) => {
      const p = new ResponseParser()
      p.expect(method)
      head = undefined
      body = []
      for (const ev of p.push(all)) {
        if (ev.type === 'head') head = ev.head
        if (ev.type === 'data') body.push(ev.chunk)
        if (ev.type === 'end' || (ev.type === 'head' && ev.head.status === 101)) return all.length
      }
      return undefined
    })
    return { head: head!, body: Buffer.concat(body) }
  }
}

/** Headers a client sees that uWS writes itself or that carry framing, left out of comparisons. */
const OWN_HEADERS = new Set([
  'date',
  'uwebsockets',
  'content-length',
  'transfer-encoding',
  'connection',
])

function normal(head: ResponseHead): { status: number; headers: string[] } {
  return {
    status: head.status,
    headers: head.headers
      .filter(([k]) => !OWN_HEADERS.has(k.toLowerCase()))
      .map(([k, v]) => `${k.toLowerCase()}: ${v}`)
      .sort(),
  }
}

function parseCaptured(bytes: Buffer, method: string): { head: ResponseHead; body: Buffer } {
  const p = new ResponseParser()
  p.expect(method)
  let head: ResponseHead | undefined
  const body: Buffer[] = []
  for (const ev of p.push(bytes)) {
    if (ev.type === 'head') head = ev.head
    if (ev.type === 'data') body.push(ev.chunk)
  }
  return { head: head!, body: Buffer.concat(body) }
}

async function replay(
  t: Test,
  c: VectorCase,
  fe: RunningFrontend,
  handlers: Record<string, FakeHandler>,
): Promise<void> {
  const clients = new Map<string, Client>()
  const idMap = new Map<number, number>()
  const methods = new Map<string, string[]>()
  let upgraded = false
  for (const e of c.events) {
    const name = `${c.name}/${e.file ?? e.kind}`
    switch (e.kind) {
      case 'client-send': {
        let client = clients.get(e.client!)
        if (!client) clients.set(e.client!, (client = await Client.open(fe.port)))
        if (!upgraded) {
          const method = e.bytes.toString('latin1', 0, e.bytes.indexOf(0x20))
          methods.set(e.client!, [...(methods.get(e.client!) ?? []), method])
        }
        client.sock.write(e.bytes)
        break
      }
      case 'handler-recv': {
        const want = parseRequest(e.bytes)
        if (want.path === '@*') break // see the header comment
        const got = await handlers[e.route!]!.next()
        t.equal(got.sender, want.sender, `${name}: sender`)
        t.equal(got.path, want.path, `${name}: path`)
        t.equal(got.format, want.format, `${name}: header format`)
        t.same(got.body, want.body, `${name}: body`)
        const strip = (h: HandlerRequest['headers']): HandlerRequest['headers'] => {
          const out = { ...h }
          for (const k of ['x-mongrel2-upload-start', 'x-mongrel2-upload-done'])
            if (k in out) out[k] = '(temp file)'
          return out
        }
        t.same(strip(got.headers), strip(want.headers), `${name}: headers`)
        if ('x-mongrel2-upload-done' in got.headers) {
          t.equal(
            got.headers['x-mongrel2-upload-done'],
            got.headers['x-mongrel2-upload-start'],
            `${name}: same temp file`,
          )
        }
        idMap.set(want.connId, got.connId)
        break
      }
      case 'handler-send': {
        const reply = parseReply(e.bytes)
        const ids = reply.connIds.map((id) => idMap.get(id) ?? id)
        await handlers[e.route!]!.pub.send(encodeReply({ ...reply, connIds: ids }))
        break
      }
      case 'client-recv': {
        const client = clients.get(e.client!)!
        if (e.bytes.length === 0) break
        if (upgraded) {
          const got = await client.read((b) =>
            b.length >= e.bytes.length ? e.bytes.length : undefined,
          )
          t.same(got, e.bytes, `${name}: WebSocket frame byte for byte`)
          break
        }
        const method = methods.get(e.client!)!.shift()!
        const want = parseCaptured(e.bytes, method)
        const got = await client.response(method)
        t.same(normal(got.head), normal(want.head), `${name}: status and headers`)
        t.same(got.body, want.body, `${name}: body`)
        if (want.head.status === 101) upgraded = true
        break
      }
      default:
        break
    }
    if (c.name === 'websocket' && e.file === '21-handler-recv.bin') break // close handshake: see above
  }
  for (const client of clients.values()) client.sock.destroy()
}

for (const zmtp of process.env.ZMTP_ONLY ? [process.env.ZMTP_ONLY] : ['native', 'libzmq']) {
  t.test(
    `every captured Mongrel2 case, replayed against the frontend (ZMTP: ${zmtp})`,
    async (t) => {
      const dir = t.testdir({ uploads: {} })
      const fe = await startFrontendProcess(dir, conf(zmtp))
      const handlers = { json: fakeHandler(fe, JSON_IDENT), tnet: fakeHandler(fe, TNET_IDENT) }
      t.teardown(async () => {
        for (const h of Object.values(handlers)) {
          h.pull.close()
          h.pub.close()
        }
        await fe.proc.stop()
      })
      const cases = loadVectors()
      t.ok(cases.length >= 11, `${cases.length} cases`)
      for (const c of cases) {
        await t.test(c.name, (t) => replay(t, c, fe, handlers))
      }
    },
  )
}
