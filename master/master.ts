/**
 * @module startMaster: four sockets around the desired state.
 *
 *   control ROUTER <-REQ-- bareku command, git hook   each request -> runCommand -> one reply
 *   publish XPUB   --SUB-> clients ("NODE\0"), frontends ("frontend\0")
 *                  at once on each subscription, on every change, and every REPUBLISH_MS
 *   stats   PULL   <-PUSH- clients' reports: a node appears (up) when it first reports and is
 *                  marked down after NODE_TTL_MS of silence; its instances then move.
 *                  Also frontends' deploy status (lib/protocol/frontend-report.ts): it decides
 *                  when a retained earlier release may stop (plan.ts)
 *   slugs   ROUTER <-DEALER- clients fetching slug chunks (slugs.ts)
 *   logs    ROUTER <-DEALER- clients shipping log lines (logs.ts); new lines go out on the
 *                   XPUB as "logs.APP" for `bareku logs -f`
 *
 * Every change of the state (a command, a node up or down) goes through one queue: a draft is
 * changed, placed (plan.ts), saved atomically, and only then becomes the state and is published;
 * a failed save leaves the state as it was and the command gets the error. After a restart,
 * every node keeps its status for one TTL (its clock starts at the start), so a master restart
 * moves nothing.
 */
import { createHash } from 'node:crypto'
import { mkdirSync } from 'node:fs'
import { Pull, Router, XPublisher, type Socket } from 'zeromq'
import { AppError, isAppError } from '../lib/errors.js'
import type { Logger } from '../lib/log.js'
import { encodeControlReply, parseControlRequest } from '../lib/protocol/control.js'
import { encodePublication, FRONTEND_TOPIC, type HostList } from '../lib/protocol/host-list.js'
import { isLogTopic } from '../lib/protocol/log-batch.js'
import { parseNodeReport, type NodeReport } from '../lib/protocol/node-report.js'
import {
  isFrontendReport,
  parseFrontendReport,
  type FrontendReport,
} from '../lib/protocol/frontend-report.js'
import type { MasterSettings } from './config.js'
import { runCommand, type Endpoints } from './control.js'
import { logDir, openLogStore, serveLogs, type LogStore } from './logs.js'
import { plan, type Observed, type Plan } from './plan.js'
import { serveChunk } from './slugs.js'
import { openState, plainKey, saveState, stateFile, type State } from './state.js'

export interface Master {
  endpoints: Endpoints
  close(): Promise<void>
}

const TOPIC = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/

async function bind(sock: Socket, endpoint: string, what: string): Promise<string> {
  try {
    await sock.bind(endpoint)
  } catch (err) {
    throw new AppError(
      'E_MASTER',
      `cannot bind the ${what} socket to ${endpoint}: ${(err as Error).message}; is another master running, or is the port taken? (set BAREKU_MASTER_${what.toUpperCase()})`,
    )
  }
  return sock.lastEndpoint ?? endpoint
}

/** Splits a ROUTER message into its envelope (identity, and the REQ delimiter if any) and body. */
function envelope(frames: Buffer[]): { head: Buffer[]; body: Buffer } {
  const [id = Buffer.alloc(0), ...rest] = frames
  if (rest.length >= 2 && rest[0]!.length === 0) return { head: [id, rest[0]!], body: rest[1]! }
  return { head: [id], body: rest[0] ?? Buffer.alloc(0) }
}

