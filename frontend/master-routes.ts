/**
 * @module Following the master's route table: a SUB to the master's publish endpoint on the
 * `frontend` topic (lib/protocol/host-list.ts). Each newer publication is the whole table; it is
 * applied with Frontend.reload and kept in a cache file, so a frontend restarted while the master
 * is down serves the last table it had. The master being gone changes nothing: the running
 * table stays, ZeroMQ reconnects, and the first publication after a master restart (a higher
 * epoch) wins.
 */
import { readFileSync } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { dirname } from 'node:path'
import { hostname } from 'node:os'
import { Push, Subscriber } from 'zeromq'
import { masterEndpoints } from '../lib/cluster/control-client.js'
import { parseRouteTable, type RouteTable } from '../lib/config/routes.js'
import { writeFileAtomic } from '../lib/fs-atomic.js'
import type { Logger } from '../lib/log.js'
import {
  FRONTEND_TOPIC,
  isNewer,
  parsePublication,
  topicFrame,
  type PublicationMeta,
} from '../lib/protocol/host-list.js'
import { encodeFrontendReport, type AppStatus } from '../lib/protocol/frontend-report.js'

export interface FollowOptions {
  /** The master's control endpoint. */
  master: string
  /** Where the last table is kept between runs. */
  cacheFile: string
  /** Applies a table (Frontend.reload); a throw keeps the previous table. */
  apply(table: RouteTable): Promise<void>
  log: Logger
  /**
   * The deploy status to report to the master's stats endpoint (lib/protocol/frontend-report.ts),
   * every `intervalMs` and on nudge(). Absent: nothing is reported.
   */
  report?: { intervalMs: number; collect(): Record<string, AppStatus> }
}

interface Cached {
  meta: PublicationMeta
  table: unknown
}

/** The cached table, if there is a readable one. */
export function readCachedTable(
  cacheFile: string,
  log: Logger,
): { meta: PublicationMeta; table: RouteTable } | undefined {
  try {
    const c = JSON.parse(readFileSync(cacheFile, 'utf8')) as Cached
    return { meta: c.meta, table: parseRouteTable(c.table) }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      log.warn({ file: cacheFile, err: (err as Error).message }, 'route cache unreadable, ignored')
    }
    return undefined
  }
}

/** Starts following; `last` is the meta of the table already applied (from the cache). */
export function followMaster(
  opts: FollowOptions,
  last?: PublicationMeta,
): { close(): void; ready: Promise<void>; nudge(): void } {
  const { log } = opts
  const sub = new Subscriber({ linger: 0 })
  // Never blocks on a master that is away: a report nobody takes is dropped, the next one says it.
  const push = new Push({ linger: 0, sendTimeout: 0, sendHighWaterMark: 4 })
  let pushing = false
  let reportTimer: NodeJS.Timeout | undefined
  let closed = false
  let seen = last
  const name = `${hostname().replace(/[^A-Za-z0-9_.-]/g, '-') || 'frontend'}-${process.pid}`
  const report = (): void => {
    if (closed || !pushing || !opts.report) return
    const frame = encodeFrontendReport({
      frontend: name,
      time: Date.now(),
      apps: opts.report.collect(),
    })
    push.send(frame).catch(() => {
      // The master is away or slow: the periodic report retries.
    })
  }
  const loop = async (): Promise<void> => {
    let delay = 100
    let endpoints
    for (;;) {
      try {
        endpoints = await masterEndpoints(opts.master, { timeoutMs: 2000 })
        break
      } catch (err) {
        if (closed) return
        if (delay === 100) {
          log.warn({ master: opts.master, err: (err as Error).message }, 'master not reachable yet')
        }
        await new Promise((r) => setTimeout(r, delay))
        delay = Math.min(delay * 2, 5000)
        if (closed) return
      }
    }
    sub.connect(endpoints.publish)
    sub.subscribe(topicFrame(FRONTEND_TOPIC))
    if (opts.report) {
      push.connect(endpoints.stats)
      pushing = true
      reportTimer = setInterval(report, opts.report.intervalMs)
      report()
    }
    log.info({ master: opts.master, publish: endpoints.publish }, 'following the master')
    for await (const frames of sub) {
      let pub
      try {
        pub = parsePublication(frames)
      } catch (err) {
        log.warn({ err: (err as Error).message }, 'route table publication dropped')
        continue
      }
      if (!isNewer(pub.meta, seen)) continue
      const sameTable = seen?.sha256 === pub.meta.sha256
      seen = pub.meta
      if (sameTable) continue
      try {
        await opts.apply(parseRouteTable(pub.body))
      } catch (err) {
        log.error({ err: (err as Error).message }, 'route table refused, keeping the running one')
        continue
      }
      // Cached before it is said applied: a frontend stopped right after still has it.
      try {
        await mkdir(dirname(opts.cacheFile), { recursive: true })
        await writeFileAtomic(opts.cacheFile, JSON.stringify({ meta: pub.meta, table: pub.body }))
      } catch (err) {
        log.warn({ file: opts.cacheFile, err: (err as Error).message }, 'route cache not written')
      }
      log.info({ epoch: pub.meta.epoch, seq: pub.meta.seq }, 'route table applied')
    }
  }
  const ready = loop().catch((err: unknown) => {
    if (!closed) log.error({ err: (err as Error).message }, 'following the master stopped')
  })
  return {
    ready,
    nudge: report,
    close() {
      closed = true
      clearInterval(reportTimer)
      sub.close()
      push.close()
    },
  }
}
