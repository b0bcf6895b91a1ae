/**
 * @module Placement, pure: desired state + node states -> where each instance runs, the host list
 * of every node and the frontend's route table. Same input, same output; no clock, no I/O.
 *
 *   instances  for each app with a current release, each of its process types T with
 *              formation[T] = N > 0: APP.T.1 .. APP.T.N
 *   keep       an instance stays on its node while the node is up (and within its capacity)
 *   place      the others go to up nodes with room: fewest instances of the same APP.T first
 *              (spread, like fleet's Conflicts), then least loaded (used / capacity), then name
 *   web ports  a `web` instance has a $PORT from BAREKU_WEB_PORTS unique on its node; it keeps it
 *              while its node, release and restart number stay, else it gets a new one, never one
 *              in use on the node before (the worker replaces surge-first: old and new run side
 *              by side). A cursor per node walks the range, so a freed port is reused last.
 *   handlers   a type named `handler` or ending in `handler` gets two frontend ports (send, recv)
 *              from BAREKU_HANDLER_PORTS per app AND release: each release has its own handler
 *              endpoints, kept while the release runs (current or retained), then freed
 *   names      web and handler instances run under their release's name in the host lists,
 *              "APP.TYPE.N-vR", so that a new release starts beside the old one instead of
 *              replacing it in place (the worker replaces in place within a release: restarts)
 *   retained   while a frontend reports (observed.frontend), the web and handler instances of
 *              a release that stopped being current stay in the host lists (app.retained) until
 *              the frontend says the current release serves (ready) and that one drained (or is
 *              no longer in its table); then they leave and the worker stops them (SIGTERM,
 *              SIGKILL after its grace). A static site takes over the same way: the old
 *              release's processes stay until the frontend serves the site's files.
 *              With no frontend reporting, nothing is retained.
 *   routes     per app a host NAME.DOMAIN and one per custom domain, route "/" -> a proxy over
 *              its web instances, else its handler endpoints, else (a static site: a release
 *              with a "static" root and no web or handler process) a Dir route over the
 *              release's slug, which the frontend fetches; a default host with no routes.
 *              With retained releases, a `releases` target lists the current and the retained
 *              ones (newest first); the frontend routes to the newest ready one.
 *              A web instance whose new port is not reported ready yet while an older instance
 *              of its slot is ready is routed to the older one (a restart within a release).
 *
 * What cannot be placed (no node up, all full, no free port) is listed in `unplaced` with the
 * reason; it is left out of every host list.
 */
import { createHash } from 'node:crypto'
import type {
  DirTarget,
  HandlerTarget,
  HostSpec,
  ProxyTarget,
  ReleaseTarget,
  RouteTable,
  Target,
} from '../lib/config/routes.js'
import type { AppStatus } from '../lib/protocol/frontend-report.js'
import type { HostInstance, HostList } from '../lib/protocol/host-list.js'
import type { PortRange } from './config.js'
import type { App, HandlerPorts, Release, Retained, Slot, State } from './state.js'

/** The settings placement depends on (a subset of MasterSettings). */
export interface PlanSettings {
  domain: string
  frontendPort: number
  handlerHost: string
  handlerPorts: PortRange
  webPorts: PortRange
}

export interface Unplaced {
  instance: string
  app: string
  type: string
  reason: string
}

export interface Plan {
  placement: Record<string, Slot>
  nextPort: Record<string, number>
  /** Handler ports per app, per release (as a string) that has handler instances. */
  handlers: Record<string, Record<string, HandlerPorts>>
  /** Per app, the earlier releases whose web and handler instances still run. */
  retained: Record<string, Retained[]>
  /** What the frontend last reported of the apps deploying (undefined: no frontend reports). */
  frontend?: Record<string, AppStatus>
  /** One list per known node (a down node's is empty). */
  hostLists: Record<string, HostList>
  routes: RouteTable
  unplaced: Unplaced[]
}

/** The server name the frontend expects in a master's route table. */
export const SERVER = 'bareku'
/** The host that serves requests for no known app (it has no routes: 404). */
export const DEFAULT_HOST = 'default'

/** True for a handler process type: `handler`, or a name ending in `handler`. */
export function isHandlerType(type: string): boolean {
  return type.endsWith('handler')
}

