/**
 * @module Unpacking a slug onto a node, whole or not at all:
 *
 *   inspectSlug(SLUG)                         every entry checked first (inspect.ts)
 *   rdsquashfs --chmod -u / -p TMP SLUG       TMP = DIR/.NAME.<pid>.<rand>.tmp, beside DEST
 *   settle TMP                                dirs 0755, files 0644 or 0755 (x bit kept), so
 *                                             the app can run as nobody; types checked again
 *   sync -f TMP; rename(TMP, DEST); fsync DIR
 *
 * DEST appears complete or not at all, and survives a crash once it is there: a node that finds
 * DEST can trust it. A DEST that already exists is left alone (another unpack got there first).
 * rdsquashfs runs without --chown (files belong to the unpacking user, never to an image's uid)
 * and without --set-xattr (a security.capability xattr would be a setuid bit by another name).
 * The image is decompressed twice, once to check and once to unpack (checking costs about as
 * much as unpacking: bench/slug.ts).
 */
import { chmod, lstat, mkdir, readdir, rename, rm } from 'node:fs/promises'
import { dirname, join, relative, resolve } from 'node:path'
import { execa } from 'execa'
import { AppError } from '../errors.js'
import { fsyncPath, tempPathFor } from '../fs-atomic.js'
import { inspectSlug } from './inspect.js'
import { toolFailure } from './tool.js'

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path)
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false
    throw err
  }
}

/**
 * Gives everything under `dir` modes the app's unprivileged user can read and run. Directories
 * are opened up before they are read, so an image with a 0000 directory still settles.
 */
async function settle(slugFile: string, root: string, dir: string): Promise<void> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isSymbolicLink()) continue
    if (entry.isDirectory()) {
      await chmod(path, 0o755)
      await settle(slugFile, root, path)
    } else if (entry.isFile()) {
      const { mode } = await lstat(path)
      await chmod(path, mode & 0o111 ? 0o755 : 0o644)
    } else {
      // inspectSlug let nothing else through; this holds even if the image changed since.
      throw new AppError(
        'E_SLUG',
        `slug ${slugFile} is unsafe: ${relative(root, path)} unpacked as something other than a file, directory or symlink; refusing it`,
      )
    }
  }
}

/**
 * Unpacks the squashfs slug `slugFile` into `dest` (created with its parents; it appears whole
 * or not at all). Returns at once if `dest` exists. Throws E_SLUG, and leaves no `dest`, if the
 * slug is unsafe (setuid/setgid files, devices, fifos, sockets, absolute or ".." paths, symlinks
 * leading outside it; the message names the entry) or corrupt, truncated or missing (the message
 * carries the tool's).
 */
export async function unpackSlug(slugFile: string, dest: string): Promise<void> {
  const target = resolve(dest)
  if (await exists(target)) return
  await inspectSlug(slugFile)
  await mkdir(dirname(target), { recursive: true })
  const tmp = tempPathFor(target)
  await mkdir(tmp, { mode: 0o700 })
  try {
    const result = await execa(
      'rdsquashfs',
      ['--quiet', '--chmod', '--unpack-path', '/', '--unpack-root', tmp, slugFile],
      { stdin: 'ignore', stdout: 'ignore', stderr: 'pipe', reject: false },
    )
    if (result.failed) {
      throw new AppError(
        'E_SLUG',
        `cannot unpack slug ${slugFile} into ${target}: ${toolFailure('rdsquashfs', result)}; if the slug is damaged, delete it and fetch it again`,
      )
    }
    await chmod(tmp, 0o755)
    await settle(slugFile, tmp, tmp)
    // One syncfs for the whole tree (rdsquashfs fsyncs nothing): after a crash, a DEST that
    // exists must have its files' contents, not zero-length files.
    const synced = await execa('sync', ['--file-system', tmp], { reject: false })
    if (synced.failed) {
      throw new AppError('E_SLUG', `cannot unpack slug ${slugFile}: ${toolFailure('sync', synced)}`)
    }
    try {
      await rename(tmp, target)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      // Another unpack of the same slug renamed first: its tree is as good as ours.
      if (code === 'ENOTEMPTY' || code === 'EEXIST') return
      throw err
    }
    await fsyncPath(dirname(target))
  } finally {
    await rm(tmp, { recursive: true, force: true })
  }
}
