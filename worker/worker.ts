/**
 * @module startWorker: the node's supervisor. A level-triggered loop reads the worker config,
 * looks at what runs, and applies the actions of the pure planner (supervise.ts):
 *
 *   config file --chokidar (its directory: the client replaces the file by rename)--+
 *   timer (BAREKU_WORKER_TICK_MS, sooner while something starts, stops or is due)   +--> tick
 *   an instance exits ('exit' of our children; polled liveness of adopted ones) ----+
 *
 *   tick: read + parse the config (a bad one is logged at warn; the last good one stays)
 *         -> liveness of adopted instances -> readiness of starting ones -> log rotation
 *         -> planReconcile(desired, live, now) -> start / replace / stop / restartLater / ...
 *
 * Only one worker runs per node: `run/worker.lock` is created with O_EXCL and holds the pid (with
 * its start time and boot id, so a pid reused after a reboot is not mistaken for a worker); a
 * lock whose process is gone is taken over. Instances are spawned detached with a record each
 * (records.ts), so a worker that dies or restarts leaves them running, and the next one adopts
 * them. A missing config file changes nothing (the adopted instances keep running); an empty
 * instance list stops everything.
 *
 * Readiness: a web instance (one with a port) is ready when 127.0.0.1:$PORT accepts a TCP
 * connection, tried every 200 ms for up to 60 s; any other instance is ready once it has stayed
 * alive for 1 s. One that is not ready in time is stopped and counts as a crash. Adopted
 * instances are checked the same way, from the time of adoption.
 *
 * Stopping: SIGTERM to the process group, SIGKILL to the group after the spec's graceMs
 * (default 10 s). Exits are logged in execa's wording ("exited with code 1", "was killed with
 * SIGKILL"); an adopted instance is not our child, so its exit status is unknown.
 *
 * Status: after every tick, if anything changed, `run/status.json` is replaced atomically (the
 * client reads it for its reports to the master):
 *
 *   { "time": ms, "epoch": INT | null, "seq": INT | null,      ; of the config being run
 *     "instances": [ { "name", "specHash", "state", "pid"?, "port"?, "restarts",
 *                      "app", "type", "release" } ] }          ; surge instances included
 *
 * with state starting | ready | backoff | stopping ("running" counts as ready, "crashed" as
 * backoff). An adopted instance whose spec is no longer in the config has its app and type
 * read from its name ("APP.TYPE.N") and release 0 (unknown).
 */
import type { ChildProcess } from 'node:child_process'
import {
  closeSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  unlinkSync,
  writeSync,
} from 'node:fs'
import { connect } from 'node:net'
import { dirname, join, resolve } from 'node:path'
import { watch, type FSWatcher } from 'chokidar'
import {
  DEFAULT_GRACE_MS,
  parseWorkerConfig,
  specHash,
  type InstanceSpec,
  type WorkerConfig,
} from '../lib/config/worker-config.js'
import { AppError, isAppError } from '../lib/errors.js'
import { writeFileAtomicSync } from '../lib/fs-atomic.js'
import type { Logger } from '../lib/log.js'
import type { WorkerSettings } from './config.js'
import { adopt, recordsDir, removeRecord, writeRecord } from './records.js'
import {
  bootId as readBootId,
  isAlive,
  readStartTime,
  connectedTo,
  resolveRunAs,
  restorePriority,
  rotateLog,
  spawnInstance,
} from './spawn.js'
import { planReconcile, slotOf, type Action, type InstanceState } from './supervise.js'

/** What a running worker exposes. */
export interface Worker {
  endpoints: { configFile: string; home: string }
  /** Stops supervising and releases the lock; the instances keep running for the next worker. */
  close(): Promise<void>
  /** Stops supervising, stops every instance (SIGTERM, SIGKILL after graceMs), waits for them. */
  stopAll(): Promise<void>
}

/** How long a starting instance may take to become ready. */
const READY_TIMEOUT_MS = 60_000
/**
 * How often readiness (and the exit of adopted instances being stopped) is checked: a connect
 * or a /proc read per starting instance, cheap next to the wait it saves a deploy.
 */
const FAST_POLL_MS = 50
/**
 * A non-web instance counts as ready after staying alive this long, or sooner, for a handler,
 * once it has connected to its frontend's send spec.
 */
