/**
 * @module The frontend's route table: servers -> hosts -> routes -> targets, as Mongrel2 models
 * them. It is what the master publishes to frontends, what a JSON route file holds, and what
 * `parseM2sh` makes of a Mongrel2 `.conf` file. Routing itself is in match.ts.
 *
 *   RouteTable = { "servers": [Server, ...], "settings"?: { NAME: string | number, ... },
 *                  "mimetypes"?: { ".EXT": "type/subtype", ... } }
 *   Server     = { "uuid", "name", "bindAddr"? = "0.0.0.0", "port", "chroot"? = "",
 *                  "defaultHost" (the name of one of its hosts), "hosts": [Host, ...],
 *                  "accessLog"?, "errorLog"?, "pidFile"?, "controlPort"?, "useSsl"? (boolean) }
 *   Host       = { "name", "matching"? = name, "routes": { ROUTE: Target, ... } }
 *   ROUTE      = prefix [ "(" pattern ]          ; non-empty; "@name" is a JSON socket route
 *   Target     = { "kind": "handler", "sendSpec", "sendIdent", "recvSpec", "recvIdent"? = "",
 *                  "protocol"? = "json" | "tnetstring", "rawPayload"? = false }
 *              | { "kind": "dir", "base" (ends with "/"), "indexFile", "defaultCtype",
 *                  "cacheTtl"? = 0, "slug"?: { "app", "sha256", "size", "release" } }
 *                  ; with "slug" (master tables only: a static site's release), base is
 *                  ; relative to that slug unpacked, which the frontend fetches first
 *              | { "kind": "proxy", "backends": [{ "addr", "port" }, ...] }   ; at least one
 *              | { "kind": "releases", "app", "minReady"? = 1,
 *                  "releases": [{ "release": INT >= 1, "target": Target,
 *                                 "healthcheck"?: HealthCheck }, ...] }
 *                  ; the releases of one app during a deploy (master tables only): each
 *                  ; release's own handler or proxy target (not dir, not releases), at least
 *                  ; one, release numbers unique. The frontend sends each new request to the
 *                  ; newest release that is ready (minReady handlers connected, or a proxy
 *                  ; backend that passed its health check), lets the older ones drain, and
 *                  ; reports to the master (lib/protocol/frontend-report.ts).
 *   HealthCheck = { "path" (starts with "/"), "method"? = "GET" | "HEAD", "status"? = 200,
 *                   "match"? (a substring the body must contain), "attempts"? = 3 (failures
 *                   allowed before the release counts as failed), "timeoutMs"? = 2000,
 *                   "intervalMs"? = 1000 }   ; the app's app.json "healthchecks" entry
 *   ports are integers 0..65535; specs are ZeroMQ endpoints (tcp://, ipc://, inproc://);
 *   sendIdent is non-empty without white space; host names and matchings are unique per server.
 *
 * `parseRouteTable` fills in the defaults shown with "?=", rejects unknown fields (a typo is an
 * error, not a silent default), and names the path of a bad field, e.g.
 * `servers[0].hosts[1].routes["/x"].sendSpec`. `encodeRouteTable` writes every field, so what
 * it writes parses back to an equal table. The check* rules are shared with the m2sh parser.
 */
import { AppError } from '../errors.js'
import { compileRoutePattern } from './match.js'

/** A Mongrel2 handler: we bind PUSH on sendSpec and SUB (subscribed to recvIdent) on recvSpec. */
export interface HandlerTarget {
  kind: 'handler'
  sendSpec: string
  sendIdent: string
  recvSpec: string
  recvIdent: string
  protocol: 'json' | 'tnetstring'
  rawPayload: boolean
}

/** Static files served from `base` (relative to the chroot, or to `slug` unpacked). */
export interface DirTarget {
  kind: 'dir'
  base: string
  indexFile: string
  defaultCtype: string
  cacheTtl: number
  slug?: DirSlug
}

/** The slug of a static site's release, whose files a Dir route serves. */
export interface DirSlug {
  app: string
  sha256: string
  size: number
  release: number
}