/** Types whose new release starts beside the old one and takes over by connection. */
export function isCutoverType(type: string): boolean {
  return type === 'web' || isHandlerType(type)
}

/** Whether `app` runs instances of `type` and they are cut over release by release. */
function runsCutover(app: App, type: string): boolean {
  return isCutoverType(type) && (Object.hasOwn(app.formation, type) ? app.formation[type]! : 0) > 0
}

/** The name an instance runs under on its node: web and handler ones carry their release. */
export function hostInstanceName(name: string, type: string, release: number): string {
  return isCutoverType(type) ? `${name}-v${release}` : name
}

/** The current release of an app, if it has one. */
export function currentRelease(app: App): Release | undefined {
  return app.current === null ? undefined : app.releases[app.current - 1]
}

/** A stable send_ident per app: a UUID-shaped hash of its name. */
export function handlerIdent(app: string): string {
  const h = createHash('sha256').update(`bareku-handler:${app}`).digest('hex')
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`
}

/** The sender id a handler instance uses: its name with what Mongrel2 ids refuse made "-". */
export function senderId(instance: string): string {
  return instance.replace(/[^A-Za-z0-9-]/g, '-')
}

interface Want {
  name: string
  app: App
  release: Release
  type: string
  n: number
  restart: number
  /** Set for an instance of a retained release: where it runs, unchanged. */
  kept?: Slot
}

function wanted(state: State): Want[] {
  const out: Want[] = []
  for (const app of sorted(Object.values(state.apps), (a) => a.name)) {
    const release = currentRelease(app)
    if (release === undefined) continue
    for (const type of Object.keys(release.processTypes).sort()) {
      const count = Object.hasOwn(app.formation, type) ? app.formation[type]! : 0
      const restart = Object.hasOwn(app.restarts, type) ? app.restarts[type]! : 0
      for (let n = 1; n <= count; n++) {
        out.push({ name: `${app.name}.${type}.${n}`, app, release, type, n, restart })
      }
    }
  }
  return out
}

function sorted<T>(items: T[], key: (x: T) => string): T[] {
  return [...items].sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0))
}

/** The releases of an app that need handler ports: current and retained, with a handler type. */
function handlerReleases(app: App, retained: Retained[]): number[] {
  const out: number[] = []
  const hasHandler = (r: Release | undefined): boolean =>
    r !== undefined && Object.keys(r.processTypes).some(isHandlerType)
  if (hasHandler(currentRelease(app))) out.push(app.current!)
  for (const r of retained) if (hasHandler(app.releases[r.release - 1])) out.push(r.release)
  return out.sort((a, b) => a - b)
}

/** Chooses handler ports per app and release; a release's ports stay until it is gone. */
function handlerPorts(
  state: State,
  range: PortRange,
  retained: Record<string, Retained[]>,
): Plan['handlers'] {
  const out: Plan['handlers'] = {}
  const taken = new Set<number>()
  const apps = sorted(Object.values(state.apps), (a) => a.name)
  const need = new Map(apps.map((a) => [a.name, handlerReleases(a, retained[a.name] ?? [])]))
  for (const app of apps) {
    for (const rel of need.get(app.name)!) {
      const h = app.handlerPorts?.[String(rel)]
      if (!h || taken.has(h.sendPort) || taken.has(h.recvPort)) continue
      ;(out[app.name] ??= {})[String(rel)] = { ...h }
      taken.add(h.sendPort).add(h.recvPort)
    }
  }
  // Ports a release just gave up are taken last: its processes may still be stopping.
  const before = new Set(
    apps.flatMap((a) =>
      Object.values(a.handlerPorts ?? {}).flatMap((h) => [h.sendPort, h.recvPort]),
    ),
  )
  const free = (p: number, strict: boolean): boolean =>
    !taken.has(p) && !taken.has(p + 1) && (!strict || (!before.has(p) && !before.has(p + 1)))
  for (const app of apps) {
    for (const rel of need.get(app.name)!) {
      if (out[app.name]?.[String(rel)]) continue
      for (const strict of [true, false]) {
        let p = range.from
        while (p < range.to && !free(p, strict)) p++
        if (p >= range.to) continue
        ;(out[app.name] ??= {})[String(rel)] = { sendPort: p, recvPort: p + 1 }
        taken.add(p).add(p + 1)
        break
      }
    }
  }
  return out
}

/**
 * The earlier releases to keep running per app: the ones kept so far, plus the web and handler
 * instances the last placement ran for a release that is no longer current; minus those the
 * frontend reports drained while the current release serves, and instances on nodes not up.
 */
function retention(
  state: State,
  frontend: Record<string, AppStatus> | undefined,
  isUp: (node: string) => boolean,
): Record<string, Retained[]> {
  const out: Record<string, Retained[]> = {}
  if (frontend === undefined) return out
  for (const app of sorted(Object.values(state.apps), (a) => a.name)) {
    const current = app.current
    const cur = currentRelease(app)
    if (current === null || cur === undefined) continue
    // Nothing of the current release to take over (scaled to 0, or no such type): nothing kept.
    // A static site takes over from its earlier release's processes once the frontend serves it.
    const takesOver =
      staticRoot(app) !== undefined ||
      Object.keys(cur.processTypes).some((t) => runsCutover(app, t))
    if (!takesOver) continue
    const byRelease = new Map<number, Record<string, Slot>>()
    for (const r of app.retained ?? []) byRelease.set(r.release, { ...r.placement })
    for (const [name, slot] of Object.entries(state.placement)) {
      const [appName, type = ''] = name.split('.')
      if (appName !== app.name || slot.release === current || !isCutoverType(type)) continue
      if (!byRelease.has(slot.release)) byRelease.set(slot.release, {})
      byRelease.get(slot.release)![name] = { ...slot }
    }
    const seen = frontend[app.name]
    const serves =
      seen !== undefined &&
      seen.serving === current &&
      seen.releases.some((r) => r.release === current && r.ready)
    const keep: Retained[] = []
    for (const release of [...byRelease.keys()].sort((a, b) => b - a)) {
      if (release >= current || app.releases[release - 1] === undefined) continue
      if (serves && (seen.releases.find((r) => r.release === release)?.drained ?? true)) continue
      const placement = Object.fromEntries(
        Object.entries(byRelease.get(release)!).filter(([, s]) => isUp(s.node)),
      )
      if (Object.keys(placement).length > 0) keep.push({ release, placement })
    }
    if (keep.length > 0) out[app.name] = keep
  }
  return out
}

/** What the nodes last reported, as placement uses it. */
export interface Observed {
  /** Per node, the ports its instances use (a new web port avoids them). */
  busyPorts?: Record<string, readonly number[]>
  /** Per node, per instance name (without a surge suffix), the ports of those reported ready. */
  readyPorts?: Record<string, Record<string, readonly number[]>>
  /** The frontend's last deploy status, per app; undefined when no frontend reports. */
  frontend?: Record<string, AppStatus>
}

/** The plan for `state`, given what the nodes last reported. */
export function plan(state: State, settings: PlanSettings, observed: Observed = {}): Plan {
  const busyPorts = observed.busyPorts ?? {}
  const nodes = state.nodes
  const upNodes = Object.keys(nodes)
    .filter((n) => nodes[n]!.status === 'up')
    .sort()
  const isUp = (n: string): boolean => Object.hasOwn(nodes, n) && nodes[n]!.status === 'up'
  const retained = retention(state, observed.frontend, isUp)
  const handlers = handlerPorts(state, settings.handlerPorts, retained)
  const unplaced: Unplaced[] = []
  const used = new Map<string, number>(upNodes.map((n) => [n, 0]))
  const sameType = new Map<string, number>()
  const nodeOf = new Map<string, string>()
  const assign = (w: Want, node: string): void => {
    nodeOf.set(w.name, node)
    used.set(node, (used.get(node) ?? 0) + 1)
    const key = `${node}\0${w.app.name}.${w.type}`
    sameType.set(key, (sameType.get(key) ?? 0) + 1)
  }
  const room = (node: string): boolean => (used.get(node) ?? 0) < nodes[node]!.capacity

  const wants = wanted(state).filter((w) => {
    if (isHandlerType(w.type) && !handlers[w.app.name]?.[String(w.release.version)]) {
      unplaced.push(miss(w, 'no two free ports left in BAREKU_HANDLER_PORTS for its handlers'))
      return false
    }
    return true
  })
  for (const w of wants) {
    const old = state.placement[w.name]
    if (old && isUp(old.node) && room(old.node)) assign(w, old.node)
  }
  for (const w of wants) {
    if (nodeOf.has(w.name)) continue
    const candidates = upNodes.filter(room)
    if (candidates.length === 0) {
      unplaced.push(
        miss(w, upNodes.length === 0 ? 'no node is up' : 'every up node is full (capacity)'),
      )
      continue
    }
    const score = (n: string): [number, number, number] => {
      const u = used.get(n) ?? 0
      return [sameType.get(`${n}\0${w.app.name}.${w.type}`) ?? 0, u / nodes[n]!.capacity, u]
    }
    let best = candidates[0]!
    for (const n of candidates.slice(1)) {
      const [a, b] = [score(n), score(best)]
      if (a[0] < b[0] || (a[0] === b[0] && (a[1] < b[1] || (a[1] === b[1] && a[2] < b[2])))) {
        best = n
      }
    }
    assign(w, best)
  }

  // Ports: first the ones kept, so a new port never takes one a later instance keeps.
  const placement: Record<string, Slot> = {}
  const nextPort: Record<string, number> = { ...state.nextPort }
  const reserved = new Map<string, Set<number>>()
  const portsOn = (node: string): Set<number> => {
    let set = reserved.get(node)
    if (!set) reserved.set(node, (set = new Set()))
    return set
  }
  // Retained instances keep their ports: no new one may take them.
  for (const list of Object.values(retained)) {
    for (const r of list) {
      for (const slot of Object.values(r.placement)) {
        if (slot.port !== undefined) portsOn(slot.node).add(slot.port)
      }
    }
  }
  const webs: Want[] = []
  for (const w of wants) {
    const node = nodeOf.get(w.name)
    if (node === undefined) continue
    const slot: Slot = { node, release: w.release.version, restart: w.restart }
    placement[w.name] = slot
    if (w.type !== 'web') continue
    const old = state.placement[w.name]
    const same = old?.node === node && old.release === slot.release && old.restart === slot.restart
    if (same && old.port !== undefined && !portsOn(node).has(old.port)) {
      slot.port = old.port
      portsOn(node).add(old.port)
    } else {
      webs.push(w)
    }
  }
  const before = new Map<string, Set<number>>()
  const retainedSlots = Object.values(state.apps).flatMap((a) =>
    (a.retained ?? []).flatMap((r) => Object.values(r.placement)),
  )
  for (const s of [...Object.values(state.placement), ...retainedSlots]) {
    if (s.port === undefined) continue
    if (!before.has(s.node)) before.set(s.node, new Set())
    before.get(s.node)!.add(s.port)
  }
  const { from, to } = settings.webPorts
  const size = to - from + 1
  for (const w of webs) {
    const slot = placement[w.name]!
    const node = slot.node
    const avoid = (p: number): boolean =>
      portsOn(node).has(p) ||
      before.get(node)?.has(p) === true ||
      busyPorts[node]?.includes(p) === true
    let cursor = nextPort[node] ?? from
    if (cursor < from || cursor > to) cursor = from
    let port: number | undefined
    for (let i = 0; i < size; i++) {
      const p = from + ((cursor - from + i) % size)
      if (!avoid(p)) {
        port = p
        break
      }
    }
    if (port === undefined) {
      delete placement[w.name]
      unplaced.push(miss(w, `no free port in BAREKU_WEB_PORTS on node ${node}`))
      continue
    }
    slot.port = port
    portsOn(node).add(port)
    nextPort[node] = port === to ? from : port + 1
  }

  const kept = keptWants(state, retained)
  return {
    placement,
    nextPort,
    handlers,
    retained,
    ...(observed.frontend ? { frontend: observed.frontend } : {}),
    hostLists: hostLists(state, [...wants, ...kept], placement, handlers, settings),
    routes: routeTable(
      state,
      wants,
      kept,
      placement,
      handlers,
      settings,
      observed.readyPorts ?? {},
    ),
    unplaced,
  }
}

/** The instances of retained releases, as wants with their slot kept. */
function keptWants(state: State, retained: Record<string, Retained[]>): Want[] {
  const out: Want[] = []
  for (const [appName, list] of Object.entries(retained)) {
    const app = state.apps[appName]!
    for (const r of list) {
      const release = app.releases[r.release - 1]!
      for (const [name, slot] of Object.entries(r.placement).sort()) {
        const [, type = '', n = '0'] = name.split('.')
        if (release.processTypes[type] === undefined) continue
        out.push({ name, app, release, type, n: Number(n), restart: slot.restart, kept: slot })
      }
    }
  }
  return out
}

function miss(w: Want, reason: string): Unplaced {
  return { instance: w.name, app: w.app.name, type: w.type, reason }
}

function hostLists(
  state: State,
  wants: Want[],
  placement: Record<string, Slot>,
  handlers: Plan['handlers'],
  settings: PlanSettings,
): Record<string, HostList> {
  const lists: Record<string, HostList> = {}
  for (const name of Object.keys(state.nodes).sort()) {
    lists[name] = { host: name, instances: [], slugs: {} }
  }
  for (const w of wants) {
    const slot = w.kept ?? placement[w.name]
    const list = slot && lists[slot.node]
    if (!slot || !list) continue
    const env: Record<string, string> = {
      ...w.release.config,
      DYNO: `${w.type}.${w.n}`,
      BAREKU_APP: w.app.name,
      BAREKU_RELEASE: `v${w.release.version}`,
      BAREKU_RESTART: String(w.restart),
    }
    if (slot.port !== undefined) env.PORT = String(slot.port)
    const h = handlers[w.app.name]?.[String(w.release.version)]
    if (isHandlerType(w.type) && h) {
      env.BAREKU_HANDLER_SEND_SPEC = `tcp://${settings.handlerHost}:${h.sendPort}`
      env.BAREKU_HANDLER_RECV_SPEC = `tcp://${settings.handlerHost}:${h.recvPort}`
      env.BAREKU_HANDLER_SENDER_ID = senderId(w.name)
    }
    const inst: HostInstance = {
      name: hostInstanceName(w.name, w.type, w.release.version),
      app: w.app.name,
      type: w.type,
      release: w.release.version,
      command: w.release.processTypes[w.type]!,
      env,
      slug: w.release.slug.sha256,
    }
    if (slot.port !== undefined) inst.port = slot.port
    list.instances.push(inst)
    list.slugs[w.release.slug.sha256] = { size: w.release.slug.size }
  }
  return lists
}

