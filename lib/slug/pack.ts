/**
 * @module Packing a built app into a slug: a squashfs image named by its sha256.
 *
 *   listApp(dir) ──> tar-stream pack ──stdin──> tar2sqfs (zstd) ──> OUT/.slug.sqfs.<pid>.<rand>.tmp
 *     fsync, sha256 ──> link to OUT/<sha256>.sqfs (an existing one is kept) ──> fsync(OUT)
 *
 * The image is reproducible: the same tree gives the same bytes, whoever builds it and whenever.
 * The tar has its entries in listApp's fixed order, owner root (0/0), mtime 0 and no setuid,
 * setgid or sticky bits; tar2sqfs drops the times anyway (--no-keep-time), gives the root
 * directory fixed attributes, and stamps its superblock with that same default mtime. The output
 * does not depend on tar2sqfs's thread count. File contents are streamed, never held whole.
 */
import { link, mkdir, rename, rm, stat } from 'node:fs/promises'
import { createReadStream, existsSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { execa } from 'execa'
import { pack as tarPack, type Pack } from 'tar-stream'
import { AppError } from '../errors.js'
import { fsyncPath, tempPathFor } from '../fs-atomic.js'
import { sha256File } from './sha.js'
import { toolFailure } from './tool.js'
import { listApp, type TreeEntry } from './tree.js'

/** What packSlug made: the image's sha256, its path (`<outDir>/<sha256>.sqfs`) and its size. */
export interface PackedSlug {
  sha256: string
  path: string
  size: number
}

// zstd level 9 instead of tar2sqfs's default 15: several times faster (a push waits for it) for
// images only a few per cent larger.
const TAR2SQFS_ARGS = [
  '--quiet',
  '--no-skip',
  '--no-xattr',
  '--no-keep-time',
  '--defaults',
  'uid=0,gid=0,mode=0755,mtime=0',
  '--compressor',
  'zstd',
  '--comp-extra',
  'level=9',
]

const EPOCH = new Date(0)
const HEX64 = /^[0-9a-f]{64}$/

/** Where the slug with this sha256 lives in `outDir`: `<outDir>/<sha256>.sqfs`. */
export function slugPath(outDir: string, sha256: string): string {
  if (!HEX64.test(sha256)) {
    throw new AppError(
      'E_SLUG',
      `a slug's sha256 must be 64 lowercase hex digits, got ${JSON.stringify(sha256)}; take it from packSlug or the release`,
    )
  }
  return join(outDir, `${sha256}.sqfs`)
}

type Header = Parameters<Pack['entry']>[0]

function headerOf(e: TreeEntry): Header {
  const base = { name: e.path, mode: e.mode, uid: 0, gid: 0, uname: 'root', gname: 'root' }
  if (e.kind === 'dir') return { ...base, type: 'directory', mtime: EPOCH }
  if (e.kind === 'symlink')
    return { ...base, type: 'symlink', linkname: e.target ?? '', mtime: EPOCH }
  return { ...base, type: 'file', size: e.size, mtime: EPOCH }
}

type Sink = ReturnType<Pack['entry']>

/** Resolves when `sink` can take more; rejects if it fails or closes first. */
function drained(sink: Sink): Promise<void> {
  return new Promise((resolve, reject) => {
    const settle = (err?: Error): void => {
      sink.off('drain', onDrain)
      sink.off('error', onError)
      sink.off('close', onClose)
      if (err) reject(err)
      else resolve()
    }
    const onDrain = (): void => settle()
    const onError = (err: Error): void => settle(err)
    const onClose = (): void => settle(new Error('tar entry closed'))
    sink.on('drain', onDrain)
    sink.on('error', onError)
    sink.on('close', onClose)
  })
}

/** Opens the entry for `e` in `pack`; `done` settles when tar-stream has taken all of it. */
function openEntry(pack: Pack, e: TreeEntry): { sink: Sink; done: Promise<void> } {
  let settle: (err?: Error | null) => void = () => undefined
  const done = new Promise<void>((resolve, reject) => {
    settle = (err) => (err ? reject(err) : resolve())
  })
  const sink = pack.entry(headerOf(e), (err) => settle(err))
  // Its failure also reaches the entry callback, hence `done`; unheard, it would be an uncaught error.
  sink.on('error', () => undefined)
  // Awaited by the caller; this only keeps a rejection during the copy from counting as unhandled.
  done.catch(() => undefined)
  return { sink, done }
}

async function addEntry(pack: Pack, root: string, e: TreeEntry): Promise<void> {
  const { sink, done } = openEntry(pack, e)
  try {
    if (e.kind === 'file') {
      if (e.size > 0) {
        // Reading at most the size the header announced: a file that grew meanwhile cannot
        // overrun its tar record; one that shrank fails on end() with a size mismatch.
        const path = join(root, e.path)
        const file = createReadStream(path, { end: e.size - 1, highWaterMark: 1 << 20 })
        for await (const chunk of file) {
          if (!sink.write(chunk)) await Promise.race([drained(sink), done])
        }
      }
      // null: no last chunk (streamx's typings insist on an argument)
      sink.end(null)
    }
    await done
  } catch (err) {
    throw new AppError(
      'E_SLUG',
      `cannot pack ${e.path} in ${root}: ${(err as Error).message}; pack a finished build (nothing may change it meanwhile) that the packing user can read`,
      { cause: err },
    )
  }
}

async function writeImage(root: string, entries: TreeEntry[], out: string): Promise<void> {
  const child = execa('tar2sqfs', [...TAR2SQFS_ARGS, out], {
    stdin: 'pipe',
    stdout: 'ignore',
    stderr: 'pipe',
    reject: false,
  })
  const pack = tarPack()
  const feeding = pipeline(pack, child.stdin)
  const writing = (async () => {
    for (const e of entries) await addEntry(pack, root, e)
    pack.finalize()
  })().catch((err: unknown) => {
    // Ends both sides, so neither the pipe nor tar2sqfs waits for bytes that will never come.
    pack.destroy(err as Error)
    child.kill()
    throw err
  })
  const [wrote, fed] = await Promise.allSettled([writing, feeding])
  const result = await child
  if (result.failed && !result.isTerminated) {
    throw new AppError('E_SLUG', `cannot pack ${root}: ${toolFailure('tar2sqfs', result)}`)
  }
  if (wrote.status === 'rejected') {
    const err = wrote.reason as Error
    if (err instanceof AppError) throw err
    throw new AppError('E_SLUG', `cannot pack ${root}: ${err.message}`, { cause: err })
  }
  if (fed.status === 'rejected' || result.failed) {
    const why = fed.status === 'rejected' ? (fed.reason as Error).message : result.shortMessage
    throw new AppError('E_SLUG', `cannot pack ${root}: tar2sqfs stopped reading (${why})`)
  }
}

/** Gives `tmp` its final name without ever replacing a slug already there (same name, same bytes). */
async function publish(tmp: string, path: string): Promise<void> {
  try {
    await link(tmp, path)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EEXIST') return
    // File systems without hard links: a rename can only replace identical bytes, so a race
    // between two packers of the same tree is harmless.
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP') throw err
    if (existsSync(path)) return
    await rename(tmp, path)
  }
  await fsyncPath(dirname(path))
}

/**
 * Packs the built app in `dir` into a reproducible squashfs slug in `outDir` (created if need be)
 * and returns its sha256, path (`<outDir>/<sha256>.sqfs`) and size. Throws E_SLUG, naming the
 * path and the fix, for fifos, sockets, devices, symlinks leading outside the app, unreadable
 * entries, or a tar2sqfs failure; nothing is left in `outDir` then.
 */
export async function packSlug(dir: string, outDir: string): Promise<PackedSlug> {
  const root = resolve(dir)
  const entries = await listApp(root)
  try {
    await mkdir(outDir, { recursive: true })
  } catch (err) {
    throw new AppError(
      'E_SLUG',
      `cannot write slugs to ${outDir}: ${(err as Error).message}; it must be a directory this user can write`,
      { cause: err },
    )
  }
  const tmp = tempPathFor(join(outDir, 'slug.sqfs'))
  try {
    await writeImage(root, entries, tmp)
    await fsyncPath(tmp)
    const sha256 = await sha256File(tmp)
    const path = slugPath(outDir, sha256)
    await publish(tmp, path)
    const { size } = await stat(path)
    return { sha256, path, size }
  } finally {
    await rm(tmp, { force: true })
  }
}
