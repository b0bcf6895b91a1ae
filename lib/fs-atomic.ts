/**
 * @module Atomic file replacement: a reader sees the old content or the new, never a mix, and a
 * crash at any point leaves one of the two on disk. The steps are the classic ones:
 *
 *   open DIR/.NAME.<pid>.<random>.tmp (O_CREAT|O_EXCL) -> write -> fsync -> close
 *   rename(tmp, DIR/NAME)         atomic within one file system, hence the temp file in DIR
 *   fsync(DIR)                    makes the rename itself durable
 *
 * The master (its state), the client (worker.json) and the worker (instance records) share it.
 * Temp names start with "." and end in ".tmp" so directory watchers and readers can skip them.
 */
import { randomBytes } from 'node:crypto'
import {
  closeSync,
  fsyncSync,
  openSync,
  renameSync,
  unlinkSync,
  writeSync,
  constants as fsConstants,
} from 'node:fs'
import { open, rename, unlink } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'

/** Options for writeFileAtomic: `mode` of the new file (default 0o644, less the umask). */
export interface AtomicWriteOptions {
  mode?: number
}

/** The temp file name used for `path`: same directory, hidden, unique per call. */
export function tempPathFor(path: string): string {
  return join(
    dirname(path),
    `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`,
  )
}

/** True for the temp files that writeFileAtomic leaves behind only if it is killed mid-write. */
export function isAtomicTemp(name: string): boolean {
  return basename(name).startsWith('.') && name.endsWith('.tmp')
}

function isIgnorableDirSyncError(err: unknown): boolean {
  // Some file systems (and some FUSE mounts) cannot fsync a directory; the rename already
  // happened, so the file is consistent, only its durability across power loss is weaker.
  const code = (err as NodeJS.ErrnoException).code
  return code === 'EINVAL' || code === 'ENOTSUP' || code === 'EISDIR'
}

/**
 * Replaces `path` with `data` atomically and durably (temp file in the same directory, fsync,
 * rename, fsync of the directory). The directory must exist.
 */
export async function writeFileAtomic(
  path: string,
  data: string | Uint8Array,
  options: AtomicWriteOptions = {},
): Promise<void> {
  const tmp = tempPathFor(path)
  const file = await open(tmp, 'wx', options.mode ?? 0o644)
  try {
    try {
      await file.writeFile(data)
      await file.sync()
    } finally {
      await file.close()
    }
    await rename(tmp, path)
  } catch (err) {
    await unlink(tmp).catch(() => undefined)
    throw err
  }
  await fsyncPath(dirname(path))
}

/**
 * fsync of a file or a directory (after a rename into it: the rename is then durable). A file
 * system that cannot fsync a directory is not an error.
 */
export async function fsyncPath(path: string): Promise<void> {
  const handle = await open(path, fsConstants.O_RDONLY)
  try {
    await handle.sync()
  } catch (err) {
    if (!isIgnorableDirSyncError(err)) throw err
  } finally {
    await handle.close()
  }
}

/** The synchronous twin of writeFileAtomic, for small files written from timers and handlers. */
export function writeFileAtomicSync(
  path: string,
  data: string | Uint8Array,
  options: AtomicWriteOptions = {},
): void {
  const tmp = tempPathFor(path)
  const fd = openSync(tmp, 'wx', options.mode ?? 0o644)
  try {
    try {
      const buf = typeof data === 'string' ? Buffer.from(data) : data
      let off = 0
      while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off)
      fsyncSync(fd)
    } finally {
      closeSync(fd)
    }
    renameSync(tmp, path)
  } catch (err) {
    try {
      unlinkSync(tmp)
    } catch {
      // the temp file was never created or is already renamed
    }
    throw err
  }
  const dirFd = openSync(dirname(path), fsConstants.O_RDONLY)
  try {
    fsyncSync(dirFd)
  } catch (err) {
    if (!isIgnorableDirSyncError(err)) throw err
  } finally {
    closeSync(dirFd)
  }
}
