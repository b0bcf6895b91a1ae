/**
 * @module The frontend's two sockets for one Mongrel2 handler, speaking ZMTP 3.1 (NULL mechanism)
 * directly on node:net servers in the event loop, with no libzmq and no extra thread. A drop-in
 * for HandlerSocket (handler-socket.ts): same constructor, bind/send/ready/close, endpoints.
 *
 *   send_spec: a PUSH. Accepts PULL peers; requests go round-robin to the peers that finished
 *              the handshake. Requests wait in one shared queue until a peer can take them, and
 *              each peer gets at most one write per event-loop turn holding every message
 *              assigned to it that turn (one syscall instead of one per request).
 *   recv_spec: a SUB. Accepts PUB and XPUB peers, subscribes each to recv_ident (a SUBSCRIBE
 *              command if the peer greeted with ZMTP 3.1 or later, the 3.0 message %x01+topic
 *              otherwise), reads replies in bulk and hands each to onReply.
 *
 * A handler counts as connected (`ready`, `peerCount`) once its PULL finished the handshake and
 * its PUB has our subscription. A PUB drops what it sends before its subscription is in (the
 * slow joiner), so a request delivered the moment a handler connects, as a held one is, could
 * lose its reply. A 3.1 PUB is sent a PING right after the SUBSCRIBE and counts when its PONG
 * comes back: libzmq's I/O thread answers the PING after it has passed the SUBSCRIBE on to the
 * socket. A 3.1 peer that does not answer counts after SUBSCRIBE_CONFIRM_MS; a 3.0 one (no
 * PING in 3.0) at once.
 *
 * Endpoints: `tcp://HOST:PORT` (HOST `*` = every IPv4 interface, PORT `*` = a free port) and
 * `ipc://PATH` (a unix socket; a stale socket file is removed first, as libzmq does; `@name` is
 * Linux's abstract namespace).
 *
 * Backpressure: a peer with a write still in flight (not yet taken by the kernel) gets no new
 * messages; they go to other peers or wait in the shared queue, in order. So a peer that dies
 * takes with it only that one in-flight batch (part of it may already be in its kernel buffer,
 * so it is not resent: no duplicates). libzmq instead loses everything queued in the dead
 * peer's pipe, which with an unlimited HWM can be a lot.
 *
 * Lost requests: a request sent with an id is remembered against the PULL peer it was written
 * to until the caller settles it. When that peer's connection closes, its unsettled requests
 * are orphans: a draining handler closes its PULL first and still answers on its PUB, but a
 * handler that died (SIGKILL, crash) closes both at once. So the orphans count as lost (onLost)
 * when a PUB peer closed within PAIR_MS of the PULL (the same process, in all likelihood), when
 * no PUB peer is left, or after lostGraceMs at the latest; the caller retries or answers them.
 *
 * A peer with the wrong socket type, a mechanism other than NULL, or a malformed stream is
 * logged at warn with the reason and that connection alone is closed.
 */
import { lstatSync, unlinkSync } from 'node:fs'
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { AppError, isAppError } from '../lib/errors.js'
import type { HandlerTarget } from '../lib/config/routes.js'
import type { Logger } from '../lib/log.js'
import {
  FLAG_COMMAND,
  FLAG_MORE,
  MAX_FRAME_SIZE,
  ZmtpParser,
  encodeError,
  encodeFrame,
  encodeGreeting,
  encodeLegacySubscription,
  encodeMessages,
  encodePing,
  encodePong,
  encodeReady,
  encodeSubscribeCommand,
  parseCommand,
  parseError,
  parseMetadata,
  parsePing,
  type Greeting,
} from '../lib/protocol/zmtp.js'
import { IdMap } from './connections.js'
import type { HandlerSocketEvents, HandlerSocketOptions } from './handler-socket.js'

export type { HandlerSocketEvents, HandlerSocketOptions }

