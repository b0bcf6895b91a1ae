/**
 * @module Static files for Mongrel2 Dir routes: maps a request path under the route's prefix into
 * the target's `base` (relative to the server's chroot, or absolute), and answers GET and HEAD with the file,
 * streamed through uWS with backpressure.
 *
 *   /static/css/a.css  (route '/static/', base 'public/')  ->  CHROOT/public/css/a.css
 *   /static/docs/      ->  CHROOT/public/docs/INDEX_FILE
 *   /static/docs       ->  301 Location: /static/docs/   (when docs is a directory)
 *   /favicon.ico       (route '/favicon.ico', no trailing slash)  ->  CHROOT/public/favicon.ico
 *
 * ETag is strong, `"<mtime in ns, hex>-<size, hex>"`: built from size and mtime like Mongrel2's
 * `mtime-size`, strong so that If-Range and If-Match can use it (as nginx does). Conditionals
 * follow RFC 9110's order: If-Match, else If-Unmodified-Since (412); If-None-Match, else
 * If-Modified-Since (304); then If-Range and Range for GET (206 / 416).
 *
 * Deliberate differences from Mongrel2's src/dir.c:
 * - ETag is quoted (Mongrel2 sends it bare), If-None-Match takes a list with weak comparison and
 *   If-Match compares entity tags (Mongrel2 compares one bare value and only checks If-Match's
 *   shape).
 * - Range, If-Range, Accept-Ranges and Cache-Control are new. `cacheTtl` becomes
 *   `Cache-Control: max-age`; Mongrel2 used it as the lifetime of its stat cache. There is no
 *   stat cache here: every request stats the file, and the base is resolved every request, so a
 *   base that is a symlink swapped on deploy takes effect at once.
 * - Any `..` segment is refused with 404 even when it would stay inside the base (Mongrel2
 *   realpath-normalises it); browsers never send one. Containment is checked on a path-segment
 *   boundary (Mongrel2 compared a plain string prefix, so base `pub` also let `pub2` through).
 * - Only regular files are served; a FIFO, socket or device under the base is a 404.
 * - The directory redirect's Location is the path only (`/static/docs/`), not `//host/uri/`,
 *   with leading slashes collapsed so it cannot become a protocol-relative URL to another site;
 *   the query string is not kept.
 * - The content type comes from the request's file name (Mongrel2 used the path after
 *   symlinks), longest suffix first, from the route table's mimetypes over a small built-in
 *   table, then `defaultCtype`. Text types of the built-in table carry `charset=utf-8`.
 */
import { constants } from 'node:fs'
import { open, realpath, type FileHandle } from 'node:fs/promises'
import { basename, isAbsolute, join, resolve, sep } from 'node:path'
import type { DirTarget } from '../lib/config/routes.js'
import type { Logger } from '../lib/log.js'
import type { HttpResponse } from './uws.js'

/** What the frontend read from uWS's request before calling `serve`. */
export interface StaticRequest {
  /** Request method, any case. */
  method: string
  /** The raw request path as received (still percent-encoded), without the query. */
  path: string
  /** The matched route's prefix, e.g. '/static/'. */
  routePrefix: string
  /** Header (name, value) pairs, names lowercase. */
  headers: [string, string][]
}

/** One Dir target, ready to answer requests routed to it. */
export interface DirRoute {
  /**
   * Answers one request. Call it synchronously from the uWS request callback: it attaches
   * `res.onAborted` before any file I/O and never touches `res` after an abort.
   */
  serve(res: HttpResponse, req: StaticRequest): void
}

export interface DirRouteOptions {
  /** The server's chroot; `base` is relative to it ('' means the working directory). */
  chroot: string
  /** The route table's mimetypes, '.ext' -> type (a key without the dot is accepted too). */
  mimetypes: Record<string, string>
  log: Logger
}

/** Bytes read from the file per write; also the size under which a file goes out in one write. */
const CHUNK = 64 * 1024