const ALIVE_READY_MS = 1000

/** The port of a handler's BAREKU_HANDLER_SEND_SPEC (tcp://HOST:PORT), as Instance fields. */
function handlerPortOf(spec: { env: Record<string, string> }): { handlerPort?: number } {
  const m = /^tcp:\/\/.+:(\d{1,5})$/.exec(spec.env.BAREKU_HANDLER_SEND_SPEC ?? '')
  return m ? { handlerPort: Number(m[1]) } : {}
}

interface Instance {
  name: string
  specHash: string
  pid?: number
  pgid?: number
  starttime?: number
  state: InstanceState
  restarts: number
  startedAt?: number
  exitedAt?: number
  nextRestartAt?: number
  /** Readiness is checked from this time (spawn or adoption). */
  checkingSince?: number
  port?: number
  /** A handler's frontend send port: connected to it, the handler is ready. */
  handlerPort?: number
  graceMs: number
  /** Our own child: its 'exit' event tells us when it ends. Adopted ones are polled. */
  child?: ChildProcess
  killTimer?: NodeJS.Timeout
  /** Stopped because it never became ready: its exit counts as a crash. */
  failed?: boolean
  /** What it runs, for status.json; unknown for an adopted instance until matched to a spec. */
  about?: { app: string; type: string; release: number }
  gone: Array<() => void>
}

interface LockHolder {
  pid: number
  starttime?: number
  bootId?: string
}

function readLock(path: string): LockHolder | undefined {
  try {
    const v = JSON.parse(readFileSync(path, 'utf8')) as Partial<LockHolder>
    return typeof v.pid === 'number' && v.pid > 0 ? (v as LockHolder) : undefined
  } catch {
    return undefined
  }
}

/** Takes run/worker.lock or throws E_WORKER naming the worker that holds it. */
function acquireLock(path: string, boot: string, log: Logger): void {
  const me: LockHolder = {
    pid: process.pid,
    starttime: readStartTime(process.pid) ?? 0,
    bootId: boot,
  }
  for (let attempt = 0; attempt < 3; attempt++) {
    let fd: number
    try {
      fd = openSync(path, 'wx', 0o644)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      const holder = readLock(path)
      if (
        holder &&
        holder.pid !== process.pid &&
        (holder.bootId === undefined || holder.bootId === boot) &&
        isAlive(holder.pid, holder.starttime)
      ) {
        throw new AppError(
          'E_WORKER',
          `another worker (pid ${holder.pid}) holds the lock ${path}: only one worker runs per node; stop pid ${holder.pid} first (a lock left by a dead worker is taken over)`,
        )
      }
      log.warn({ lock: path, pid: holder?.pid }, 'taking over a stale lock')
      try {
        unlinkSync(path)
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e
      }
      continue
    }
    try {
      writeSync(fd, JSON.stringify(me) + '\n')
      fsyncSync(fd)
    } finally {
      closeSync(fd)
    }
    return
  }
  throw new AppError(
    'E_WORKER',
    `could not take the lock ${path}: another worker keeps taking it; run only one worker per node`,
  )
}

function releaseLock(path: string): void {
  if (readLock(path)?.pid !== process.pid) return
  try {
    unlinkSync(path)
  } catch {
    // already gone: nothing to release
  }
}

/** The status file's instance states: what the master needs, not the planner's detail. */
type StatusState = 'starting' | 'ready' | 'backoff' | 'stopping'
const STATUS_STATE: Record<InstanceState, StatusState> = {
  starting: 'starting',
  ready: 'ready',
  running: 'ready',
  stopping: 'stopping',
  crashed: 'backoff',
}

/** app, type and release of an instance from its name "APP.TYPE.N[~hash]" alone. */
function aboutFromName(name: string): { app: string; type: string; release: number } {
  const parts = slotOf(name).split('.')
  if (parts.length < 3) return { app: parts[0] ?? name, type: 'unknown', release: 0 }
  return { app: parts.slice(0, -2).join('.'), type: parts[parts.length - 2]!, release: 0 }
}

