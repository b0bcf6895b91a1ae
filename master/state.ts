/**
 * @module The master's desired state and its file, $BAREKU_HOME/master/state.json, rewritten
 * whole and atomically after every change and checked field by field when loaded:
 *
 *   State   = { "version": 1, "epoch": INT, "apps": { NAME: App }, "nodes": { NODE: Node },
 *               "placement": { INSTANCE: Slot }, "nextPort": { NODE: PORT } }
 *   App     = { "name": NAME, "createdAt": ISO, "config": { KEY: STRING },
 *               "formation": { TYPE: INT }, "releases": [Release, ...], "current": INT | null,
 *               "domains": [DOMAIN, ...], "handler"?: { "sendPort": PORT, "recvPort": PORT },
 *               "restarts": { TYPE: INT },          ; ps:restart bumps a type's number
 *               "handlerPorts"?: { RELEASE: { "sendPort": PORT, "recvPort": PORT } },
 *                                  ; per release with handler instances (current or retained)
 *               "retained"?: [{ "release": INT, "placement": { INSTANCE: Slot } }, ...] }
 *                                  ; web and handler instances of earlier releases kept running
 *                                  ; until the frontend reports the current one serving and them
 *                                  ; drained (plan.ts); "handler" is the pre-release-ports field
 *   Release = { "version": INT >= 1, "slug": { "sha256": HEX64, "size": INT },
 *               "processTypes": { TYPE: COMMAND }, "config": { KEY: STRING },
 *               "commit"?: STRING, "by": STRING, "at": ISO, "description": STRING,
 *               "healthchecks"?: { TYPE: HealthCheck },   ; lib/config/routes.ts, app.json's
 *               "static"?: PATH }   ; a static site's document root in the slug ("public",
 *                                   ; "."), served by the frontend's Dir route; processTypes
 *                                   ; may then be empty
 *   Node    = { "name": NODE, "addr": HOST, "capacity": INT, "lastSeen": INT (ms),
 *               "status": "up" | "down" }
 *   Slot    = { "node": NODE, "release": INT, "restart": INT, "port"?: PORT }
 *             ; where INSTANCE ("APP.TYPE.N") runs, and for which release and restart its port
 *             ; was chosen (a new release or restart gets a new port: see plan.ts)
 *   NAME = [a-z][a-z0-9-]{0,29}    KEY = [A-Za-z_][A-Za-z0-9_]*    TYPE = [A-Za-z0-9_-]{1,40}
 *
 * `epoch` grows by one at every start (openState), before anything is published. A file that
 * does not parse or check is a fatal E_MASTER error naming the file and the field: the state is
 * never reset silently. Adding a field means adding it to the type and to its checker below
 * (unknown fields are refused, so a typo in a hand-edited file is caught).
 */
import { mkdirSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { AppError } from '../lib/errors.js'
import { writeFileAtomic } from '../lib/fs-atomic.js'
import { parseHealthCheck, type HealthCheck } from '../lib/config/routes.js'

export interface Release {
  version: number
  slug: { sha256: string; size: number }
  processTypes: Record<string, string>
  config: Record<string, string>
  commit?: string
  by: string
  at: string
  description: string
  /** Per process type (web, a handler type): checked by the frontend before routing to it. */
  healthchecks?: Record<string, HealthCheck>
  /** A static site's document root in the slug, served by the frontend (a Dir route). */
  static?: string
}

export interface App {
  name: string
  createdAt: string
  config: Record<string, string>
  formation: Record<string, number>
  releases: Release[]
  current: number | null
  domains: string[]
  handler?: { sendPort: number; recvPort: number }
  restarts: Record<string, number>
  handlerPorts?: Record<string, HandlerPorts>
  retained?: Retained[]
}

export interface HandlerPorts {
  sendPort: number
  recvPort: number
}

/** The instances of an earlier release kept running through a deploy (see plan.ts). */
export interface Retained {
  release: number
  placement: Record<string, Slot>
}

export type NodeStatus = 'up' | 'down'

export interface NodeRecord {
  name: string
  addr: string
  capacity: number
  lastSeen: number
  status: NodeStatus
}

export interface Slot {
  node: string
  release: number
  restart: number
  port?: number
}

export interface State {
  version: 1
  epoch: number
  apps: Record<string, App>
  nodes: Record<string, NodeRecord>
  placement: Record<string, Slot>
  nextPort: Record<string, number>
}

export const APP_NAME = /^[a-z][a-z0-9-]{0,29}$/
export const CONFIG_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/
export const PROCESS_TYPE = /^[A-Za-z0-9_-]{1,40}$/
export const NODE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$/
const INSTANCE = /^[a-z][a-z0-9-]{0,29}\.[A-Za-z0-9_-]{1,40}\.[1-9][0-9]*$/
const HEX64 = /^[0-9a-f]{64}$/
const HOST = /^[A-Za-z0-9_.:-]+$/
const DOMAIN =
  /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/

/** A check that failed: where, and what was expected. Callers turn it into their own AppError. */
export class Invalid extends Error {
  constructor(
    readonly path: string,
    readonly expected: string,
    readonly got: unknown,
    shown = describe(got),
  ) {
    super(`${path} must be ${expected}, got ${shown}`)
  }
}

function describe(v: unknown): string {
  if (v === undefined) return 'nothing'
  if (Array.isArray(v)) return `a list of ${v.length}`
  if (v !== null && typeof v === 'object') return 'an object'
  const text = JSON.stringify(v)
  return text.length > 60 ? `${text.slice(0, 57)}...` : text
}

/** Keys that would collide with Object.prototype ("__proto__", "constructor") are refused. */
export function plainKey(key: string): boolean {
  return !(key in Object.prototype)
}

export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** The object's fields, refusing unknown ones and missing required ones. */
export function fields(
  v: unknown,
  path: string,
  allowed: readonly string[],
  required: readonly string[] = allowed,
): Record<string, unknown> {
  if (!isObject(v)) throw new Invalid(path, 'an object', v)
  for (const key of Object.keys(v)) {
    if (!allowed.includes(key)) {
      throw new Invalid(`${path}.${key}`, `absent (allowed fields: ${allowed.join(', ')})`, v[key])
    }
  }
  for (const key of required) {
    if (!(key in v)) throw new Invalid(`${path}.${key}`, 'present', undefined)
  }
  return v
}

export function int(v: unknown, path: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    throw new Invalid(path, `an integer from ${min} to ${max}`, v)
  }
  return v
}

export function str(v: unknown, path: string, re?: RegExp, expected?: string): string {
  if (typeof v !== 'string' || v.includes('\0') || (re !== undefined && !re.test(v))) {
    throw new Invalid(path, expected ?? (re ? `a string matching ${String(re)}` : 'a string'), v)
  }
  return v
}

/** An object of KEY -> value, each key checked with `re` and not an Object.prototype name. */
export function map<T>(
  v: unknown,
  path: string,
  re: RegExp,
  what: string,
  value: (x: unknown, at: string) => T,
): Record<string, T> {
  if (!isObject(v)) throw new Invalid(path, 'an object', v)
  const out: Record<string, T> = {}
  for (const [key, x] of Object.entries(v)) {
    if (!re.test(key) || !plainKey(key)) throw new Invalid(`${path} key`, what, key)
    out[key] = value(x, `${path}.${key}`)
  }
  return out
}

export const appName = (v: unknown, path: string): string =>
  str(v, path, APP_NAME, 'an app name: a lowercase letter, then up to 29 of a-z, 0-9 and "-"')

/** Config values may be secrets: an error says what kind of value came, never the value. */
export const configVars = (v: unknown, path: string): Record<string, string> =>
  map(v, path, CONFIG_KEY, 'a variable name such as DATABASE_URL', (x, at) => {
    if (typeof x !== 'string' || x.includes('\0')) {
      const kind =
        typeof x === 'string' ? 'a string with a NUL byte' : x === null ? 'null' : `a ${typeof x}`
      throw new Invalid(at, 'a string without NUL bytes', undefined, kind)
    }
    return x
  })

/** A release's process types; none at all only for a static site (`allowNone`). */
export const processTypes = (
  v: unknown,
  path: string,
  allowNone = false,
): Record<string, string> => {
  const types = map(v, path, PROCESS_TYPE, 'a Procfile type such as "web"', (x, at) =>
    str(x, at, /\S/, 'a non-empty command'),
  )
  if (Object.keys(types).length === 0 && !allowNone) {
    throw new Invalid(path, 'at least one process type (a Procfile line)', v)
  }
  return types
}

/** A directory inside a slug: relative, no `..`, e.g. "public" or "." */
export const staticRoot = (v: unknown, path: string): string => {
  const root = str(v, path, /^(?!\/)[A-Za-z0-9._/-]{1,200}$/, 'a relative path such as "public"')
  if (root.split('/').includes('..')) {
    throw new Invalid(path, 'a path inside the slug, without ".."', v)
  }
  return root
}

export const domainName = (v: unknown, path: string): string =>
  str(v, path, DOMAIN, 'a lowercase host name such as "www.example.com"')