const BUILTIN_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.htm': 'text/html; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.json': 'application/json',
  '.map': 'application/json',
  '.txt': 'text/plain; charset=utf-8',
  '.xml': 'application/xml',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.gif': 'image/gif',
  '.webp': 'image/webp',
  '.ico': 'image/x-icon',
  '.woff': 'font/woff',
  '.woff2': 'font/woff2',
  '.wasm': 'application/wasm',
  '.pdf': 'application/pdf',
  '.mp4': 'video/mp4',
  '.webm': 'video/webm',
}

const STATUS_TEXT: Record<number, string> = {
  200: 'OK',
  206: 'Partial Content',
  301: 'Moved Permanently',
  304: 'Not Modified',
  404: 'Not Found',
  405: 'Method Not Allowed',
  412: 'Precondition Failed',
  416: 'Range Not Satisfiable',
  500: 'Internal Server Error',
}

// Errors that mean "no such file for you"; all answer 404 so existence is never revealed.
const NOT_FOUND_CODES = new Set(['ENOENT', 'ENOTDIR', 'ELOOP', 'EACCES', 'EPERM', 'ENAMETOOLONG'])

/** Creates the server side of one Dir target. */
export function createDirRoute(target: DirTarget, opts: DirRouteOptions): DirRoute {
  const log = opts.log.child({ dir: target.base })
  // An absolute base is a static site's slug unpacked by the frontend (static-slugs.ts).
  const baseDir = isAbsolute(target.base)
    ? target.base
    : resolve(join(opts.chroot || '.', target.base))
  const types = mimeTable(opts.mimetypes)

  function serve(res: HttpResponse, req: StaticRequest): void {
    const x = new Exchange(res, req.method.toUpperCase())
    if (x.method !== 'GET' && x.method !== 'HEAD') {
      return x.plain(405, [['Allow', 'GET, HEAD']])
    }
    const rel = relativePath(req.path, req.routePrefix)
    if (rel === undefined) {
      log.debug({ path: req.path }, 'path refused')
      return x.plain(404)
    }
    res.onAborted(() => x.abort())
    respond(x, req, rel).catch((err: unknown) => {
      log.error({ err: String(err), path: req.path }, 'static file failed')
      if (!x.headSent) x.plain(500)
      else x.close()
    })
  }

  async function respond(x: Exchange, req: StaticRequest, rel: string): Promise<void> {
    const wantsDir = rel === '' || rel.endsWith('/')
    const file = await openInBase(rel, wantsDir)
    if (x.aborted) {
      if (typeof file === 'object') await file.fh.close()
      return
    }
    if (file === 'missing') return x.plain(404)
    if (file === 'directory') {
      // Collapse leading slashes: '//evil.example/' would be a protocol-relative redirect.
      return x.plain(301, [['Location', `/${req.path.replace(/^\/+/, '')}/`]], false)
    }
    try {
      await send(x, req, file)
    } finally {
      await file.fh.close()
    }
  }

  type Opened = { fh: FileHandle; size: number; mtimeNs: bigint; name: string }

  async function openInBase(
    rel: string,
    wantsDir: boolean,
  ): Promise<Opened | 'missing' | 'directory'> {
    let base: string
    try {
      base = await realpath(baseDir)
    } catch (err) {
      if (!isNotFound(err)) throw err
      log.warn({ base: baseDir }, 'dir base does not exist')
      return 'missing'
    }
    let fh: FileHandle | undefined
    try {
      const real = await realpath(join(base, rel, wantsDir ? target.indexFile : ''))
      if (!(base === sep || real === base || real.startsWith(base + sep))) {
        log.warn({ path: rel }, 'path outside the dir base refused')
        return 'missing'
      }
      // O_NONBLOCK: opening a FIFO must not wait for a writer. O_NOFOLLOW: a symlink swapped in
      // after the check above fails instead of being followed.
      fh = await open(real, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW)
      const st = await fh.stat({ bigint: true })
      if (st.isFile()) {
        const name = basename(wantsDir ? target.indexFile : rel)
        const opened = { fh, size: Number(st.size), mtimeNs: st.mtimeNs, name }
        fh = undefined
        return opened
      }
      return st.isDirectory() && !wantsDir ? 'directory' : 'missing'
    } catch (err) {
      if (isNotFound(err)) return 'missing'
      throw err
    } finally {
      await fh?.close()
    }
  }

  async function send(x: Exchange, req: StaticRequest, file: Opened): Promise<void> {
    const { size } = file
    const etag = `"${file.mtimeNs.toString(16)}-${size.toString(16)}"`
    const mtimeSec = Number(file.mtimeNs / 1_000_000_000n)
    const lastModified = new Date(mtimeSec * 1000).toUTCString()
    const get = (name: string): string | undefined => header(req.headers, name)

    const validators: [string, string][] = [
      ['ETag', etag],
      ['Last-Modified', lastModified],
    ]
    if (target.cacheTtl > 0) validators.push(['Cache-Control', `max-age=${target.cacheTtl}`])

    const ifMatch = get('if-match')
    const ifUnmodified = httpDate(get('if-unmodified-since'))
    if (
      ifMatch !== undefined
        ? !etagMatches(ifMatch, etag, true)
        : ifUnmodified !== undefined && mtimeSec > ifUnmodified
    ) {
      return x.plain(412)
    }
    const ifNoneMatch = get('if-none-match')
    const ifModified = httpDate(get('if-modified-since'))
    if (
      ifNoneMatch !== undefined
        ? etagMatches(ifNoneMatch, etag, false)
        : ifModified !== undefined && ifModified <= Date.now() / 1000 && mtimeSec <= ifModified
    ) {
      return x.write((res) => {
        res.writeStatus('304 Not Modified')
        for (const [k, v] of validators) res.writeHeader(k, v)
        res.endWithoutBody()
      })
    }

    const rangeHeader = x.method === 'GET' ? get('range') : undefined
    const range =
      rangeHeader !== undefined && ifRangeHolds(get('if-range'), etag, mtimeSec)
        ? parseRange(rangeHeader, size)
        : undefined
    if (range === 'unsatisfiable') {
      return x.plain(416, [
        ['Content-Range', `bytes */${size}`],
        ['Accept-Ranges', 'bytes'],
      ])
    }

    const start = range?.start ?? 0
    const length = range ? range.end - range.start + 1 : size
    const head = (res: HttpResponse): void => {
      res.writeStatus(range ? '206 Partial Content' : '200 OK')
      res.writeHeader('Content-Type', contentType(file.name))
      res.writeHeader('Accept-Ranges', 'bytes')
      if (range) res.writeHeader('Content-Range', `bytes ${range.start}-${range.end}/${size}`)
      for (const [k, v] of validators) res.writeHeader(k, v)
    }
    if (x.method === 'HEAD' || length === 0) {
      return x.write((res) => {
        head(res)
        if (x.method === 'HEAD') endHead(res, length)
        else res.end()
      })
    }
    await stream(x, file, start, length, head)
  }

  /** Sends `length` bytes from `start`, reading a chunk only once uWS has taken the last one. */
  async function stream(
    x: Exchange,
    file: Opened,
    start: number,
    length: number,
    head: (res: HttpResponse) => void,
  ): Promise<void> {
    let sent = 0
    while (sent < length && x.live) {
      const want = Math.min(CHUNK, length - sent)
      const buf = Buffer.allocUnsafe(want)
      const { bytesRead } = await file.fh.read(buf, 0, want, start + sent)
      if (!x.live) return
      if (bytesRead === 0) {
        // The file shrank while being sent: the promised length can no longer be met.
        log.warn({ file: file.name, sent, length }, 'file shrank while being sent, closing')
        return x.close()
      }
      const chunk = bytesRead === want ? buf : buf.subarray(0, bytesRead)
      const first = sent === 0
      sent += bytesRead
      if (!x.tryEnd(chunk, length, first ? head : undefined)) await x.drained()
    }
  }

  function contentType(name: string): string {
    const lower = name.toLowerCase()
    // From the first dot on: the longest suffix wins ('.tar.gz' before '.gz'), as in Mongrel2.
    for (let i = lower.indexOf('.'); i >= 0; i = lower.indexOf('.', i + 1)) {
      const type = types.get(lower.slice(i))
      if (type !== undefined) return type
    }
    return target.defaultCtype
  }

  return { serve }
}

