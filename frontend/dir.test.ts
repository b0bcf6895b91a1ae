/**
 * @module Tests for Dir routes on a real uWS app over files in a test dir: fetch where it does not
 * normalise the request, raw sockets where it would (dot segments, HEAD bodies, slow readers).
 *
 *   client ──GET /static/x──> uWS app.any('/*') ──serve()──> CHROOT/public/x
 *   client ──GET /nocache/x─> (same base, cacheTtl 0)
 *   client ──GET /favicon.ico> (route naming one file: CHROOT/public/favicon.ico)
 *   client ──GET /nobase/x──> (base CHROOT/missing/, which does not exist)
 */
import { createHash, randomBytes } from 'node:crypto'
import { EventEmitter, once } from 'node:events'
import { closeSync, openSync, truncateSync, writeFileSync, writeSync } from 'node:fs'
import { connect } from 'node:net'
import { join } from 'node:path'
import { pino } from 'pino'
import t, { type Test } from 'tap'
import type { DirTarget } from '../lib/config/routes.js'
import { createDirRoute } from './dir.js'
import uWS, { type HttpResponse, type us_listen_socket } from './uws.js'

const TARGET: DirTarget = {
  kind: 'dir',
  base: 'public/',
  indexFile: 'index.html',
  defaultCtype: 'application/octet-stream',
  cacheTtl: 60,
}

const PNG = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0])

interface Server {
  url: string
  port: number
  dir: string
  logs: { level: number; msg: string }[]
  /** 'stall' and 'aborted', from watch(). */
  events: EventEmitter
}

async function start(t: Test): Promise<Server> {
  const dir = t.testdir({
    'secret.txt': 'top secret',
    public2: { 'evil.txt': 'evil twin' },
    public: {
      'index.html': '<h1>home</h1>',
      'style.css': 'body{}',
      'app.js': 'export {}',
      'data.json': '{"a":1}',
      'notes.txt': '0123456789abcdefghij',
      'logo.PNG': PNG,
      'font.woff2': 'w2',
      README: 'no extension',
      'page.custom': 'configured',
      'bundle.tar.gz': 'tarball',
      'favicon.ico': 'icon',
      'hello world.txt': 'spaced',
      'café.txt': 'accented',
      'empty.txt': '',
      docs: { 'index.html': '<h1>docs</h1>', 'guide.txt': 'guide' },
      'no-index': {},
      'link-inside': t.fixture('symlink', 'notes.txt'),
      'link-out': t.fixture('symlink', '../secret.txt'),
      'dir-out': t.fixture('symlink', '..'),
      sibling: t.fixture('symlink', '../public2/evil.txt'),
    },
  })
  const logs: Server['logs'] = []
  const log = pino(
    { level: 'debug' },
    { write: (line: string) => void logs.push(JSON.parse(line) as Server['logs'][number]) },
  )
  const mimetypes = { '.custom': 'text/x-custom', '.tar.gz': 'application/x-tgz', gz: 'x/gz' }
  const cached = createDirRoute(TARGET, { chroot: dir, mimetypes, log })
  const uncached = createDirRoute({ ...TARGET, cacheTtl: 0 }, { chroot: dir, mimetypes, log })
  const baseless = createDirRoute({ ...TARGET, base: 'missing/' }, { chroot: dir, mimetypes, log })

  const events = new EventEmitter()
  const app = uWS.App()
  app.any('/*', (res, req) => {
    const headers: [string, string][] = []
    req.forEach((k, v) => void headers.push([k, v]))
    const path = req.getUrl()
    const routePrefix =
      ['/favicon.ico', '/nocache/', '/nobase/'].find((p) => path.startsWith(p)) ?? '/static/'
    const route =
      routePrefix === '/nocache/' ? uncached : routePrefix === '/nobase/' ? baseless : cached
    route.serve(watch(res, events), { method: req.getMethod(), path, routePrefix, headers })
  })
  const listen = await new Promise<us_listen_socket>((resolve, reject) => {
    app.listen('127.0.0.1', 0, (ls) => (ls ? resolve(ls) : reject(new Error('listen failed'))))
  })
  t.teardown(() => {
    uWS.us_listen_socket_close(listen)
    app.close()
  })
  const port = uWS.us_socket_local_port(listen)
  return { url: `http://127.0.0.1:${port}`, port, dir, logs, events }
}

