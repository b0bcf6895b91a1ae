/**
 * @module Proxy routes: plain HTTP backends (the `web` processes of apps, on $PORT) behind the
 * frontend. Owns the choice of backend (round robin over the healthy ones), one keep-alive
 * connection pool per backend (frontend/upstream.ts), the health checks, and the streaming of
 * each request and response between a uWS client connection and its backend, with backpressure
 * both ways.
 *
 *   client ──uWS onData──> serve ──pick (round robin, healthy)──> UpstreamPool ──> backend
 *   client <──uWS end / tryEnd / write, one cork per read (more if it does not fit: cork-room.ts)──
 *             handler.response (paused while the client is full)
 *   every healthIntervalMs: GET healthPath on each backend, on a new connection; 2xx-4xx up,
 *   anything else down
 *
 * The hot path is kept lean: the upstream head is one string built once per request and written
 * with its body (when that is complete in its first piece) as one buffer, the events of one
 * upstream read are written to the client under one cork when they fit, and a response whose
 * body came with its head leaves as one `end`. One handler object serves every request of the
 * route.
 *
 * Before the response starts, failures get the frontend's own answer: 502 (connection failed,
 * malformed response), 504 (no answer within responseTimeoutMs), 503 with Retry-After (no healthy
 * backend), 413 (body over maxBodyBytes), 400 (conflicting Content-Length headers). After it has
 * started, the client connection is closed, so a cut-short body never looks complete.
 */
import { STATUS_CODES } from 'node:http'
import type { HealthCheck, ProxyTarget } from '../lib/config/routes.js'
import { AppError } from '../lib/errors.js'
import type { Logger } from '../lib/log.js'
import type { ResponseEvent, ResponseHead } from '../lib/protocol/http-response.js'
import {
  UpstreamPool,
  UpstreamRequest,
  type UpstreamError,
  type UpstreamHandler,
} from './upstream.js'
import {
  corkIsFresh,
  freshCork,
  lineTooLong,
  MAX_LINE_BYTES,
  takeCork,
  takePiece,
} from './cork-room.js'
import { latin1Bytes, type HttpResponse } from './uws.js'

/** What the frontend reads from uWS's request before calling `serve` (uWS's req dies after). */
export interface ProxyRequest {
  /** Uppercase, e.g. GET. */
  method: string
  /** The path plus `?query`, as received. */
  url: string
  /** (name, value) pairs, names lowercase, in arrival order. */
  headers: [string, string][]
  remoteAddr: string
  /** The Host header ('' when absent). */
  host: string
}

/** Settings for one proxy route; times are milliseconds. */
export interface ProxyOptions {
  log: Logger
  /** Path probed on each backend. Default '/'. */
  healthPath?: string
  /** Time between two probes of a backend. Default: the check's intervalMs, else 2000. */
  healthIntervalMs?: number
  /** A probe not answered in this time marks the backend down. Default 1000. */
  healthTimeoutMs?: number
  /**
   * A new upstream connection not made in this time fails (502) and marks the backend down.
   * Default 5000.
   */
  connectTimeoutMs?: number
  /** Longest silence from a backend, before or during its response (504 before). Default 60000. */
  responseTimeoutMs?: number
  /** Most connections to one backend; requests beyond wait for a free one. Default 256. */
  maxSockets?: number
  /** Largest request body passed on; over it: 413. Default: no limit. */
  maxBodyBytes?: number
  /**
   * The app's own health check (app.json): probes use its path, method and timeout, and a backend
   * is up only with its status (and body match). A route with one counts as failed after
   * `attempts` failed probes before any passed. Default: GET healthPath, 2xx-4xx is up.
   */
  check?: HealthCheck
  /**
   * With no healthy backend, a request without a body waits this long for one to come up
   * before its 503 (a web process starting, a deploy). Default 0: the 503 comes at once.
   */
  holdMs?: number
}

/** One proxy target's backends, pools and health checks. */
export interface ProxyRoute {
  /**
   * Proxies one request. Call it synchronously from the uWS request callback, before anything
   * else has touched `res`: it attaches `onAborted` and `onData` itself.
   */
  serve(res: HttpResponse, req: ProxyRequest): void
  /** Backends currently healthy. */
  healthy(): { addr: string; port: number }[]
  /** Some backend is up and has answered a health probe since it came up. */
  ready(): boolean
  /** The app's health check failed `attempts` times and never passed: not to be routed to. */
  failed(): boolean
  /** Requests dispatched and not finished, and requests waiting for a healthy backend. */
  inFlight(): number
  /** Called (with no argument) whenever the healthy list or inFlight changes. */
  onChange?: () => void
  /** Stops the health checks and closes every upstream connection. */
  close(): void
}

// Idle pooled connections are dropped before Node servers' own 5 s keep-alive timeout closes
// them under us; a backend that announces a shorter `Keep-Alive: timeout=N` is honoured by the
// pool.
const POOL_IDLE_MS = 4000