/** One request's response: tracks abort and completion so `res` is never used after either. */
class Exchange {
  aborted = false
  done = false
  headSent = false
  private stall?: { chunk: Buffer; start: number; total: number }
  private wake?: () => void
  private writableHooked = false

  constructor(
    readonly res: HttpResponse,
    readonly method: string,
  ) {}

  get live(): boolean {
    return !this.aborted && !this.done
  }

  abort(): void {
    this.aborted = true
    this.wakeUp()
  }

  /** Writes a whole response under cork, unless the client has gone. */
  write(fn: (res: HttpResponse) => void): void {
    if (!this.live) return
    this.headSent = true
    this.done = true
    this.res.cork(() => fn(this.res))
  }

  /** A short text/plain answer (no body for HEAD, or when `body` is false). */
  plain(status: number, extra: [string, string][] = [], body = true): void {
    const text = STATUS_TEXT[status] ?? 'Error'
    this.write((res) => {
      res.writeStatus(`${status} ${text}`)
      for (const [k, v] of extra) res.writeHeader(k, v)
      if (!body) return void res.end()
      res.writeHeader('Content-Type', 'text/plain; charset=utf-8')
      if (this.method === 'HEAD') endHead(res, text.length + 1)
      else res.end(`${text}\n`)
    })
  }

