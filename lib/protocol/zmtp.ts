/**
 * @module ZMTP 3.0/3.1 (rfc.zeromq.org/spec:23 and spec:37), the ZeroMQ wire protocol, as far as
 * a PUSH and a SUB with the NULL mechanism need it: the greeting, frames, and the READY, ERROR,
 * SUBSCRIBE, CANCEL, PING and PONG commands. Pure encoding and parsing; no sockets.
 *
 *   connection = greeting *frame
 *   greeting   = %xFF 8OCTET %x7F major minor mechanism as-server 31%x00   ; 64 octets
 *   major      = %x03 (or higher)   minor = %x00 (3.0) / %x01 (3.1)
 *   mechanism  = 20("A"-"Z" / DIGIT / "-" / "_" / "." / "+" / %x00)       ; "NULL" zero-padded
 *   as-server  = %x00 / %x01
 *   frame      = flags size body
 *   flags      = %b00000CLM   ; M = MORE, L = LONG (8-octet size), C = COMMAND; 7-3 are zero
 *   size       = OCTET (short) / 8OCTET (long, network order)
 *   command    = frame with C set and M clear; body = name-size name data
 *   name-size  = OCTET (1-255)   name = 1*255ALPHA
 *   READY      = name "READY", data = *(OCTET name 4OCTET value)  ; metadata, names case-free
 *   ERROR      = name "ERROR", data = OCTET reason
 *   SUBSCRIBE  = name "SUBSCRIBE", data = topic          ; 3.1
 *   CANCEL     = name "CANCEL", data = topic             ; 3.1
 *   PING       = name "PING", data = 2OCTET ttl 0*16OCTET context   ; 3.1
 *   PONG       = name "PONG", data = 0*16OCTET context              ; 3.1
 *   legacy subscription (3.0) = a one-frame message: %x01 topic (subscribe) / %x00 topic (cancel)
 *
 * The parser is incremental (feed it whatever TCP delivers) and bounded: a declared frame size
 * above its maximum is an error before anything is allocated, and a bad greeting byte is an
 * error as soon as it arrives, so a peer that sends garbage is found out at once rather than
 * after 64 bytes that may never come.
 */
import { AppError } from '../errors.js'

/** Every ZMTP 3.x greeting is exactly this long. */
export const GREETING_SIZE = 64
/** Largest frame body the parser accepts unless told otherwise. */
export const MAX_FRAME_SIZE = 64 * 1024 * 1024

export const FLAG_MORE = 0x01
export const FLAG_LONG = 0x02
export const FLAG_COMMAND = 0x04
const RESERVED_FLAGS = 0xf8

const MECHANISM_SIZE = 20
const MAX_PING_CONTEXT = 16

/** What a peer's greeting announced. */
export interface Greeting {
  major: number
  minor: number
  /** The mechanism name without its zero padding, e.g. "NULL". */
  mechanism: string
  asServer: boolean
}

function zmtpError(message: string): AppError {
  return new AppError('E_ZMTP', message)
}

function hex(byte: number): string {
  return `0x${byte.toString(16).padStart(2, '0')}`
}

const isMechanismChar = (c: number): boolean =>
  (c >= 0x41 && c <= 0x5a) ||
  (c >= 0x30 && c <= 0x39) ||
  c === 0x2d ||
  c === 0x5f ||
  c === 0x2e ||
  c === 0x2b

const isAlpha = (c: number): boolean => (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a)

