/**
 * @module The frontend's HTTP and WebSocket side on uWebSockets.js, for handler routes: turns each
 * request into a Mongrel2 request message, and each handler reply back into writes on the client
 * connection it addresses.
 *
 *   client ──HTTP──> uWS ──headersJson──> encodeJsonRequest ──PUSH──> handler   (no body, JSON)
 *                       └──buildHeaders──> encodeRequest ──────┘         (bodies, tnetstring)
 *   client <──uWS writes── ResponseParser <──ReplyReader── SUB <──── handler (raw HTTP bytes)
 *   client ──WS frame──> uWS message ──> request, METHOD WEBSOCKET, FLAGS 0x81 ──> handler
 *   client <──ws.send── FrameParser <──── raw frames ──────────────────────────── handler
 *
 * The handler writes raw HTTP; uWS owns the socket, so each connection's reply stream is parsed
 * incrementally (status, headers, Content-Length / chunked / close-delimited body) and mapped
 * onto uWS calls, corked (in pieces that fit one cork: cork-room.ts), with backpressure.
 *
 * The request and reply paths run per request at tens of thousands a second, so they allocate
 * little on purpose: headers are read into reused arrays, the header JSON is concatenated text,
 * replies are read by one reusable reader, response parsers are pooled, one cork function serves
 * every reply. Anything unusual (bodies, uploads, WebSockets, odd header names) takes the plain
 * object path.
 */