/** A PULL and a PUB closing this close together are taken to be one process dying, ms. */
export const PAIR_MS = 250

/** A peer that has not finished the handshake in this long is dropped (libzmq's default). */
export const HANDSHAKE_TIMEOUT_MS = 30_000

/** A 3.1 PUB that has not answered our PING after its SUBSCRIBE in this long counts anyway. */
export const SUBSCRIBE_CONFIRM_MS = 1000

/** The context of that PING, to tell its PONG from others. */
const SUBSCRIBED = Buffer.from('subscribed')

/** Largest reply accepted, all frames together: the same bound as one frame. */
const MAX_MESSAGE_SIZE = MAX_FRAME_SIZE

const GREETING = encodeGreeting({ minor: 1 })

type Side = 'push' | 'sub'

/** Which Socket-Type each side accepts from its peers (ZMTP 3.1 "legal peer types"). */
const PEER_TYPES: Record<Side, readonly string[]> = { push: ['PULL'], sub: ['PUB', 'XPUB'] }

interface Peer {
  side: Side
  sock: Socket
  parser: ZmtpParser
  /** For logs: the remote address, or a number for unix sockets. */
  name: string
  greeting: Greeting | undefined
  /** The Socket-Type of its READY, for logs. */
  type: string
  /** Handshake done both ways (and, on the SUB side, our subscription written). */
  open: boolean
  /** Counted in `pulls` or `pubs`: a PUB once its subscription is confirmed (module comment). */
  counted: boolean
  /** Until a PUB's PONG confirms its subscription: when to count it anyway. */
  confirm: NodeJS.Timeout | undefined
  closed: boolean
  /** A write has not been taken by the kernel yet: give this peer nothing more for now. */
  writing: boolean
  /** Frames of a multipart message read so far (SUB side). */
  parts: Buffer[]
  partsSize: number
  /** Ids of the requests written to this PULL peer and not settled yet (an IdMap, not a Set: see
   * connections.ts on why per-request ids stay out of Sets). */
  taken: IdMap<true>
}

/** The unsettled requests of a PULL peer whose connection closed. */
interface Orphans {
  peer: Peer
  closedAt: number
  /** The grace, when it has requests in hand. */
  timer: NodeJS.Timeout | undefined
}

/** A parsed endpoint spec. */
const MAX_IPC_PATH = 107

export type Endpoint = { kind: 'tcp'; host: string; port: number } | { kind: 'ipc'; path: string }

/**
 * Parses a libzmq-style bind endpoint: `tcp://HOST:PORT` (HOST `*` or an address, `[v6]`
 * bracketed; PORT a number, `*` or 0 for a free one) or `ipc://PATH`. Throws E_ZMTP otherwise.
 */
export function parseEndpoint(spec: string): Endpoint {
  if (spec.startsWith('ipc://')) {
    const path = spec.slice('ipc://'.length)
    if (path === '' || path === '*') {
      throw new AppError(
        'E_ZMTP',
        `endpoint "${spec}" needs a socket file path, e.g. ipc:///run/app/handler.sock`,
      )
    }
    // sun_path holds 108 bytes with the terminating NUL; the kernel refuses longer paths with a
    // bare EINVAL, so say it here with the length and the fix.
    if (Buffer.byteLength(path) > MAX_IPC_PATH) {
      throw new AppError(
        'E_ZMTP',
        `endpoint "${spec}" has a ${Buffer.byteLength(path)}-byte socket path; unix sockets allow at most ${MAX_IPC_PATH}: use a shorter path (e.g. under /run or /tmp)`,
      )
    }
    return { kind: 'ipc', path: path.startsWith('@') ? `\0${path.slice(1)}` : path }
  }
  const m = /^tcp:\/\/(\[[0-9a-fA-F:.]+\]|[^:/[\]]+):(\*|\d{1,5})$/.exec(spec)
  if (m === null) {
    throw new AppError(
      'E_ZMTP',
      `endpoint "${spec}" is not tcp://HOST:PORT or ipc://PATH (e.g. tcp://127.0.0.1:9999, tcp://*:*)`,
    )
  }
  const rawHost = m[1]!
  const host = rawHost === '*' ? '0.0.0.0' : rawHost.replace(/^\[(.*)\]$/, '$1')
  const port = m[2] === '*' ? 0 : Number(m[2])
  if (port > 65535) throw new AppError('E_ZMTP', `endpoint "${spec}" has a port above 65535`)
  return { kind: 'tcp', host, port }
}

