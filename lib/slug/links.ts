/**
 * @module Where a symlink in a slug leads once the slug is unpacked somewhere, worked out on paper
 * from the tree's own symlinks, the way the kernel walks a path:
 *
 *   start in the link's directory; for each component of the target:
 *     ""  "."   stay
 *     ".."      go up; going up from the slug's root leaves the slug
 *     NAME      go down; if that path is itself a symlink, splice its target in (at most 40 hops)
 *   an absolute target leaves the slug (it names the node's file system, not the app's)
 *
 * A purely lexical check is not enough: with `a/b/c -> ../..`, the link `x -> a/b/c/..` looks
 * like `a/b` but really is the root's parent. A path through a missing entry is treated as a
 * directory, which is stricter than the kernel (that would fail with ENOENT), never looser.
 */

/** Linux's MAXSYMLINKS: beyond this many hops the kernel gives ELOOP. */
const MAX_HOPS = 40

/** 'inside' the slug, 'outside' it, or a 'loop' that never resolves. */
export type LinkVerdict = 'inside' | 'outside' | 'loop'

const parts = (path: string): string[] => path.split('/').filter((p) => p !== '' && p !== '.')

/**
 * Resolves the symlink at `path` (relative to the slug's root, '/'-separated, no '.' or '..'
 * components) through the tree's symlinks, `links` (path -> target, `path` among them).
 */
export function resolveLink(path: string, links: ReadonlyMap<string, string>): LinkVerdict {
  const target = links.get(path)
  if (target === undefined) throw new Error(`resolveLink: ${path} is not among the links`)
  if (target.startsWith('/')) return 'outside'
  const here = parts(path).slice(0, -1)
  // Components still to walk, the next one last, so splicing a target in is a push.
  const todo = parts(target).reverse()
  let hops = 0
  for (let part = todo.pop(); part !== undefined; part = todo.pop()) {
    if (part === '..') {
      if (here.length === 0) return 'outside'
      here.pop()
      continue
    }
    here.push(part)
    const next = links.get(here.join('/'))
    if (next === undefined) continue
    if (++hops > MAX_HOPS) return 'loop'
    if (next.startsWith('/')) return 'outside'
    here.pop()
    todo.push(...parts(next).reverse())
  }
  return 'inside'
}
