/**
 * @module A lean HTTP/1.1 client for proxy routes: `node:net` sockets to one backend, kept alive
 * in a pool, each request written as one preformatted buffer and each response read with the
 * project's ResponseParser. node:http's client builds a ClientRequest, an IncomingMessage and
 * their streams per request and serialises the headers itself; a proxy already has the head's
 * bytes and wants parsed events, so all of that is skipped.
 *
 *   pool.send(req) ──idle stack (LIFO)──> Conn ──one write: head [+ complete body]──> backend
 *                  ──or a new Conn (up to maxSockets), or the wait queue (FIFO)
 *   req.write / req.end ──streamed body: raw (Content-Length) or chunked──> backend
 *   Conn read ──ResponseParser.push──> handler.response(req, events)        one call per read
 *   'end' event, keep-alive, nothing unread ──> Conn back on the stack, or to the next waiter
 *
 * Failures reach handler.error as an UpstreamError whose `failure` says how far the request got:
 *   'connect'   refused, unreachable, unresolvable, or connect timeout: nothing was sent
 *   'stale'     a reused keep-alive connection ended or reset before any response byte: the
 *               backend had closed it as idle just as the request went out
 *   'timeout'   no byte from the backend for responseTimeoutMs
 *   'response'  a malformed response, or an unasked-for 101
 *   'closed'    the connection ended or reset after the request went out
 * The first two are safe to send again when the request is idempotent (`retryable`). The pool
 * itself resends a retryable request once, on a fresh connection, after 'stale'.
 *
 * Timeouts are counted in ticks of one interval per pool, running while the pool has
 * connections, instead of a timer per request: a request only stamps its connection with the
 * current tick, and a sweep finds the silent ones. A timeout therefore fires between its
 * nominal time and one tick (a quarter of the shortest timeout, at most a second) later; an idle
 * connection is closed up to one tick before idleTimeoutMs, so always ahead of the backend.
 */
import net, { type Socket } from 'node:net'
import { ResponseParser, type ResponseEvent } from '../lib/protocol/http-response.js'

/** How far a failed request got; see the module comment. */
export type UpstreamFailure = 'connect' | 'stale' | 'timeout' | 'response' | 'closed'

/** A request that got no complete response. */
export class UpstreamError extends Error {
  readonly failure: UpstreamFailure
  /** The errno code (ECONNREFUSED, ECONNRESET, ETIMEDOUT...) or E_UPSTREAM_* / E_HTTP_RESPONSE. */
  readonly code: string

  constructor(failure: UpstreamFailure, code: string, message: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause })
    this.name = 'UpstreamError'
    this.failure = failure
    this.code = code
  }

  /** Nothing reached the application: an idempotent request may be sent again. */
  get retryable(): boolean {
    return this.failure === 'connect' || this.failure === 'stale'
  }
}

/**
 * What a pool reports about a request. One object serves any number of requests (the request is
 * an argument), so the hot path allocates no callback per request. Calls come from socket events,
 * the timeout sweep and `pool.close()`, or from a call on another request that frees a connection
 * for a waiting one (its `drain`); never from inside a call on the same request.
 */
export interface UpstreamHandler {
  /**
   * The response events one read completed, in order: 'informational' heads (to skip or pass
   * on), the final 'head', 'data' chunks (views into the read buffer: copy what is kept past the
   * call) and finally 'end', after which nothing more is reported for the request. A 101 head
   * never arrives here: it is a 'response' failure.
   */
  response(req: UpstreamRequest, events: readonly ResponseEvent[]): void
  /** The request failed; nothing more is reported for it. */
  error(req: UpstreamRequest, err: UpstreamError): void
  /** A `write` that returned false has been flushed to the backend. */
  drain(req: UpstreamRequest): void
}

/**
 * How the body after the head is framed: 'none' when the request is complete as sent (no body,
 * or `body` set), 'length' for raw bytes counted by the head's Content-Length, 'chunked' when the
 * head says `Transfer-Encoding: chunked` and `write` should frame each chunk.
 */
export type BodyFraming = 'none' | 'length' | 'chunked'

/** Default maxSockets. */
export const DEFAULT_MAX_SOCKETS = 256
/** Default connectTimeoutMs. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 5000
/** Default responseTimeoutMs. */
export const DEFAULT_RESPONSE_TIMEOUT_MS = 60_000
/**
 * Default idleTimeoutMs: below node:http servers' own 5 s keep-alive timeout, so the pool closes
 * an idle connection before the backend can close it under a request.
 */