/**
 * The route target of one release of an app: its web instances, else its handler endpoints,
 * else none. `mine` are that release's instances (current or kept).
 */
function releaseTarget(
  app: App,
  version: number,
  mine: Want[],
  placement: Record<string, Slot>,
  state: State,
  handlers: Plan['handlers'],
  settings: PlanSettings,
  readyPorts: NonNullable<Observed['readyPorts']>,
): HandlerTarget | ProxyTarget | undefined {
  const backends: ProxyTarget['backends'] = []
  for (const w of mine) {
    const slot = w.kept ?? placement[w.name]
    const node = slot && state.nodes[slot.node]
    if (w.type !== 'web' || slot?.port === undefined || !node) continue
    // A restart within the release: until the new instance is ready, route to the old one still
    // serving in its slot (the worker replaces it in place, surge-first).
    const ready = w.kept
      ? []
      : (readyPorts[slot.node]?.[hostInstanceName(w.name, 'web', version)] ?? [])
    const ports = ready.length === 0 || ready.includes(slot.port) ? [slot.port] : ready
    for (const port of ports) backends.push({ addr: node.addr, port })
  }
  if (backends.length > 0) return { kind: 'proxy', backends }
  const h = handlers[app.name]?.[String(version)]
  if (h && mine.some((w) => isHandlerType(w.type))) {
    return {
      kind: 'handler',
      sendSpec: `tcp://${settings.handlerHost}:${h.sendPort}`,
      sendIdent: handlerIdent(app.name),
      recvSpec: `tcp://${settings.handlerHost}:${h.recvPort}`,
      recvIdent: '',
      protocol: 'json',
      rawPayload: false,
    }
  }
  return undefined
}

