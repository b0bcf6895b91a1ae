/**
 * @module startClient: one per node, between the master and the worker.
 *
 *   BAREKU_MASTER --REQ "endpoints"--> { publish, stats, slugs }   retried with backoff, forever;
 *                                                                   again when the lists stop coming
 *   publish --SUB "NODE\0"--> host list --(newest pending only)--> apply:
 *       slugs: unpacked/<sha>/ there? else fetch <sha>.sqfs (lib/slug/fetch.ts) and unpackSlug
 *       render (render.ts) -> worker.json, replaced atomically only when its instances change
 *       unpacked slugs no instance uses any more: removed after BAREKU_SLUG_PRUNE_MS
 *   stats <--PUSH (sendTimeout 0, linger 0, immediate)-- node report every REPORT_MS and soon
 *       after a change (worker.json applied, errors, run/status.json rewritten by the worker)
 *   logs  <--DEALER-- the instances' log lines (logs.ts), when the master names a logs endpoint
 *
 * A publication is applied only if it is newer (epoch, seq) than the last one seen, starting
 * from the epoch and seq in worker.json, so a restarted client never goes back. A republish of
 * the same content leaves worker.json alone (its epoch/seq stay those of the list that last
 * changed it; reports carry the newest applied). An app whose slug fails or whose spec is refused
 * keeps its instances from worker.json (render.ts); the reason is logged at error once and sent
 * in every report while it lasts; a failed slug is retried with a backoff. A dead master blocks
 * nothing: reports are dropped, worker.json stays, the sockets reconnect by themselves, and a
 * restarted master (higher epoch) is followed.
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { freemem, loadavg, totalmem } from 'node:os'
import { basename, dirname, join, resolve } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { watch, type FSWatcher } from 'chokidar'
import { Push, Subscriber } from 'zeromq'
import { masterEndpoints, type MasterEndpoints } from '../lib/cluster/control-client.js'
import {
  parseWorkerConfig,
  renderWorkerConfig,
  type WorkerConfig,
} from '../lib/config/worker-config.js'
import { isAppError } from '../lib/errors.js'
import { writeFileAtomic } from '../lib/fs-atomic.js'
import type { Logger } from '../lib/log.js'
import {
  isNewer,
  parseHostList,
  parsePublication,
  topicFrame,
  type HostList,
  type Publication,
  type PublicationMeta,
} from '../lib/protocol/host-list.js'
import {
  encodeNodeReport,
  parseNodeReport,
  type InstanceStatus,
  type NodeReport,
} from '../lib/protocol/node-report.js'
import { pruneUnpacked } from '../lib/slug/prune.js'
import { unpackSlug } from '../lib/slug/unpack.js'
import type { ClientSettings } from './config.js'
import { startLogShipper } from './logs.js'
import { renderHost } from './render.js'
import { fetchSlug } from '../lib/slug/fetch.js'

export interface Client {
  endpoints: { master: string; workerConfig: string; home: string }
  /** Stops following the master; worker.json stays, so the node keeps running what it has. */
  close(): Promise<void>
}

/** How long one `endpoints` request waits for the master. */
const CONTROL_TIMEOUT_MS = 3000
/** Backoff between `endpoints` attempts. */
const DISCOVER_BACKOFF = { initialMs: 200, maxMs: 5000 }
/** The longest wait for one slug chunk. */
const FETCH_TIMEOUT_MS = 30_000
/** Backoff before a failed slug is tried again: 2 s doubling to 5 min. */
const SLUG_BACKOFF = { initialMs: 2000, maxMs: 300_000 }
/** At most this many errors go in a report (the contract's limit). */
const MAX_REPORT_ERRORS = 20

interface Current {
  config?: WorkerConfig
  text?: string
}

interface SlugFailure {
  reason: string
  count: number
  retryAt: number
}

function readCurrent(path: string, log: Logger): Current {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      log.warn({ file: path, err: (err as Error).message }, 'worker config unreadable')
    }
    return {}
  }
  try {
    return { config: parseWorkerConfig(text), text }
  } catch (err) {
    log.warn({ file: path, reason: (err as Error).message }, 'worker config refused')
    return { text }
  }
}