import { closeSync, openSync, unlinkSync, writeSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import {
  leafTargets,
  type DirTarget,
  type HandlerTarget,
  type HealthCheck,
  type ProxyTarget,
  type ReleaseTarget,
  type ReleasesTarget,
  type ServerSpec,
  type Target,
} from '../lib/config/routes.js'
import type { Matcher } from '../lib/config/match.js'
import type { Logger } from '../lib/log.js'
import { isAppError } from '../lib/errors.js'
import {
  encodeDisconnect,
  encodeJsonRequest,
  encodeRequest,
  parseExtended,
  ReplyReader,
  type Headers,
} from '../lib/protocol/mongrel2.js'
import {
  ResponseParser,
  type ResponseEvent,
  type ResponseHead,
} from '../lib/protocol/http-response.js'
import {
  acceptKey,
  FrameParser,
  OPCODE,
  parseClosePayload,
  type WsFrame,
} from '../lib/protocol/websocket.js'
import uWS, {
  latin1Bytes,
  type HttpRequest,
  type HttpResponse,
  type us_listen_socket,
  type WebSocket,
} from './uws.js'
import { ConnTable } from './connections.js'
import { createCorkAnchor } from './cork-anchor.js'
import {
  corkIsFresh,
  freshCork,
  lineTooLong,
  MAX_LINE_BYTES,
  takeCork,
  takePiece,
} from './cork-room.js'
import { createDirRoute, type DirRoute } from './dir.js'
import { createProxyRoute, type ProxyRoute } from './proxy.js'
import { HandlerSocket } from './handler-socket.js'
import { ZmtpHandlerSocket } from './zmtp-socket.js'
import type { Limits } from './limits.js'
import { buildHeaders, headersJson, type TranslateOptions } from './translate.js'

/** A handler route's sockets, shared by every route that names the same handler. */
interface Route {
  target: HandlerTarget
  socket: HandlerSocket | ZmtpHandlerSocket
  /** Requests waiting for a handler to connect. */
  held: Set<HttpConn>
  /** One release of an app in a deploy: its requests finishing matter to the drain status. */
  release: boolean
  /** When an older release's WebSockets are closed (going away). */
  wsDeadline?: NodeJS.Timeout
  /** Gone from the table, waiting for its requests in flight (at most RETIRE_MAX_MS). */
  retiring?: NodeJS.Timeout
}

/** An app's releases side by side, as the frontend sees them (lib/protocol/frontend-report.ts). */
export interface AppReleases {
  app: string
  /** The release new requests go to. */
  serving: number
  /** It gets all of them: its ramp after it became ready is over (see readySince). */
  rampedUp: boolean
  releases: {
    release: number
    ready: boolean
    inFlight: number
    drained: boolean
    failed: boolean
  }[]
}

interface HttpConn {
  kind: 'http'
  id: number
  res: HttpResponse
  route: Route
  method: string
  parser: ResponseParser
  /** The request message is out (or held); a client abort then owes the handler a notice. */
  sent: boolean
  done: boolean
  /** Some reply bytes came: the request can no longer be sent to another handler. */
  replied: boolean
  /** The request message again, under the conn's current id: only for idempotent requests. */
  again?: () => Buffer
  /** The same for a request sent by the JSON fast path: its path and header JSON. */
  json?: { path: string; json: string; ascii: boolean }
  /** Already sent to a second handler after the first died with it. */
  retried: boolean
  head?: ResponseHead
  /** The next of the head's fields to write, -1 before its status (a head may take several corks). */
  field: number
  /** A held request's message and its deadline. */
  held?: { msgs: Buffer[]; timer: NodeJS.Timeout }
  /** Body bytes uWS could not take yet (Content-Length replies through tryEnd). */
  stall?: { chunk: Buffer; start: number }
  /** Chunks waiting behind a stall (made on the first stall: most replies never need it). */
  queue?: Buffer[]
  queued: number
  /** Body bytes of a Content-Length reply uWS has taken, i.e. its write offset. */
  bodyOut: number
  writableHooked: boolean
  upload?: { fd: number; path: string; abs: string }
  /** A WebSocket handshake waiting for the handler's 101. */
  upgrade?: { key: string; extensions: string; context: unknown; info: WsInfo }
}

interface WsInfo {
  path: string
  headers: Headers
}

interface WsConn {
  kind: 'ws'
  id: number
  route: Route
  info: WsInfo
  ws?: WebSocket<WsData>
  frames: FrameParser
  /** Bytes the handler sent before uWS opened the socket. */
  early: Buffer[]
  fragments?: { opcode: number; parts: Buffer[]; bytes: number }
  closing: boolean
}

/** A health check request the frontend itself sends through a handler (a release's check). */
interface ProbeConn {
  kind: 'probe'
  id: number
  route: Route
  check: HealthCheck
  parser: ResponseParser
  status: number
  text: string
  timer: NodeJS.Timeout
  settle(ok: boolean, why: string): void
}

type Conn = HttpConn | WsConn | ProbeConn

/** A release's health check through its handlers, and how it went so far. */
interface Health {
  check: HealthCheck
  state: 'checking' | 'healthy' | 'failed'
  failures: number
  probing: boolean
  /** The pause before the next attempt. */
  timer?: NodeJS.Timeout
}

interface WsData {
  id: number
}

/**
 * Hop-by-hop and framing headers from the handler that uWS writes itself (or must not see):
 * content-length, transfer-encoding, connection, keep-alive, date, in any case. Compared by
 * length, then letters, so that no lowercased copy is made per header.
 */
function droppedReplyHeader(name: string): boolean {
  switch (name.length) {
    case 4:
      return sameLetters(name, 'date')
    case 10:
      return sameLetters(name, 'connection') || sameLetters(name, 'keep-alive')
    case 14:
      return sameLetters(name, 'content-length')
    case 17:
      return sameLetters(name, 'transfer-encoding')
    default:
      return false
  }
}

/**
 * `name` equals `lower` (lowercase letters and "-") ignoring ASCII case. OR-ing 0x20 lowercases
 * a letter and maps no other token character onto a letter or "-".
 */
function sameLetters(name: string, lower: string): boolean {
  for (let i = 0; i < lower.length; i++) {
    if ((name.charCodeAt(i) | 0x20) !== lower.charCodeAt(i)) return false
  }
  return true
}

const STATUS_TEXT: Record<number, string> = {
  400: 'Bad Request',
  404: 'Not Found',
  413: 'Payload Too Large',
  417: 'Expectation Failed',
  431: 'Request Header Fields Too Large',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
}

export interface HttpServerOptions {
  server: ServerSpec
  matcher: Matcher
  limits: Limits
  /** Extension -> content type from the config, for Dir routes. */
  mimetypes: Record<string, string>
  /** Host and port to listen on, overriding the server's bind_addr and port (tests use port 0). */
  listen?: { host: string; port: number }
  log: Logger
  /** Called when what status() says may have changed (a release ready or drained). */
  onStatus?: () => void
}

export interface HttpServer {
  port: number
  /** Handler endpoints as bound now. */
  handlers(): { sendIdent: string; sendSpec: string; recvSpec: string }[]
  /** Open client connections known to the frontend (HTTP requests in flight and WebSockets). */
  connections(): number
  /** The releases of each app deploying through this server (routes of kind 'releases'). */
  status(): AppReleases[]
  /**
   * Switches to a new config of this server (a reload, or a route table from the master): new
   * handlers are bound first, then requests route by the new table, then handlers no longer
   * named are closed. The listen address does not change.
   */
  update(spec: ServerSpec, matcher: Matcher, mimetypes: Record<string, string>): Promise<void>
  close(): void
}

/** Starts one Mongrel2-style server: its handler sockets, then its HTTP listener. */
export async function startHttpServer(opts: HttpServerOptions): Promise<HttpServer> {
  const { limits, log } = opts
  // Replaced by update() on a config reload; everything below reads them per request.
  let server = opts.server
  let matcher = opts.matcher
  let mimetypes = opts.mimetypes
  const conns = new ConnTable<Conn>()
  const routes = new Map<string, Route>()
  let closed = false

  /** Binds the sockets of every handler in `spec` not bound yet; returns the keys `spec` uses. */
  async function bindHandlers(spec: ServerSpec): Promise<Set<string>> {
    const used = new Set<string>()
    const inReleases = new Set(
      spec.hosts.flatMap((h) =>
        Object.values(h.routes)
          .filter((t) => t.kind === 'releases')
          .flatMap(leafTargets)
          .flatMap((t) => (t.kind === 'handler' ? [routeKey(t)] : [])),
      ),
    )
    for (const route of routes.values()) route.release = inReleases.has(routeKey(route.target))
    for (const host of spec.hosts) {
      for (const target of Object.values(host.routes).flatMap(leafTargets)) {
        if (target.kind !== 'handler') continue
        const key = routeKey(target)
        used.add(key)
        if (routes.has(key)) continue
        const back = retiring.get(key)
        if (back) {
          // Named again before it finished retiring: its sockets are still bound, keep them.
          clearTimeout(back.retiring)
          back.retiring = undefined
          retiring.delete(key)
          routes.set(key, back)
          continue
        }
        const route: Route = {
          target,
          socket: undefined as unknown as ZmtpHandlerSocket,
          held: new Set(),
          release: inReleases.has(key),
        }
        // ZMTP spoken on the event loop by default: half the CPU per request of going through
        // libzmq's I/O thread; `frontend.zmtp: 'libzmq'` for handlers on ZMTP 1.0/2.0 (libzmq < 4).
        const Socket = limits.zmtp === 'libzmq' ? HandlerSocket : ZmtpHandlerSocket
        route.socket = new Socket(
          target,
          {
            onReply: (msg) => onReply(route, msg),
            onReady: () => flushHeld(route),
            onLost: (ids) => onLost(route, ids),
            onPeers: (peers) => {
              log.info({ handler: target.sendIdent, peers }, 'handler peers')
              statusChanged()
            },
          },
          log.child({ handler: target.sendIdent }),
          { lostGraceMs: limits.handlerLostGrace },
        )
        await route.socket.bind()
        routes.set(key, route)
      }
    }
    routeCache = new WeakMap()
    return used
  }

  // The route of each handler target as routed, so that a request builds no key string; the
  // cache is dropped whenever the route table changes.
  let routeCache = new WeakMap<HandlerTarget, Route>()
  function routeFor(target: HandlerTarget): Route {
    let route = routeCache.get(target)
    if (route === undefined) {
      route = routes.get(routeKey(target))!
      routeCache.set(target, route)
    }
    return route
  }

  /** A handler gone from the config: its waiting requests get a 503, its sockets close. */
  function retire(route: Route): void {
    for (const conn of route.held) {
      if (conn.done || !conn.held) continue
      finish(conn)
      fail(conn.res, 503, RETRY_AFTER, 'This route was removed while the request waited; retry.')
    }
    // A release leaves the table once the frontend reported it drained, so this is rare: a
    // request that went to it after all cannot be answered once its sockets close.
    for (const [key, h] of health) {
      if (!key.startsWith(`${routeKey(route.target)}\n`)) continue
      clearTimeout(h.timer)
      health.delete(key)
    }
    let busy = 0
    for (const conn of [...conns.values()]) {
      if (conn.route !== route) continue
      if (conn.kind === 'probe') {
        conn.settle(false, 'the release was retired')
      } else if (conn.kind === 'ws') {
        if (conn.ws && !conn.closing) {
          conn.closing = true
          conn.ws.end(1001, 'going away')
          notice(route, conn.id)
        }
        conns.delete(conn.id)
      } else if (!conn.done) {
        busy++
      }
    }
    clearTimeout(route.wsDeadline)
    if (busy === 0) return closeRoute(route)
    // Requests still in its hands finish first (a release the master dropped early, e.g. while
    // the frontend's reports were not reaching it); its sockets close with the last of them.
    retiring.set(routeKey(route.target), route)
    route.retiring = setTimeout(() => {
      for (const conn of [...conns.values()]) {
        if (conn.route !== route || conn.kind !== 'http' || conn.done) continue
        finish(conn)
        if (conn.replied) conn.res.close()
        else fail(conn.res, 503, RETRY_AFTER, 'This release was retired during the request; retry.')
      }
      closeRoute(route)
    }, RETIRE_MAX_MS)
    log.info({ handler: route.target.sendIdent, inFlight: busy }, 'handler retiring')
  }

  /** Routes gone from the table that still have requests in flight, by key. */
  const retiring = new Map<string, Route>()

  function closeRoute(route: Route): void {
    clearTimeout(route.retiring)
    route.retiring = undefined
    retiring.delete(routeKey(route.target))
    route.socket.close()
    log.info({ handler: route.target.sendIdent }, 'handler removed')
  }

  /** A retiring route whose last request finished closes now. */
  function retired(route: Route): void {
    for (const conn of conns.values()) {
      if (conn.route === route && conn.kind === 'http' && !conn.done) return
    }
    closeRoute(route)
  }

  await bindHandlers(server)

  // ------------------------------------------------------------------ handler -> client

  function notice(route: Route, id: number): void {
    route.socket.send(encodeDisconnect(route.target.sendIdent, id, route.target.protocol))
  }

  /** A retried request's message under its new id. */
  function again(conn: HttpConn): Buffer {
    const j = conn.json
    if (j === undefined) return conn.again!()
    return encodeJsonRequest(conn.route.target.sendIdent, conn.id, j.path, j.json, EMPTY, j.ascii)
  }

  /**
   * Requests a dead handler took and never answered: an idempotent one that got no reply byte
   * goes to another handler (once), anything else gets a 502, or a close once its reply began.
   */
  function onLost(route: Route, ids: number[]): void {
    for (const id of ids) {
      const conn = conns.get(id)
      if (conn === undefined || conn.kind !== 'http' || conn.done || conn.route !== route) continue
      if (conn.replied) {
        log.warn({ id, handler: route.target.sendIdent }, 'handler died mid-reply, closing')
        finish(conn)
        conn.res.close()
      } else if ((conn.again || conn.json) && !conn.retried) {
        conns.delete(conn.id)
        conn.id = conns.add(conn)
        conn.retried = true
        log.info({ id, retry: conn.id, handler: route.target.sendIdent }, 'retrying a lost request')
        send(conn, again(conn))
      } else {
        log.warn({ id, handler: route.target.sendIdent }, 'handler died before answering: 502')
        finish(conn)
        fail(
          conn.res,
          502,
          [],
          'The handler died before answering. The request was not retried because it is not idempotent (only GET and HEAD without a body are).',
        )
      }
    }
  }

  // One reader for every reply: nothing below onReply reads another reply before it returns
  // (handler sockets only queue what is sent to them).
  const reader = new ReplyReader()

  function onReply(route: Route, msg: Buffer): void {
    try {
      reader.read(msg)
    } catch (err) {
      log.warn({ code: isAppError(err) ? err.code : undefined, err: String(err) }, 'dropped reply')
      return
    }
    const ids = reader.ids
    const extendedReply = reader.extended
    const body = msg.subarray(reader.bodyAt)
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!
      const conn = conns.get(id)
      if (conn === undefined) {
        // Mongrel2 tells the handler an id is dead; an empty (close) message needs no answer.
        if (body.length > 0) notice(route, id)
        continue
      }
      if (conn.route !== route) {
        log.warn(
          { id, handler: route.target.sendIdent },
          'reply to a connection routed elsewhere dropped',
        )
        continue
      }
      if (conn.kind === 'probe') probeReply(conn, body)
      else if (extendedReply) extended(conn, body)
      else if (body.length === 0) closeConn(conn)
      else if (conn.kind === 'http') httpReply(conn, body)
      else wsReply(conn, body)
    }
  }

  function extended(conn: HttpConn | WsConn, body: Buffer): void {
    try {
      const cmd = parseExtended(body)
      if (
        cmd.key === 'ctl' &&
        typeof cmd.value === 'object' &&
        cmd.value !== null &&
        !Array.isArray(cmd.value) &&
        !Buffer.isBuffer(cmd.value)
      ) {
        if ('cancel' in cmd.value) closeConn(conn)
        // keep-alive and credits: nothing to do, uWS has no idle kill for HTTP and no upload credits
        return
      }
      log.warn({ id: conn.id, key: cmd.key }, 'unknown extended reply, closing the connection')
    } catch (err) {
      log.warn(
        { id: conn.id, code: isAppError(err) ? err.code : undefined },
        'bad extended reply, closing the connection',
      )
    }
    closeConn(conn)
  }

  // Parsers of finished requests, reused: a client's request needs one for its reply.
  const parsers: ResponseParser[] = []

  function finish(conn: HttpConn): void {
    if (!conn.done && conn.parser.idle && !conn.parser.switched && parsers.length < 1024) {
      // Nothing touches a done conn's parser again (every use checks done first).
      conn.parser.reset()
      parsers.push(conn.parser)
    }
    conn.done = true
    conn.route.socket.settle(conn.id)
    // Only a held conn is in route.held (flushHeld empties it as it clears conn.held).
    if (conn.held) {
      clearTimeout(conn.held.timer)
      conn.route.held.delete(conn)
    }
    conns.delete(conn.id)
    if (conn.route.release) statusChanged()
    if (conn.route.retiring) retired(conn.route)
  }

  /** Answers with a short plain-text error of the frontend's own, then closes (as Mongrel2 does). */
  function fail(
    res: HttpResponse,
    status: number,
    extra: [string, string][] = [],
    why?: string,
  ): void {
    const text = STATUS_TEXT[status] ?? 'Error'
    res.cork(() => {
      res.writeStatus(`${status} ${text}`).writeHeader('Content-Type', 'text/plain')
      for (const [k, v] of extra) res.writeHeader(k, v)
      res.end(why === undefined ? `${text}\n` : `${text}: ${why}\n`, true)
    })
  }

  function closeConn(conn: HttpConn | WsConn): void {
    if (conn.kind === 'ws') {
      if (conn.ws && !conn.closing) {
        conn.closing = true
        conn.ws.end(1000)
      } else if (!conn.ws) conns.delete(conn.id)
      return
    }
    if (conn.done) return
    let events: ResponseEvent[] = []
    try {
      events = conn.parser.finish()
    } catch {
      // a reply cut short: the client sees the connection close
    }
    if (conn.upload) dropUpload(conn)
    const ended = events.some((e) => e.type === 'end')
    finish(conn)
    conn.res.cork(() => {
      if (ended && conn.head) conn.res.end()
      else conn.res.close()
    })
  }

  function httpReply(conn: HttpConn, body: Buffer): void {
    if (conn.done) return
    conn.replied = true
    let events: ResponseEvent[]
    try {
      events = conn.parser.push(body)
    } catch (err) {
      log.warn(
        { id: conn.id, code: isAppError(err) ? err.code : undefined, err: String(err) },
        'malformed reply, closing the connection',
      )
      finish(conn)
      if (conn.head) conn.res.close()
      else fail(conn.res, 502)
      return
    }
    corkConn = conn
    corkEvents = events
    corkAt = 0
    corkSent = 0
    // A reply that does not fit in one cork takes several: see cork-room.ts.
    while (corkAt < events.length && !conn.done && !upgradeNext) conn.res.cork(corked)
    corkConn = undefined
    corkEvents = NO_EVENTS
    if (upgradeNext) {
      const { head, rest } = upgradeNext
      upgradeNext = undefined
      upgradeWs(conn, head, rest)
    }
  }

  // What the next cork writes: one function for every reply rather than a closure per reply. The
  // reply's events, the one being written, and how many bytes of its data are written already.
  let corkConn: HttpConn | undefined
  let corkEvents: ResponseEvent[] = NO_EVENTS
  let corkAt = 0
  let corkSent = 0
  /** Writes the reply's events as far as one cork has room. */
  function corked(): void {
    freshCork()
    const conn = corkConn!
    const events = corkEvents
    for (; corkAt < events.length && !conn.done; corkAt++) {
      const ev = events[corkAt]!
      if (ev.type === 'head' && conn.upgrade) {
        if (ev.head.status === 101) {
          // not in this cork: see cork-anchor.ts
          upgradeNext = { head: ev.head, rest: events.slice(corkAt + 1) }
          return
        }
        conn.upgrade = undefined
      }
      if (apply(conn, ev)) continue
      // The cork is full and the next one goes on; one that took nothing would go on forever.
      if (corkIsFresh()) {
        log.error({ id: conn.id }, 'a reply write larger than a whole cork, closing')
        finish(conn)
        conn.res.close()
      }
      return
    }
  }
  /** A 101 that corked() left for after its cork (the reply's conn is corkConn's). */
  let upgradeNext: { head: ResponseHead; rest: ResponseEvent[] } | undefined

  /** Writes one event of a reply; false when the cork is full (it is called again in a fresh one). */
  function apply(conn: HttpConn, ev: ResponseEvent): boolean {
    const res = conn.res
    switch (ev.type) {
      case 'informational':
        return true // uWS answers Expect: 100-continue itself and cannot write other interim heads
      case 'head': {
        const head = ev.head
        const fields = head.headers
        if (conn.head !== head) {
          conn.head = head
          conn.field = -1
          const long = lineTooLong(head)
          if (long !== undefined) {
            log.warn(
              { id: conn.id, line: long },
              `reply head line over ${MAX_LINE_BYTES} bytes, answering 502`,
            )
            finish(conn)
            fail(res, 502)
            return true
          }
        }
        if (conn.field < 0) {
          if (!takeCork(32 + head.reason.length)) return false
          conn.field = 0
          // uWS writes "200 OK" itself when no status is set: the common reply spares the call.
          if (head.status !== 200 || head.reason !== 'OK') {
            res.writeStatus(statusLine(head.status, head.reason))
          }
        }
        for (; conn.field < fields.length; conn.field++) {
          const [name, value] = fields[conn.field]!
          if (droppedReplyHeader(name)) continue
          if (!takeCork(name.length + value.length)) return false
          res.writeHeader(name, latin1Bytes(value))
        }
        if (!takeCork(40)) return false
        // uWS's own close flag writes its header too late once a body is streaming, so the
        // handler's wish to close is passed on as a header, and the client closes.
        if (!head.keepAlive || head.framing === 'close') res.writeHeader('Connection', 'close')
        if (head.framing === 'none') {
          finish(conn)
          // uWS 20.30's endWithoutBody(length) leaves the response unfinished, so a HEAD's
          // length goes out as a plain header instead.
          if (conn.method === 'HEAD' && head.contentLength !== undefined) {
            res.writeHeader('Content-Length', String(head.contentLength))
          }
          res.endWithoutBody()
        } else if (head.framing === 'length' && head.contentLength === 0) {
          finish(conn)
          res.end()
        }
        return true
      }
      case 'data':
        if (conn.head?.framing !== 'length') return writeStream(conn, ev.chunk)
        writeLength(conn, ev.chunk)
        return true
      case 'end':
        // A close-delimited reply reaches the client chunked, with Connection: close.
        if (conn.done) return true
        if (!takeCork(8)) return false
        finish(conn)
        res.end()
        return true
    }
  }

  function overflow(conn: HttpConn): void {
    log.warn({ id: conn.id, bytes: conn.queued }, 'client too slow, closing the connection')
    finish(conn)
    notice(conn.route, conn.id)
    conn.res.close()
  }

  function writeLength(conn: HttpConn, chunk: Buffer): void {
    if (conn.stall) {
      conn.queue ??= []
      conn.queue.push(chunk)
      conn.queued += chunk.length
      if (conn.queued > limits.connBuffer) overflow(conn)
      return
    }
    tryEnd(conn, chunk)
  }

  function tryEnd(conn: HttpConn, chunk: Buffer): void {
    if (conn.bodyOut === 0 && chunk.length === conn.head!.contentLength && takeCork(chunk.length)) {
      // The whole body at once (the common reply): end() writes it like tryEnd would, and
      // keeps what the socket cannot take yet itself, so there is nothing to retry.
      conn.res.end(chunk)
      finish(conn)
      return
    }
    // Where uWS's write offset stands: every earlier chunk went out whole (or we would be
    // stalled), so it is counted here instead of asked for with getWriteOffset().
    const start = conn.bodyOut
    const [ok, done] = conn.res.tryEnd(chunk, conn.head!.contentLength!)
    if (done) return finish(conn)
    if (ok) {
      conn.bodyOut = start + chunk.length
      return
    }
    conn.stall = { chunk, start }
    conn.queued += chunk.length
    hookWritable(conn)
  }

  /** Writes a streamed body chunk in pieces that fit the cork; false when the cork is full. */
  function writeStream(conn: HttpConn, chunk: Buffer): boolean {
    while (corkSent < chunk.length) {
      const n = takePiece(chunk.length - corkSent)
      if (n === 0) return false
      const piece = n === chunk.length ? chunk : chunk.subarray(corkSent, corkSent + n)
      corkSent += n
      // uWS buffers what the socket cannot take; count it so one slow client cannot hold memory.
      if (!conn.res.write(piece)) {
        conn.stall = { chunk: piece, start: 0 }
        conn.queued += n
        if (conn.queued > limits.connBuffer) {
          overflow(conn)
          break
        }
        hookWritable(conn)
      }
    }
    corkSent = 0
    return true
  }

  function hookWritable(conn: HttpConn): void {
    if (conn.writableHooked) return
    conn.writableHooked = true
    conn.res.onWritable((offset) => {
      if (conn.done) return true
      if (conn.head?.framing !== 'length') {
        conn.stall = undefined
        conn.queued = 0
        return true
      }
      const stall = conn.stall
      if (!stall) return true
      const rest = stall.chunk.subarray(offset - stall.start)
      const [ok, done] = conn.res.tryEnd(rest, conn.head.contentLength!)
      if (done) {
        finish(conn)
        return true
      }
      if (!ok) {
        conn.stall = { chunk: rest, start: offset }
        return false
      }
      conn.bodyOut = stall.start + stall.chunk.length
      conn.stall = undefined
      conn.queued = 0
      const queue = conn.queue
      while (queue && queue.length > 0 && !conn.stall && !conn.done) tryEnd(conn, queue.shift()!)
      return true
    })
  }

  // ------------------------------------------------------------------ Dir routes

  const dirRoutes = new Map<DirTarget, DirRoute>()
  function dirRoute(target: DirTarget): DirRoute {
    let dir = dirRoutes.get(target)
    if (!dir) {
      dir = createDirRoute(target, { chroot: server.chroot, mimetypes, log })
      dirRoutes.set(target, dir)
    }
    return dir
  }

  // ------------------------------------------------------------------ Proxy routes

  // One route (backend pool and health checks) per distinct backend list, kept across reloads.
  const proxyRoutes = new Map<string, ProxyRoute>()
  const proxyKey = ({ target, check }: ProxyUse): string =>
    target.backends.map((b) => `${b.addr}:${b.port}`).join(' ') +
    (check ? ` ${JSON.stringify(check)}` : '')
  function proxyRoute(target: ProxyTarget, check?: HealthCheck): ProxyRoute {
    const key = proxyKey({ target, check })
    let proxy = proxyRoutes.get(key)
    if (!proxy) {
      proxy = createProxyRoute(target, {
        log: log.child({ proxy: key }),
        maxBodyBytes: limits.uploadMax,
        holdMs: limits.handlerWait,
        ...(check ? { check } : {}),
      })
      proxy.onChange = statusChanged
      proxyRoutes.set(key, proxy)
    }
    return proxy
  }
  /**
   * A proxy route gone from the table takes no new request but finishes those it has (a web app
   * that became a static site, say), for at most RETIRE_MAX_MS, then closes.
   */
  const retiringProxies = new Set<ProxyRoute>()
  function retireProxy(proxy: ProxyRoute): void {
    const done = (): void => {
      clearTimeout(timer)
      retiringProxies.delete(proxy)
      proxy.close()
    }
    const timer = setTimeout(done, RETIRE_MAX_MS)
    retiringProxies.add(proxy)
    proxy.onChange = () => {
      if (proxy.inFlight() === 0) done()
    }
    if (proxy.inFlight() === 0) done()
  }
  function proxyTargets(spec: ServerSpec): ProxyUse[] {
    return spec.hosts.flatMap((h) =>
      Object.values(h.routes).flatMap((t): ProxyUse[] => {
        if (t.kind === 'proxy') return [{ target: t }]
        if (t.kind !== 'releases') return []
        return t.releases.flatMap((r) =>
          r.target.kind === 'proxy' ? [{ target: r.target, check: r.healthcheck }] : [],
        )
      }),
    )
  }
  // Start health checks at once rather than on the first request.
  for (const use of proxyTargets(server)) proxyRoute(use.target, use.check)

  // ------------------------------------------------------------------ releases (deploys)

  /**
   * Whether a release can take requests now: minReady handlers connected and its health check
   * passed through them, or a backend that passed its (health) probe.
   */
  function releaseReady(r: ReleaseTarget, minReady: number): boolean {
    const t = r.target
    if (t.kind === 'proxy') return proxyRoute(t, r.healthcheck).ready()
    const route = routes.get(routeKey(t))
    if (route === undefined || route.socket.peerCount < minReady) return false
    if (r.healthcheck === undefined) return true
    const h = healthOf(route, r.healthcheck)
    if (h.state === 'checking' && !h.probing && h.timer === undefined) probe(route, h)
    return h.state === 'healthy'
  }

  /** Whether a release's health check failed for good (it is never routed to). */
  function releaseFailed(r: ReleaseTarget): boolean {
    if (r.healthcheck === undefined) return false
    if (r.target.kind === 'proxy') return proxyRoute(r.target, r.healthcheck).failed()
    const route = routes.get(routeKey(r.target))
    return route !== undefined && healthOf(route, r.healthcheck).state === 'failed'
  }

  const health = new Map<string, Health>()
  function healthOf(route: Route, check: HealthCheck): Health {
    const key = `${routeKey(route.target)}\n${JSON.stringify(check)}`
    let h = health.get(key)
    if (!h) health.set(key, (h = { check, state: 'checking', failures: 0, probing: false }))
    return h
  }

  /** Sends the check's request through the release's handlers, as a client's would go. */
  function probe(route: Route, h: Health): void {
    h.probing = true
    const check = h.check
    const conn: ProbeConn = {
      kind: 'probe',
      id: 0,
      route,
      check,
      parser: new ResponseParser(),
      status: 0,
      text: '',
      timer: setTimeout(
        () => conn.settle(false, `no answer within ${check.timeoutMs} ms`),
        check.timeoutMs,
      ),
      settle(ok, why) {
        if (conns.get(conn.id) !== conn) return
        clearTimeout(conn.timer)
        conns.delete(conn.id)
        route.socket.settle(conn.id)
        h.probing = false
        const where = { handler: route.target.sendIdent, path: check.path }
        if (ok) {
          h.state = 'healthy'
          log.info(where, 'health check passed')
        } else if (++h.failures >= check.attempts) {
          h.state = 'failed'
          log.error(
            { ...where, why, attempts: check.attempts },
            'health check failed, release not routed to',
          )
        } else {
          log.warn({ ...where, why, failures: h.failures }, 'health check attempt failed')
          h.timer = setTimeout(() => {
            h.timer = undefined
            statusChanged()
          }, check.intervalMs)
        }
        statusChanged()
      },
    }
    conn.parser.expect(check.method)
    conn.id = conns.add(conn)
    const { path, headers } = buildHeaders(
      {
        method: check.method,
        url: check.path.split('?')[0]!,
        query: check.path.includes('?') ? check.path.slice(check.path.indexOf('?') + 1) : undefined,
        headers: [['user-agent', 'bareku-health-check']],
        remoteAddr: '127.0.0.1',
      },
      { pattern: '/', scheme: 'http', noClobberXff: false, maxHeaders: limits.headerCount },
    )
    route.socket.send(
      encodeRequest({
        sender: route.target.sendIdent,
        connId: conn.id,
        path,
        headers,
        body: EMPTY,
        format: route.target.protocol,
      }),
      conn.id,
    )
  }

  function probeReply(conn: ProbeConn, body: Buffer): void {
    const check = conn.check
    let events: ResponseEvent[]
    try {
      events = body.length === 0 ? conn.parser.finish() : conn.parser.push(body)
    } catch (err) {
      return conn.settle(false, `malformed reply: ${String(err)}`)
    }
    for (const ev of events) {
      if (ev.type === 'head') {
        conn.status = ev.head.status
        if (conn.status !== check.status) {
          return conn.settle(false, `status ${conn.status}, expected ${check.status}`)
        }
        if (check.match === undefined) return conn.settle(true, 'ok')
      } else if (ev.type === 'data' && conn.text.length < 65536) {
        conn.text += ev.chunk.toString('latin1')
      } else if (ev.type === 'end') {
        const ok = conn.text.includes(check.match ?? '')
        return conn.settle(ok, ok ? 'ok' : `body does not contain ${JSON.stringify(check.match)}`)
      }
    }
    if (body.length === 0) conn.settle(false, 'the handler closed without a full answer')
  }

  /**
   * The newest ready release of an app, else its newest whose health check has not failed
   * (requests then wait for it to be ready).
   */
  function serving(rt: ReleasesTarget): ReleaseTarget {
    let newest: ReleaseTarget | undefined
    let best: ReleaseTarget | undefined
    for (const r of rt.releases) {
      if ((newest === undefined || r.release > newest.release) && !releaseFailed(r)) newest = r
      if ((best === undefined || r.release > best.release) && releaseReady(r, rt.minReady)) best = r
    }
    return best ?? newest ?? rt.releases[0]!
  }

  /**
   * When each release of an app was first seen ready (`APP RELEASE`): for limits.release_ramp
   * after that, a share of new requests growing from 0 to 1 goes to it and the rest to the
   * release before, while that one is still ready. A new process is cold (its JIT, its caches, new upstream
   * connections): all the load at once would show as a latency spike (slow start, as in
   * HAProxy's `slowstart`).
   */
  const readySince = new Map<string, number>()
  let rampTimer: NodeJS.Timeout | undefined

  /** Until when `r` of `rt` is ramping up (0: not ramping), noting when it became ready. */
  function rampEnd(rt: ReleasesTarget, r: ReleaseTarget): number {
    const key = `${rt.app} ${r.release}`
    let since = readySince.get(key)
    if (since === undefined) {
      since = Date.now()
      readySince.set(key, since)
      // The end of a ramp changes what is reported (the older release may drain then).
      clearTimeout(rampTimer)
      rampTimer = setTimeout(statusChanged, limits.releaseRamp + 10)
    }
    return since + limits.releaseRamp
  }

  function choose(t: Target): HandlerTarget | DirTarget | ProxyTarget {
    if (t.kind !== 'releases') return t
    const now = serving(t)
    if (t.releases.length < 2 || !releaseReady(now, t.minReady)) return now.target
    const end = rampEnd(t, now)
    const left = end - Date.now()
    if (left <= 0 || Math.random() * limits.releaseRamp >= left) return now.target
    let prev: ReleaseTarget | undefined
    for (const r of t.releases) {
      if (r.release < now.release && (prev === undefined || r.release > prev.release)) {
        if (releaseReady(r, t.minReady)) prev = r
      }
    }
    return (prev ?? now).target
  }

  /** Whether `r` of `rt` is past its ramp (or never ramped), so older releases may drain. */
  function rampedUp(rt: ReleasesTarget, r: ReleaseTarget): boolean {
    return rt.releases.length < 2 || rampEnd(rt, r) <= Date.now()
  }

  /** Per app with releases side by side: which one serves, and each one's state. */
  function releaseStatus(): AppReleases[] {
    const inFlight = new Map<Route, number>()
    for (const conn of conns.values()) inFlight.set(conn.route, (inFlight.get(conn.route) ?? 0) + 1)
    const out: AppReleases[] = []
    const seen = new Set<string>()
    for (const host of server.hosts) {
      for (const t of Object.values(host.routes)) {
        if (t.kind !== 'releases' || seen.has(t.app)) continue
        seen.add(t.app)
        const now = serving(t)
        const releases = t.releases.map((r) => {
          const busy =
            r.target.kind === 'proxy'
              ? proxyRoute(r.target, r.healthcheck).inFlight()
              : (inFlight.get(routes.get(routeKey(r.target))!) ?? 0)
          // Older than a release that serves and took over, with nothing left in flight.
          const drained =
            r.release < now.release &&
            releaseReady(now, t.minReady) &&
            rampedUp(t, now) &&
            busy === 0
          return {
            release: r.release,
            ready: releaseReady(r, t.minReady),
            inFlight: busy,
            drained,
            failed: releaseFailed(r),
          }
        })
        out.push({ app: t.app, serving: now.release, rampedUp: rampedUp(t, now), releases })
      }
    }
    return out
  }

  /**
   * WebSockets stay on the release they were opened on. Once a newer release serves, an older
   * one's get limits.websocket_drain ms more; then they are closed with 1001 (going away), so
   * that the release drains and its processes can stop. Back to serving: no deadline.
   */
  function wsDeadlines(): void {
    const older = new Set<Route>()
    for (const host of server.hosts) {
      for (const t of Object.values(host.routes)) {
        if (t.kind !== 'releases') continue
        const now = serving(t)
        // The drain of older WebSockets starts once the new release takes all new requests.
        if (!releaseReady(now, t.minReady) || !rampedUp(t, now)) continue
        for (const r of t.releases) {
          const route = r.target.kind === 'handler' ? routes.get(routeKey(r.target)) : undefined
          if (route && r.release < now.release) older.add(route)
        }
      }
    }
    for (const route of routes.values()) {
      if (!older.has(route)) {
        clearTimeout(route.wsDeadline)
        route.wsDeadline = undefined
      } else if (route.wsDeadline === undefined) {
        route.wsDeadline = setTimeout(() => goingAway(route), limits.websocketDrain)
      }
    }
  }

  function goingAway(route: Route): void {
    let n = 0
    for (const conn of [...conns.values()]) {
      if (conn.kind !== 'ws' || conn.route !== route || !conn.ws || conn.closing) continue
      conn.closing = true
      conn.ws.end(1001, 'going away: the app was redeployed')
      notice(route, conn.id)
      n++
    }
    if (n > 0) {
      log.info(
        { handler: route.target.sendIdent, websockets: n, afterMs: limits.websocketDrain },
        'WebSockets of an older release closed (going away)',
      )
    }
  }

  // What was last said about each app's releases, so that changes are logged once.
  const lastSaid = new Map<string, string>()
  let statusTimer: NodeJS.Timeout | undefined
  /** Something a status depends on changed: recompute soon (coalesced), log, tell the caller. */
  function statusChanged(): void {
    if (statusTimer !== undefined || closed) return
    statusTimer = setTimeout(() => {
      statusTimer = undefined
      statusNow()
      wsDeadlines()
      opts.onStatus?.()
    }, STATUS_COALESCE_MS)
  }

  /**
   * The releases' status, logging each one's change to serving or drained. Every reader of the
   * status goes through here (the report too), so no change is reported before it is logged.
   */
  function statusNow(): AppReleases[] {
    const status = releaseStatus()
    for (const app of status) {
      for (const r of app.releases) {
        const key = `${app.app} ${r.release}`
        const serves = r.release === app.serving && r.ready && app.rampedUp
        const said = r.drained ? 'drained' : serves ? 'serving' : ''
        if (said === (lastSaid.get(key) ?? '')) continue
        lastSaid.set(key, said)
        if (said === 'serving') log.info({ app: app.app, release: r.release }, 'release serving')
        if (said === 'drained') log.info({ app: app.app, release: r.release }, 'release drained')
      }
    }
    return status
  }

  // ------------------------------------------------------------------ client -> handler

  function send(conn: HttpConn, msg: Buffer): void {
    conn.sent = true
    if (conn.route.socket.ready && !conn.held) {
      conn.route.socket.send(msg, conn.id)
      return
    }
    if (conn.held) {
      conn.held.msgs.push(msg)
      return
    }
    // No handler connected: hold the request rather than fail it, up to the deadline.
    const timer = setTimeout(() => {
      if (conn.done) return
      log.warn(
        { id: conn.id, handler: conn.route.target.sendIdent },
        'no handler connected in time',
      )
      finish(conn)
      fail(
        conn.res,
        503,
        RETRY_AFTER,
        `no handler of this route connected within ${limits.handlerWait} ms (limits.handler_wait); retry shortly.`,
      )
    }, limits.handlerWait)
    conn.held = { msgs: [msg], timer }
    conn.route.held.add(conn)
  }

  function flushHeld(route: Route): void {
    for (const conn of route.held) {
      if (!conn.held) continue
      clearTimeout(conn.held.timer)
      for (const msg of conn.held.msgs) route.socket.send(msg, conn.id)
      conn.held = undefined
    }
    route.held.clear()
  }

  /**
   * Reads the request line and headers into the module's scratch arrays (no per-request pairs);
   * pairs() gives the headers as a fresh list when a route keeps them. Not the client address:
   * it costs a system call and an ArrayBuffer, and Dir routes do without it (withAddress).
   */
  function readRequest(req: HttpRequest): Scratch {
    const r = scratch
    r.count = 0
    r.size = 0
    req.forEach(collectHeader)
    const url = req.getUrl()
    const query = req.getQuery() as string | undefined
    const method = upperMethod(req.getMethod())
    r.size += method.length + url.length + (query?.length ?? 0) + 12
    r.method = method
    r.url = url
    r.query = query
    r.remoteAddr = ''
    return r
  }

  function withAddress(r: Scratch, res: HttpResponse): Scratch {
    r.remoteAddr = remoteAddress(res)
    return r
  }

  /** Registers a request routed to a handler under a fresh id; a client abort owes a notice. */
  function newConn(res: HttpResponse, route: Route, method: string): HttpConn {
    const conn: HttpConn = {
      kind: 'http',
      id: 0,
      res,
      route,
      method,
      parser: parsers.pop() ?? new ResponseParser(),
      sent: false,
      done: false,
      replied: false,
      retried: false,
      queued: 0,
      bodyOut: 0,
      writableHooked: false,
      field: -1,
    }
    conn.parser.expect(method)
    conn.id = conns.add(conn)
    res.onAborted(() => {
      if (conn.done) return
      conn.done = true
      if (conn.upload) dropUpload(conn)
      const wasHeld = conn.held !== undefined
      finish(conn)
      if (conn.sent && !wasHeld) notice(route, conn.id)
    })
    return conn
  }

  function onHttp(res: HttpResponse, req: HttpRequest): void {
    const info = readRequest(req)
    if (info.size > limits.headerSize) return fail(res, 431)
    const expect = header(info, 'expect')
    if (expect !== '' && expect.toLowerCase() !== '100-continue') return fail(res, 417)
    const host = header(info, 'host')
    const found = matcher.match(host || undefined, splitPath(info.url))
    if (found === undefined) return fail(res, 404)
    const target = choose(found.target)
    if (target.kind === 'dir') {
      const dir = dirRoute(target)
      return dir.serve(res, {
        method: info.method,
        path: splitPath(info.url),
        routePrefix: prefixOf(found.routeKey),
        headers: pairs(info),
      })
    }
    withAddress(info, res)
    if (target.kind === 'proxy') {
      return proxyRoute(target).serve(res, {
        method: info.method,
        url: info.query === undefined ? info.url : `${info.url}?${info.query}`,
        headers: pairs(info),
        remoteAddr: info.remoteAddr,
        host,
      })
    }
    const route = routeFor(target)
    const conn = newConn(res, route, info.method)
    const te = header(info, 'transfer-encoding')
    const clText = header(info, 'content-length')
    const opts: TranslateOptions = {
      pattern: found.routeKey,
      scheme: 'http',
      noClobberXff: limits.noClobberXff,
      maxHeaders: limits.headerCount,
    }
    if (te === '' && clText === '' && route.target.protocol === 'json') {
      // The common request: no body, JSON headers, built as text straight from uWS's strings.
      const fast = headersJson(
        info.method,
        info.url,
        info.query,
        info.names,
        info.values,
        info.count,
        info.remoteAddr,
        opts,
      )
      if (fast !== undefined) {
        if (info.method === 'GET' || info.method === 'HEAD') conn.json = fast
        return send(
          conn,
          encodeJsonRequest(
            route.target.sendIdent,
            conn.id,
            fast.path,
            fast.json,
            EMPTY,
            fast.ascii,
          ),
        )
      }
    }
    const { path, headers } = buildHeaders(asRequest(info), opts)
    const message = (body: Buffer): Buffer =>
      encodeRequest({
        sender: route.target.sendIdent,
        connId: conn.id,
        path,
        headers,
        body,
        format: route.target.protocol,
      })

    if (te === '' && clText === '') {
      if (info.method === 'GET' || info.method === 'HEAD') conn.again = () => message(EMPTY)
      return send(conn, message(EMPTY))
    }
    const length = te === '' ? Number(clText) : Number.NaN
    if (te === '' && !/^[0-9]{1,15}$/.test(clText)) return failConn(conn, 400)
    if (length <= limits.contentLength) return readInline(conn, length, message)
    if (limits.uploadTempStore === undefined || length > limits.uploadMax)
      return failConn(conn, 413)
    startUpload(conn, headers, message)
  }

  function failConn(conn: HttpConn, status: number): void {
    finish(conn)
    fail(conn.res, status)
  }

  function readInline(conn: HttpConn, length: number, message: (body: Buffer) => Buffer): void {
    const body = Buffer.allocUnsafe(length)
    let got = 0
    conn.res.onData((chunk, isLast) => {
      if (conn.done) return
      const bytes = Buffer.from(chunk)
      if (got + bytes.length > length) return failConn(conn, 400)
      bytes.copy(body, got)
      got += bytes.length
      if (isLast) {
        if (got !== length) return failConn(conn, 400)
        send(conn, message(body))
      }
    })
  }

  function startUpload(conn: HttpConn, headers: Headers, message: (body: Buffer) => Buffer): void {
    // mkstemp: the template's trailing Xs become random characters; the file must be new.
    const template = limits.uploadTempStore!
    const rel = template.replace(/X+$/, (xs) =>
      randomBytes(xs.length).toString('base64url').slice(0, xs.length),
    )
    const abs = join(server.chroot || '.', rel)
    let fd: number
    try {
      fd = openSync(abs, 'wx', limits.uploadTempStoreMode)
    } catch (err) {
      log.error(
        { err: String(err), path: abs },
        'cannot create upload file; check upload.temp_store and chroot',
      )
      return failConn(conn, 502)
    }
    conn.upload = { fd, path: rel, abs }
    headers['x-mongrel2-upload-start'] = rel
    send(conn, message(EMPTY))
    let total = 0
    conn.res.onData((chunk, isLast) => {
      if (conn.done || !conn.upload) return
      total += chunk.byteLength
      if (total > limits.uploadMax) {
        dropUpload(conn)
        return failConn(conn, 413)
      }
      writeSync(fd, new Uint8Array(chunk))
      if (isLast) {
        closeSync(fd)
        conn.upload = undefined
        headers['x-mongrel2-upload-done'] = rel
        send(conn, message(EMPTY))
      }
    })
  }

  function dropUpload(conn: HttpConn): void {
    const up = conn.upload
    if (!up) return
    conn.upload = undefined
    try {
      closeSync(up.fd)
      unlinkSync(up.abs)
    } catch {
      // already gone
    }
  }

  // ------------------------------------------------------------------ WebSocket

  function onUpgrade(res: HttpResponse, req: HttpRequest, context: unknown): void {
    const info = readRequest(req)
    if (info.size > limits.headerSize) return fail(res, 431)
    if (!UPGRADE_TOKEN.test(req.getHeader('connection'))) {
      // RFC 6455 4.1 requires the token. And uWS takes a 5-byte Connection ("close") to mean
      // close after the response, which outside its own cork it does even to a 101, with no
      // close event for the WebSocket it then opens (cork-anchor.ts).
      return fail(res, 400, [], 'a WebSocket handshake needs the header "Connection: Upgrade"')
    }
    const found = matcher.match(req.getHeader('host') || undefined, splitPath(info.url))
    const target = found && choose(found.target)
    if (found === undefined || target?.kind !== 'handler') return fail(res, 404)
    const route = routeFor(target)
    const key = req.getHeader('sec-websocket-key')
    const { path, headers } = buildHeaders(
      asRequest(withAddress(info, res)),
      {
        pattern: found.routeKey,
        scheme: 'http',
        noClobberXff: limits.noClobberXff,
        maxHeaders: limits.headerCount,
      },
      'WEBSOCKET_HANDSHAKE',
    )
    const conn = newConn(res, route, 'GET')
    conn.upgrade = {
      key,
      extensions: req.getHeader('sec-websocket-extensions'),
      context,
      info: { path, headers },
    }
    // A handshake changes nothing yet: another handler may take it if the first dies.
    conn.again = () =>
      encodeRequest({
        sender: route.target.sendIdent,
        connId: conn.id,
        path,
        headers,
        body: Buffer.from(acceptKey(key)),
        format: route.target.protocol,
      })
    send(conn, conn.again())
  }

  /** Switches `conn` to a WebSocket on the handler's 101; `rest` is what followed it in its reply. */
  function upgradeWs(conn: HttpConn, head: ResponseHead, rest: ResponseEvent[]): void {
    const up = conn.upgrade!
    const protocol =
      head.headers.find(([k]) => k.toLowerCase() === 'sec-websocket-protocol')?.[1] ?? ''
    const ws: WsConn = {
      kind: 'ws',
      id: conn.id,
      route: conn.route,
      info: { path: up.info.path, headers: { ...up.info.headers } },
      frames: new FrameParser({ maxPayload: limits.websocketMax }),
      early: rest.flatMap((ev) => (ev.type === 'data' ? [ev.chunk] : [])),
      closing: false,
    }
    // Every frame message repeats the handshake's headers with METHOD WEBSOCKET (Mongrel2 §5).
    ws.info.headers.METHOD = 'WEBSOCKET'
    conn.done = true
    conn.route.socket.settle(conn.id)
    // Re-register under the same id: the connection keeps it for life.
    conns.set(conn.id, ws)
    const res = conn.res
    anchor.upgrade(res, () =>
      res.upgrade<WsData>({ id: conn.id }, up.key, protocol, up.extensions, up.context as never),
    )
  }

  function wsReply(conn: WsConn, body: Buffer): void {
    if (!conn.ws) {
      conn.early.push(body)
      return
    }
    let frames: WsFrame[]
    try {
      frames = conn.frames.push(body)
    } catch (err) {
      log.warn(
        { id: conn.id, code: isAppError(err) ? err.code : undefined },
        'malformed WebSocket frame from handler, closing',
      )
      return closeConn(conn)
    }
    const ws = conn.ws
    ws.cork(() => {
      for (const frame of frames) {
        if (conn.closing) return
        wsFrame(conn, ws, frame)
      }
    })
  }

  function wsFrame(conn: WsConn, ws: WebSocket<WsData>, frame: WsFrame): void {
    switch (frame.opcode) {
      case OPCODE.TEXT:
      case OPCODE.BINARY:
        if (frame.fin) return wsSend(conn, ws, frame.payload, frame.opcode === OPCODE.BINARY)
        conn.fragments = {
          opcode: frame.opcode,
          parts: [frame.payload],
          bytes: frame.payload.length,
        }
        return
      case OPCODE.CONTINUATION: {
        const f = conn.fragments
        if (!f) return
        f.parts.push(frame.payload)
        f.bytes += frame.payload.length
        if (f.bytes > limits.websocketMax) return closeConn(conn)
        if (frame.fin) {
          conn.fragments = undefined
          wsSend(conn, ws, Buffer.concat(f.parts), f.opcode === OPCODE.BINARY)
        }
        return
      }
      case OPCODE.CLOSE: {
        const { code, reason } = safeClose(frame.payload)
        conn.closing = true
        ws.end(code ?? 1000, reason)
        return
      }
      case OPCODE.PING:
        ws.ping(frame.payload)
        return
      default:
        return // PONG: uWS already answers the client's pings
    }
  }

  function safeClose(payload: Buffer): { code?: number; reason: string } {
    try {
      return parseClosePayload(payload)
    } catch {
      return { code: 1000, reason: '' }
    }
  }

  function wsSend(conn: WsConn, ws: WebSocket<WsData>, payload: Buffer, binary: boolean): void {
    ws.send(payload, binary)
    if (ws.getBufferedAmount() > limits.connBuffer) {
      log.warn({ id: conn.id }, 'WebSocket client too slow, closing')
      conn.closing = true
      ws.end(1008, 'too slow')
    }
  }

  function wsMessage(conn: WsConn, flags: number, payload: Buffer): void {
    const headers = { ...conn.info.headers, FLAGS: `0x${flags.toString(16).toUpperCase()}` }
    conn.route.socket.send(
      encodeRequest({
        sender: conn.route.target.sendIdent,
        connId: conn.id,
        path: conn.info.path,
        headers,
        body: payload,
        format: conn.route.target.protocol,
      }),
    )
  }

  function wsConn(ws: WebSocket<WsData>): WsConn | undefined {
    const conn = conns.get(ws.getUserData().id)
    return conn?.kind === 'ws' ? conn : undefined
  }

  // ------------------------------------------------------------------ listen

  const app = uWS.App()
  const anchor = createCorkAnchor(app, log)
  app.ws<WsData>('/*', {
    compression: uWS.DISABLED,
    maxPayloadLength: limits.websocketMax,
    idleTimeout: limits.websocketIdle,
    sendPingsAutomatically: false,
    maxBackpressure: limits.connBuffer * 2,
    upgrade: onUpgrade,
    open: (ws) => {
      const conn = wsConn(ws)
      if (!conn) return
      conn.ws = ws
      const early = conn.early.splice(0)
      for (const body of early) wsReply(conn, body)
    },
    message: (ws, message, isBinary) => {
      const conn = wsConn(ws)
      if (conn) wsMessage(conn, isBinary ? 0x82 : 0x81, Buffer.from(message))
    },
    ping: (ws, message) => {
      const conn = wsConn(ws)
      if (conn) wsMessage(conn, 0x89, Buffer.from(message))
    },
    pong: (ws, message) => {
      const conn = wsConn(ws)
      if (conn) wsMessage(conn, 0x8a, Buffer.from(message))
    },
    close: (ws, code, message) => {
      const conn = wsConn(ws)
      if (!conn) return
      conns.delete(conn.id)
      conn.ws = undefined
      if (conn.route.release) statusChanged()
      if (conn.closing) return
      // The client closed: forward its close frame, then tell the handler it is gone.
      const payload = Buffer.alloc(2 + message.byteLength)
      payload.writeUInt16BE(code === 1005 || code === 1006 ? 1000 : code, 0)
      Buffer.from(message).copy(payload, 2)
      wsMessage(conn, 0x88, payload)
      notice(conn.route, conn.id)
    },
  })
  app.any('/*', onHttp)

  const host = opts.listen?.host ?? server.bindAddr
  const wanted = opts.listen?.port ?? server.port
  const listenSocket = await new Promise<us_listen_socket>((resolve, reject) => {
    app.listen(host, wanted, (ls) =>
      ls
        ? resolve(ls)
        : reject(
            new Error(
              `cannot listen on ${host}:${wanted}: the port is in use or the address is not local; pick another port`,
            ),
          ),
    )
  })
  const port = uWS.us_socket_local_port(listenSocket)
  await anchor.connect(host, port)
  log.info({ listen: `${host}:${port}` }, 'listening')

  return {
    port,
    handlers: () =>
      [...routes.values()].map((r) => ({
        sendIdent: r.target.sendIdent,
        sendSpec: r.socket.sendEndpoint,
        recvSpec: r.socket.recvEndpoint,
      })),
    connections: () => conns.size,
    status: statusNow,
    async update(spec, nextMatcher, nextMimetypes) {
      const used = await bindHandlers(spec)
      server = spec
      matcher = nextMatcher
      mimetypes = nextMimetypes
      dirRoutes.clear()
      const keep = new Set(proxyTargets(spec).map(proxyKey))
      for (const [key, proxy] of proxyRoutes) {
        if (keep.has(key)) continue
        proxyRoutes.delete(key)
        retireProxy(proxy)
      }
      for (const use of proxyTargets(spec)) proxyRoute(use.target, use.check)
      for (const [key, route] of routes) {
        if (used.has(key)) continue
        routes.delete(key)
        retire(route)
      }
      routeCache = new WeakMap()
      const listed = new Set<string>()
      for (const h of spec.hosts) {
        for (const t of Object.values(h.routes)) {
          if (t.kind === 'releases') for (const r of t.releases) listed.add(`${t.app} ${r.release}`)
        }
      }
      for (const key of readySince.keys()) if (!listed.has(key)) readySince.delete(key)
      statusChanged()
    },
    close() {
      closed = true
      clearTimeout(statusTimer)
      clearTimeout(rampTimer)
      for (const h of health.values()) clearTimeout(h.timer)
      for (const route of routes.values()) clearTimeout(route.wsDeadline)
      for (const route of retiring.values()) {
        clearTimeout(route.retiring)
        route.socket.close()
      }
      for (const conn of conns.values()) if (conn.kind === 'probe') clearTimeout(conn.timer)
      uWS.us_listen_socket_close(listenSocket)
      anchor.close()
      app.close()
      for (const proxy of [...proxyRoutes.values(), ...retiringProxies]) proxy.close()
      for (const route of routes.values()) {
        for (const conn of route.held) if (conn.held) clearTimeout(conn.held.timer)
        route.socket.close()
      }
    },
  }
}

