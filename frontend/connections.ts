/**
 * @module Connection ids, Mongrel2-style: a per-process uint32 counter starting at 1, never
 * reused until it wraps. uWebSockets.js gives no handle on a keep-alive connection as a whole,
 * only on each request, so an HTTP id names one request (a WebSocket keeps its id for life).
 */
import { MAX_CONN_ID } from '../lib/protocol/mongrel2.js'

/**
 * A hash table from ids (1..MAX_CONN_ID) to values, for tables that gain and lose an entry per
 * request. Not a Map or Set on purpose: V8 rebuilds a Map's table after every so many deletes
 * and links the old table to the new one, so once one old table is promoted to the old
 * generation, every later table (and what it holds) survives the scavenges that should free it,
 * and is promoted in turn. Under load that chain made half of the frontend's runs promote ~1.4 KB
 * per request, with a major GC every half second and 5 ms scavenges (p99 x3).
 *
 * Open addressing on the id's low bits (ids are consecutive, so they spread evenly), linear
 * probing, deletion by backward shift (no tombstones); the table doubles at half full and
 * never links old arrays to new ones.
 */
export class IdMap<T> {
  private keys = new Uint32Array(64)
  private vals: (T | undefined)[] = new Array<T | undefined>(64).fill(undefined)
  private mask = 63
  private count = 0

  get size(): number {
    return this.count
  }

  get(id: number): T | undefined {
    const keys = this.keys
    let i = id & this.mask
    for (let k = keys[i]!; k !== 0; k = keys[i]!) {
      if (k === id) return this.vals[i]
      i = (i + 1) & this.mask
    }
    return undefined
  }

  has(id: number): boolean {
    return this.get(id) !== undefined
  }

  /** Puts `value` (never undefined) under `id` (1..MAX_CONN_ID). */
  set(id: number, value: T): void {
    const keys = this.keys
    let i = id & this.mask
    for (let k = keys[i]!; k !== 0; k = keys[i]!) {
      if (k === id) {
        this.vals[i] = value
        return
      }
      i = (i + 1) & this.mask
    }
    keys[i] = id
    this.vals[i] = value
    if (++this.count * 2 > keys.length) this.grow()
  }

  /** Removes `id`; false if it was not there. */
  delete(id: number): boolean {
    const keys = this.keys
    const vals = this.vals
    const mask = this.mask
    let i = id & mask
    for (;;) {
      const k = keys[i]!
      if (k === 0) return false
      if (k === id) break
      i = (i + 1) & mask
    }
    this.count--
    // Backward shift: entries after the hole that would no longer be found move into it.
    let j = i
    for (;;) {
      j = (j + 1) & mask
      const k = keys[j]!
      if (k === 0) break
      const home = k & mask
      const stays = i <= j ? home > i && home <= j : home > i || home <= j
      if (stays) continue
      keys[i] = k
      vals[i] = vals[j]
      i = j
    }
    keys[i] = 0
    vals[i] = undefined
    return true
  }

  clear(): void {
    this.keys.fill(0)
    this.vals.fill(undefined)
    this.count = 0
  }

  /** The ids, in ascending order (a copy: the table may change while the caller walks it). */
  ids(): number[] {
    const out: number[] = []
    for (let i = 0; i < this.keys.length; i++) if (this.keys[i] !== 0) out.push(this.keys[i]!)
    return out.sort((a, b) => a - b)
  }

  /** The values, by ascending id (a copy, as ids()). */
  values(): T[] {
    return this.ids().map((id) => this.get(id)!)
  }

  private grow(): void {
    const keys = this.keys
    const vals = this.vals
    this.keys = new Uint32Array(keys.length * 2)
    this.vals = new Array<T | undefined>(keys.length * 2).fill(undefined)
    this.mask = keys.length * 2 - 1
    this.count = 0
    for (let i = 0; i < keys.length; i++) if (keys[i] !== 0) this.set(keys[i]!, vals[i]!)
  }
}

export class ConnTable<T> {
  private next = 1
  private readonly conns = new IdMap<T>()

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

  /** The connections by ascending id, as a copy (callers may delete while they walk it). */
  values(): IterableIterator<T> {
    return this.conns.values()[Symbol.iterator]()
  }
}