/**
 * Passes `res` through, emitting 'stall' when serve() starts waiting for onWritable and 'aborted'
 * once its abort handler has run: the tests wait for these instead of sleeping.
 */
function watch(res: HttpResponse, events: EventEmitter): HttpResponse {
  return new Proxy(res, {
    get(target, prop) {
      if (prop === 'onWritable') {
        return (handler: (offset: number) => boolean) => {
          events.emit('stall')
          return target.onWritable(handler)
        }
      }
      if (prop === 'onAborted') {
        return (handler: () => void) =>
          target.onAborted(() => {
            handler()
            events.emit('aborted')
          })
      }
      const value: unknown = Reflect.get(target, prop)
      return typeof value === 'function' ? (value as () => unknown).bind(target) : value
    },
  })
}

interface RawReply {
  status: number
  headers: Map<string, string>
  body: Buffer
}

interface RawRequest {
  method: string
  path: string
  headers?: string[]
}

/**
 * Sends requests one after another on one connection, each once the previous reply is complete
 * (uWS aborts a pending response when a pipelined request arrives), the last with
 * `Connection: close`; resolves when the server closes, failing on any byte no reply accounts
 * for, so a stray HEAD body shows.
 */
function raw(port: number, requests: RawRequest[]): Promise<RawReply[]> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, '127.0.0.1')
    const out: RawReply[] = []
    let buf = Buffer.alloc(0)
    const next = (): void => {
      const r = requests[out.length]
      if (!r) return
      const last = out.length === requests.length - 1
      sock.write(
        wire(r.method, r.path, [...(r.headers ?? []), ...(last ? ['Connection: close'] : [])]),
      )
    }
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d])
      for (;;) {
        const r = requests[out.length]
        const end = buf.indexOf('\r\n\r\n')
        if (!r || end < 0) return
        const lines = buf.subarray(0, end).toString('latin1').split('\r\n')
        const status = Number(lines[0]?.split(' ')[1])
        const headers = new Map(
          lines.slice(1).map((l): [string, string] => {
            const i = l.indexOf(':')
            return [l.slice(0, i).toLowerCase(), l.slice(i + 1).trim()]
          }),
        )
        const noBody = r.method === 'HEAD' || status === 304
        const len = noBody ? 0 : Number(headers.get('content-length') ?? 0)
        if (buf.length < end + 4 + len) return
        out.push({ status, headers, body: buf.subarray(end + 4, end + 4 + len) })
        buf = buf.subarray(end + 4 + len)
        next()
      }
    })
    sock.on('error', reject)
    sock.on('close', () => {
      if (buf.length > 0) reject(new Error(`bytes after the replies: ${buf.toString('latin1')}`))
      else if (out.length < requests.length) reject(new Error(`${out.length} replies only`))
      else resolve(out)
    })
    next()
  })
}

function wire(method: string, path: string, headers: string[] = []): string {
  const lines = [`${method} ${path} HTTP/1.1`, 'Host: test', ...headers]
  return `${lines.join('\r\n')}\r\n\r\n`
}

async function rawOne(port: number, method: string, path: string, headers: string[] = []) {
  const [reply] = await raw(port, [{ method, path, headers }])
  return reply!
}