const EMPTY = Buffer.alloc(0)
/** The Connection header of a WebSocket handshake lists this token. */
const UPGRADE_TOKEN = /(?:^|,)[ \t]*upgrade[ \t]*(?:,|$)/i

/**
 * The request being read, reused for every request: uWS calls onHttp synchronously and nothing in
 * it re-enters, so one set of arrays serves all, and the common request allocates no pair list.
 */
interface Scratch {
  method: string
  url: string
  query: string | undefined
  remoteAddr: string
  /** Header names (lowercase) and values, `count` of them, in arrival order. */
  names: string[]
  values: string[]
  count: number
  /** Request line and headers, bytes, as limits.header_size counts them. */
  size: number
}

const scratch: Scratch = {
  method: '',
  url: '',
  query: undefined,
  remoteAddr: '',
  names: [],
  values: [],
  count: 0,
  size: 0,
}

// One function for every req.forEach: a closure per request would be garbage per request.
function collectHeader(name: string, value: string): void {
  const r = scratch
  r.names[r.count] = name
  r.values[r.count] = value
  r.count++
  r.size += name.length + value.length + 4
}

/** The first value of header `name` (lowercase), '' when absent, as req.getHeader answers. */
function header(r: Scratch, name: string): string {
  for (let i = 0; i < r.count; i++) if (r.names[i] === name) return r.values[i]!
  return ''
}