/** Listens on an endpoint; resolves with the server and the endpoint actually bound. */
async function listen(
  spec: string,
  onConnection: (sock: Socket) => void,
): Promise<{ server: Server; endpoint: string }> {
  const ep = parseEndpoint(spec)
  // libzmq sets TCP_NODELAY on every connection: requests are small and must not wait for
  // Nagle, and we already batch per event-loop turn.
  const server = createServer({ noDelay: true }, onConnection)
  if (ep.kind === 'ipc' && !ep.path.startsWith('\0')) removeStaleSocket(ep.path)
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) =>
      reject(new AppError('E_ZMTP', `cannot bind ${spec}: ${err.message}`, { cause: err })),
    )
    if (ep.kind === 'ipc') server.listen(ep.path, resolve)
    else server.listen({ host: ep.host, port: ep.port }, resolve)
  })
  if (ep.kind === 'ipc') return { server, endpoint: spec }
  const addr = server.address() as AddressInfo
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address
  return { server, endpoint: `tcp://${host}:${addr.port}` }
}

/** A socket file left by a process that died is in the way of bind; anything else is not ours. */
function removeStaleSocket(path: string): void {
  let isSocket: boolean
  try {
    isSocket = lstatSync(path).isSocket()
  } catch {
    return
  }
  if (!isSocket) {
    throw new AppError(
      'E_ZMTP',
      `cannot bind ipc://${path}: the path exists and is not a socket; remove it or pick another path`,
    )
  }
  unlinkSync(path)
}

/** PUSH + SUB for one handler over ZMTP on node:net. Same public shape as HandlerSocket. */
export class ZmtpHandlerSocket {
  /** The endpoints actually bound (a `tcp://...:*` spec resolves to a real port). */
  sendEndpoint = ''
  recvEndpoint = ''
  private pushServer: Server | undefined
  private subServer: Server | undefined
  /** Peers that completed the handshake, per side; PULL peers in round-robin order. */
  private readonly pulls: Peer[] = []
  private readonly pubs: Peer[] = []
  private readonly peers = new Set<Peer>()
  private rr = 0
  /** Requests no peer has taken yet, oldest first, and their ids (0: not tracked). */
  private pending: Buffer[] = []
  private pendingIds: number[] = []
  /** Closed PULL peers not yet paired with a closed PUB, oldest first. */
  private orphans: Orphans[] = []
  /** When PUB peers closed that no closed PULL has claimed yet (the last PAIR_MS only). */
  private pubCloses: number[] = []
  private readonly lostGraceMs: number
  private flushScheduled = false
  private closed = false
  private nextPeerId = 1
  private readonly topic: Buffer
  private readonly readyPush: Buffer
  private readonly readySub: Buffer

  constructor(
    readonly target: HandlerTarget,
    private readonly events: HandlerSocketEvents,
    private readonly log: Logger,
    opts: HandlerSocketOptions = {},
  ) {
    this.lostGraceMs = opts.lostGraceMs ?? 5000
    this.topic = Buffer.from(target.recvIdent)
    // Identity is ignored by PULL peers (the spec reserves it for REQ/DEALER/ROUTER), but it
    // is what Mongrel2 sets on this socket, so it is announced for anyone looking.
    this.readyPush = encodeReady({ 'Socket-Type': 'PUSH', Identity: target.sendIdent })
    this.readySub = encodeReady({ 'Socket-Type': 'SUB' })
  }