t.test('content types: route mimetypes, then built-in, then default_ctype', async (t) => {
  const s = await start(t)
  const cases: [string, string][] = [
    ['/static/style.css', 'text/css; charset=utf-8'],
    ['/static/app.js', 'text/javascript; charset=utf-8'],
    ['/static/data.json', 'application/json'],
    ['/static/notes.txt', 'text/plain; charset=utf-8'],
    ['/static/logo.PNG', 'image/png'],
    ['/static/font.woff2', 'font/woff2'],
    ['/static/page.custom', 'text/x-custom'],
    ['/static/bundle.tar.gz', 'application/x-tgz'],
    ['/static/README', 'application/octet-stream'],
    ['/static/hello%20world.txt', 'text/plain; charset=utf-8'],
    ['/favicon.ico', 'image/x-icon'],
  ]
  for (const [path, type] of cases) {
    const res = await fetch(s.url + path)
    t.equal(res.status, 200, path)
    t.equal(res.headers.get('content-type'), type, path)
    await res.arrayBuffer()
  }
  const png = await fetch(`${s.url}/static/logo.PNG`)
  t.same(Buffer.from(await png.arrayBuffer()), PNG, 'binary body intact')
  const spaced = await fetch(`${s.url}/static/hello%20world.txt`)
  t.equal(await spaced.text(), 'spaced', 'percent-decoded name')
})

t.test('index files and the redirect for a directory without its slash', async (t) => {
  const s = await start(t)
  const root = await fetch(`${s.url}/static/`)
  t.equal(root.status, 200)
  t.equal(root.headers.get('content-type'), 'text/html; charset=utf-8')
  t.equal(await root.text(), '<h1>home</h1>')
  const docs = await fetch(`${s.url}/static/docs/`)
  t.equal(await docs.text(), '<h1>docs</h1>')

  const moved = await fetch(`${s.url}/static/docs?x=1`, { redirect: 'manual' })
  t.equal(moved.status, 301)
  t.equal(moved.headers.get('location'), '/static/docs/')
  t.equal(await moved.text(), '')
  const followed = await fetch(`${s.url}/static/docs`)
  t.equal(await followed.text(), '<h1>docs</h1>', 'the redirect leads to the index')

  const noIndex = await fetch(`${s.url}/static/no-index/`)
  t.equal(noIndex.status, 404, 'a directory without an index file is not listed')
  await noIndex.text()
  const fileAsDir = await fetch(`${s.url}/static/notes.txt/`)
  t.equal(fileAsDir.status, 404, 'a file with a trailing slash')
  await fileAsDir.text()
})

t.test('missing files, a missing base, and paths outside the route are 404', async (t) => {
  const s = await start(t)
  const paths = ['/static/nope.txt', '/static/docs/nope/', '/elsewhere', '/static', '/nobase/x']
  for (const path of paths) {
    const res = await fetch(s.url + path)
    t.equal(res.status, 404, path)
    t.equal(await res.text(), 'Not Found\n', path)
  }
  t.ok(
    s.logs.some((l) => l.msg === 'dir base does not exist'),
    'a missing base is logged',
  )
})

t.test('UTF-8 file names, percent-encoded or raw', async (t) => {
  const s = await start(t)
  const encoded = await rawOne(s.port, 'GET', '/static/caf%C3%A9.txt')
  t.equal(encoded.body.toString(), 'accented')
  const bare = await rawOne(s.port, 'GET', '/static/café.txt')
  t.equal(bare.body.toString(), 'accented')
  const latin1 = await rawOne(s.port, 'GET', '/static/caf%E9.txt')
  t.equal(latin1.status, 404, 'bytes that are not UTF-8')
})

t.test('escapes from the base are refused with 404, raw on the wire', async (t) => {
  const s = await start(t)
  const escapes = [
    '/static/../secret.txt',
    '/static/%2e%2e/secret.txt',
    '/static/%2E%2e%2fsecret.txt',
    '/static/docs/../../secret.txt',
    '/static/docs/..%2f..%2fsecret.txt',
    '/static/..%5csecret.txt',
    '/static/notes.txt%00.png',
    '/static/%ff.txt',
    '/static/link-out',
    '/static/dir-out/secret.txt',
    '/static/sibling',
  ]
  for (const path of escapes) {
    const reply = await rawOne(s.port, 'GET', path)
    t.equal(reply.status, 404, path)
    t.notMatch(reply.body.toString(), /secret|evil/, path)
  }
  const inside = await rawOne(s.port, 'GET', '/static/link-inside')
  t.equal(inside.status, 200, 'a symlink that stays inside the base is served')
  t.equal(inside.body.toString(), '0123456789abcdefghij')
  const dotted = await rawOne(s.port, 'GET', '/static/./docs/./guide.txt')
  t.equal(dotted.status, 200, "'.' segments are harmless")
  t.ok(
    s.logs.some((l) => l.msg === 'path outside the dir base refused'),
    'symlink escapes are logged',
  )
})

