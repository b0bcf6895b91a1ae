/**
 * @module The worker config: the file the client writes (whole, atomically) and the worker reads.
 * It lists every process instance one node must run.
 *
 *   WorkerConfig = { "version": 1, "epoch": INT, "seq": INT, "host": STRING,
 *                    "instances": [InstanceSpec, ...] }
 *   InstanceSpec = { "name": NAME,        ; unique on the node, DYNO style: "APP.TYPE.N"
 *                    "app": NAME, "type": TYPE, "release": INT >= 1,
 *                    "command": STRING,   ; run with /bin/sh -c, after .profile.d (worker/spawn.ts)
 *                    "cwd": ABSPATH,      ; the unpacked slug
 *                    "env": { KEY: STRING, ... },
 *                    "user"?: USER,       ; default: the worker's BAREKU_WORKER_USER when root
 *                    "port"?: 1..65535,   ; required for type "web"; unique on the node
 *                    "graceMs"?: 0..3600000 }   ; SIGTERM -> SIGKILL delay, default 10000
 *   INT  = a non-negative safe integer           NAME = [A-Za-z0-9][A-Za-z0-9_.-]*, no "~"
 *   TYPE = [A-Za-z0-9_-]+ (a Procfile type)     KEY  = [A-Za-z_][A-Za-z0-9_]*
 *   USER = [A-Za-z0-9_][A-Za-z0-9_.-]*          strings hold no NUL byte
 *
 * `parseWorkerConfig` is strict: a truncated or corrupt file, an unknown field, a missing field
 * or a bad value is an E_WORKER_CONFIG error naming the field (e.g. `instances[2].port`) and the
 * fix, never a partial config; the worker then keeps running what it has. "~" is reserved in
 * names for the worker's surge instances (`APP.web.1~<hash8>`). `renderWorkerConfig` writes the
 * canonical form and refuses what the parser would refuse, so a client cannot write a file its
 * worker rejects. `specHash` identifies an instance's content: a changed hash means "replace".
 */
import { createHash } from 'node:crypto'
import { AppError } from '../errors.js'

/** One process the node must run. */
export interface InstanceSpec {
  /** Unique on the node, DYNO style: "APP.web.1". Also the name of its log and record files. */
  name: string
  app: string
  /** The Procfile process type. */
  type: string
  release: number
  /** A shell command, run with /bin/sh -c after sourcing .profile.d. */
  command: string
  /** The unpacked slug; also HOME. */
  cwd: string
  env: Record<string, string>
  /** Run as this user; default: the worker's configured user (nobody) when the worker is root. */
  user?: string
  /** $PORT; web types have one, and it is their readiness check. */
  port?: number
  /** Delay from SIGTERM to SIGKILL when stopping; default 10 s. */
  graceMs?: number
}

/** The whole file. */
export interface WorkerConfig {
  version: 1
  /** The master's epoch and sequence number of the host list this was made from. */
  epoch: number
  seq: number
  host: string
  instances: InstanceSpec[]
}

/** Default delay from SIGTERM to SIGKILL. */
export const DEFAULT_GRACE_MS = 10_000
/** Longest allowed graceMs: an hour. */
export const MAX_GRACE_MS = 3_600_000

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/
const TYPE = /^[A-Za-z0-9_-]+$/
const KEY = /^[A-Za-z_][A-Za-z0-9_]*$/
const USER = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/
const TOP_FIELDS = ['version', 'epoch', 'seq', 'host', 'instances'] as const
const SPEC_FIELDS = [
  'name',
  'app',
  'type',
  'release',
  'command',
  'cwd',
  'env',
  'user',
  'port',
  'graceMs',
] as const
const REQUIRED_SPEC_FIELDS = ['name', 'app', 'type', 'release', 'command', 'cwd', 'env'] as const

const FIX = 'the client renders this file from the master: fix the master state or the client'

function bad(field: string, expected: string, got: unknown): AppError {
  return new AppError(
    'E_WORKER_CONFIG',
    `worker config: ${field} must be ${expected}, got ${describe(got)} (${FIX})`,
  )
}

function describe(value: unknown): string {
  if (value === undefined) return 'nothing'
  const text = JSON.stringify(value)
  return text.length > 60 ? `${text.slice(0, 57)}...` : text
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function checkFields(
  obj: Record<string, unknown>,
  where: string,
  allowed: readonly string[],
  required: readonly string[],
): void {
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) {
      throw new AppError(
        'E_WORKER_CONFIG',
        `worker config: unknown field ${where}${where ? '.' : ''}${key} (allowed: ${allowed.join(', ')}); a typo is an error, not a default (${FIX})`,
      )
    }
  }
  for (const key of required) {
    if (!(key in obj)) {
      throw new AppError(
        'E_WORKER_CONFIG',
        `worker config: ${where}${where ? '.' : ''}${key} is missing (${FIX})`,
      )
    }
  }
}

function int(value: unknown, field: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    throw bad(field, `an integer from ${min} to ${max}`, value)
  }
  return value
}

function str(value: unknown, field: string, pattern?: RegExp, expected?: string): string {
  if (typeof value !== 'string' || value === '' || value.includes('\0')) {
    throw bad(field, expected ?? 'a non-empty string without NUL bytes', value)
  }
  if (pattern && !pattern.test(value)) throw bad(field, expected ?? String(pattern), value)
  return value
}

