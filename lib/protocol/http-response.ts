/**
 * @module HTTP/1.x response stream parser (RFC 9112), one instance per client connection. Handlers
 * reply with raw HTTP response bytes, split across as many Mongrel2 messages as they like; the
 * frontend pushes each message body here and maps the events onto uWS calls.
 *
 *   stream          = *response [ head-101 *OCTET ]      ; after a 101, every byte is data
 *   response        = *head-1xx final-head [ body ]      ; 1xx other than 101 are informational
 *   head            = status-line *( field-line ) EOL
 *   status-line     = HTTP-version SP 3DIGIT [ SP reason-phrase ] EOL   ; status 100..599
 *   HTTP-version    = "HTTP/1.0" / "HTTP/1.1"
 *   reason-phrase   = *( HTAB / SP / VCHAR / obs-text )
 *   field-line      = field-name ":" OWS field-value OWS EOL             ; value trimmed
 *   field-name      = token                              ; no space before ":", no obs-fold
 *   field-value     = *( HTAB / SP / VCHAR / obs-text )  ; NUL, CR, LF and other CTLs rejected
 *   EOL             = CRLF / LF                          ; bare LF: RFC 9112 2.2 allows it, and
 *                                                        ; Mongrel2-era handlers send it
 *   body            = chunked-body / Content-Length octets / octets until finish()
 *   chunked-body    = *chunk last-chunk trailer-section EOL
 *   chunk           = chunk-size [ chunk-ext ] EOL chunk-data EOL
 *   last-chunk      = 1*"0" [ chunk-ext ] EOL
 *   chunk-size      = 1*16HEXDIG                         ; at most 2^53
 *   chunk-ext       = *( BWS ";" ext-bytes )             ; skipped, at most 4 KiB, no CTLs
 *   trailer-section = *( field-line )                    ; validated, then dropped
 *
 * Framing of a final response (RFC 9112 6.3), first rule that applies:
 *   101                                      'none', then the stream is switched (WebSocket)
 *   204, 304, or an answer to HEAD           'none' (contentLength kept when sent)
 *   Transfer-Encoding, last coding chunked   'chunked' (any Content-Length header is removed)
 *   Transfer-Encoding, other last coding     'close'
 *   Content-Length                           'length'
 *   otherwise                                'close': the body runs until finish()
 *
 * Parsing is strict and bounded: a head (or a trailer section) may not exceed maxHeaderBytes even
 * while incomplete, declared sizes are never allocated, and anything off-grammar throws
 * AppError E_HTTP_RESPONSE, after which the parser refuses further input. Body bytes are
 * zero-copy views into the pushed buffers, so callers must not reuse a buffer after pushing it.
 * Field names, values and the reason are decoded as latin1, one char per byte, so no byte is lost.
 */
import { AppError } from '../errors.js'

/** A parsed status line and header section. */
export interface ResponseHead {
  status: number
  /** The reason phrase, '' when the handler sent none. */
  reason: string
  version: 'HTTP/1.0' | 'HTTP/1.1'
  /** Fields as sent: names keep their case, order and repeats are kept, values are trimmed. */
  headers: [name: string, value: string][]
  /** How the body is delimited; 'none' means no body follows this head. */
  framing: 'length' | 'chunked' | 'close' | 'none'
  /** The Content-Length value; for 'none' (HEAD, 304) only what the handler reported. */
  contentLength?: number
  /** Whether the connection may carry another response, from version + Connection. */
  keepAlive: boolean
}

/** What a push completes, in stream order. Every 'head' is followed by exactly one 'end'. */
export type ResponseEvent =
  | { type: 'head'; head: ResponseHead }
  | { type: 'informational'; head: ResponseHead }
  | { type: 'data'; chunk: Buffer }
  | { type: 'end' }

/** Limits for one ResponseParser. */
export interface ResponseParserOptions {
  /** Largest head (status line, fields, line ends), and largest trailer section. Default 64 KiB. */
  maxHeaderBytes?: number
  /** Most field lines in one head or trailer section. Default 200. */
  maxHeaders?: number
}