export const slugRef = (v: unknown, path: string): Release['slug'] => {
  const f = fields(v, path, ['sha256', 'size'])
  return {
    sha256: str(f.sha256, `${path}.sha256`, HEX64, '64 lowercase hex digits'),
    size: int(f.size, `${path}.size`),
  }
}

const iso = (v: unknown, path: string): string =>
  str(v, path, /^\d{4}-\d\d-\d\dT/, 'an ISO date such as "2024-01-01T00:00:00.000Z"')

function release(v: unknown, path: string): Release {
  const f = fields(
    v,
    path,
    [
      'version',
      'slug',
      'processTypes',
      'config',
      'commit',
      'by',
      'at',
      'description',
      'healthchecks',
      'static',
    ],
    ['version', 'slug', 'processTypes', 'config', 'by', 'at', 'description'],
  )
  const r: Release = {
    version: int(f.version, `${path}.version`, 1),
    slug: slugRef(f.slug, `${path}.slug`),
    processTypes: processTypes(f.processTypes, `${path}.processTypes`, f.static !== undefined),
    config: configVars(f.config, `${path}.config`),
    by: str(f.by, `${path}.by`),
    at: iso(f.at, `${path}.at`),
    description: str(f.description, `${path}.description`),
  }
  if (f.commit !== undefined) r.commit = str(f.commit, `${path}.commit`)
  if (f.healthchecks !== undefined)
    r.healthchecks = healthchecks(f.healthchecks, `${path}.healthchecks`)
  if (f.static !== undefined) r.static = staticRoot(f.static, `${path}.static`)
  return r
}

/** A release's health checks by process type; bad ones are Invalid, like every other field. */
export function healthchecks(v: unknown, path: string): Record<string, HealthCheck> {
  return map(v, path, PROCESS_TYPE, 'a process type', (x, at) => {
    try {
      return parseHealthCheck(x, at)
    } catch (err) {
      throw new Invalid(at, (err as Error).message.replace(/^.* must be /, ''), x)
    }
  })
}

function app(v: unknown, path: string, key: string): App {
  const f = fields(
    v,
    path,
    [
      'name',
      'createdAt',
      'config',
      'formation',
      'releases',
      'current',
      'domains',
      'handler',
      'restarts',
      'handlerPorts',
      'retained',
    ],
    ['name', 'createdAt', 'config', 'formation', 'releases', 'current', 'domains', 'restarts'],
  )
  const name = appName(f.name, `${path}.name`)
  if (name !== key) throw new Invalid(`${path}.name`, `the same as its key "${key}"`, name)
  if (!Array.isArray(f.releases)) throw new Invalid(`${path}.releases`, 'a list', f.releases)
  const releases = f.releases.map((r, i) => release(r, `${path}.releases[${i}]`))
  releases.forEach((r, i) => {
    if (r.version !== i + 1) {
      throw new Invalid(`${path}.releases[${i}].version`, `${i + 1} (versions count up)`, r.version)
    }
  })
  const current = f.current === null ? null : int(f.current, `${path}.current`, 1)
  if (current !== null && current > releases.length) {
    throw new Invalid(`${path}.current`, 'the version of one of its releases, or null', current)
  }
  if (!Array.isArray(f.domains)) throw new Invalid(`${path}.domains`, 'a list', f.domains)
  const a: App = {
    name,
    createdAt: iso(f.createdAt, `${path}.createdAt`),
    config: configVars(f.config, `${path}.config`),
    formation: map(f.formation, `${path}.formation`, PROCESS_TYPE, 'a process type', (x, at) =>
      int(x, at),
    ),
    releases,
    current,
    domains: f.domains.map((d, i) => domainName(d, `${path}.domains[${i}]`)),
    restarts: map(f.restarts, `${path}.restarts`, PROCESS_TYPE, 'a process type', (x, at) =>
      int(x, at),
    ),
  }
  if (f.handler !== undefined) {
    const h = fields(f.handler, `${path}.handler`, ['sendPort', 'recvPort'])
    a.handler = {
      sendPort: int(h.sendPort, `${path}.handler.sendPort`, 1, 65535),
      recvPort: int(h.recvPort, `${path}.handler.recvPort`, 1, 65535),
    }
  }
  if (f.handlerPorts !== undefined) {
    a.handlerPorts = map(
      f.handlerPorts,
      `${path}.handlerPorts`,
      /^[1-9][0-9]*$/,
      'a release number',
      (x, at) => {
        const h = fields(x, at, ['sendPort', 'recvPort'])
        return {
          sendPort: int(h.sendPort, `${at}.sendPort`, 1, 65535),
          recvPort: int(h.recvPort, `${at}.recvPort`, 1, 65535),
        }
      },
    )
  }
  if (f.retained !== undefined) {
    if (!Array.isArray(f.retained)) throw new Invalid(`${path}.retained`, 'a list', f.retained)
    a.retained = f.retained.map((x, i) => {
      const at = `${path}.retained[${i}]`
      const r = fields(x, at, ['release', 'placement'])
      return {
        release: int(r.release, `${at}.release`, 1, releases.length),
        placement: map(r.placement, `${at}.placement`, INSTANCE, 'an instance name', (y, p) =>
          slot(y, p),
        ),
      }
    })
  }
  return a
}

