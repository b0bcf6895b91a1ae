/**
 * @module The client -> master report, one ZeroMQ frame on the client's PUSH (sendTimeout 0:
 * a dead master never blocks a node). Sent every BAREKU_CLIENT_REPORT_MS and at once when
 * something changed; it is also the node's heartbeat.
 *
 *   report   = JSON { "node": NAME, "addr": HOST, "time": INT (ms since the epoch),
 *                     "applied": { "epoch": INT, "seq": INT } | null,   ; host list in worker.json
 *                     "capacity": INT,                  ; most instances this node takes
 *                     "load": [NUM, NUM, NUM],          ; os.loadavg()
 *                     "mem": { "total": INT, "free": INT },   ; bytes
 *                     "instances": [InstanceStatus, ...],
 *                     "errors": [STRING, ...] }         ; why the node could not apply a list
 *                                                       ; (bad slug, bad spec), newest last, <= 20
 *   InstanceStatus = { "name": NAME, "app": NAME, "type": TYPE, "release": INT,
 *                      "state": "starting" | "ready" | "backoff" | "stopping",
 *                      "pid"?: INT, "port"?: INT, "restarts": INT }
 *   HOST = the address other nodes and the frontend reach this node at (an IP or a name)
 *
 * The master trusts nothing in it: `parseNodeReport` checks every field and throws E_NODE_REPORT.
 */
import { AppError } from '../errors.js'

export type InstanceRunState = 'starting' | 'ready' | 'backoff' | 'stopping'

export interface InstanceStatus {
  name: string
  app: string
  type: string
  release: number
  state: InstanceRunState
  pid?: number
  port?: number
  restarts: number
}

export interface NodeReport {
  node: string
  addr: string
  time: number
  applied: { epoch: number; seq: number } | null
  capacity: number
  load: [number, number, number]
  mem: { total: number; free: number }
  instances: InstanceStatus[]
  errors: string[]
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/
const TYPE = /^[A-Za-z0-9_-]+$/
/** Instance names may carry the worker's surge suffix: "app.web.1~1a2b3c4d". */
const INSTANCE = /^[A-Za-z0-9][A-Za-z0-9_.~-]*$/
const ADDR = /^[A-Za-z0-9_.:-]+$/
const STATES: readonly string[] = ['starting', 'ready', 'backoff', 'stopping']
const MAX_INSTANCES = 10_000
const MAX_ERRORS = 20

function bad(field: string, expected: string): never {
  throw new AppError(
    'E_NODE_REPORT',
    `node report refused: ${field} must be ${expected}; the sender is not a Bareku client of this version`,
  )
}

function int(v: unknown, field: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) bad(field, 'an integer >= 0')
  return v
}

function num(v: unknown, field: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) bad(field, 'a number >= 0')
  return v
}

function name(v: unknown, field: string, re = NAME): string {
  if (typeof v !== 'string' || v.length > 200 || !re.test(v)) bad(field, `a name matching ${re}`)
  return v
}

export function encodeNodeReport(report: NodeReport): Buffer {
  return Buffer.from(JSON.stringify(report))
}

/** Parses and checks one report frame. Throws E_NODE_REPORT naming the bad field. */
export function parseNodeReport(frame: Buffer): NodeReport {
  let v: unknown
  try {
    v = JSON.parse(frame.toString('utf8'))
  } catch {
    bad('the frame', 'JSON')
  }
  const r = v as Record<string, unknown> | null
  if (typeof r !== 'object' || r === null || Array.isArray(r)) bad('the report', 'an object')
  const applied = r.applied as Record<string, unknown> | null | undefined
  if (applied !== null && (typeof applied !== 'object' || applied === undefined)) {
    bad('applied', '{"epoch", "seq"} or null')
  }
  const load = r.load
  if (!Array.isArray(load) || load.length !== 3) bad('load', 'three numbers')
  const mem = r.mem as Record<string, unknown> | null
  if (typeof mem !== 'object' || mem === null) bad('mem', '{"total", "free"}')
  if (!Array.isArray(r.instances) || r.instances.length > MAX_INSTANCES) {
    bad('instances', `an array of at most ${MAX_INSTANCES}`)
  }
  if (!Array.isArray(r.errors) || r.errors.length > MAX_ERRORS) {
    bad('errors', `an array of at most ${MAX_ERRORS} strings`)
  }
  return {
    node: name(r.node, 'node'),
    addr: name(r.addr, 'addr', ADDR),
    time: int(r.time, 'time'),
    applied:
      applied === null
        ? null
        : { epoch: int(applied.epoch, 'applied.epoch'), seq: int(applied.seq, 'applied.seq') },
    capacity: int(r.capacity, 'capacity'),
    load: [num(load[0], 'load[0]'), num(load[1], 'load[1]'), num(load[2], 'load[2]')],
    mem: { total: int(mem.total, 'mem.total'), free: int(mem.free, 'mem.free') },
    instances: r.instances.map((x: unknown, i): InstanceStatus => {
      const s = x as Record<string, unknown> | null
      const f = `instances[${i}]`
      if (typeof s !== 'object' || s === null) bad(f, 'an object')
      if (typeof s.state !== 'string' || !STATES.includes(s.state)) {
        bad(`${f}.state`, STATES.join(' | '))
      }
      const out: InstanceStatus = {
        name: name(s.name, `${f}.name`, INSTANCE),
        app: name(s.app, `${f}.app`),
        type: name(s.type, `${f}.type`, TYPE),
        release: int(s.release, `${f}.release`),
        state: s.state as InstanceRunState,
        restarts: int(s.restarts, `${f}.restarts`),
      }
      if (s.pid !== undefined) out.pid = int(s.pid, `${f}.pid`)
      if (s.port !== undefined) out.port = int(s.port, `${f}.port`)
      return out
    }),
    errors: r.errors.map((e: unknown, i) => {
      if (typeof e !== 'string') bad(`errors[${i}]`, 'a string')
      return e.slice(0, 1000)
    }),
  }
}
