/**
 * @module Mongrel2 handler protocol, both directions, exactly as Mongrel2 1.12.2 speaks it
 * (../shared/mongrel2-protocol.md §2-§4).
 *
 *   request  (frontend PUSH -> handler PULL):
 *     SENDER SP CONN_ID SP PATH SP HEADERS NS(BODY)
 *     HEADERS  = NS(json-object)          ; protocol 'json' (the default)
 *              / tnetstring-dict          ; protocol 'tnetstring': ends with "}", no extra ","
 *     SENDER   = 1*(any byte but SP)      ; the handler's send_ident
 *     CONN_ID  = 1*10DIGIT                ; uint32
 *     PATH     = 1*(any byte but SP)      ; "@*" for notices the frontend makes up
 *     header values are a string, or a list of strings for a repeated header
 *
 *   reply    (handler PUB -> frontend SUB):
 *     UUID SP LEN ":" ["X" SP] ID *(SP ID) "," SP BODY
 *     UUID     = 1*(ALPHA / DIGIT / "-")
 *     LEN      = byte length of everything between ":" and ","
 *     ID       = 1*10DIGIT, 1 to 128 of them (limits.handler_targets)
 *     BODY     = raw bytes written to every target; empty closes the connections;
 *                with "X" (extended reply) a tnetstring list [key, value], e.g. ["ctl", {...}]
 *
 *   notices the frontend makes up (path "@*", METHOD "JSON", JSON body):
 *     disconnect: SENDER ID @* 17:{"METHOD":"JSON"},21:{"type":"disconnect"},
 *     credits:    SENDER ID @* NS({"METHOD":"JSON","DOWNLOAD_CREDITS":"N"}) 18:{"type":"credits"},
 *
 * Parsing is strict and bounded: every declared length is checked against the bytes present,
 * and anything off-grammar throws AppError E_M2_REQUEST or E_M2_REPLY. Bodies are zero-copy
 * views into the message.
 */
import { AppError } from '../errors.js'
import { parseLengthPrefix, parseNetstring } from './netstring.js'
import { decodeUtf8, encodeTnetstring, parseTnetstring, type TnetValue } from './tnetstring.js'

export type HeaderFormat = 'json' | 'tnetstring'
export type HeaderValue = string | string[]
export type Headers = Record<string, HeaderValue>

/** One request as a handler receives it. */
export interface HandlerRequest {
  /** The handler's send_ident, first field of every request. */
  sender: string
  connId: number
  path: string
  headers: Headers
  body: Buffer
  /** How the headers were (or are to be) encoded. */
  format: HeaderFormat
}

/** One reply as a frontend receives it. */
export interface HandlerReply {
  uuid: string
  /** 1 to 128 connection ids. */
  connIds: number[]
  /** True for an extended ("X") reply, whose body is a tnetstring list [key, value]. */
  extended: boolean
  body: Buffer
}

/** Most ids one reply may address (Mongrel2's limits.handler_targets default). */
export const MAX_TARGETS = 128
/** Largest connection id: Mongrel2's ids are a uint32 counter. */
export const MAX_CONN_ID = 0xffffffff

const SP = 0x20
const COMMA = 0x2c
const COLON = 0x3a

// ---------------------------------------------------------------------------- requests

function requestError(message: string): never {
  throw new AppError('E_M2_REQUEST', message)
}

function parseConnId(text: string, code: 'E_M2_REQUEST' | 'E_M2_REPLY'): number {
  const n = Number(text)
  if (!/^[0-9]{1,10}$/.test(text) || n > MAX_CONN_ID) {
    throw new AppError(code, `connection id must be a decimal uint32, got "${text.slice(0, 20)}"`)
  }
  return n
}

function checkHeaders(value: unknown, format: HeaderFormat): Headers {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    requestError(
      `headers must be a ${format === 'json' ? 'JSON object' : 'tnetstring dict'}, got ${Array.isArray(value) ? 'a list' : typeof value}`,
    )
  }
  for (const [k, v] of Object.entries(value)) {
    if (typeof v === 'string') continue
    if (Array.isArray(v) && v.every((x) => typeof x === 'string')) continue
    requestError(
      `header "${k.slice(0, 60)}" must be a string or a list of strings, got ${JSON.stringify(v)?.slice(0, 60)}`,
    )
  }
  return value as Headers
}

