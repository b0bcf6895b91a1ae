/**
 * @module The frontend's two sockets for one Mongrel2 handler: a PUSH it binds on send_spec
 * (identity send_ident) that requests go out on, round-robin to every connected handler process,
 * and a SUB it binds on recv_spec (subscribed to recv_ident) that replies come in on.
 *
 * ZeroMQ's PUSH blocks while no handler is connected. Rather than leave a send pending, the
 * frontend counts connected peers from socket monitor events and holds requests in its own
 * queue until one arrives (or the request's deadline passes: the caller's business).
 * A handler counts as connected only once both its PULL and its PUB have completed the ZeroMQ
 * handshake: a PUB drops what it publishes before our SUB's subscription reaches it, so a
 * request sent to a handler whose PUB is not yet connected could have its reply lost.
 */
import { Push, Subscriber } from 'zeromq'
import type { HandlerTarget } from '../lib/config/routes.js'
import type { Logger } from '../lib/log.js'

export interface HandlerSocketEvents {
  /** A raw reply message (parse it with parseReply). */
  onReply(msg: Buffer): void
  /** The number of connected handler processes went from 0 to 1 or more. */
  onReady(): void
  /**
   * Requests (by the id given to send) that a handler took and can no longer answer: its
   * connection closed and it died (see zmtp-socket.ts). Only the native ZMTP socket knows.
   */
  onLost?(ids: number[]): void
  /** The number of connected handler processes (both ways) changed. */
  onPeers?(count: number): void
}

/** Options shared by both handler socket kinds. */
export interface HandlerSocketOptions {
  /**
   * How long a request taken by a handler whose PULL connection closed may still be answered
   * (the handler may be draining) before it counts as lost, ms. Default 5000.
   */
  lostGraceMs?: number
}

export class HandlerSocket {
  readonly push: Push
  readonly sub: Subscriber
  /** Handler sockets connected to the PUSH side (their PULLs) and to the SUB side (their PUBs). */
  private pullPeers = 0
  private pubPeers = 0
  /** The endpoints actually bound (a `tcp://...:*` spec resolves to a real port). */
  sendEndpoint = ''
  recvEndpoint = ''
  private readonly queue: Buffer[] = []
  private sending = false
  private closed = false

  constructor(
    readonly target: HandlerTarget,
    private readonly events: HandlerSocketEvents,
    private readonly log: Logger,
  ) {
    // sendHighWaterMark 0 is "no limit": requests are bounded by our own holding queue and
    // per-connection limits, and a full HWM would block every route sharing this handler.
    this.push = new Push({ linger: 0, sendHighWaterMark: 0 })
    this.sub = new Subscriber({ linger: 0, receiveHighWaterMark: 0 })
    this.push.events.on('handshake', () => this.changed(() => this.pullPeers++))
    this.push.events.on('disconnect', () =>
      this.changed(() => (this.pullPeers = Math.max(0, this.pullPeers - 1))),
    )
    this.sub.events.on('handshake', () => this.changed(() => this.pubPeers++))
    this.sub.events.on('disconnect', () =>
      this.changed(() => (this.pubPeers = Math.max(0, this.pubPeers - 1))),
    )
  }

  /** True when a request sent now can be answered: some handler is connected both ways. */
  get ready(): boolean {
    return this.pullPeers > 0 && this.pubPeers > 0
  }

  /** Handler processes connected both ways (as far as the counts tell). */
  get peerCount(): number {
    return Math.min(this.pullPeers, this.pubPeers)
  }

  /** libzmq does not say which peer took a request, so nothing is tracked: a no-op. */
  settle(_id: number): void {}

  private changed(update: () => void): void {
    const was = this.ready
    const peers = this.peerCount
    update()
    if (peers !== this.peerCount) this.events.onPeers?.(this.peerCount)
    if (was === this.ready) return
    if (this.ready) {
      this.log.info({ send: this.sendEndpoint, recv: this.recvEndpoint }, 'handler connected')
      this.events.onReady()
    } else {
      this.log.info({ send: this.sendEndpoint, recv: this.recvEndpoint }, 'no handler connected')
    }
  }

  /** Binds both sockets and starts receiving replies. */
  async bind(): Promise<void> {
    await this.push.bind(this.target.sendSpec)
    await this.sub.bind(this.target.recvSpec)
    this.sub.subscribe(this.target.recvIdent)
    this.sendEndpoint = this.push.lastEndpoint ?? this.target.sendSpec
    this.recvEndpoint = this.sub.lastEndpoint ?? this.target.recvSpec
    void this.receiveLoop()
  }

  /** Queues a request message; sends at once when a handler is connected. */
  send(msg: Buffer, _id = 0): void {
    this.queue.push(msg)
    if (!this.sending) void this.pump()
  }

  private async pump(): Promise<void> {
    this.sending = true
    try {
      while (this.queue.length > 0 && !this.closed) {
        const batch = this.queue.splice(0, this.queue.length)
        for (const msg of batch) await this.push.send(msg)
      }
    } catch (err) {
      if (!this.closed) this.log.error({ err }, 'handler send failed')
    } finally {
      this.sending = false
    }
  }

  private async receiveLoop(): Promise<void> {
    try {
      for (;;) {
        const frames = await this.sub.receive()
        // Mongrel2 replies are single-frame; a multipart message is joined as it would be read.
        const msg = frames.length === 1 ? frames[0]! : Buffer.concat(frames)
        this.events.onReply(msg)
      }
    } catch (err) {
      if (!this.closed) this.log.error({ err }, 'handler receive failed')
    }
  }

  close(): void {
    this.closed = true
    this.push.close()
    this.sub.close()
  }
}
