/**
 * @module The frontend -> master status report, for deploys: which release of each deploying app
 * takes new requests, and whether the older ones have drained. One ZeroMQ frame on a PUSH to the
 * master's stats endpoint (the socket node reports use; this one is told apart by its
 * "frontend" key), sent at once when something changed and every BAREKU_FRONTEND_REPORT_MS.
 *
 *   report  = JSON { "frontend": NAME, "time": INT (ms since the epoch),
 *                    "apps": { APP: AppStatus, ... } }   ; apps whose route is of kind 'releases'
 *   AppStatus = { "serving": INT,                        ; the release new requests go to
 *                 "releases": [ReleaseStatus, ...] }     ; each release in the route table
 *   ReleaseStatus = { "release": INT >= 1,
 *                     "ready": BOOL,       ; minReady handlers connected (and health checked),
 *                                         ; or a proxy backend that passed its health check
 *                     "inFlight": INT,    ; requests and WebSockets still on it
 *                     "drained": BOOL,    ; older than a ready serving release, nothing in flight
 *                     "failed"?: BOOL }   ; its health check failed: it is never routed to
 *
 * The master drops an older release's instances (the worker then stops them) once a report says
 * the app's newest release is ready and serving and the older one drained. With several
 * frontends, each must say so (today: one frontend per cluster).
 * `parseFrontendReport` checks every field and throws E_NODE_REPORT naming the bad one.
 */
import { AppError } from '../errors.js'

export interface ReleaseStatus {
  release: number
  ready: boolean
  inFlight: number
  drained: boolean
  failed?: boolean
}

export interface AppStatus {
  serving: number
  releases: ReleaseStatus[]
}

export interface FrontendReport {
  frontend: string
  time: number
  apps: Record<string, AppStatus>
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/
const APP = /^[a-z][a-z0-9-]{0,29}$/
const MAX_APPS = 10_000

function bad(field: string, expected: string): never {
  throw new AppError(
    'E_NODE_REPORT',
    `frontend report refused: ${field} must be ${expected}; the sender is not a Bareku frontend of this version`,
  )
}

function int(v: unknown, field: string, min = 0): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
    bad(field, `an integer >= ${min}`)
  }
  return v
}

function bool(v: unknown, field: string): boolean {
  if (typeof v !== 'boolean') bad(field, 'true or false')
  return v
}

function obj(v: unknown, field: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) bad(field, 'an object')
  return v as Record<string, unknown>
}

/** True for a stats frame that is a frontend report (node reports have "node" instead). */
export function isFrontendReport(frame: Buffer): boolean {
  // Cheap: both are JSON objects written by our own encoders with their key first.
  return frame.subarray(0, 12).toString('latin1') === '{"frontend":'
}

export function encodeFrontendReport(report: FrontendReport): Buffer {
  return Buffer.from(
    JSON.stringify({ frontend: report.frontend, time: report.time, apps: report.apps }),
  )
}

/** Parses and checks one report frame. */
export function parseFrontendReport(frame: Buffer): FrontendReport {
  let v: unknown
  try {
    v = JSON.parse(frame.toString('utf8'))
  } catch {
    bad('the frame', 'JSON')
  }
  const r = obj(v, 'the report')
  if (typeof r.frontend !== 'string' || r.frontend.length > 200 || !NAME.test(r.frontend)) {
    bad('frontend', `a name matching ${NAME}`)
  }
  const rawApps = obj(r.apps, 'apps')
  const names = Object.keys(rawApps)
  if (names.length > MAX_APPS) bad('apps', `at most ${MAX_APPS} apps`)
  const apps: Record<string, AppStatus> = {}
  for (const name of names) {
    if (!APP.test(name)) bad(`apps key ${JSON.stringify(name)}`, `an app name matching ${APP}`)
    const a = obj(rawApps[name], `apps.${name}`)
    if (!Array.isArray(a.releases) || a.releases.length > 1000) {
      bad(`apps.${name}.releases`, 'an array of at most 1000')
    }
    apps[name] = {
      serving: int(a.serving, `apps.${name}.serving`, 1),
      releases: a.releases.map((x: unknown, i): ReleaseStatus => {
        const f = `apps.${name}.releases[${i}]`
        const s = obj(x, f)
        const out: ReleaseStatus = {
          release: int(s.release, `${f}.release`, 1),
          ready: bool(s.ready, `${f}.ready`),
          inFlight: int(s.inFlight, `${f}.inFlight`),
          drained: bool(s.drained, `${f}.drained`),
        }
        if (s.failed !== undefined) out.failed = bool(s.failed, `${f}.failed`)
        return out
      }),
    }
  }
  return { frontend: r.frontend, time: int(r.time, 'time'), apps }
}
