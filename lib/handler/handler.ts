/**
 * @module A library for writing Bareku/Mongrel2 handlers in Node: receive requests, send replies.
 *
 *   frontend PUSH (send_spec) ──request──> handler PULL   (connect)
 *   frontend SUB  (recv_spec) <──reply──── handler XPUB   (connect)
 *
 *   const h = await connectHandler(handlerOptionsFromEnv())
 *   for await (const req of h) await h.replyHttp(req, 200, { 'Content-Type': 'text/plain' }, 'hi')
 *
 * The reply side is an XPUB, which is a PUB that also hears the frontend's subscription. A PUB
 * that has just connected drops every message until the SUB's subscription has been processed
 * (ZeroMQ's slow joiner), so the first replies would vanish; the send queue holds replies until
 * the subscription has arrived. Sends are serialised through that one queue because zeromq.js
 * allows one pending send per socket.
 *
 * A request is "in flight" from when it is yielded until a final reply to its connection
 * (replyHttp, the end of a stream, acceptWebSocket, close, or done). drain() stops taking requests,
 * waits for the in-flight ones, flushes and closes.
 *
 * The drain protocol, for handlers in any language (what the Bareku frontend relies on):
 *   1. on SIGTERM, close the PULL at once (linger 0): the frontend sends this process nothing
 *      more; what libzmq had queued but the app had not read is lost, and the frontend treats
 *      it as lost (below);
 *   2. finish the requests in hand and send their replies on the PUB, which stays open;
 *   3. close the PUB (with a linger long enough to flush) and exit, before the worker's SIGKILL.
 * The frontend retries (GET/HEAD without a body) or answers 502 the requests a closed PULL took
 * and never answered: at once when the process is seen gone (its PUB closed too, within 250 ms,
 * or no PUB is left), else after limits.handler_lost_grace (default 5 s). So a draining handler
 * should answer within that grace.
 */
import { randomUUID } from 'node:crypto'
import { Pull, XPublisher } from 'zeromq'
import { AppError } from '../errors.js'
import { createLogger, type Logger } from '../log.js'
import {
  encodeExtendedReply,
  encodeReply,
  isDisconnect,
  MAX_TARGETS,
  parseRequest,
  type HandlerRequest,
} from '../protocol/mongrel2.js'
import type { TnetValue } from '../protocol/tnetstring.js'
import { acceptKey, encodeClose, encodeFrame, OPCODE } from '../protocol/websocket.js'
import { onShutdown } from '../shutdown.js'
import {
  buildHttpResponse,
  buildStreamHead,
  buildWebSocketAccept,
  connectionAfter,
  encodeChunk,
  firstHeader,
  LAST_CHUNK,
  responseSaysClose,
  type ResponseHeaders,
} from './http.js'

/** Where the handler connects and how it names itself. */
export interface HandlerOptions {
  /** The frontend's PUSH endpoint (its send_spec); the handler's PULL connects here. */
  sendSpec: string
  /** The frontend's SUB endpoint (its recv_spec); the handler's XPUB connects here. */
  recvSpec: string
  /** The uuid put in every reply (letters, digits and "-"); default a random UUID. */
  senderId?: string
  /** Default `createLogger('handler')`. */
  log?: Logger
}

/** HandlerOptions with every default filled in, as handlerOptionsFromEnv returns them. */
export type HandlerEndpoints = Required<Omit<HandlerOptions, 'log'>>

/** A request as the handler yields it: the parsed message plus what apps usually ask of it. */
export interface IncomingRequest extends HandlerRequest {
  /** The METHOD header (`GET`, `WEBSOCKET`, `JSON`, ...), or '' when the message has none. */
  method: string
  /** The frontend's notice that this connection is gone: forget the id. */
  isDisconnect: boolean
  /** One WebSocket frame (METHOD WEBSOCKET); see wsOpcode. */
  isWebSocket: boolean
  /** A WebSocket upgrade to answer with acceptWebSocket (METHOD WEBSOCKET_HANDSHAKE). */
  isWebSocketHandshake: boolean
  /** The FLAGS header as a number (`0x81` is 129): the frame's first byte. */
  wsFlags: number | undefined
  /** The frame's opcode (`wsFlags & 0x0f`), to compare with OPCODE. */
  wsOpcode: number | undefined
}

