/**
 * @module Connection ids, Mongrel2-style: a per-process uint32 counter starting at 1, never
 * reused until it wraps. uWebSockets.js gives no handle on a keep-alive connection as a whole,
 * only on each request, so an HTTP id names one request (a WebSocket keeps its id for life).
 */
import { MAX_CONN_ID } from '../lib/protocol/mongrel2.js'

export class ConnTable<T> {
  private next = 1
  private readonly conns = new Map<number, T>()

  /** Allocates a fresh id for `conn`, skipping ids still in use after a wrap. */
  add(conn: T): number {
    let id = this.next
    while (this.conns.has(id)) id = id >= MAX_CONN_ID ? 1 : id + 1
    this.next = id >= MAX_CONN_ID ? 1 : id + 1
    this.conns.set(id, conn)
    return id
  }

  /** Puts `conn` under an id it already has (a WebSocket taking over its handshake's id). */
  set(id: number, conn: T): void {
    this.conns.set(id, conn)
  }

  get(id: number): T | undefined {
    return this.conns.get(id)
  }

  delete(id: number): void {
    this.conns.delete(id)
  }

  get size(): number {
    return this.conns.size
  }

  values(): IterableIterator<T> {
    return this.conns.values()
  }
}