const isNameChar = (c: number): boolean =>
  isAlpha(c) || (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x5f || c === 0x2e || c === 0x2b

/**
 * The 64-byte greeting: version 3.`minor` (default 3.1), mechanism (default "NULL"), as-server
 * (default false, which the NULL mechanism requires).
 */
export function encodeGreeting(
  opts: { minor?: number; mechanism?: string; asServer?: boolean } = {},
): Buffer {
  const mechanism = opts.mechanism ?? 'NULL'
  if (
    mechanism.length === 0 ||
    mechanism.length > MECHANISM_SIZE ||
    ![...mechanism].every((ch) => isMechanismChar(ch.charCodeAt(0)))
  ) {
    throw zmtpError(
      `a ZMTP mechanism is 1-20 characters of A-Z 0-9 - _ . +, got "${mechanism}"; use "NULL"`,
    )
  }
  const g = Buffer.alloc(GREETING_SIZE)
  g[0] = 0xff
  g[9] = 0x7f
  g[10] = 3
  g[11] = opts.minor ?? 1
  g.write(mechanism, 12, 'latin1')
  g[32] = opts.asServer === true ? 1 : 0
  return g
}

/**
 * Checks greeting byte `i` as soon as it is known, so garbage is refused early. Throws E_ZMTP.
 * Only the bytes with a meaning are checked: the padding (1-8) and the filler are not
 * significant by the spec's own rule.
 */
function checkGreetingByte(i: number, c: number): void {
  if (i === 0 && c !== 0xff) {
    throw zmtpError(
      `a ZMTP 3 greeting starts with 0xff, got ${hex(c)}; the peer is not a ZeroMQ 3.x+ socket (or speaks ZMTP 1.0, which is not supported)`,
    )
  }
  if (i === 9 && c !== 0x7f) {
    throw zmtpError(
      `a ZMTP 3 greeting has 0x7f at offset 9, got ${hex(c)}; the peer speaks ZMTP 1.0 or is not ZeroMQ`,
    )
  }
  if (i === 10 && c < 3) {
    throw zmtpError(
      `the peer speaks ZMTP major version ${c} (ZeroMQ 2.x/3.x); this side needs ZMTP 3 (libzmq 4.0 or later)`,
    )
  }
  if (i === 32 && c > 1) {
    throw zmtpError(`the greeting's as-server octet must be 0 or 1, got ${hex(c)}`)
  }
}

/** Parses a complete 64-byte greeting. Throws E_ZMTP on any deviation. */
export function parseGreeting(buf: Buffer): Greeting {
  if (buf.length !== GREETING_SIZE) {
    throw zmtpError(`a ZMTP greeting is ${GREETING_SIZE} bytes, got ${buf.length}`)
  }
  for (const i of [0, 9, 10, 32]) checkGreetingByte(i, buf[i]!)
  return { ...parseMechanism(buf), major: buf[10]!, minor: buf[11]!, asServer: buf[32] === 1 }
}

function parseMechanism(buf: Buffer): { mechanism: string } {
  let end = 12
  while (end < 32 && buf[end] !== 0) end++
  for (let i = 12; i < 32; i++) {
    const c = buf[i]!
    // Zero octets are padding: allowed only after the name, never inside or before it.
    const ok = i < end ? isMechanismChar(c) : c === 0
    if (!ok) {
      throw zmtpError(
        `the greeting's mechanism has byte ${hex(c)} at offset ${i}; it must be A-Z 0-9 - _ . + padded with zeros`,
      )
    }
  }
  if (end === 12) throw zmtpError('the greeting names no security mechanism')
  return { mechanism: buf.toString('latin1', 12, end) }
}

/** Receives what a ZmtpParser reads, in order. */
export interface ZmtpParserEvents {
  /** The peer's greeting, once all 64 bytes are in and valid. */
  greeting(greeting: Greeting): void
  /**
   * One frame: `flags` is the flags octet (FLAG_MORE, FLAG_COMMAND; FLAG_LONG says nothing more).
   * `body` may be a view into the chunk given to push(): copy it to keep it past the chunk.
   */
  frame(body: Buffer, flags: number): void
}

const enum State {
  Greeting,
  Flags,
  Size,
  Body,
  Stopped,
}

/**
 * An incremental ZMTP reader: push() each chunk as it arrives; greeting and frames come out
 * through the events. A protocol violation throws E_ZMTP from push() and stops the parser for
 * good (nothing after a broken frame can be trusted).
 */
export class ZmtpParser {
  private state = State.Greeting
  private readonly greetingBuf = Buffer.alloc(GREETING_SIZE)
  private have = 0
  private flags = 0
  private readonly sizeBuf = Buffer.alloc(8)
  private sizeLen = 0
  private size = 0
  private body: Buffer | undefined

  constructor(
    private readonly events: ZmtpParserEvents,
    /** Largest frame body accepted; a larger declared size is an error before allocation. */
    readonly maxFrameSize = MAX_FRAME_SIZE,
  ) {}

  /** Stops parsing, also in the middle of a chunk: call from an event to ignore the rest. */
  stop(): void {
    this.state = State.Stopped
  }

  get stopped(): boolean {
    return this.state === State.Stopped
  }

  /** Feeds bytes from the peer. Throws E_ZMTP on a protocol violation (and stops). */
  push(chunk: Buffer): void {
    try {
      this.run(chunk)
    } catch (err) {
      this.state = State.Stopped
      throw err
    }
  }

  private run(chunk: Buffer): void {
    let i = 0
    const n = chunk.length
    while (i < n) {
      switch (this.state) {
        case State.Stopped:
          return
        case State.Greeting: {
          while (i < n && this.have < GREETING_SIZE) {
            const c = chunk[i++]!
            checkGreetingByte(this.have, c)
            this.greetingBuf[this.have++] = c
          }
          if (this.have === GREETING_SIZE) {
            this.state = State.Flags
            this.events.greeting(parseGreeting(this.greetingBuf))
          }
          break
        }
        case State.Flags: {
          const f = chunk[i++]!
          if ((f & RESERVED_FLAGS) !== 0) {
            throw zmtpError(
              `a ZMTP frame's flags octet has reserved bits set (${hex(f)}); the stream is corrupt or not ZMTP 3`,
            )
          }
          if ((f & FLAG_COMMAND) !== 0 && (f & FLAG_MORE) !== 0) {
            throw zmtpError(`a ZMTP command frame cannot have MORE set (flags ${hex(f)})`)
          }
          this.flags = f
          this.sizeLen = 0
          if ((f & FLAG_LONG) === 0) {
            // The common case: the short size is usually in the same chunk.
            if (i < n) this.startBody(chunk[i++]!)
            else this.state = State.Size
          } else {
            this.state = State.Size
          }
          break
        }
        case State.Size: {
          const want = (this.flags & FLAG_LONG) !== 0 ? 8 : 1
          while (i < n && this.sizeLen < want) this.sizeBuf[this.sizeLen++] = chunk[i++]!
          if (this.sizeLen < want) break
          if (want === 1) {
            this.startBody(this.sizeBuf[0]!)
          } else {
            const hi = this.sizeBuf.readUInt32BE(0)
            const lo = this.sizeBuf.readUInt32BE(4)
            // hi > 0 is already past 4 GiB: no need to build the exact number to refuse it.
            if (hi > 0 || lo > this.maxFrameSize) {
              throw zmtpError(
                `a ZMTP frame declares ${hi > 0 ? `${hi} * 2^32 + ${lo}` : lo} bytes, above the limit of ${this.maxFrameSize}; refusing it`,
              )
            }
            this.startBody(lo)
          }
          break
        }
        case State.Body: {
          if (this.body === undefined && n - i >= this.size) {
            // Whole body in this chunk: hand out a view, no copy.
            const body = chunk.subarray(i, i + this.size)
            i += this.size
            this.state = State.Flags
            this.events.frame(body, this.flags)
            break
          }
          // Split across chunks: copy into a buffer of exactly the declared size.
          this.body ??= Buffer.allocUnsafe(this.size)
          const take = Math.min(this.size - this.have, n - i)
          chunk.copy(this.body, this.have, i, i + take)
          this.have += take
          i += take
          if (this.have === this.size) {
            const body = this.body
            this.body = undefined
            this.state = State.Flags
            this.events.frame(body, this.flags)
          }
          break
        }
      }
    }
  }

  private startBody(size: number): void {
    if (size > this.maxFrameSize) {
      throw zmtpError(
        `a ZMTP frame declares ${size} bytes, above the limit of ${this.maxFrameSize}; refusing it`,
      )
    }
    this.size = size
    this.have = 0
    this.body = undefined
    this.state = State.Body
    if (size === 0) {
      // An empty body needs no byte to complete: deliver it now, even at the end of a chunk.
      this.state = State.Flags
      this.events.frame(EMPTY, this.flags)
    }
  }
}

const EMPTY = Buffer.alloc(0)

/** Writes a frame header for a body of `size` bytes at `offset`; returns the offset after it. */
function writeHeader(out: Buffer, offset: number, size: number, flags: number): number {
  if (size <= 255) {
    out[offset] = flags
    out[offset + 1] = size
    return offset + 2
  }
  out[offset] = flags | FLAG_LONG
  out.writeUInt32BE(Math.floor(size / 0x1_0000_0000), offset + 1)
  out.writeUInt32BE(size >>> 0, offset + 5)
  return offset + 9
}

const headerSize = (size: number): number => (size <= 255 ? 2 : 9)

/** One message frame: short size up to 255 bytes, long above; `more` when frames follow. */
export function encodeFrame(body: Buffer, more = false): Buffer {
  const out = Buffer.allocUnsafe(headerSize(body.length) + body.length)
  body.copy(out, writeHeader(out, 0, body.length, more ? FLAG_MORE : 0))
  return out
}

/**
 * Several single-frame messages as one buffer, ready for one write: the batching path, which
 * sizes the output once and copies each body once.
 */
export function encodeMessages(bodies: readonly Buffer[]): Buffer {
  let total = 0
  for (const b of bodies) total += headerSize(b.length) + b.length
  const out = Buffer.allocUnsafe(total)
  let at = 0
  for (const b of bodies) {
    at = writeHeader(out, at, b.length, 0)
    at += b.copy(out, at)
  }
  return out
}

/** A command frame: the name (1-255 letters) then its data. */
export function encodeCommand(name: string, data: Buffer = EMPTY): Buffer {
  if (name.length === 0 || name.length > 255 || ![...name].every((c) => isAlpha(c.charCodeAt(0)))) {
    throw zmtpError(`a ZMTP command name is 1-255 letters, got "${name}"`)
  }
  const size = 1 + name.length + data.length
  const out = Buffer.allocUnsafe(headerSize(size) + size)
  let at = writeHeader(out, 0, size, FLAG_COMMAND)
  out[at++] = name.length
  at += out.write(name, at, 'latin1')
  data.copy(out, at)
  return out
}

/** A command's name and data. */
export interface Command {
  name: string
  data: Buffer
}

/** Splits a command frame's body into name and data. Throws E_ZMTP if malformed. */
export function parseCommand(body: Buffer): Command {
  const len = body[0]
  if (len === undefined || len === 0) throw zmtpError('a ZMTP command has an empty name')
  if (1 + len > body.length) {
    throw zmtpError(
      `a ZMTP command name declares ${len} bytes but the command has only ${body.length - 1}`,
    )
  }
  for (let i = 1; i <= len; i++) {
    if (!isAlpha(body[i]!)) {
      throw zmtpError(`a ZMTP command name must be letters, got byte ${hex(body[i]!)}`)
    }
  }
  return { name: body.toString('latin1', 1, 1 + len), data: body.subarray(1 + len) }
}

/** Metadata property values: strings are written as UTF-8. */
export type Metadata = Record<string, string | Buffer>

/** The READY command of the NULL mechanism, with its metadata (e.g. Socket-Type, Identity). */
export function encodeReady(metadata: Metadata): Buffer {
  const parts: Buffer[] = []
  for (const [name, value] of Object.entries(metadata)) {
    if (
      name.length === 0 ||
      name.length > 255 ||
      ![...name].every((c) => isNameChar(c.charCodeAt(0)))
    ) {
      throw zmtpError(`a ZMTP metadata name is 1-255 of A-Z a-z 0-9 - _ . +, got "${name}"`)
    }
    const v = typeof value === 'string' ? Buffer.from(value) : value
    const head = Buffer.allocUnsafe(1 + name.length + 4)
    head[0] = name.length
    head.write(name, 1, 'latin1')
    head.writeUInt32BE(v.length, 1 + name.length)
    parts.push(head, v)
  }
  return encodeCommand('READY', Buffer.concat(parts))
}

/**
 * Parses READY metadata into a map keyed by the lowercased name (names are case-insensitive).
 * Values are views into `data`. Throws E_ZMTP on a truncated or malformed property.
 */
export function parseMetadata(data: Buffer): Map<string, Buffer> {
  const props = new Map<string, Buffer>()
  let i = 0
  while (i < data.length) {
    const len = data[i]!
    if (len === 0) throw zmtpError(`a READY metadata name at offset ${i} is empty`)
    if (i + 1 + len + 4 > data.length) {
      throw zmtpError(`a READY metadata property at offset ${i} is truncated`)
    }
    for (let j = i + 1; j <= i + len; j++) {
      if (!isNameChar(data[j]!)) {
        throw zmtpError(`a READY metadata name has byte ${hex(data[j]!)} at offset ${j}`)
      }
    }
    const name = data.toString('latin1', i + 1, i + 1 + len).toLowerCase()
    const vlen = data.readUInt32BE(i + 1 + len)
    const start = i + 1 + len + 4
    if (vlen > 0x7fff_ffff || vlen > data.length - start) {
      throw zmtpError(
        `READY metadata "${name}" declares ${vlen} bytes but ${data.length - start} follow`,
      )
    }
    if (props.has(name)) throw zmtpError(`READY metadata names "${name}" twice`)
    props.set(name, data.subarray(start, start + vlen))
    i = start + vlen
  }
  return props
}

/** The ERROR command: a reason of at most 255 bytes (longer ones are cut). */
export function encodeError(reason: string): Buffer {
  const r = Buffer.from(reason, 'latin1').subarray(0, 255)
  return encodeCommand('ERROR', Buffer.concat([Buffer.of(r.length), r]))
}

/** The reason carried by an ERROR command's data. Throws E_ZMTP if malformed. */
export function parseError(data: Buffer): string {
  const len = data[0]
  if (len === undefined || 1 + len !== data.length) {
    throw zmtpError(`a ZMTP ERROR command's reason length does not match its ${data.length} bytes`)
  }
  return data.toString('latin1', 1)
}

/** ZMTP 3.1 SUBSCRIBE command (cancel = false) or CANCEL command (cancel = true). */
export function encodeSubscribeCommand(topic: Buffer, cancel = false): Buffer {
  return encodeCommand(cancel ? 'CANCEL' : 'SUBSCRIBE', topic)
}

/** ZMTP 3.0 subscription: a one-frame message of %x01 + topic (or %x00 + topic to cancel). */
export function encodeLegacySubscription(topic: Buffer, cancel = false): Buffer {
  return encodeFrame(Buffer.concat([Buffer.of(cancel ? 0 : 1), topic]))
}

/** A subscription change, whichever form it came in. */
export interface Subscription {
  cancel: boolean
  topic: Buffer
}

/** Reads a legacy (3.0) subscription message body; undefined if it is not one. */
export function parseLegacySubscription(body: Buffer): Subscription | undefined {
  const first = body[0]
  if (first !== 0 && first !== 1) return undefined
  return { cancel: first === 0, topic: body.subarray(1) }
}

/** ZMTP 3.1 PING: ttl in tenths of a second (0 = none) and up to 16 bytes of context. */
export function encodePing(ttl: number, context: Buffer = EMPTY): Buffer {
  if (context.length > MAX_PING_CONTEXT) {
    throw zmtpError(`a PING context is at most 16 bytes, got ${context.length}`)
  }
  const data = Buffer.allocUnsafe(2 + context.length)
  data.writeUInt16BE(ttl, 0)
  context.copy(data, 2)
  return encodeCommand('PING', data)
}

/** Reads a PING command's data. Throws E_ZMTP if malformed. */
export function parsePing(data: Buffer): { ttl: number; context: Buffer } {
  if (data.length < 2 || data.length > 2 + MAX_PING_CONTEXT) {
    throw zmtpError(`a PING command has 2-18 bytes of data, got ${data.length}`)
  }
  return { ttl: data.readUInt16BE(0), context: data.subarray(2) }
}

/** ZMTP 3.1 PONG, echoing a PING's context. */
export function encodePong(context: Buffer): Buffer {
  if (context.length > MAX_PING_CONTEXT) {
    throw zmtpError(`a PONG context is at most 16 bytes, got ${context.length}`)
  }
  return encodeCommand('PONG', context)
}
