/**
 * @module Pruning unpacked slugs: a directory of unpacked slugs (a node's `slugs/unpacked/`, the
 * frontend's static sites) keeps every slug something uses, and removes the others once they
 * have gone unused for a while, with the temp dirs a crashed unpack left (`.NAME.*.tmp`):
 *
 *   DIR/<sha256>/           in use -> kept; unused -> removed after `unusedMs` without a use
 *   DIR/.<sha256>.*.tmp     an unpack in progress or abandoned -> removed once `unusedMs` old
 *
 * "A while" lets a stopping process (SIGTERM, grace, SIGKILL) and a quick rollback still find
 * their files; the clock of an unused slug starts when a prune first sees it unused (kept in
 * `tracker`), so a restart only delays a removal.
 */
import { readdir, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from '../log.js'

const SLUG_DIR = /^[0-9a-f]{64}$/
const TEMP_DIR = /^\.[0-9a-f]{64}\..*\.tmp$/

export interface PruneOptions {
  dir: string
  /** The slugs (sha256) in use now. */
  inUse: ReadonlySet<string>
  /** How long a slug stays unused before it goes. */
  unusedMs: number
  /** When each unused slug was first seen unused; the caller keeps it between prunes. */
  tracker: Map<string, number>
  log: Logger
  now?: number
}

/** Removes what the module comment says; returns the names removed. Never throws for a race. */
export async function pruneUnpacked(opts: PruneOptions): Promise<string[]> {
  const now = opts.now ?? Date.now()
  let names: string[]
  try {
    names = await readdir(opts.dir)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw err
  }
  const removed: string[] = []
  const present = new Set<string>()
  for (const name of names) {
    let old = false
    if (SLUG_DIR.test(name)) {
      present.add(name)
      if (opts.inUse.has(name)) {
        opts.tracker.delete(name)
        continue
      }
      const since = opts.tracker.get(name) ?? now
      opts.tracker.set(name, since)
      old = now - since >= opts.unusedMs
    } else if (TEMP_DIR.test(name)) {
      const mtime = await stat(join(opts.dir, name)).then(
        (s) => s.mtimeMs,
        () => now,
      )
      old = now - mtime >= opts.unusedMs
    }
    if (!old) continue
    await rm(join(opts.dir, name), { recursive: true, force: true })
    opts.tracker.delete(name)
    removed.push(name)
    opts.log.info({ dir: opts.dir, slug: name }, 'unused unpacked slug removed')
  }
  for (const name of opts.tracker.keys()) if (!present.has(name)) opts.tracker.delete(name)
  return removed
}