/** One connection: a request, or `{ connId }`. */
export interface Target {
  readonly connId: number
}

/** One connection, or several ids (an array or a Set). */
export type Targets = Target | Iterable<number>

/** What drain() did. */
export interface DrainResult {
  /** True when every in-flight request was answered before the timeout. */
  drained: boolean
  /** Requests still in flight when the handler closed. */
  inFlight: number
}

/** Options of replyHttp. */
export interface ReplyHttpOptions {
  /** Reason phrase; default the standard one. */
  reason?: string
  /** Close the connection after the response; default from the request and response headers. */
  close?: boolean
  /** Send headers only; default true when the request is a HEAD. */
  head?: boolean
}

/** A streamed response: the head went out already, each write is one message. */
export interface ResponseStream {
  /** Sends one chunk as its own message. An empty chunk sends nothing. */
  write(chunk: Buffer | string): Promise<void>
  /** Sends the terminating chunk (and closes the connection when it must); a final reply. */
  end(): Promise<void>
}

const ENV_SEND = 'BAREKU_HANDLER_SEND_SPEC'
const ENV_RECV = 'BAREKU_HANDLER_RECV_SPEC'
const ENV_SENDER = 'BAREKU_HANDLER_SENDER_ID'
const UUID_RE = /^[A-Za-z0-9-]+$/
const ENDPOINT_RE = /^(tcp|ipc|inproc|ws|wss):\/\/\S+$/
/** How long a closed XPUB keeps trying to hand queued replies to the frontend. */
const PUB_LINGER_MS = 500
/** How long drain waits for the send queue after the requests are done. */
const FLUSH_TIMEOUT_MS = 1000
const EMPTY = Buffer.alloc(0)

function checkSenderId(id: string, from: string): string {
  if (!UUID_RE.test(id)) {
    throw new AppError(
      'E_HANDLER',
      `${from} may hold only letters, digits and "-" (Mongrel2's reply grammar), got ${JSON.stringify(id.slice(0, 60))} (e.g. ${from}=${randomUUID()})`,
    )
  }
  return id
}

function checkSpec(spec: string, name: string, example: string): string {
  if (!ENDPOINT_RE.test(spec)) {
    throw new AppError(
      'E_HANDLER',
      `${name} must be a ZeroMQ endpoint, got ${JSON.stringify(spec.slice(0, 100))} (e.g. ${name}=${example})`,
    )
  }
  return spec
}

/**
 * Handler options from the environment: BAREKU_HANDLER_SEND_SPEC (the frontend's PUSH, which the
 * handler's PULL connects to), BAREKU_HANDLER_RECV_SPEC (the frontend's SUB, which the handler's
 * PUB connects to), BAREKU_HANDLER_SENDER_ID (default a random UUID). Throws E_HANDLER.
 */
export function handlerOptionsFromEnv(env: NodeJS.ProcessEnv = process.env): HandlerEndpoints {
  const spec = (name: string, what: string, example: string): string => {
    const value = env[name]
    if (value === undefined || value === '') {
      throw new AppError(
        'E_HANDLER',
        `${name} is not set; it must be ${what} (e.g. ${name}=${example})`,
      )
    }
    return checkSpec(value, name, example)
  }
  const sendSpec = spec(
    ENV_SEND,
    "the frontend's PUSH endpoint that this handler's PULL connects to",
    'tcp://127.0.0.1:9997',
  )
  const recvSpec = spec(
    ENV_RECV,
    "the frontend's SUB endpoint that this handler's PUB connects to",
    'tcp://127.0.0.1:9996',
  )
  const sender = env[ENV_SENDER]
  const senderId =
    sender === undefined || sender === '' ? randomUUID() : checkSenderId(sender, ENV_SENDER)
  return { sendSpec, recvSpec, senderId }
}

