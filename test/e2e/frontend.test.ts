/**
 * The real frontend process, driven by real HTTP and WebSocket clients, in front of Mongrel2
 * handlers in three languages: Python (python3-zmq), Perl (ZMQ::FFI) and TypeScript (the
 * handler library, examples/hello.ts and examples/chat.ts): requests, keep-alive, bodies,
 * uploads, streaming, HEAD, closes, disconnect notices, holding with no handler, limits,
 * WebSockets.
 *
 *   client ──HTTP/WS──> bin/bareku frontend ──PUSH/SUB──> m2handler.py | hello.pl | hello.ts
 */
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, readdirSync } from 'node:fs'
import { createServer, request, Agent, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import t from 'tap'
import WebSocket from 'ws'
import { REPO, startProcess, type Proc } from '../helpers/process.js'
import { rawRequest, startFrontendProcess, type RunningFrontend } from '../helpers/frontend.js'

const PYTHON = '/usr/bin/python3'
const PY_HANDLER = join(REPO, 'test/fixtures/handlers/m2handler.py')
const PERL_HANDLER = join(REPO, 'test/fixtures/handlers/hello.pl')

const conf = (proxyPort: number): string => `
py = Handler(send_spec='tcp://127.0.0.1:*', send_ident='py-json', recv_spec='tcp://127.0.0.1:*', recv_ident='')
pyt = Handler(send_spec='tcp://127.0.0.1:*', send_ident='py-tnet', recv_spec='tcp://127.0.0.1:*', recv_ident='', protocol='tnetstring')
pl = Handler(send_spec='tcp://127.0.0.1:*', send_ident='perl', recv_spec='tcp://127.0.0.1:*', recv_ident='')
ts = Handler(send_spec='tcp://127.0.0.1:*', send_ident='ts-hello', recv_spec='tcp://127.0.0.1:*', recv_ident='')
chat = Handler(send_spec='tcp://127.0.0.1:*', send_ident='ts-chat', recv_spec='tcp://127.0.0.1:*', recv_ident='')
late = Handler(send_spec='tcp://127.0.0.1:*', send_ident='late', recv_spec='tcp://127.0.0.1:*', recv_ident='')
none = Handler(send_spec='tcp://127.0.0.1:*', send_ident='nobody-home', recv_spec='tcp://127.0.0.1:*', recv_ident='')

main = Server(uuid='f400bf85-4538-4f7a-8908-67e313d515c2', name='main', chroot='./',
    default_host='localhost', bind_addr='127.0.0.1', port=6767,
    hosts=[Host(name='localhost', routes={
        '/': py, '/tns/': pyt, '/perl/': pl,
        '/app/': Proxy(addr='127.0.0.1', port=${proxyPort}),
        '/static/': Dir(base='public/', index_file='index.html', default_ctype='text/plain'), '/ts/': ts, '/chat': chat, '/late/': late, '/nobody/': none, '/pat/([a-z]+)$': py})])

settings = {'upload.temp_store': '/uploads/upload.XXXXXX', 'limits.handler_wait': 2000}
servers = [main]
`

let fe: RunningFrontend
let py: Proc
const dir = t.testdir({
  uploads: {},
  public: { 'index.html': '<h1>home</h1>\n', 'app.css': 'body { color: red }\n' },
  'secret.txt': 'not for you',
})

let backend: Server
t.before(async () => {
  // a plain HTTP app, as a `web` process on $PORT would be
  backend = createServer((req, res) => {
    res.setHeader('Content-Type', 'text/plain')
    res.end(`web app saw ${req.method} ${req.url} from ${String(req.headers['x-forwarded-for'])}`)
  })
  await new Promise<void>((resolve) => backend.listen(0, '127.0.0.1', resolve))
  t.teardown(() => backend.close())
  fe = await startFrontendProcess(dir, conf((backend.address() as AddressInfo).port))
  py = startProcess(PYTHON, [PY_HANDLER], {
    env: { ...fe.handlerEnv('py-json'), UPLOAD_CHROOT: dir },
  })
  const pyt = startProcess(PYTHON, [PY_HANDLER], { env: fe.handlerEnv('py-tnet') })
  const pl = startProcess('perl', [PERL_HANDLER], { env: fe.handlerEnv('perl') })
  const ts = startProcess(process.execPath, ['--import', 'tsx', 'examples/hello.ts'], {
    env: fe.handlerEnv('ts-hello'),
  })
  const chat = startProcess(process.execPath, ['--import', 'tsx', 'examples/chat.ts'], {
    env: fe.handlerEnv('ts-chat'),
  })
  t.teardown(async () => {
    await Promise.all([py.stop(), pyt.stop(), pl.stop(), ts.stop(), chat.stop(), fe.proc.stop()])
  })
  await Promise.all([py.waitFor(/^ready$/), pyt.waitFor(/^ready$/), pl.waitFor(/^ready$/)])
})

interface Echo {
  lang: string
  conn_id: number
  path: string
  format: string
  headers: Record<string, string | string[]>
  body_len: number
  body_sha256: string
}

t.test('a GET reaches the Python handler with every header Mongrel2 adds', async (t) => {
  const res = await fetch(`${fe.url}/hello/world.html?a=1&b=two`, {
    headers: { Accept: 'text/html', 'X-Forwarded-For': '6.6.6.6' },
  })
  t.equal(res.status, 200)
  const echo = (await res.json()) as Echo
  t.equal(echo.lang, 'python')
  t.equal(echo.path, '/hello/world.html')
  t.equal(echo.format, 'json')
  const h = echo.headers
  t.equal(h.PATH, '/hello/world.html')
  t.equal(h.METHOD, 'GET')
  t.equal(h.VERSION, 'HTTP/1.1')
  t.equal(h.URI, '/hello/world.html?a=1&b=two')
  t.equal(h.QUERY, 'a=1&b=two')
  t.equal(h.PATTERN, '/')
  t.equal(h.URL_SCHEME, 'http')
  t.equal(h.REMOTE_ADDR, '127.0.0.1')
  t.equal(h['x-forwarded-for'], '127.0.0.1', 'a client X-Forwarded-For is replaced')
  t.equal(h.accept, 'text/html', 'client header names are lowercased')
  t.ok(echo.conn_id > 0)
})

t.test(
  'repeated headers arrive as a list of at most 5, the tnetstring handler gets a dict',
  async (t) => {
    const names = ['a', 'b', 'c', 'd', 'e', 'f', 'g'].map((v) => `Accept: ${v}\r\n`).join('')
    const raw = await rawRequest(
      fe.port,
      `GET /tns/x/y?q=1 HTTP/1.1\r\nHost: localhost\r\n${names}X-Custom: v  \r\nConnection: close\r\n\r\n`,
    )
    const text = raw.toString()
    t.match(text, /^HTTP\/1\.1 200 OK\r\n/)
    const echo = JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)) as Echo
    t.equal(echo.format, 'tnetstring')
    t.same(echo.headers.accept, ['a', 'b', 'c', 'd', 'e'])
    t.equal(echo.headers.PATTERN, '/tns/')
    t.equal(echo.headers.QUERY, 'q=1')
    t.equal(echo.headers['x-custom'], 'v', 'trailing spaces trimmed (uWS does; RFC 9110 agrees)')
  },
)