/** execa's wording for how a process ended. */
function describeExit(code: number | null, signal: NodeJS.Signals | null, ours: boolean): string {
  if (!ours) return 'exited (status unknown: not a child of this worker)'
  if (signal !== null) return `was killed with ${signal}`
  return `exited with code ${code ?? 'unknown'}`
}

function probePort(port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolvePromise) => {
    const socket = connect({ host: '127.0.0.1', port })
    const done = (ok: boolean): void => {
      socket.destroy()
      resolvePromise(ok)
    }
    socket.setTimeout(timeoutMs, () => done(false))
    socket.once('connect', () => done(true))
    socket.once('error', () => done(false))
  })
}

/**
 * Starts supervising: takes the node's lock, adopts the instances a previous worker left running,
 * watches the config and reconciles. Throws E_WORKER when another worker holds the lock.
 */
export async function startWorker(settings: WorkerSettings, log: Logger): Promise<Worker> {
  const configFile = resolve(settings.configFile)
  const runDir = join(settings.home, 'run')
  const logDir = join(settings.home, 'log')
  const recDir = recordsDir(settings.home)
  const lockPath = join(runDir, 'worker.lock')
  const statusPath = join(runDir, 'status.json')
  for (const dir of [runDir, logDir, recDir, dirname(configFile)]) {
    mkdirSync(dir, { recursive: true })
  }
  const boot = readBootId()
  acquireLock(lockPath, boot, log)

  const instances = new Map<string, Instance>()
  let desired: WorkerConfig | undefined
  let lastText: string | undefined
  let waitingLogged = false
  /** Set when supervision ends: no more ticks. */
  let closed = false
  /** Set by close(): exits are no longer ours to see (the records stay for the next worker). */
  let detached = false
  let timer: NodeJS.Timeout | undefined
  let timerAt = Infinity
  let ticking: Promise<void> | undefined
  let again = false
  /** status.json as last written, without its time: rewritten only when this changes. */
  let lastStatus: string | undefined

  const logFile = (name: string): string => join(logDir, `${slotOf(name)}.log`)

  const { adopted, discarded } = adopt(recDir, boot)
  for (const d of discarded)
    log.info({ instance: d.name, pid: d.pid, reason: d.reason }, 'discarded record')
  for (const rec of adopted) {
    const now = Date.now()
    instances.set(rec.name, {
      name: rec.name,
      specHash: rec.specHash,
      pid: rec.pid,
      pgid: rec.pgid,
      starttime: rec.starttime,
      state: 'starting',
      restarts: 0,
      startedAt: rec.startedAt,
      checkingSince: now,
      ...(rec.port !== undefined ? { port: rec.port } : {}),
      graceMs: rec.graceMs ?? DEFAULT_GRACE_MS,
      gone: [],
    })
    log.info({ instance: rec.name, pid: rec.pid, specHash: rec.specHash }, 'adopted')
  }

  function record(inst: Instance): void {
    writeRecord(recDir, {
      name: inst.name,
      pid: inst.pid!,
      pgid: inst.pgid!,
      starttime: inst.starttime!,
      bootId: boot,
      specHash: inst.specHash,
      startedAt: inst.startedAt!,
      ...(inst.port !== undefined ? { port: inst.port } : {}),
      graceMs: inst.graceMs,
    })
  }

  function onExit(inst: Instance, code: number | null, signal: NodeJS.Signals | null): void {
    if (detached || inst.pid === undefined) return
    const pid = inst.pid
    clearTimeout(inst.killTimer)
    inst.killTimer = undefined
    removeRecord(recDir, inst.name)
    const stopping = inst.state === 'stopping' && !inst.failed
    const now = Date.now()
    log.info(
      {
        instance: inst.name,
        pid,
        code,
        signal,
        reason: describeExit(code, signal, inst.child !== undefined),
        stopping,
        upMs: inst.startedAt === undefined ? undefined : now - inst.startedAt,
      },
      'exited',
    )
    inst.pid = undefined
    inst.child = undefined
    if (stopping) {
      if (instances.get(inst.name) === inst) instances.delete(inst.name)
      log.info({ instance: inst.name, pid }, 'stopped')
    } else {
      inst.state = 'crashed'
      inst.exitedAt = now
      inst.nextRestartAt = undefined
      inst.failed = undefined
    }
    for (const resolveGone of inst.gone.splice(0)) resolveGone()
    schedule(0)
  }

  function signalGroup(inst: Instance, signal: NodeJS.Signals): void {
    if (inst.pid === undefined || inst.pgid === undefined) return
    // An adopted process is not our child: make sure the pid still is that process before
    // signalling its group, so a reused pid is never hit.
    if (!inst.child && !isAlive(inst.pid, inst.starttime)) {
      onExit(inst, null, null)
      return
    }
    try {
      process.kill(-inst.pgid, signal)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err
    }
  }

  function stop(inst: Instance, reason: string): void {
    if (inst.pid === undefined) {
      instances.delete(inst.name)
      return
    }
    inst.state = 'stopping'
    log.info({ instance: inst.name, pid: inst.pid, reason, graceMs: inst.graceMs }, 'stopping')
    inst.killTimer = setTimeout(() => {
      if (inst.pid === undefined) return
      log.warn({ instance: inst.name, pid: inst.pid, graceMs: inst.graceMs }, 'killing')
      signalGroup(inst, 'SIGKILL')
    }, inst.graceMs)
    signalGroup(inst, 'SIGTERM')
  }

  async function launch(name: string, spec: InstanceSpec, restarts: number): Promise<void> {
    const inst: Instance = {
      name,
      specHash: specHash(spec),
      state: 'starting',
      restarts,
      about: { app: spec.app, type: spec.type, release: spec.release },
      ...(spec.port !== undefined ? { port: spec.port } : {}),
      ...handlerPortOf(spec),
      graceMs: spec.graceMs ?? DEFAULT_GRACE_MS,
      gone: [],
    }
    instances.set(name, inst)
    const startedAt = Date.now()
    try {
      const spawned = await spawnInstance(
        spec,
        spec.name,
        logFile(name),
        resolveRunAs(spec, settings.user),
      )
      Object.assign(inst, {
        pid: spawned.pid,
        pgid: spawned.pgid,
        starttime: spawned.starttime,
        child: spawned.child,
        startedAt,
        checkingSince: startedAt,
      })
      spawned.child.once('exit', (code, signal) => onExit(inst, code, signal))
      record(inst)
      log.info(
        {
          instance: name,
          pid: spawned.pid,
          app: spec.app,
          type: spec.type,
          release: spec.release,
          port: spec.port,
          restarts,
        },
        'spawned',
      )
    } catch (err) {
      if (!isAppError(err)) throw err
      log.error({ instance: name, code: err.code, err: err.message }, 'spawn failed')
      inst.state = 'crashed'
      inst.startedAt = startedAt
      inst.exitedAt = Date.now()
    }
  }

  function specOf(slot: string): InstanceSpec {
    const spec = desired?.instances.find((s) => s.name === slot)
    if (!spec) throw new Error(`planner named slot ${slot}, which the config does not hold`)
    return spec
  }

  async function apply(action: Action, now: number): Promise<void> {
    const inst = instances.get(action.name)
    switch (action.kind) {
      case 'start': {
        const spec = specOf(action.slot)
        const same = inst?.state === 'crashed' && inst.specHash === specHash(spec)
        return launch(action.name, spec, same ? inst.restarts : 0)
      }
      case 'replace': {
        log.info({ instance: action.name, surge: action.surge }, 'replacing')
        return launch(action.surge, specOf(action.name), 0)
      }
      case 'stop':
        if (inst) stop(inst, action.reason)
        return
      case 'restartLater':
        if (!inst) return
        inst.nextRestartAt = action.at
        inst.restarts = action.restarts
        log.info(
          { instance: inst.name, inMs: Math.max(0, action.at - now), restarts: action.restarts },
          'restart scheduled',
        )
        return
      case 'promote':
        if (!inst) return
        instances.delete(inst.name)
        removeRecord(recDir, inst.name)
        log.info({ instance: action.to, from: inst.name, pid: inst.pid }, 'promoted')
        inst.name = action.to
        instances.set(inst.name, inst)
        if (inst.pid !== undefined) record(inst)
        return
      case 'stable':
        if (!inst) return
        inst.state = 'running'
        inst.restarts = 0
        log.debug({ instance: inst.name, pid: inst.pid }, 'stable')
        return
      case 'forget':
        instances.delete(action.name)
        removeRecord(recDir, action.name)
        return
    }
  }

  function readConfig(): void {
    let text: string
    try {
      text = readFileSync(configFile, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        log.warn({ file: configFile, err: (err as Error).message }, 'config unreadable')
      } else if (!waitingLogged) {
        waitingLogged = true
        log.info({ file: configFile }, 'waiting for config')
      }
      return
    }
    if (text === lastText) return
    lastText = text
    try {
      desired = parseWorkerConfig(text)
      log.info(
        {
          file: configFile,
          epoch: desired.epoch,
          seq: desired.seq,
          host: desired.host,
          instances: desired.instances.length,
        },
        'config loaded',
      )
    } catch (err) {
      if (!isAppError(err)) throw err
      log.warn(
        { file: configFile, code: err.code, reason: err.message },
        'config refused, keeping the running instances',
      )
    }
  }

  async function checkReadiness(now: number): Promise<void> {
    const starting = [...instances.values()].filter(
      (i) => i.state === 'starting' && i.pid !== undefined,
    )
    await Promise.all(
      starting.map(async (inst) => {
        const by =
          inst.port !== undefined
            ? (await probePort(inst.port)) && 'port'
            : inst.handlerPort !== undefined &&
                inst.pgid !== undefined &&
                connectedTo(inst.pgid, inst.handlerPort)
              ? 'connected'
              : now - (inst.startedAt ?? now) >= ALIVE_READY_MS && 'alive'
        if (inst.state !== 'starting' || inst.pid === undefined) return
        if (by) {
          inst.state = 'ready'
          if (inst.pgid !== undefined) restorePriority(inst.pgid)
          log.info(
            { instance: inst.name, pid: inst.pid, by, afterMs: now - (inst.checkingSince ?? now) },
            'instance ready',
          )
        } else if (now - (inst.checkingSince ?? now) > READY_TIMEOUT_MS) {
          log.error(
            { instance: inst.name, pid: inst.pid, port: inst.port, timeoutMs: READY_TIMEOUT_MS },
            'not ready in time',
          )
          inst.failed = true
          stop(inst, 'not ready')
        }
      }),
    )
  }

  async function tick(): Promise<void> {
    readConfig()
    for (const inst of [...instances.values()]) {
      if (inst.pid !== undefined && !inst.child && !isAlive(inst.pid, inst.starttime)) {
        onExit(inst, null, null)
      }
    }
    await checkReadiness(Date.now())
    if (closed) return
    const slots = new Set([...instances.keys()].map(slotOf))
    for (const s of desired?.instances ?? []) slots.add(s.name)
    for (const slot of slots) {
      const file = logFile(slot)
      if (rotateLog(file, settings.logMaxBytes)) log.info({ file }, 'log rotated')
    }
    // Without a config we do not know what should run: leave everything as it is.
    if (!desired) return
    const now = Date.now()
    const live = [...instances.values()].map((i) => ({
      name: i.name,
      specHash: i.specHash,
      state: i.state,
      restarts: i.restarts,
      ...(i.pid !== undefined ? { pid: i.pid } : {}),
      ...(i.startedAt !== undefined ? { startedAt: i.startedAt } : {}),
      ...(i.exitedAt !== undefined ? { exitedAt: i.exitedAt } : {}),
      ...(i.nextRestartAt !== undefined ? { nextRestartAt: i.nextRestartAt } : {}),
      ...(i.port !== undefined ? { port: i.port } : {}),
    }))
    for (const action of planReconcile(desired.instances, live, now)) {
      if (closed) return
      await apply(action, now)
    }
  }

  function aboutOf(inst: Instance): { app: string; type: string; release: number } {
    if (inst.about) return inst.about
    const spec = desired?.instances.find((s) => s.name === slotOf(inst.name))
    if (spec && specHash(spec) === inst.specHash) {
      inst.about = { app: spec.app, type: spec.type, release: spec.release }
      return inst.about
    }
    return aboutFromName(inst.name)
  }

  /** Replaces run/status.json when the instances or their states changed since the last write. */
  function writeStatus(): void {
    const body = {
      epoch: desired?.epoch ?? null,
      seq: desired?.seq ?? null,
      instances: [...instances.values()]
        .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
        .map((i) => ({
          name: i.name,
          specHash: i.specHash,
          state: STATUS_STATE[i.state],
          ...(i.pid !== undefined ? { pid: i.pid } : {}),
          ...(i.port !== undefined ? { port: i.port } : {}),
          restarts: i.restarts,
          ...aboutOf(i),
        })),
    }
    const text = JSON.stringify(body)
    if (text === lastStatus) return
    writeFileAtomicSync(statusPath, JSON.stringify({ time: Date.now(), ...body }) + '\n')
    lastStatus = text
  }

  function nextDelay(): number {
    const now = Date.now()
    let next = settings.tickMs
    for (const i of instances.values()) {
      if (i.state === 'starting' && i.pid !== undefined) {
        const due =
          i.port !== undefined || i.handlerPort !== undefined
            ? FAST_POLL_MS
            : (i.startedAt ?? now) + ALIVE_READY_MS - now
        next = Math.min(next, due)
      } else if (i.state === 'crashed' && i.nextRestartAt !== undefined) {
        next = Math.min(next, i.nextRestartAt - now)
      } else if (i.state === 'stopping' && !i.child) {
        next = Math.min(next, FAST_POLL_MS)
      }
    }
    return Math.max(0, next)
  }

  function schedule(delayMs: number): void {
    if (closed) return
    const at = Date.now() + delayMs
    if (timer !== undefined && timerAt <= at) return
    clearTimeout(timer)
    timerAt = at
    timer = setTimeout(() => {
      timer = undefined
      timerAt = Infinity
      runTick()
    }, delayMs)
  }

  function runTick(): void {
    if (ticking) {
      again = true
      return
    }
    ticking = tick()
      .then(writeStatus)
      .catch((err: unknown) => {
        // A supervisor must outlive a transient failure (a full disk, a racing rename): the
        // loop is level-triggered, so the next tick retries from the facts.
        log.error({ err }, 'reconcile failed')
      })
      .finally(() => {
        ticking = undefined
        if (again) {
          again = false
          schedule(0)
        } else {
          schedule(nextDelay())
        }
      })
  }

  const watcher: FSWatcher = watch(dirname(configFile), {
    depth: 0,
    ignoreInitial: true,
  })
  watcher.on('all', (_event, path) => {
    if (resolve(path) === configFile) schedule(0)
  })
  watcher.on('error', (err) => log.warn({ err }, 'config watch error'))
  await new Promise<void>((resolveReady) => watcher.once('ready', resolveReady))

  runTick()
  await ticking

  async function stopSupervising(): Promise<void> {
    if (closed) return
    closed = true
    clearTimeout(timer)
    timer = undefined
    await watcher.close()
    await ticking
  }

  return {
    endpoints: { configFile, home: settings.home },
    async close() {
      if (detached) return
      await stopSupervising()
      detached = true
      for (const i of instances.values()) clearTimeout(i.killTimer)
      releaseLock(lockPath)
    },
    async stopAll() {
      if (detached) return
      await stopSupervising()
      const waits: Promise<void>[] = []
      for (const inst of [...instances.values()]) {
        if (inst.pid === undefined) continue
        waits.push(new Promise<void>((r) => inst.gone.push(r)))
        // One already stopping keeps its SIGKILL deadline.
        if (inst.state !== 'stopping') stop(inst, 'stop all')
      }
      const poll = setInterval(() => {
        for (const inst of instances.values()) {
          if (inst.pid !== undefined && !inst.child && !isAlive(inst.pid, inst.starttime)) {
            onExit(inst, null, null)
          }
        }
      }, FAST_POLL_MS)
      try {
        await Promise.all(waits)
      } finally {
        clearInterval(poll)
        // Crashed instances waiting for a restart will not get one now: nothing runs.
        for (const [name, inst] of instances) if (inst.pid === undefined) instances.delete(name)
        try {
          writeStatus()
        } catch (err) {
          log.warn({ err }, 'status not written')
        }
        detached = true
        for (const i of instances.values()) clearTimeout(i.killTimer)
        releaseLock(lockPath)
      }
    },
  }
}