function parseFlags(value: unknown): number | undefined {
  if (typeof value !== 'string' || !/^0x[0-9a-f]{1,2}$/i.test(value)) return undefined
  return parseInt(value.slice(2), 16)
}

/** Adds the convenience fields of IncomingRequest to a parsed request. */
export function toIncomingRequest(req: HandlerRequest): IncomingRequest {
  const m = req.headers.METHOD
  const method = typeof m === 'string' ? m : ''
  const wsFlags = parseFlags(req.headers.FLAGS)
  return {
    ...req,
    method,
    isDisconnect: isDisconnect(req),
    isWebSocket: method === 'WEBSOCKET',
    isWebSocketHandshake: method === 'WEBSOCKET_HANDSHAKE',
    wsFlags,
    wsOpcode: wsFlags === undefined ? undefined : wsFlags & 0x0f,
  }
}

// Notices, frames and the later messages of one upload belong to no new request.
function startsRequest(req: IncomingRequest): boolean {
  if (req.path === '@*' || req.isWebSocket) return false
  if (req.headers['x-mongrel2-upload-done'] !== undefined) return false
  const stream = req.headers.UPLOAD_STREAM
  return stream === undefined || stream === '0'
}

function isTarget(t: Targets): t is Target {
  return typeof (t as Partial<Target>).connId === 'number'
}

function idsOf(targets: Targets): number[] {
  return isTarget(targets) ? [targets.connId] : [...targets]
}

function groups(ids: readonly number[]): number[][] {
  const out: number[][] = []
  for (let i = 0; i < ids.length; i += MAX_TARGETS) out.push(ids.slice(i, i + MAX_TARGETS))
  return out
}

function requestOf(target: Target): HandlerRequest | undefined {
  const t = target as Partial<HandlerRequest>
  return typeof t.headers === 'object' && t.headers !== null
    ? (target as HandlerRequest)
    : undefined
}

interface Queued {
  msg: Buffer
  resolve: () => void
  reject: (err: Error) => void
}

/** One ordered queue in front of the XPUB; run() is the only caller of send(). */
class SendQueue {
  private readonly items: Queued[] = []
  private running = false
  private failure: Error | undefined
  private idleWaiters: (() => void)[] = []

  constructor(
    private readonly sock: XPublisher,
    private readonly gate: Promise<void>,
  ) {}

  get length(): number {
    return this.items.length
  }

  push(msgs: readonly Buffer[]): Promise<void> {
    if (this.failure !== undefined) return Promise.reject(this.failure)
    const done = msgs.map(
      (msg) => new Promise<void>((resolve, reject) => this.items.push({ msg, resolve, reject })),
    )
    void this.run()
    return Promise.all(done).then(() => undefined)
  }

  idle(): Promise<void> {
    if (this.items.length === 0 && !this.running) return Promise.resolve()
    return new Promise((resolve) => this.idleWaiters.push(resolve))
  }

  fail(err: Error): void {
    this.failure = err
    for (const item of this.items.splice(0)) item.reject(err)
    this.wakeIdle()
  }

  private wakeIdle(): void {
    const waiters = this.idleWaiters
    this.idleWaiters = []
    for (const w of waiters) w()
  }

  private async run(): Promise<void> {
    if (this.running) return
    this.running = true
    try {
      await this.gate
      for (let item = this.items[0]; item !== undefined; item = this.items[0]) {
        try {
          await this.sock.send(item.msg)
          this.items.shift()
          item.resolve()
        } catch (err) {
          this.items.shift()
          item.reject(
            this.failure ??
              new AppError('E_HANDLER', `reply could not be queued: ${(err as Error).message}`, {
                cause: err,
              }),
          )
        }
      }
    } finally {
      this.running = false
      this.wakeIdle()
    }
  }
}