t.test('ETag then If-None-Match is 304 without a body', async (t) => {
  const s = await start(t)
  const first = await fetch(`${s.url}/static/notes.txt`)
  const etag = first.headers.get('etag')!
  t.match(etag, /^"[0-9a-f]+-14"$/, 'strong, "mtime-size" in hex')
  t.equal(first.headers.get('cache-control'), 'max-age=60')
  t.equal(first.headers.get('accept-ranges'), 'bytes')
  await first.text()

  for (const inm of [etag, `"nope", ${etag}`, `W/${etag}`, '*']) {
    const reply = await rawOne(s.port, 'GET', '/static/notes.txt', [`If-None-Match: ${inm}`])
    t.equal(reply.status, 304, inm)
    t.equal(reply.headers.get('etag'), etag, `${inm}: ETag on the 304`)
    t.equal(reply.headers.get('cache-control'), 'max-age=60', `${inm}: Cache-Control on the 304`)
    t.equal(reply.headers.get('transfer-encoding'), undefined, `${inm}: not chunked`)
  }
  const changed = await fetch(`${s.url}/static/notes.txt`, {
    headers: { 'if-none-match': '"other"' },
  })
  t.equal(changed.status, 200)
  t.equal(await changed.text(), '0123456789abcdefghij')

  const head = await rawOne(s.port, 'HEAD', '/static/notes.txt', [`If-None-Match: ${etag}`])
  t.equal(head.status, 304, 'HEAD too')

  const plain = await fetch(`${s.url}/nocache/notes.txt`)
  t.equal(plain.headers.get('cache-control'), null, 'no Cache-Control when cacheTtl is 0')
  await plain.text()
})

t.test('If-Modified-Since is 304 unless the file is newer or the date is bad', async (t) => {
  const s = await start(t)
  const first = await fetch(`${s.url}/static/notes.txt`)
  const lastModified = first.headers.get('last-modified')!
  t.match(lastModified, /^\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT$/)
  await first.text()

  const get = (headers: Record<string, string>) =>
    fetch(`${s.url}/static/notes.txt`, { headers }).then(async (r) => {
      await r.text()
      return r.status
    })
  t.equal(await get({ 'if-modified-since': lastModified }), 304, 'same date')
  t.equal(await get({ 'if-modified-since': 'Sat, 01 Jan 2000 00:00:00 GMT' }), 200, 'older')
  t.equal(await get({ 'if-modified-since': 'Fri, 01 Jan 2100 00:00:00 GMT' }), 200, 'future')
  t.equal(await get({ 'if-modified-since': 'yesterday-ish' }), 200, 'unreadable')
  t.equal(
    await get({ 'if-modified-since': lastModified, 'if-none-match': '"other"' }),
    200,
    'If-None-Match wins over If-Modified-Since',
  )
  t.equal(await get({ 'if-match': '"other"' }), 412, 'If-Match that does not match')
  t.equal(await get({ 'if-match': first.headers.get('etag')! }), 200, 'If-Match that matches')
  t.equal(
    await get({ 'if-unmodified-since': 'Sat, 01 Jan 2000 00:00:00 GMT' }),
    412,
    'If-Unmodified-Since before the file changed',
  )
})

