/**
 * @module A fake Mongrel2 for tests: plays the server's side of the handler protocol on loopback.
 *
 *   test ──send()──────> PUSH bind (sendSpec) ──request──> handler PULL connect
 *   test <─nextReply()── SUB  bind (recvSpec) <──reply──── handler PUB  connect
 *
 * Both sockets bind `tcp://127.0.0.1:*`; the real endpoints come from `lastEndpoint`. A receive is
 * kept pending on the SUB the whole time: zeromq.js processes a socket's commands only while it
 * is used, and an idle SUB would never send its subscription to a handler that connects.
 */
import { Push, Subscriber } from 'zeromq'
import {
  encodeDisconnect,
  encodeRequest,
  parseReply,
  type HandlerReply,
  type HandlerRequest,
} from '../../lib/protocol/mongrel2.js'

/** Options of startFakeMongrel2. */
export interface FakeMongrel2Options {
  /** The send_ident put first in every request this helper builds; default a fixed uuid. */
  sendIdent?: string
  /** The SUB subscription (Mongrel2's recv_ident); default '' (everything). */
  recvIdent?: string
}

interface Waiter {
  resolve: (msg: Buffer) => void
  reject: (err: Error) => void
  timer: NodeJS.Timeout
}

/** The fake server. Create it with startFakeMongrel2 and close it in teardown. */
export class FakeMongrel2 {
  /** The PUSH endpoint: a handler's send spec (its PULL connects here). */
  readonly sendSpec: string
  /** The SUB endpoint: a handler's recv spec (its PUB connects here). */
  readonly recvSpec: string
  /** The sender field of requests built by sendRequest and sendDisconnect. */
  readonly sendIdent: string
  private readonly received: Buffer[] = []
  private readonly waiters: Waiter[] = []
  private sending: Promise<void> = Promise.resolve()
  private ended: Error | undefined

  /** Use startFakeMongrel2. */
  constructor(
    private readonly push: Push,
    private readonly sub: Subscriber,
    sendIdent: string,
  ) {
    this.sendSpec = push.lastEndpoint ?? ''
    this.recvSpec = sub.lastEndpoint ?? ''
    this.sendIdent = sendIdent
    void this.read()
  }

  private async read(): Promise<void> {
    try {
      for await (const frames of this.sub) {
        const msg =
          frames.length === 1 && frames[0] !== undefined ? frames[0] : Buffer.concat(frames)
        const waiter = this.waiters.shift()
        if (waiter === undefined) {
          this.received.push(msg)
        } else {
          clearTimeout(waiter.timer)
          waiter.resolve(msg)
        }
      }
      this.end(new Error('fake mongrel2 is closed'))
    } catch (err) {
      this.end(err as Error)
    }
  }

  private end(err: Error): void {
    this.ended = err
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer)
      w.reject(err)
    }
  }

  /** Pushes one raw request message; resolves once a handler's PULL has taken it into its queue. */
  send(msg: Buffer): Promise<void> {
    // zeromq.js allows one pending send per socket: chain them.
    const next = this.sending.then(() => this.push.send(msg))
    this.sending = next.catch(() => undefined)
    return next
  }

  /**
   * Builds a JSON-format request with Mongrel2's usual keys (overridable by `headers`) and sends it.
   */
  sendRequest(req: {
    connId: number
    path?: string
    headers?: HandlerRequest['headers']
    body?: Buffer | string
    format?: HandlerRequest['format']
  }): Promise<void> {
    const path = req.path ?? '/'
    const body = req.body ?? ''
    return this.send(
      encodeRequest({
        sender: this.sendIdent,
        connId: req.connId,
        path,
        headers: {
          PATH: path,
          host: 'localhost',
          METHOD: 'GET',
          VERSION: 'HTTP/1.1',
          URI: path,
          PATTERN: '/',
          URL_SCHEME: 'http',
          REMOTE_ADDR: '127.0.0.1',
          ...req.headers,
        },
        body: typeof body === 'string' ? Buffer.from(body) : body,
        format: req.format ?? 'json',
      }),
    )
  }

  /** Sends the `@*` disconnect notice for `connId`. */
  sendDisconnect(connId: number): Promise<void> {
    return this.send(encodeDisconnect(this.sendIdent, connId))
  }

  /** The next raw message a handler published; rejects after `timeoutMs`. */
  nextMessage(timeoutMs = 2000): Promise<Buffer> {
    const msg = this.received.shift()
    if (msg !== undefined) return Promise.resolve(msg)
    if (this.ended !== undefined) return Promise.reject(this.ended)
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters.splice(this.waiters.indexOf(waiter), 1)
          reject(new Error(`fake mongrel2: no reply within ${timeoutMs} ms`))
        }, timeoutMs),
      }
      this.waiters.push(waiter)
    })
  }

  /** The next reply, parsed with parseReply (throws E_M2_REPLY on a malformed one). */
  async nextReply(timeoutMs = 2000): Promise<HandlerReply> {
    return parseReply(await this.nextMessage(timeoutMs))
  }

  /** Closes both sockets; pending nextMessage calls reject. Safe to call twice. */
  close(): void {
    this.push.close()
    this.sub.close()
    this.end(new Error('fake mongrel2 is closed'))
  }
}

/** Binds a fake Mongrel2 on 127.0.0.1 ephemeral ports. */
export async function startFakeMongrel2(opts: FakeMongrel2Options = {}): Promise<FakeMongrel2> {
  const sendIdent = opts.sendIdent ?? 'c0ffee00-0000-4000-8000-00000000a001'
  const push = new Push({ linger: 0 })
  const sub = new Subscriber({ linger: 0 })
  try {
    sub.subscribe(opts.recvIdent ?? '')
    await push.bind('tcp://127.0.0.1:*')
    await sub.bind('tcp://127.0.0.1:*')
  } catch (err) {
    push.close()
    sub.close()
    throw err
  }
  return new FakeMongrel2(push, sub, sendIdent)
}