function readStatus(path: string, log: Logger): InstanceStatus[] {
  let v: unknown
  try {
    v = JSON.parse(readFileSync(path, 'utf8'))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      log.debug({ file: path, err: (err as Error).message }, 'status unreadable')
    }
    return []
  }
  const list = (v as { instances?: unknown } | null)?.instances
  if (!Array.isArray(list)) return []
  const entries = list.filter(
    (x): x is Record<string, unknown> => typeof x === 'object' && x !== null,
  )
  return entries.map((x) => {
    const s: InstanceStatus = {
      name: x.name as string,
      app: x.app as string,
      type: x.type as string,
      release: x.release as number,
      state: x.state as InstanceStatus['state'],
      restarts: x.restarts as number,
    }
    if (x.pid !== undefined) s.pid = x.pid as number
    if (x.port !== undefined) s.port = x.port as number
    return s
  })
}

const meta = (c: WorkerConfig | undefined): PublicationMeta | undefined =>
  c ? { epoch: c.epoch, seq: c.seq, sha256: '' } : undefined

/**
 * Starts following the master at settings.master. Returns at once: finding the master, fetching
 * and reporting all happen in the background, retried for as long as the client runs.
 */
export async function startClient(settings: ClientSettings, log: Logger): Promise<Client> {
  const { node, home } = settings
  const workerConfig = resolve(settings.workerConfig)
  const slugDir = join(home, 'slugs')
  const unpackedDir = join(slugDir, 'unpacked')
  const runDir = join(home, 'run')
  const statusFile = join(runDir, 'status.json')
  for (const dir of [unpackedDir, runDir, dirname(workerConfig)])
    mkdirSync(dir, { recursive: true })

  const start = readCurrent(workerConfig, log)
  /** The newest publication taken for applying; older ones are ignored. */
  let seen = meta(start.config)
  let applied: { epoch: number; seq: number } | null = start.config
    ? { epoch: start.config.epoch, seq: start.config.seq }
    : null
  let errors: string[] = []
  let pending: Publication | undefined
  let applying: Promise<void> | undefined
  const slugFailures = new Map<string, SlugFailure>()
  let endpoints: MasterEndpoints | undefined
  let discovering: Promise<void> | undefined
  let lastHeard = Date.now()
  let closed = false
  const stopping = new AbortController()
  const staleMs = Math.max(2000, 10 * settings.reportMs)

  const sub = new Subscriber({ linger: 0 })
  // immediate: nothing is queued for a master that is not connected, so a dead master costs a
  // dropped report, never a backlog of stale ones.
  const push = new Push({ linger: 0, sendTimeout: 0, immediate: true, sendHighWaterMark: 16 })
  sub.subscribe(topicFrame(node))
  const logShipper = startLogShipper({ home, node, workerConfig }, log)

  // --- finding the master -------------------------------------------------------------------

  function connectTo(next: MasterEndpoints): void {
    logShipper.connect(next.logs)
    const prev = endpoints
    if (prev && prev.publish === next.publish && prev.stats === next.stats) {
      endpoints = next
      return
    }
    if (prev) {
      for (const [sock, endpoint] of [
        [sub, prev.publish],
        [push, prev.stats],
      ] as const) {
        try {
          sock.disconnect(endpoint)
        } catch {
          // not connected (any more): nothing to undo
        }
      }
    }
    sub.connect(next.publish)
    push.connect(next.stats)
    endpoints = next
    lastHeard = Date.now()
    log.info(
      { master: settings.master, publish: next.publish, stats: next.stats, slugs: next.slugs },
      prev ? 'master endpoints changed' : 'master found',
    )
    reportSoon()
  }

  /** Asks for the endpoints until the master answers; logs each new kind of failure once. */
  async function discover(): Promise<void> {
    let wait = DISCOVER_BACKOFF.initialMs
    let lastFailure: string | undefined
    while (!closed) {
      try {
        const next = await masterEndpoints(settings.master, { timeoutMs: CONTROL_TIMEOUT_MS })
        if (!closed) connectTo(next)
        return
      } catch (err) {
        const reason = (err as Error).message
        if (reason !== lastFailure) {
          lastFailure = reason
          log.warn(
            { master: settings.master, code: (err as { code?: string }).code, reason },
            'master not reachable, retrying',
          )
        }
      }
      try {
        await delay(wait, undefined, { signal: stopping.signal })
      } catch {
        return
      }
      wait = Math.min(wait * 2, DISCOVER_BACKOFF.maxMs)
    }
  }

  function rediscover(): void {
    if (discovering || closed) return
    discovering = discover().finally(() => {
      discovering = undefined
    })
  }

  // --- host lists ---------------------------------------------------------------------------

  let warnedEpoch: number | undefined
  function onPublication(frames: Buffer[]): void {
    lastHeard = Date.now()
    let pub: Publication
    try {
      pub = parsePublication(frames)
    } catch (err) {
      log.warn(
        { code: (err as { code?: string }).code, reason: (err as Error).message },
        'publication dropped',
      )
      return
    }
    if (pub.topic !== node) {
      log.warn({ topic: pub.topic }, 'publication for another topic dropped')
      return
    }
    if (!isNewer(pub.meta, seen)) {
      if (seen && pub.meta.epoch < seen.epoch && warnedEpoch !== pub.meta.epoch) {
        warnedEpoch = pub.meta.epoch
        log.warn(
          { epoch: pub.meta.epoch, applied: seen.epoch },
          'host lists from an older master epoch ignored (was the master state reset?)',
        )
      }
      log.debug({ epoch: pub.meta.epoch, seq: pub.meta.seq }, 'older publication ignored')
      return
    }
    seen = pub.meta
    pending = pub
    kick()
  }

  function kick(): void {
    if (applying) return
    applying = (async () => {
      while (pending && !closed) {
        const pub = pending
        pending = undefined
        try {
          await apply(pub)
        } catch (err) {
          if (!closed) log.error({ err }, 'host list not applied')
        }
      }
    })().finally(() => {
      applying = undefined
    })
  }

  /** Makes sure every slug the list uses is unpacked; returns the dirs and the failures. */
  async function ensureSlugs(list: HostList) {
    const dirs = new Map<string, string>()
    const slugErrors = new Map<string, string>()
    for (const sha of [...new Set(list.instances.map((i) => i.slug))].sort()) {
      const dest = join(unpackedDir, sha)
      if (existsSync(dest)) {
        dirs.set(sha, dest)
        continue
      }
      const failure = slugFailures.get(sha)
      if (failure && Date.now() < failure.retryAt) {
        slugErrors.set(sha, failure.reason)
        continue
      }
      if (!endpoints) {
        slugErrors.set(sha, 'the slug store is not known yet (the master has not answered)')
        continue
      }
      try {
        const file = await fetchSlug(
          {
            endpoint: endpoints.slugs,
            sha256: sha,
            size: list.slugs[sha]!.size,
            dir: slugDir,
            timeoutMs: FETCH_TIMEOUT_MS,
            signal: stopping.signal,
          },
          log,
        )
        await unpackSlug(file, dest)
        log.info({ sha256: sha, dir: dest }, 'slug unpacked')
        slugFailures.delete(sha)
        dirs.set(sha, dest)
      } catch (err) {
        if (closed) throw err
        if (!isAppError(err)) throw err
        const count = (failure?.count ?? 0) + 1
        const backoff = Math.min(
          SLUG_BACKOFF.initialMs * 2 ** Math.min(count - 1, 20),
          SLUG_BACKOFF.maxMs,
        )
        slugFailures.set(sha, { reason: err.message, count, retryAt: Date.now() + backoff })
        slugErrors.set(sha, err.message)
        log.debug({ sha256: sha, retryInMs: backoff }, 'slug failed')
      }
    }
    return { dirs, slugErrors }
  }

  /** When each unpacked slug was first seen unused (lib/slug/prune.ts). */
  const unusedSince = new Map<string, number>()
  let logged = new Set<string>()
  function setErrors(next: string[]): void {
    for (const e of next)
      if (!logged.has(e)) log.error({ reason: e }, 'host list not fully applied')
    logged = new Set(next)
    errors = next
  }

  async function apply(pub: Publication): Promise<void> {
    const { epoch, seq } = pub.meta
    let list: HostList
    try {
      list = parseHostList(pub.body, node)
    } catch (err) {
      if (!isAppError(err)) throw err
      setErrors([`host list epoch ${epoch} seq ${seq} refused: ${err.message}`])
      reportSoon()
      return
    }
    const { dirs, slugErrors } = await ensureSlugs(list)
    if (closed) return
    const current = readCurrent(workerConfig, log)
    const r = renderHost({
      list,
      meta: pub.meta,
      slugDirs: dirs,
      slugErrors,
      current: current.config,
    })
    const text = renderWorkerConfig(r.config)
    // The same instances under the file's own epoch/seq: a republish changes nothing on disk.
    const unchanged =
      current.config !== undefined &&
      renderWorkerConfig({ ...r.config, epoch: current.config.epoch, seq: current.config.seq }) ===
        current.text
    if (!unchanged) {
      await writeFileAtomic(workerConfig, text)
      log.info(
        { file: workerConfig, epoch, seq, instances: r.config.instances.length },
        'worker config written',
      )
    } else {
      log.debug({ epoch, seq }, 'worker config unchanged')
    }
    applied = { epoch, seq }
    setErrors(r.errors)
    reportSoon()
    await pruneUnpacked({
      dir: unpackedDir,
      inUse: new Set(r.config.instances.map((i) => basename(i.cwd))),
      unusedMs: settings.slugPruneMs,
      tracker: unusedSince,
      log,
    }).catch((err: unknown) => log.warn({ err: (err as Error).message }, 'slug prune failed'))
  }

  // --- reports ------------------------------------------------------------------------------

  let sending = false
  /** When reports started to fail; a connection still being set up is not worth a warning. */
  let failingSince: number | undefined
  let warned = false
  let soon: NodeJS.Timeout | undefined

  function report(): NodeReport {
    const [l1 = 0, l5 = 0, l15 = 0] = loadavg()
    return {
      node,
      addr: settings.addr,
      time: Date.now(),
      applied,
      capacity: settings.capacity,
      load: [l1, l5, l15],
      mem: { total: totalmem(), free: freemem() },
      instances: readStatus(statusFile, log),
      errors: errors.slice(-MAX_REPORT_ERRORS),
    }
  }

  async function sendReport(): Promise<void> {
    if (!endpoints || sending || closed) return
    sending = true
    try {
      let frame = encodeNodeReport(report())
      try {
        parseNodeReport(frame)
      } catch (err) {
        // The master would drop the whole report: send the heartbeat without the instances.
        log.warn({ reason: (err as Error).message, file: statusFile }, 'bad instance status')
        frame = encodeNodeReport({ ...report(), instances: [] })
      }
      await push.send(frame)
      if (warned) log.info({ stats: endpoints.stats }, 'reports delivered again')
      failingSince = undefined
      warned = false
    } catch (err) {
      if (closed) return
      const now = Date.now()
      failingSince ??= now
      if (!warned && now - failingSince >= Math.max(1000, 2 * settings.reportMs)) {
        warned = true
        log.warn(
          { stats: endpoints.stats, code: (err as { code?: string }).code },
          'report dropped: master not connected',
        )
      }
      log.debug({ code: (err as { code?: string }).code }, 'report not sent')
    } finally {
      sending = false
    }
  }

  function reportSoon(): void {
    if (soon !== undefined || closed) return
    soon = setTimeout(() => {
      soon = undefined
      void sendReport()
    }, 20)
  }

  const ticker = setInterval(() => {
    void sendReport()
    if (Date.now() - lastHeard > staleMs) {
      // The master sends this node's list at least every republish period: silence means it
      // died or moved (a restart on other ports); ask again, ZeroMQ keeps reconnecting meanwhile.
      lastHeard = Date.now()
      log.debug({ staleMs }, 'no host list lately, asking the master for its endpoints')
      rediscover()
    }
  }, settings.reportMs)

  const watcher: FSWatcher = watch(runDir, { depth: 0, ignoreInitial: true })
  watcher.on('all', (_event, path) => {
    if (resolve(path) === statusFile) reportSoon()
  })
  watcher.on('error', (err) => log.warn({ err }, 'status watch error'))
  await new Promise<void>((ready) => watcher.once('ready', ready))

  const receiving = (async () => {
    for await (const frames of sub) onPublication(frames)
  })().catch((err: unknown) => {
    if (!closed) log.error({ err }, 'subscriber failed')
  })

  rediscover()

  return {
    endpoints: { master: settings.master, workerConfig, home },
    async close() {
      if (closed) return
      closed = true
      stopping.abort()
      clearInterval(ticker)
      clearTimeout(soon)
      await watcher.close()
      sub.close()
      push.close()
      await Promise.all([applying, receiving, logShipper.close()])
    },
  }
}
