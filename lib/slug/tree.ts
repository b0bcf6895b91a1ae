/**
 * @module The built app as a slug will hold it: every entry under the app's directory, parents
 * first and siblings in byte order (as `LC_ALL=C sort`), so the same tree always lists the same
 * way. Only directories, regular files and symlinks that stay inside the app are allowed;
 * anything else is refused with E_SLUG before a single byte is packed.
 */
import { lstat, readdir, readlink, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { AppError } from '../errors.js'
import { resolveLink } from './links.js'

/** One entry of the app, as it goes into the slug. */
export interface TreeEntry {
  /** Relative to the app's root, '/'-separated. */
  path: string
  kind: 'dir' | 'file' | 'symlink'
  /** Permission bits only: setuid, setgid and sticky are dropped (the app runs unprivileged). */
  mode: number
  /** Bytes, for files; 0 otherwise. */
  size: number
  /** Where a symlink points, as written. */
  target?: string
}

const byBytes = (a: string, b: string): number => Buffer.compare(Buffer.from(a), Buffer.from(b))

function kindOf(st: { isFIFO(): boolean; isSocket(): boolean; isBlockDevice(): boolean }): string {
  if (st.isFIFO()) return 'a fifo (named pipe)'
  if (st.isSocket()) return 'a socket'
  return st.isBlockDevice() ? 'a block device' : 'a character device'
}

function unreadable(root: string, path: string, err: unknown): AppError {
  return new AppError(
    'E_SLUG',
    `cannot pack ${path || '.'} in ${root}: ${(err as Error).message}; the built app must be readable by the user that packs it`,
    { cause: err },
  )
}

async function walk(root: string, dir: string, out: TreeEntry[]): Promise<void> {
  let names: string[]
  try {
    names = (await readdir(join(root, dir))).sort(byBytes)
  } catch (err) {
    throw unreadable(root, dir, err)
  }
  const paths = names.map((name) => (dir === '' ? name : `${dir}/${name}`))
  let stats
  try {
    stats = await Promise.all(paths.map((p) => lstat(join(root, p))))
  } catch (err) {
    throw unreadable(root, dir, err)
  }
  for (const [i, path] of paths.entries()) {
    const st = stats[i]!
    const mode = st.mode & 0o777
    if (st.isDirectory()) {
      out.push({ path, kind: 'dir', mode, size: 0 })
      await walk(root, path, out)
    } else if (st.isFile()) {
      out.push({ path, kind: 'file', mode, size: st.size })
    } else if (st.isSymbolicLink()) {
      let target: string
      try {
        target = await readlink(join(root, path))
      } catch (err) {
        throw unreadable(root, path, err)
      }
      out.push({ path, kind: 'symlink', mode: 0o777, size: 0, target })
    } else {
      throw new AppError(
        'E_SLUG',
        `cannot pack ${path} in ${root}: it is ${kindOf(st)}, and a slug holds only files, directories and symlinks; remove it from the build (e.g. at the end of bin/compile) and push again`,
      )
    }
  }
}

/**
 * Lists the app at `root` for packing. Throws E_SLUG, naming the entry, for a fifo, socket or
 * device, for a symlink that leads outside the app (absolute, or up past the root, also through
 * other links), and for anything unreadable.
 */
export async function listApp(root: string): Promise<TreeEntry[]> {
  let st
  try {
    st = await stat(root)
  } catch (err) {
    throw unreadable(root, '', err)
  }
  if (!st.isDirectory()) {
    throw new AppError(
      'E_SLUG',
      `cannot pack ${root}: expected the built app's directory, got a file`,
    )
  }
  const entries: TreeEntry[] = []
  await walk(root, '', entries)
  const links = new Map<string, string>()
  for (const e of entries) if (e.target !== undefined) links.set(e.path, e.target)
  for (const [path, target] of links) {
    const verdict = resolveLink(path, links)
    if (verdict === 'inside') continue
    throw new AppError(
      'E_SLUG',
      `cannot pack ${path} in ${root}: it is a symlink to "${target}", which ${verdict === 'loop' ? 'loops and never resolves' : 'leads outside the app'}; the app is unpacked elsewhere on each node, so links must stay inside it: make the link relative to a path inside the app (e.g. ln -sr), or copy what it points to into the app`,
    )
  }
  return entries
}