  close(): void {
    if (!this.live) return
    this.done = true
    this.res.close()
  }

  /**
   * Offers one chunk of a `total`-byte body; `head` writes status and headers in the same cork.
   * False when uWS could not take all of it: await `drained()` before the next chunk.
   */
  tryEnd(chunk: Buffer, total: number, head?: (res: HttpResponse) => void): boolean {
    if (!this.live) return true
    let ok = true
    this.res.cork(() => {
      if (head) {
        head(this.res)
        this.headSent = true
      }
      const start = this.res.getWriteOffset()
      const [written, done] = this.res.tryEnd(chunk, total)
      if (done) this.done = true
      else if (!written) {
        this.stall = { chunk, start, total }
        ok = false
      }
    })
    if (!ok) this.hookWritable()
    return ok
  }

  /** Resolves once the stalled chunk is out, or the client has gone. */
  drained(): Promise<void> {
    if (!this.stall || !this.live) return Promise.resolve()
    return new Promise((resolve) => {
      this.wake = resolve
    })
  }

  private wakeUp(): void {
    const wake = this.wake
    this.wake = undefined
    wake?.()
  }

  private hookWritable(): void {
    if (this.writableHooked) return
    this.writableHooked = true
    this.res.onWritable((offset) => {
      const stall = this.stall
      if (!this.live || !stall) return true
      const rest = stall.chunk.subarray(offset - stall.start)
      const [written, done] = this.res.tryEnd(rest, stall.total)
      if (done) this.done = true
      else if (!written) {
        this.stall = { chunk: rest, start: offset, total: stall.total }
        return false
      }
      this.stall = undefined
      this.wakeUp()
      return true
    })
  }
}

/**
 * Ends a HEAD response announcing `length` bytes. uWS 20.30's `endWithoutBody(length)` leaves the
 * response pending (its offset never reaches `length`): the next request on the connection then
 * aborts it and closes the socket, and `Connection: close` is not honoured. Writing the header
 * ourselves and ending with no reported length completes the response.
 */
function endHead(res: HttpResponse, length: number): void {
  res.writeHeader('Content-Length', String(length))
  res.endWithoutBody()
}

/**
 * The decoded path below the route's prefix, or undefined when it must be refused: outside the
 * prefix, an escape, a NUL, a `..` segment, or bytes that are not UTF-8.
 */
