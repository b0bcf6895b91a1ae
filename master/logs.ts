/**
 * @module The master's side of logs: every node's client ships its instances' lines here
 * (lib/protocol/log-batch.ts), and `bareku logs` reads them back.
 *
 *   logs ROUTER <-DEALER- clients: batch -> drop lines already here -> append to
 *       $BAREKU_HOME/master/logs/APP.log (one JSON LogLine a line; at MAX_BYTES it becomes
 *       APP.log.1, replacing the previous one) -> fsync -> offsets.json -> ack -> XPUB "logs.APP"
 *   control "logs {app, n, type?}" -> the app's last n lines (APP.log, then APP.log.1)
 *
 * Nothing is lost or written twice across a master crash: a batch is acked only once its lines
 * are on disk and offsets.json (per node/instance/file: the end offset the master has) says so;
 * a client resends whatever was not acked, and lines below the known end are dropped. Should the
 * master die between the append and the offsets, the offsets are caught up at start from the
 * lines themselves (each carries its file and end offset): offsets.json also records each
 * APP.log's inode and size when it was saved, so only what came after is read (all of APP.log
 * and APP.log.1 when offsets.json is missing or unreadable).
 */
import { readdirSync, mkdirSync, readFileSync } from 'node:fs'
import { open, rename, stat, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import type { Router } from 'zeromq'
import { AppError } from '../lib/errors.js'
import { writeFileAtomic } from '../lib/fs-atomic.js'
import type { Logger } from '../lib/log.js'
import {
  encodeLive,
  encodeLogAck,
  fileKey,
  parseLogBatch,
  sourceKey,
  type LogAck,
  type LogBatch,
  type LogLine,
} from '../lib/protocol/log-batch.js'
import type { MasterSettings } from './config.js'
import { appName, fields, int, isObject, PROCESS_TYPE, str, type State } from './state.js'

/** The most lines `logs` answers at once. */
export const MAX_TAIL = 10_000
/** Files remembered per node/instance (a log and its .1, and a few before them). */
const FILES_PER_SOURCE = 8
const CHUNK = 64 * 1024

interface Mark {
  /** The offset up to which the master has the file's lines. */
  end: number
  /** When it last moved (ms): the oldest marks of a source are forgotten first. */
  at: number
}

type Offsets = Record<string, Record<string, Mark>>

/** Where the master keeps app logs. */
export const logDir = (home: string): string => join(home, 'master', 'logs')

/** Lines of a file from its end backwards, complete lines only (a line being written is not). */
async function* linesBackward(path: string): AsyncGenerator<string> {
  let fh: FileHandle
  try {
    fh = await open(path, 'r')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
    throw err
  }
  try {
    let pos = (await fh.stat()).size
    // The bytes read so far before their first "\n": a line whose start is further back.
    let head = Buffer.alloc(0)
    // Whether `head` is followed by a "\n" (the file's last line may still be being written).
    let complete = false
    while (pos > 0) {
      const len = Math.min(CHUNK, pos)
      pos -= len
      const chunk = Buffer.alloc(len)
      await fh.read(chunk, 0, len, pos)
      const data = Buffer.concat([chunk, head])
      let end = data.length
      while (end > 0) {
        const nl = data.lastIndexOf(10, end - 1)
        if (nl === -1) break
        if (complete) yield data.toString('utf8', nl + 1, end)
        complete = true
        end = nl
      }
      head = data.subarray(0, end)
    }
    if (complete) yield head.toString('utf8')
  } finally {
    await fh.close()
  }
}

function parseStored(text: string): LogLine | undefined {
  try {
    const v = JSON.parse(text) as unknown
    if (!isObject(v)) return undefined
    const l = v as unknown as LogLine
    if (typeof l.line !== 'string' || typeof l.instance !== 'string') return undefined
    if (typeof l.end !== 'number' || typeof l.inode !== 'number' || typeof l.born !== 'number') {
      return undefined
    }
    return l
  } catch {
    return undefined
  }
}

/** The app's last `n` lines (of `type` only, when given), oldest first. */
export async function tailLogs(
  dir: string,
  app: string,
  n: number,
  type?: string,
): Promise<LogLine[]> {
  const out: LogLine[] = []
  for (const file of [`${app}.log`, `${app}.log.1`]) {
    for await (const text of linesBackward(join(dir, file))) {
      if (out.length >= n) break
      const l = parseStored(text)
      if (l && (type === undefined || l.type === type)) out.push(l)
    }
  }
  return out.reverse()
}

/** The `logs` control command: checks its args, then answers the app's last lines. */
export async function logsCommand(
  args: Record<string, unknown>,
  state: State,
  settings: Pick<MasterSettings, 'home'>,
): Promise<LogLine[]> {
  const f = fields(args, 'args', ['app', 'n', 'type'], ['app'])
  const app = appName(f.app, 'args.app')
  if (!Object.hasOwn(state.apps, app)) {
    throw new AppError(
      'E_APP',
      `no app named "${app}"; create it with "bareku apps:create ${app}" (see "bareku apps")`,
    )
  }
  const n = f.n === undefined ? 100 : int(f.n, 'args.n', 1, MAX_TAIL)
  const type =
    f.type === undefined
      ? undefined
      : str(f.type, 'args.type', PROCESS_TYPE, 'a process type such as "web"')
  return tailLogs(logDir(settings.home), app, n, type)
}

/** The per-app log files and the offsets that make resends harmless. */
export interface LogStore {
  /** Appends the batch's new lines; resolves with them and the ack once they are durable. */
  accept(batch: LogBatch): Promise<{ lines: LogLine[]; ack: LogAck }>
}

/** Each APP.log as the offsets last saved it: lines past `size` of that inode are newer. */
type Saved = Record<string, { inode: number; size: number }>

function loadOffsets(file: string, log: Logger): { sources: Offsets; logs: Saved } | undefined {
  let v: unknown
  try {
    v = JSON.parse(readFileSync(file, 'utf8'))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      log.warn({ file, err: (err as Error).message }, 'log offsets unreadable, rebuilt from logs')
    }
    return undefined
  }
  if (!isObject(v) || !isObject(v.sources) || !isObject(v.logs)) return undefined
  const sources: Offsets = {}
  for (const [src, files] of Object.entries(v.sources)) {
    if (!isObject(files)) continue
    const marks: Record<string, Mark> = {}
    for (const [key, m] of Object.entries(files)) {
      const mark = m as Partial<Mark> | null
      if (typeof mark?.end === 'number' && typeof mark.at === 'number') {
        marks[key] = { end: mark.end, at: mark.at }
      }
    }
    sources[src] = marks
  }
  const logs: Saved = {}
  for (const [name, x] of Object.entries(v.logs)) {
    const m = x as { inode?: unknown; size?: unknown } | null
    if (typeof m?.inode === 'number' && typeof m.size === 'number') {
      logs[name] = { inode: m.inode, size: m.size }
    }
  }
  return { sources, logs }
}

