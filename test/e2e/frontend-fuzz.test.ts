/**
 * Bad input from both sides, bounded: garbage requests, garbage WebSocket frames, and garbage
 * handler replies (bad netstrings, unknown ids, 129 ids, huge declared sizes, malformed HTTP,
 * malformed frames). The frontend must keep serving good requests throughout, and its memory
 * must not grow from one round to the next.
 *
 *   fuzz client ──garbage──> frontend <──garbage── evil handler (test PULL/PUB)
 *   good client ──GET──────> frontend <──────────── m2handler.py
 */
import { readFileSync } from 'node:fs'
import { connect } from 'node:net'
import { join } from 'node:path'
import t from 'tap'
import WebSocket from 'ws'
import { Publisher, Pull } from 'zeromq'
import { encodeReply, parseRequest } from '../../lib/protocol/mongrel2.js'
import { rawRequest, startFrontendProcess } from '../helpers/frontend.js'
import { REPO, startProcess } from '../helpers/process.js'

const CONF = `
good = Handler(send_spec='tcp://127.0.0.1:*', send_ident='good', recv_spec='tcp://127.0.0.1:*', recv_ident='')
evil = Handler(send_spec='tcp://127.0.0.1:*', send_ident='evil', recv_spec='tcp://127.0.0.1:*', recv_ident='')
main = Server(uuid='f400bf85-4538-4f7a-8908-67e313d515c2', name='main', chroot='./', default_host='localhost',
    bind_addr='127.0.0.1', port=6767, hosts=[Host(name='localhost', routes={'/': good, '/evil/': evil})])
settings = {'limits.handler_wait': 2000, 'limits.websocket_max': 65536}
servers = [main]
`

let seed = 4242
function rand(n: number): number {
  seed = (seed * 1103515245 + 12345) % 2 ** 31
  return seed % n
}
function garbage(max: number): Buffer {
  const b = Buffer.alloc(rand(max) + 1)
  for (let i = 0; i < b.length; i++) b[i] = rand(256)
  return b
}

const BAD_REQUESTS = [
  'GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
  'POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n',
  'GET / HTTP/9.9\r\nHost: localhost\r\n\r\n',
  'GET /\x00 HTTP/1.1\r\nHost: localhost\r\n\r\n',
  'GET / HTTP/1.1\r\nHost: localhost\r\nX: ' + 'a'.repeat(100_000) + '\r\n\r\n',
  'GET / HTTP/1.1\r\n' + 'X-Many: 1\r\n'.repeat(3000) + '\r\n',
  'POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999999\r\n\r\nabc',
  'POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n',
  '\r\n\r\n\r\n',
  'GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n',
]

async function goodRequest(port: number, i: number): Promise<boolean> {
  const res = await fetch(`http://127.0.0.1:${port}/ok/${i}`)
  const body = (await res.json()) as { path: string }
  return res.status === 200 && body.path === `/ok/${i}`
}

/** Writes bytes, half-closes, and waits for the server to close (garbage may never get an answer). */
function blast(port: number, bytes: Buffer | string): Promise<void> {
  return new Promise((resolve) => {
    const sock = connect(port, '127.0.0.1', () => sock.end(bytes))
    const timer = setTimeout(() => sock.destroy(), 3000)
    sock.on('data', () => {})
    sock.on('error', () => {})
    sock.on('close', () => {
      clearTimeout(timer)
      resolve()
    })
  })
}

function rssKb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return Number(m?.[1])
}

