/**
 * @module A WebSocket the frontend holds open to itself on loopback, so that a WebSocket upgrade
 * decided later (the handler's 101 arrives over ZeroMQ, after uWS's upgrade callback returned)
 * runs inside a cork that is not the upgraded socket's own.
 *
 * Why: uWS 20.30's `HttpResponse.cork()` tells whether its callback upgraded the socket by
 * comparing addresses. The upgrade reallocates the socket, and in place when the WebSocket's data
 * is the smaller, so `cork()` then reads the ended response's state from memory that is now the
 * WebSocket's or the allocator's, and can close the new WebSocket just after `open`
 * (uNetworking/uWebSockets#1929, fixed upstream in 2026, in no build that loads on Node 20 here).
 * Upgrading outside any cork avoids that but makes uWS print a warning for every connection.
 * While another socket holds the loop's cork, `res.cork()` runs its callback at once, without
 * that check and without the warning; the anchor is that other socket.
 *
 *   anchor.cork ─> res.cork (no cork of its own: the loop's cork is taken) ─> res.upgrade ─> open
 *
 * Without an anchor (it could not connect, or it closed) the upgrade runs in res's own cork, as
 * uWS documents, and the warn log says so once.
 */
import { randomBytes } from 'node:crypto'
import { connect, type Socket } from 'node:net'
import type { Logger } from '../lib/log.js'
import type { HttpResponse, TemplatedApp, WebSocket } from './uws.js'

const ANCHOR_WAIT_MS = 5000

export interface CorkAnchor {
  /** Opens the anchor to the address the app listens on; resolves when open or given up. */
  connect(host: string, port: number): Promise<void>
  /** Runs `upgrade` (a call of `res.upgrade`) outside res's own cork whenever it can. */
  upgrade(res: HttpResponse, upgrade: () => void): void
  /** Closes the anchor connection: the frontend is stopping. */
  close(): void
}

/**
 * Adds the anchor's route to `app` (a random path: no client can guess it). `connect` then
 * opens the anchor to `host:port`, the address `app` listens on, and resolves once it is open or
 * once it is known that there will be none.
 */
export function createCorkAnchor(app: TemplatedApp, log: Logger): CorkAnchor {
  const path = `/.bareku-cork-anchor/${randomBytes(16).toString('hex')}`
  let anchor: WebSocket<unknown> | undefined
  let client: Socket | undefined
  let closing = false
  let warned = false
  let opened: (() => void) | undefined

  app.ws(path, {
    idleTimeout: 0,
    maxPayloadLength: 0,
    sendPingsAutomatically: false,
    upgrade: (res, req, context) => {
      if (anchor) return void res.close()
      res.upgrade({}, req.getHeader('sec-websocket-key'), '', '', context)
    },
    open: (ws) => {
      anchor = ws
      opened?.()
    },
    close: (ws) => {
      if (ws !== anchor) return
      anchor = undefined
      if (!closing) {
        log.warn({}, 'the cork anchor closed: WebSocket upgrades fall back to their own cork')
      }
    },
  })

  return {
    async connect(host, port) {
      const local = host === '0.0.0.0' || host === '' ? '127.0.0.1' : host === '::' ? '::1' : host
      const open = new Promise<void>((resolve) => (opened = resolve))
      const sock = (client = connect(port, local))
      sock.unref()
      sock.on('connect', () => {
        sock.write(
          `GET ${path} HTTP/1.1\r\nHost: ${local}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
            `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\n` +
            'Sec-WebSocket-Version: 13\r\n\r\n',
        )
      })
      sock.on('data', () => {}) // the 101, then nothing: the anchor never carries a message
      sock.on('error', (err) => {
        log.warn({ err: String(err), host: local, port }, 'cannot open the cork anchor')
      })
      sock.on('close', () => opened?.())
      // a loopback upgrade takes a millisecond: past this, go on without an anchor
      const giveUp = setTimeout(() => sock.destroy(), ANCHOR_WAIT_MS)
      await open
      clearTimeout(giveUp)
      opened = undefined
    },
    upgrade(res, upgrade) {
      if (anchor) {
        anchor.cork(() => res.cork(upgrade))
        return
      }
      if (!warned && !closing) {
        warned = true
        log.warn({}, 'no cork anchor: WebSocket upgrades run in their own cork (uWS may close one)')
      }
      res.cork(upgrade)
    },
    close() {
      closing = true
      client?.destroy()
    },
  }
}
