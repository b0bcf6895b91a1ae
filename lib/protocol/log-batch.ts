/**
 * @module Log shipping: each node's client tails its instances' log files and sends new complete
 * lines to the master in batches (client DEALER -> master ROUTER on BAREKU_MASTER_LOGS); the
 * master appends them to its per-app history and acks; it also publishes them for `logs -f`.
 *
 *   batch   = frame JSON { "node": NODE, "instance": INSTANCE, "app": APP, "type": TYPE,
 *                          "release": INT | null,      ; the instance's release when read
 *                          "inode": INT, "born": INT,  ; the file: inode and birth time (ms)
 *                          "start": INT, "end": INT,   ; byte range of the file it covers
 *                          "time": INT,                ; ms since the epoch, when it was read
 *                          "lines": [ { "at": INT, "text": STRING }, ... ] }   ; at: line start
 *   ack     = frame JSON { "node": NODE, "instance": INSTANCE, "inode": INT, "born": INT,
 *                          "end": INT }                ; the master has every line below end
 *   live    = frame "logs." APP "\0"  frame JSON [ LogLine, ... ]   ; on the master's XPUB
 *   LogLine = { "time": ISO8601, "app": APP, "type": TYPE, "instance": INSTANCE,
 *               "release": INT | null, "node": NODE, "line": STRING,
 *               "inode": INT, "born": INT, "end": INT }   ; where it came from (for dedup)
 *   INSTANCE = APP "." TYPE "." INT [ "-v" INT ]   ; the worker's slot name: "shop.worker.1",
 *                                                  ; "shop.web.1-v3" (web and handlers of v3)
 *   APP = [a-z][a-z0-9-]{0,29}   TYPE = [A-Za-z0-9_-]{1,40}   NODE = [A-Za-z0-9][A-Za-z0-9_.-]*
 *   INT = a non-negative safe integer
 *
 * A file is known by (inode, born), not by its name: the worker renames NAME.log to NAME.log.1
 * and starts a new NAME.log, and a process that keeps running goes on writing into the renamed
 * file, so both grow. The birth time tells a reused inode number from the file that had it.
 * Offsets make resending safe: a client resends from its last acked `end`, and the master drops
 * every line whose `at` is below the end it already has for that (node, instance, file).
 * A line is the bytes up to a "\n" (not included), or MAX_LINE bytes when no "\n" comes first.
 */
import { AppError } from '../errors.js'

/** Lines longer than this are cut into pieces of this many bytes. */
export const MAX_LINE = 64 * 1024
/** The most bytes of a file one batch covers. */
export const MAX_BATCH_BYTES = 256 * 1024
/** The most lines in one batch. */
export const MAX_BATCH_LINES = 1000

export interface LogBatch {
  node: string
  instance: string
  app: string
  type: string
  release: number | null
  inode: number
  born: number
  start: number
  end: number
  time: number
  lines: { at: number; text: string }[]
}

export interface LogAck {
  node: string
  instance: string
  inode: number
  born: number
  end: number
}

/** One log line as the master keeps, publishes and answers it. */
export interface LogLine {
  time: string
  app: string
  type: string
  instance: string
  release: number | null
  node: string
  line: string
  inode: number
  born: number
  end: number
}

export const APP = /^[a-z][a-z0-9-]{0,29}$/
const TYPE = /^[A-Za-z0-9_-]{1,40}$/
const NODE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$/
/** A worker slot name: APP.TYPE.N, or APP.TYPE.N-vR for instances named after their release. */
export const INSTANCE =
  /^([a-z][a-z0-9-]{0,29})\.([A-Za-z0-9_-]{1,40})\.([0-9]{1,9})(?:-v([0-9]{1,9}))?$/

/** Topics on the master's XPUB that carry log lines start with this. */
export const LOG_TOPIC_PREFIX = 'logs.'

/** The XPUB topic of an app's live log lines. */
export function logTopic(app: string): string {
  if (!APP.test(app)) {
    throw new AppError('E_LOGS', `"${app}" is not an app name (a-z, 0-9 and "-", e.g. shop)`)
  }
  return `${LOG_TOPIC_PREFIX}${app}`
}

/** True for a topic (without its "\0") that carries log lines, not a host list. */
export function isLogTopic(topic: string): boolean {
  return topic.startsWith(LOG_TOPIC_PREFIX)
}

/** The key of one file of one source: "NODE/INSTANCE" and "INODE.BORN". */
export const sourceKey = (x: { node: string; instance: string }): string =>
  `${x.node}/${x.instance}`
export const fileKey = (x: { inode: number; born: number }): string => `${x.inode}.${x.born}`

/** Splits an instance (slot) name; undefined when it is not one. */
export function parseInstance(
  name: string,
): { app: string; type: string; dyno: string; release?: number } | undefined {
  const m = INSTANCE.exec(name)
  if (!m) return undefined
  const out = { app: m[1]!, type: m[2]!, dyno: `${m[2]!}.${m[3]!}` }
  return m[4] === undefined ? out : { ...out, release: Number(m[4]) }
}

function fail(what: string): never {
  throw new AppError(
    'E_LOGS',
    `log message refused: ${what}; are the client and the master the same Bareku version?`,
  )
}