t.test('a pattern route sends the whole route string as PATTERN', async (t) => {
  const echo = (await (await fetch(`${fe.url}/pat/abc`)).json()) as Echo
  t.equal(echo.headers.PATTERN, '/pat/([a-z]+)$')
})

t.test('keep-alive: several requests on one connection are all answered', async (t) => {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => agent.destroy())
  const sockets = new Set<unknown>()
  for (let i = 0; i < 3; i++) {
    const { status, body, socket } = await new Promise<{
      status: number
      body: string
      socket: unknown
    }>((resolve, reject) => {
      const req = request(`${fe.url}/ka/${i}`, { agent }, (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (c: string) => (body += c))
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, socket: req.socket }))
      })
      req.on('error', reject)
      req.end()
    })
    t.equal(status, 200)
    t.equal((JSON.parse(body) as Echo).path, `/ka/${i}`)
    sockets.add(socket)
  }
  t.equal(sockets.size, 1, 'one TCP connection served all three')
})

t.test('an inline body and a large upload spooled to a temp file', async (t) => {
  const small = randomBytes(16 * 1024)
  const r1 = (await (await fetch(`${fe.url}/form`, { method: 'POST', body: small })).json()) as Echo
  t.equal(r1.body_len, small.length)
  t.equal(r1.body_sha256, createHash('sha256').update(small).digest('hex'))
  t.equal(r1.headers['content-length'], String(small.length))

  const big = randomBytes(300 * 1024)
  const r2 = (await (await fetch(`${fe.url}/upload`, { method: 'POST', body: big })).json()) as {
    size: number
    sha256: string
  }
  t.same(
    r2,
    { size: big.length, sha256: createHash('sha256').update(big).digest('hex') },
    'the handler read the whole file',
  )
  await py.waitFor(/^upload-start \d+$/)
  t.same(readdirSync(join(dir, 'uploads')), [], 'the handler deleted the spooled file')
})

