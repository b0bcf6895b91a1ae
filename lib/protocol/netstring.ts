/**
 * @module Netstrings (D. J. Bernstein), the framing of Mongrel2's request headers and body.
 *
 *   netstring = length ":" payload ","
 *   length    = "0" / (%x31-39 *9DIGIT)     ; decimal byte count of payload, no leading zeros
 *   payload   = length bytes, any value
 *
 * A declared length is checked against the bytes actually present before anything is sliced,
 * so a huge declared size costs nothing; payloads are zero-copy views into the input.
 */
import { AppError } from '../errors.js'

/** Longest length prefix accepted: 10 digits is 9.9 GB, far beyond any buffer we hold. */
export const MAX_LENGTH_DIGITS = 10

const COLON = 0x3a
const COMMA = 0x2c

/** A parsed value and the offset just past it in the input. */
export interface Parsed<T> {
  value: T
  next: number
}

/**
 * Reads the `length ":"` prefix at `offset`; returns the declared length and the payload's offset.
 * Shared with tnetstrings, whose prefix is the same. `what` names the format in errors.
 */
export function parseLengthPrefix(
  buf: Buffer,
  offset: number,
  code: 'E_NETSTRING' | 'E_TNETSTRING',
  what: string,
): { length: number; start: number } {
  let length = 0
  let i = offset
  for (; i < buf.length && i - offset <= MAX_LENGTH_DIGITS; i++) {
    const c = buf[i]!
    if (c === COLON) break
    if (c < 0x30 || c > 0x39) {
      throw new AppError(
        code,
        `${what} must start with a decimal length and ":", got byte 0x${c.toString(16).padStart(2, '0')} at offset ${i}; the sender is not speaking this format`,
      )
    }
    length = length * 10 + (c - 0x30)
  }
  const digits = i - offset
  if (i >= buf.length) {
    throw new AppError(
      code,
      `${what} at offset ${offset} is truncated: no ":" after the length; send the whole message`,
    )
  }
  if (buf[i] !== COLON) {
    throw new AppError(
      code,
      `${what} length at offset ${offset} has more than ${MAX_LENGTH_DIGITS} digits; no message is that large`,
    )
  }
  if (digits === 0) throw new AppError(code, `${what} at offset ${offset} has no length before ":"`)
  if (digits > 1 && buf[offset] === 0x30) {
    throw new AppError(
      code,
      `${what} length at offset ${offset} has a leading zero; write it as plain decimal`,
    )
  }
  const start = i + 1
  if (length > buf.length - start) {
    throw new AppError(
      code,
      `${what} at offset ${offset} declares ${length} bytes but only ${buf.length - start} follow; the message is truncated or its length is wrong`,
    )
  }
  return { length, start }
}

/** Parses one netstring at `offset`. Throws AppError E_NETSTRING on any deviation. */
export function parseNetstring(buf: Buffer, offset = 0): Parsed<Buffer> {
  const { length, start } = parseLengthPrefix(buf, offset, 'E_NETSTRING', 'netstring')
  const end = start + length
  if (end >= buf.length || buf[end] !== COMMA) {
    throw new AppError(
      'E_NETSTRING',
      `netstring at offset ${offset} must end with "," after its ${length} bytes, got ${end >= buf.length ? 'end of input' : `byte 0x${buf[end]!.toString(16)}`}; its length is wrong`,
    )
  }
  return { value: buf.subarray(start, end), next: end + 1 }
}

/** Encodes `payload` (UTF-8 when a string) as a netstring. */
export function encodeNetstring(payload: Buffer | string): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload
  const prefix = `${body.length}:`
  const out = Buffer.allocUnsafe(prefix.length + body.length + 1)
  out.write(prefix, 0, 'latin1')
  body.copy(out, prefix.length)
  out[out.length - 1] = COMMA
  return out
}
