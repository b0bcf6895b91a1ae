/**
 * @module The frontend's HTTP and WebSocket side on uWebSockets.js, for handler routes: turns each
 * request into a Mongrel2 request message, and each handler reply back into writes on the client
 * connection it addresses.
 *
 *   client ──HTTP──> uWS ──buildHeaders──> encodeRequest ──PUSH──> handler
 *   client <──uWS writes── ResponseParser <──parseReply── SUB <──── handler (raw HTTP bytes)
 *   client ──WS frame──> uWS message ──> request, METHOD WEBSOCKET, FLAGS 0x81 ──> handler
 *   client <──ws.send── FrameParser <──── raw frames ──────────────────────────── handler
 *
 * The handler writes raw HTTP; uWS owns the socket, so each connection's reply stream is parsed
 * incrementally (status, headers, Content-Length / chunked / close-delimited body) and mapped
 * onto uWS calls, corked, with backpressure.
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
  encodeRequest,
  parseExtended,
  parseReply,
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
  type HttpRequest,
  type HttpResponse,
  type us_listen_socket,
  type WebSocket,
} from './uws.js'
import { ConnTable } from './connections.js'
import { createDirRoute, type DirRoute } from './dir.js'
import { createProxyRoute, type ProxyRoute } from './proxy.js'
import { HandlerSocket } from './handler-socket.js'
import { ZmtpHandlerSocket } from './zmtp-socket.js'
import type { Limits } from './limits.js'
import { buildHeaders, type RequestInfo } from './translate.js'

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
  /** Already sent to a second handler after the first died with it. */
  retried: boolean
  head?: ResponseHead
  /** A held request's message and its deadline. */
  held?: { msgs: Buffer[]; timer: NodeJS.Timeout }
  /** Body bytes uWS could not take yet (Content-Length replies through tryEnd). */
  stall?: { chunk: Buffer; start: number }
  queue: Buffer[]
  queued: number
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