t.test('a streaming reply, HEAD, and a handler close', async (t) => {
  const stream = await rawRequest(fe.port, 'GET /stream HTTP/1.1\r\nHost: localhost\r\n\r\n', (b) =>
    b.includes('\r\n0\r\n\r\n'),
  )
  const text = stream.toString()
  t.match(text, /Transfer-Encoding: chunked/i)
  t.match(text.replace(/\r\n[0-9a-f]+\r\n/g, ''), /one two three/)

  const head = await fetch(`${fe.url}/head`, { method: 'HEAD' })
  t.equal(head.status, 200)
  t.equal(await head.text(), '')

  const closed = await rawRequest(fe.port, 'GET /close HTTP/1.1\r\nHost: localhost\r\n\r\n', (b) =>
    b.includes('\r\n0\r\n\r\n'),
  )
  t.match(
    closed.toString(),
    /\r\n\r\n3\r\nbye\r\n0\r\n\r\n$/,
    'a close-delimited reply, ended by the handler closing',
  )
  t.match(closed.toString(), /\r\nConnection: close\r\n/i, 'and the client is told to close')
})

t.test('a client that goes away makes the handler get a disconnect notice', async (t) => {
  let resolve = (): void => {}
  const promise = new Promise<void>((r) => (resolve = r))
  const sock = (await import('node:net')).connect(fe.port, '127.0.0.1', () =>
    sock.write('GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n'),
  )
  const slow = await py.waitFor((l) => /^slow \d+$/.test(l) && !seenSlow.has(l))
  seenSlow.add(slow)
  const id = slow.split(' ')[1]
  sock.on('close', () => resolve())
  sock.destroy()
  await promise
  await py.waitFor((l) => l === `disconnect ${id ?? ''}`)
  t.pass(`disconnect notice for conn ${id}`)
})
const seenSlow = new Set<string>()

t.test('the Perl handler answers on its route', async (t) => {
  const res = await fetch(`${fe.url}/perl/x`)
  t.equal(await res.text(), 'hello from perl /perl/x')
})

t.test(
  'requests wait for a handler that connects late, and get a 503 past the deadline',
  async (t) => {
    const pending = fetch(`${fe.url}/late/1`)
    // The request is held by the frontend; start the handler only now.
    const late = startProcess(PYTHON, [PY_HANDLER], { env: fe.handlerEnv('late') })
    t.teardown(() => late.stop())
    const res = await pending
    t.equal(res.status, 200)
    t.equal(((await res.json()) as Echo).path, '/late/1')

    const none = await fetch(`${fe.url}/nobody/1`)
    t.equal(none.status, 503)
    t.equal(none.headers.get('retry-after'), '5')
  },
)

t.test('limits and bad requests get clear 4xx answers', async (t) => {
  const big = await fetch(`${fe.url}/x`, { headers: { 'X-Big': 'a'.repeat(20_000) } })
  t.equal(big.status, 431)
  const expect = await rawRequest(
    fe.port,
    'POST /x HTTP/1.1\r\nHost: localhost\r\nExpect: nonsense\r\nContent-Length: 1\r\n\r\nx',
  )
  t.match(expect.toString(), /^HTTP\/1\.1 417 /)
  const badLength = await rawRequest(
    fe.port,
    'POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1x\r\n\r\n',
  )
  t.match(badLength.toString(), /^(HTTP\/1\.1 400 |)$/m, 'a bad Content-Length is refused')
  const smuggle = await rawRequest(
    fe.port,
    'POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
  )
  t.notMatch(smuggle.toString(), /200 OK/, 'Content-Length with Transfer-Encoding is refused')
  t.ok(existsSync(join(dir, 'uploads')))
  const after = await fetch(`${fe.url}/still/alive`)
  t.equal(after.status, 200, 'the frontend keeps serving')
})

