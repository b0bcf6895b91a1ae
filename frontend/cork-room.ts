/**
 * @module How much one cork of a uWS socket may take, so that no write is lost.
 *
 * uWS.js 20.30 (uWebSockets before 6b7f354, April 2026, in no build that loads on Node 20 here)
 * loses bytes in one case: a socket is corked, a write does not fit in the rest of the loop's
 * 16 KiB cork buffer, and flushing what the buffer already holds fails because the client is not
 * reading. The corked bytes are kept; the new write's are dropped, yet reported as buffered. A
 * chunked reply to a slow client then arrives with a chunk's size line and without its data.
 * `tryEnd` is safe (its write is optional: unwritten bytes are reported and retried); `write`,
 * `end(body)` and `writeHeader` are not.
 *
 * So a writer that corks a socket itself counts what it puts into the cork, writes data in pieces
 * that fit, and ends the cork when the next write would not fit: uncorking at the end of a cork
 * keeps whatever the socket cannot take, and the writer goes on in a fresh cork.
 *
 *   res.cork(step) ─> room.fresh() ─> each write: room.take(n) or room.piece() ─┐
 *        ^                                              no room: step returns  ─┘
 *        └──── the caller corks again where step stopped, until it is done
 *
 * Only writers that cork a socket from outside uWS's callbacks use this: inside one, uWS has
 * corked the socket already, with an unknown amount in it, and nothing large is written there.
 */
import type { ResponseHead } from '../lib/protocol/http-response.js'

/**
 * The cork buffer (16 KiB) less what uWS writes on its own around a reply: Date, its own
 * uWebSockets header, Content-Length or Transfer-Encoding, the empty line and the last chunk.
 */
export const CORK_ROOM = 16 * 1024 - 512

/**
 * The longest head line (a header field, or a status line's reason) a writer takes: uWS writes
 * one in several parts, so it must fit in one cork. Longer ones are refused (a 502).
 */
export const MAX_LINE_BYTES = CORK_ROOM - 64

/** The first line of `head` longer than MAX_LINE_BYTES (a header name, or 'reason'), if any. */
export function lineTooLong(head: ResponseHead): string | undefined {
  if (head.reason.length > MAX_LINE_BYTES) return 'reason'
  const fields = head.headers
  for (let i = 0; i < fields.length; i++) {
    const [name, value] = fields[i]!
    if (name.length + value.length > MAX_LINE_BYTES) return name
  }
  return undefined
}

/** What uWS adds to one write of ours: a chunk's CRLF, hex size and CRLF, or a header's ": " and CRLF. */
const WRITE_OVERHEAD = 16

/** A data piece smaller than this waits for a fresh cork rather than making a tiny chunk. */
const MIN_PIECE = 1024

let left = CORK_ROOM

/** A cork begins: its buffer is empty. */
export function freshCork(): void {
  left = CORK_ROOM
}

/**
 * Takes room for one write of `bytes` bytes from the current cork; false when it does not fit.
 * The caller then ends the cork and writes it in a fresh one; one that does not fit even there
 * (`corkIsFresh()`) cannot be written safely at all: uWS writes a header, or a body's framing,
 * in several parts, and the first would be corked ahead of the one that overflows.
 */
export function takeCork(bytes: number): boolean {
  const need = bytes + WRITE_OVERHEAD
  if (need > left) return false
  left -= need
  return true
}

/** True when nothing has been written into the current cork. */
export function corkIsFresh(): boolean {
  return left === CORK_ROOM
}

/**
 * The largest data piece one write may carry in the current cork, its room taken; 0 when the
 * cork should end first. A piece never exceeds `want`.
 */
export function takePiece(want: number): number {
  const room = left - WRITE_OVERHEAD
  const n = Math.min(want, room)
  if (n <= 0 || (n < want && n < MIN_PIECE && left < CORK_ROOM)) return 0
  left -= n + WRITE_OVERHEAD
  return n
}
