/**
 * @module Request routing, as Mongrel2 1.12 does it (src/server.c, src/host.c, src/routing.c,
 * src/pattern.c), compiled once per route table so that `match()` is a few map lookups.
 *
 *   host    = the Host header, lowercased, without its ":port"
 *           -> the host whose `matching` is the longest suffix of it, else the default_host
 *   route   = prefix [ "(" pattern ]           ; split at the FIRST "("
 *           -> the longest prefix the path starts with; if that prefix carries patterns, the rest
 *              of the path must match one of them (anchored at the prefix; "$" anchors the end)
 *   matching = [ pattern ")" ] suffix          ; split at the LAST ")": the pattern, with "$" added,
 *              must match the whole host name, and the name must end with the suffix
 *
 *   pattern = *( item [ "*" | "+" | "-" | "?" ] | "(" | ")" ) [ "$" ]
 *   item    = "." | ESC class | ESC char | "[" [ "^" ] set-item *set-item "]" | char
 *   set-item = ESC class | ESC char | char "-" char | char
 *   ESC     = "\" (Mongrel2's escape) | "%" (Lua's)
 *   class   = a c d l p s u w x z (letters, control, digits, lower, punctuation, space, upper,
 *             alphanumerics, hex digits, NUL; ASCII only); the uppercase letter negates
 *   "-"     = zero or more, shortest first; a quantifier applies to the one item before it
 *   "(" ")" = only group (no captures); a quantifier right after one is a literal character
 *
 * A pattern is translated to a sticky JS RegExp; a malformed one throws AppError('E_ROUTES').
 *
 * Deliberate differences from Mongrel2:
 * - Mongrel2's ternary search tree also routes a path that is only the BEGINNING of a route
 *   prefix (`GET /t` reaches route `/tns/`). Here a route matches only a path that starts with
 *   its prefix. The same holds for hosts: `Host: com` does not reach `matching='example.com'`.
 * - Host names compare case-insensitively (RFC 9110); Mongrel2 compares bytes.
 * - `%` escapes as well as Mongrel2's `\`, so Lua-style patterns work; in Mongrel2 `%` is a
 *   literal character. A `^` before the first item is Lua's start anchor (always true here, as
 *   matching is anchored); Mongrel2 reads it as a literal `^`.
 * - Lua's `%b()` (balanced) and `%f[set]` (frontier) are rejected: a RegExp cannot express `%b`.
 * - Several routes with one prefix (`/u/(\d+)$`, `/u/([a-z]+)$`, `/u/`): those with a pattern are
 *   tried in table order, then the one without; Mongrel2's order there is ill-defined.
 *
 * As in Mongrel2: when no route under the longest prefix matches, the result is undefined (404);
 * shorter prefixes are not tried. Routes starting with `@` (JSON socket routes) never match an
 * HTTP path. Host matching is a plain suffix match: `matching='example.com'` also serves
 * `badexample.com`; write `matching='.example.com'` plus a host for the bare name to avoid that.
 */
import { AppError } from '../errors.js'
import type { HostSpec, RouteTable, ServerSpec, Target } from './routes.js'

/** What a request routes to. `routeKey` is the whole route string (the PATTERN header). */
export interface RouteMatch {
  host: HostSpec
  routeKey: string
  target: Target
}

/** The compiled routes of one server. */
export interface Matcher {
  readonly server: ServerSpec
  /** Routes one request; `path` is the request path without the query string. */
  match(hostHeader: string | undefined, path: string): RouteMatch | undefined
}

/** A route string split at its first `(`; `regex` (sticky) is set when there is a pattern. */
export interface RoutePattern {
  prefix: string
  regex: RegExp | undefined
}

interface CompiledRoute extends RoutePattern {
  match: RouteMatch
}

interface CompiledHost {
  spec: HostSpec
  /** Routes by prefix; a pattern-less route comes after the patterned ones with its prefix. */
  byPrefix: Map<string, CompiledRoute[]>
  /** The distinct prefix lengths, longest first: at most this many map lookups per request. */
  lengths: number[]
}

interface HostEntry {
  host: CompiledHost
  /** Set when `matching` has a pattern part; it must then match the whole host name. */
  regex: RegExp | undefined
}

