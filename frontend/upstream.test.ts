/**
 * @module Tests for the proxy's upstream client, against real node:http servers (and, where a
 * server must misbehave, raw node:net ones) on 127.0.0.1 port 0.
 *
 *   UpstreamPool ──net──> node:http server (counts its 'connection' events)
 */
import http from 'node:http'
import net from 'node:net'
import { createHash, randomBytes } from 'node:crypto'
import t, { type Test } from 'tap'
import type { ResponseHead } from '../lib/protocol/http-response.js'
import {
  UpstreamError,
  UpstreamPool,
  UpstreamRequest,
  type UpstreamHandler,
  type UpstreamPoolOptions,
} from './upstream.js'

/** Rejects after `ms` unless `p` settles first; the timer never outlives the race. */
async function within<T>(what: string, p: Promise<T>, ms = 5000): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms)
  })
  try {
    return await Promise.race([p, timeout])
  } finally {
    clearTimeout(timer)
  }
}

/** Waits for `cond` with short awaits, failing after `ms`: a bounded poll, not a sleep. */
async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

/** A promise and the function that resolves it. */
function gate(): { open: () => void; opened: Promise<void> } {
  let open!: () => void
  const opened = new Promise<void>((resolve) => (open = resolve))
  return { open, opened }
}

interface Result {
  head: ResponseHead
  body: Buffer
  sha256: string
  /** Reads that delivered this response's events. */
  reads: number
}

/** A request that collects its response; `result` settles on 'end' or on error. */
class TestRequest extends UpstreamRequest {
  response: ResponseHead | undefined = undefined
  readonly parts: Buffer[] = []
  readonly hash = createHash('sha256')
  reads = 0
  /** Keep the body's bytes (false: only hash them, for large bodies). */
  keep = true
  onDrain: (() => void) | undefined = undefined
  onData: ((req: TestRequest) => void) | undefined = undefined
  readonly result: Promise<Result>
  resolve!: (r: Result) => void
  reject!: (err: UpstreamError) => void

  constructor(method: string, head: string, retryable = false) {
    super(handler, method, retryable)
    this.head = head
    this.result = new Promise<Result>((resolve, reject) => {
      this.resolve = resolve
      this.reject = reject
    })
    // Tests that expect an error await it; the rest would fail on the rejection anyway.
    this.result.catch(() => {})
  }
}

const handler: UpstreamHandler = {
  response(req, events) {
    const r = req as TestRequest
    r.reads++
    for (const e of events) {
      if (e.type === 'head') r.response = e.head
      else if (e.type === 'data') {
        // Views of the pool's read buffer: copied to be kept.
        if (r.keep) r.parts.push(Buffer.from(e.chunk))
        r.hash.update(e.chunk)
        r.onData?.(r)
      } else if (e.type === 'end') {
        r.resolve({
          head: r.response!,
          body: Buffer.concat(r.parts),
          sha256: r.hash.digest('hex'),
          reads: r.reads,
        })
      }
    }
  },
  error(req, err) {
    ;(req as TestRequest).reject(err)
  },
  drain(req) {
    ;(req as TestRequest).onDrain?.()
  },
}

interface TestServer {
  port: number
  server: http.Server
  /** TCP connections accepted so far. */
  connections: number
  sockets: Set<net.Socket>
}