/** Plain HTTP backends. Mongrel2's Proxy(addr, port) gives one; the JSON form allows several. */
export interface ProxyTarget {
  kind: 'proxy'
  backends: { addr: string; port: number }[]
}

/** A check a release must pass, through its own handlers or backends, before it is routed to. */
export interface HealthCheck {
  path: string
  method: 'GET' | 'HEAD'
  status: number
  match?: string
  attempts: number
  timeoutMs: number
  intervalMs: number
}

/** One release's target within a ReleasesTarget. */
export interface ReleaseTarget {
  release: number
  target: HandlerTarget | ProxyTarget
  healthcheck?: HealthCheck
}

/** The releases of an app side by side during a deploy; see the grammar above. */
export interface ReleasesTarget {
  kind: 'releases'
  app: string
  minReady: number
  releases: ReleaseTarget[]
}

export type Target = HandlerTarget | DirTarget | ProxyTarget | ReleasesTarget

/** The single targets a route leads to: itself, or each release's. */
export function leafTargets(t: Target): (HandlerTarget | DirTarget | ProxyTarget)[] {
  return t.kind === 'releases' ? t.releases.map((r) => r.target) : [t]
}

/** A virtual host: `matching` is compared with the end of the Host header. */
export interface HostSpec {
  name: string
  matching: string
  /** Route string -> target, in insertion order. */
  routes: Record<string, Target>
}

/** One listening server, as Mongrel2's Server(...). */
export interface ServerSpec {
  uuid: string
  name: string
  bindAddr: string
  port: number
  chroot: string
  /** The `name` of the host that serves requests no host matches. */
  defaultHost: string
  hosts: HostSpec[]
  accessLog?: string
  errorLog?: string
  pidFile?: string
  controlPort?: string
  useSsl?: boolean
}

/** Everything a frontend needs to route: Mongrel2's servers, settings and mimetypes. */
export interface RouteTable {
  servers: ServerSpec[]
  settings: Record<string, string | number>
  mimetypes: Record<string, string>
}

const ENDPOINT_EXPECTED =
  "a ZeroMQ endpoint such as 'tcp://127.0.0.1:9999' (tcp://HOST:PORT, ipc://PATH or inproc://NAME)"

/** What `spec` should have been, or undefined when it is a ZeroMQ endpoint we can bind. */
export function checkEndpoint(spec: string): string | undefined {
  const tcp = /^tcp:\/\/\S+:(\d+|\*)$/.exec(spec)
  if (tcp !== null) return tcp[1] === '*' || Number(tcp[1]) <= 65535 ? undefined : ENDPOINT_EXPECTED
  return /^(ipc|inproc):\/\/\S+$/.test(spec) ? undefined : ENDPOINT_EXPECTED
}

/** What `port` should have been, or undefined when it is an integer 0..65535. */
export function checkPort(port: number): string | undefined {
  return Number.isInteger(port) && port >= 0 && port <= 65535
    ? undefined
    : 'an integer port from 0 to 65535'
}

/** What a handler's send_ident should have been, or undefined when it is usable. */
export function checkSendIdent(ident: string): string | undefined {
  // It is the first space-separated field of every request message (Mongrel2's SENDER).
  return ident !== '' && !/\s/.test(ident)
    ? undefined
    : "a non-empty identity without white space, usually a UUID such as '54c6755b-9628-40a4-9a2d-cc82a816345e'"
}

/** What a Dir base should have been, or undefined when it ends with '/' as Mongrel2 requires. */
export function checkDirBase(base: string): string | undefined {
  return base.endsWith('/') ? undefined : "a directory ending with '/', such as 'static/'"
}

/**
 * What is wrong with a route string, as a sentence, or undefined when it is non-empty and its
 * pattern compiles.
 */
export function checkRouteKey(route: string): string | undefined {
  if (route === '') return "a route must not be empty; use '/' for everything"
  try {
    compileRoutePattern(route)
    return undefined
  } catch (err) {
    if (err instanceof AppError) return err.message
    throw err
  }
}

