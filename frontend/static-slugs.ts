/**
 * @module Static sites in the master's route table: a Dir target with a `slug` serves a
 * release's document root from that release's slug. Before the frontend applies a table, each
 * such slug is fetched from the master's slug store (lib/slug/fetch.ts) and unpacked (with every
 * entry checked, lib/slug/unpack.ts) into DIR/<sha256>/, and the target becomes a plain Dir
 * target whose base is there:
 *
 *   { dir, base "public/", slug { app, sha256, size, release } }
 *       --fetch DIR/<sha>.sqfs, unpack DIR/<sha>/, delete the .sqfs-->
 *   { dir, base "DIR/<sha>/public/" }
 *
 * A slug that cannot be had (the store is away, the slug is bad) leaves its app on the files it
 * served before, or unrouted (404) when it had none, and `retry` is called after a backoff so
 * the latest table is applied again. Slugs no site has used for 10 minutes are removed. The
 * frontend reports each static app as serving the
 * release whose files it serves, which is what a push waits for.
 */
import { rm } from 'node:fs/promises'
import { join } from 'node:path'
import { masterEndpoints } from '../lib/cluster/control-client.js'
import type { DirTarget, RouteTable, Target } from '../lib/config/routes.js'
import type { Logger } from '../lib/log.js'
import type { AppStatus } from '../lib/protocol/frontend-report.js'
import { fetchSlug } from '../lib/slug/fetch.js'
import { pruneUnpacked } from '../lib/slug/prune.js'
import { unpackSlug } from '../lib/slug/unpack.js'

export interface StaticSlugsOptions {
  /** The master's control endpoint, for its slug store's address. */
  master: string
  /** Where slugs are unpacked. */
  dir: string
  log: Logger
  /** Called after a failed slug's backoff: apply the latest table again. */
  retry(): void
}

export interface StaticSlugs {
  /** The table with every slug Dir target made a plain one (fetching what it must first). */
  resolve(table: RouteTable): Promise<RouteTable>
  /** Each static app's release being served, in the deploy report's shape. */
  status(): Record<string, AppStatus>
  close(): void
}

const FETCH_TIMEOUT_MS = 10_000
const RETRY_MS = { first: 500, max: 30_000 }
/** A site's earlier files stay this long (requests still streaming them, a quick rollback). */
const PRUNE_MS = 10 * 60_000

export function staticSlugs(opts: StaticSlugsOptions): StaticSlugs {
  const { log } = opts
  /** The target each app was last served with, and which release that is. */
  const served = new Map<string, { target: DirTarget; release: number; sha256: string }>()
  /** When each unpacked slug was first seen unused (lib/slug/prune.ts). */
  const unusedSince = new Map<string, number>()
  const unpacking = new Map<string, Promise<string>>()
  let slugStore: string | undefined
  let retryTimer: NodeJS.Timeout | undefined
  let retryMs = RETRY_MS.first
  let closed = false
  let failed = false

  async function unpacked(sha256: string, size: number): Promise<string> {
    slugStore ??= (await masterEndpoints(opts.master, { timeoutMs: 5000 })).slugs
    const dest = join(opts.dir, sha256)
    const file = await fetchSlug(
      { endpoint: slugStore, sha256, size, dir: opts.dir, timeoutMs: FETCH_TIMEOUT_MS },
      log,
    )
    await unpackSlug(file, dest)
    await rm(file, { force: true })
    log.info({ sha256, dir: dest }, 'static slug unpacked')
    return dest
  }

  /** One unpack per slug at a time, however many tables ask for it meanwhile. */
  function once(sha256: string, size: number): Promise<string> {
    let p = unpacking.get(sha256)
    if (!p) {
      p = unpacked(sha256, size).finally(() => unpacking.delete(sha256))
      unpacking.set(sha256, p)
    }
    return p
  }

  async function resolveTarget(t: DirTarget): Promise<DirTarget | undefined> {
    const slug = t.slug!
    try {
      const root = await once(slug.sha256, slug.size)
      const { slug: _, ...plain } = t
      const target: DirTarget = { ...plain, base: join(root, t.base, '/') }
      served.set(slug.app, { target, release: slug.release, sha256: slug.sha256 })
      return target
    } catch (err) {
      failed = true
      const before = served.get(slug.app)
      log.error(
        { app: slug.app, release: slug.release, sha256: slug.sha256, err: (err as Error).message },
        before
          ? `static site slug not available, still serving v${before.release}`
          : 'static site slug not available, not served yet',
      )
      scheduleRetry()
      return before?.target
    }
  }

  function scheduleRetry(): void {
    if (closed || retryTimer) return
    retryTimer = setTimeout(() => {
      retryTimer = undefined
      opts.retry()
    }, retryMs)
    retryTimer.unref()
    retryMs = Math.min(retryMs * 2, RETRY_MS.max)
  }

  return {
    async resolve(table) {
      failed = false
      const apps = new Set<string>()
      const servers = await Promise.all(
        table.servers.map(async (server) => ({
          ...server,
          hosts: await Promise.all(
            server.hosts.map(async (host) => {
              const routes: Record<string, Target> = {}
              for (const [route, t] of Object.entries(host.routes)) {
                if (t.kind !== 'dir' || t.slug === undefined) {
                  routes[route] = t
                  continue
                }
                apps.add(t.slug.app)
                const resolved = await resolveTarget(t)
                if (resolved) routes[route] = resolved
              }
              return { ...host, routes }
            }),
          ),
        })),
      )
      if (!failed) retryMs = RETRY_MS.first
      // An app that is no longer a static site (or gone) is not reported as one.
      for (const app of served.keys()) if (!apps.has(app)) served.delete(app)
      const inUse = new Set([...served.values()].map((s) => s.sha256))
      await pruneUnpacked({
        dir: opts.dir,
        inUse,
        unusedMs: PRUNE_MS,
        tracker: unusedSince,
        log,
      }).catch((err: unknown) =>
        log.warn({ err: (err as Error).message }, 'static slug prune failed'),
      )
      return { ...table, servers }
    },
    status() {
      const out: Record<string, AppStatus> = {}
      for (const [app, { release }] of served) {
        out[app] = {
          serving: release,
          releases: [{ release, ready: true, inFlight: 0, drained: false }],
        }
      }
      return out
    },
    close() {
      closed = true
      clearTimeout(retryTimer)
    },
  }
}
