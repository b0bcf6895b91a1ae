/**
 * @module WebSocket frames (RFC 6455 section 5). Handlers write unmasked server->client frames as
 * raw bytes; the frontend parses those bytes back into frames and parses the masked frames that
 * browsers send.
 *
 *   frame       = byte0 byte1 [ext-length] [masking-key] payload
 *   byte0       = FIN(1 bit) RSV1 RSV2 RSV3(1 bit each) opcode(4 bits)
 *   byte1       = MASK(1 bit) length7(7 bits)
 *   length7     = 0-125   ; the payload length itself, no ext-length
 *               / 126     ; ext-length is 2 bytes, unsigned big-endian
 *               / 127     ; ext-length is 8 bytes, unsigned big-endian, top bit 0
 *   masking-key = 4 bytes, present iff MASK = 1
 *   payload     = length bytes; when masked, byte i is XORed with masking-key[i mod 4]
 *
 *   opcode      = %x0 continuation / %x1 text / %x2 binary      ; data frames
 *               / %x8 close / %x9 ping / %xA pong              ; control frames
 *                                                               ; %x3-7, %xB-F reserved
 *   control frames: FIN = 1 and payload length <= 125
 *   close payload  = empty / (2-byte big-endian code, UTF-8 reason of at most 123 bytes)
 *
 * Non-minimal length encodings (say 5 in a 16-bit ext-length) are accepted: RFC 6455 asks senders
 * for the minimal form but real peers do not always comply, and the length is still unambiguous.
 * A declared length is checked against maxPayload before any payload is awaited or allocated, so a
 * forged 2^62-byte header costs nothing. Unmasked payloads are zero-copy views into the input;
 * masked payloads are fresh buffers. Message-level rules (continuation ordering, UTF-8 of text
 * messages) belong to whoever reassembles messages, since a code point may span fragments.
 */
import { createHash } from 'node:crypto'
import { AppError } from '../errors.js'

/** Frame opcodes defined by RFC 6455; every other 4-bit value is reserved. */
export const OPCODE = {
  CONTINUATION: 0x0,
  TEXT: 0x1,
  BINARY: 0x2,
  CLOSE: 0x8,
  PING: 0x9,
  PONG: 0xa,
} as const

/** One decoded frame. `payload` is already unmasked whatever `masked` says. */
export interface WsFrame {
  fin: boolean
  /** The three RSV bits as a number 0..7 (RSV1 is 4); non-zero only with a negotiated extension. */
  rsv: number
  opcode: number
  masked: boolean
  payload: Buffer
}

/** Options shared by parseFrame and FrameParser. */
export interface ParseOptions {
  /** Largest payload accepted, in bytes; a larger declared length throws. Default 16 MiB. */
  maxPayload?: number
  /** Reject unmasked frames: a server must fail a client that does not mask (RFC 6455 5.1). */
  requireMask?: boolean
  /** Reject masked frames: a client must fail a server that masks, and handlers never mask. */
  forbidMask?: boolean
}

/** Default maxPayload: large enough for any sane message, small enough to bound memory. */
export const DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024

/** Control frames carry at most this many payload bytes (RFC 6455 5.5). */
export const MAX_CONTROL_PAYLOAD = 125

/** GUID appended to Sec-WebSocket-Key by the handshake (RFC 6455 1.3). */
export const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'

const TWO_32 = 0x1_0000_0000
const utf8 = new TextDecoder('utf-8', { fatal: true })

function hex(n: number): string {
  return `0x${n.toString(16)}`
}

function isControl(opcode: number): boolean {
  return opcode >= 0x8
}

function isKnownOpcode(opcode: number): boolean {
  return opcode <= OPCODE.BINARY || (opcode >= OPCODE.CLOSE && opcode <= OPCODE.PONG)
}

interface ResolvedOptions {
  maxPayload: number
  requireMask: boolean
  forbidMask: boolean
}

