/**
 * @module Instance records: one JSON file per running instance, `BAREKU_HOME/run/instances/
 * <name>.json`, written atomically when it is spawned and removed when it is gone. They are what
 * lets a restarted worker find its instances again:
 *
 *   { "name", "pid", "pgid", "starttime", "bootId", "specHash", "startedAt",
 *     "port"?, "graceMs"? }
 *
 * `starttime` (field 22 of /proc/PID/stat) and `bootId` pin the record to one process: a pid can
 * be reused, but not with the same start time in the same boot. `adopt` keeps a record only when
 * that very process still runs and is not a zombie; anything else (dead, reused pid, other boot,
 * unreadable file, a temp file left by a crash mid-write) is deleted.
 */
import { mkdirSync, readdirSync, readFileSync, unlinkSync } from 'node:fs'
import { join } from 'node:path'
import { isAtomicTemp, writeFileAtomicSync } from '../lib/fs-atomic.js'
import { isAlive } from './spawn.js'

/** What the worker remembers about one instance across its own restarts. */
export interface InstanceRecord {
  /** The instance name: a slot ("APP.web.1") or a surge name ("APP.web.1~1a2b3c4d"). */
  name: string
  pid: number
  pgid: number
  /** Field 22 of /proc/PID/stat when it was spawned. */
  starttime: number
  bootId: string
  specHash: string
  /** ms since the epoch. */
  startedAt: number
  /** Its $PORT, for the readiness check and to avoid port clashes during a replacement. */
  port?: number
  /** SIGTERM -> SIGKILL delay, so an adopted instance that left the config stops as it should. */
  graceMs?: number
}

/** A record that was not adopted, and why. */
export interface Discarded {
  name: string
  pid?: number
  reason: string
}

/** Where the records of a BAREKU_HOME live. */
export function recordsDir(home: string): string {
  return join(home, 'run', 'instances')
}

/** Writes (or replaces) the record of `rec.name`, atomically. */
export function writeRecord(dir: string, rec: InstanceRecord): void {
  writeFileAtomicSync(join(dir, `${rec.name}.json`), JSON.stringify(rec) + '\n')
}

/** Deletes the record of `name`; a record that is already gone is fine. */
export function removeRecord(dir: string, name: string): void {
  try {
    unlinkSync(join(dir, `${name}.json`))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
}

function isInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0
}

/** Parses a record file's text; undefined when it is not a complete record. */
export function parseRecord(text: string): InstanceRecord | undefined {
  let v: unknown
  try {
    v = JSON.parse(text)
  } catch {
    return undefined
  }
  if (typeof v !== 'object' || v === null) return undefined
  const r = v as Record<string, unknown>
  const ok =
    typeof r.name === 'string' &&
    isInt(r.pid) &&
    r.pid > 0 &&
    isInt(r.pgid) &&
    isInt(r.starttime) &&
    typeof r.bootId === 'string' &&
    typeof r.specHash === 'string' &&
    isInt(r.startedAt) &&
    (r.port === undefined || isInt(r.port)) &&
    (r.graceMs === undefined || isInt(r.graceMs))
  return ok ? (r as unknown as InstanceRecord) : undefined
}

/**
 * Reads every record in `dir` (creating it if needed) and keeps those whose process still runs:
 * same pid, same start time, same boot, not a zombie. The others are deleted and returned as
 * discarded, with the reason.
 */
export function adopt(
  dir: string,
  currentBootId: string,
): { adopted: InstanceRecord[]; discarded: Discarded[] } {
  mkdirSync(dir, { recursive: true })
  const adopted: InstanceRecord[] = []
  const discarded: Discarded[] = []
  for (const file of readdirSync(dir).sort()) {
    const path = join(dir, file)
    if (isAtomicTemp(file)) {
      // Left by a worker killed in the middle of writeFileAtomic: never a complete record.
      unlinkSync(path)
      continue
    }
    if (!file.endsWith('.json')) continue
    const name = file.slice(0, -'.json'.length)
    let rec: InstanceRecord | undefined
    try {
      rec = parseRecord(readFileSync(path, 'utf8'))
    } catch {
      rec = undefined
    }
    let reason: string | undefined
    if (!rec || rec.name !== name) reason = 'unreadable record'
    else if (rec.bootId !== currentBootId) reason = 'from an earlier boot'
    else if (!isAlive(rec.pid, rec.starttime)) {
      reason = 'process gone, a zombie, or its pid reused'
    }
    if (reason === undefined && rec) {
      adopted.push(rec)
    } else {
      unlinkSync(path)
      discarded.push({ name, ...(rec ? { pid: rec.pid } : {}), reason: reason ?? 'unreadable' })
    }
  }
  return { adopted, discarded }
}