/** Sets an own property, even one named `__proto__`, which plain assignment would not. */
export function setOwn<V>(obj: Record<string, V>, key: string, value: V): void {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true })
}

/**
 * Validates a JSON value (e.g. `JSON.parse` of a route file) as a RouteTable, filling in defaults.
 * Throws AppError('E_ROUTES') naming the path of the first bad field, what it should be, and what
 * it was.
 */
export function parseRouteTable(json: unknown): RouteTable {
  const root = fields(json, '', ['servers', 'settings', 'mimetypes'])
  const servers = array(root.get('servers'), 'servers').map((v, i) => server(v, `servers[${i}]`))
  unique(servers, (s) => s.name, 'servers', 'name')

  const settings: Record<string, string | number> = {}
  const rawSettings = root.get('settings')
  if (rawSettings !== undefined) {
    for (const [key, value] of Object.entries(object(rawSettings, 'settings'))) {
      const path = `settings${member(key)}`
      if (typeof value === 'string' || (typeof value === 'number' && Number.isFinite(value))) {
        setOwn(settings, key, value)
      } else {
        fail(path, 'a string or a number', value)
      }
    }
  }

  const mimetypes: Record<string, string> = {}
  const rawMimetypes = root.get('mimetypes')
  if (rawMimetypes !== undefined) {
    for (const [key, value] of Object.entries(object(rawMimetypes, 'mimetypes'))) {
      setOwn(mimetypes, key, text(value, `mimetypes${member(key)}`, "a type such as 'text/plain'"))
    }
  }
  return { servers, settings, mimetypes }
}

/** The route table as JSON, every field written, in a fixed key order; `indent` for files. */
export function encodeRouteTable(t: RouteTable, opts: { indent?: number } = {}): string {
  const servers = t.servers.map((s) => ({
    uuid: s.uuid,
    name: s.name,
    bindAddr: s.bindAddr,
    port: s.port,
    chroot: s.chroot,
    defaultHost: s.defaultHost,
    hosts: s.hosts.map((h) => {
      const routes: Record<string, unknown> = {}
      for (const [key, target] of Object.entries(h.routes))
        setOwn(routes, key, encodeTarget(target))
      return { name: h.name, matching: h.matching, routes }
    }),
    accessLog: s.accessLog,
    errorLog: s.errorLog,
    pidFile: s.pidFile,
    controlPort: s.controlPort,
    useSsl: s.useSsl,
  }))
  return JSON.stringify(
    { servers, settings: t.settings, mimetypes: t.mimetypes },
    null,
    opts.indent,
  )
}

function encodeTarget(t: Target): Target {
  switch (t.kind) {
    case 'releases':
      return {
        kind: 'releases',
        app: t.app,
        minReady: t.minReady,
        releases: t.releases.map((r) => ({
          release: r.release,
          target: encodeTarget(r.target) as HandlerTarget | ProxyTarget,
          ...(r.healthcheck ? { healthcheck: { ...r.healthcheck } } : {}),
        })),
      }
    case 'handler':
      return {
        kind: 'handler',
        sendSpec: t.sendSpec,
        sendIdent: t.sendIdent,
        recvSpec: t.recvSpec,
        recvIdent: t.recvIdent,
        protocol: t.protocol,
        rawPayload: t.rawPayload,
      }
    case 'dir':
      return {
        kind: 'dir',
        base: t.base,
        indexFile: t.indexFile,
        defaultCtype: t.defaultCtype,
        cacheTtl: t.cacheTtl,
        ...(t.slug ? { slug: { ...t.slug } } : {}),
      }
    case 'proxy':
      return { kind: 'proxy', backends: t.backends.map((b) => ({ addr: b.addr, port: b.port })) }
  }
}

const SERVER_FIELDS = [
  'uuid',
  'name',
  'bindAddr',
  'port',
  'chroot',
  'defaultHost',
  'hosts',
  'accessLog',
  'errorLog',
  'pidFile',
  'controlPort',
  'useSsl',
]