// Bad options are a programming error, not something a peer sent, hence E_CONFIG: callers that
// map E_WS_FRAME to close code 1002 should not blame the peer for them.
function resolveOptions(opts: ParseOptions | undefined): ResolvedOptions {
  const maxPayload = opts?.maxPayload ?? DEFAULT_MAX_PAYLOAD
  if (!Number.isSafeInteger(maxPayload) || maxPayload < 0) {
    throw new AppError(
      'E_CONFIG',
      `WebSocket maxPayload must be a non-negative safe integer, got ${String(maxPayload)}; pass a byte count`,
    )
  }
  const requireMask = opts?.requireMask === true
  const forbidMask = opts?.forbidMask === true
  if (requireMask && forbidMask) {
    throw new AppError(
      'E_CONFIG',
      'WebSocket parse options set both requireMask and forbidMask, so no frame could pass; set requireMask when reading clients and forbidMask when reading servers',
    )
  }
  return { maxPayload, requireMask, forbidMask }
}

interface Header {
  fin: boolean
  rsv: number
  opcode: number
  masked: boolean
  length: number
  /** Bytes from the frame's start to its payload, masking key included. */
  headerLength: number
}

/**
 * Decodes and validates the header at `offset`, or returns null when it is incomplete. Each check
 * runs as soon as its bytes are present so garbage fails on its first byte instead of waiting.
 */
function parseHeader(buf: Buffer, offset: number, opts: ResolvedOptions): Header | null {
  const available = buf.length - offset
  if (available < 1) return null
  const b0 = buf[offset]!
  const fin = (b0 & 0x80) !== 0
  const rsv = (b0 >> 4) & 0x7
  const opcode = b0 & 0x0f
  if (!isKnownOpcode(opcode)) {
    throw new AppError(
      'E_WS_FRAME',
      `WebSocket frame at offset ${offset} must have opcode 0x0-0x2 or 0x8-0xa, got reserved opcode ${hex(opcode)}; the peer is not speaking RFC 6455, close with 1002`,
    )
  }
  if (isControl(opcode) && !fin) {
    throw new AppError(
      'E_WS_FRAME',
      `WebSocket control frame (opcode ${hex(opcode)}) at offset ${offset} must have FIN set, got FIN=0; control frames cannot be fragmented, close with 1002`,
    )
  }
  if (available < 2) return null
  const b1 = buf[offset + 1]!
  const masked = (b1 & 0x80) !== 0
  if (masked && opts.forbidMask) {
    throw new AppError(
      'E_WS_FRAME',
      `WebSocket frame at offset ${offset} must be unmasked, got MASK=1; server-to-client frames are never masked, close with 1002`,
    )
  }
  if (!masked && opts.requireMask) {
    throw new AppError(
      'E_WS_FRAME',
      `WebSocket frame at offset ${offset} must be masked, got MASK=0; clients must mask every frame, close with 1002`,
    )
  }
  const length7 = b1 & 0x7f
  let length: number
  let headerLength: number
  if (length7 === 126) {
    if (available < 4) return null
    length = buf.readUInt16BE(offset + 2)
    headerLength = 4
  } else if (length7 === 127) {
    if (available < 10) return null
    const high = buf.readUInt32BE(offset + 2)
    if (high >= 0x8000_0000) {
      throw new AppError(
        'E_WS_FRAME',
        `WebSocket frame at offset ${offset} must have a 64-bit length with the top bit clear, got ${buf.toString('hex', offset + 2, offset + 10)}; the length is corrupt, close with 1002`,
      )
    }
    // Beyond 2^53 this sum is inexact, but such lengths exceed any allowed maxPayload anyway.
    length = high * TWO_32 + buf.readUInt32BE(offset + 6)
    headerLength = 10
  } else {
    length = length7
    headerLength = 2
  }
  if (isControl(opcode) && length > MAX_CONTROL_PAYLOAD) {
    throw new AppError(
      'E_WS_FRAME',
      `WebSocket control frame (opcode ${hex(opcode)}) at offset ${offset} must carry at most ${MAX_CONTROL_PAYLOAD} bytes, got ${length}; close with 1002`,
    )
  }
  if (length > opts.maxPayload) {
    throw new AppError(
      'E_WS_FRAME',
      `WebSocket frame at offset ${offset} must carry at most ${opts.maxPayload} bytes (maxPayload), got a declared length of ${length}; close with 1009 or raise maxPayload`,
    )
  }
  if (masked) headerLength += 4
  return { fin, rsv, opcode, masked, length, headerLength }
}