/** The complete lines of `path` from byte `from` on. */
async function linesFrom(path: string, from: number): Promise<string[]> {
  const fh = await open(path, 'r')
  try {
    const size = (await fh.stat()).size
    if (size <= from) return []
    const buf = Buffer.alloc(size - from)
    const { bytesRead } = await fh.read(buf, 0, buf.length, from)
    return buf.toString('utf8', 0, bytesRead).split('\n').slice(0, -1)
  } finally {
    await fh.close()
  }
}

/**
 * Moves `offsets` up to the lines in `dir` they do not cover yet: those appended after the
 * offsets were last saved (a crash between an append and its save), or every line when there
 * are no offsets to trust.
 */
async function catchUp(dir: string, offsets: Offsets, saved: Saved | undefined): Promise<number> {
  let moved = 0
  const now = Date.now()
  for (const name of readdirSync(dir).sort()) {
    if (!/\.log(\.1)?$/.test(name) || (saved !== undefined && name.endsWith('.1'))) continue
    const path = join(dir, name)
    const st = await stat(path)
    const mark = saved?.[name]
    const from = mark && mark.inode === st.ino && mark.size <= st.size ? mark.size : 0
    for (const text of await linesFrom(path, from)) {
      const l = parseStored(text)
      if (!l) continue
      const files = (offsets[sourceKey(l)] ??= {})
      const key = fileKey(l)
      if ((files[key]?.end ?? 0) < l.end) {
        files[key] = { end: l.end, at: now }
        moved++
      }
    }
  }
  return moved
}

