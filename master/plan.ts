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
 *   handlers   a type named `handler` or ending in `handler` gets the app's two frontend ports
 *              (send, recv) from BAREKU_HANDLER_PORTS, chosen once and kept across releases
 *   routes     per app a host NAME.DOMAIN and one per custom domain, route "/" -> a proxy over
 *              its web instances, else its handler endpoints; a default host with no routes.
 *              A web instance whose new port is not reported ready yet while an older instance
 *              of its slot is ready is routed to the older one (zero-downtime cutover).
 *
 * What cannot be placed (no node up, all full, no free port) is listed in `unplaced` with the
 * reason; it is left out of every host list.
 */
import { createHash } from 'node:crypto'
import type {
  HandlerTarget,
  HostSpec,
  ProxyTarget,
  RouteTable,
  Target,
} from '../lib/config/routes.js'
import type { HostInstance, HostList } from '../lib/protocol/host-list.js'
import type { PortRange } from './config.js'
import type { App, Release, Slot, State } from './state.js'

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
  /** Handler ports of every app that has them (kept or newly chosen). */
  handlers: Record<string, { sendPort: number; recvPort: number }>
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

/** Chooses handler ports for apps whose current release has a handler type. */
function handlerPorts(state: State, range: PortRange): Plan['handlers'] {
  const out: Plan['handlers'] = {}
  const taken = new Set<number>()
  for (const app of Object.values(state.apps)) {
    if (app.handler) {
      out[app.name] = { ...app.handler }
      taken.add(app.handler.sendPort).add(app.handler.recvPort)
    }
  }
  for (const app of sorted(Object.values(state.apps), (a) => a.name)) {
    const release = currentRelease(app)
    if (out[app.name] || !release || !Object.keys(release.processTypes).some(isHandlerType)) {
      continue
    }
    for (let p = range.from; p < range.to; p++) {
      if (!taken.has(p) && !taken.has(p + 1)) {
        out[app.name] = { sendPort: p, recvPort: p + 1 }
        taken.add(p).add(p + 1)
        break
      }
    }
  }
  return out
}

/** What the nodes last reported, as placement uses it. */
export interface Observed {
  /** Per node, the ports its instances use (a new web port avoids them). */
  busyPorts?: Record<string, readonly number[]>
  /** Per node, per instance slot (APP.TYPE.N), the ports of its instances reported ready. */
  readyPorts?: Record<string, Record<string, readonly number[]>>
}

/** The plan for `state`, given what the nodes last reported. */
export function plan(state: State, settings: PlanSettings, observed: Observed = {}): Plan {
  const busyPorts = observed.busyPorts ?? {}
  const nodes = state.nodes
  const upNodes = Object.keys(nodes)
    .filter((n) => nodes[n]!.status === 'up')
    .sort()
  const isUp = (n: string): boolean => Object.hasOwn(nodes, n) && nodes[n]!.status === 'up'
  const handlers = handlerPorts(state, settings.handlerPorts)
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
    if (isHandlerType(w.type) && !handlers[w.app.name]) {
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
  for (const s of Object.values(state.placement)) {
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

  return {
    placement,
    nextPort,
    handlers,
    hostLists: hostLists(state, wants, placement, handlers, settings),
    routes: routeTable(state, wants, placement, handlers, settings, observed.readyPorts ?? {}),
    unplaced,
  }
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
    const slot = placement[w.name]
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
    const h = handlers[w.app.name]
    if (isHandlerType(w.type) && h) {
      env.BAREKU_HANDLER_SEND_SPEC = `tcp://${settings.handlerHost}:${h.sendPort}`
      env.BAREKU_HANDLER_RECV_SPEC = `tcp://${settings.handlerHost}:${h.recvPort}`
      env.BAREKU_HANDLER_SENDER_ID = senderId(w.name)
    }
    const inst: HostInstance = {
      name: w.name,
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

/** The route target of an app: its web instances, else its handler endpoints, else none. */
function appTarget(
  app: App,
  wants: Want[],
  placement: Record<string, Slot>,
  state: State,
  handlers: Plan['handlers'],
  settings: PlanSettings,
  readyPorts: NonNullable<Observed['readyPorts']>,
): Target | undefined {
  const mine = wants.filter((w) => w.app === app)
  const backends: ProxyTarget['backends'] = []
  for (const w of mine) {
    const slot = placement[w.name]
    const node = slot && state.nodes[slot.node]
    if (w.type !== 'web' || slot?.port === undefined || !node) continue
    // Cutover: until the new instance is ready, route to the old one still serving in its slot.
    const ready = readyPorts[slot.node]?.[w.name] ?? []
    const ports = ready.length === 0 || ready.includes(slot.port) ? [slot.port] : ready
    for (const port of ports) backends.push({ addr: node.addr, port })
  }
  if (backends.length > 0) return { kind: 'proxy', backends }
  const h = handlers[app.name]
  if (h && mine.some((w) => isHandlerType(w.type))) {
    const target: HandlerTarget = {
      kind: 'handler',
      sendSpec: `tcp://${settings.handlerHost}:${h.sendPort}`,
      sendIdent: handlerIdent(app.name),
      recvSpec: `tcp://${settings.handlerHost}:${h.recvPort}`,
      recvIdent: '',
      protocol: 'json',
      rawPayload: false,
    }
    return target
  }
  return undefined
}

/** The host names an app answers to: NAME.DOMAIN, then its custom domains. */
export function appHosts(app: App, domain: string): string[] {
  return [`${app.name}.${domain}`, ...app.domains]
}

function routeTable(
  state: State,
  wants: Want[],
  placement: Record<string, Slot>,
  handlers: Plan['handlers'],
  settings: PlanSettings,
  readyPorts: NonNullable<Observed['readyPorts']>,
): RouteTable {
  const hosts: HostSpec[] = [{ name: DEFAULT_HOST, matching: DEFAULT_HOST, routes: {} }]
  const seen = new Set([DEFAULT_HOST])
  for (const app of sorted(Object.values(state.apps), (a) => a.name)) {
    const target = appTarget(app, wants, placement, state, handlers, settings, readyPorts)
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