function object(frame: Buffer, what: string): Record<string, unknown> {
  let v: unknown
  try {
    v = JSON.parse(frame.toString('utf8'))
  } catch {
    fail(`the ${what} is not JSON`)
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(`the ${what} is not an object`)
  return v as Record<string, unknown>
}

function int(v: unknown, field: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    fail(`${field} must be a non-negative integer`)
  }
  return v
}

function str(v: unknown, field: string, re: RegExp): string {
  if (typeof v !== 'string' || !re.test(v)) fail(`${field} must match ${String(re)}`)
  return v
}

function source(r: Record<string, unknown>) {
  return {
    node: str(r.node, 'node', NODE),
    instance: str(r.instance, 'instance', INSTANCE),
    inode: int(r.inode, 'inode'),
    born: int(r.born, 'born'),
  }
}

export function encodeLogBatch(batch: LogBatch): Buffer {
  return Buffer.from(JSON.stringify(batch))
}

/** Decodes and checks one batch frame: every field, and lines in order inside [start, end). */
export function parseLogBatch(frame: Buffer): LogBatch {
  const r = object(frame, 'batch')
  const src = source(r)
  const names = parseInstance(src.instance)!
  const app = str(r.app, 'app', APP)
  const type = str(r.type, 'type', TYPE)
  if (app !== names.app || type !== names.type) {
    fail(`instance ${src.instance} is not of app ${app} and type ${type}`)
  }
  const release = r.release === null ? null : int(r.release, 'release')
  const start = int(r.start, 'start')
  const end = int(r.end, 'end')
  if (end < start) fail(`end ${end} is before start ${start}`)
  if (!Array.isArray(r.lines)) fail('lines must be a list')
  if (r.lines.length > MAX_BATCH_LINES) fail(`more than ${MAX_BATCH_LINES} lines`)
  let next = start
  const lines = r.lines.map((l: unknown, i) => {
    const x = l as { at?: unknown; text?: unknown } | null
    if (typeof x !== 'object' || x === null) fail(`lines[${i}] is not an object`)
    const at = int(x.at, `lines[${i}].at`)
    if (at < next || at >= end) fail(`lines[${i}].at ${at} is outside [${next}, ${end})`)
    if (typeof x.text !== 'string') fail(`lines[${i}].text is not a string`)
    next = at + 1
    return { at, text: x.text }
  })
  return { ...src, app, type, release, start, end, time: int(r.time, 'time'), lines }
}

export function encodeLogAck(ack: LogAck): Buffer {
  return Buffer.from(JSON.stringify(ack))
}

export function parseLogAck(frame: Buffer): LogAck {
  const r = object(frame, 'ack')
  return { ...source(r), end: int(r.end, 'end') }
}

/** The live message for an app's accepted lines. */
export function encodeLive(app: string, lines: LogLine[]): [Buffer, Buffer] {
  return [Buffer.from(`${logTopic(app)}\0`), Buffer.from(JSON.stringify(lines))]
}

/** Decodes a live message; throws E_LOGS when it is not one. */
export function parseLive(frames: Buffer[]): { app: string; lines: LogLine[] } {
  if (frames.length !== 2) fail(`a live message is 2 frames, got ${frames.length}`)
  const topic = frames[0]!.toString('utf8')
  const app = topic.endsWith('\0') ? topic.slice(LOG_TOPIC_PREFIX.length, -1) : ''
  if (!topic.startsWith(LOG_TOPIC_PREFIX) || !APP.test(app)) {
    fail(`bad topic ${JSON.stringify(topic.slice(0, 60))}`)
  }
  let lines: unknown
  try {
    lines = JSON.parse(frames[1]!.toString('utf8'))
  } catch {
    fail('the lines frame is not JSON')
  }
  if (!Array.isArray(lines)) fail('the lines frame is not a list')
  return { app, lines: lines as LogLine[] }
}

/**
 * Splits `buf` (the bytes of a file from offset `start`) into complete lines. Returns them with
 * their offsets, and `end`: the offset after the last one (where the next read starts). Bytes
 * after the last "\n" wait for the rest of their line, unless they already are MAX_LINE long.
 */
export function splitLines(
  buf: Buffer,
  start: number,
  maxLines = MAX_BATCH_LINES,
): { lines: { at: number; text: string }[]; end: number } {
  const lines: { at: number; text: string }[] = []
  let pos = 0
  while (pos < buf.length && lines.length < maxLines) {
    const nl = buf.indexOf(10, pos)
    const cut = nl === -1 || nl - pos > MAX_LINE
    if (cut && buf.length - pos < MAX_LINE) break
    const stop = cut ? pos + MAX_LINE : nl
    lines.push({ at: start + pos, text: buf.toString('utf8', pos, stop) })
    pos = cut ? stop : nl + 1
  }
  return { lines, end: start + pos }
}

/** Heroku's line format: `2026-11-23T19:00:00.000Z app[web.1]: text`. */
export function formatLine(l: Pick<LogLine, 'time' | 'instance' | 'line'>): string {
  return `${l.time} app[${parseInstance(l.instance)?.dyno ?? l.instance}]: ${l.line}`
}

/** What `logs --json` prints of a line: its tags, without the dedup fields. */
export function publicLine(l: LogLine) {
  const { time, app, type, instance, release, node, line } = l
  return { time, app, type, instance, release, node, line }
}