/**
 * The document root of the app's current release when that release is a static site: it has a
 * root and runs no web or handler process (a running one is what is routed to).
 */
function staticRoot(app: App): string | undefined {
  const release = currentRelease(app)
  if (release?.static === undefined) return undefined
  if (Object.keys(release.processTypes).some((t) => runsCutover(app, t))) return undefined
  return release.static
}

/** A static site's current release: its document root in its slug, served by the frontend. */
function staticTarget(app: App): DirTarget | undefined {
  const release = currentRelease(app)
  const root = staticRoot(app)?.replace(/\/+$/, '')
  if (release === undefined || root === undefined) return undefined
  return {
    kind: 'dir',
    base: `${root || '.'}/`,
    indexFile: 'index.html',
    defaultCtype: 'application/octet-stream',
    cacheTtl: 0,
    slug: { app: app.name, ...release.slug, release: release.version },
  }
}

/** The route target of an app: one release's, or its releases side by side during a deploy. */
function appTarget(
  app: App,
  wants: Want[],
  kept: Want[],
  placement: Record<string, Slot>,
  state: State,
  handlers: Plan['handlers'],
  settings: PlanSettings,
  readyPorts: NonNullable<Observed['readyPorts']>,
): Target | undefined {
  // A static site is served from its slug at once; the frontend applies the table only once it
  // has the files, and an earlier release's processes are kept (retention) until it says so.
  const site = staticTarget(app)
  if (site) return site
  const versions = new Map<number, Want[]>()
  for (const w of [...wants, ...kept]) {
    if (w.app !== app) continue
    const v = w.release.version
    versions.set(v, [...(versions.get(v) ?? []), w])
  }
  const releases: ReleaseTarget[] = []
  for (const v of [...versions.keys()].sort((a, b) => b - a)) {
    const mine = versions.get(v)!
    const target = releaseTarget(app, v, mine, placement, state, handlers, settings, readyPorts)
    if (!target) continue
    // The check of the type that is routed to: web for a proxy, else the first handler type.
    const checks = mine[0]!.release.healthchecks ?? {}
    const type =
      target.kind === 'proxy'
        ? 'web'
        : mine.map((w) => w.type).find((t) => isHandlerType(t) && Object.hasOwn(checks, t))
    const healthcheck = type === undefined ? undefined : checks[type]
    releases.push(healthcheck ? { release: v, target, healthcheck } : { release: v, target })
  }
  if (releases.length === 0) return undefined
  // One release with no health check to pass: a plain target, as a Mongrel2 config has.
  if (releases.length === 1 && !releases[0]!.healthcheck) return releases[0]!.target
  // A new release of handlers takes over once all of them are connected: the first one alone
  // would get the whole load while the others start. (A proxy release is ready on its checks.)
  const newest = releases[0]!
  const handlerCount = versions.get(newest.release)!.filter((w) => isHandlerType(w.type)).length
  const minReady = newest.target.kind === 'handler' ? Math.max(1, handlerCount) : 1
  return { kind: 'releases', app: app.name, minReady, releases }
}

