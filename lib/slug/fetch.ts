/**
 * @module Fetching one slug from the slug store (lib/protocol/slug-chunk.ts) over a DEALER, one
 * 1 MiB chunk per request with a few in flight, appended to `DIR/<sha256>.sqfs.part`:
 *
 *   DIR/<sha>.sqfs exists              -> done (only a verified file ever gets that name)
 *   DIR/<sha>.sqfs.part has N bytes    -> resume at offset N (after a crash or a timeout)
 *   all bytes in                       -> sha256 of the whole file: match -> fsync, rename to
 *                                         <sha>.sqfs, fsync DIR; mismatch -> delete the .part,
 *                                         E_SLUG
 *
 * A store that stops answering fails the fetch after `timeoutMs` without a reply (E_SLUG); the
 * bytes so far stay in the .part for the next try. An error reply from the store is E_SLUG with
 * the store's message.
 */
import { mkdir, open, rename, stat, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { Dealer } from 'zeromq'
import { AppError, isAppError } from '../errors.js'
import { fsyncPath } from '../fs-atomic.js'
import type { Logger } from '../log.js'
import { encodeChunkRequest, parseChunkReply } from '../protocol/slug-chunk.js'
import { sha256File } from './sha.js'

export interface FetchSlugOptions {
  /** The slug store's endpoint (the master's `slugs`). */
  endpoint: string
  sha256: string
  /** The size the host list gives; the store must agree. */
  size: number
  /** Where `<sha256>.sqfs` goes. */
  dir: string
  /** The longest wait for one reply before the fetch fails (the .part is kept). */
  timeoutMs: number
  /** Aborting closes the socket: the fetch fails at once, the .part is kept. */
  signal?: AbortSignal
}

export const CHUNK_BYTES = 1024 * 1024
/** Chunks requested ahead of the one being written: keeps the pipe full without a big buffer. */
const IN_FLIGHT = 4

/** The final name of a slug in `dir`. */
export function slugFile(dir: string, sha256: string): string {
  return join(dir, `${sha256}.sqfs`)
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path)
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false
    throw err
  }
}

async function sizeOf(path: string): Promise<number> {
  try {
    return (await stat(path)).size
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0
    throw err
  }
}

/** Downloads the chunks [from, size) of the slug and appends them to `part`. */
async function download(opts: FetchSlugOptions, part: string, from: number): Promise<void> {
  const { endpoint, sha256, size, timeoutMs, signal } = opts
  const sock = new Dealer({ linger: 0, receiveTimeout: timeoutMs, sendTimeout: timeoutMs })
  const abort = (): void => sock.close()
  signal?.addEventListener('abort', abort)
  const file = await open(part, 'a')
  let written = from
  /** Set when the .part cannot be trusted: it is deleted after the file is closed. */
  let discard = false
  try {
    sock.connect(endpoint)
    /** Requested and not yet answered: offset -> length. */
    const asked = new Map<number, number>()
    const arrived = new Map<number, Buffer>()
    let next = from
    const ask = async (offset: number, length: number): Promise<void> => {
      asked.set(offset, length)
      await sock.send(encodeChunkRequest({ sha256, offset, length }))
    }
    while (written < size) {
      while (next < size && asked.size < IN_FLIGHT) {
        const length = Math.min(CHUNK_BYTES, size - next)
        await ask(next, length)
        next += length
      }
      const reply = parseChunkReply(await sock.receive())
      if ('error' in reply) {
        throw new AppError(
          'E_SLUG',
          `the slug store at ${endpoint} refused slug ${sha256}: ${reply.error.message}`,
        )
      }
      const length = asked.get(reply.offset)
      if (reply.sha256 !== sha256 || length === undefined) continue // not an answer to us
      asked.delete(reply.offset)
      if (reply.size !== size) {
        discard = true
        throw new AppError(
          'E_SLUG',
          `the slug store at ${endpoint} has slug ${sha256} with ${reply.size} bytes, the host list says ${size}: the store or the master state is wrong; push the app again`,
        )
      }
      // A short chunk is allowed: ask for the rest of it.
      const got = reply.data.length
      if (got < length) await ask(reply.offset + got, length - got)
      arrived.set(reply.offset, reply.data)
      for (let data = arrived.get(written); data !== undefined; data = arrived.get(written)) {
        arrived.delete(written)
        await file.write(data)
        written += data.length
      }
    }
    await file.sync()
  } catch (err) {
    if (isAppError(err)) throw err
    const why = signal?.aborted
      ? 'the fetch was stopped'
      : (err as { code?: string }).code === 'EAGAIN'
        ? `no answer within ${timeoutMs} ms (is the master up?)`
        : (err as Error).message
    throw new AppError(
      'E_SLUG',
      `fetching slug ${sha256} from ${endpoint} failed: ${why}; ${written} of ${size} bytes kept in ${part}, the next try resumes there`,
    )
  } finally {
    signal?.removeEventListener('abort', abort)
    await file.close()
    sock.close()
    if (discard) await unlink(part).catch(() => undefined)
  }
}

/**
 * Fetches slug `sha256` into `dir/<sha256>.sqfs` (resuming a .part) and returns that path.
 * Throws E_SLUG on a timeout, an error reply, a size disagreement or a sha256 mismatch.
 */
export async function fetchSlug(opts: FetchSlugOptions, log: Logger): Promise<string> {
  const { sha256, size, dir } = opts
  const final = slugFile(dir, sha256)
  if (await exists(final)) return final
  await mkdir(dir, { recursive: true })
  const part = `${final}.part`
  let have = await sizeOf(part)
  if (have > size) {
    log.warn({ sha256, part, have, size }, 'slug part longer than the slug, starting over')
    await unlink(part)
    have = 0
  }
  const started = Date.now()
  await download(opts, part, have)
  const actual = await sha256File(part)
  if (actual !== sha256) {
    await unlink(part)
    throw new AppError(
      'E_SLUG',
      `slug ${sha256} from ${opts.endpoint} has sha256 ${actual}: the store's copy is corrupt or not that slug; the download was deleted (rebuild it by pushing the app again)`,
    )
  }
  await rename(part, final)
  await fsyncPath(dir)
  log.info({ sha256, size, resumedAt: have, ms: Date.now() - started }, 'slug fetched')
  return final
}