t.test('WebSocket: handshake through the handler, frames both ways, close', async (t) => {
  const ws = new WebSocket(`ws://127.0.0.1:${fe.port}/ws/chat?room=1`, ['chat'])
  t.teardown(() => ws.terminate())
  await new Promise<void>((resolve, reject) => {
    ws.on('open', () => resolve())
    ws.on('error', reject)
  })
  t.equal(ws.protocol, 'chat', 'the protocol the handler picked')
  const next = (): Promise<{ data: Buffer; binary: boolean }> =>
    new Promise((resolve) =>
      ws.once('message', (data: Buffer, binary: boolean) => resolve({ data, binary })),
    )
  let got = next()
  ws.send('Hello')
  t.same(await got, { data: Buffer.from('Hello'), binary: false })
  got = next()
  ws.send(Buffer.from([0, 1, 2, 255]))
  t.same(await got, { data: Buffer.from([0, 1, 2, 255]), binary: true })
  got = next()
  const long = 'L'.repeat(70_000)
  ws.send(long)
  t.equal((await got).data.toString(), long, 'a 70 kB message (64-bit length) both ways')
  const closed = new Promise<number>((resolve) => ws.on('close', (code) => resolve(code)))
  ws.close(1000, 'bye')
  t.equal(await closed, 1000)
  await py.waitFor(/^ws-close \d+ bye$/)
})

t.test('the TypeScript handler library answers on its route', async (t) => {
  const res = await fetch(`${fe.url}/ts/x`)
  t.equal(res.status, 200)
  t.equal(await res.text(), 'Hello from Bareku\n')
})

t.test('a WebSocket chat on the TypeScript handler broadcasts to every member', async (t) => {
  const open = async (): Promise<WebSocket> => {
    const ws = new WebSocket(`ws://127.0.0.1:${fe.port}/chat`)
    t.teardown(() => ws.terminate())
    await new Promise<void>((resolve, reject) => {
      ws.on('open', () => resolve())
      ws.on('error', reject)
    })
    return ws
  }
  const members = [await open(), await open(), await open()]
  const heard = members.map(
    (ws) =>
      new Promise<string>((resolve) => {
        const listen = (data: Buffer): void => {
          if (data.toString().includes('hello all')) {
            ws.off('message', listen)
            resolve(data.toString())
          }
        }
        ws.on('message', listen)
      }),
  )
  members[0]!.send('hello all')
  const got = await Promise.all(heard)
  t.equal(got.length, 3, 'all three members got the message, the sender included')
})

t.test('a Dir route serves static files with ETag and no path escape', async (t) => {
  const index = await fetch(`${fe.url}/static/`)
  t.equal(index.status, 200)
  t.equal(await index.text(), '<h1>home</h1>\n')
  t.match(index.headers.get('content-type'), /^text\/html/)
  const css = await fetch(`${fe.url}/static/app.css`)
  t.match(css.headers.get('content-type'), /^text\/css/)
  const etag = css.headers.get('etag')!
  await css.text()
  const again = await fetch(`${fe.url}/static/app.css`, { headers: { 'If-None-Match': etag } })
  t.equal(again.status, 304)
  const escape = await rawRequest(
    fe.port,
    'GET /static/../secret.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n',
  )
  t.match(escape.toString(), /^HTTP\/1\.1 404 /)
  t.notMatch(escape.toString(), /not for you/)
})

t.test('a Proxy route forwards to a plain HTTP app', async (t) => {
  const res = await fetch(`${fe.url}/app/page?x=1`)
  t.equal(res.status, 200)
  t.equal(await res.text(), 'web app saw GET /app/page?x=1 from 127.0.0.1')
})

t.test('the frontend exits cleanly on SIGTERM', async (t) => {
  t.equal(await fe.proc.stop(), 0)
  t.ok(
    fe.proc.lines.some((l) => l.includes('"msg":"stopped"')),
    'it logged that it stopped',
  )
})