function server(value: unknown, path: string): ServerSpec {
  const f = fields(value, path, SERVER_FIELDS)
  const scalars = {
    uuid: text(
      f.get('uuid'),
      `${path}.uuid`,
      "a non-empty id such as 'f400bf85-4538-4f7a-8908-67e313d515c2'",
    ),
    name: text(f.get('name'), `${path}.name`, "a non-empty name such as 'main'"),
    bindAddr: str(f.get('bindAddr') ?? '0.0.0.0', `${path}.bindAddr`),
    port: port(f.get('port'), `${path}.port`),
    chroot: str(f.get('chroot') ?? '', `${path}.chroot`),
    defaultHost: text(f.get('defaultHost'), `${path}.defaultHost`, 'the name of one of its hosts'),
  }
  const hosts = array(f.get('hosts'), `${path}.hosts`).map((v, i) => host(v, `${path}.hosts[${i}]`))
  unique(hosts, (h) => h.name, `${path}.hosts`, 'name')
  unique(hosts, (h) => h.matching, `${path}.hosts`, 'matching')
  const spec: ServerSpec = { ...scalars, hosts }
  if (!hosts.some((h) => h.name === spec.defaultHost)) {
    const names = hosts.map((h) => JSON.stringify(h.name)).join(', ') || 'none'
    fail(`${path}.defaultHost`, `the name of one of its hosts (${names})`, spec.defaultHost)
  }
  for (const key of ['accessLog', 'errorLog', 'pidFile', 'controlPort'] as const) {
    const v = f.get(key)
    if (v !== undefined) spec[key] = str(v, `${path}.${key}`)
  }
  const useSsl = f.get('useSsl')
  if (useSsl !== undefined) {
    if (typeof useSsl !== 'boolean') fail(`${path}.useSsl`, 'true or false', useSsl)
    spec.useSsl = useSsl
  }
  return spec
}

function host(value: unknown, path: string): HostSpec {
  const f = fields(value, path, ['name', 'matching', 'routes'])
  const name = text(f.get('name'), `${path}.name`, "a non-empty host name such as 'example.com'")
  const matching = text(
    f.get('matching') ?? name,
    `${path}.matching`,
    "a host name suffix such as 'example.com'",
  )
  const routes: Record<string, Target> = {}
  for (const [key, v] of Object.entries(object(f.get('routes'), `${path}.routes`))) {
    const routePath = `${path}.routes${member(key)}`
    const problem = checkRouteKey(key)
    if (problem !== undefined) throw new AppError('E_ROUTES', `${routePath}: ${problem}`)
    setOwn(routes, key, target(v, routePath))
  }
  return { name, matching, routes }
}