/**
 * Compiles the routes of one server of `table`: the one named (or with the uuid) `serverName`, or
 * the only one. Throws AppError('E_ROUTES') for a malformed pattern, a default_host that names no
 * host, or a server that cannot be chosen.
 */
export function compileRoutes(table: RouteTable, serverName?: string): Matcher {
  const server = chooseServer(table, serverName)
  const hosts: CompiledHost[] = server.hosts.map(compileHost)
  const found = hosts.find((h) => h.spec.name === server.defaultHost)
  if (found === undefined) {
    throw new AppError(
      'E_ROUTES',
      `server ${JSON.stringify(server.name)} has default_host ${JSON.stringify(server.defaultHost)}` +
        `, which names none of its hosts (${list(server.hosts.map((h) => h.name))}); ` +
        'set default_host to one of them',
    )
  }
  const fallback: CompiledHost = found

  const bySuffix = new Map<string, HostEntry[]>()
  for (const host of hosts) {
    const { suffix, regex } = compileMatching(host.spec)
    const entries = bySuffix.get(suffix)
    if (entries === undefined) bySuffix.set(suffix, [{ host, regex }])
    else entries.push({ host, regex })
  }
  const suffixLengths = lengthsLongestFirst(bySuffix.keys())

  function findHost(hostHeader: string | undefined): CompiledHost {
    if (hostHeader === undefined) return fallback
    const name = hostName(hostHeader)
    for (const len of suffixLengths) {
      if (len > name.length) continue
      const entries = bySuffix.get(len === name.length ? name : name.slice(name.length - len))
      if (entries === undefined) continue
      for (const entry of entries) {
        if (entry.regex === undefined) return entry.host
        entry.regex.lastIndex = 0
        if (entry.regex.test(name)) return entry.host
      }
      // Mongrel2 takes the longest suffix only; when its pattern fails, the default host serves.
      return fallback
    }
    return fallback
  }

  return {
    server,
    match(hostHeader, path) {
      const host = findHost(hostHeader)
      for (const len of host.lengths) {
        if (len > path.length) continue
        const routes = host.byPrefix.get(len === path.length ? path : path.slice(0, len))
        if (routes === undefined) continue
        for (const route of routes) {
          if (route.regex === undefined) return route.match
          route.regex.lastIndex = len
          if (route.regex.test(path)) return route.match
        }
        return undefined
      }
      return undefined
    },
  }
}

function chooseServer(table: RouteTable, serverName: string | undefined): ServerSpec {
  const names = list(table.servers.map((s) => s.name))
  if (serverName === undefined) {
    const [only, ...rest] = table.servers
    if (only !== undefined && rest.length === 0) return only
    if (only === undefined) {
      throw new AppError('E_ROUTES', 'the route table has no servers, expected one; add a server')
    }
    throw new AppError(
      'E_ROUTES',
      `the route table has ${table.servers.length} servers (${names}), expected exactly one; ` +
        'name the server to run',
    )
  }
  const server = table.servers.find((s) => s.name === serverName || s.uuid === serverName)
  if (server === undefined) {
    throw new AppError(
      'E_ROUTES',
      `no server is named ${JSON.stringify(serverName)} (by name or uuid); the servers are ${names}`,
    )
  }
  return server
}

function compileHost(spec: HostSpec): CompiledHost {
  const byPrefix = new Map<string, CompiledRoute[]>()
  const plain: CompiledRoute[] = []
  for (const [routeKey, target] of Object.entries(spec.routes)) {
    // '@route' and '<route' are JSON/XML socket routes: no HTTP path starts with either.
    if (routeKey.startsWith('@') || routeKey.startsWith('<')) continue
    const compiled = { ...compileRoutePattern(routeKey), match: { host: spec, routeKey, target } }
    if (compiled.regex === undefined) {
      plain.push(compiled)
      continue
    }
    const routes = byPrefix.get(compiled.prefix)
    if (routes === undefined) byPrefix.set(compiled.prefix, [compiled])
    else routes.push(compiled)
  }
  for (const route of plain) {
    const routes = byPrefix.get(route.prefix)
    if (routes === undefined) byPrefix.set(route.prefix, [route])
    else routes.push(route)
  }
  return { spec, byPrefix, lengths: lengthsLongestFirst(byPrefix.keys()) }
}

