/**
 * @module Log shipping from a node: every instance log the worker writes
 * ($BAREKU_HOME/log/APP.TYPE.N.log, and its rotated .log.1) is tailed and its new complete lines
 * are sent to the master in batches (lib/protocol/log-batch.ts) on a DEALER.
 *
 *   poll (POLL_MS) or an ack -> scan log/: files known by (inode, birth time), not by name, so a
 *       rename to .log.1 changes nothing and a process still writing into .1 is still followed
 *     -> per file, one batch in flight at most (MAX_IN_FLIGHT in all): read from `sent`
 *     <- ack {file, end} -> `acked` = end -> $BAREKU_HOME/run/log-offsets.json (atomic)
 *
 * Nothing is lost: a batch not acked within ACK_TIMEOUT_MS, or sent before a reconnect (a new
 * handshake), is read and sent again from the last acked offset, and after a restart the client
 * starts from the offsets file; the master drops the lines it already has. Nothing blocks the
 * node: the DEALER sends only to a connected master (immediate, sendTimeout 0, linger 0), and
 * a file is read only when its batch can go. A deleted file is read to its end through the
 * descriptor held open, then forgotten. Each batch is tagged with the app, type, instance and
 * node, the instance's release from worker.json, and the time the lines were read.
 */
import { mkdirSync, readFileSync, statSync } from 'node:fs'
import { open, readdir, stat, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { Dealer } from 'zeromq'
import { writeFileAtomic } from '../lib/fs-atomic.js'
import type { Logger } from '../lib/log.js'
import {
  encodeLogBatch,
  fileKey,
  MAX_BATCH_BYTES,
  parseInstance,
  parseLogAck,
  splitLines,
  type LogBatch,
} from '../lib/protocol/log-batch.js'

/** How often the log directory is looked at (an ack also triggers a look). */
const POLL_MS = 250
/** A batch not acked in this time is sent again. */
const ACK_TIMEOUT_MS = 5000
/** The most batches awaiting their ack, over all files. */
const MAX_IN_FLIGHT = 8
/** A file shipped to its end and unchanged this long has its descriptor closed until it grows. */
const IDLE_MS = 60_000

/** The worker's instance logs: INSTANCE.log and INSTANCE.log.1. */
const LOG_FILE = /^(.+)\.log(\.1)?$/

export interface LogShipperOptions {
  home: string
  node: string
  /** worker.json: where the instances' releases are read. */
  workerConfig: string
  pollMs?: number
  ackTimeoutMs?: number
}

export interface LogShipper {
  /** Ships to the master's logs endpoint from now on (undefined: the master has none). */
  connect(endpoint: string | undefined): void
  close(): Promise<void>
}

interface Tracked {
  key: string
  inode: number
  born: number
  instance: string
  app: string
  type: string
  /** The release in the instance's name, if it has one. */
  named: number | null
  path: string
  /** Open while the file may still grow; closed (undefined) when it has been idle. */
  fh?: FileHandle
  size: number
  changedAt: number
  /** The master has every line below this offset. */
  acked: number
  /** Read and sent up to here. */
  sent: number
  inflight?: { end: number; deadline: number }
  /** Still in the directory at the last scan. */
  present: boolean
}

const identity = (st: { ino: number; birthtimeMs: number }) => ({
  inode: st.ino,
  born: Math.floor(st.birthtimeMs),
})

function loadOffsets(file: string, log: Logger): Map<string, number> {
  try {
    const v = JSON.parse(readFileSync(file, 'utf8')) as { files?: Record<string, unknown> }
    const out = new Map<string, number>()
    for (const [key, entry] of Object.entries(v.files ?? {})) {
      const offset = (entry as { offset?: unknown } | null)?.offset
      if (typeof offset === 'number' && Number.isSafeInteger(offset) && offset >= 0) {
        out.set(key, offset)
      }
    }
    return out
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      log.warn({ file, err: (err as Error).message }, 'log offsets unreadable, shipping from 0')
    }
    return new Map()
  }
}