// Hop-by-hop and framing headers from the handler that uWS writes itself (or must not see).
const DROP_REPLY_HEADERS = new Set([
  'content-length',
  'transfer-encoding',
  'connection',
  'keep-alive',
  'date',
])

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
    return used
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
      } else if (conn.again && !conn.retried) {
        conns.delete(conn.id)
        conn.id = conns.add(conn)
        conn.retried = true
        log.info({ id, retry: conn.id, handler: route.target.sendIdent }, 'retrying a lost request')
        send(conn, conn.again())
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

  function onReply(route: Route, msg: Buffer): void {
    let reply
    try {
      reply = parseReply(msg)
    } catch (err) {
      log.warn({ code: isAppError(err) ? err.code : undefined, err: String(err) }, 'dropped reply')
      return
    }
    for (const id of reply.connIds) {
      const conn = conns.get(id)
      if (conn === undefined) {
        // Mongrel2 tells the handler an id is dead; an empty (close) message needs no answer.
        if (reply.body.length > 0) notice(route, id)
        continue
      }
      if (conn.route !== route) {
        log.warn(
          { id, handler: route.target.sendIdent },
          'reply to a connection routed elsewhere dropped',
        )
        continue
      }
      if (conn.kind === 'probe') probeReply(conn, reply.body)
      else if (reply.extended) extended(conn, reply.body)
      else if (reply.body.length === 0) closeConn(conn)
      else if (conn.kind === 'http') httpReply(conn, reply.body)
      else wsReply(conn, reply.body)
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

  function finish(conn: HttpConn): void {
    conn.done = true
    conn.route.socket.settle(conn.id)
    if (conn.held) clearTimeout(conn.held.timer)
    conn.route.held.delete(conn)
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
    conn.res.cork(() => {
      for (const ev of events) {
        if (conn.done) break
        apply(conn, ev)
      }
    })
  }

  function apply(conn: HttpConn, ev: ResponseEvent): void {
    const res = conn.res
    switch (ev.type) {
      case 'informational':
        return // uWS answers Expect: 100-continue itself and cannot write other interim heads
      case 'head': {
        const head = ev.head
        conn.head = head
        if (conn.upgrade) {
          if (head.status === 101) return upgradeWs(conn, head)
          conn.upgrade = undefined
        }
        res.writeStatus(head.reason ? `${head.status} ${head.reason}` : String(head.status))
        for (const [name, value] of head.headers) {
          if (!DROP_REPLY_HEADERS.has(name.toLowerCase())) res.writeHeader(name, value)
        }
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
        return
      }
      case 'data':
        if (conn.head?.framing === 'length') return writeLength(conn, ev.chunk)
        return writeStream(conn, ev.chunk)
      case 'end':
        // A close-delimited reply reaches the client chunked, with Connection: close.
        if (conn.done) return
        finish(conn)
        res.end()
        return
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
      conn.queue.push(chunk)
      conn.queued += chunk.length
      if (conn.queued > limits.connBuffer) overflow(conn)
      return
    }
    tryEnd(conn, chunk)
  }

  function tryEnd(conn: HttpConn, chunk: Buffer): void {
    const start = conn.res.getWriteOffset()
    const [ok, done] = conn.res.tryEnd(chunk, conn.head!.contentLength!)
    if (done) return finish(conn)
    if (ok) return
    conn.stall = { chunk, start }
    conn.queued += chunk.length
    hookWritable(conn)
  }

  function writeStream(conn: HttpConn, chunk: Buffer): void {
    // uWS buffers what the socket cannot take; count it so one slow client cannot hold memory.
    if (!conn.res.write(chunk)) {
      conn.stall = { chunk, start: 0 }
      conn.queued += chunk.length
      if (conn.queued > limits.connBuffer) return overflow(conn)
      hookWritable(conn)
    }
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
      conn.stall = undefined
      conn.queued = 0
      while (conn.queue.length > 0 && !conn.stall && !conn.done) tryEnd(conn, conn.queue.shift()!)
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

  function choose(t: Target): HandlerTarget | DirTarget | ProxyTarget {
    return t.kind === 'releases' ? serving(t).target : t
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
          const drained = r.release < now.release && releaseReady(now, t.minReady) && busy === 0
          return {
            release: r.release,
            ready: releaseReady(r, t.minReady),
            inFlight: busy,
            drained,
            failed: releaseFailed(r),
          }
        })
        out.push({ app: t.app, serving: now.release, releases })
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
        if (!releaseReady(now, t.minReady)) continue
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
      const status = releaseStatus()
      wsDeadlines()
      for (const app of status) {
        for (const r of app.releases) {
          const key = `${app.app} ${r.release}`
          const said = r.drained ? 'drained' : r.release === app.serving && r.ready ? 'serving' : ''
          if (said === (lastSaid.get(key) ?? '')) continue
          lastSaid.set(key, said)
          if (said === 'serving') log.info({ app: app.app, release: r.release }, 'release serving')
          if (said === 'drained') log.info({ app: app.app, release: r.release }, 'release drained')
        }
      }
      opts.onStatus?.()
    }, STATUS_COALESCE_MS)
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

  function readRequest(res: HttpResponse, req: HttpRequest): RequestInfo & { size: number } {
    const headers: [string, string][] = []
    let size = 0
    req.forEach((name, value) => {
      headers.push([name, value])
      size += name.length + value.length + 4
    })
    const url = req.getUrl()
    const query = req.getQuery() as string | undefined
    const method = req.getMethod().toUpperCase()
    size += method.length + url.length + (query?.length ?? 0) + 12
    const remoteAddr = Buffer.from(res.getRemoteAddressAsText()).toString()
    return { method, url, query, headers, remoteAddr, size }
  }

  /** Registers a request routed to a handler under a fresh id; a client abort owes a notice. */
  function newConn(res: HttpResponse, route: Route, method: string): HttpConn {
    const conn: HttpConn = {
      kind: 'http',
      id: 0,
      res,
      route,
      method,
      parser: new ResponseParser(),
      sent: false,
      done: false,
      replied: false,
      retried: false,
      queue: [],
      queued: 0,
      writableHooked: false,
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
    const info = readRequest(res, req)
    if (info.size > limits.headerSize) return fail(res, 431)
    const expect = req.getHeader('expect')
    if (expect !== '' && expect.toLowerCase() !== '100-continue') return fail(res, 417)
    const found = matcher.match(req.getHeader('host') || undefined, splitPath(info.url))
    if (found === undefined) return fail(res, 404)
    const target = choose(found.target)
    if (target.kind === 'dir') {
      const dir = dirRoute(target)
      return dir.serve(res, {
        method: info.method,
        path: splitPath(info.url),
        routePrefix: prefixOf(found.routeKey),
        headers: info.headers,
      })
    }
    if (target.kind === 'proxy') {
      return proxyRoute(target).serve(res, {
        method: info.method,
        url: info.query === undefined ? info.url : `${info.url}?${info.query}`,
        headers: info.headers,
        remoteAddr: info.remoteAddr,
        host: req.getHeader('host'),
      })
    }
    const route = routes.get(routeKey(target))!
    const conn = newConn(res, route, info.method)
    const { path, headers } = buildHeaders(info, {
      pattern: found.routeKey,
      scheme: 'http',
      noClobberXff: limits.noClobberXff,
      maxHeaders: limits.headerCount,
    })
    const message = (body: Buffer): Buffer =>
      encodeRequest({
        sender: route.target.sendIdent,
        connId: conn.id,
        path,
        headers,
        body,
        format: route.target.protocol,
      })

    const te = req.getHeader('transfer-encoding')
    const clText = req.getHeader('content-length')
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
    const info = readRequest(res, req)
    if (info.size > limits.headerSize) return fail(res, 431)
    const found = matcher.match(req.getHeader('host') || undefined, splitPath(info.url))
    const target = found && choose(found.target)
    if (found === undefined || target?.kind !== 'handler') return fail(res, 404)
    const route = routes.get(routeKey(target))!
    const key = req.getHeader('sec-websocket-key')
    const { path, headers } = buildHeaders(
      info,
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

  function upgradeWs(conn: HttpConn, head: ResponseHead): void {
    const up = conn.upgrade!
    const protocol =
      head.headers.find(([k]) => k.toLowerCase() === 'sec-websocket-protocol')?.[1] ?? ''
    const ws: WsConn = {
      kind: 'ws',
      id: conn.id,
      route: conn.route,
      info: { path: up.info.path, headers: { ...up.info.headers } },
      frames: new FrameParser({ maxPayload: limits.websocketMax }),
      early: [],
      closing: false,
    }
    // Every frame message repeats the handshake's headers with METHOD WEBSOCKET (Mongrel2 §5).
    ws.info.headers.METHOD = 'WEBSOCKET'
    conn.done = true
    conn.route.socket.settle(conn.id)
    // Re-register under the same id: the connection keeps it for life.
    conns.set(conn.id, ws)
    conn.res.upgrade<WsData>({ id: conn.id }, up.key, protocol, up.extensions, up.context as never)
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
    status: releaseStatus,
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
        proxy.close()
      }
      for (const use of proxyTargets(spec)) proxyRoute(use.target, use.check)
      for (const [key, route] of routes) {
        if (used.has(key)) continue
        routes.delete(key)
        retire(route)
      }
      statusChanged()
    },
    close() {
      closed = true
      clearTimeout(statusTimer)
      for (const h of health.values()) clearTimeout(h.timer)
      for (const route of routes.values()) clearTimeout(route.wsDeadline)
      for (const route of retiring.values()) {
        clearTimeout(route.retiring)
        route.socket.close()
      }
      for (const conn of conns.values()) if (conn.kind === 'probe') clearTimeout(conn.timer)
      uWS.us_listen_socket_close(listenSocket)
      app.close()
      for (const proxy of proxyRoutes.values()) proxy.close()
      for (const route of routes.values()) {
        for (const conn of route.held) if (conn.held) clearTimeout(conn.held.timer)
        route.socket.close()
      }
    },
  }
}

const EMPTY = Buffer.alloc(0)

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