function node(v: unknown, path: string, key: string): NodeRecord {
  const f = fields(v, path, ['name', 'addr', 'capacity', 'lastSeen', 'status'])
  const name = str(f.name, `${path}.name`, NODE_NAME)
  if (name !== key) throw new Invalid(`${path}.name`, `the same as its key "${key}"`, name)
  if (f.status !== 'up' && f.status !== 'down')
    throw new Invalid(`${path}.status`, 'up | down', f.status)
  return {
    name,
    addr: str(f.addr, `${path}.addr`, HOST, 'an address such as "10.0.0.5"'),
    capacity: int(f.capacity, `${path}.capacity`),
    lastSeen: int(f.lastSeen, `${path}.lastSeen`),
    status: f.status,
  }
}

function slot(v: unknown, path: string): Slot {
  const f = fields(v, path, ['node', 'release', 'restart', 'port'], ['node', 'release', 'restart'])
  const s: Slot = {
    node: str(f.node, `${path}.node`, NODE_NAME),
    release: int(f.release, `${path}.release`, 1),
    restart: int(f.restart, `${path}.restart`),
  }
  if (f.port !== undefined) s.port = int(f.port, `${path}.port`, 1, 65535)
  return s
}

/** Checks a parsed state file; throws Invalid naming the first bad field. */
export function checkState(v: unknown): State {
  const f = fields(v, 'state', ['version', 'epoch', 'apps', 'nodes', 'placement', 'nextPort'])
  if (f.version !== 1) throw new Invalid('state.version', '1', f.version)
  const apps: Record<string, App> = {}
  const appsIn = map(f.apps, 'state.apps', APP_NAME, 'an app name', (x) => x)
  for (const [key, x] of Object.entries(appsIn)) apps[key] = app(x, `state.apps.${key}`, key)
  const nodes: Record<string, NodeRecord> = {}
  const nodesIn = map(f.nodes, 'state.nodes', NODE_NAME, 'a node name', (x) => x)
  for (const [key, x] of Object.entries(nodesIn)) nodes[key] = node(x, `state.nodes.${key}`, key)
  return {
    version: 1,
    epoch: int(f.epoch, 'state.epoch'),
    apps,
    nodes,
    placement: map(f.placement, 'state.placement', INSTANCE, 'an instance name APP.TYPE.N', slot),
    nextPort: map(f.nextPort, 'state.nextPort', NODE_NAME, 'a node name', (x, at) =>
      int(x, at, 1, 65535),
    ),
  }
}

/** The state file under `home`. */
export function stateFile(home: string): string {
  return join(home, 'master', 'state.json')
}

export function emptyState(): State {
  return { version: 1, epoch: 0, apps: {}, nodes: {}, placement: {}, nextPort: {} }
}

/** Reads and checks the state file; a missing file is the empty state. Throws E_MASTER. */
export function loadState(file: string): State {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return emptyState()
    throw new AppError(
      'E_MASTER',
      `cannot read the master state ${file}: ${(err as Error).message}; check its permissions`,
    )
  }
  const fix =
    'restore it from a backup, or fix the field by hand; moving it away starts an empty master that has forgotten every app'
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (err) {
    throw new AppError(
      'E_MASTER',
      `the master state ${file} is corrupt: not JSON (${(err as Error).message}); ${fix}`,
    )
  }
  try {
    return checkState(json)
  } catch (err) {
    if (!(err instanceof Invalid)) throw err
    throw new AppError('E_MASTER', `the master state ${file} is corrupt: ${err.message}; ${fix}`)
  }
}

/** Writes the state atomically (temp file, fsync, rename, fsync of the directory). */
export async function saveState(file: string, state: State): Promise<void> {
  await writeFileAtomic(file, JSON.stringify(state, null, 2) + '\n')
}

/** Loads the state, increments its epoch and saves it: what the master runs with. */
export async function openState(file: string): Promise<State> {
  mkdirSync(dirname(file), { recursive: true })
  const state = loadState(file)
  state.epoch += 1
  await saveState(file, state)
  return state
}