export const DEFAULT_IDLE_TIMEOUT_MS = 4000

const LAST_CHUNK = Buffer.from('0\r\n\r\n')

/**
 * Every connection reads into this one buffer (net's `onread`), which spares node's allocation of
 * a buffer per read and its stream machinery; reads are handled one at a time, synchronously. The
 * parser keeps views of a read only while a head or trailer line is incomplete, so a read is
 * pushed as a copy unless its response is inside a Content-Length or close-delimited body.
 */
const READ_BUFFER = Buffer.allocUnsafeSlow(64 * 1024)
const CRLF = 0x0a0d // '\r\n' as a little-endian uint16
/** Largest body copied into one buffer with its head; a larger one is not copied again. */
const ONE_BUFFER_MAX = 16 * 1024

const KEEP_ALIVE = 'keep-alive'

/** A 10-letter header name is Keep-Alive, in any case, without a lowercase copy. */
function isKeepAlive(name: string): boolean {
  // OR-ing 0x20 lowercases letters and leaves '-'; no other token char maps onto those.
  for (let i = 0; i < 10; i++) {
    if ((name.charCodeAt(i) | 0x20) !== KEEP_ALIVE.charCodeAt(i)) return false
  }
  return true
}

// Request states.
const NEW = 0
const QUEUED = 1
const ACTIVE = 2
const DONE = 3

/**
 * One request. Set `head` (and `body` or `framing`) before `pool.send`; a caller may subclass it
 * to carry its own state, as the proxy's exchange does, so that one object is the whole request.
 */
export class UpstreamRequest {
  readonly handler: UpstreamHandler
  /** The method, so that a response to HEAD is read without a body. */
  readonly method: string
  /**
   * Request line, header lines and the empty line. A string is written as latin1, one byte per
   * char, so it must hold bytes, not text beyond U+00FF; a Buffer is written as it is.
   */
  head: string | Buffer = ''
  /**
   * A complete body, written with the head, in the same buffer when small (the head must frame
   * it). Kept until the request is done, so that it can be resent.
   */
  body: Buffer | undefined = undefined
  /** Framing of a body streamed after the head with write() and end(). */
  framing: BodyFraming = 'none'
  /**
   * Safe to send twice (an idempotent method, no streamed body): resent after a 'stale' failure.
   * The pool never resends a request whose framing is not 'none'.
   */
  retryable: boolean

  // The rest belongs to the pool.
  /** @internal */ conn: Conn | undefined = undefined
  /** @internal */ pool: UpstreamPool | undefined = undefined
  /** @internal */ state = NEW
  /** Body frames written before a connection was assigned. @internal */
  pending: Buffer[] | undefined = undefined
  /** @internal */ needDrain = false
  /** @internal */ bodyEnded = false
  /** @internal */ paused = false
  /** Already resent once after a stale connection. @internal */
  resent = false

  constructor(handler: UpstreamHandler, method: string, retryable = false) {
    this.handler = handler
    this.method = method
    this.retryable = retryable
  }

  /**
   * Sends the next piece of a streamed body; the bytes are copied, so the caller may reuse its
   * buffer. Returns false when the caller should wait for handler.drain before writing more.
   * Pieces written before `send` follow the head.
   */
  write(chunk: Uint8Array): boolean {
    if (this.state === DONE || this.bodyEnded || chunk.length === 0) return true
    let frame: Buffer
    if (this.framing === 'chunked') {
      // size CRLF data CRLF, framed and copied in one allocation
      const size = chunk.length.toString(16)
      frame = Buffer.allocUnsafe(size.length + chunk.length + 4)
      let at = frame.write(size, 0, 'latin1')
      at = frame.writeUInt16LE(CRLF, at)
      frame.set(chunk, at)
      frame.writeUInt16LE(CRLF, at + chunk.length)
    } else {
      frame = Buffer.from(chunk)
    }
    return this.#frame(frame)
  }

  /** Ends a streamed body (for 'chunked', writes the last chunk). */
  end(): void {
    if (this.state === DONE || this.bodyEnded) return
    this.bodyEnded = true
    if (this.framing === 'chunked') this.#frame(LAST_CHUNK)
  }