/** Starts tailing $home/log; nothing is sent until `connect` names the master's endpoint. */
export function startLogShipper(opts: LogShipperOptions, log: Logger): LogShipper {
  const logDir = join(opts.home, 'log')
  const runDir = join(opts.home, 'run')
  mkdirSync(runDir, { recursive: true })
  const offsetsFile = join(runDir, 'log-offsets.json')
  const saved = loadOffsets(offsetsFile, log)
  const ackTimeoutMs = opts.ackTimeoutMs ?? ACK_TIMEOUT_MS
  const files = new Map<string, Tracked>()
  const releases = new Map<string, number>()
  let configMtime = -1
  let endpoint: string | undefined
  let closed = false

  const dealer = new Dealer({
    linger: 0,
    sendTimeout: 0,
    immediate: true,
    sendHighWaterMark: MAX_IN_FLIGHT * 2,
  })

  /** A new connection loses what the old one carried: send again from the acked offsets. */
  function rewind(): void {
    for (const f of files.values()) {
      f.inflight = undefined
      f.sent = f.acked
    }
  }
  dealer.events.on('handshake', () => {
    rewind()
    kick()
  })

  // --- offsets file -------------------------------------------------------------------------

  let saving: Promise<void> | undefined
  let dirty = false
  function persistSoon(): void {
    dirty = true
    saving ??= (async () => {
      while (dirty) {
        dirty = false
        const out: Record<string, { instance: string; offset: number }> = {}
        for (const f of files.values()) out[f.key] = { instance: f.instance, offset: f.acked }
        try {
          await writeFileAtomic(offsetsFile, `${JSON.stringify({ version: 1, files: out })}\n`)
        } catch (err) {
          log.warn({ file: offsetsFile, err: (err as Error).message }, 'log offsets not saved')
        }
      }
    })().finally(() => {
      saving = undefined
    })
  }

  // --- the files ----------------------------------------------------------------------------

  function releaseOf(instance: string, named: number | null): number | null {
    if (named !== null) return named
    try {
      const mtime = statSync(opts.workerConfig).mtimeMs
      if (mtime !== configMtime) {
        configMtime = mtime
        const v = JSON.parse(readFileSync(opts.workerConfig, 'utf8')) as {
          instances?: { name?: unknown; release?: unknown }[]
        }
        for (const i of v.instances ?? []) {
          if (typeof i.name === 'string' && typeof i.release === 'number') {
            releases.set(i.name, i.release)
          }
        }
      }
    } catch {
      // no worker.json yet, or one being replaced: the last known releases stay
    }
    return releases.get(instance) ?? null
  }

  async function scan(): Promise<void> {
    let names: string[]
    try {
      names = await readdir(logDir)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
      names = []
    }
    const seen = new Set<string>()
    for (const name of names.sort()) {
      const m = LOG_FILE.exec(name)
      const names = m && parseInstance(m[1]!)
      if (!names) continue
      const path = join(logDir, name)
      let key: string
      let size: number
      try {
        const st = await stat(path)
        key = fileKey(identity(st))
        size = st.size
      } catch {
        continue // gone since readdir
      }
      seen.add(key)
      const known = files.get(key)
      if (known) known.path = path
      if (known?.fh || (known && known.size === size)) continue
      let fh: FileHandle
      try {
        fh = await open(path, 'r')
      } catch {
        continue
      }
      const id = identity(await fh.stat())
      if (fileKey(id) !== key) {
        // Replaced between stat and open: the next scan takes whichever is there then.
        seen.delete(key)
        await fh.close()
        continue
      }
      if (known) {
        known.fh = fh
        continue
      }
      const acked = saved.get(key) ?? 0
      files.set(key, {
        key,
        ...id,
        instance: m[1]!,
        app: names.app,
        type: names.type,
        named: names.release ?? null,
        path,
        fh,
        size: -1,
        changedAt: Date.now(),
        acked,
        sent: acked,
        present: true,
      })
      log.debug({ file: path, key, from: acked }, 'log file followed')
    }
    for (const f of files.values()) f.present = seen.has(f.key)
  }

  /** The next batch of `f` from its `sent` offset, if it has new complete lines. */
  async function nextBatch(f: Tracked, fh: FileHandle, size: number) {
    if (size <= f.sent) return undefined
    const buf = Buffer.alloc(Math.min(size - f.sent, MAX_BATCH_BYTES))
    const { bytesRead } = await fh.read(buf, 0, buf.length, f.sent)
    const { lines, end } = splitLines(buf.subarray(0, bytesRead), f.sent)
    if (lines.length === 0) return undefined
    const batch: LogBatch = {
      node: opts.node,
      instance: f.instance,
      app: f.app,
      type: f.type,
      release: releaseOf(f.instance, f.named),
      inode: f.inode,
      born: f.born,
      start: f.sent,
      end,
      time: Date.now(),
      lines,
    }
    return batch
  }

  async function pump(): Promise<void> {
    await scan()
    const now = Date.now()
    let inflight = 0
    for (const f of files.values()) {
      if (f.inflight && now >= f.inflight.deadline) {
        log.debug({ file: f.path, from: f.acked }, 'log batch not acked, sending again')
        f.inflight = undefined
        f.sent = f.acked
      }
      if (f.inflight) inflight++
    }
    for (const f of [...files.values()]) {
      if (closed) return
      const fh = f.fh
      if (!fh) {
        if (!f.present) {
          files.delete(f.key)
          persistSoon()
        }
        continue
      }
      const size = (await fh.stat()).size
      if (size !== f.size) {
        f.size = size
        f.changedAt = now
      }
      if (size < f.acked) {
        // Only truncation does this (the worker renames, never truncates): start it over.
        log.warn({ file: f.path, size, acked: f.acked }, 'log file shrank, shipping it from 0')
        f.acked = f.sent = 0
        f.inflight = undefined
      }
      if (!f.present && !f.inflight && f.acked >= size) {
        // Deleted and shipped to its end: forget it.
        files.delete(f.key)
        await fh.close()
        persistSoon()
        continue
      }
      if (!f.inflight && f.acked >= size && now - f.changedAt >= IDLE_MS) {
        // Idle: the scan opens it again when it grows, so a node with many old logs stays light.
        f.fh = undefined
        await fh.close()
        continue
      }
      if (endpoint === undefined || f.inflight || inflight >= MAX_IN_FLIGHT) continue
      const batch = await nextBatch(f, fh, size)
      if (!batch) continue
      try {
        await dealer.send(encodeLogBatch(batch))
      } catch {
        // Not connected (or the queue is full): the lines stay in the file for the next round.
        return
      }
      f.sent = batch.end
      f.inflight = { end: batch.end, deadline: now + ackTimeoutMs }
      inflight++
    }
  }

  let pumping: Promise<void> | undefined
  let again = false
  function kick(): void {
    if (closed) return
    if (pumping) {
      again = true
      return
    }
    pumping = (async () => {
      do {
        again = false
        try {
          await pump()
        } catch (err) {
          if (!closed) log.warn({ err: (err as Error).message }, 'log shipping failed, retrying')
        }
      } while (again && !closed)
    })().finally(() => {
      pumping = undefined
    })
  }

  const receiving = (async () => {
    for await (const [frame] of dealer) {
      let ack
      try {
        ack = parseLogAck(frame ?? Buffer.alloc(0))
      } catch (err) {
        log.warn({ err: (err as Error).message }, 'log ack dropped')
        continue
      }
      const f = files.get(fileKey(ack))
      if (!f || f.instance !== ack.instance) continue
      if (ack.end > f.acked) {
        f.acked = ack.end
        persistSoon()
      }
      if (f.sent < f.acked) f.sent = f.acked
      if (f.inflight && ack.end >= f.inflight.end) f.inflight = undefined
      kick()
    }
  })().catch((err: unknown) => {
    if (!closed) log.error({ err: (err as Error).message }, 'log ack receiver stopped')
  })

  const timer = setInterval(kick, opts.pollMs ?? POLL_MS)
  kick()

  return {
    connect(next) {
      if (next === endpoint || closed) return
      if (endpoint !== undefined) {
        try {
          dealer.disconnect(endpoint)
        } catch {
          // not connected any more: nothing to undo
        }
      }
      endpoint = next
      rewind()
      if (next !== undefined) {
        dealer.connect(next)
        log.info({ logs: next }, 'shipping logs')
      }
      kick()
    },
    async close() {
      if (closed) return
      closed = true
      clearInterval(timer)
      await pumping
      dealer.close()
      await receiving
      persistSoon()
      await saving
      for (const f of files.values()) await f.fh?.close()
    },
  }
}
