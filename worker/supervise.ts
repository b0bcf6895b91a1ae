/**
 * @module The reconcile planner: pure. Given the desired instances (the worker config), what is
 * live on the node and the time, it returns the actions that move the node one step towards the
 * config. The worker runs it on every tick and after every event, so each call only has to make
 * progress; it keeps no state of its own (level-triggered).
 *
 * Names: a desired instance's name is its *slot* ("APP.web.1"). A replacement runs under a surge
 * name "SLOT~<hash8>" until the old instance is gone, then is promoted to the slot name.
 *
 *   nothing live for a slot              -> start
 *   live and same spec hash              -> nothing
 *   live, slot no longer desired         -> stop (removed)
 *   live, spec hash changed              -> replace: start SLOT~<hash8>; when it is ready, stop the
 *                                           old one (replaced); when the old one is gone, promote
 *   ... but the new spec keeps the port  -> stop the old one first, then start (two processes
 *                                           cannot listen on one port: a short gap, not a crash loop)
 *   crashed                              -> restartLater(now-ish + backoff), then start when due
 *   ready for 10 s                       -> stable: the crash backoff starts again at 1 s
 *   crashed, not desired or superseded   -> forget
 *   stopping                             -> nothing: wait for it to exit (the worker escalates to
 *                                           SIGKILL after graceMs); its slot is not restarted
 *                                           until it is gone, so ports and names never clash
 *
 * Backoff: 1 s, 2 s, 4 s, ... doubling to 60 s; an instance that stayed up 10 s (or was marked
 * stable) starts again at 1 s. A new spec for a crashed instance starts it at once (a new release
 * is often the fix).
 */
import { specHash, type InstanceSpec } from '../lib/config/worker-config.js'

/**
 * starting: spawned (or adopted), readiness not shown yet.
 * ready: readiness shown (web: $PORT accepts TCP; others: alive 1 s), up less than 10 s.
 * running: ready and up 10 s or more; its crash backoff was reset.
 * stopping: SIGTERM sent, waiting for the exit.
 * crashed: exited without being asked to; waiting to be restarted.
 */
export type InstanceState = 'starting' | 'ready' | 'running' | 'stopping' | 'crashed'

/** What the planner needs to know about one live (or recently crashed) instance. */
export interface LiveInstance {
  /** The slot name, or a surge name "SLOT~<hash8>". */
  name: string
  specHash: string
  /** Undefined once it has exited. */
  pid?: number
  state: InstanceState
  /** Consecutive crash restarts so far (the backoff exponent). */
  restarts: number
  /** When it was last started (ms since the epoch). */
  startedAt?: number
  /** When it last exited, for crashed instances. */
  exitedAt?: number
  /** When a crashed instance is due to be restarted; undefined until restartLater was planned. */
  nextRestartAt?: number
  /** Its $PORT, if any. */
  port?: number
}

/** One step for the worker to take. */
export type Action =
  /** Spawn the desired spec of slot `slot` under `name` (a new instance, or a crashed record). */
  | { kind: 'start'; name: string; slot: string }
  /** SIGTERM the instance's process group (SIGKILL after its graceMs). */
  | { kind: 'stop'; name: string; reason: 'removed' | 'replaced' | 'duplicate' }
  /** Surge-first replacement: spawn the new spec of `name` as `surge`; `name` keeps running. */
  | { kind: 'replace'; name: string; surge: string }
  /** Restart a crashed instance at `at`; `restarts` is its new consecutive-restart count. */
  | { kind: 'restartLater'; name: string; at: number; restarts: number }
  /** A surge instance took over its slot: rename it to the slot name. */
  | { kind: 'promote'; name: string; to: string }
  /** Up long enough: reset its restart count (state "running"). */
  | { kind: 'stable'; name: string }
  /** Drop the record of a dead instance that will not be restarted. */
  | { kind: 'forget'; name: string }

/** The crash backoff: first delay, ceiling, and how long an instance must stay up to reset it. */
export const BACKOFF = { initialMs: 1000, maxMs: 60_000, resetAfterMs: 10_000 } as const

/** The delay before restart number `restarts + 1`: 1 s, 2 s, 4 s, ... 60 s, 60 s. */
export function backoffDelay(restarts: number): number {
  return Math.min(BACKOFF.initialMs * 2 ** Math.min(restarts, 30), BACKOFF.maxMs)
}

/** The slot an instance name serves: the name without its "~<hash8>" surge suffix. */
export function slotOf(name: string): string {
  const i = name.indexOf('~')
  return i === -1 ? name : name.slice(0, i)
}

/** The name a surge replacement of `slot` with spec hash `hash` runs under. */
export function surgeName(slot: string, hash: string): string {
  return `${slot}~${hash.slice(0, 8)}`
}