/** XORs `src` with the 4-byte `key` into a new buffer; masking and unmasking are the same act. */
function applyMask(src: Buffer, key: Buffer): Buffer {
  const out = Buffer.allocUnsafe(src.length)
  const k0 = key[0]!
  const k1 = key[1]!
  const k2 = key[2]!
  const k3 = key[3]!
  let i = 0
  for (const end = src.length - 3; i < end; i += 4) {
    out[i] = src[i]! ^ k0
    out[i + 1] = src[i + 1]! ^ k1
    out[i + 2] = src[i + 2]! ^ k2
    out[i + 3] = src[i + 3]! ^ k3
  }
  for (; i < src.length; i++) out[i] = src[i]! ^ key[i & 3]!
  return out
}

function checkOffset(buf: Buffer, offset: number): void {
  if (!Number.isInteger(offset) || offset < 0 || offset > buf.length) {
    throw new AppError(
      'E_WS_FRAME',
      `WebSocket parse offset must be an integer in 0..${buf.length}, got ${offset}; pass the \`next\` of the previous frame`,
    )
  }
}

/** Builds the frame once the header says it is complete; `buf` must hold all of it. */
function readFrame(buf: Buffer, offset: number, h: Header): { frame: WsFrame; next: number } {
  const start = offset + h.headerLength
  const next = start + h.length
  let payload = buf.subarray(start, next)
  if (h.masked) payload = applyMask(payload, buf.subarray(start - 4, start))
  return {
    frame: { fin: h.fin, rsv: h.rsv, opcode: h.opcode, masked: h.masked, payload },
    next,
  }
}

/**
 * Encodes one frame; unmasked unless `mask` (4 bytes) is given. fin defaults to true, rsv to 0.
 * A string payload is sent as UTF-8. Throws E_WS_FRAME for anything parseFrame would reject, so
 * a handler learns about a bad frame at the write, not from the browser closing on it.
 */
export function encodeFrame(frame: {
  opcode: number
  payload?: Buffer | string
  fin?: boolean
  rsv?: number
  mask?: Buffer
}): Buffer {
  const { opcode, mask } = frame
  const fin = frame.fin ?? true
  const rsv = frame.rsv ?? 0
  const payload =
    typeof frame.payload === 'string'
      ? Buffer.from(frame.payload, 'utf8')
      : (frame.payload ?? Buffer.alloc(0))
  if (!Number.isInteger(opcode) || opcode < 0 || opcode > 0xf || !isKnownOpcode(opcode)) {
    throw new AppError(
      'E_WS_FRAME',
      `WebSocket opcode must be one of 0x0-0x2 or 0x8-0xa, got ${String(opcode)}; use OPCODE`,
    )
  }
  if (!Number.isInteger(rsv) || rsv < 0 || rsv > 7) {
    throw new AppError(
      'E_WS_FRAME',
      `WebSocket rsv must be an integer 0..7 (the three RSV bits), got ${String(rsv)}; leave it 0 unless an extension was negotiated`,
    )
  }
  if (mask !== undefined && mask.length !== 4) {
    throw new AppError(
      'E_WS_FRAME',
      `WebSocket masking key must be 4 bytes, got ${mask.length}; pass crypto.randomBytes(4) or no mask`,
    )
  }
  if (isControl(opcode)) {
    if (!fin) {
      throw new AppError(
        'E_WS_FRAME',
        `WebSocket control frame (opcode ${hex(opcode)}) must have fin true, got false; control frames cannot be fragmented`,
      )
    }
    if (payload.length > MAX_CONTROL_PAYLOAD) {
      throw new AppError(
        'E_WS_FRAME',
        `WebSocket control frame (opcode ${hex(opcode)}) must carry at most ${MAX_CONTROL_PAYLOAD} bytes, got ${payload.length}; shorten the payload`,
      )
    }
  }
  const n = payload.length
  const extLength = n <= 125 ? 0 : n <= 0xffff ? 2 : 8
  const headerLength = 2 + extLength + (mask === undefined ? 0 : 4)
  const out = Buffer.allocUnsafe(headerLength + n)
  out[0] = (fin ? 0x80 : 0) | (rsv << 4) | opcode
  const maskBit = mask === undefined ? 0 : 0x80
  if (extLength === 0) {
    out[1] = maskBit | n
  } else if (extLength === 2) {
    out[1] = maskBit | 126
    out.writeUInt16BE(n, 2)
  } else {
    out[1] = maskBit | 127
    out.writeUInt32BE(Math.floor(n / TWO_32), 2)
    out.writeUInt32BE(n >>> 0, 6)
  }
  if (mask === undefined) {
    payload.copy(out, headerLength)
  } else {
    mask.copy(out, headerLength - 4)
    applyMask(payload, mask).copy(out, headerLength)
  }
  return out
}