/**
 * A connected handler. Iterate it for requests (once); reply with the methods below. Every reply
 * resolves once queued to ZeroMQ and rejects with E_HANDLER after the handler closed.
 */
export class Handler implements AsyncIterable<IncomingRequest> {
  /** The uuid in every reply. */
  readonly senderId: string
  private readonly log: Logger
  private readonly pull: Pull
  private readonly pub: XPublisher
  private readonly queue: SendQueue
  private readonly inFlightByConn = new Map<number, number>()
  private inFlightTotal = 0
  private idleWaiters: (() => void)[] = []
  private subscribed!: () => void
  private finish!: () => void
  private readonly finished: Promise<void>
  private draining: Promise<DrainResult> | undefined
  private iterated = false
  private closed = false

  /** Connects both sockets; use connectHandler. */
  constructor(
    readonly options: Readonly<HandlerEndpoints>,
    log: Logger,
  ) {
    this.senderId = options.senderId
    this.log = log
    this.pull = new Pull({ linger: 0 })
    // noDrop: a full queue waits (back-pressure on the send promise) instead of losing replies.
    this.pub = new XPublisher({ linger: PUB_LINGER_MS, noDrop: true })
    const gate = new Promise<void>((resolve) => (this.subscribed = resolve))
    this.finished = new Promise<void>((resolve) => (this.finish = resolve))
    this.queue = new SendQueue(this.pub, gate)
    const { sendSpec, recvSpec } = options
    try {
      this.pull.connect(sendSpec)
      this.pub.connect(recvSpec)
    } catch (err) {
      this.shutdown()
      throw new AppError(
        'E_HANDLER',
        `cannot connect to ${sendSpec} / ${recvSpec}: ${(err as Error).message} (e.g. tcp://127.0.0.1:9997)`,
        { cause: err },
      )
    }
    void this.watchSubscriptions()
    this.log.info({ sendSpec, recvSpec, senderId: this.senderId }, 'connecting')
  }

  // Keeps a receive pending on the XPUB: that is also what makes it process the subscription.
  private async watchSubscriptions(): Promise<void> {
    try {
      for await (const [msg] of this.pub) {
        if (msg?.[0] === 1 && !this.closed) {
          this.log.info({ recvSpec: this.options.recvSpec }, 'connected')
          this.subscribed()
        }
      }
    } catch (err) {
      if (!this.closed) this.log.error({ err }, 'subscription watch failed')
    }
  }

  /** Requests in flight: yielded and not yet given a final reply. */
  get inFlight(): number {
    return this.inFlightTotal
  }

  /** Yields requests until drain() or close(); a message that does not parse is logged and dropped. */
  async *[Symbol.asyncIterator](): AsyncGenerator<IncomingRequest, void, undefined> {
    if (this.iterated) {
      throw new AppError(
        'E_HANDLER',
        'a handler can be iterated only once; keep one for-await loop and dispatch from it',
      )
    }
    this.iterated = true
    for await (const frames of this.pull) {
      const req = this.accept(frames)
      if (req !== undefined) yield req
    }
    await this.finished
  }

  private accept(frames: Buffer[]): IncomingRequest | undefined {
    const [msg] = frames
    if (msg === undefined || frames.length !== 1) {
      this.log.warn({ code: 'E_M2_REQUEST', frames: frames.length }, 'dropped request')
      return undefined
    }
    let req: IncomingRequest
    try {
      req = toIncomingRequest(parseRequest(msg))
    } catch (err) {
      if (!(err instanceof AppError)) throw err
      this.log.warn({ code: err.code, reason: err.message, bytes: msg.length }, 'dropped request')
      return undefined
    }
    this.log.debug({ conn: req.connId, method: req.method, path: req.path }, 'request')
    if (req.isDisconnect) {
      this.forget(req.connId)
    } else if (startsRequest(req)) {
      this.inFlightByConn.set(req.connId, (this.inFlightByConn.get(req.connId) ?? 0) + 1)
      this.inFlightTotal++
    }
    return req
  }