function compileMatching(spec: HostSpec): { suffix: string; regex: RegExp | undefined } {
  const matching = spec.matching
  const close = matching.lastIndexOf(')')
  if (close < 0) return { suffix: matching.toLowerCase(), regex: undefined }
  // Only the suffix is lowercased: in the pattern, case is meaning (\d vs \D).
  const pattern = matching.slice(0, close + 1)
  const where = `host ${JSON.stringify(spec.name)} matching ${JSON.stringify(spec.matching)}`
  return {
    suffix: matching.slice(close + 1).toLowerCase(),
    regex: new RegExp(translatePattern(pattern + '$', where), 'y'),
  }
}

function lengthsLongestFirst(keys: Iterable<string>): number[] {
  return [...new Set([...keys].map((k) => k.length))].sort((a, b) => b - a)
}

/** The Host header's name: lowercased, without the port, `[::1]:8080` -> `[::1]`. */
function hostName(header: string): string {
  const h = header.trim().toLowerCase()
  if (h.startsWith('[')) {
    const end = h.indexOf(']')
    return end < 0 ? h : h.slice(0, end + 1)
  }
  const colon = h.indexOf(':')
  return colon < 0 ? h : h.slice(0, colon)
}

function list(names: string[]): string {
  return names.length === 0 ? 'none' : names.map((n) => JSON.stringify(n)).join(', ')
}

/**
 * Splits a route string at its first `(` and compiles the pattern part, if any, to a sticky
 * RegExp that is run at `lastIndex = prefix.length` on a path known to start with the prefix.
 * Throws AppError('E_ROUTES') when the pattern is malformed.
 */
export function compileRoutePattern(routeKey: string): RoutePattern {
  const paren = routeKey.indexOf('(')
  if (paren < 0) return { prefix: routeKey, regex: undefined }
  const where = `route ${JSON.stringify(routeKey)}`
  return {
    prefix: routeKey.slice(0, paren),
    regex: new RegExp(translatePattern(routeKey.slice(paren), where), 'y'),
  }
}

const ESCAPES = new Set(['\\', '%'])
const QUANTIFIERS: Record<string, string> = { '*': '*', '+': '+', '?': '?', '-': '*?' }

/** Lua-pattern source -> RegExp source, item by item, as src/pattern.c reads it. */
function translatePattern(pattern: string, where: string): string {
  const bad = (at: number, what: string, fix: string): never => {
    throw new AppError(
      'E_ROUTES',
      `${where} has a malformed pattern: ${what} at offset ${at} of ${JSON.stringify(pattern)}; ${fix}`,
    )
  }
  let out = ''
  let anyItem = false
  let i = 0
  while (i < pattern.length) {
    const c = pattern[i]!
    if (c === '(' || c === ')') {
      i++
      continue
    }
    if (c === '$' && i === pattern.length - 1) {
      out += '$'
      break
    }
    if (c === '^' && !anyItem) {
      i++
      anyItem = true
      continue
    }
    anyItem = true
    let item: string
    let next: number
    if (c === '.') {
      item = '[^]'
      next = i + 1
    } else if (ESCAPES.has(c)) {
      const e = pattern[i + 1]
      if (e === undefined) {
        return bad(i, `a lone '${c}' at the end`, `escape a literal '${c}' as '${c}${c}'`)
      }
      if (e === 'b' || e === 'f') {
        return bad(
          i,
          `'${c}${e}' (Lua's ${e === 'b' ? 'balanced match' : 'frontier'})`,
          'it is not supported; use a set like [^/]* instead',
        )
      }
      item = emitSet(classOrChar(e))
      next = i + 2
    } else if (c === '[') {
      const set = readSet(pattern, i)
      if (set === undefined) {
        return bad(
          i,
          "a '[' with no closing ']'",
          "close the set, or escape a literal '[' as '\\['",
        )
      }
      item = emitSet(set.ranges)
      next = set.end
    } else {
      item = emitChar(c)
      next = i + 1
    }
    const q = QUANTIFIERS[pattern[next] ?? '']
    out += q === undefined ? item : item + q
    i = q === undefined ? next : next + 1
  }
  return out
}