function parseSpec(value: unknown, where: string): InstanceSpec {
  if (!isObject(value)) throw bad(where, 'an object', value)
  checkFields(value, where, SPEC_FIELDS, REQUIRED_SPEC_FIELDS)
  const name = str(
    value.name,
    `${where}.name`,
    NAME,
    'a name of letters, digits, "_", "." and "-" (no "~", no "/"), such as "myapp.web.1"',
  )
  const spec: InstanceSpec = {
    name,
    app: str(value.app, `${where}.app`, NAME, 'an app name such as "myapp"'),
    type: str(value.type, `${where}.type`, TYPE, 'a Procfile process type such as "web"'),
    release: int(value.release, `${where}.release`, 1),
    command: str(value.command, `${where}.command`),
    cwd: str(value.cwd, `${where}.cwd`, /^\//, 'an absolute path (the unpacked slug)'),
    env: {},
  }
  if (!isObject(value.env)) throw bad(`${where}.env`, 'an object of strings', value.env)
  for (const [key, v] of Object.entries(value.env)) {
    if (!KEY.test(key)) throw bad(`${where}.env key`, 'a variable name such as "DATABASE_URL"', key)
    // Values are never logged (they may be secrets): say only what kind of value it was.
    if (typeof v !== 'string' || v.includes('\0')) {
      throw new AppError(
        'E_WORKER_CONFIG',
        `worker config: ${where}.env.${key} must be a string without NUL bytes, got a ${v === null ? 'null' : typeof v} (${FIX})`,
      )
    }
    spec.env[key] = v
  }
  if (value.user !== undefined) {
    spec.user = str(value.user, `${where}.user`, USER, 'a user name such as "nobody"')
  }
  if (value.port !== undefined) spec.port = int(value.port, `${where}.port`, 1, 65535)
  if (value.graceMs !== undefined) {
    spec.graceMs = int(value.graceMs, `${where}.graceMs`, 0, MAX_GRACE_MS)
  }
  if (spec.type === 'web' && spec.port === undefined) {
    throw new AppError(
      'E_WORKER_CONFIG',
      `worker config: ${where}.port is missing: a web instance needs a port, its $PORT (${FIX})`,
    )
  }
  return spec
}

/** Parses and checks the whole file; throws E_WORKER_CONFIG naming the bad field and the fix. */
export function parseWorkerConfig(text: string): WorkerConfig {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (err) {
    throw new AppError(
      'E_WORKER_CONFIG',
      `worker config is not valid JSON (${(err as Error).message}): the file is truncated or corrupt; the client rewrites it whole, check that only the client writes it, atomically`,
    )
  }
  if (!isObject(json)) throw bad('the file', 'a JSON object', json)
  checkFields(json, '', TOP_FIELDS, TOP_FIELDS)
  if (json.version !== 1) {
    throw new AppError(
      'E_WORKER_CONFIG',
      `worker config: version must be 1, got ${describe(json.version)}; this worker reads version 1, upgrade the worker or the client so they match`,
    )
  }
  const config: WorkerConfig = {
    version: 1,
    epoch: int(json.epoch, 'epoch', 0),
    seq: int(json.seq, 'seq', 0),
    host: str(json.host, 'host'),
    instances: [],
  }
  if (!Array.isArray(json.instances)) throw bad('instances', 'an array', json.instances)
  const names = new Map<string, number>()
  const ports = new Map<number, number>()
  json.instances.forEach((value: unknown, i) => {
    const spec = parseSpec(value, `instances[${i}]`)
    const other = names.get(spec.name)
    if (other !== undefined) {
      throw new AppError(
        'E_WORKER_CONFIG',
        `worker config: instances[${i}].name "${spec.name}" is also instances[${other}].name; names are unique on a node (${FIX})`,
      )
    }
    names.set(spec.name, i)
    if (spec.port !== undefined) {
      const holder = ports.get(spec.port)
      if (holder !== undefined) {
        throw new AppError(
          'E_WORKER_CONFIG',
          `worker config: instances[${i}].port ${spec.port} is also instances[${holder}].port; two processes cannot listen on one port (${FIX})`,
        )
      }
      ports.set(spec.port, i)
    }
    config.instances.push(spec)
  })
  return config
}

/** The spec with its fields in a fixed order and its env keys sorted. */
function canonicalSpec(spec: InstanceSpec): InstanceSpec {
  const out: InstanceSpec = {
    name: spec.name,
    app: spec.app,
    type: spec.type,
    release: spec.release,
    command: spec.command,
    cwd: spec.cwd,
    env: Object.fromEntries(Object.entries(spec.env).sort(([a], [b]) => (a < b ? -1 : 1))),
  }
  if (spec.user !== undefined) out.user = spec.user
  if (spec.port !== undefined) out.port = spec.port
  if (spec.graceMs !== undefined) out.graceMs = spec.graceMs
  return out
}

/**
 * Writes the canonical file text (fixed field order, sorted env, trailing newline). Throws
 * E_WORKER_CONFIG when the config is one that parseWorkerConfig would refuse.
 */
export function renderWorkerConfig(config: WorkerConfig): string {
  const text =
    JSON.stringify(
      {
        version: config.version,
        epoch: config.epoch,
        seq: config.seq,
        host: config.host,
        instances: config.instances.map(canonicalSpec),
      },
      null,
      2,
    ) + '\n'
  parseWorkerConfig(text)
  return text
}

/**
 * sha256 (hex) of the canonical JSON of a spec: equal specs hash equal whatever their key order;
 * any change (release, command, env, port, ...) changes it, and the worker replaces the instance.
 */
export function specHash(spec: InstanceSpec): string {
  return createHash('sha256')
    .update(JSON.stringify(canonicalSpec(spec)))
    .digest('hex')
}