/** The host names an app answers to: NAME.DOMAIN, then its custom domains. */
export function appHosts(app: App, domain: string): string[] {
  return [`${app.name}.${domain}`, ...app.domains]
}

function routeTable(
  state: State,
  wants: Want[],
  kept: Want[],
  placement: Record<string, Slot>,
  handlers: Plan['handlers'],
  settings: PlanSettings,
  readyPorts: NonNullable<Observed['readyPorts']>,
): RouteTable {
  const hosts: HostSpec[] = [{ name: DEFAULT_HOST, matching: DEFAULT_HOST, routes: {} }]
  const seen = new Set([DEFAULT_HOST])
  for (const app of sorted(Object.values(state.apps), (a) => a.name)) {
    const target = appTarget(app, wants, kept, placement, state, handlers, settings, readyPorts)
    if (!target) continue
    for (const name of appHosts(app, settings.domain)) {
      // A duplicate (e.g. after BAREKU_DOMAIN changed) would make the frontend refuse the whole
      // table: the first app keeps it.
      if (seen.has(name)) continue
      seen.add(name)
      hosts.push({ name, matching: name, routes: { '/': target } })
    }
  }
  return {
    servers: [
      {
        uuid: SERVER,
        name: SERVER,
        bindAddr: '0.0.0.0',
        port: settings.frontendPort,
        chroot: '',
        defaultHost: DEFAULT_HOST,
        hosts,
      },
    ],
    settings: {},
    mimetypes: {},
  }
}