  private settle(connId: number, all = false): void {
    const n = this.inFlightByConn.get(connId)
    if (n === undefined) return
    const left = all ? 0 : n - 1
    this.inFlightTotal -= n - left
    if (left === 0) this.inFlightByConn.delete(connId)
    else this.inFlightByConn.set(connId, left)
    if (this.inFlightTotal === 0) this.wakeIdle()
  }

  private forget(connId: number): void {
    this.settle(connId, true)
  }

  private wakeIdle(): void {
    const waiters = this.idleWaiters
    this.idleWaiters = []
    for (const w of waiters) w()
  }

  // Every body goes to every id, in order, queued at once so nothing else slips in between.
  private send(ids: readonly number[], bodies: readonly (Buffer | string)[]): Promise<void> {
    if (this.closed) return Promise.reject(this.closedError())
    const msgs = bodies.flatMap((body) =>
      groups(ids).map((g) => encodeReply({ uuid: this.senderId, connIds: g, body })),
    )
    this.log.debug({ conns: ids.length, messages: msgs.length }, 'reply')
    return this.queue.push(msgs)
  }

  private sendMany(id: number, bodies: readonly Buffer[]): Promise<void> {
    return this.send([id], bodies)
  }

  private closedError(): AppError {
    return new AppError(
      'E_HANDLER',
      'handler is closed; replies can be sent only before drain() finishes or close() is called',
    )
  }

  /** Raw bytes to one connection. An empty body closes it (see close). */
  async reply(target: Target, body: Buffer | string): Promise<void> {
    await this.send([target.connId], [body])
    if (body.length === 0) this.forget(target.connId)
  }

  /**
   * A whole HTTP/1.1 response with Content-Length; a final reply. A HEAD request gets the headers
   * only. After a response to HTTP/1.0 without keep-alive, `Connection: close` (request or
   * response), or a refused WebSocket handshake, the connection is closed.
   */
  async replyHttp(
    target: Target,
    status: number,
    headers: ResponseHeaders = {},
    body: Buffer | string = EMPTY,
    opts: ReplyHttpOptions = {},
  ): Promise<void> {
    const req = requestOf(target)
    const after = req === undefined ? 'keep' : connectionAfter(req.headers)
    const refusedUpgrade = req?.headers.METHOD === 'WEBSOCKET_HANDSHAKE' && status !== 101
    const close = opts.close ?? (after === 'close' || refusedUpgrade || responseSaysClose(headers))
    const bytes = buildHttpResponse(status, headers, body, {
      reason: opts.reason,
      head: opts.head ?? req?.headers.METHOD === 'HEAD',
      close,
      keepAlive10: after === 'keep-alive10',
    })
    const id = target.connId
    await this.sendMany(id, close ? [bytes, EMPTY] : [bytes])
    if (close) this.forget(id)
    else this.settle(id)
  }

  /**
   * Starts a streamed response: the status and headers now, with `Transfer-Encoding: chunked`
   * (for an HTTP/1.0 request: no framing, and the connection is closed at the end). Each write is
   * one chunk in its own message; end() sends the last chunk and is the final reply.
   */
  stream(target: Target, status: number, headers: ResponseHeaders = {}): ResponseStream {
    const req = requestOf(target)
    const after = req === undefined ? 'keep' : connectionAfter(req.headers)
    const chunked = req === undefined || firstHeader(req.headers, 'VERSION') !== 'HTTP/1.0'
    const head = req?.headers.METHOD === 'HEAD'
    const close = after === 'close' || !chunked || responseSaysClose(headers)
    const id = target.connId
    const headSent = this.sendMany(id, [
      buildStreamHead(status, headers, chunked, { close, keepAlive10: after === 'keep-alive10' }),
    ])
    // The head's failure is reported by the next write or end; this only stops it going unhandled.
    headSent.catch(() => undefined)
    let ended = false
    const next = (bodies: Buffer[]): Promise<void> => {
      if (ended) {
        return Promise.reject(new AppError('E_HANDLER', `stream to connection ${id} already ended`))
      }
      return Promise.all([headSent, this.sendMany(id, bodies)]).then(() => undefined)
    }
    return {
      write: (chunk) => {
        if (head || chunk.length === 0) return next([])
        const bytes = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk
        return next([chunked ? encodeChunk(bytes) : bytes])
      },
      end: () => {
        const tail = head || !chunked ? [] : [LAST_CHUNK]
        const sent = next(close ? [...tail, EMPTY] : tail)
        ended = true
        return sent.then(() => (close ? this.forget(id) : this.settle(id)))
      },
    }
  }