  /** True when a request sent now can be answered: some handler is connected both ways. */
  get ready(): boolean {
    return this.pulls.length > 0 && this.pubs.length > 0
  }

  /** Handler processes connected both ways (as far as the counts tell). */
  get peerCount(): number {
    return Math.min(this.pulls.length, this.pubs.length)
  }

  /** Binds both sides. Rejects with E_ZMTP on a bad spec or a failed listen. */
  async bind(): Promise<void> {
    const push = await listen(this.target.sendSpec, (s) => this.accept('push', s))
    this.pushServer = push.server
    this.sendEndpoint = push.endpoint
    const sub = await listen(this.target.recvSpec, (s) => this.accept('sub', s))
    this.subServer = sub.server
    this.recvEndpoint = sub.endpoint
    if (this.closed) this.close()
  }

  /**
   * Queues a request message. It goes out at the end of this event-loop turn, together with every
   * other message sent this turn, to a connected handler (or waits for one).
   */
  send(msg: Buffer, id = 0): void {
    if (this.closed) return
    this.pending.push(msg)
    this.pendingIds.push(id)
    this.scheduleFlush()
  }

  /** The request `id` is answered or given up: it can no longer be lost. */
  settle(id: number): void {
    // The request is in the `taken` set of the peer it went to: an open PULL peer, or a closed
    // one still waiting as an orphan. Asking the few peers is cheaper than an id -> peer map
    // kept up to date on every request.
    for (let i = 0; i < this.pulls.length; i++) if (this.pulls[i]!.taken.delete(id)) return
    for (let i = 0; i < this.orphans.length; i++) if (this.orphans[i]!.peer.taken.delete(id)) return
  }

  /** Closes both servers and every peer connection; queued requests are dropped. */
  close(): void {
    this.closed = true
    this.pending = []
    this.pendingIds = []
    for (const o of this.orphans) clearTimeout(o.timer)
    this.orphans = []
    this.pushServer?.close()
    this.subServer?.close()
    for (const peer of this.peers) {
      clearTimeout(peer.confirm)
      peer.parser.stop()
      peer.sock.destroy()
    }
    this.peers.clear()
    this.pulls.length = 0
    this.pubs.length = 0
  }

  // ------------------------------------------------------------------ sending

  private scheduleFlush(): void {
    if (this.flushScheduled) return
    this.flushScheduled = true
    // setImmediate, not a microtask: it runs after the poll phase, so every request that
    // arrived in this turn's I/O callbacks shares one write per peer.
    setImmediate(this.flush)
  }

  private readonly flush = (): void => {
    this.flushScheduled = false
    if (this.closed || this.pending.length === 0) return
    const free = this.pulls.filter((p) => !p.writing)
    if (free.length === 0) return // a write completing or a peer arriving flushes again
    const msgs = this.pending
    const ids = this.pendingIds
    this.pending = []
    this.pendingIds = []
    if (free.length === 1) {
      this.write(free[0]!, msgs, ids)
      return
    }
    const batches: Buffer[][] = free.map(() => [])
    const batchIds: number[][] = free.map(() => [])
    let rr = this.rr % free.length
    for (let i = 0; i < msgs.length; i++) {
      batches[rr]!.push(msgs[i]!)
      batchIds[rr]!.push(ids[i]!)
      rr = rr + 1 === free.length ? 0 : rr + 1
    }
    this.rr = rr
    for (let i = 0; i < free.length; i++) {
      if (batches[i]!.length > 0) this.write(free[i]!, batches[i]!, batchIds[i]!)
    }
  }