// Mongrel2 escapes only '"' and '\' in header JSON, so raw control bytes (a TAB, 0x01) can reach a
// handler as invalid strict JSON. They can only occur inside strings there, so escaping them
// makes the text valid without changing any value.
function escapeControlBytes(text: string): string {
  return text.replace(
    // eslint-disable-next-line no-control-regex -- matching raw control bytes is the point
    /[\u0000-\u001f]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  )
}

function parseJsonHeaders(bytes: Buffer): Headers {
  const text = decodeUtf8(bytes, 'E_M2_REQUEST', 'headers')
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    try {
      value = JSON.parse(escapeControlBytes(text))
    } catch (err) {
      requestError(
        `headers are not a JSON object (${(err as Error).message}); the sender must encode headers as JSON or use protocol 'tnetstring'`,
      )
    }
  }
  return checkHeaders(value, 'json')
}

/** Splits `buf` at the next space from `offset`; the field must be non-empty. */
function field(buf: Buffer, offset: number, what: string): { text: string; next: number } {
  const sp = buf.indexOf(SP, offset)
  if (sp < 0)
    requestError(
      `request has no space after its ${what}; expected "SENDER CONN_ID PATH HEADERS BODY"`,
    )
  if (sp === offset)
    requestError(`request ${what} is empty; expected "SENDER CONN_ID PATH HEADERS BODY"`)
  return { text: decodeUtf8(buf.subarray(offset, sp), 'E_M2_REQUEST', what), next: sp + 1 }
}

/** Parses a request message as a handler receives it. Throws AppError E_M2_REQUEST. */
export function parseRequest(msg: Buffer): HandlerRequest {
  const sender = field(msg, 0, 'sender')
  const connId = field(msg, sender.next, 'connection id')
  const path = field(msg, connId.next, 'path')
  const at = path.next
  let headers: Headers
  let format: HeaderFormat
  let bodyAt: number
  try {
    const { length, start } = parseLengthPrefix(msg, at, 'E_NETSTRING', 'headers')
    const tag = msg[start + length]
    if (tag === COMMA) {
      format = 'json'
      headers = parseJsonHeaders(msg.subarray(start, start + length))
    } else if (tag === 0x7d /* } */) {
      format = 'tnetstring'
      headers = checkHeaders(parseTnetstring(msg, at).value, 'tnetstring')
    } else {
      requestError(
        `headers must end with "," (JSON) or "}" (tnetstring dict), got ${tag === undefined ? 'end of message' : `byte 0x${tag.toString(16)}`}`,
      )
    }
    bodyAt = start + length + 1
  } catch (err) {
    if (err instanceof AppError && err.code !== 'E_M2_REQUEST') {
      requestError(`bad headers: ${err.message}`)
    }
    throw err
  }
  let body: Buffer
  try {
    const ns = parseNetstring(msg, bodyAt)
    body = ns.value
    if (ns.next !== msg.length)
      requestError(
        `request has ${msg.length - ns.next} bytes after its body netstring; the body length is wrong`,
      )
  } catch (err) {
    if (err instanceof AppError && err.code === 'E_NETSTRING')
      requestError(`bad body: ${err.message}`)
    throw err
  }
  return {
    sender: sender.text,
    connId: parseConnId(connId.text, 'E_M2_REQUEST'),
    path: path.text,
    headers,
    body,
    format,
  }
}

function checkToken(value: string, what: string, code: 'E_M2_REQUEST' | 'E_M2_REPLY'): void {
  if (value.length === 0 || value.includes(' ')) {
    throw new AppError(
      code,
      `${what} must be non-empty and contain no space, got ${JSON.stringify(value.slice(0, 60))}`,
    )
  }
}

/**
 * Encodes a request. Header order is kept as given (Mongrel2 puts PATH first in JSON). JSON text
 * is strict: control characters are escaped, where Mongrel2 would send them raw.
 */