t.test('Range: first, open-ended, suffix, clipped, unsatisfiable, several, If-Range', async (t) => {
  const s = await start(t)
  const get = async (range: string, extra: Record<string, string> = {}) => {
    const r = await fetch(`${s.url}/static/notes.txt`, { headers: { range, ...extra } })
    return { status: r.status, cr: r.headers.get('content-range'), body: await r.text() }
  }
  t.same(await get('bytes=0-4'), { status: 206, cr: 'bytes 0-4/20', body: '01234' })
  t.same(await get('bytes=15-'), { status: 206, cr: 'bytes 15-19/20', body: 'fghij' })
  t.same(await get('bytes=-3'), { status: 206, cr: 'bytes 17-19/20', body: 'hij' })
  t.same(await get('bytes=-50'), { status: 206, cr: 'bytes 0-19/20', body: '0123456789abcdefghij' })
  t.same(await get('bytes=18-99'), { status: 206, cr: 'bytes 18-19/20', body: 'ij' })
  t.same(await get('bytes=20-'), { status: 416, cr: 'bytes */20', body: 'Range Not Satisfiable\n' })
  t.same(await get('bytes=-0'), { status: 416, cr: 'bytes */20', body: 'Range Not Satisfiable\n' })
  const whole = { status: 200, cr: null, body: '0123456789abcdefghij' }
  t.same(await get('bytes=0-1, 5-6'), whole, 'several ranges: the whole file')
  t.same(await get('bytes=5-2'), whole, 'a reversed range is ignored')
  t.same(await get('lines=1-2'), whole, 'another unit is ignored')

  const etag = (await fetch(`${s.url}/static/notes.txt`, { method: 'HEAD' })).headers.get('etag')!
  t.equal((await get('bytes=0-1', { 'if-range': etag })).status, 206, 'If-Range: same ETag')
  t.same(await get('bytes=0-1', { 'if-range': '"stale"' }), whole, 'If-Range: stale ETag')
  t.same(await get('bytes=0-1', { 'if-range': 'Sat, 01 Jan 2000 00:00:00 GMT' }), whole)

  const empty = await fetch(`${s.url}/static/empty.txt`, { headers: { range: 'bytes=0-' } })
  t.equal(empty.status, 416, 'no byte of an empty file can be had')
  await empty.text()

  const head = await rawOne(s.port, 'HEAD', '/static/notes.txt', ['Range: bytes=0-4'])
  t.equal(head.status, 200, 'Range is for GET only')
})

t.test('HEAD answers the same headers and no body', async (t) => {
  const s = await start(t)
  const get = await rawOne(s.port, 'GET', '/static/notes.txt')
  // Same connection: a stray body byte after the HEAD reply would corrupt the next response.
  const [head, next] = await raw(s.port, [
    { method: 'HEAD', path: '/static/notes.txt' },
    { method: 'GET', path: '/static/style.css' },
  ])
  t.equal(head!.status, 200)
  t.equal(head!.headers.get('content-length'), '20')
  for (const name of ['content-type', 'etag', 'last-modified', 'cache-control', 'accept-ranges']) {
    t.equal(head!.headers.get(name), get.headers.get(name), name)
  }
  t.equal(next!.status, 200, 'the pipelined request after HEAD is intact')
  t.equal(next!.body.toString(), 'body{}')

  const [missing, after] = await raw(s.port, [
    { method: 'HEAD', path: '/static/nope' },
    { method: 'GET', path: '/static/style.css' },
  ])
  t.equal(missing!.status, 404)
  t.equal(after!.body.toString(), 'body{}', 'no body after a HEAD 404 either')

  const empty = await rawOne(s.port, 'GET', '/static/empty.txt')
  t.equal(empty.status, 200)
  t.equal(empty.headers.get('content-length'), '0')
})

t.test('methods other than GET and HEAD are 405 with Allow', async (t) => {
  const s = await start(t)
  for (const method of ['POST', 'PUT', 'DELETE', 'OPTIONS']) {
    const res = await fetch(`${s.url}/static/notes.txt`, { method })
    t.equal(res.status, 405, method)
    t.equal(res.headers.get('allow'), 'GET, HEAD', method)
    await res.text()
  }
})