// What serve does with a request header. Hop-by-hop headers (RFC 9110 7.6.1) and what this proxy
// writes itself are dropped; the framing headers and X-Forwarded-For are rewritten.
const PASS = 0
const DROP = 1
const LENGTH = 2
const CHUNKED = 3
const XFF = 4
const HOST = 5

/**
 * The kind of a request header by its name (uWS gives names lowercase). A switch compares by
 * length first; a Set would hash every name, fresh strings each request.
 */
function requestHeaderKind(name: string): number {
  switch (name) {
    case 'host':
      return HOST
    case 'content-length':
      return LENGTH
    case 'transfer-encoding':
      return CHUNKED
    case 'x-forwarded-for':
      return XFF
    case 'connection':
    case 'keep-alive':
    case 'te':
    case 'trailer':
    case 'upgrade':
    case 'expect': // uWS has already answered `Expect: 100-continue`
    case 'x-forwarded-proto':
    case 'x-forwarded-host':
      return DROP
  }
  return name.startsWith('proxy-') ? DROP : PASS
}

/** `name` equals `lower` (lowercase letters and '-') ignoring ASCII case, over lower's length. */
function sameLetters(name: string, lower: string): boolean {
  // OR-ing 0x20 lowercases letters and leaves '-' and digits; no other token char maps onto them.
  for (let i = 0; i < lower.length; i++) {
    if ((name.charCodeAt(i) | 0x20) !== lower.charCodeAt(i)) return false
  }
  return true
}

/**
 * Response headers not passed on: hop-by-hop (RFC 9110 7.6.1), Proxy-*, and what uWS writes
 * itself (Content-Length or Transfer-Encoding, Date). Names come in any case.
 */
function responseHeaderDropped(name: string, named: string[] | undefined): boolean {
  let dropped: boolean
  switch (name.length) {
    case 2:
      dropped = sameLetters(name, 'te')
      break
    case 4:
      dropped = sameLetters(name, 'date')
      break
    case 7:
      dropped = sameLetters(name, 'trailer') || sameLetters(name, 'upgrade')
      break
    case 10:
      dropped = sameLetters(name, 'connection') || sameLetters(name, 'keep-alive')
      break
    case 14:
      dropped = sameLetters(name, 'content-length')
      break
    case 17:
      dropped = sameLetters(name, 'transfer-encoding')
      break
    default:
      dropped = false
  }
  if (dropped || (name.length > 6 && sameLetters(name, 'proxy-'))) return true
  return named !== undefined && named.includes(name.toLowerCase())
}

/**
 * Methods that go without a Content-Length when they carry no body (node:http's habit, kept); any
 * other method gets `Content-Length: 0`, which some servers require for POST and PUT.
 */
function noBodyByDefault(method: string): boolean {
  switch (method) {
    case 'GET':
    case 'HEAD':
    case 'DELETE':
    case 'OPTIONS':
    case 'TRACE':
    case 'CONNECT':
      return true
  }
  return false
}

const STATUS_TEXT: (string | undefined)[] = []
const STATUS_LINE: (string | undefined)[] = []
for (const [code, text] of Object.entries(STATUS_CODES)) {
  STATUS_TEXT[Number(code)] = text
  STATUS_LINE[Number(code)] = `${code} ${text}`
}

const NOT_ASCII = /[^\0-\x7f]/
/** The first quick re-probe of a backend that has not answered yet; see quickProbe. */
const QUICK_PROBE_MS = 25
const EMPTY = Buffer.alloc(0)
const NO_EVENTS: readonly ResponseEvent[] = []

interface Backend {
  addr: string
  port: number
  pool: UpstreamPool
  /** Health probes, each on a new connection of its own. */
  probes: UpstreamPool
  up: boolean
  /** A probe has answered since the backend last went down (it starts up, unproven). */
  proven: boolean
  /** Bumped on every state change, so a probe begun before it cannot undo it. */
  generation: number
  probe: Probe | undefined
  /** The next quick re-probe of a backend not proven yet, and its delay (doubling). */
  quick: NodeJS.Timeout | undefined
  quickMs: number
}