  /** Stops reading the response (the backend's socket buffer fills, and it waits). */
  pause(): void {
    this.paused = true
    const conn = this.conn
    if (conn !== undefined && !conn.paused) {
      conn.paused = true
      conn.socket.pause()
    }
  }

  /** Reads the response again after pause(). */
  resume(): void {
    this.paused = false
    const conn = this.conn
    if (conn !== undefined && conn.paused) {
      conn.paused = false
      conn.socket.resume()
    }
  }

  /**
   * Gives the request up: a queued one leaves the queue, a sent one closes its connection (the
   * backend sees the client go). Nothing more is reported. A finished request is left alone.
   */
  abort(): void {
    const state = this.state
    this.state = DONE
    if (state === QUEUED) this.pool?.dequeue(this)
    else if (state === ACTIVE) {
      const conn = this.conn!
      this.conn = undefined
      conn.req = undefined
      conn.pool.drop(conn)
    }
  }

  #frame(frame: Buffer): boolean {
    const conn = this.conn
    if (conn === undefined) {
      // No connection yet: kept, to follow the head. A queued request's caller is asked to wait,
      // as the queue may be long; one not sent yet goes out with its head when it is.
      ;(this.pending ??= []).push(frame)
      if (this.state !== QUEUED) return true
      this.needDrain = true
      return false
    }
    conn.tick = conn.pool.tick
    if (conn.socket.write(frame)) return true
    this.needDrain = true
    return false
  }
}

/** One connection to the backend, with its parser, for its whole life. @internal */
class Conn {
  readonly socket: Socket
  readonly pool: UpstreamPool
  readonly parser = new ResponseParser()
  req: UpstreamRequest | undefined = undefined
  connected = false
  /** Has carried a request before the current one. */
  reused = false
  /** A byte of the current request's response has arrived. */
  gotBytes = false
  /** The current response's head allows another request on this connection. */
  keepAlive = false
  paused = false
  /** Inside a body the parser passes through as views: a read needs no copy. */
  direct = false
  /** Ticks this connection may stay idle: the pool's, or less if the backend said so. */
  idleTicks = 0
  /** Tick of the last sign of life (request sent, byte read); a sweep compares it. */
  tick: number
  error: NodeJS.ErrnoException | undefined = undefined

  constructor(socket: Socket, pool: UpstreamPool) {
    this.socket = socket
    this.pool = pool
    this.tick = pool.tick
  }
}

/** Settings for one backend's pool; times are milliseconds. */
export interface UpstreamPoolOptions {
  host: string
  port: number
  /** Most connections at once; requests beyond wait in a queue. Default 256. */
  maxSockets?: number
  /** A new connection not made in this time fails with 'connect' (ETIMEDOUT). Default 5000. */
  connectTimeoutMs?: number
  /** Longest silence from the backend while a request is out: 'timeout'. Default 60000. */
  responseTimeoutMs?: number
  /** An idle connection is closed after this long. Default 4000. */
  idleTimeoutMs?: number
  /**
   * False: every request gets a new connection, closed after its response (the head should say
   * `Connection: close`). Default true.
   */
  keepAlive?: boolean
}

/** The connections to one backend and the requests waiting for one. */
export class UpstreamPool {
  readonly host: string
  readonly port: number
  readonly maxSockets: number
  readonly keepAlive: boolean
  /** Current tick of the timeout sweep. @internal */
  tick = 0
  readonly #connectTimeoutMs: number
  readonly #responseTimeoutMs: number
  readonly #tickMs: number
  readonly #connectTicks: number
  readonly #responseTicks: number
  readonly #idleTicks: number
  readonly #conns = new Set<Conn>()
  /** Idle connections, the most recently used last: it is taken first, so the rest age out. */
  readonly #idle: Conn[] = []
  readonly #waiting: UpstreamRequest[] = []
  #timer: NodeJS.Timeout | undefined = undefined
  #closed = false
  /** The last Keep-Alive value parsed, and its idle ticks. */
  #hint = ''
  #hintTicks = 0