t.test('a 5 MB file arrives byte-exact, whole and as a range', async (t) => {
  const s = await start(t)
  const data = randomBytes(5 * 1024 * 1024)
  writeFileSync(join(s.dir, 'public', 'big.bin'), data)
  const sha = (b: Buffer | Uint8Array) => createHash('sha256').update(b).digest('hex')

  const res = await fetch(`${s.url}/static/big.bin`)
  t.equal(res.headers.get('content-length'), String(data.length))
  t.equal(sha(Buffer.from(await res.arrayBuffer())), sha(data))

  const part = await fetch(`${s.url}/static/big.bin`, { headers: { range: 'bytes=1000-3000999' } })
  t.equal(part.status, 206)
  t.equal(sha(Buffer.from(await part.arrayBuffer())), sha(data.subarray(1000, 3001000)))

  // Two at once share the loop; each still gets its own bytes.
  const both = await Promise.all(
    [0, 1].map(() => fetch(`${s.url}/static/big.bin`).then((r) => r.arrayBuffer())),
  )
  for (const body of both) t.equal(sha(Buffer.from(body)), sha(data))
})

/** A 32 MB file, sparse but for random first and last MiB, far beyond the socket buffers. */
function makeHuge(dir: string): Buffer {
  const size = 32 * 1024 * 1024
  const expected = Buffer.alloc(size)
  randomBytes(1 << 20).copy(expected, 0)
  randomBytes(1 << 20).copy(expected, size - (1 << 20))
  const fd = openSync(join(dir, 'public', 'huge.bin'), 'w')
  writeSync(fd, expected, 0, 1 << 20, 0)
  writeSync(fd, expected, size - (1 << 20), 1 << 20, size - (1 << 20))
  truncateSync(join(dir, 'public', 'huge.bin'), size)
  closeSync(fd)
  return expected
}

t.test('a client slower than the disk gets every byte, through backpressure', async (t) => {
  const s = await start(t)
  const expected = makeHuge(s.dir)
  const sock = connect(s.port, '127.0.0.1')
  sock.pause()
  const stalled = once(s.events, 'stall')
  sock.write(wire('GET', '/static/huge.bin', ['Connection: close']))
  await stalled
  t.pass('uWS was full and serve() waited for onWritable')
  const parts: Buffer[] = []
  sock.on('data', (d: Buffer) => parts.push(d))
  sock.resume()
  await once(sock, 'close')
  const reply = Buffer.concat(parts)
  const end = reply.indexOf('\r\n\r\n')
  t.match(reply.subarray(0, end).toString(), /^HTTP\/1\.1 200 OK\r\n/)
  t.match(reply.subarray(0, end).toString(), `Content-Length: ${expected.length}`)
  const body = reply.subarray(end + 4)
  t.equal(body.length, expected.length)
  t.ok(body.equals(expected), 'byte-exact')
})

t.test('a client that aborts mid-download does not crash the server', async (t) => {
  const s = await start(t)
  makeHuge(s.dir)
  // Gone after the first bytes, while serve() reads the next chunk or waits for uWS.
  for (let i = 0; i < 3; i++) {
    const aborted = once(s.events, 'aborted')
    const sock = connect(s.port, '127.0.0.1')
    sock.once('data', () => sock.destroy())
    sock.write(wire('GET', '/static/huge.bin'))
    await aborted
  }
  t.pass('each abort reached serve()')
  // Gone while serve() waits for onWritable.
  const sock = connect(s.port, '127.0.0.1')
  sock.pause()
  const stalled = once(s.events, 'stall')
  sock.write(wire('GET', '/static/huge.bin'))
  await stalled
  const aborted = once(s.events, 'aborted')
  sock.destroy()
  await aborted
  t.pass('the abort reached serve() while it waited')

  const res = await fetch(`${s.url}/static/notes.txt`)
  t.equal(res.status, 200, 'the next request still works')
  t.equal(await res.text(), '0123456789abcdefghij')
  t.same(
    s.logs.filter((l) => l.level >= 50),
    [],
    'nothing logged at error',
  )
})