/** The request as buildHeaders takes it (its headers copied: the scratch is reused). */
function asRequest(r: Scratch) {
  return {
    method: r.method,
    url: r.url,
    query: r.query,
    headers: pairs(r),
    remoteAddr: r.remoteAddr,
  }
}

/** The headers as a fresh list, for routes that keep them past onHttp (proxy, dir, upgrade). */
function pairs(r: Scratch): [string, string][] {
  const out: [string, string][] = []
  for (let i = 0; i < r.count; i++) out.push([r.names[i]!, r.values[i]!])
  return out
}

// uWS gives the method lowercase; the common ones map to constants instead of a new string each.
function upperMethod(m: string): string {
  switch (m) {
    case 'get':
      return 'GET'
    case 'head':
      return 'HEAD'
    case 'post':
      return 'POST'
    case 'put':
      return 'PUT'
    case 'delete':
      return 'DELETE'
    default:
      return m.toUpperCase()
  }
}

// uWS copies the address text into a new ArrayBuffer per call (there is no per-connection handle
// to keep it on); the last address's string is reused while the bytes are the same.
let lastAddrBytes = new Uint8Array(0)
let lastAddr = ''
function remoteAddress(res: HttpResponse): string {
  const bytes = new Uint8Array(res.getRemoteAddressAsText())
  const last = lastAddrBytes
  if (bytes.length === last.length) {
    let i = 0
    while (i < bytes.length && bytes[i] === last[i]) i++
    if (i === bytes.length) return lastAddr
  }
  lastAddrBytes = bytes
  lastAddr = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString()
  return lastAddr
}