  constructor(opts: UpstreamPoolOptions) {
    this.host = opts.host
    this.port = opts.port
    this.maxSockets = opts.maxSockets ?? DEFAULT_MAX_SOCKETS
    this.keepAlive = opts.keepAlive ?? true
    this.#connectTimeoutMs = opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS
    this.#responseTimeoutMs = opts.responseTimeoutMs ?? DEFAULT_RESPONSE_TIMEOUT_MS
    const idleMs = opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS
    const shortest = Math.min(this.#connectTimeoutMs, this.#responseTimeoutMs, idleMs)
    this.#tickMs = Math.min(1000, Math.max(5, Math.floor(shortest / 4)))
    // A stamp taken during tick k is between k and k+1 ticks old at tick k+1: fire one tick late
    // rather than early for the two failures, and one tick early for idle connections.
    this.#connectTicks = Math.ceil(this.#connectTimeoutMs / this.#tickMs)
    this.#responseTicks = Math.ceil(this.#responseTimeoutMs / this.#tickMs)
    this.#idleTicks = Math.max(0, Math.floor(idleMs / this.#tickMs) - 1)
  }

  /** Connections open (or opening), idle ones among them, and requests waiting for one. */
  get stats(): { open: number; idle: number; waiting: number } {
    return { open: this.#conns.size, idle: this.#idle.length, waiting: this.#waiting.length }
  }

  /**
   * Sends `req` on an idle connection, a new one, or when one frees up. A request may be sent
   * again (to this pool or another) after its handler.error, e.g. to another backend.
   */
  send(req: UpstreamRequest): void {
    req.state = NEW
    req.pool = this
    req.conn = undefined
    req.resent = false
    if (this.#closed) {
      req.state = DONE
      const err = new UpstreamError('closed', 'E_UPSTREAM_CLOSED', 'upstream pool closed')
      process.nextTick(() => req.handler.error(req, err))
      return
    }
    const conn = this.#idle.pop()
    if (conn !== undefined) return this.#assign(conn, req)
    if (this.#conns.size < this.maxSockets) return this.#assign(this.#open(), req)
    req.state = QUEUED
    this.#waiting.push(req)
  }

  /** Closes every connection; requests in flight or queued fail with 'closed'. */
  close(): void {
    if (this.#closed) return
    this.#closed = true
    this.#stopTimer()
    const waiting = this.#waiting.splice(0)
    const message = 'upstream pool closed'
    for (const conn of this.#conns) {
      const req = conn.req
      if (req !== undefined) this.#fail(conn, req, 'closed', 'E_UPSTREAM_CLOSED', message)
      else this.drop(conn)
    }
    for (const req of waiting) {
      req.state = DONE
      req.handler.error(req, new UpstreamError('closed', 'E_UPSTREAM_CLOSED', message))
    }
  }

  /** @internal */
  dequeue(req: UpstreamRequest): void {
    const i = this.#waiting.indexOf(req)
    if (i >= 0) this.#waiting.splice(i, 1)
  }

  /**
   * Closes a connection and frees its slot at once (its 'close' event comes later), then gives
   * the slot to the oldest waiter. @internal
   */
  drop(conn: Conn): void {
    if (!this.#forget(conn)) return
    conn.socket.destroy()
    this.#serveWaiter()
  }

  /** Takes a connection out of the books; false if it was already out. */
  #forget(conn: Conn): boolean {
    if (!this.#conns.delete(conn)) return false
    const i = this.#idle.lastIndexOf(conn)
    if (i >= 0) this.#idle.splice(i, 1)
    if (this.#conns.size === 0) this.#stopTimer()
    return true
  }

  #serveWaiter(): void {
    if (this.#closed || this.#waiting.length === 0 || this.#conns.size >= this.maxSockets) return
    this.#assign(this.#open(), this.#waiting.shift()!)
  }

  #open(): Conn {
    // Per-connection listeners: made once per socket, not per request.
    const onRead = (n: number): boolean => {
      // A copy when the parser may keep views of it, else a view of the shared buffer.
      const view = READ_BUFFER.subarray(0, n)
      this.#onData(conn, conn.direct ? view : Buffer.from(view))
      return true
    }
    const socket = net.connect({
      port: this.port,
      host: this.host,
      onread: { buffer: READ_BUFFER, callback: onRead },
    })
    socket.setNoDelay(true)
    const conn = new Conn(socket, this)
    socket.on('connect', () => {
      conn.connected = true
      conn.tick = this.tick
    })
    socket.on('end', () => this.#onEnd(conn))
    socket.on('error', (err: NodeJS.ErrnoException) => (conn.error ??= err))
    socket.on('close', () => this.#onClose(conn))
    socket.on('drain', () => this.#onDrain(conn))
    this.#conns.add(conn)
    this.#timer ??= setInterval(() => this.#sweep(), this.#tickMs).unref()
    return conn
  }

  #assign(conn: Conn, req: UpstreamRequest): void {
    conn.req = req
    conn.gotBytes = false
    conn.keepAlive = false
    conn.direct = false
    conn.tick = this.tick
    req.conn = conn
    req.state = ACTIVE
    conn.parser.expect(req.method)
    const socket = conn.socket
    const head = req.head
    const body = req.body
    let ok: boolean
    if (body !== undefined && body.length > ONE_BUFFER_MAX) {
      // Too big to copy again: head and body go out together as one writev.
      socket.cork()
      socket.write(typeof head === 'string' ? Buffer.from(head, 'latin1') : head)
      ok = socket.write(body)
      socket.uncork()
    } else if (body !== undefined && body.length > 0) {
      // One buffer, so a small request leaves in one segment. A string head is latin1: one byte
      // per char.
      const headLen = head.length
      const buf = Buffer.allocUnsafe(headLen + body.length)
      if (typeof head === 'string') buf.write(head, 0, 'latin1')
      else head.copy(buf, 0)
      body.copy(buf, headLen)
      ok = socket.write(buf)
    } else {
      ok = typeof head === 'string' ? socket.write(head, 'latin1') : socket.write(head)
    }
    const pending = req.pending
    if (pending !== undefined) {
      req.pending = undefined
      for (const frame of pending) ok = socket.write(frame)
    }
    if (req.paused) {
      conn.paused = true
      socket.pause()
    }
    if (ok && req.needDrain) {
      req.needDrain = false
      req.handler.drain(req)
    }
  }

  #onData(conn: Conn, chunk: Buffer): void {
    const req = conn.req
    if (req === undefined) {
      // Bytes between responses: the connection is out of step with its requests.
      this.drop(conn)
      return
    }
    conn.gotBytes = true
    conn.tick = this.tick
    let events: ResponseEvent[]
    try {
      events = conn.parser.push(chunk)
    } catch (err) {
      return this.#fail(conn, req, 'response', 'E_HTTP_RESPONSE', (err as Error).message, err)
    }
    let end = -1
    for (let i = 0; i < events.length; i++) {
      const e = events[i]!
      if (e.type === 'end') {
        end = i
        conn.direct = false
        break
      }
      if (e.type === 'head') {
        const head = e.head
        if (head.status === 101) {
          return this.#fail(conn, req, 'response', 'E_UPSTREAM_101', 'unrequested 101 response')
        }
        conn.keepAlive = head.keepAlive
        if (head.keepAlive) conn.idleTicks = this.#idleTicksFor(head.headers)
        conn.direct = head.framing === 'length' || head.framing === 'close'
      }
    }
    if (end >= 0 && end + 1 < events.length) {
      // A second response nobody asked for: not passed on, and the connection is not reused.
      events.length = end + 1
      conn.keepAlive = false
    }
    req.handler.response(req, events)
    if (end >= 0 && conn.req === req) this.#release(conn, req)
  }

  /** The backend closed its side: the end of a close-delimited body, or a failure. */
  #onEnd(conn: Conn): void {
    const req = conn.req
    if (req === undefined) {
      this.drop(conn)
      return
    }
    let events: ResponseEvent[]
    try {
      events = conn.parser.finish()
    } catch (err) {
      return this.#fail(conn, req, 'closed', 'E_UPSTREAM_CLOSED', (err as Error).message, err)
    }
    if (events.length > 0) {
      conn.keepAlive = false
      req.handler.response(req, events)
      if (conn.req === req) this.#release(conn, req)
      return
    }
    // Nothing at all came back: an idle connection the backend closed as our request went out.
    if (conn.reused && !conn.gotBytes) {
      return this.#fail(conn, req, 'stale', 'ECONNRESET', 'reused connection closed by the backend')
    }
    this.#fail(conn, req, 'closed', 'E_UPSTREAM_CLOSED', 'connection closed without a response')
  }

  /** The socket is gone; unless this side closed it, its request (if any) failed. */
  #onClose(conn: Conn): void {
    if (!this.#forget(conn)) return
    const req = conn.req
    if (req !== undefined) {
      conn.req = undefined
      const err = conn.error
      const code = err?.code ?? 'ECONNRESET'
      const message = err?.message ?? 'connection closed'
      let failure: UpstreamFailure = 'closed'
      if (!conn.connected) failure = 'connect'
      else if (conn.reused && !conn.gotBytes) failure = 'stale'
      this.#failed(req, new UpstreamError(failure, code, message, err))
    }
    this.#serveWaiter()
  }

  /**
   * How long a connection may idle after this head: `Keep-Alive: timeout=N` (seconds) is the
   * backend's own idle limit, and the connection is closed a second ahead of it, as node:http's
   * Agent does; -1 when that leaves no time at all.
   */
  #idleTicksFor(headers: readonly [string, string][]): number {
    for (let i = 0; i < headers.length; i++) {
      const [name, value] = headers[i]!
      if (name.length !== 10 || !isKeepAlive(name)) continue
      // A backend sends the same value every time: parsed once.
      if (value === this.#hint) return this.#hintTicks
      const at = value.indexOf('timeout=')
      const seconds = at < 0 ? NaN : parseInt(value.slice(at + 8), 10)
      if (!(seconds >= 0)) break
      const ms = seconds * 1000 - 1000
      this.#hint = value
      this.#hintTicks = ms <= 0 ? -1 : Math.min(this.#idleTicks, Math.floor(ms / this.#tickMs) - 1)
      return this.#hintTicks
    }
    return this.#idleTicks
  }

  #onDrain(conn: Conn): void {
    const req = conn.req
    if (req === undefined || !req.needDrain) return
    req.needDrain = false
    req.handler.drain(req)
  }

  /** The response ended: the connection goes back to the pool if it is clean, else closes. */
  #release(conn: Conn, req: UpstreamRequest): void {
    conn.req = undefined
    conn.reused = true
    req.conn = undefined
    req.state = DONE
    if (
      !conn.keepAlive ||
      conn.idleTicks < 0 ||
      !this.keepAlive ||
      this.#closed ||
      !conn.parser.idle ||
      // A body still on its way would be read as the next request.
      (req.framing !== 'none' && !req.bodyEnded)
    ) {
      this.drop(conn)
      return
    }
    if (conn.paused) {
      conn.paused = false
      conn.socket.resume()
    }
    const next = this.#waiting.shift()
    if (next !== undefined) return this.#assign(conn, next)
    conn.tick = this.tick
    this.#idle.push(conn)
  }

  /** A failure this side found: the connection is closed and the handler told. */
  #fail(
    conn: Conn,
    req: UpstreamRequest,
    failure: UpstreamFailure,
    code: string,
    message: string,
    cause?: unknown,
  ): void {
    conn.req = undefined
    // Freed before the handler hears of it, so a resend finds the slot.
    if (this.#forget(conn)) conn.socket.destroy()
    this.#failed(req, new UpstreamError(failure, code, message, cause))
    this.#serveWaiter()
  }

  #failed(req: UpstreamRequest, err: UpstreamError): void {
    req.conn = undefined
    if (
      err.failure === 'stale' &&
      req.retryable &&
      req.framing === 'none' &&
      !req.resent &&
      !this.#closed
    ) {
      // Sent again at once on a new connection: the other idle ones may be just as stale.
      req.resent = true
      return this.#assign(this.#open(), req)
    }
    req.state = DONE
    req.handler.error(req, err)
  }

  #sweep(): void {
    const tick = ++this.tick
    for (const conn of this.#conns) {
      const age = tick - conn.tick
      const req = conn.req
      if (!conn.connected) {
        if (age <= this.#connectTicks) continue
        const message = `connect to ${this.host}:${this.port} timed out after ${this.#connectTimeoutMs} ms`
        if (req !== undefined) this.#fail(conn, req, 'connect', 'ETIMEDOUT', message)
        else this.drop(conn)
      } else if (req !== undefined) {
        if (age <= this.#responseTicks) continue
        const message = `no response from ${this.host}:${this.port} for ${this.#responseTimeoutMs} ms`
        this.#fail(conn, req, 'timeout', 'ETIMEDOUT', message)
      } else if (age > conn.idleTicks) {
        this.drop(conn)
      }
    }
  }

  #stopTimer(): void {
    if (this.#timer === undefined) return
    clearInterval(this.#timer)
    this.#timer = undefined
  }
}