/**
 * Parses one frame at `offset`. Returns null when the buffer holds only part of a frame (need
 * more bytes), else the frame and the offset just past it. Never allocates from a declared
 * length: a declared length above maxPayload throws before anything is read. Throws E_WS_FRAME on
 * any protocol violation, as soon as the offending bytes are present.
 */
export function parseFrame(
  buf: Buffer,
  offset = 0,
  opts?: ParseOptions,
): { frame: WsFrame; next: number } | null {
  checkOffset(buf, offset)
  const h = parseHeader(buf, offset, resolveOptions(opts))
  if (h === null || buf.length - offset < h.headerLength + h.length) return null
  return readFrame(buf, offset, h)
}

/**
 * True for close codes an endpoint may put on the wire (RFC 6455 7.4): 1004-1006 and 1015 are
 * reserved for local reporting, 1016-2999 are unassigned protocol codes.
 */
export function isValidCloseCode(code: number): boolean {
  return (
    Number.isInteger(code) &&
    ((code >= 1000 && code <= 1003) ||
      (code >= 1007 && code <= 1014) ||
      (code >= 3000 && code <= 4999))
  )
}

/**
 * Encodes a whole close frame (unmasked) whose body is the 2-byte code + UTF-8 reason (reason
 * <= 123 bytes). With no code the body is empty, which the peer reads as 1005 "no status".
 */
export function encodeClose(code?: number, reason = ''): Buffer {
  if (code === undefined) {
    if (reason !== '') {
      throw new AppError(
        'E_WS_FRAME',
        `WebSocket close reason needs a close code, got reason ${JSON.stringify(reason)} with none; pass a code such as 1000`,
      )
    }
    return encodeFrame({ opcode: OPCODE.CLOSE })
  }
  if (!isValidCloseCode(code)) {
    throw new AppError(
      'E_WS_FRAME',
      `WebSocket close code must be 1000-1003, 1007-1014 or 3000-4999, got ${code}; use 1000 for a normal close or 4000-4999 for your own`,
    )
  }
  const text = Buffer.from(reason, 'utf8')
  if (text.length > MAX_CONTROL_PAYLOAD - 2) {
    throw new AppError(
      'E_WS_FRAME',
      `WebSocket close reason must be at most ${MAX_CONTROL_PAYLOAD - 2} bytes of UTF-8, got ${text.length}; shorten it`,
    )
  }
  const body = Buffer.allocUnsafe(2 + text.length)
  body.writeUInt16BE(code, 0)
  text.copy(body, 2)
  return encodeFrame({ opcode: OPCODE.CLOSE, payload: body })
}

/**
 * Decodes a close frame's payload. An empty payload has no code (the peer reports 1005); a code
 * that may not be sent or a reason that is not UTF-8 throws E_WS_FRAME, to be answered with 1002
 * or 1007.
 */