  private write(peer: Peer, msgs: Buffer[], ids: number[]): void {
    for (const id of ids) {
      if (id === 0) continue
      peer.taken.set(id, true)
    }
    peer.writing = true
    const buf = msgs.length === 1 ? encodeFrame(msgs[0]!) : encodeMessages(msgs)
    peer.sock.write(buf, (err) => {
      peer.writing = false
      if (err === undefined || err === null) {
        if (this.pending.length > 0) this.scheduleFlush()
      } else if (!peer.closed) {
        this.log.debug({ peer: peer.name, lost: msgs.length, err: err.message }, 'write failed')
      }
    })
  }

  // ------------------------------------------------------------------ peers

  private accept(side: Side, sock: Socket): void {
    if (this.closed) {
      sock.destroy()
      return
    }
    const name =
      sock.remoteAddress !== undefined
        ? `${sock.remoteAddress}:${sock.remotePort}`
        : `unix#${this.nextPeerId++}`
    const peer: Peer = {
      side,
      sock,
      name,
      greeting: undefined,
      type: '',
      open: false,
      counted: false,
      confirm: undefined,
      closed: false,
      writing: false,
      parts: [],
      partsSize: 0,
      taken: new IdMap(),
      parser: undefined as unknown as ZmtpParser,
    }
    peer.parser = new ZmtpParser({
      greeting: (g) => this.onGreeting(peer, g),
      frame: (body, flags) => this.onFrame(peer, body, flags),
    })
    this.peers.add(peer)
    sock.setTimeout(HANDSHAKE_TIMEOUT_MS, () => {
      if (!peer.open) this.refuse(peer, `no handshake within ${HANDSHAKE_TIMEOUT_MS} ms`)
    })
    sock.on('data', (chunk: Buffer) => this.onData(peer, chunk))
    sock.on('error', (err) => this.log.debug({ side, peer: name, err: err.message }, 'peer error'))
    sock.on('close', () => this.onClose(peer))
    // Our whole greeting at once (the spec's "no backward compatibility" case): we only speak
    // ZMTP 3, and 3.x peers (libzmq 4.0 and later) read it whole.
    sock.write(GREETING)
  }

  private onData(peer: Peer, chunk: Buffer): void {
    try {
      peer.parser.push(chunk)
    } catch (err) {
      if (!isAppError(err, 'E_ZMTP')) throw err
      this.refuse(peer, err.message)
    }
  }

  private onGreeting(peer: Peer, g: Greeting): void {
    peer.greeting = g
    if (g.mechanism !== 'NULL') {
      // An ERROR would be read as a command of the peer's own mechanism: just close.
      this.refuse(
        peer,
        `peer uses the ${g.mechanism} security mechanism; this side speaks NULL only`,
        false,
      )
    }
  }

  private onFrame(peer: Peer, body: Buffer, flags: number): void {
    if (!peer.open) {
      this.handshake(peer, body, flags)
    } else if ((flags & FLAG_COMMAND) !== 0) {
      this.command(peer, body)
    } else if (peer.side === 'sub') {
      this.reply(peer, body, flags)
    } else {
      this.refuse(peer, 'a PULL peer sent a message; PULL sockets only receive')
    }
  }