export async function startMaster(settings: MasterSettings, log: Logger): Promise<Master> {
  const file = stateFile(settings.home)
  mkdirSync(settings.slugDir, { recursive: true })
  let state: State = await openState(file)
  const started = Date.now()
  const lastSeen = new Map(Object.keys(state.nodes).map((n) => [n, started]))
  const reports = new Map<string, NodeReport>()
  let current: Plan = plan(state, settings)
  let seq = 0
  let closed = false

  /** What the nodes last reported: ports in use, and ports of ready instances by slot. */
  const observed = (): Observed => {
    const busyPorts: Record<string, number[]> = {}
    const readyPorts: Record<string, Record<string, number[]>> = {}
    for (const [node, r] of reports) {
      busyPorts[node] = r.instances.flatMap((i) => (i.port === undefined ? [] : [i.port]))
      const ready = new Map<string, number[]>()
      for (const i of r.instances) {
        if (i.state !== 'ready' || i.port === undefined) continue
        const slot = i.name.split('~')[0]!
        ready.set(
          slot,
          [...(ready.get(slot) ?? []), i.port].sort((a, b) => a - b),
        )
      }
      readyPorts[node] = Object.fromEntries(ready)
    }
    const lf = lastFrontend
    const fresh = lf !== undefined && Date.now() - lf.at <= settings.nodeTtlMs
    return { busyPorts, readyPorts, ...(fresh ? { frontend: lf.report.apps } : {}) }
  }
  // The last deploy status a frontend sent, and when it came.
  let lastFrontend: { report: FrontendReport; at: number } | undefined
  const observedOf = (r: NodeReport): string =>
    JSON.stringify(r.instances.map((i) => [i.name, i.state === 'ready', i.port ?? 0]).sort())
  const lastObserved = new Map<string, string>()

  // One change at a time: commands, reports and the TTL check all go through here.
  let queue: Promise<unknown> = Promise.resolve()
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const next = queue.then(fn)
    queue = next.catch(() => undefined)
    return next
  }

  const placed = (st: State): string =>
    JSON.stringify([
      st.placement,
      st.nextPort,
      Object.values(st.apps).map((a) => [a.handler, a.handlerPorts, a.retained]),
    ])

  /**
   * Places the draft, saves it (when `changed`, or when placement changed), then makes it the
   * state and publishes what changed.
   */
  const commit = async (draft: State, changed = true): Promise<void> => {
    const p = plan(draft, settings, observed())
    const before = placed(draft)
    draft.placement = p.placement
    draft.nextPort = p.nextPort
    for (const app of Object.values(draft.apps)) {
      // Handler ports are per release now (plan.ts); the per-app field is not carried on.
      delete app.handler
      const h = p.handlers[app.name]
      if (h) app.handlerPorts = h
      else delete app.handlerPorts
      const kept = p.retained[app.name]
      if (kept) app.retained = kept
      else delete app.retained
    }
    for (const node of Object.values(draft.nodes)) {
      node.lastSeen = Math.max(node.lastSeen, lastSeen.get(node.name) ?? 0)
    }
    if (changed || placed(draft) !== before) await saveState(file, draft)
    state = draft
    current = p
    publishChanged()
  }

  const pub = new XPublisher({ linger: 0 })
  pub.verbosity = 'allSubs'
  const control = new Router({ linger: 0 })
  const stats = new Pull({ linger: 0 })
  const slugs = new Router({ linger: 0 })
  const logs = new Router({ linger: 0 })
  const sockets = [pub, control, stats, slugs, logs]
  let endpoints: Endpoints
  try {
    endpoints = {
      control: await bind(control, settings.control, 'control'),
      publish: await bind(pub, settings.publish, 'publish'),
      stats: await bind(stats, settings.stats, 'stats'),
      slugs: await bind(slugs, settings.slugs, 'slugs'),
      logs: await bind(logs, settings.logs, 'logs'),
    }
  } catch (err) {
    for (const s of sockets) s.close()
    throw err
  }
  // ---- publication
  const lastBody = new Map<string, string>()
  let sending: Promise<unknown> = Promise.resolve()
  const bodyOf = (topic: string): HostList | Plan['routes'] =>
    topic === FRONTEND_TOPIC
      ? current.routes
      : (current.hostLists[topic] ?? { host: topic, instances: [], slugs: {} })
  const publish = (topic: string): void => {
    if (closed || !TOPIC.test(topic)) return
    const body = bodyOf(topic)
    const frames = encodePublication(topic, state.epoch, ++seq, body)
    lastBody.set(topic, createHash('sha256').update(frames[2]).digest('hex'))
    log.debug({ topic, seq }, 'publish')
    sending = sending
      .then(() => pub.send(frames))
      .catch((err: unknown) => {
        if (!closed) log.warn({ topic, err: (err as Error).message }, 'publication not sent')
      })
  }
  // Topics someone subscribed to count too: a node hears its (empty) list before it reports.
  const subscribed = new Set<string>()
  const topics = (): string[] => [
    ...new Set([FRONTEND_TOPIC, ...Object.keys(state.nodes).sort(), ...subscribed]),
  ]
  function publishChanged(): void {
    for (const topic of topics()) {
      const body = JSON.stringify(bodyOf(topic))
      if (lastBody.get(topic) !== createHash('sha256').update(body).digest('hex')) publish(topic)
    }
  }
  const publishLoop = async (): Promise<void> => {
    for await (const [msg] of pub) {
      // 1 = subscribe, 0 = the last subscriber of that prefix left; anything else is ignored.
      if (msg === undefined || msg.length === 0 || msg[0]! > 1) continue
      const prefix = msg.subarray(1).toString('utf8')
      const topic = prefix.endsWith('\0') ? prefix.slice(0, -1) : undefined
      if (msg[0] === 0) {
        if (topic !== undefined) subscribed.delete(topic)
      } else if (prefix === '') {
        topics().forEach(publish)
      } else if (topic !== undefined && TOPIC.test(topic) && !isLogTopic(topic)) {
        subscribed.add(topic)
        publish(topic)
      }
    }
  }

  // ---- node reports and liveness
  const onReport = async (r: NodeReport): Promise<void> => {
    const now = Date.now()
    reports.set(r.node, r)
    lastSeen.set(r.node, now)
    const known = Object.hasOwn(state.nodes, r.node) ? state.nodes[r.node] : undefined
    if (known?.status === 'up' && known.addr === r.addr && known.capacity === r.capacity) {
      // Readiness moves web routes (cutover, plan.ts): publish when it changed.
      const seen = observedOf(r)
      if (lastObserved.get(r.node) === seen) return
      lastObserved.set(r.node, seen)
      replanSoon()
      return
    }
    lastObserved.set(r.node, observedOf(r))
    const draft = structuredClone(state)
    draft.nodes[r.node] = {
      name: r.node,
      addr: r.addr,
      capacity: r.capacity,
      lastSeen: now,
      status: 'up',
    }
    await commit(draft)
    log.info(
      { node: r.node, addr: r.addr, capacity: r.capacity },
      known === undefined ? 'node joined' : known.status === 'down' ? 'node up' : 'node changed',
    )
  }
  /**
   * What nodes observe changed: plan again once the reports already received are in. During a
   * scale-up every node's report changes at about the same time; one plan for all of them, not
   * one each (at 100 nodes one plan and publication takes about 13 ms).
   */
  let replanning = false
  const replanSoon = (): void => {
    if (replanning) return
    replanning = true
    setImmediate(() => {
      serial(async () => {
        replanning = false
        if (!closed) await commit(structuredClone(state), false)
      }).catch((err: unknown) => {
        log.error({ err: (err as Error).message }, 'plan after node reports failed')
      })
    })
  }
  const onFrontendReport = async (r: FrontendReport): Promise<void> => {
    const before = lastFrontend && JSON.stringify(lastFrontend.report.apps)
    const wasFresh = lastFrontend && Date.now() - lastFrontend.at <= settings.nodeTtlMs
    lastFrontend = { report: r, at: Date.now() }
    // A change of what it says (or its return) may let a retained release go.
    if (before !== JSON.stringify(r.apps) || !wasFresh) {
      await commit(structuredClone(state), false)
    }
  }
  const statsLoop = async (): Promise<void> => {
    for await (const frames of stats) {
      if (frames.length === 1 && isFrontendReport(frames[0]!)) {
        let fr: FrontendReport
        try {
          fr = parseFrontendReport(frames[0]!)
        } catch (err) {
          log.warn({ err: (err as Error).message }, 'frontend report dropped')
          continue
        }
        await serial(() => onFrontendReport(fr)).catch((err: unknown) => {
          log.error({ err: (err as Error).message }, 'frontend report not applied')
        })
        continue
      }
      let report: NodeReport
      try {
        if (frames.length !== 1) {
          throw new Error(`a report is one frame, got ${frames.length}`)
        }
        report = parseNodeReport(frames[0]!)
        if (!plainKey(report.node)) {
          throw new Error(`node name "${report.node}" is reserved; set BAREKU_NODE to another`)
        }
      } catch (err) {
        log.warn({ err: (err as Error).message }, 'node report dropped')
        continue
      }
      await serial(() => onReport(report)).catch((err: unknown) => {
        log.error({ node: report.node, err: (err as Error).message }, 'node report not applied')
      })
    }
  }
  const checkNodes = async (): Promise<void> => {
    const now = Date.now()
    const silent = Object.values(state.nodes).filter(
      (n) => n.status === 'up' && now - (lastSeen.get(n.name) ?? started) > settings.nodeTtlMs,
    )
    if (silent.length === 0) return
    const draft = structuredClone(state)
    for (const n of silent) draft.nodes[n.name]!.status = 'down'
    await commit(draft)
    for (const n of silent) {
      log.warn({ node: n.name, ttlMs: settings.nodeTtlMs }, 'node down, its instances move')
    }
  }

  // ---- control API
  const handleControl = async (body: Buffer): Promise<Buffer> => {
    let cmd = '?'
    try {
      const req = parseControlRequest(body)
      cmd = req.cmd
      const outcome = await serial(async () => {
        const draft = structuredClone(state)
        const out = await runCommand(req, {
          state: draft,
          settings,
          endpoints,
          plan: current,
          reports,
          lastSeen,
          now: Date.now(),
        })
        if (out.changed) await commit(draft)
        return out
      })
      if (outcome.changed) log.info({ cmd, app: req.args.app ?? req.args.name }, 'control')
      else log.debug({ cmd }, 'control')
      return encodeControlReply({ result: outcome.result })
    } catch (err) {
      if (isAppError(err)) log.info({ cmd, code: err.code, err: err.message }, 'control refused')
      else log.error({ cmd, err: (err as Error).message }, 'control failed')
      return encodeControlReply({ error: err })
    }
  }
  const controlLoop = async (): Promise<void> => {
    for await (const frames of control) {
      const { head, body } = envelope(frames)
      await control.send([...head, await handleControl(body)])
    }
  }

  // ---- slug store
  const slugLoop = async (): Promise<void> => {
    for await (const frames of slugs) {
      const { head, body } = envelope(frames)
      let reply: Buffer[]
      try {
        reply = await serveChunk(settings.slugDir, body)
      } catch (err) {
        log.error({ err: (err as Error).message }, 'slug chunk failed')
        continue
      }
      await slugs.send([...head, ...reply])
    }
  }

  // ---- logs: stored, acked, and published as they come (never through the state queue)
  const publishLines = (frames: Buffer[]): void => {
    if (closed) return
    sending = sending
      .then(() => pub.send(frames))
      .catch((err: unknown) => {
        if (!closed) log.warn({ err: (err as Error).message }, 'log lines not published')
      })
  }
  let logStore: LogStore
  try {
    logStore = await openLogStore(logDir(settings.home), settings.logMaxBytes, log)
    // The placement of the loaded state, with today's settings (e.g. a changed port range).
    await serial(() => commit(structuredClone(state)))
  } catch (err) {
    for (const s of sockets) s.close()
    throw err
  }
  const logLoop = () => serveLogs(logs, logStore, publishLines, log)
  const loops = [publishLoop, statsLoop, controlLoop, slugLoop, logLoop].map((loop) =>
    loop().catch((err: unknown) => {
      if (!closed) log.error({ err: (err as Error).message }, 'socket loop stopped')
    }),
  )
  const heartbeat = setInterval(() => topics().forEach(publish), settings.republishMs)
  const ttlTimer = setInterval(
    () => {
      serial(checkNodes).catch((err: unknown) => {
        log.error({ err: (err as Error).message }, 'node check failed')
      })
    },
    Math.max(10, Math.min(1000, Math.floor(settings.nodeTtlMs / 4))),
  )
  log.info(
    { epoch: state.epoch, apps: Object.keys(state.apps).length, file, slugDir: settings.slugDir },
    'state loaded',
  )

  return {
    endpoints,
    async close() {
      if (closed) return
      closed = true
      clearInterval(heartbeat)
      clearInterval(ttlTimer)
      await queue
      for (const s of sockets) s.close()
      await Promise.all(loops)
    },
  }
}