/** Inclusive ranges of UTF-16 code units, sorted and merged by `normalize`. */
type Ranges = [number, number][]

const MAX_UNIT = 0xffff
const CLASSES: Record<string, Ranges> = {
  a: [
    [0x41, 0x5a],
    [0x61, 0x7a],
  ],
  c: [
    [0x00, 0x1f],
    [0x7f, 0x7f],
  ],
  d: [[0x30, 0x39]],
  l: [[0x61, 0x7a]],
  p: [
    [0x21, 0x2f],
    [0x3a, 0x40],
    [0x5b, 0x60],
    [0x7b, 0x7e],
  ],
  s: [
    [0x09, 0x0d],
    [0x20, 0x20],
  ],
  u: [[0x41, 0x5a]],
  w: [
    [0x30, 0x39],
    [0x41, 0x5a],
    [0x61, 0x7a],
  ],
  x: [
    [0x30, 0x39],
    [0x41, 0x46],
    [0x61, 0x66],
  ],
  z: [[0x00, 0x00]],
}

/** `\d` -> digits, `\D` -> not digits, `\.` -> '.', as match_class() in src/pattern.c. */
function classOrChar(e: string): Ranges {
  const lower = e.toLowerCase()
  const cls = CLASSES[lower]
  if (cls === undefined) return [[e.charCodeAt(0), e.charCodeAt(0)]]
  return e === lower ? cls : complement(cls)
}

/** Reads `[...]` starting at `start`; undefined when there is no closing `]`. */
function readSet(pattern: string, start: number): { ranges: Ranges; end: number } | undefined {
  let p = start + 1
  const negate = pattern[p] === '^'
  if (negate) p++
  // As in Lua, the first character of a set is never its end, so `[]]` is a set of ']'.
  let close = p
  do {
    if (close >= pattern.length) return undefined
    close += ESCAPES.has(pattern[close]!) ? 2 : 1
  } while (close < pattern.length ? pattern[close] !== ']' : true)
  const ranges: Ranges = []
  while (p < close) {
    const c = pattern[p]!
    if (ESCAPES.has(c)) {
      ranges.push(...classOrChar(pattern[p + 1]!))
      p += 2
    } else if (pattern[p + 1] === '-' && p + 2 < close) {
      const lo = c.charCodeAt(0)
      const hi = pattern.charCodeAt(p + 2)
      if (lo <= hi) ranges.push([lo, hi])
      p += 3
    } else {
      ranges.push([c.charCodeAt(0), c.charCodeAt(0)])
      p++
    }
  }
  return { ranges: negate ? complement(ranges) : normalize(ranges), end: close + 1 }
}

function normalize(ranges: Ranges): Ranges {
  const sorted = [...ranges].sort((a, b) => a[0] - b[0])
  const out: Ranges = []
  for (const [lo, hi] of sorted) {
    const last = out[out.length - 1]
    if (last !== undefined && lo <= last[1] + 1) last[1] = Math.max(last[1], hi)
    else out.push([lo, hi])
  }
  return out
}

function complement(ranges: Ranges): Ranges {
  const out: Ranges = []
  let from = 0
  for (const [lo, hi] of normalize(ranges)) {
    if (lo > from) out.push([from, lo - 1])
    from = hi + 1
  }
  if (from <= MAX_UNIT) out.push([from, MAX_UNIT])
  return out
}

function emitSet(ranges: Ranges): string {
  const [only, ...rest] = ranges
  if (only !== undefined && rest.length === 0 && only[0] === only[1]) {
    return emitChar(String.fromCharCode(only[0]))
  }
  return `[${ranges.map(([lo, hi]) => (lo === hi ? unit(lo) : `${unit(lo)}-${unit(hi)}`)).join('')}]`
}

function emitChar(c: string): string {
  return /^[A-Za-z0-9/_]$/.test(c) ? c : unit(c.charCodeAt(0))
}

function unit(code: number): string {
  return `\\u${code.toString(16).padStart(4, '0')}`
}