function relativePath(rawPath: string, prefix: string): string | undefined {
  const cut = rawPath.search(/[?#]/)
  const path = cut < 0 ? rawPath : rawPath.slice(0, cut)
  if (!path.startsWith(prefix)) return undefined
  // A route naming one file ('/favicon.ico') serves that path under the base, as in Mongrel2.
  const rest = path === prefix && !prefix.endsWith('/') ? path : path.slice(prefix.length)
  const decoded = percentDecode(rest)
  if (decoded === undefined || decoded.includes('\0')) return undefined
  if (decoded.split('/').includes('..')) return undefined
  return decoded
}

const UTF8 = new TextDecoder('utf-8', { fatal: true })

/** %XX to bytes, then UTF-8; a '%' not followed by two hex digits stays as is (as in Mongrel2). */
function percentDecode(s: string): string | undefined {
  if (!s.includes('%')) return s
  const src = Buffer.from(s)
  const out = Buffer.alloc(src.length)
  let n = 0
  for (let i = 0; i < src.length; i++) {
    const hex = src[i] === 0x25 ? src.toString('latin1', i + 1, i + 3) : ''
    if (/^[0-9a-fA-F]{2}$/.test(hex)) {
      out[n++] = parseInt(hex, 16)
      i += 2
    } else out[n++] = src[i]!
  }
  try {
    return UTF8.decode(out.subarray(0, n))
  } catch {
    return undefined
  }
}

function mimeTable(configured: Record<string, string>): Map<string, string> {
  const types = new Map(Object.entries(BUILTIN_TYPES))
  for (const [ext, type] of Object.entries(configured)) {
    const key = ext.toLowerCase()
    types.set(key.startsWith('.') ? key : `.${key}`, type)
  }
  return types
}

/** All values of one header, joined with ', ' as a repeated list header means. */
function header(headers: [string, string][], name: string): string | undefined {
  let out: string | undefined
  for (const [k, v] of headers) if (k === name) out = out === undefined ? v : `${out}, ${v}`
  return out
}

/** An HTTP-date in whole seconds since the epoch, or undefined when absent or unreadable. */
function httpDate(value: string | undefined): number | undefined {
  if (value === undefined) return undefined
  const ms = Date.parse(value)
  return Number.isNaN(ms) ? undefined : Math.floor(ms / 1000)
}

/**
 * Whether an If-Match / If-None-Match list names `etag`: '*' matches any existing file; strong
 * comparison (If-Match) never matches a weak tag, weak comparison ignores the W/ prefix.
 */
function etagMatches(list: string, etag: string, strong: boolean): boolean {
  if (list.trim() === '*') return true
  for (const m of list.matchAll(/(W\/)?("[^"]*")/g)) {
    if (m[2] === etag && !(strong && m[1] !== undefined)) return true
  }
  return false
}

/** If-Range: absent, the same strong ETag, or exactly the Last-Modified date. */
function ifRangeHolds(value: string | undefined, etag: string, mtimeSec: number): boolean {
  if (value === undefined) return true
  const v = value.trim()
  if (v.startsWith('"') || v.startsWith('W/')) return v === etag
  return httpDate(v) === mtimeSec
}

/**
 * One `bytes=` range clipped to the file. Undefined (send the whole file) for other units,
 * several ranges, or nonsense; 'unsatisfiable' when it starts past the end.
 */
function parseRange(
  value: string,
  size: number,
): { start: number; end: number } | 'unsatisfiable' | undefined {
  const m = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(value)
  const first = m?.[1] ?? ''
  const last = m?.[2] ?? ''
  if (first === '' && last === '') return undefined
  if (first === '') {
    const n = Number(last)
    return n === 0 || size === 0 ? 'unsatisfiable' : { start: Math.max(0, size - n), end: size - 1 }
  }
  const start = Number(first)
  const end = last === '' ? size - 1 : Number(last)
  if (end < start && last !== '') return undefined
  if (start >= size) return 'unsatisfiable'
  return { start, end: Math.min(end, size - 1) }
}

function isNotFound(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code
  return code !== undefined && NOT_FOUND_CODES.has(code)
}