const alive = (i: LiveInstance): boolean => i.state !== 'crashed' && i.state !== 'stopping'
const serving = (i: LiveInstance): boolean => i.state === 'ready' || i.state === 'running'
const rank = (i: LiveInstance, slot: string): number =>
  (serving(i) ? 0 : i.state === 'starting' ? 2 : 4) + (i.name === slot ? 0 : 1)

/** The backoff step for a crashed instance: schedule it, or start it when due. */
function planCrashed(i: LiveInstance, slot: string, now: number): Action | undefined {
  if (i.nextRestartAt === undefined) {
    const exitedAt = i.exitedAt ?? now
    const upFor = i.startedAt === undefined ? 0 : exitedAt - i.startedAt
    const restarts = upFor >= BACKOFF.resetAfterMs ? 0 : i.restarts
    return {
      kind: 'restartLater',
      name: i.name,
      at: exitedAt + backoffDelay(restarts),
      restarts: restarts + 1,
    }
  }
  if (i.nextRestartAt <= now) return { kind: 'start', name: i.name, slot }
  return undefined
}

function planSlot(
  slot: string,
  hash: string,
  port: number | undefined,
  live: LiveInstance[],
  now: number,
): Action[] {
  const actions: Action[] = []
  const active = live.filter((i) => i.state !== 'stopping')
  const fresh = active
    .filter((i) => i.specHash === hash)
    .sort((a, b) => rank(a, slot) - rank(b, slot))
  const stale = active.filter((i) => i.specHash !== hash)
  const [keeper, ...duplicates] = fresh
  for (const d of duplicates) {
    actions.push(
      d.state === 'crashed'
        ? { kind: 'forget', name: d.name }
        : { kind: 'stop', name: d.name, reason: 'duplicate' },
    )
  }

  if (keeper !== undefined) {
    if (keeper.state === 'crashed') {
      const step = planCrashed(keeper, slot, now)
      if (step) actions.push(step)
    } else if (
      keeper.state === 'ready' &&
      keeper.startedAt !== undefined &&
      now - keeper.startedAt >= BACKOFF.resetAfterMs
    ) {
      actions.push({ kind: 'stable', name: keeper.name })
    }
    for (const old of stale) {
      if (old.state === 'crashed') actions.push({ kind: 'forget', name: old.name })
      // Surge-first: the old instance serves until the new one is ready.
      else if (serving(keeper)) actions.push({ kind: 'stop', name: old.name, reason: 'replaced' })
    }
    const nameTaken = live.some((i) => i.name === slot && i !== keeper)
    if (keeper.name !== slot && serving(keeper) && !nameTaken) {
      actions.push({ kind: 'promote', name: keeper.name, to: slot })
    }
    return actions
  }

  const running = stale.filter(alive)
  for (const old of stale)
    if (old.state === 'crashed') actions.push({ kind: 'forget', name: old.name })
  if (running.length > 0) {
    const samePort = port !== undefined && running.some((i) => i.port === port)
    if (samePort) {
      for (const old of running) actions.push({ kind: 'stop', name: old.name, reason: 'replaced' })
      return actions
    }
    const surge = surgeName(slot, hash)
    // A surge instance of this very spec may still be stopping (a quick flip back): wait for it.
    if (!live.some((i) => i.name === surge)) actions.push({ kind: 'replace', name: slot, surge })
    return actions
  }
  // Nothing runs for the slot. Wait until stopping instances are gone (they may hold the port or
  // the name), then start at once: a crashed instance of an older spec was forgotten above, so
  // the new spec starts without its backoff.
  if (live.some((i) => i.state === 'stopping')) return actions
  actions.push({ kind: 'start', name: slot, slot })
  return actions
}

/**
 * Plans one reconcile step. `desired` is the config's instances (names unique), `live` every
 * instance the worker knows, `now` the time in ms. Returns the actions in the order to apply.
 */
export function planReconcile(
  desired: readonly InstanceSpec[],
  live: readonly LiveInstance[],
  now: number,
): Action[] {
  const bySlot = new Map<string, LiveInstance[]>()
  for (const i of live) {
    const slot = slotOf(i.name)
    bySlot.set(slot, [...(bySlot.get(slot) ?? []), i])
  }
  const actions: Action[] = []
  const wanted = new Set<string>()
  for (const spec of desired) {
    wanted.add(spec.name)
    actions.push(
      ...planSlot(spec.name, specHash(spec), spec.port, bySlot.get(spec.name) ?? [], now),
    )
  }
  for (const [slot, instances] of bySlot) {
    if (wanted.has(slot)) continue
    for (const i of instances) {
      if (i.state === 'crashed') actions.push({ kind: 'forget', name: i.name })
      else if (i.state !== 'stopping')
        actions.push({ kind: 'stop', name: i.name, reason: 'removed' })
    }
  }
  return actions
}