/** One request in flight, from `serve` to the end of its response (or its failure). */
class Exchange extends UpstreamRequest {
  readonly res: HttpResponse
  backend: Backend
  tries = 0
  /** The upstream head up to its body framing, until the body's first piece decides that. */
  base = ''
  /** Sent upstream (at once without a body, with the body's first piece otherwise). */
  dispatched = false
  /** Counted in the route's requests in flight. */
  counted = false
  /** The client's request, for holding it again when its backend went away. */
  req: ProxyRequest | undefined = undefined
  /** The request's Content-Length, or -1 when chunked or absent. */
  declared = -1
  bodyDone: boolean
  bodyBytes = 0
  /** The client's body is paused until the upstream request drains. */
  bodyPaused = false
  /** The backend's final head, once it has come. */
  response: ResponseHead | undefined = undefined
  /** The response's Content-Length, or -1 when it is chunked or close-delimited. */
  total = -1
  /** Response headers its Connection header names (hop-by-hop too). */
  named: string[] | undefined = undefined
  /** The status line is written. */
  headWritten = false
  /** The next of the response's header fields to write (several corks may be needed). */
  field = 0
  /** Body bytes uWS did not take (tryEnd), and the write offset where they start. */
  stall: Buffer | undefined = undefined
  stallStart = 0
  writableHooked = false
  /** The upstream response is paused until the client drains. */
  upPaused = false
  done = false

  constructor(
    handler: UpstreamHandler,
    res: HttpResponse,
    method: string,
    hasBody: boolean,
    backend: Backend,
  ) {
    // Only a body-less idempotent request may go to a second backend if the first refused it.
    super(
      handler,
      method,
      !hasBody && (method === 'GET' || method === 'HEAD' || method === 'OPTIONS'),
    )
    this.res = res
    this.bodyDone = !hasBody
    this.backend = backend
  }
}

/** A health check of one backend. */
class Probe extends UpstreamRequest {
  readonly backend: Backend
  readonly generation: number
  /** A quick re-probe between two regular ones: its failure is not counted as an attempt. */
  quick = false
  /** The status, and the body read so far, when a check matches the body. */
  status = 0
  text = ''

  constructor(handler: UpstreamHandler, backend: Backend, head: string, method = 'GET') {
    super(handler, method)
    this.backend = backend
    this.generation = backend.generation
    this.head = head
  }
}

/**
 * uWS hands over the target and header values decoded as UTF-8, and the upstream client writes a
 * string head as latin1: a head with anything beyond ASCII goes as its UTF-8 bytes, which are the
 * bytes the client sent.
 */
function headBytes(head: string): string | Buffer {
  return NOT_ASCII.test(head) ? Buffer.from(head) : head
}

function whole(
  name: string,
  value: number | undefined,
  fallback: number,
  min = 1,
  example = fallback,
): number {
  if (value === undefined) return fallback
  if (!Number.isSafeInteger(value) || value < min) {
    throw new AppError(
      'E_PROXY',
      `proxy option ${name} must be a whole number of at least ${min}, got ${String(value)} ` +
        `(e.g. ${name}: ${example})`,
    )
  }
  return value
}

/** The tokens a Connection header names, lowercase, besides close and keep-alive. */
function connectionTokens(value: string, into: string[] | undefined): string[] | undefined {
  // Nearly every Connection header is one of these: no split, no lowercase copies.
  if (value === 'keep-alive' || value === 'close') return into
  for (const part of value.split(',')) {
    const token = part.trim().toLowerCase()
    if (token === '' || token === 'close' || token === 'keep-alive') continue
    ;(into ??= []).push(token)
  }
  return into
}