/** Default maxHeaderBytes. */
export const DEFAULT_MAX_HEADER_BYTES = 64 * 1024
/** Default maxHeaders. */
export const DEFAULT_MAX_HEADERS = 200

const LF = 0x0a
const CR = 0x0d
const SP = 0x20
const HTAB = 0x09
const COLON = 0x3a
const SEMICOLON = 0x3b
const DEL = 0x7f

const MAX_CHUNK_SIZE = 2 ** 53
const MAX_CHUNK_SIZE_DIGITS = 16
const MAX_CHUNK_EXT_BYTES = 4096
const MAX_CONTENT_LENGTH_DIGITS = 16

// States. The head and trailer states read whole lines; the others consume bytes as they come.
const S_STATUS = 0
const S_FIELDS = 1
const S_LENGTH = 2
const S_CLOSE = 3
const S_CHUNK_SIZE = 4
const S_CHUNK_EXT = 5
const S_CHUNK_SIZE_LF = 6
const S_CHUNK_DATA = 7
const S_CHUNK_DATA_END = 8
const S_CHUNK_DATA_LF = 9
const S_TRAILER = 10
const S_SWITCHED = 11
const S_FAILED = 12
const S_FINISHED = 13

/** tchar (RFC 9110 5.6.2) as a byte -> 1 table. */
const TCHAR = new Uint8Array(256)
for (const c of "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
  TCHAR[c.charCodeAt(0)] = 1

/** Hex digit value by byte, -1 for anything else. */
const HEX = new Int8Array(256).fill(-1)
for (let i = 0; i < 16; i++) {
  HEX['0123456789abcdef'.charCodeAt(i)] = i
  HEX['0123456789ABCDEF'.charCodeAt(i)] = i
}

// Lowercase names of the fields that decide framing, compared byte-wise without making strings.
const NAME_CONTENT_LENGTH = Buffer.from('content-length')
const NAME_TRANSFER_ENCODING = Buffer.from('transfer-encoding')
const NAME_CONNECTION = Buffer.from('connection')

const END: ResponseEvent = Object.freeze({ type: 'end' })

// Field names and reasons most replies carry, as constant strings: a name that matches one
// byte for byte costs no new string. Matched exactly (case included), so nothing changes.
const COMMON_NAMES = [
  'Content-Length',
  'Content-Type',
  'Connection',
  'Transfer-Encoding',
  'Date',
  'Server',
  'Cache-Control',
  'Set-Cookie',
  'Location',
  'Last-Modified',
  'ETag',
  'Expires',
  'Vary',
  'Keep-Alive',
  'content-length',
  'content-type',
  'connection',
  'transfer-encoding',
].map((name) => ({ name, bytes: Buffer.from(name, 'latin1') }))

/** buf[start..end) as a latin1 string, one of COMMON_NAMES when it is one. */
function commonName(buf: Buffer, start: number, end: number): string {
  const len = end - start
  for (const c of COMMON_NAMES) {
    if (c.bytes.length !== len || c.bytes[0] !== buf[start]) continue
    let i = 1
    while (i < len && c.bytes[i] === buf[start + i]) i++
    if (i === len) return c.name
  }
  return buf.toString('latin1', start, end)
}

function fail(message: string): AppError {
  return new AppError('E_HTTP_RESPONSE', message)
}

/** Up to 40 bytes of input, quoted, for error messages. */
function show(buf: Buffer, start: number, end: number): string {
  const cut = end - start > 40
  return JSON.stringify(buf.toString('latin1', start, cut ? start + 40 : end)) + (cut ? '...' : '')
}

function showByte(c: number): string {
  return `byte 0x${c.toString(16).padStart(2, '0')} (${JSON.stringify(String.fromCharCode(c))})`
}

/** True when the token-checked name buf[start..end) equals `lower` ignoring ASCII case. */
function nameIs(buf: Buffer, start: number, end: number, lower: Buffer): boolean {
  if (end - start !== lower.length) return false
  // OR-ing 0x20 lowercases letters; among tchars it can only turn "^" into "~", which none of the
  // names compared here contain.
  for (let i = 0; i < lower.length; i++) if ((buf[start + i]! | 0x20) !== lower[i]) return false
  return true
}

function isWs(c: number | undefined): boolean {
  return c === SP || c === HTAB
}

/** Non-empty list elements of a comma-separated field value, trimmed. */
function listElements(value: string): string[] {
  const out: string[] = []
  for (const part of value.split(',')) {
    const item = part.trim()
    if (item !== '') out.push(item)
  }
  return out
}

/** Content-Length = 1*DIGIT, possibly repeated as a list of identical values (RFC 9110 8.6). */
function parseContentLength(value: string): number {
  // The usual value: one short number, read without splitting.
  if (value.length > 0 && value.length <= MAX_CONTENT_LENGTH_DIGITS) {
    let n = 0
    let i = 0
    for (; i < value.length; i++) {
      const d = value.charCodeAt(i) - 0x30
      if (d < 0 || d > 9) break
      n = n * 10 + d
    }
    if (i === value.length && n <= Number.MAX_SAFE_INTEGER) return n
  }
  let result = -1
  for (const part of value.split(',')) {
    const item = part.trim()
    if (item === '' || item.length > MAX_CONTENT_LENGTH_DIGITS)
      throw fail(
        `Content-Length must be decimal digits (at most ${MAX_CONTENT_LENGTH_DIGITS}), got ${JSON.stringify(value)}; the handler must send the body's byte length`,
      )
    let n = 0
    for (let i = 0; i < item.length; i++) {
      const d = item.charCodeAt(i) - 0x30
      if (d < 0 || d > 9)
        throw fail(
          `Content-Length must be decimal digits, got ${JSON.stringify(value)}; the handler must send the body's byte length`,
        )
      n = n * 10 + d
    }
    if (n > Number.MAX_SAFE_INTEGER)
      throw fail(
        `Content-Length must be at most ${Number.MAX_SAFE_INTEGER}, got ${JSON.stringify(value)}`,
      )
    if (result !== -1 && n !== result)
      throw fail(
        `Content-Length values must agree, got ${JSON.stringify(value)}; the handler must send one length`,
      )
    result = n
  }
  return result
}

/**
 * Incremental parser of one connection's response stream. Push every chunk the handler sends,
 * in order; call expect() with each request's method before the response to it can arrive.
 */
export class ResponseParser {
  private readonly maxHeaderBytes: number
  private readonly maxHeaders: number
  private readonly methods: string[] = []
  private state = S_STATUS
  private isSwitched = false
  /** An informational head went out and the final one has not. */
  private interim = false

  // Line reading, shared by heads and trailer sections.
  private parts: Buffer[] = []
  private partLen = 0
  private sectionBytes = 0
  private fieldCount = 0

  // The head being read.
  private status = 0
  private reason = ''
  private minor = 1
  private headers: [string, string][] = []
  private contentLengthValue: string | undefined
  private transferEncoding: string | undefined
  private connection: string | undefined

  // The body being read.
  private remaining = 0
  private chunkSize = 0
  private chunkSizeDigits = 0
  private chunkExtBytes = 0
  private inChunkExt = false

  constructor(opts: ResponseParserOptions = {}) {
    this.maxHeaderBytes = opts.maxHeaderBytes ?? DEFAULT_MAX_HEADER_BYTES
    this.maxHeaders = opts.maxHeaders ?? DEFAULT_MAX_HEADERS
  }

  /**
   * Makes the parser as new (same limits), whatever its state, for another stream: a caller
   * keeping a pool of parsers saves an allocation per stream.
   */
  reset(): void {
    this.methods.length = 0
    this.state = S_STATUS
    this.isSwitched = false
    this.interim = false
    if (this.parts.length > 0) this.parts = []
    this.partLen = 0
    this.sectionBytes = 0
    this.fieldCount = 0
    this.status = 0
    this.reason = ''
    this.minor = 1
    if (this.headers.length > 0) this.headers = []
    this.contentLengthValue = undefined
    this.transferEncoding = undefined
    this.connection = undefined
    this.remaining = 0
    this.chunkSize = 0
    this.chunkSizeDigits = 0
    this.chunkExtBytes = 0
    this.inChunkExt = false
  }

  /**
   * Queues the method of the next request on this connection. A response to HEAD has no body
   * whatever its headers say; responses are matched to methods in order. A final head that
   * arrives with nothing queued is framed as if it answered GET.
   */
  expect(method: string): void {
    this.methods.push(method)
  }

  /** True between responses: nothing partial is buffered and no final head is awaited. */
  get idle(): boolean {
    return this.state === S_STATUS && this.partLen === 0 && !this.interim
  }

  /** True once a 101 head went out: every later byte is passed through as 'data'. */
  get switched(): boolean {
    return this.isSwitched
  }

  /**
   * Feeds the next bytes of the stream and returns the events they complete. 'data' chunks are
   * views into `chunk`. Throws AppError E_HTTP_RESPONSE on malformed input; the parser then
   * rejects every later call.
   */
  push(chunk: Buffer): ResponseEvent[] {
    if (this.state >= S_FAILED) throw this.unusable()
    const events: ResponseEvent[] = []
    try {
      const len = chunk.length
      let pos = 0
      while (pos < len) {
        switch (this.state) {
          case S_STATUS:
          case S_FIELDS:
          case S_TRAILER:
            pos = this.readLine(chunk, pos, events)
            break
          case S_LENGTH:
          case S_CHUNK_DATA: {
            const n = Math.min(this.remaining, len - pos)
            events.push({ type: 'data', chunk: chunk.subarray(pos, pos + n) })
            pos += n
            this.remaining -= n
            if (this.remaining === 0) {
              if (this.state === S_LENGTH) this.endResponse(events)
              else this.state = S_CHUNK_DATA_END
            }
            break
          }
          case S_CLOSE:
          case S_SWITCHED:
            events.push({ type: 'data', chunk: pos === 0 ? chunk : chunk.subarray(pos) })
            pos = len
            break
          case S_CHUNK_SIZE:
            pos = this.readChunkSize(chunk, pos)
            break
          case S_CHUNK_EXT:
            pos = this.readChunkExt(chunk, pos)
            break
          case S_CHUNK_SIZE_LF:
            if (chunk[pos] !== LF)
              throw fail(
                `chunk-size line must end with CRLF, got CR then ${showByte(chunk[pos]!)}; the handler's chunked encoding is broken`,
              )
            pos++
            this.chunkSizeDone()
            break
          case S_CHUNK_DATA_END:
          case S_CHUNK_DATA_LF: {
            const c = chunk[pos]!
            if (c === CR && this.state === S_CHUNK_DATA_END) this.state = S_CHUNK_DATA_LF
            else if (c === LF) this.state = S_CHUNK_SIZE
            else
              throw fail(
                `chunk data must be followed by CRLF, got ${showByte(c)}; the chunk size the handler sent does not match its data`,
              )
            pos++
            break
          }
        }
      }
    } catch (err) {
      this.state = S_FAILED
      throw err
    }
    return events
  }

  /**
   * The handler closed the stream. Returns the final 'end' of a close-delimited body (or of a
   * switched stream), nothing between responses, and throws E_HTTP_RESPONSE if a response was cut
   * short. The parser accepts no input afterwards.
   */
  finish(): ResponseEvent[] {
    if (this.state >= S_FAILED) throw this.unusable()
    const state = this.state
    this.state = S_FINISHED
    if (state === S_CLOSE || state === S_SWITCHED) return [END]
    if (state === S_STATUS && this.partLen === 0 && !this.interim) return []
    this.state = S_FAILED
    let what: string
    if (state === S_STATUS)
      what = this.interim ? 'a final head after an informational one' : 'the rest of a status line'
    else if (state === S_FIELDS) what = 'the rest of the head (an empty line ends it)'
    else if (state === S_LENGTH) what = `${this.remaining} more body bytes (Content-Length)`
    else if (state === S_CHUNK_DATA) what = `${this.remaining} more bytes of the current chunk`
    else if (state === S_TRAILER) what = 'the rest of the trailer section (an empty line ends it)'
    else what = 'the rest of the chunked body (a 0-size last chunk ends it)'
    throw fail(
      `response cut short: expected ${what}, got end of stream; the handler must finish each response before closing`,
    )
  }

  private unusable(): AppError {
    return fail(
      this.state === S_FINISHED
        ? 'response stream already finished, got more input; create a new parser for a new stream'
        : 'response stream already failed to parse, got more input; close the connection instead',
    )
  }

  /** Reads one line of a head or trailer section, or buffers it when its LF has not come yet. */
  private readLine(chunk: Buffer, pos: number, events: ResponseEvent[]): number {
    const lf = chunk.indexOf(LF, pos)
    if (lf === -1) {
      const rest = chunk.length - pos
      // Checked before buffering, so a head that never ends costs at most maxHeaderBytes.
      if (this.sectionBytes + this.partLen + rest > this.maxHeaderBytes) throw this.tooLarge()
      this.parts.push(chunk.subarray(pos))
      this.partLen += rest
      return chunk.length
    }
    this.sectionBytes += this.partLen + lf + 1 - pos
    if (this.sectionBytes > this.maxHeaderBytes) throw this.tooLarge()
    let buf = chunk
    let start = pos
    let end = lf
    if (this.partLen > 0) {
      this.parts.push(chunk.subarray(pos, lf))
      buf = Buffer.concat(this.parts, this.partLen + lf - pos)
      this.parts = []
      this.partLen = 0
      start = 0
      end = buf.length
    }
    if (end > start && buf[end - 1] === CR) end--
    if (this.state === S_STATUS) this.statusLine(buf, start, end)
    else if (end > start) this.fieldLine(buf, start, end)
    else if (this.state === S_FIELDS) this.headDone(events)
    else this.endResponse(events)
    return lf + 1
  }

  private tooLarge(): AppError {
    const what = this.state === S_TRAILER ? 'trailer section' : 'response head'
    return fail(
      `${what} must be at most ${this.maxHeaderBytes} bytes, got more before its empty line; the handler sends too many or too large headers, or no empty line after them`,
    )
  }

  private statusLine(buf: Buffer, s: number, e: number): void {
    if (
      e - s < 9 ||
      buf[s] !== 0x48 || // H
      buf[s + 1] !== 0x54 || // T
      buf[s + 2] !== 0x54 || // T
      buf[s + 3] !== 0x50 || // P
      buf[s + 4] !== 0x2f || // /
      buf[s + 5] !== 0x31 || // 1
      buf[s + 6] !== 0x2e || // .
      (buf[s + 7] !== 0x30 && buf[s + 7] !== 0x31) ||
      buf[s + 8] !== SP
    )
      throw fail(
        `status line must start with "HTTP/1.0 " or "HTTP/1.1 ", got ${show(buf, s, e)}; the handler must reply with raw HTTP/1.x response bytes`,
      )
    const d1 = buf[s + 9]! - 0x30
    const d2 = buf[s + 10]! - 0x30
    const d3 = buf[s + 11]! - 0x30
    const status = d1 * 100 + d2 * 10 + d3
    if (
      e - s < 12 ||
      (d1 | d2 | d3) < 0 ||
      d1 > 9 ||
      d2 > 9 ||
      d3 > 9 ||
      status < 100 ||
      status > 599 ||
      (e - s > 12 && buf[s + 12] !== SP)
    )
      throw fail(
        `status line must have a 3-digit status 100-599 then SP or the line end, got ${show(buf, s, e)} (e.g. "HTTP/1.1 200 OK")`,
      )
    for (let i = s + 13; i < e; i++) {
      const c = buf[i]!
      if ((c < SP && c !== HTAB) || c === DEL)
        throw fail(
          `reason phrase must not contain control bytes, got ${showByte(c)} in ${show(buf, s, e)}; a bare CR is not a line end`,
        )
    }
    this.status = status
    this.minor = buf[s + 7]! - 0x30
    this.reason =
      e - s === 15 && buf[s + 13] === 0x4f && buf[s + 14] === 0x4b // "OK"
        ? 'OK'
        : e - s > 13
          ? buf.toString('latin1', s + 13, e)
          : ''
    this.state = S_FIELDS
  }

  private fieldLine(buf: Buffer, s: number, e: number): void {
    if (++this.fieldCount > this.maxHeaders)
      throw fail(
        `${this.state === S_TRAILER ? 'trailer section' : 'response head'} must have at most ${this.maxHeaders} fields, got more; the handler sends too many headers`,
      )
    if (isWs(buf[s]))
      throw fail(
        `field line must start with a name, got leading whitespace in ${show(buf, s, e)}; obs-fold (line folding) is not allowed, send the value on one line`,
      )
    let i = s
    while (i < e && TCHAR[buf[i]!] === 1) i++
    if (i === e)
      throw fail(`field line must be "Name: value", got ${show(buf, s, e)} without a ":"`)
    const c = buf[i]!
    if (c !== COLON)
      throw fail(
        isWs(c)
          ? `field name must be followed directly by ":", got whitespace before it in ${show(buf, s, e)}`
          : `field name must be a token, got ${showByte(c)} in ${show(buf, s, e)}`,
      )
    if (i === s) throw fail(`field name must not be empty, got ${show(buf, s, e)}`)
    let vs = i + 1
    while (vs < e && isWs(buf[vs])) vs++
    let ve = e
    while (ve > vs && isWs(buf[ve - 1])) ve--
    for (let j = vs; j < ve; j++) {
      const b = buf[j]!
      if ((b < SP && b !== HTAB) || b === DEL)
        throw fail(
          `field value must not contain NUL, CR, LF or other control bytes, got ${showByte(b)} in ${show(buf, s, e)}`,
        )
    }
    if (this.state === S_TRAILER) return // trailers are checked and dropped
    const name = commonName(buf, s, i)
    const value = buf.toString('latin1', vs, ve)
    this.headers.push([name, value])
    if (nameIs(buf, s, i, NAME_CONTENT_LENGTH))
      this.contentLengthValue =
        this.contentLengthValue === undefined ? value : `${this.contentLengthValue}, ${value}`
    else if (nameIs(buf, s, i, NAME_TRANSFER_ENCODING))
      this.transferEncoding =
        this.transferEncoding === undefined ? value : `${this.transferEncoding}, ${value}`
    else if (nameIs(buf, s, i, NAME_CONNECTION))
      this.connection = this.connection === undefined ? value : `${this.connection}, ${value}`
  }

  private headDone(events: ResponseEvent[]): void {
    const status = this.status
    let framing: ResponseHead['framing'] = 'close'
    let contentLength: number | undefined
    if (this.transferEncoding !== undefined) {
      if (this.minor === 0)
        throw fail(
          'HTTP/1.0 response must not carry Transfer-Encoding (RFC 9112 6.1), got one; the handler must answer "HTTP/1.1" or use Content-Length',
        )
      const codings = listElements(this.transferEncoding)
      for (let k = 0; k < codings.length; k++) {
        const coding = codings[k]!.split(';')[0]!.trim().toLowerCase()
        if (coding !== 'chunked') continue
        if (k !== codings.length - 1)
          throw fail(
            `Transfer-Encoding may name chunked only once and last, got ${JSON.stringify(this.transferEncoding)}`,
          )
        framing = 'chunked'
      }
      if (codings.length === 0)
        throw fail('Transfer-Encoding must name a coding, got an empty value (e.g. "chunked")')
      // RFC 9112 6.3: Transfer-Encoding overrides Content-Length, which must not be passed on.
      if (this.contentLengthValue !== undefined)
        this.headers = this.headers.filter(
          ([n]) => n.length !== 14 || n.toLowerCase() !== 'content-length',
        )
    } else if (this.contentLengthValue !== undefined) {
      contentLength = parseContentLength(this.contentLengthValue)
      framing = 'length'
    }

    let keepAlive = this.minor === 1
    if (this.connection !== undefined)
      for (const token of listElements(this.connection)) {
        const lower = token.toLowerCase()
        if (lower === 'close') {
          keepAlive = false
          break
        }
        if (lower === 'keep-alive') keepAlive = true
      }

    if (status < 200 && status !== 101) {
      this.emitHead(events, 'informational', 'none', contentLength, keepAlive)
      this.interim = true
      return
    }
    this.interim = false
    const method = this.methods.shift()
    if (status === 101 || status === 204 || status === 304 || method === 'HEAD') framing = 'none'
    // A close-delimited body leaves nothing after it on the connection.
    if (framing === 'close') keepAlive = false
    this.emitHead(events, 'head', framing, contentLength, keepAlive)
    if (status === 101) {
      this.state = S_SWITCHED
      this.isSwitched = true
    } else if (framing === 'none' || (framing === 'length' && contentLength === 0))
      this.endResponse(events)
    else if (framing === 'length') {
      this.remaining = contentLength!
      this.state = S_LENGTH
    } else if (framing === 'chunked') {
      this.chunkSize = 0
      this.chunkSizeDigits = 0
      this.state = S_CHUNK_SIZE
    } else this.state = S_CLOSE
  }

  private emitHead(
    events: ResponseEvent[],
    type: 'head' | 'informational',
    framing: ResponseHead['framing'],
    contentLength: number | undefined,
    keepAlive: boolean,
  ): void {
    const head: ResponseHead = {
      status: this.status,
      reason: this.reason,
      version: this.minor === 1 ? 'HTTP/1.1' : 'HTTP/1.0',
      headers: this.headers,
      framing,
      keepAlive,
    }
    if (contentLength !== undefined) head.contentLength = contentLength
    events.push({ type, head })
    this.headers = []
    this.contentLengthValue = undefined
    this.transferEncoding = undefined
    this.connection = undefined
    this.sectionBytes = 0
    this.fieldCount = 0
    this.state = S_STATUS
  }

  private endResponse(events: ResponseEvent[]): void {
    events.push(END)
    this.sectionBytes = 0
    this.fieldCount = 0
    this.state = S_STATUS
  }

  private readChunkSize(chunk: Buffer, pos: number): number {
    const len = chunk.length
    for (; pos < len; pos++) {
      const d = HEX[chunk[pos]!]!
      if (d < 0) {
        if (this.chunkSizeDigits === 0)
          throw fail(
            `chunk must start with a hex size, got ${showByte(chunk[pos]!)}; the handler's chunked encoding is broken`,
          )
        this.chunkExtBytes = 0
        this.inChunkExt = false
        this.state = S_CHUNK_EXT
        return pos
      }
      // Checked before multiplying: past 2^53 a double rounds, and 2^53 + 1 would pass as 2^53.
      if (
        ++this.chunkSizeDigits > MAX_CHUNK_SIZE_DIGITS ||
        this.chunkSize > (MAX_CHUNK_SIZE - d) / 16
      )
        throw fail(
          `chunk size must be at most ${MAX_CHUNK_SIZE_DIGITS} hex digits and 2^53, got more; the handler's chunked encoding is broken`,
        )
      this.chunkSize = this.chunkSize * 16 + d
    }
    return pos
  }

  /** Skips what follows the size up to the line end: BWS, then extensions after a ";". */
  private readChunkExt(chunk: Buffer, pos: number): number {
    const len = chunk.length
    for (; pos < len; pos++) {
      const c = chunk[pos]!
      if (c === LF) {
        this.chunkSizeDone()
        return pos + 1
      }
      if (c === CR) {
        this.state = S_CHUNK_SIZE_LF
        return pos + 1
      }
      if (++this.chunkExtBytes > MAX_CHUNK_EXT_BYTES)
        throw fail(
          `chunk extensions must be at most ${MAX_CHUNK_EXT_BYTES} bytes, got more; the handler should not send chunk extensions`,
        )
      if (this.inChunkExt) {
        if ((c < SP && c !== HTAB) || c === DEL)
          throw fail(`chunk extension must not contain control bytes, got ${showByte(c)}`)
      } else if (c === SEMICOLON) this.inChunkExt = true
      else if (c !== SP && c !== HTAB)
        throw fail(
          `chunk size must be followed by ";" or the line end, got ${showByte(c)}; the handler's chunked encoding is broken`,
        )
    }
    return pos
  }

  private chunkSizeDone(): void {
    this.chunkSizeDigits = 0
    if (this.chunkSize === 0) {
      this.sectionBytes = 0
      this.fieldCount = 0
      this.state = S_TRAILER
    } else {
      this.remaining = this.chunkSize
      this.chunkSize = 0
      this.state = S_CHUNK_DATA
    }
  }
}