async function startServer(t: Test, listener: http.RequestListener): Promise<TestServer> {
  const server = http.createServer(listener)
  const s: TestServer = { port: 0, server, connections: 0, sockets: new Set() }
  server.on('connection', (socket: net.Socket) => {
    s.connections++
    s.sockets.add(socket)
    socket.on('close', () => s.sockets.delete(socket))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  s.port = (server.address() as net.AddressInfo).port
  t.teardown(async () => {
    const closed = new Promise<void>((resolve) => server.close(() => resolve()))
    server.closeAllConnections()
    await closed
  })
  return s
}

/** A raw TCP server: `onRequest` gets the socket once a request head has arrived. */
async function startRawServer(t: Test, onRequest: (s: net.Socket, head: string) => void) {
  const sockets = new Set<net.Socket>()
  let connections = 0
  const server = net.createServer((s) => {
    connections++
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
    s.on('error', () => {})
    let got = ''
    s.on('data', (d) => {
      got += d.toString('latin1')
      for (let end = got.indexOf('\r\n\r\n'); end >= 0; end = got.indexOf('\r\n\r\n')) {
        const head = got.slice(0, end)
        got = got.slice(end + 4)
        onRequest(s, head)
      }
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const s of sockets) s.destroy()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
  return { port: (server.address() as net.AddressInfo).port, connections: () => connections }
}

function makePool(t: Test, port: number, opts: Partial<UpstreamPoolOptions> = {}): UpstreamPool {
  const pool = new UpstreamPool({ host: '127.0.0.1', port, ...opts })
  t.teardown(() => pool.close())
  return pool
}

function headFor(method: string, path: string, extra = ''): string {
  return `${method} ${path} HTTP/1.1\r\nhost: test\r\n${extra}\r\n`
}

/** Sends a body-less request and returns its result promise. */
function request(pool: UpstreamPool, method: string, path: string, retryable = true) {
  const req = new TestRequest(method, headFor(method, path), retryable)
  pool.send(req)
  return req.result
}

async function failure(p: Promise<unknown>): Promise<UpstreamError> {
  try {
    await within('the failure', p)
  } catch (err) {
    if (err instanceof UpstreamError) return err
    throw err
  }
  throw new Error('expected the request to fail')
}

function sha256(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex')
}

/** A free port nothing listens on (bound, then closed). */
async function closedPort(): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as net.AddressInfo).port
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

function basicHandler(req: http.IncomingMessage, res: http.ServerResponse): void {
  const url = req.url ?? '/'
  if (url === '/length') {
    res.setHeader('content-length', '11')
    res.end(req.method === 'HEAD' ? undefined : 'hello world')
  } else if (url === '/chunked') {
    res.write('first ')
    setImmediate(() => res.end('second'))
  } else if (url === '/close') {
    // No length and no chunking: node:http delimits the body by closing the connection.
    res.useChunkedEncodingByDefault = false
    res.write('until ')
    res.end('the end')
  } else if (url === '/empty') {
    res.writeHead(204).end()
  } else {
    res.end(`path ${url}`)
  }
}

t.test('sequential requests reuse one keep-alive connection', async (t) => {
  const s = await startServer(t, basicHandler)
  const pool = makePool(t, s.port)
  for (let i = 0; i < 20; i++) {
    const r = await within(`request ${i}`, request(pool, 'GET', `/n${i}`))
    t.equal(r.body.toString(), `path /n${i}`, `request ${i} got its own answer`)
  }
  t.equal(s.connections, 1, 'one connection for all of them')
  t.same(pool.stats, { open: 1, idle: 1, waiting: 0 }, 'it waits idle in the pool')
})

t.test('Content-Length, chunked and close-delimited responses', async (t) => {
  const s = await startServer(t, basicHandler)
  const pool = makePool(t, s.port)

  const length = await within('length', request(pool, 'GET', '/length'))
  t.equal(length.head.framing, 'length')
  t.equal(length.head.status, 200)
  t.equal(length.body.toString(), 'hello world')

  const chunked = await within('chunked', request(pool, 'GET', '/chunked'))
  t.equal(chunked.head.framing, 'chunked')
  t.equal(chunked.body.toString(), 'first second')
  t.equal(s.connections, 1, 'both on the same connection')

  const close = await within('close', request(pool, 'GET', '/close'))
  t.equal(close.head.framing, 'close')
  t.equal(close.body.toString(), 'until the end', 'the body runs to the end of the connection')
  await until('the closed connection to leave the pool', () => pool.stats.open === 0)

  const after = await within('after', request(pool, 'GET', '/length'))
  t.equal(after.body.toString(), 'hello world', 'the next request gets a new connection')
  t.equal(s.connections, 2)
})

t.test('HEAD and 204 responses have no body, and the connection is reused', async (t) => {
  const s = await startServer(t, basicHandler)
  const pool = makePool(t, s.port)
  const head = await within('HEAD', request(pool, 'HEAD', '/length'))
  t.equal(head.head.framing, 'none')
  t.equal(head.head.contentLength, 11, "the backend's Content-Length is reported")
  t.equal(head.body.length, 0, 'no body read')
  const none = await within('204', request(pool, 'GET', '/empty'))
  t.equal(none.head.status, 204)
  t.equal(none.body.length, 0)
  const get = await within('GET', request(pool, 'GET', '/length'))
  t.equal(get.body.toString(), 'hello world', 'the next response is read in step')
  t.equal(s.connections, 1, 'all three on one connection')
})

t.test('a complete body goes with the head; informational heads are passed along', async (t) => {
  const s = await startServer(t, (req, res) => {
    const parts: Buffer[] = []
    req.on('data', (c: Buffer) => parts.push(c))
    req.on('end', () => {
      const body = Buffer.concat(parts)
      res.writeProcessing()
      res.end(body.length < 100 ? `got ${body.toString()}` : `sha256 ${sha256(body)}`)
    })
  })
  const pool = makePool(t, s.port)
  const req = new TestRequest('POST', headFor('POST', '/', 'content-length: 5\r\n'))
  req.body = Buffer.from('hello')
  pool.send(req)
  const r = await within('the answer', req.result)
  t.equal(r.body.toString(), 'got hello')
  t.equal(r.head.status, 200, 'the final head (after a 102) is the one reported as head')

  // Too large to be copied into one buffer with the head: written after it, in the same writev.
  const large = randomBytes(300_000)
  const big = new TestRequest('POST', headFor('POST', '/', `content-length: ${large.length}\r\n`))
  big.body = large
  pool.send(big)
  const answer = await within('the large answer', big.result)
  t.equal(answer.body.toString(), `sha256 ${sha256(large)}`, 'a large complete body, byte-exact')
  t.equal(s.connections, 1, 'both on one connection')
})

t.test('an idle connection the backend closed: the request is resent on a new one', async (t) => {
  const s = await startServer(t, basicHandler)
  const pool = makePool(t, s.port)
  t.equal((await within('first', request(pool, 'GET', '/length'))).body.toString(), 'hello world')
  t.equal(pool.stats.idle, 1)

  // The backend drops its idle connection; the pool has not read the EOF yet when it reuses it.
  s.server.closeIdleConnections()
  const again = await within('resent', request(pool, 'GET', '/length'))
  t.equal(again.body.toString(), 'hello world', 'answered on a fresh connection')
  t.equal(s.connections, 2, 'a second connection was opened for it')

  // A request that is not safe to repeat gets the failure instead.
  s.server.closeIdleConnections()
  const err = await failure(request(pool, 'POST', '/length', false))
  t.equal(err.failure, 'stale', 'classified as a stale keep-alive connection')
  t.ok(err.retryable, 'which a caller may retry when the request is idempotent')
})

t.test('a refused connection is a retryable connect failure', async (t) => {
  const port = await closedPort()
  const pool = makePool(t, port)
  const started = Date.now()
  const err = await failure(request(pool, 'GET', '/'))
  t.equal(err.failure, 'connect')
  t.equal(err.code, 'ECONNREFUSED')
  t.ok(err.retryable, 'nothing reached a backend')
  t.ok(Date.now() - started < 2000, 'reported at once')
  t.equal(pool.stats.open, 0, 'the failed connection is not kept')
})

t.test('a backend that never answers times out after responseTimeoutMs', async (t) => {
  const raw = await startRawServer(t, () => {})
  const pool = makePool(t, raw.port, { responseTimeoutMs: 150 })
  const started = Date.now()
  const err = await failure(request(pool, 'GET', '/'))
  const took = Date.now() - started
  t.equal(err.failure, 'timeout')
  t.equal(err.code, 'ETIMEDOUT')
  t.notOk(err.retryable, 'the backend may have acted on it')
  t.ok(took >= 140, `not before the timeout (${took} ms)`)
  t.ok(took < 2000, `soon after it (${took} ms)`)
})

t.test('a slow response is not timed out while bytes keep coming', async (t) => {
  const s = await startServer(t, (_req, res) => {
    let n = 0
    res.write('.')
    const timer = setInterval(() => {
      if (++n < 6) return void res.write('.')
      clearInterval(timer)
      res.end('done')
    }, 50)
  })
  const pool = makePool(t, s.port, { responseTimeoutMs: 150 })
  const r = await within('the slow response', request(pool, 'GET', '/'))
  t.equal(r.body.toString(), '......done', '300 ms of response, no gap over 150 ms')
})

t.test('malformed responses, an unrequested 101, and bytes after a response', async (t) => {
  const raw = await startRawServer(t, (s, head) => {
    if (head.startsWith('GET /bad')) s.write('HTTP/1.1 abc nonsense\r\n\r\n')
    else if (head.startsWith('GET /switch')) {
      s.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n')
    } else if (head.startsWith('GET /extra')) {
      s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n')
    } else if (head.startsWith('GET /cut')) {
      s.end('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort')
    } else s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok')
  })
  const pool = makePool(t, raw.port)
  const bad = await failure(request(pool, 'GET', '/bad'))
  t.equal(bad.failure, 'response')
  t.equal(bad.code, 'E_HTTP_RESPONSE')
  const switched = await failure(request(pool, 'GET', '/switch'))
  t.equal(switched.failure, 'response', 'a 101 nobody asked for')
  const cut = await failure(request(pool, 'GET', '/cut'))
  t.equal(cut.failure, 'closed', 'a body cut short by the backend')
  t.notOk(cut.retryable)

  const before = raw.connections()
  const extra = await within('extra', request(pool, 'GET', '/extra'))
  t.equal(extra.body.toString(), 'ok', 'the response itself is whole')
  await until('the out-of-step connection to close', () => pool.stats.open === 0)
  t.equal((await within('next', request(pool, 'GET', '/'))).body.toString(), 'ok')
  t.equal(raw.connections(), before + 2, 'the next request did not reuse it')
})

t.test('large streamed request bodies arrive byte-exact, chunked and by length', async (t) => {
  const s = await startServer(t, (req, res) => {
    const hash = createHash('sha256')
    let bytes = 0
    req.on('data', (c: Buffer) => {
      hash.update(c)
      bytes += c.length
    })
    req.on('end', () =>
      res.end(
        JSON.stringify({ bytes, sha256: hash.digest('hex'), te: req.headers['transfer-encoding'] }),
      ),
    )
  })
  const pool = makePool(t, s.port)
  const body = randomBytes(8 << 20)
  for (const framing of ['chunked', 'length'] as const) {
    const extra =
      framing === 'chunked'
        ? 'transfer-encoding: chunked\r\n'
        : `content-length: ${body.length}\r\n`
    const req = new TestRequest('POST', headFor('POST', '/', extra))
    req.framing = framing
    pool.send(req)
    let waits = 0
    // Written in 64 KiB pieces from one reused buffer (write copies), waiting for drain.
    const piece = Buffer.alloc(64 * 1024)
    for (let at = 0; at < body.length; at += piece.length) {
      body.copy(piece, 0, at, at + piece.length)
      if (!req.write(piece)) {
        waits++
        await within('drain', new Promise<void>((resolve) => (req.onDrain = resolve)))
      }
    }
    req.end()
    const r = await within('the digest', req.result, 20_000)
    const seen = JSON.parse(r.body.toString()) as { bytes: number; sha256: string; te?: string }
    t.equal(seen.bytes, body.length, `${framing}: every byte arrived`)
    t.equal(seen.sha256, sha256(body), `${framing}: byte-exact`)
    t.equal(seen.te, framing === 'chunked' ? 'chunked' : undefined)
    t.ok(waits > 0, `${framing}: the writer was told to wait (${waits} times)`)
  }
  t.equal(s.connections, 1, 'both on one connection, reused after a streamed body')
})

t.test('large responses arrive byte-exact, also when paused and resumed', async (t) => {
  const size = 24 << 20
  const payload = randomBytes(size)
  const s = await startServer(t, (req, res) => {
    if (req.url === '/length') res.setHeader('content-length', String(size))
    // write, then end: end(payload) alone would make node:http add a Content-Length.
    res.write(payload)
    res.end()
  })
  const pool = makePool(t, s.port)
  for (const path of ['/length', '/chunked']) {
    const req = new TestRequest('GET', headFor('GET', path))
    req.keep = false
    let paused = 0
    let chunks = 0
    req.onData = (r) => {
      // Every 50th chunk: stop reading for a moment, as the proxy does for a slow client.
      if (++chunks % 50 !== 0) return
      paused++
      r.pause()
      setTimeout(() => r.resume(), 2)
    }
    pool.send(req)
    const r = await within(path, req.result, 20_000)
    t.equal(r.head.framing, path === '/length' ? 'length' : 'chunked')
    t.equal(r.sha256, sha256(payload), `${path}: byte-exact`)
    t.ok(paused > 0, `${path}: paused ${paused} times`)
  }
  t.equal(s.connections, 1, 'the connection was reused after a paused response')
})

t.test('requests beyond maxSockets wait in a queue for a free connection', async (t) => {
  const release = gate()
  let arrived = 0
  const s = await startServer(t, (req, res) => {
    arrived++
    void release.opened.then(() => res.end(`done ${req.url}`))
  })
  const pool = makePool(t, s.port, { maxSockets: 2 })
  const results = [0, 1, 2, 3, 4].map((i) => request(pool, 'GET', `/${i}`))
  t.same(pool.stats, { open: 2, idle: 0, waiting: 3 }, 'two sent, three waiting')
  await until('two requests at the backend', () => arrived === 2)
  const queued = new TestRequest('GET', headFor('GET', '/aborted'))
  pool.send(queued)
  t.equal(pool.stats.waiting, 4)
  queued.abort()
  t.equal(pool.stats.waiting, 3, 'an aborted waiter leaves the queue')
  release.open()
  const bodies = (await within('all five', Promise.all(results))).map((r) => r.body.toString())
  t.same(bodies, ['done /0', 'done /1', 'done /2', 'done /3', 'done /4'], 'each answered')
  t.equal(s.connections, 2, 'never more than two connections')
  t.same(pool.stats, { open: 2, idle: 2, waiting: 0 })
})

t.test('abort closes the connection, and the backend sees it', async (t) => {
  const closed = gate()
  const s = await startServer(t, (req, res) => {
    if (req.url === '/hang') {
      res.on('close', closed.open)
      res.write('partial')
      return
    }
    res.end('ok')
  })
  const pool = makePool(t, s.port)
  const req = new TestRequest('GET', headFor('GET', '/hang'))
  const first = gate()
  req.onData = () => first.open()
  pool.send(req)
  await within('the first bytes', first.opened)
  req.abort()
  await within('the backend to see the close', closed.opened)
  t.pass('the backend saw its request go')
  t.equal((await within('next', request(pool, 'GET', '/'))).body.toString(), 'ok')
})

t.test('close fails what is in flight and refuses new requests', async (t) => {
  const s = await startServer(t, () => {})
  const pool = new UpstreamPool({ host: '127.0.0.1', port: s.port, maxSockets: 1 })
  const inFlight = request(pool, 'GET', '/a')
  const waiting = request(pool, 'GET', '/b')
  await until('the request at the backend', () => s.connections === 1)
  pool.close()
  t.equal((await failure(waiting)).failure, 'closed', 'the waiter')
  t.equal((await failure(inFlight)).failure, 'closed', 'the one in flight')
  t.equal((await failure(request(pool, 'GET', '/c'))).code, 'E_UPSTREAM_CLOSED', 'a new one')
})

t.test('an idle connection is closed after idleTimeoutMs', async (t) => {
  const s = await startServer(t, basicHandler)
  const pool = makePool(t, s.port, { idleTimeoutMs: 200 })
  await within('first', request(pool, 'GET', '/length'))
  t.equal(pool.stats.idle, 1)
  await until('the idle connection to close', () => pool.stats.open === 0, 2000)
  await until('the backend to see it close', () => s.sockets.size === 0)
  t.pass('closed on both ends')
})