/** Opens (creating) the store in `dir`; `maxBytes` bounds each APP.log. */
export async function openLogStore(dir: string, maxBytes: number, log: Logger): Promise<LogStore> {
  mkdirSync(dir, { recursive: true })
  const offsetsFile = join(dir, 'offsets.json')
  const loaded = loadOffsets(offsetsFile, log)
  const offsets = loaded?.sources ?? {}
  const logs: Saved = loaded?.logs ?? {}
  const moved = await catchUp(dir, offsets, loaded?.logs)
  if (moved > 0) log.info({ files: moved }, 'log offsets caught up from the logs')

  const saveOffsets = () =>
    writeFileAtomic(offsetsFile, `${JSON.stringify({ version: 1, sources: offsets, logs })}\n`)

  /** Appends `text` (whole lines) to APP.log, rotating first when it would pass maxBytes. */
  async function append(app: string, text: Buffer): Promise<void> {
    const name = `${app}.log`
    const file = join(dir, name)
    let size = 0
    try {
      size = (await stat(file)).size
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
    if (size > 0 && size + text.length > maxBytes) {
      await rename(file, `${file}.1`)
      log.info({ file, bytes: size }, 'app log rotated')
      size = 0
    }
    const fh = await open(file, 'a+', 0o640)
    try {
      // A crash mid-append leaves half a line: start on a line of our own.
      const last = Buffer.alloc(1)
      if (size > 0) await fh.read(last, 0, 1, size - 1)
      await fh.write(size > 0 && last[0] !== 10 ? Buffer.concat([Buffer.from('\n'), text]) : text)
      await fh.sync()
      const st = await fh.stat()
      logs[name] = { inode: st.ino, size: st.size }
    } finally {
      await fh.close()
    }
  }

  return {
    async accept(batch) {
      const src = sourceKey(batch)
      const key = fileKey(batch)
      const files = (offsets[src] ??= {})
      const have = files[key]?.end ?? 0
      const time = new Date(batch.time).toISOString()
      const lines: LogLine[] = []
      batch.lines.forEach((l, i) => {
        if (l.at < have) return
        lines.push({
          time,
          app: batch.app,
          type: batch.type,
          instance: batch.instance,
          release: batch.release,
          node: batch.node,
          line: l.text,
          inode: batch.inode,
          born: batch.born,
          end: batch.lines[i + 1]?.at ?? batch.end,
        })
      })
      if (lines.length > 0) {
        await append(batch.app, Buffer.from(lines.map((l) => `${JSON.stringify(l)}\n`).join('')))
      }
      const end = Math.max(have, batch.end)
      if (end !== have) {
        files[key] = { end, at: Date.now() }
        const keys = Object.keys(files)
        if (keys.length > FILES_PER_SOURCE) {
          keys.sort((a, b) => files[b]!.at - files[a]!.at)
          for (const old of keys.slice(FILES_PER_SOURCE)) delete files[old]
        }
        await saveOffsets()
      }
      const { node, instance, inode, born } = batch
      return { lines, ack: { node, instance, inode, born, end } }
    },
  }
}

/**
 * Serves the logs ROUTER until it is closed: each batch is stored, acked, and its new lines
 * published through `publish` (the master's XPUB queue). A bad batch is logged and dropped; its
 * client resends it after its ack timeout, so a failing disk costs retries, not lines.
 */
export async function serveLogs(
  sock: Router,
  store: LogStore,
  publish: (frames: Buffer[]) => void,
  log: Logger,
): Promise<void> {
  for await (const frames of sock) {
    // A DEALER sends [body]; a REQ-style caller adds an empty delimiter: the body is last.
    const head = frames.slice(0, -1)
    let batch: LogBatch
    try {
      batch = parseLogBatch(frames[frames.length - 1] ?? Buffer.alloc(0))
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'log batch dropped')
      continue
    }
    let stored: { lines: LogLine[]; ack: LogAck }
    try {
      stored = await store.accept(batch)
    } catch (err) {
      log.error(
        { app: batch.app, instance: batch.instance, err: (err as Error).message },
        'log batch not stored',
      )
      continue
    }
    await sock.send([...head, encodeLogAck(stored.ack)])
    if (stored.lines.length > 0) publish(encodeLive(batch.app, stored.lines))
    log.trace({ instance: batch.instance, lines: stored.lines.length }, 'log batch')
  }
}
