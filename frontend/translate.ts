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