function target(value: unknown, path: string): Target {
  const kind = object(value, path)['kind']
  switch (kind) {
    case 'handler': {
      const f = fields(value, path, [
        'kind',
        'sendSpec',
        'sendIdent',
        'recvSpec',
        'recvIdent',
        'protocol',
        'rawPayload',
      ])
      const protocol = f.get('protocol') ?? 'json'
      if (protocol !== 'json' && protocol !== 'tnetstring') {
        fail(`${path}.protocol`, "'json' or 'tnetstring'", protocol)
      }
      const rawPayload = f.get('rawPayload') ?? false
      if (typeof rawPayload !== 'boolean') fail(`${path}.rawPayload`, 'true or false', rawPayload)
      return {
        kind,
        sendSpec: checked(f.get('sendSpec'), `${path}.sendSpec`, checkEndpoint),
        sendIdent: checked(f.get('sendIdent'), `${path}.sendIdent`, checkSendIdent),
        recvSpec: checked(f.get('recvSpec'), `${path}.recvSpec`, checkEndpoint),
        recvIdent: str(f.get('recvIdent') ?? '', `${path}.recvIdent`),
        protocol,
        rawPayload,
      }
    }
    case 'dir': {
      const f = fields(value, path, [
        'kind',
        'base',
        'indexFile',
        'defaultCtype',
        'cacheTtl',
        'slug',
      ])
      const cacheTtl = f.get('cacheTtl') ?? 0
      if (typeof cacheTtl !== 'number' || !Number.isInteger(cacheTtl) || cacheTtl < 0) {
        fail(`${path}.cacheTtl`, 'a whole number of seconds, 0 or more', cacheTtl)
      }
      const slug = f.get('slug') === undefined ? undefined : dirSlug(f.get('slug'), `${path}.slug`)
      return {
        ...(slug ? { slug } : {}),
        kind,
        base: checked(f.get('base'), `${path}.base`, checkDirBase),
        indexFile: text(
          f.get('indexFile'),
          `${path}.indexFile`,
          "a file name such as 'index.html'",
        ),
        defaultCtype: text(
          f.get('defaultCtype'),
          `${path}.defaultCtype`,
          "a type such as 'text/plain'",
        ),
        cacheTtl,
      }
    }
    case 'proxy': {
      const f = fields(value, path, ['kind', 'backends'])
      const backends = array(f.get('backends'), `${path}.backends`).map((v, i) => {
        const at = `${path}.backends[${i}]`
        const b = fields(v, at, ['addr', 'port'])
        return {
          addr: text(b.get('addr'), `${at}.addr`, "a host name or address such as '127.0.0.1'"),
          port: port(b.get('port'), `${at}.port`),
        }
      })
      if (backends.length === 0) fail(`${path}.backends`, 'at least one { addr, port }', [])
      return { kind, backends }
    }
    case 'releases': {
      const f = fields(value, path, ['kind', 'app', 'minReady', 'releases'])
      const minReady = f.get('minReady') ?? 1
      if (typeof minReady !== 'number' || !Number.isInteger(minReady) || minReady < 1) {
        fail(`${path}.minReady`, 'a whole number of handlers, 1 or more', minReady)
      }
      const releases = array(f.get('releases'), `${path}.releases`).map((v, i) => {
        const at = `${path}.releases[${i}]`
        const r = fields(v, at, ['release', 'target', 'healthcheck'])
        const release = r.get('release')
        if (typeof release !== 'number' || !Number.isInteger(release) || release < 1) {
          fail(`${at}.release`, 'a release number, 1 or more', release)
        }
        const t = target(r.get('target'), `${at}.target`)
        if (t.kind !== 'handler' && t.kind !== 'proxy') {
          fail(`${at}.target.kind`, "'handler' or 'proxy'", t.kind)
        }
        const hc = r.get('healthcheck')
        return hc === undefined
          ? { release, target: t }
          : { release, target: t, healthcheck: parseHealthCheck(hc, `${at}.healthcheck`) }
      })
      if (releases.length === 0) fail(`${path}.releases`, 'at least one { release, target }', [])
      unique(releases, (r) => String(r.release), `${path}.releases`, 'release')
      return {
        kind,
        app: text(f.get('app'), `${path}.app`, "the app's name, such as 'shop'"),
        minReady,
        releases,
      }
    }
    default:
      return fail(`${path}.kind`, "'handler', 'dir', 'proxy' or 'releases'", kind)
  }
}

function dirSlug(value: unknown, path: string): DirSlug {
  const f = fields(value, path, ['app', 'sha256', 'size', 'release'])
  const app = text(f.get('app'), `${path}.app`, "the app's name, such as 'shop'")
  const sha256 = f.get('sha256')
  if (typeof sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(sha256)) {
    fail(`${path}.sha256`, '64 lowercase hex digits', sha256)
  }
  const size = f.get('size')
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 1) {
    fail(`${path}.size`, 'the size in bytes, 1 or more', size)
  }
  const release = f.get('release')
  if (typeof release !== 'number' || !Number.isInteger(release) || release < 1) {
    fail(`${path}.release`, 'a release number, 1 or more', release)
  }
  return { app, sha256, size, release }
}

/**
 * Validates a health check (a route table's, or an app.json "healthchecks" entry given to
 * releases:add), filling in the defaults. Throws AppError(code) naming the bad field.
 */