  /** The NULL mechanism: the peer's READY (or ERROR) is the first frame after the greeting. */
  private handshake(peer: Peer, body: Buffer, flags: number): void {
    if ((flags & FLAG_COMMAND) === 0) {
      this.refuse(peer, 'peer sent a message before its READY command')
      return
    }
    const cmd = parseCommand(body)
    if (cmd.name === 'ERROR') {
      this.refuse(peer, `peer sent ERROR: ${parseError(cmd.data)}`, false)
      return
    }
    if (cmd.name !== 'READY') {
      this.refuse(peer, `peer sent ${cmd.name} where the NULL mechanism expects READY`)
      return
    }
    const type = parseMetadata(cmd.data).get('socket-type')?.toString('latin1')
    const want = PEER_TYPES[peer.side]
    if (type === undefined || !want.includes(type)) {
      this.refuse(
        peer,
        `peer is a ${type ?? 'socket without Socket-Type'}; the ${peer.side.toUpperCase()} side of handler ${this.target.sendIdent} accepts ${want.join(' or ')} only`,
      )
      return
    }
    peer.open = true
    peer.type = type
    peer.sock.setTimeout(0)
    if (peer.side === 'push') {
      peer.sock.write(this.readyPush)
      return this.count(peer)
    }
    const g = peer.greeting!
    if (g.major === 3 && g.minor === 0) {
      peer.sock.write(Buffer.concat([this.readySub, encodeLegacySubscription(this.topic)]))
      return this.count(peer)
    }
    const subscribe = encodeSubscribeCommand(this.topic)
    peer.sock.write(Buffer.concat([this.readySub, subscribe, encodePing(0, SUBSCRIBED)]))
    peer.confirm = setTimeout(() => {
      this.log.debug(
        { peer: peer.name, ms: SUBSCRIBE_CONFIRM_MS },
        'PUB peer did not answer PING; counted as subscribed',
      )
      this.count(peer)
    }, SUBSCRIBE_CONFIRM_MS)
  }

  /** Counts an open peer in `pulls` or `pubs`: requests may now go out, replies come back. */
  private count(peer: Peer): void {
    clearTimeout(peer.confirm)
    peer.confirm = undefined
    if (peer.counted || peer.closed) return
    peer.counted = true
    const was = this.ready
    const peers = this.peerCount
    if (peer.side === 'push') {
      this.pulls.push(peer)
      if (this.pending.length > 0) this.scheduleFlush()
    } else {
      this.pubs.push(peer)
    }
    this.log.debug(
      {
        side: peer.side,
        peer: peer.name,
        type: peer.type,
        zmtp: `${peer.greeting!.major}.${peer.greeting!.minor}`,
        peers: peer.side === 'push' ? this.pulls.length : this.pubs.length,
      },
      'handler peer connected',
    )
    this.changed(was, peers)
  }

  private command(peer: Peer, body: Buffer): void {
    const cmd = parseCommand(body)
    switch (cmd.name) {
      case 'PING':
        peer.sock.write(encodePong(parsePing(cmd.data).context))
        return
      case 'PONG':
        if (peer.side === 'sub' && cmd.data.equals(SUBSCRIBED)) this.count(peer)
        return
      case 'ERROR':
        this.refuse(peer, `peer sent ERROR: ${parseError(cmd.data)}`, false)
        return
      default:
        // Commands of later versions: nothing to do.
        return
    }
  }

  private reply(peer: Peer, body: Buffer, flags: number): void {
    if (peer.partsSize + body.length > MAX_MESSAGE_SIZE) {
      this.refuse(peer, `peer sent a message above ${MAX_MESSAGE_SIZE} bytes`)
      return
    }
    if ((flags & FLAG_MORE) !== 0) {
      peer.parts.push(body)
      peer.partsSize += body.length
      return
    }
    let msg = body
    if (peer.parts.length > 0) {
      // Mongrel2 replies are single-frame; a multipart one is joined as libzmq's reader would.
      peer.parts.push(body)
      msg = Buffer.concat(peer.parts)
      peer.parts = []
      peer.partsSize = 0
    }
    // The PUB filters already; this keeps the contract even with a peer that does not.
    if (this.topic.length > 0 && !startsWith(msg, this.topic)) return
    try {
      this.events.onReply(msg)
    } catch (err) {
      // The caller's bug, not the peer's: keep the connection and the following replies.
      this.log.error({ err }, 'reply handler threw')
    }
  }

  /** Logs why, sends ERROR when the peer can read it, and closes this connection only. */
  private refuse(peer: Peer, reason: string, sendError = true): void {
    if (peer.closed || this.closed) return
    peer.parser.stop()
    this.log.warn(
      {
        side: peer.side,
        peer: peer.name,
        endpoint: peer.side === 'push' ? this.sendEndpoint : this.recvEndpoint,
        reason,
      },
      'handler peer refused',
    )
    if (sendError && peer.greeting !== undefined && !peer.open) {
      peer.sock.end(encodeError(reason), () => peer.sock.destroy())
    } else {
      peer.sock.destroy()
    }
    this.drop(peer)
  }

