/**
 * @module Host list -> worker config: pure. Each HostInstance becomes an InstanceSpec whose cwd
 * is its unpacked slug. An app is updated whole or not at all:
 *
 *   every instance's slug unpacked, every spec valid,    -> the app's instances from the list
 *   no name or port clash with an app already taken
 *   otherwise (slug failed or missing, spec refused)     -> the app keeps the instances it has in
 *                                                           the current worker.json, and the
 *                                                           reason goes to `errors`
 *   an app in worker.json but not in the list            -> gone (the master removed it)
 *
 * A kept instance that clashes (name or port) with an updated one is dropped: the master's newer
 * placement wins. Instances are sorted by name, so the same input gives the same file text.
 */
import {
  renderWorkerConfig,
  type InstanceSpec,
  type WorkerConfig,
} from '../lib/config/worker-config.js'
import type { HostInstance, HostList } from '../lib/protocol/host-list.js'

export interface RenderInput {
  list: HostList
  meta: { epoch: number; seq: number }
  /** The unpacked directory of every slug that is ready, by sha256. */
  slugDirs: ReadonlyMap<string, string>
  /** Why a slug is not ready (fetch error, sha mismatch, unsafe contents), by sha256. */
  slugErrors: ReadonlyMap<string, string>
  /** The worker config on disk now, if it is readable. */
  current: WorkerConfig | undefined
}

export interface RenderResult {
  config: WorkerConfig
  /** Apps that kept their old instances, and why. */
  failed: Map<string, string>
  /** One line per failed app or dropped instance, for the log and the node report. */
  errors: string[]
}

/** The spec of one host instance run from `cwd`: the known fields only, in a fixed order. */
export function instanceSpec(inst: HostInstance, cwd: string): InstanceSpec {
  const spec: InstanceSpec = {
    name: inst.name,
    app: inst.app,
    type: inst.type,
    release: inst.release,
    command: inst.command,
    cwd,
    env: inst.env,
  }
  if (inst.user !== undefined) spec.user = inst.user
  if (inst.port !== undefined) spec.port = inst.port
  if (inst.graceMs !== undefined) spec.graceMs = inst.graceMs
  return spec
}

/** Checks one spec as the worker would; the reason it would be refused, or undefined. */
function refusal(spec: InstanceSpec, host: string): string | undefined {
  try {
    renderWorkerConfig({ version: 1, epoch: 0, seq: 0, host, instances: [spec] })
    return undefined
  } catch (err) {
    return (err as Error).message
  }
}

class Taken {
  names = new Map<string, string>()
  ports = new Map<number, string>()

  clash(spec: InstanceSpec): string | undefined {
    if (this.names.has(spec.name)) return `the name ${spec.name} is taken twice`
    const holder = spec.port === undefined ? undefined : this.ports.get(spec.port)
    if (holder !== undefined) return `port ${spec.port} of ${spec.name} is also ${holder}'s`
    return undefined
  }

  /** The first clash of `specs` with what is taken or with each other; else takes them all. */
  take(specs: InstanceSpec[]): string | undefined {
    const trial = new Taken()
    trial.names = new Map(this.names)
    trial.ports = new Map(this.ports)
    for (const spec of specs) {
      const clash = trial.clash(spec)
      if (clash !== undefined) return clash
      trial.names.set(spec.name, spec.name)
      if (spec.port !== undefined) trial.ports.set(spec.port, spec.name)
    }
    this.names = trial.names
    this.ports = trial.ports
    return undefined
  }
}

/** The worker config for a host list, with the failed apps kept as they are in `current`. */
export function renderHost(input: RenderInput): RenderResult {
  const { list, meta, slugDirs, slugErrors, current } = input
  const byApp = new Map<string, HostInstance[]>()
  for (const inst of list.instances) {
    const app = String(inst.app)
    byApp.set(app, [...(byApp.get(app) ?? []), inst])
  }
  const taken = new Taken()
  const instances: InstanceSpec[] = []
  const failed = new Map<string, string>()
  for (const app of [...byApp.keys()].sort()) {
    let reason: string | undefined
    const specs: InstanceSpec[] = []
    for (const inst of byApp.get(app)!) {
      const dir = slugDirs.get(inst.slug)
      if (dir === undefined) {
        reason = `slug ${inst.slug}: ${slugErrors.get(inst.slug) ?? 'not unpacked'}`
        break
      }
      const spec = instanceSpec(inst, dir)
      const refused = refusal(spec, list.host)
      if (refused !== undefined) {
        reason = `instance spec refused: ${refused}`
        break
      }
      specs.push(spec)
    }
    if (reason === undefined) {
      const clash = taken.take(specs)
      if (clash !== undefined) reason = `instance spec refused: ${clash}`
    }
    if (reason === undefined) instances.push(...specs)
    else failed.set(app, reason)
  }
  const errors: string[] = []
  for (const [app, reason] of failed) {
    const kept: string[] = []
    for (const spec of current?.instances ?? []) {
      if (spec.app !== app) continue
      const clash = taken.take([spec])
      if (clash === undefined) {
        instances.push(spec)
        kept.push(spec.name)
      } else {
        errors.push(`app ${app}: its running instance ${spec.name} was dropped: ${clash}`)
      }
    }
    errors.push(
      `app ${app} not updated: ${reason}; it keeps ${kept.length} instance(s) from before${kept.length ? ` (${kept.join(', ')})` : ''}`,
    )
  }
  instances.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  return {
    config: { version: 1, epoch: meta.epoch, seq: meta.seq, host: list.host, instances },
    failed,
    errors,
  }
}