export function parseHealthCheck(
  value: unknown,
  path: string,
  code: 'E_ROUTES' | 'E_CONTROL' = 'E_ROUTES',
): HealthCheck {
  try {
    const f = fields(value, path, [
      'path',
      'method',
      'status',
      'match',
      'attempts',
      'timeoutMs',
      'intervalMs',
    ])
    const at = (key: string): string => `${path}.${key}`
    const p = f.get('path')
    if (typeof p !== 'string' || !/^\/[!-~]*$/.test(p)) {
      fail(at('path'), "a path starting with '/' without spaces, such as '/health'", p)
    }
    const method = f.get('method') ?? 'GET'
    if (method !== 'GET' && method !== 'HEAD') fail(at('method'), "'GET' or 'HEAD'", method)
    const whole = (key: string, fallback: number, min: number, max: number): number => {
      const v = f.get(key) ?? fallback
      if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
        fail(at(key), `a whole number from ${min} to ${max}`, v)
      }
      return v
    }
    const check: HealthCheck = {
      path: p,
      method,
      status: whole('status', 200, 100, 599),
      attempts: whole('attempts', 3, 1, 1000),
      timeoutMs: whole('timeoutMs', 2000, 1, 600_000),
      intervalMs: whole('intervalMs', 1000, 1, 600_000),
    }
    const match = f.get('match')
    if (match !== undefined) check.match = str(match, at('match'))
    return check
  } catch (err) {
    if (code === 'E_ROUTES' || !(err instanceof AppError)) throw err
    throw new AppError(code, err.message)
  }
}

function fail(path: string, expected: string, got: unknown): never {
  throw new AppError(
    'E_ROUTES',
    `${path || 'the route table'} must be ${expected}, got ${show(got)}`,
  )
}

function show(v: unknown): string {
  if (v === undefined) return 'nothing (the field is missing)'
  if (Array.isArray(v)) return `a list of ${v.length}`
  if (v !== null && typeof v === 'object') return 'an object'
  return JSON.stringify(v)
}

/** `.name` for identifiers, `["/x"]` for anything else. */
function member(key: string): string {
  return /^[A-Za-z_$][A-Za-z0-9_$]*$/.test(key) ? `.${key}` : `[${JSON.stringify(key)}]`
}

function object(v: unknown, path: string): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) fail(path, 'an object', v)
  return v as Record<string, unknown>
}

/** The object's fields as a Map (so `__proto__` is just a key); unknown fields are errors. */
function fields(v: unknown, path: string, allowed: string[]): Map<string, unknown> {
  const out = new Map(Object.entries(object(v, path)))
  for (const key of out.keys()) {
    if (!allowed.includes(key)) {
      throw new AppError(
        'E_ROUTES',
        `${path ? path + member(key) : key} is not a field here; expected one of ${allowed.join(', ')} ` +
          '(check the spelling; keys are camelCase)',
      )
    }
  }
  return out
}

function array(v: unknown, path: string): unknown[] {
  if (!Array.isArray(v)) fail(path, 'a list', v)
  return v
}

function str(v: unknown, path: string): string {
  if (typeof v !== 'string') fail(path, 'a string', v)
  return v
}

function text(v: unknown, path: string, expected: string): string {
  if (typeof v !== 'string' || v === '') fail(path, expected, v)
  return v
}

function port(v: unknown, path: string): number {
  if (typeof v !== 'number') return fail(path, 'an integer port from 0 to 65535', v)
  const problem = checkPort(v)
  if (problem !== undefined) fail(path, problem, v)
  return v
}

function checked(v: unknown, path: string, check: (s: string) => string | undefined): string {
  const s = str(v, path)
  const problem = check(s)
  if (problem !== undefined) fail(path, problem, s)
  return s
}

function unique<T>(items: T[], key: (item: T) => string, path: string, what: string): void {
  const seen = new Map<string, number>()
  items.forEach((item, i) => {
    const k = key(item)
    const first = seen.get(k)
    if (first !== undefined) {
      throw new AppError(
        'E_ROUTES',
        `${path}[${i}].${what} ${JSON.stringify(k)} repeats ${path}[${first}].${what}; ` +
          `each ${what} must be unique, so rename or merge one of them`,
      )
    }
    seen.set(k, i)
  })
}
