/**
 * @module Raw HTTP/1.1 response bytes for a Mongrel2 handler. Mongrel2 writes a reply's body to the
 * client verbatim, so the handler writes the whole response itself (mongrel2-protocol.md §3):
 *
 *   response = "HTTP/1.1" SP status SP reason CRLF *(name ":" SP value CRLF) CRLF [body]
 *   chunk    = hex-length CRLF bytes CRLF             ; one per stream write
 *   last     = "0" CRLF CRLF                          ; ends a chunked stream
 *
 * Keep-alive is Mongrel2's default and closing is the handler's job (§9): after a response to an
 * HTTP/1.0 request without keep-alive, or one that says `Connection: close`, the handler sends the
 * empty message. Everything here is pure; handler.ts sends the bytes.
 */
import { STATUS_CODES } from 'node:http'
import { AppError } from '../errors.js'
import type { Headers } from '../protocol/mongrel2.js'

/** Response headers: a repeated header is an array, numbers are written in decimal. */
export type ResponseHeaders = Readonly<Record<string, string | number | readonly string[]>>

/** How one response is framed. */
export interface ResponseHeadOptions {
  /** Reason phrase; default the standard one for the status (`OK`, `Not Found`, ...). */
  reason?: string
  /** A request to HEAD: headers only, with the Content-Length the body would have. */
  head?: boolean
  /** Close the connection after the response (adds `Connection: close` if absent). */
  close?: boolean
  /** The request was HTTP/1.0 with `Connection: keep-alive` (adds `Connection: keep-alive`). */
  keepAlive10?: boolean
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
const BAD_VALUE = /[\r\n\0]/
const CRLF = '\r\n'

/** The first value of a request header (`connection`, `VERSION`, ...), or undefined. */
export function firstHeader(headers: Headers, name: string): string | undefined {
  const v = headers[name]
  return Array.isArray(v) ? v[0] : v
}

function tokens(value: string | undefined): string[] {
  return value === undefined
    ? []
    : value
        .toLowerCase()
        .split(',')
        .map((s) => s.trim())
}

/**
 * How a request wants its connection treated after the response: `close` for HTTP/1.0 without
 * keep-alive or `Connection: close`, `keep-alive10` for HTTP/1.0 with keep-alive, else `keep`.
 */
export function connectionAfter(headers: Headers): 'close' | 'keep-alive10' | 'keep' {
  const conn = tokens(firstHeader(headers, 'connection'))
  if (conn.includes('close')) return 'close'
  if (firstHeader(headers, 'VERSION') === 'HTTP/1.0') {
    return conn.includes('keep-alive') ? 'keep-alive10' : 'close'
  }
  return 'keep'
}

/** True for statuses whose responses never carry a body: 1xx, 204 and 304. */
export function statusHasNoBody(status: number): boolean {
  return status < 200 || status === 204 || status === 304
}

/** `HTTP/1.1 <status> <reason>`; throws E_HANDLER for a status outside 100-999 or a bad reason. */
export function statusLine(status: number, reason?: string): string {
  if (!Number.isInteger(status) || status < 100 || status > 999) {
    throw new AppError(
      'E_HANDLER',
      `HTTP status must be an integer from 100 to 999, got ${String(status)} (e.g. 200)`,
    )
  }
  const text = reason ?? STATUS_CODES[status] ?? 'Unknown'
  if (BAD_VALUE.test(text)) {
    throw new AppError(
      'E_HANDLER',
      `HTTP reason phrase must not contain CR, LF or NUL, got ${JSON.stringify(text)}`,
    )
  }
  return `HTTP/1.1 ${status} ${text}`
}

function headerLines(headers: ResponseHeaders, skip: (lower: string) => boolean): string {
  let out = ''
  for (const [name, value] of Object.entries(headers)) {
    if (!TOKEN.test(name)) {
      throw new AppError(
        'E_HANDLER',
        `response header name must be an HTTP token, got ${JSON.stringify(name)} (e.g. "Content-Type")`,
      )
    }
    if (skip(name.toLowerCase())) continue
    const values = typeof value === 'string' || typeof value === 'number' ? [value] : value
    for (const v of values) {
      const text = String(v)
      if (BAD_VALUE.test(text)) {
        throw new AppError(
          'E_HANDLER',
          `response header "${name}" must not contain CR, LF or NUL, got ${JSON.stringify(text.slice(0, 60))}`,
        )
      }
      out += `${name}: ${text}${CRLF}`
    }
  }
  return out
}

function hasHeader(headers: ResponseHeaders, lower: string): boolean {
  return Object.keys(headers).some((k) => k.toLowerCase() === lower)
}

/** True when the response's own headers say `Connection: close`. */
export function responseSaysClose(headers: ResponseHeaders): boolean {
  for (const [name, value] of Object.entries(headers)) {
    if (name.toLowerCase() !== 'connection') continue
    const values = typeof value === 'string' || typeof value === 'number' ? [value] : value
    if (values.some((v) => tokens(String(v)).includes('close'))) return true
  }
  return false
}

function connectionLine(headers: ResponseHeaders, opts: ResponseHeadOptions): string {
  if (hasHeader(headers, 'connection')) return ''
  if (opts.close === true) return `Connection: close${CRLF}`
  if (opts.keepAlive10 === true) return `Connection: keep-alive${CRLF}`
  return ''
}

/**
 * A whole response with `Content-Length`. A Content-Length given in `headers` is replaced by the
 * body's length, except for HEAD, where it is kept (the body is not sent, so the app may state
 * the resource's size). 1xx, 204 and 304 responses get neither a body nor a Content-Length.
 * `Transfer-Encoding` is refused: use a stream for chunked responses.
 */
export function buildHttpResponse(
  status: number,
  headers: ResponseHeaders,
  body: Buffer | string,
  opts: ResponseHeadOptions = {},
): Buffer {
  const bytes = typeof body === 'string' ? Buffer.from(body, 'utf8') : body
  if (hasHeader(headers, 'transfer-encoding')) {
    throw new AppError(
      'E_HANDLER',
      'replyHttp sends a Content-Length body; drop Transfer-Encoding or use stream() for chunked responses',
    )
  }
  const noBody = statusHasNoBody(status)
  if (noBody && bytes.length > 0) {
    throw new AppError(
      'E_HANDLER',
      `a ${status} response has no body, got ${bytes.length} bytes; send an empty body`,
    )
  }
  const keepLength = opts.head === true && hasHeader(headers, 'content-length')
  let head = statusLine(status, opts.reason) + CRLF
  head += headerLines(headers, (n) => n === 'content-length' && !keepLength)
  if (!noBody && !keepLength) head += `Content-Length: ${bytes.length}${CRLF}`
  head += connectionLine(headers, opts) + CRLF
  if (opts.head === true || bytes.length === 0) return Buffer.from(head, 'latin1')
  return Buffer.concat([Buffer.from(head, 'latin1'), bytes])
}

/**
 * The status line and headers of a streamed response: `Transfer-Encoding: chunked` when
 * `chunked`, else no framing header at all (a close-delimited body, for HTTP/1.0 clients).
 * Content-Length and Transfer-Encoding given in `headers` are dropped.
 */
export function buildStreamHead(
  status: number,
  headers: ResponseHeaders,
  chunked: boolean,
  opts: ResponseHeadOptions = {},
): Buffer {
  if (statusHasNoBody(status)) {
    throw new AppError(
      'E_HANDLER',
      `a ${status} response has no body and cannot be streamed; use replyHttp`,
    )
  }
  let head = statusLine(status, opts.reason) + CRLF
  head += headerLines(headers, (n) => n === 'content-length' || n === 'transfer-encoding')
  if (chunked) head += `Transfer-Encoding: chunked${CRLF}`
  head += connectionLine(headers, opts) + CRLF
  return Buffer.from(head, 'latin1')
}

/** One chunk of a chunked body: hex length, CRLF, the bytes, CRLF. Empty input gives empty output. */
export function encodeChunk(data: Buffer | string): Buffer {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data
  if (bytes.length === 0) return Buffer.alloc(0)
  return Buffer.concat([
    Buffer.from(`${bytes.length.toString(16)}${CRLF}`, 'latin1'),
    bytes,
    Buffer.from(CRLF, 'latin1'),
  ])
}

/** The terminating chunk of a chunked body (no trailers). */
export const LAST_CHUNK: Buffer = Buffer.from(`0${CRLF}${CRLF}`, 'latin1')

/** The 101 answer to a WebSocket handshake, in the header order of Mongrel2's own example. */
export function buildWebSocketAccept(accept: string, protocol?: string): Buffer {
  for (const [what, v] of [
    ['Sec-WebSocket-Accept', accept],
    ['Sec-WebSocket-Protocol', protocol ?? ''],
  ] as const) {
    if (BAD_VALUE.test(v)) {
      throw new AppError(
        'E_HANDLER',
        `${what} must not contain CR, LF or NUL, got ${JSON.stringify(v.slice(0, 60))}`,
      )
    }
  }
  let head = `${statusLine(101)}${CRLF}Upgrade: websocket${CRLF}Connection: Upgrade${CRLF}`
  if (protocol !== undefined) head += `Sec-WebSocket-Protocol: ${protocol}${CRLF}`
  head += `Sec-WebSocket-Accept: ${accept}${CRLF}${CRLF}`
  return Buffer.from(head, 'latin1')
}
