/**
 * @module Pure translation of an HTTP request, as uWebSockets.js hands it over, into the headers
 * Mongrel2 sends a handler (../shared/mongrel2-protocol.md §2.1): PATH first, then the client's
 * headers (names lowercased, repeats as a list of at most 5), then METHOD, VERSION, URI, QUERY?,
 * FRAGMENT?, PATTERN, URL_SCHEME, REMOTE_ADDR, with x-forwarded-for set to the client address.
 */
import type { Headers } from '../lib/protocol/mongrel2.js'

/** Most values kept for one repeated header name (Mongrel2's MAX_DUPE_HEADERS). */
export const MAX_DUPE_HEADERS = 5

export interface RequestInfo {
  /** Uppercase method, e.g. GET. */
  method: string
  /** The request target's path as uWS gives it (may still hold a `#fragment`). */
  url: string
  /** Text after `?`, as uWS gives it (may hold a `#fragment`); undefined without `?`. */
  query: string | undefined
  /** Header (name, value) pairs in arrival order, names lowercase. */
  headers: [string, string][]
  remoteAddr: string
}

export interface TranslateOptions {
  /** The whole route string that matched, sent as PATTERN. */
  pattern: string
  scheme: 'http' | 'https'
  /** Keep a client's X-Forwarded-For instead of replacing it (Mongrel2's no_clobber_xff). */
  noClobberXff: boolean
  /** Most headers kept (limits.header_count); the rest are ignored, as Mongrel2 does. */
  maxHeaders: number
}

/** Splits uWS's url and query into Mongrel2's PATH, URI, QUERY and FRAGMENT. */
export function splitTarget(
  url: string,
  query: string | undefined,
): { path: string; uri: string; query?: string; fragment?: string } {
  let path = url
  let q = query
  let fragment: string | undefined
  const hashInPath = path.indexOf('#')
  if (hashInPath >= 0) {
    fragment = path.slice(hashInPath + 1)
    path = path.slice(0, hashInPath)
  } else if (q !== undefined) {
    const hashInQuery = q.indexOf('#')
    if (hashInQuery >= 0) {
      fragment = q.slice(hashInQuery + 1)
      q = q.slice(0, hashInQuery)
    }
  }
  const uri = q === undefined ? path : `${path}?${q}`
  const out: { path: string; uri: string; query?: string; fragment?: string } = { path, uri }
  if (q !== undefined) out.query = q
  if (fragment !== undefined) out.fragment = fragment
  return out
}

/** Builds the Mongrel2 header object for a request, in Mongrel2's key order. */
export function buildHeaders(
  req: RequestInfo,
  opts: TranslateOptions,
  method = req.method,
): { path: string; headers: Headers } {
  const target = splitTarget(req.url, req.query)
  const headers: Headers = { PATH: target.path }
  // Mongrel2's captures put x-forwarded-for right after PATH; the order helps byte diffs only.
  if (!opts.noClobberXff) headers['x-forwarded-for'] = req.remoteAddr
  let count = 0
  let sawXff = !opts.noClobberXff
  for (const [name, value] of req.headers) {
    if (count >= opts.maxHeaders) break
    count++
    if (name === 'x-forwarded-for') {
      if (!opts.noClobberXff) continue
      sawXff = true
    }
    // A client cannot forge the uppercase keys: header names arrive lowercased.
    const prev = headers[name]
    if (prev === undefined) headers[name] = value
    else if (typeof prev === 'string') headers[name] = [prev, value]
    else if (prev.length < MAX_DUPE_HEADERS) prev.push(value)
  }
  if (!sawXff) headers['x-forwarded-for'] = req.remoteAddr
  headers.METHOD = method
  headers.VERSION = 'HTTP/1.1'
  headers.URI = target.uri
  if (target.query !== undefined) headers.QUERY = target.query
  if (target.fragment !== undefined) headers.FRAGMENT = target.fragment
  headers.PATTERN = opts.pattern
  headers.URL_SCHEME = opts.scheme
  headers.REMOTE_ADDR = req.remoteAddr
  return { path: target.path, headers }
}

/** Most header lines the concatenating path takes; above, duplicates are grouped by the object path. */
const FAST_MAX_HEADERS = 32