// Status lines as uWS will write them, kept as bytes per status: a string argument costs uWS a
// UTF-8 conversion into a fresh allocation on every call. The reason was read as latin1.
const statusLines = new Map<number, { reason: string; line: Buffer }>()
function statusLine(status: number, reason: string): Buffer | string {
  const known = statusLines.get(status)
  if (known !== undefined && known.reason === reason) return known.line
  const line = reason ? `${status} ${reason}` : String(status)
  // The first reason seen for a status is kept (a handler's own reasons cannot grow the map).
  if (known === undefined) statusLines.set(status, { reason, line: Buffer.from(line, 'latin1') })
  return latin1Bytes(line)
}

/** A proxy target as routed: with the health check of its release, if it has one. */
interface ProxyUse {
  target: ProxyTarget
  check?: HealthCheck
}
/** Longest a handler gone from the table stays bound for the requests it still has, ms. */
const RETIRE_MAX_MS = 60_000
/** Status recomputations within this long are one. */
const STATUS_COALESCE_MS = 20
const RETRY_AFTER: [string, string][] = [['Retry-After', '5']]
const NO_EVENTS: ResponseEvent[] = []

// Routes naming the same handler share its sockets; a `tcp://host:*` spec is only unique with
// its ident, so the key is the whole socket identity.
function routeKey(t: HandlerTarget): string {
  return `${t.sendSpec} ${t.sendIdent} ${t.recvSpec} ${t.recvIdent}`
}

/** A route string's prefix: the part before its first "(" (Mongrel2's pattern split). */
function prefixOf(routeKey: string): string {
  const paren = routeKey.indexOf('(')
  return paren < 0 ? routeKey : routeKey.slice(0, paren)
}

/** The path part of uWS's url, for routing (a `#fragment` is not part of it). */
function splitPath(url: string): string {
  const hash = url.indexOf('#')
  return hash < 0 ? url : url.slice(0, hash)
}