  private onClose(peer: Peer): void {
    if (this.closed) return
    const wasOpen = peer.open
    this.drop(peer)
    if (wasOpen) {
      this.log.debug(
        {
          side: peer.side,
          peer: peer.name,
          peers: peer.side === 'push' ? this.pulls.length : this.pubs.length,
        },
        'handler peer disconnected',
      )
    }
  }

  /** Forgets a peer (idempotent); the counts and `ready` follow. */
  private drop(peer: Peer): void {
    if (peer.closed) return
    peer.closed = true
    this.peers.delete(peer)
    clearTimeout(peer.confirm)
    if (!peer.open) return
    const was = this.ready
    const peers = this.peerCount
    const list = peer.side === 'push' ? this.pulls : this.pubs
    const i = list.indexOf(peer)
    if (i >= 0) list.splice(i, 1)
    peer.open = false
    this.changed(was, peers)
    if (this.closed) return
    if (peer.side === 'push') this.orphan(peer)
    else this.pubClosed()
  }

  /**
   * A PULL peer is gone. A PUB that closed within PAIR_MS (and that no other PULL claimed) is
   * taken as the same process dying: its unsettled requests are lost now. Otherwise it may be
   * draining: they wait for its PUB to close (PAIR_MS), for no PUB to be left, or for the grace.
   */
  private orphan(peer: Peer): void {
    const now = Date.now()
    this.pubCloses = this.pubCloses.filter((at) => now - at <= PAIR_MS)
    if (this.pubCloses.length > 0) {
      this.pubCloses.shift()
      return this.lose(peer)
    }
    if (this.pubs.length === 0) return this.lose(peer)
    const o: Orphans = { peer, closedAt: now, timer: undefined }
    if (peer.taken.size > 0) {
      o.timer = setTimeout(() => {
        this.orphans = this.orphans.filter((x) => x !== o)
        this.lose(peer, 'no answer within the grace')
      }, this.lostGraceMs)
    }
    this.orphans.push(o)
  }

  private pubClosed(): void {
    const now = Date.now()
    // Closed PULLs with nothing in hand are only kept for pairing.
    this.orphans = this.orphans.filter((o) => o.timer !== undefined || now - o.closedAt <= PAIR_MS)
    const gone =
      this.pubs.length === 0
        ? this.orphans
        : this.orphans.filter((o) => now - o.closedAt <= PAIR_MS).slice(0, 1)
    if (gone.length === 0) {
      this.pubCloses.push(now)
      return
    }
    this.orphans = this.orphans.filter((o) => !gone.includes(o))
    for (const o of gone) {
      clearTimeout(o.timer)
      this.lose(o.peer)
    }
  }

  private lose(peer: Peer, why = 'the handler process is gone'): void {
    const ids = peer.taken.ids()
    peer.taken.clear()
    if (ids.length === 0) return
    this.log.warn({ peer: peer.name, requests: ids.length, why }, 'handler lost requests')
    this.events.onLost?.(ids)
  }

  private changed(was: boolean, peers?: number): void {
    if (peers !== undefined && peers !== this.peerCount) this.events.onPeers?.(this.peerCount)
    if (was === this.ready) return
    if (this.ready) {
      this.log.info({ send: this.sendEndpoint, recv: this.recvEndpoint }, 'handler connected')
      this.events.onReady()
    } else {
      this.log.info({ send: this.sendEndpoint, recv: this.recvEndpoint }, 'no handler connected')
    }
  }
}

function startsWith(buf: Buffer, prefix: Buffer): boolean {
  return (
    buf.length >= prefix.length && buf.compare(prefix, 0, prefix.length, 0, prefix.length) === 0
  )
}