  /** The same bytes to many connections: one message per 128 ids. */
  deliver(connIds: Iterable<number>, body: Buffer | string): Promise<void> {
    const ids = [...connIds]
    if (ids.length === 0) return Promise.resolve()
    return this.send(ids, [body]).then(() => {
      if (body.length === 0) for (const id of ids) this.forget(id)
    })
  }

  /** Closes the handler at once: no more requests, queued replies dropped, sockets closed. */
  close(): Promise<void>
  /** Closes connections: the empty message, after what was already sent to them. */
  close(targets: Targets): Promise<void>
  close(...args: [] | [Targets]): Promise<void> {
    if (args.length === 0) {
      this.shutdown()
      return Promise.resolve()
    }
    const [targets] = args
    if (targets === undefined || targets === null) {
      return Promise.reject(
        new AppError(
          'E_HANDLER',
          'close(targets) got no targets; pass a request, { connId } or ids, or call close() to close the handler',
        ),
      )
    }
    return this.deliver(idsOf(targets), EMPTY)
  }

  /** Marks a request answered without a reply from this library (e.g. answered elsewhere). */
  done(target: Target): void {
    this.settle(target.connId)
  }

  /**
   * Answers a WEBSOCKET_HANDSHAKE with the 101 response; a final reply. Sec-WebSocket-Accept is
   * the request body (Mongrel2 computes it), or computed from sec-websocket-key if the body is empty.
   */
  async acceptWebSocket(req: IncomingRequest, opts: { protocol?: string } = {}): Promise<void> {
    if (!req.isWebSocketHandshake) {
      throw new AppError(
        'E_HANDLER',
        `acceptWebSocket needs a WEBSOCKET_HANDSHAKE request, got METHOD ${JSON.stringify(req.method)}; check req.isWebSocketHandshake first`,
      )
    }
    let accept = req.body.toString('latin1')
    if (accept === '') {
      const key = firstHeader(req.headers, 'sec-websocket-key')
      if (key === undefined) {
        throw new AppError(
          'E_HANDLER',
          'WebSocket handshake has neither an accept key body nor a sec-websocket-key header',
        )
      }
      accept = acceptKey(key)
    }
    await this.send([req.connId], [buildWebSocketAccept(accept, opts.protocol)])
    this.settle(req.connId)
  }

  /** One unmasked WebSocket frame to one or many connections (one message per 128 ids). */
  async sendFrame(
    targets: Targets,
    opcode: number,
    payload: Buffer | string = EMPTY,
  ): Promise<void> {
    await this.deliver(idsOf(targets), encodeFrame({ opcode, payload }))
  }

  /** A text frame. */
  sendText(targets: Targets, text: string): Promise<void> {
    return this.sendFrame(targets, OPCODE.TEXT, text)
  }

  /** A binary frame. */
  sendBinary(targets: Targets, data: Buffer): Promise<void> {
    return this.sendFrame(targets, OPCODE.BINARY, data)
  }

  /** Answers a ping frame with a pong carrying the same payload. */
  pong(req: IncomingRequest): Promise<void> {
    return this.sendFrame(req, OPCODE.PONG, req.body)
  }

  /** A close frame, then the empty message that closes the connection; a final reply. */
  async closeWebSocket(targets: Targets, code?: number, reason?: string): Promise<void> {
    const ids = idsOf(targets)
    await this.send(ids, [encodeClose(code, reason), EMPTY])
    for (const id of ids) this.forget(id)
  }