// What JSON.stringify would escape ('"', '\\', control characters, lone surrogates), and anything
// outside printable ASCII: such a string is quoted by JSON.stringify itself.
const NOT_PLAIN = /["\\]|[^\x20-\x7e]/

/** False once a string quoted since the last reset was not plain printable ASCII. */
let plain = true

/** A JSON string literal, as JSON.stringify writes it; concatenation when nothing needs escaping. */
function quote(s: string): string {
  if (!NOT_PLAIN.test(s)) return '"' + s + '"'
  plain = false
  return JSON.stringify(s)
}

// The end of the object (PATTERN, URL_SCHEME, REMOTE_ADDR) for the last route and client seen:
// consecutive requests mostly share it, and then it costs no concatenation.
let tailPattern = ''
let tailScheme = ''
let tailAddr = ''
let tail = ''
let tailPlain = true

function tailOf(pattern: string, scheme: string, addr: string): string {
  if (pattern !== tailPattern || scheme !== tailScheme || addr !== tailAddr || tail === '') {
    const was = plain
    plain = true
    tail =
      ',"PATTERN":' +
      quote(pattern) +
      ',"URL_SCHEME":' +
      quote(scheme) +
      ',"REMOTE_ADDR":' +
      quote(addr) +
      '}'
    tailPlain = plain
    plain = was
    tailPattern = pattern
    tailScheme = scheme
    tailAddr = addr
  }
  if (!tailPlain) plain = false
  return tail
}

/** Duplicate header lines already written, by index (scratch, reused). */
const written = new Uint8Array(FAST_MAX_HEADERS)

/**
 * The JSON text of buildHeaders(...).headers, byte for byte what JSON.stringify gives, built by
 * string concatenation from the header lines as uWS hands them over (parallel name and value
 * arrays, `count` of them): no header object, no pair arrays. Undefined when the object path must
 * decide: more than FAST_MAX_HEADERS lines (grouping repeats here is quadratic), or a name that a
 * JS object would reorder (integer-like keys go first) or drop (`__proto__`). `ascii`: the text is
 * printable ASCII only, so its byte length is its length (encodeJsonRequest's fast case).
 */
export function headersJson(
  method: string,
  url: string,
  query: string | undefined,
  names: readonly string[],
  values: readonly string[],
  count: number,
  remoteAddr: string,
  opts: TranslateOptions,
): { path: string; json: string; ascii: boolean } | undefined {
  if (count > FAST_MAX_HEADERS) return undefined
  const n = Math.min(count, opts.maxHeaders)
  for (let i = 0; i < n; i++) {
    const c = names[i]!.charCodeAt(0)
    if ((c >= 0x30 && c <= 0x39) || names[i] === '__proto__') return undefined
  }
  plain = true
  const target = splitTarget(url, query)
  let json = '{"PATH":' + quote(target.path)
  const addr = opts.noClobberXff ? '' : quote(remoteAddr)
  if (!opts.noClobberXff) json += ',"x-forwarded-for":' + addr
  let sawXff = !opts.noClobberXff
  written.fill(0, 0, n)
  for (let i = 0; i < n; i++) {
    if (written[i] === 1) continue
    const name = names[i]!
    if (name === 'x-forwarded-for') {
      if (!opts.noClobberXff) continue
      sawXff = true
    }
    // Later lines of the same name join this one as a list (at most MAX_DUPE_HEADERS values),
    // at the place of the first, as assigning them to an object does.
    let list: string | undefined
    let listed = 1
    for (let k = i + 1; k < n; k++) {
      if (names[k] !== name) continue
      written[k] = 1
      if (listed === MAX_DUPE_HEADERS) continue
      list = (list ?? '[' + quote(values[i]!)) + ',' + quote(values[k]!)
      listed++
    }
    json += ',' + quote(name) + ':' + (list === undefined ? quote(values[i]!) : list + ']')
  }
  if (!sawXff) json += ',"x-forwarded-for":' + quote(remoteAddr)
  json += ',"METHOD":' + quote(method) + ',"VERSION":"HTTP/1.1","URI":' + quote(target.uri)
  if (target.query !== undefined) json += ',"QUERY":' + quote(target.query)
  if (target.fragment !== undefined) json += ',"FRAGMENT":' + quote(target.fragment)
  json += tailOf(opts.pattern, opts.scheme, remoteAddr)
  return { path: target.path, json, ascii: plain }
}