t.test(
  'garbage from clients and handlers leaves the frontend serving, without growing',
  async (t) => {
    const dir = t.testdir({})
    const fe = await startFrontendProcess(dir, CONF)
    const good = startProcess(
      '/usr/bin/python3',
      [join(REPO, 'test/fixtures/handlers/m2handler.py')],
      { env: fe.handlerEnv('good') },
    )
    const evilEnv = fe.handlerEnv('evil')
    const goodEnv = fe.handlerEnv('good')
    const evilPull = new Pull({ linger: 0 })
    const evilPub = new Publisher({ linger: 0 })
    // A second publisher on the good handler's reply socket: garbage there must not disturb it.
    const intruder = new Publisher({ linger: 0 })
    evilPull.connect(evilEnv.BAREKU_HANDLER_SEND_SPEC!)
    evilPub.connect(evilEnv.BAREKU_HANDLER_RECV_SPEC!)
    intruder.connect(goodEnv.BAREKU_HANDLER_RECV_SPEC!)
    t.teardown(async () => {
      evilPull.close()
      evilPub.close()
      intruder.close()
      await good.stop()
      await fe.proc.stop()
    })
    await good.waitFor(/^ready$/)
    t.ok(await goodRequest(fe.port, 0), 'serving before')

    // The evil handler answers each request it gets with one of these (ids filled in).
    const evilReplies = (id: number): Buffer[] => [
      Buffer.from(`evil ${String(id).length}:${id}, HTTP/1.1 200 OK\r\nContent-Length: zz\r\n\r\n`),
      Buffer.from(
        `evil ${String(id).length}:${id}, HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nnothex\r\n`,
      ),
      Buffer.from(`evil ${String(id).length}:${id}, NOT HTTP AT ALL\r\n\r\n`),
      Buffer.concat([Buffer.from(`evil ${String(id).length}:${id}, `), garbage(200)]),
      encodeReply({ uuid: 'evil', connIds: [id], extended: true, body: garbage(50) }),
      Buffer.from(
        `evil ${String(id).length}:${id}, HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\nabc`,
      ),
    ]
    let evilServed = 0
    const evilLoop = (async () => {
      try {
        for (;;) {
          const [msg] = await evilPull.receive()
          const req = parseRequest(msg!)
          if (req.path === '@*') continue
          const replies = evilReplies(req.connId)
          await evilPub.send(replies[evilServed++ % replies.length]!)
          // then hang up, as a handler would: whatever the garbage left pending ends here
          await evilPub.send(encodeReply({ uuid: 'evil', connIds: [req.connId], body: '' }))
        }
      } catch {
        // closed in teardown
      }
    })()

    const badReplies = (): Buffer[] => [
      Buffer.from('no-space-here'),
      Buffer.from('uuid 5:1 2, x'),
      Buffer.from('uuid 99999999:1, x'),
      Buffer.from(`uuid 3:987, HTTP/1.1 200 OK\r\n\r\n`), // unknown id
      encodeReply({
        uuid: 'u',
        connIds: Array.from({ length: 128 }, (_, i) => 900_000 + i),
        body: 'x',
      }),
      Buffer.from(`u ${129 * 4}:${Array.from({ length: 129 }, () => '123').join(' ')}, x`),
      Buffer.from('bad_uuid 1:1, x'),
      garbage(300),
    ]

    async function round(n: number): Promise<void> {
      for (let i = 0; i < n; i++) {
        // garbage requests, each on its own connection; the answer may be an error or a close
        await blast(fe.port, i % 3 === 0 ? garbage(2000) : BAD_REQUESTS[i % BAD_REQUESTS.length]!)
        for (const bad of badReplies()) await intruder.send(bad)
        // the evil handler's answer may be an error or a cut-off body; then it hangs up
        await rawRequest(fe.port, `GET /evil/${i} HTTP/1.1\r\nHost: localhost\r\n\r\n`)
        if (!(await goodRequest(fe.port, i))) throw new Error(`good request ${i} failed`)
      }
      // garbage WebSocket frames after a real handshake
      for (let i = 0; i < 5; i++) {
        const ws = new WebSocket(`ws://127.0.0.1:${fe.port}/ws/${i}`)
        await new Promise<void>((resolve) => {
          ws.on('open', () => {
            const sock = (ws as unknown as { _socket: import('node:net').Socket })._socket
            sock.write(garbage(500))
          })
          ws.on('close', () => resolve())
          ws.on('error', () => resolve())
        })
      }
      const raw = connect(fe.port, '127.0.0.1')
      raw.on('error', () => {})
      raw.destroy()
    }

    await round(40)
    const after1 = rssKb(fe.proc.child.pid!)
    await round(40)
    await round(40)
    const after3 = rssKb(fe.proc.child.pid!)
    t.ok(evilServed > 0, `${evilServed} garbage replies from the evil handler`)
    for (let i = 0; i < 20; i++) t.ok(await goodRequest(fe.port, 1000 + i), `still serving (${i})`)
    t.ok(
      after3 - after1 < 20 * 1024,
      `RSS ${after1} kB after round 1, ${after3} kB after round 3: no growth beyond noise`,
    )
    t.equal(fe.proc.child.exitCode, null, 'the frontend never died')
    void evilLoop
  },
)