/** Validates the options and starts health-checking the target's backends. */
export function createProxyRoute(target: ProxyTarget, opts: ProxyOptions): ProxyRoute {
  const log = opts.log
  const check = opts.check
  const healthPath = check?.path ?? opts.healthPath ?? '/'
  if (!/^\/[!-~]*$/.test(healthPath)) {
    throw new AppError(
      'E_PROXY',
      `proxy option healthPath must be a path starting with '/' and without spaces, got ${JSON.stringify(healthPath)} (e.g. '/health')`,
    )
  }
  const healthIntervalMs =
    check?.intervalMs ?? whole('healthIntervalMs', opts.healthIntervalMs, 2000)
  const healthTimeoutMs = check?.timeoutMs ?? whole('healthTimeoutMs', opts.healthTimeoutMs, 1000)
  let everProven = false
  let checkFailures = 0
  const connectTimeoutMs = whole('connectTimeoutMs', opts.connectTimeoutMs, 5000)
  const responseTimeoutMs = whole('responseTimeoutMs', opts.responseTimeoutMs, 60_000)
  const maxSockets = whole('maxSockets', opts.maxSockets, 256)
  const maxBodyBytes = whole('maxBodyBytes', opts.maxBodyBytes, Infinity, 0, 1_048_576)
  const holdMs = whole('holdMs', opts.holdMs, 0)
  if (target.backends.length === 0) {
    throw new AppError('E_PROXY', 'a proxy route needs at least one backend { addr, port }')
  }
  for (const b of target.backends) {
    if (b.addr === '' || !Number.isInteger(b.port) || b.port < 1 || b.port > 65535) {
      throw new AppError(
        'E_PROXY',
        `a proxy backend must be { addr, port } with a port from 1 to 65535, got ${JSON.stringify(b)} (e.g. { addr: '127.0.0.1', port: 5000 })`,
      )
    }
  }
  const retryAfter = String(Math.max(1, Math.ceil(healthIntervalMs / 1000)))

  const backends: Backend[] = target.backends.map((b) => ({
    addr: b.addr,
    port: b.port,
    pool: new UpstreamPool({
      host: b.addr,
      port: b.port,
      maxSockets,
      connectTimeoutMs,
      responseTimeoutMs,
      idleTimeoutMs: POOL_IDLE_MS,
    }),
    // A probe opens its own connection, so it also proves the backend still accepts new ones.
    probes: new UpstreamPool({
      host: b.addr,
      port: b.port,
      keepAlive: false,
      connectTimeoutMs: healthTimeoutMs,
      responseTimeoutMs: healthTimeoutMs,
    }),
    up: true,
    proven: false,
    generation: 0,
    probe: undefined,
    quick: undefined,
    quickMs: QUICK_PROBE_MS,
  }))
  let healthyList = backends.slice()
  let next = 0
  let closed = false
  let active = 0
  /** Body-less requests waiting for a healthy backend, oldest first. */
  let waiting: Waiter[] = []
  /** Requests already held once after their backend failed them. */
  const reheld = new WeakSet<ProxyRequest>()
  const changed = (): void => route.onChange?.()

  /** A healthy backend other than `not` if there is one, else any healthy one. */
  function pickOther(not: Backend): Backend | undefined {
    for (let i = 0; i < healthyList.length; i++) {
      const b = pick()
      if (b !== not) return b
    }
    return pick()
  }

  function pick(): Backend | undefined {
    const n = healthyList.length
    if (n === 0) return undefined
    if (next >= n) next = 0
    return healthyList[next++]
  }

  function setState(b: Backend, up: boolean, reason: string): void {
    if (b.up === up) return
    b.up = up
    b.generation++
    healthyList = backends.filter((x) => x.up)
    if (up) log.info({ addr: b.addr, port: b.port }, 'backend up')
    else log.info({ addr: b.addr, port: b.port, reason }, 'backend down')
    if (up && waiting.length > 0) {
      const ready = waiting
      waiting = []
      for (const w of ready) {
        clearTimeout(w.timer)
        if (!w.aborted) serve(w.res, w.req)
      }
    }
    changed()
  }

  /** Holds a body-less request until a backend is healthy, or answers 503 after holdMs. */
  function hold(res: HttpResponse, req: ProxyRequest): void {
    const w: Waiter = {
      res,
      req,
      aborted: false,
      timer: setTimeout(() => {
        waiting = waiting.filter((x) => x !== w)
        changed()
        if (!w.aborted) reply(res, 503, false, false)
      }, holdMs),
    }
    res.onAborted(() => {
      w.aborted = true
      clearTimeout(w.timer)
      waiting = waiting.filter((x) => x !== w)
      changed()
    })
    waiting.push(w)
    changed()
  }

  // ---------------------------------------------------------------- health checks

  const probeHandler: UpstreamHandler = {
    response(req, events) {
      const p = req as Probe
      for (const e of events) {
        if (check !== undefined) {
          if (e.type === 'head') p.status = e.head.status
          else if (e.type === 'data' && p.text.length < 65536) p.text += e.chunk.toString('latin1')
          else if (e.type !== 'end') continue
          if (e.type === 'head' && p.status !== check.status) {
            return settle(p, false, `status ${p.status}, expected ${check.status}`)
          }
          if (e.type === 'head' && check.match === undefined) return settle(p, true, 'ok')
          if (e.type !== 'end') continue
          const ok = p.text.includes(check.match ?? '')
          return settle(p, ok, ok ? 'ok' : `body does not contain ${JSON.stringify(check.match)}`)
        }
        if (e.type !== 'head') continue
        // Any answer short of a server error means the process is up, even a 404 for the path.
        const status = e.head.status
        return settle(p, status >= 200 && status < 500, `status ${status}`)
      }
    },
    error(req, err) {
      settle(req as Probe, false, err.failure === 'timeout' ? 'timeout' : err.code)
    },
    drain() {},
  }

  function settle(p: Probe, up: boolean, reason: string): void {
    const b = p.backend
    if (b.probe !== p) return
    b.probe = undefined
    p.abort()
    if (closed || b.generation !== p.generation) return
    if (up) b.quickMs = QUICK_PROBE_MS
    else if (!b.proven) quickProbe(b)
    if (p.quick && !up) return
    if (check !== undefined && !everProven) {
      if (up) everProven = true
      else if (++checkFailures === check.attempts) {
        log.error(
          { addr: b.addr, port: b.port, reason, attempts: check.attempts },
          'health check failed',
        )
        changed()
      }
    }
    const proven = b.proven
    b.proven = up
    setState(b, up, reason)
    if (up && !proven) changed()
  }

  /**
   * A backend that has not answered yet (a web process starting, usually) is probed again soon,
   * then less and less often, so a new release is routed to within moments of listening rather
   * than at the next regular probe.
   */
  function quickProbe(b: Backend): void {
    if (b.quick !== undefined || b.quickMs >= healthIntervalMs) return
    b.quick = setTimeout(() => {
      b.quick = undefined
      if (closed || b.proven || b.probe !== undefined) return
      b.quickMs *= 2
      probe(b, true)
    }, b.quickMs)
    b.quick.unref()
  }

  function probe(b: Backend, quick = false): void {
    const method = check?.method ?? 'GET'
    const p = new Probe(
      probeHandler,
      b,
      `${method} ${healthPath} HTTP/1.1\r\nhost: ${b.addr}:${b.port}\r\n` +
        'user-agent: bareku-health-check\r\nconnection: close\r\n\r\n',
      method,
    )
    p.quick = quick
    b.probe = p
    b.probes.send(p)
  }

  function probeAll(): void {
    for (const b of backends) if (b.probe === undefined) probe(b)
  }

  probeAll()
  const interval = setInterval(probeAll, healthIntervalMs)
  interval.unref()

  // ---------------------------------------------------------------- client -> backend

  const handler: UpstreamHandler = {
    response: onUpstreamResponse,
    error: onUpstreamError,
    drain: onUpstreamDrain,
  }

  function serve(res: HttpResponse, req: ProxyRequest): void {
    const method = req.method
    const headers = req.headers
    const count = headers.length
    let named: string[] | undefined
    for (let i = 0; i < count; i++) {
      const h = headers[i]!
      if (h[0] === 'connection') named = connectionTokens(h[1], named)
    }
    let head = method + ' ' + req.url + ' HTTP/1.1\r\n'
    let xff = false
    let host = false
    let chunked = false
    // -1: none; -2: unusable. The proxy frames the body itself, so these are read first.
    let length = -1
    for (let i = 0; i < count; i++) {
      const h = headers[i]!
      const name = h[0]
      const value = h[1]
      const kind = requestHeaderKind(name)
      if (kind === LENGTH) {
        // uWS reads the body by the first of several; a backend might take another (smuggling).
        const n = /^[0-9]{1,15}$/.test(value) ? Number(value) : -2
        length = length === -1 || length === n ? n : -2
        continue
      }
      if (kind === CHUNKED) {
        chunked = true
        continue
      }
      if (kind === DROP || (named !== undefined && named.includes(name))) continue
      if (kind === XFF) {
        xff = true
        head += 'x-forwarded-for: ' + value + ', ' + req.remoteAddr + '\r\n'
        continue
      }
      if (kind === HOST) host = true
      head += name + ': ' + value + '\r\n'
    }
    if (length === -2 && !chunked) return reply(res, 400, false, false)
    if (length > maxBodyBytes) return reply(res, 413, false, true)
    const backend = closed ? undefined : pick()
    if (backend === undefined) {
      log.debug({ method, url: req.url }, 'no healthy backend')
      if (holdMs > 0 && !closed && length <= 0 && !chunked) return hold(res, req)
      return reply(res, 503, false, false)
    }
    if (!xff) head += 'x-forwarded-for: ' + req.remoteAddr + '\r\n'
    head += 'x-forwarded-proto: http\r\n'
    if (req.host !== '') head += 'x-forwarded-host: ' + req.host + '\r\n'
    if (!host) head += 'host: ' + (req.host || `${backend.addr}:${backend.port}`) + '\r\n'

    const hasBody = chunked || length > 0
    const ex = new Exchange(handler, res, method, hasBody, backend)
    if (!hasBody) ex.req = req
    res.onAborted(() => clientAborted(ex))
    if (!hasBody) {
      if (length === 0 || !noBodyByDefault(method)) head += 'content-length: 0\r\n'
      ex.head = headBytes(head + '\r\n')
      return send(ex, backend)
    }
    // The framing waits for the body's first piece: if that is all of it, it goes with the head.
    ex.base = head
    ex.declared = chunked ? -1 : length
    res.onData((chunk, isLast) => onBody(ex, chunk, isLast))
  }

  function send(ex: Exchange, backend: Backend): void {
    ex.backend = backend
    ex.tries++
    if (!ex.counted) {
      ex.counted = true
      active++
      changed()
    }
    ex.dispatched = true
    backend.pool.send(ex)
  }

  function onBody(ex: Exchange, chunk: ArrayBuffer, isLast: boolean): void {
    // uWS goes on reading a body the response no longer needs; it is dropped.
    if (ex.done) return
    const n = chunk.byteLength
    if (n > 0) {
      ex.bodyBytes += n
      if (ex.bodyBytes > maxBodyBytes) {
        if (ex.response === undefined) return fail(ex, 413)
        return abortClient(ex)
      }
      // Never send more than the Content-Length the backend was told: the excess would be read
      // as the next request on that connection.
      if (ex.declared >= 0 && ex.bodyBytes > ex.declared) return abortClient(ex)
    }
    if (!ex.dispatched) {
      if (isLast) {
        // The whole body is here: it leaves with the head in one write, framed by its length
        // (a chunked one too).
        ex.head = headBytes(`${ex.base}content-length: ${n}\r\n\r\n`)
        // Copied: uWS neuters the ArrayBuffer when this callback returns.
        if (n > 0) ex.body = Buffer.from(new Uint8Array(chunk))
        ex.bodyDone = true
        return send(ex, ex.backend)
      }
      const declared = ex.declared
      ex.framing = declared >= 0 ? 'length' : 'chunked'
      ex.head = headBytes(
        declared >= 0
          ? `${ex.base}content-length: ${declared}\r\n\r\n`
          : `${ex.base}transfer-encoding: chunked\r\n\r\n`,
      )
      send(ex, ex.backend)
    }
    // write() copies, so the neutered ArrayBuffer is no concern.
    if (n > 0 && !ex.write(new Uint8Array(chunk)) && !isLast && !ex.bodyPaused) {
      ex.bodyPaused = true
      ex.res.pause()
    }
    if (isLast) {
      ex.bodyDone = true
      ex.end()
    }
  }

  function onUpstreamDrain(req: UpstreamRequest): void {
    const ex = req as Exchange
    if (ex.done || !ex.bodyPaused) return
    ex.bodyPaused = false
    ex.res.resume()
  }

  // ---------------------------------------------------------------- failures

  function onUpstreamError(req: UpstreamRequest, err: UpstreamError): void {
    const ex = req as Exchange
    if (ex.done) return
    const backend = ex.backend
    if (ex.response !== undefined) {
      if (err.failure === 'timeout') return timedOut(ex)
      return cutShort(ex, err.failure === 'response' ? err.message : err.code)
    }
    if (err.failure === 'connect') setState(backend, false, err.code)
    // A connection that closed before any answer may be a backend that died with the request:
    // check it now rather than at the next interval.
    if (err.failure === 'closed' && backend.probe === undefined && !closed) probe(backend)
    // A refused connection never reached the app. A reused keep-alive connection that the backend
    // closed just as we wrote to it did not either (the pool has already tried a fresh one); both
    // are safe to send again when idempotent. So is a body-less GET or HEAD whose backend went
    // away before answering (a process killed or stopped during a deploy): it goes to another.
    const again = err.retryable || (err.failure === 'closed' && ex.method !== 'OPTIONS')
    if (again && ex.retryable) {
      const other = ex.tries < 2 ? pickOther(backend) : undefined
      if (other !== undefined && other !== backend) return send(ex, other)
      const req = ex.req
      if (holdMs > 0 && req !== undefined && !closed && !reheld.has(req)) {
        // No other backend: wait for one to come up, as a request arriving now would (once).
        reheld.add(req)
        finish(ex, true)
        return hold(ex.res, req)
      }
      if (other !== undefined) return send(ex, other)
    }
    if (err.failure === 'timeout') return timedOut(ex)
    log.debug(
      {
        addr: backend.addr,
        port: backend.port,
        failure: err.failure,
        code: err.code,
        err: err.message,
      },
      'upstream request failed',
    )
    fail(ex, 502)
  }

  function timedOut(ex: Exchange): void {
    const b = ex.backend
    if (ex.upPaused) {
      // The backend is silent because we stopped reading it: the client took nothing for that long.
      log.warn({ addr: b.addr, port: b.port, ms: responseTimeoutMs }, 'client too slow, closing')
      return abortClient(ex)
    }
    log.warn({ addr: b.addr, port: b.port, ms: responseTimeoutMs }, 'backend timed out')
    if (ex.headWritten) abortClient(ex)
    else fail(ex, 504)
  }

  function clientAborted(ex: Exchange): void {
    if (ex.done) return
    // The response may no longer be touched; the upstream request is of no use to anyone now.
    finish(ex, true)
  }

  /** Ends the exchange; the upstream connection goes back to the pool only if it is clean. */
  function finish(ex: Exchange, destroy: boolean): void {
    ex.done = true
    if (ex.counted) {
      ex.counted = false
      active--
      changed()
    }
    if (!ex.dispatched) return
    if (destroy || !ex.bodyDone) {
      ex.abort()
    } else if (ex.upPaused) {
      // The rest is read only so that the connection can be reused.
      ex.upPaused = false
      ex.resume()
    }
  }

  function fail(ex: Exchange, status: number): void {
    const paused = ex.bodyPaused
    finish(ex, true)
    reply(ex.res, status, paused, status === 413)
  }

  /** Closes the client connection: a response that has started cannot be made whole. */
  function abortClient(ex: Exchange): void {
    finish(ex, true)
    ex.res.close()
  }

  /** The frontend's own short answer. */
  function reply(res: HttpResponse, status: number, paused: boolean, close: boolean): void {
    res.cork(() => {
      // A paused connection would never read the client's next request.
      if (paused) res.resume()
      res.writeStatus(STATUS_LINE[status]!).writeHeader('Content-Type', 'text/plain')
      if (status === 503) res.writeHeader('Retry-After', retryAfter)
      res.end(`${STATUS_TEXT[status]!}\n`, close)
    })
  }

  /** A response that broke off: a 502 if nothing has reached the client yet, else a close. */
  function cutShort(ex: Exchange, reason: string): void {
    const b = ex.backend
    log.warn({ addr: b.addr, port: b.port, reason }, 'backend response cut short')
    if (ex.headWritten) abortClient(ex)
    else fail(ex, 502)
  }

  // ---------------------------------------------------------------- backend -> client

  // Set just before res.cork(writeEvents), so that a read needs no closure of its own: the read's
  // events, the one being written, and how many bytes of its data are written already.
  let corkEx: Exchange | undefined
  let corkEvents: readonly ResponseEvent[] = NO_EVENTS
  let corkAt = 0
  let corkSent = 0

  function onUpstreamResponse(req: UpstreamRequest, events: readonly ResponseEvent[]): void {
    const ex = req as Exchange
    if (ex.done) return
    corkEx = ex
    corkEvents = events
    corkAt = 0
    corkSent = 0
    // A read that does not fit in one cork takes several: see cork-room.ts.
    while (corkAt < events.length && !ex.done) ex.res.cork(writeEvents)
    corkEx = undefined
    corkEvents = NO_EVENTS
  }

  /** Writes the events of one upstream read to the client, as far as one cork has room. */
  function writeEvents(): void {
    freshCork()
    const ex = corkEx!
    const events = corkEvents
    for (; corkAt < events.length && !ex.done; corkAt++) {
      const e = events[corkAt]!
      // 'informational' heads are not passed on: uWS has answered 100-continue itself.
      const written =
        e.type === 'data'
          ? writeData(ex, e.chunk)
          : e.type === 'head'
            ? startResponse(ex, e.head, events)
            : e.type !== 'end' || endResponse(ex)
      if (written) continue
      // The cork is full and the next one goes on; one that took nothing would go on forever.
      if (corkIsFresh()) cutShort(ex, 'a write larger than a whole cork')
      return
    }
  }

  /**
   * Handles the final head; false when the cork is full (it is called again in a fresh one). A
   * body that came whole with it is written too, and its event skipped.
   */
  function startResponse(
    ex: Exchange,
    head: ResponseHead,
    events: readonly ResponseEvent[],
  ): boolean {
    const res = ex.res
    if (ex.response !== head) {
      ex.response = head
      const fields = head.headers
      let named: string[] | undefined
      for (let k = 0; k < fields.length; k++) {
        const f = fields[k]!
        if (f[0].length === 10 && sameLetters(f[0], 'connection')) {
          named = connectionTokens(f[1], named)
        }
      }
      ex.named = named
      const long = lineTooLong(head)
      if (long !== undefined) {
        cutShort(ex, `a response head line (${long}) over ${MAX_LINE_BYTES} bytes`)
        return true
      }
    }
    if (!writeHead(ex)) return false
    if (head.framing === 'none') {
      // HEAD, 204, 304.
      if (!takeCork(40)) return false
      resumeBody(ex)
      // endWithoutBody(n) on this uWS build leaves the response pending, which stalls the
      // connection's next request; writing the header ourselves does not.
      if (ex.method === 'HEAD' && head.contentLength !== undefined) {
        res.writeHeader('Content-Length', String(head.contentLength))
      }
      res.endWithoutBody()
      finish(ex, false)
      return true
    }
    const total = head.framing === 'length' ? head.contentLength! : -1
    ex.total = total
    if (total === 0) {
      resumeBody(ex)
      res.end()
      finish(ex, false)
      return true
    }
    if (total > 0) {
      const next = events[corkAt + 1]
      if (
        next !== undefined &&
        next.type === 'data' &&
        next.chunk.length === total &&
        takeCork(total)
      ) {
        // The whole body came with the head: status, headers and body leave in one write.
        resumeBody(ex)
        res.end(next.chunk)
        finish(ex, false)
        corkAt++
        return true
      }
      // Nothing more in this read: the head goes now, so the client sees the response begin.
      if (next === undefined) lengthWrite(ex, EMPTY)
    }
    // A chunked head is written with its first chunk: uWS cannot end it without one.
    return true
  }

  /** Writes the head's status and fields, each taking its room; false when the cork is full. */
  function writeHead(ex: Exchange): boolean {
    const res = ex.res
    const head = ex.response!
    const fields = head.headers
    if (ex.headWritten && ex.field === fields.length) return true
    if (!ex.headWritten) {
      if (!takeCork(32 + head.reason.length)) return false
      ex.headWritten = true
      const status = head.status
      const reason = head.reason
      const standard = STATUS_LINE[status]
      if (status !== 200 || (reason !== 'OK' && reason !== '')) {
        res.writeStatus(
          standard !== undefined && (reason === '' || reason === STATUS_TEXT[status])
            ? standard
            : reason !== ''
              ? latin1Bytes(`${status} ${reason}`)
              : String(status),
        )
      }
      // else: uWS writes `200 OK` itself when no status was set, sparing a call and a conversion.
    }
    const named = ex.named
    for (; ex.field < fields.length; ex.field++) {
      const f = fields[ex.field]!
      if (responseHeaderDropped(f[0], named)) continue
      if (!takeCork(f[0].length + f[1].length)) return false
      res.writeHeader(f[0], latin1Bytes(f[1]))
    }
    return true
  }

  /** Writes a body chunk, a chunked one in pieces that fit; false when the cork is full. */
  function writeData(ex: Exchange, chunk: Buffer): boolean {
    if (!writeHead(ex)) return false
    if (ex.total >= 0) {
      lengthWrite(ex, chunk)
      return true
    }
    while (corkSent < chunk.length) {
      const n = takePiece(chunk.length - corkSent)
      if (n === 0) return false
      const piece = n === chunk.length ? chunk : chunk.subarray(corkSent, corkSent + n)
      corkSent += n
      if (!ex.res.write(piece)) pauseUpstream(ex)
    }
    corkSent = 0
    return true
  }

  function endResponse(ex: Exchange): boolean {
    // A Content-Length body ends with its last byte (tryEnd), or in onWritable when stalled.
    if (ex.total >= 0) return true
    if (!writeHead(ex) || !takeCork(8)) return false
    resumeBody(ex)
    ex.res.end()
    finish(ex, false)
    return true
  }

  function lengthWrite(ex: Exchange, chunk: Buffer): void {
    const res = ex.res
    if (ex.stall !== undefined) {
      // Only reachable if data was already on its way when the upstream was paused.
      ex.stall = Buffer.concat([ex.stall, chunk])
      return
    }
    const start = res.getWriteOffset()
    if (start + chunk.length >= ex.total) resumeBody(ex)
    const [ok, done] = res.tryEnd(chunk, ex.total)
    if (done) return finish(ex, false)
    if (ok) return
    // Copied: the chunk may be a view of the upstream read buffer, reused by the next read.
    ex.stall = Buffer.from(chunk)
    ex.stallStart = start
    pauseUpstream(ex)
  }

  function pauseUpstream(ex: Exchange): void {
    ex.upPaused = true
    ex.pause()
    if (ex.writableHooked) return
    ex.writableHooked = true
    ex.res.onWritable((offset) => onWritable(ex, offset))
  }

  function onWritable(ex: Exchange, offset: number): boolean {
    if (ex.done) return true
    const stall = ex.stall
    if (stall !== undefined) {
      const rest = stall.subarray(offset - ex.stallStart)
      if (offset + rest.length >= ex.total) resumeBody(ex)
      const [ok, done] = ex.res.tryEnd(rest, ex.total)
      if (done) {
        ex.stall = undefined
        finish(ex, false)
        return true
      }
      if (!ok) {
        ex.stall = rest
        ex.stallStart = offset
        return false
      }
      ex.stall = undefined
    }
    if (ex.upPaused) {
      ex.upPaused = false
      ex.resume()
    }
    return true
  }

  /** Called before the response can end: a paused client connection would never read again. */
  function resumeBody(ex: Exchange): void {
    if (!ex.bodyPaused) return
    ex.bodyPaused = false
    ex.res.resume()
  }

  const route: ProxyRoute = {
    serve,
    healthy: () => healthyList.map((b) => ({ addr: b.addr, port: b.port })),
    ready: () => backends.some((b) => b.up && b.proven),
    failed: () => check !== undefined && !everProven && checkFailures >= check.attempts,
    inFlight: () => active + waiting.length,
    close() {
      if (closed) return
      closed = true
      clearInterval(interval)
      const left = waiting
      waiting = []
      for (const w of left) {
        clearTimeout(w.timer)
        if (!w.aborted) reply(w.res, 503, false, false)
      }
      for (const b of backends) {
        clearTimeout(b.quick)
        const probing = b.probe
        b.probe = undefined
        probing?.abort()
        b.probes.close()
        b.pool.close()
      }
    },
  }
  return route
}

interface Waiter {
  res: HttpResponse
  req: ProxyRequest
  aborted: boolean
  timer: NodeJS.Timeout
}