export function encodeRequest(req: HandlerRequest): Buffer {
  checkToken(req.sender, 'sender', 'E_M2_REQUEST')
  checkToken(req.path, 'path', 'E_M2_REQUEST')
  if (!Number.isInteger(req.connId) || req.connId < 0 || req.connId > MAX_CONN_ID) {
    requestError(`connection id must be an integer from 0 to ${MAX_CONN_ID}, got ${req.connId}`)
  }
  const head = `${req.sender} ${req.connId} ${req.path} `
  const body = req.body
  if (req.format === 'tnetstring') {
    const bodyPrefix = `${body.length}:`
    const headers = encodeTnetstring(req.headers)
    return Buffer.concat([
      Buffer.from(head),
      headers,
      Buffer.from(bodyPrefix, 'latin1'),
      body,
      Buffer.from(','),
    ])
  }
  return writeJsonRequest(head, JSON.stringify(req.headers), body)
}

/**
 * encodeRequest for headers already in JSON text (`json` must be a JSON object, e.g. from the
 * frontend's concatenating translator): the same bytes as encodeRequest with format 'json'.
 * `ascii` promises that `json` is ASCII only; a bodiless request is then written in one pass.
 */
export function encodeJsonRequest(
  sender: string,
  connId: number,
  path: string,
  json: string,
  body: Buffer,
  ascii = false,
): Buffer {
  checkToken(sender, 'sender', 'E_M2_REQUEST')
  checkToken(path, 'path', 'E_M2_REQUEST')
  if (!Number.isInteger(connId) || connId < 0 || connId > MAX_CONN_ID) {
    requestError(`connection id must be an integer from 0 to ${MAX_CONN_ID}, got ${connId}`)
  }
  if (ascii && body.length === 0 && asciiToken(sender)) {
    // The path is inside the JSON too, so it is ASCII as well: one string, one latin1 copy,
    // instead of measuring and writing each part as UTF-8.
    return Buffer.from(`${sender} ${connId} ${path} ${json.length}:${json},0:,`, 'latin1')
  }
  return writeJsonRequest(`${sender} ${connId} ${path} `, json, body)
}

// The last sender found ASCII: senders are a handful of configured idents.
let asciiSender = ''
function asciiToken(sender: string): boolean {
  if (sender === asciiSender) return true
  // eslint-disable-next-line no-control-regex -- ASCII is the range to test
  if (!/^[\x00-\x7f]*$/.test(sender)) return false
  asciiSender = sender
  return true
}

function writeJsonRequest(head: string, json: string, body: Buffer): Buffer {
  const bodyPrefix = `${body.length}:`
  const jsonLength = Buffer.byteLength(json)
  const prefix = `${head}${jsonLength}:`
  const prefixLength = Buffer.byteLength(prefix)
  const out = Buffer.allocUnsafe(
    prefixLength + jsonLength + 1 + bodyPrefix.length + body.length + 1,
  )
  let i = out.write(prefix, 0)
  i += out.write(json, i)
  out[i++] = COMMA
  i += out.write(bodyPrefix, i, 'latin1')
  i += body.copy(out, i)
  out[i] = COMMA
  return out
}

// ---------------------------------------------------------------------------- notices

const DISCONNECT_BODY = Buffer.from('{"type":"disconnect"}')
const CREDITS_BODY = Buffer.from('{"type":"credits"}')

/** The `@*` disconnect notice the frontend sends when a client went away or an id is dead. */
export function encodeDisconnect(
  sender: string,
  connId: number,
  format: HeaderFormat = 'json',
): Buffer {
  return encodeRequest({
    sender,
    connId,
    path: '@*',
    headers: { METHOD: 'JSON' },
    body: DISCONNECT_BODY,
    format,
  })
}

/** The `@*` credits notice of download flow control: `bytes` were written to the client. */
export function encodeCredits(
  sender: string,
  connId: number,
  bytes: number,
  format: HeaderFormat = 'json',
): Buffer {
  return encodeRequest({
    sender,
    connId,
    path: '@*',
    headers: { METHOD: 'JSON', DOWNLOAD_CREDITS: String(bytes) },
    body: CREDITS_BODY,
    format,
  })
}