  /**
   * An extended control reply (`["ctl", value]`), e.g. `{ 'keep-alive': true }` or
   * `{ credits: 16384 }`; `{ cancel: ... }` also ends the requests in flight on those connections.
   */
  async ctl(targets: Targets, value: { [key: string]: TnetValue }): Promise<void> {
    if (this.closed) throw this.closedError()
    const ids = idsOf(targets)
    await this.queue.push(
      groups(ids).map((g) => encodeExtendedReply(this.senderId, g, 'ctl', value)),
    )
    if ('cancel' in value) for (const id of ids) this.forget(id)
  }

  /**
   * Graceful stop: closes the PULL (the frontend's PUSH then routes to other handlers), waits until
   * nothing is in flight or `timeoutMs` passed, flushes the replies, closes, and ends the
   * iteration. Calling it again returns the same promise.
   */
  drain(timeoutMs = 10_000): Promise<DrainResult> {
    this.draining ??= this.runDrain(timeoutMs)
    return this.draining
  }

  private async runDrain(timeoutMs: number): Promise<DrainResult> {
    if (this.closed) return { drained: this.inFlightTotal === 0, inFlight: this.inFlightTotal }
    this.pull.close()
    this.log.info({ inFlight: this.inFlightTotal, timeoutMs }, 'draining')
    const drained = await this.waitIdle(timeoutMs)
    const inFlight = this.inFlightTotal
    if (drained) this.log.info('drained')
    else this.log.warn({ inFlight }, 'drain timed out')
    const flushed = await within(this.queue.idle(), FLUSH_TIMEOUT_MS)
    if (!flushed) this.log.warn({ queued: this.queue.length }, 'replies not flushed')
    this.shutdown()
    return { drained, inFlight }
  }

  private waitIdle(timeoutMs: number): Promise<boolean> {
    if (this.inFlightTotal === 0 || this.closed) return Promise.resolve(this.inFlightTotal === 0)
    return within(new Promise<void>((resolve) => this.idleWaiters.push(resolve)), timeoutMs)
  }

  /**
   * On SIGTERM or SIGINT: drain, then exit 0 (a second signal, or drain plus flush overrunning its
   * deadline, exits 1 at once).
   */
  drainOnSignal(opts: { timeoutMs?: number } = {}): void {
    const timeoutMs = opts.timeoutMs ?? 10_000
    onShutdown(
      this.log,
      () => this.drain(timeoutMs).then(() => undefined),
      timeoutMs + FLUSH_TIMEOUT_MS + PUB_LINGER_MS + 1000,
    )
  }

  private shutdown(): void {
    if (this.closed) return
    this.closed = true
    this.queue.fail(this.closedError())
    this.subscribed()
    this.pull.close()
    this.pub.close()
    this.wakeIdle()
    this.finish()
    this.log.info({ inFlight: this.inFlightTotal }, 'closed')
  }
}

function within(p: Promise<void>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(resolve, ms, false)))
  return Promise.race([p.then(() => true), timeout]).finally(() => clearTimeout(timer))
}

/**
 * Connects a handler to a frontend (default: the endpoints in the environment). Resolves at once:
 * requests arrive when the frontend is up, and replies wait until its SUB has subscribed.
 */
export function connectHandler(opts?: HandlerOptions): Promise<Handler> {
  try {
    const o: HandlerOptions = opts ?? handlerOptionsFromEnv()
    const options = {
      sendSpec: checkSpec(o.sendSpec, 'sendSpec', 'tcp://127.0.0.1:9997'),
      recvSpec: checkSpec(o.recvSpec, 'recvSpec', 'tcp://127.0.0.1:9996'),
      senderId: checkSenderId(o.senderId ?? randomUUID(), 'senderId'),
    }
    return Promise.resolve(new Handler(options, o.log ?? createLogger('handler')))
  } catch (err) {
    return Promise.reject(err instanceof Error ? err : new Error(String(err)))
  }
}