export function parseClosePayload(payload: Buffer): { code?: number; reason: string } {
  if (payload.length === 0) return { reason: '' }
  if (payload.length === 1) {
    throw new AppError(
      'E_WS_FRAME',
      'WebSocket close payload must be empty or at least 2 bytes (a status code), got 1 byte; close with 1002',
    )
  }
  if (payload.length > MAX_CONTROL_PAYLOAD) {
    throw new AppError(
      'E_WS_FRAME',
      `WebSocket close payload must be at most ${MAX_CONTROL_PAYLOAD} bytes, got ${payload.length}; close with 1002`,
    )
  }
  const code = payload.readUInt16BE(0)
  if (!isValidCloseCode(code)) {
    throw new AppError(
      'E_WS_FRAME',
      `WebSocket close code must be 1000-1003, 1007-1014 or 3000-4999, got ${code}; the peer sent a reserved code, close with 1002`,
    )
  }
  let reason: string
  try {
    reason = utf8.decode(payload.subarray(2))
  } catch (err) {
    throw new AppError(
      'E_WS_FRAME',
      `WebSocket close reason must be valid UTF-8, got bytes ${payload.toString('hex', 2)}; close with 1007`,
      { cause: err },
    )
  }
  return { code, reason }
}

/** Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(sha1(key + 258EAFA5-E914-47DA-95CA-C5AB0DC85B11)). */
export function acceptKey(key: string): string {
  // latin1 because Node hands header values over byte for byte as latin1 strings.
  return createHash('sha1')
    .update(key + WS_GUID, 'latin1')
    .digest('base64')
}

/**
 * An incremental parser for a byte stream (frames split across or packed into chunks):
 * push(chunk) returns the complete frames so far, keeps the remainder; a protocol error throws
 * E_WS_FRAME and the parser must not be used again (a later push throws E_WS_FRAME too).
 *
 * Chunks are kept as a list and joined only once a whole frame is present, so a large frame
 * arriving in many small chunks is copied a couple of times rather than once per chunk.
 */
export class FrameParser {
  readonly #opts: ResolvedOptions
  #chunks: Buffer[] = []
  #buffered = 0
  /** Bytes needed before parsing can progress; 0 means "unknown, try now". */
  #need = 0
  /** Set once a push throws: the stream position is lost, so no later byte can be framed. */
  #failure: { error: unknown } | undefined

  constructor(opts?: ParseOptions) {
    this.#opts = resolveOptions(opts)
  }

  /** Bytes received but not yet returned as frames. */
  get buffered(): number {
    return this.#buffered
  }

  /** Appends `chunk` and returns every frame it completes, in order. */
  push(chunk: Buffer): WsFrame[] {
    if (this.#failure !== undefined) {
      throw new AppError(
        'E_WS_FRAME',
        'WebSocket frame parser must not be used after it threw, got another push; fail the connection (see the cause) and use a new parser per connection',
        { cause: this.#failure.error },
      )
    }
    if (chunk.length > 0) {
      this.#chunks.push(chunk)
      this.#buffered += chunk.length
    }
    if (this.#buffered < this.#need || this.#buffered === 0) return []
    const buf =
      this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks, this.#buffered)
    const frames: WsFrame[] = []
    let offset = 0
    try {
      for (;;) {
        const h = parseHeader(buf, offset, this.#opts)
        if (h === null) {
          // A header is at most 14 bytes; retry on any new byte rather than predicting its size.
          this.#need = buf.length - offset + 1
          break
        }
        const size = h.headerLength + h.length
        if (buf.length - offset < size) {
          this.#need = size
          break
        }
        const { frame, next } = readFrame(buf, offset, h)
        frames.push(frame)
        offset = next
      }
    } catch (err) {
      this.#failure = { error: err }
      this.#chunks = []
      this.#buffered = 0
      throw err
    }
    const rest = buf.length - offset
    // Copy the remainder so it does not keep the bytes of already returned frames alive.
    this.#chunks = rest === 0 ? [] : [rest === buf.length ? buf : Buffer.from(buf.subarray(offset))]
    this.#buffered = rest
    return frames
  }
}