/** The `type` of a JSON-method message's body (`disconnect`, `credits`), or undefined. */
export function noticeType(req: HandlerRequest): string | undefined {
  if (req.headers.METHOD !== 'JSON') return undefined
  try {
    const body: unknown = JSON.parse(req.body.toString('utf8'))
    if (
      typeof body === 'object' &&
      body !== null &&
      'type' in body &&
      typeof body.type === 'string'
    )
      return body.type
  } catch {
    // a JSON socket message that is not valid JSON has no type
  }
  return undefined
}

/** True for the notice that tells a handler its client is gone. */
export function isDisconnect(req: HandlerRequest): boolean {
  return req.path === '@*' && noticeType(req) === 'disconnect'
}

// ---------------------------------------------------------------------------- replies

function replyError(message: string): never {
  throw new AppError('E_M2_REPLY', message)
}

// The longest id list a valid reply can have: "X " plus 128 ids of 10 digits and their spaces.
const MAX_TARGETS_LENGTH = 2 + MAX_TARGETS * 11

// Scans "ID ID ID" in msg[from, to) byte by byte into `ids`: this runs for every reply, often
// with 128 ids. Mongrel2's grammar allows one optional space after each id, so a trailing space
// is fine.
function parseIds(msg: Buffer, from: number, to: number, ids: number[]): void {
  // Written over in place and cut to size at the end: `ids.length = 0` first would drop the
  // array's storage and make every reply allocate it again.
  let n = 0
  let i = from
  while (i < to) {
    let id = 0
    const first = i
    for (; i < to && msg[i] !== SP; i++) {
      const c = msg[i]!
      if (c < 0x30 || c > 0x39) {
        replyError(`reply target ids must be decimal, got byte 0x${c.toString(16)} at ${i}`)
      }
      id = id * 10 + (c - 0x30)
    }
    if (i === first)
      replyError(
        'reply target list has an empty id (two spaces in a row, or a leading space); separate ids with one space',
      )
    if (i - first > 10 || id > MAX_CONN_ID)
      replyError(
        `connection id must be a decimal uint32, got "${msg.toString('latin1', first, Math.min(i, first + 20))}"`,
      )
    if (n === MAX_TARGETS)
      replyError(`reply addresses more than ${MAX_TARGETS} connections; send several replies`)
    ids[n++] = id
    i++ // the space
  }
  if (n === 0) replyError('reply addresses no connection; give 1 to 128 ids')
  ids.length = n
}

/** Bytes a reply uuid may hold (letters, digits, "-") -> 1. */
const UUID_BYTE = new Uint8Array(256)
for (const c of 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-') {
  UUID_BYTE[c.charCodeAt(0)] = 1
}

/**
 * parseReply for the frontend's hot path: one reader reused for every reply, so a reply costs no
 * uuid string, id list or result object. read() validates exactly as parseReply does (and throws
 * the same E_M2_REPLY); the fields describe the last message read until the next read().
 */
export class ReplyReader {
  /** The connection ids (the same array every time: copy it to keep it). */
  readonly ids: number[] = []
  extended = false
  /** Where the uuid ends (its space) and the body starts. */
  uuidEnd = 0
  bodyAt = 0

