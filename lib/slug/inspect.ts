/**
 * @module Checking a slug before any of it reaches the disk. The image is read as a tar stream,
 * which gives every entry's exact name (pax, so any bytes), type, mode and link target:
 *
 *   sqfs2tar --no-skip --no-xattr --no-hard-links SLUG ──stdout──> tar-stream extract ──> checks
 *
 * Refused (E_SLUG, "unsafe", naming the entry): setuid or setgid files, anything that is not a
 * directory, regular file or symlink (devices, fifos; sockets have no tar form, so sqfs2tar
 * aborts on them, as on names like ".." or "a/b", because of --no-skip), absolute or ".." paths,
 * and symlinks that resolve outside the slug (see links.ts). A corrupt or truncated image makes
 * sqfs2tar fail, and its message goes into the E_SLUG error. Every file's data is read (and
 * dropped), so a damaged data block is caught here too, not half-way through unpacking.
 */
import { constants } from 'node:fs'
import { access } from 'node:fs/promises'
import { execa } from 'execa'
import { extract as tarExtract, type Header } from 'tar-stream'
import { AppError } from '../errors.js'
import { resolveLink } from './links.js'
import { toolFailure } from './tool.js'

/** What a slug holds, as counted while checking it. */
export interface SlugSummary {
  files: number
  dirs: number
  symlinks: number
  /** The files' total size. */
  bytes: number
}

const TYPE_NAMES: Partial<Record<Header['type'], string>> = {
  'block-device': 'a block device',
  'character-device': 'a character device',
  fifo: 'a fifo (named pipe)',
  link: 'a hard link',
  'contiguous-file': 'a contiguous file',
}

function unsafe(slugFile: string, what: string): AppError {
  return new AppError(
    'E_SLUG',
    `slug ${slugFile} is unsafe: ${what}; refusing to unpack it. packSlug never makes such a slug: rebuild the app (push again) and find out where this one came from`,
  )
}

// sqfs2tar's words when --no-skip makes it stop at an entry a tar cannot (or must not) hold:
// names like ".." or "a/b", and sockets.
const SKIPPED = [/Found a file named '(.*)'/, /^WARNING: (.*): cannot pack /m, /^Skipping (.*)$/m]

/** Checks every entry of the squashfs image `slugFile`; throws E_SLUG if it is unsafe or unreadable. */
export async function inspectSlug(slugFile: string): Promise<SlugSummary> {
  try {
    await access(slugFile, constants.R_OK)
  } catch (err) {
    throw new AppError(
      'E_SLUG',
      `slug ${slugFile} cannot be read: ${(err as Error).message}; fetch it before unpacking it`,
      { cause: err },
    )
  }
  const child = execa('sqfs2tar', ['--no-skip', '--no-xattr', '--no-hard-links', slugFile], {
    stdin: 'ignore',
    stdout: 'pipe',
    stderr: 'pipe',
    buffer: { stdout: false, stderr: true },
    reject: false,
  })
  const summary: SlugSummary = { files: 0, dirs: 0, symlinks: 0, bytes: 0 }
  const links = new Map<string, string>()
  const extract = tarExtract()
  child.stdout.pipe(extract)
  let refused: AppError | undefined
  let unreadable: Error | undefined
  try {
    for await (const entry of extract) {
      const h = entry.header
      const name = h.name.replace(/\/+$/, '')
      const parts = name.split('/')
      if (h.name.startsWith('/') || parts.some((p) => p === '' || p === '.' || p === '..')) {
        throw unsafe(slugFile, `entry ${JSON.stringify(h.name)} has an absolute or ".." path`)
      }
      if (h.type === 'directory') summary.dirs++
      else if (h.type === 'symlink') {
        summary.symlinks++
        links.set(name, h.linkname)
      } else if (h.type === 'file') {
        summary.files++
        summary.bytes += h.size
      } else {
        throw unsafe(slugFile, `${name} is ${TYPE_NAMES[h.type] ?? `of type ${h.type}`}`)
      }
      if (h.type === 'file' && (h.mode & 0o6000) !== 0) {
        const bits = [h.mode & 0o4000 ? 'setuid' : '', h.mode & 0o2000 ? 'setgid' : '']
        const mode = (h.mode & 0o7777).toString(8)
        throw unsafe(
          slugFile,
          `${name} has the ${bits.filter(Boolean).join(' and ')} bit (mode ${mode})`,
        )
      }
      entry.resume()
    }
  } catch (err) {
    if (err instanceof AppError) refused = err
    else unreadable = err as Error
    child.kill()
  }
  const result = await child
  if (refused) throw refused
  if (result.failed) {
    const stderr = typeof result.stderr === 'string' ? result.stderr : ''
    const skipped = stderr.includes('Not allowed to skip')
      ? SKIPPED.map((re) => re.exec(stderr)?.[1]).find((name) => name !== undefined)
      : undefined
    if (skipped !== undefined) {
      const why = toolFailure('sqfs2tar', result)
      throw unsafe(slugFile, `entry ${JSON.stringify(skipped)} cannot be unpacked safely (${why})`)
    }
    throw new AppError(
      'E_SLUG',
      `slug ${slugFile} cannot be read, it is corrupt or truncated: ${toolFailure('sqfs2tar', result)}; delete it and fetch it again`,
    )
  }
  if (unreadable) {
    throw new AppError(
      'E_SLUG',
      `slug ${slugFile} cannot be read, it is corrupt or truncated: ${unreadable.message}; delete it and fetch it again`,
      { cause: unreadable },
    )
  }
  for (const [path, target] of links) {
    const verdict = resolveLink(path, links)
    if (verdict !== 'inside') {
      throw unsafe(
        slugFile,
        `symlink ${path} -> "${target}" ${verdict === 'loop' ? 'loops' : 'leads outside the slug'}`,
      )
    }
  }
  return summary
}