  read(msg: Buffer): void {
    const sp = msg.indexOf(SP)
    if (sp <= 0)
      replyError(
        `reply must start with "UUID " (letters, digits, "-"), got ${sp === 0 ? 'a space' : 'no space'}`,
      )
    for (let i = 0; i < sp; i++) {
      const c = msg[i]!
      if (UUID_BYTE[c] !== 1)
        replyError(
          `reply uuid may hold only letters, digits and "-", got byte 0x${c.toString(16)} at ${i}`,
        )
    }
    let length = 0
    let i = sp + 1
    for (; i < msg.length && i - sp <= 5; i++) {
      const c = msg[i]!
      if (c === COLON) break
      if (c < 0x30 || c > 0x39)
        replyError(
          `reply targets must be "LEN:ID ID," after the uuid, got byte 0x${c.toString(16)} at ${i}`,
        )
      length = length * 10 + (c - 0x30)
    }
    if (msg[i] !== COLON || i === sp + 1)
      replyError(
        'reply targets must be a netstring "LEN:ID ID," after the uuid; the length is missing, too long, or has no ":"',
      )
    if (length > MAX_TARGETS_LENGTH)
      replyError(
        `reply target list declares ${length} bytes; at most ${MAX_TARGETS} ids (${MAX_TARGETS_LENGTH} bytes) are allowed`,
      )
    const start = i + 1
    const end = start + length
    if (end >= msg.length || msg[end] !== COMMA)
      replyError(
        `reply target list must be exactly ${length} bytes followed by ","; fix LEN to the byte length of the ids`,
      )
    if (end + 1 >= msg.length || msg[end + 1] !== SP)
      replyError(
        'reply must have a space after the target list ("UUID LEN:IDS, BODY"), even when BODY is empty',
      )
    const extended = msg[start] === 0x58 /* X */ && msg[start + 1] === SP
    parseIds(msg, extended ? start + 2 : start, end, this.ids)
    this.extended = extended
    this.uuidEnd = sp
    this.bodyAt = end + 2
  }
}

/** Parses a reply message as a frontend receives it. Throws AppError E_M2_REPLY. */
export function parseReply(msg: Buffer): HandlerReply {
  const r = new ReplyReader()
  r.read(msg)
  return {
    uuid: msg.toString('latin1', 0, r.uuidEnd),
    connIds: r.ids,
    extended: r.extended,
    body: msg.subarray(r.bodyAt),
  }
}

/** Encodes a reply to 1..128 connections; an empty body closes them. */
export function encodeReply(reply: {
  uuid: string
  connIds: readonly number[]
  body: Buffer | string
  extended?: boolean
}): Buffer {
  if (!/^[A-Za-z0-9-]+$/.test(reply.uuid))
    replyError(
      `reply uuid may hold only letters, digits and "-", got ${JSON.stringify(reply.uuid.slice(0, 60))}`,
    )
  const n = reply.connIds.length
  if (n < 1 || n > MAX_TARGETS)
    replyError(
      `a reply addresses 1 to ${MAX_TARGETS} connections, got ${n}; split it into several replies`,
    )
  for (const id of reply.connIds) {
    if (!Number.isInteger(id) || id < 0 || id > MAX_CONN_ID)
      replyError(`connection id must be an integer from 0 to ${MAX_CONN_ID}, got ${id}`)
  }
  const ids = (reply.extended ? 'X ' : '') + reply.connIds.join(' ')
  const head = `${reply.uuid} ${ids.length}:${ids}, `
  const body = typeof reply.body === 'string' ? Buffer.from(reply.body, 'utf8') : reply.body
  const out = Buffer.allocUnsafe(head.length + body.length)
  out.write(head, 0, 'latin1')
  body.copy(out, head.length)
  return out
}

/** An extended reply's body: a tnetstring list [key, value]. */
export interface ExtendedCommand {
  key: string
  value: TnetValue
}

/** Parses an extended reply's body, e.g. `["ctl", {"keep-alive": true}]`. Throws E_M2_REPLY. */
export function parseExtended(body: Buffer): ExtendedCommand {
  let parsed
  try {
    parsed = parseTnetstring(body)
  } catch (err) {
    return replyError(
      `extended reply body must be a tnetstring list [key, value]: ${(err as Error).message}`,
    )
  }
  const v = parsed.value
  if (
    parsed.next !== body.length ||
    !Array.isArray(v) ||
    v.length !== 2 ||
    typeof v[0] !== 'string'
  ) {
    replyError(
      'extended reply body must be exactly one tnetstring list [key, value] with a string key, e.g. 28:3:ctl,18:7:credits,5:16384#}]',
    )
  }
  return { key: v[0], value: v[1]! }
}

/** Encodes an extended reply, e.g. `encodeExtendedReply(uuid, [7], 'ctl', { credits: 16384 })`. */
export function encodeExtendedReply(
  uuid: string,
  connIds: readonly number[],
  key: string,
  value: TnetValue,
): Buffer {
  return encodeReply({ uuid, connIds, extended: true, body: encodeTnetstring([key, value]) })
}
