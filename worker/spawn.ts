/**
 * @module Spawning one instance, and reading what /proc says about a pid.
 *
 * An instance is spawned detached (setsid: its own session and process group, pgid = pid), so
 * the worker can signal the whole group and can die or restart without taking it along. Its
 * stdout and stderr go to `BAREKU_HOME/log/<slot>.log`, opened O_APPEND (never pipes: a pipe
 * would tie the instance to the worker's lifetime and block it when nobody reads). A surge
 * replacement writes to the same file as the instance it replaces, so one file tells a slot's
 * whole story.
 *
 * Log rotation is deliberately simple: on each reconcile tick the worker renames a log file that
 * has grown past the limit to `<slot>.log.1` (replacing the previous `.1`); new spawns open a
 * fresh `<slot>.log`. A process that keeps running keeps its descriptor, so it goes on writing
 * into `.1` until it restarts: rotation bounds the file new output goes to, not a chatty
 * long-lived process.
 *
 * The command runs as
 *
 *   /bin/sh -c 'for f in .profile.d/*.sh; do [ -r "$f" ] && . "$f"; done; eval "exec $1"' \
 *     bareku-run COMMAND
 *
 * in the slug directory, so the buildpacks' `.profile.d` scripts are sourced first (Heroku's
 * contract; their exports reach the process), and the command then replaces the shell, so the
 * pid we record is the app's own. COMMAND travels as an argument and is parsed by the shell
 * exactly once (no quoting is spliced into the script). Because of `exec` it should be one
 * simple command, as Procfile commands usually are: write `env A=1 cmd` rather than `A=1 cmd`,
 * and `sh -c 'a && b'` for a compound command.
 *
 * The environment is only: PATH (a default, unless the spec's env sets it), the spec's env, then
 * HOME (the slug), PORT (when the spec has a port), DYNO and PS (the slot name).
 * When the worker is root, the instance runs as the spec's user or else the worker's configured
 * user (nobody); libuv drops supplementary groups when it switches uid/gid.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process'
import {
  closeSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  statSync,
} from 'node:fs'
import { setPriority, userInfo } from 'node:os'
import { AppError } from '../lib/errors.js'
import type { InstanceSpec } from '../lib/config/worker-config.js'

import { LAUNCH_SCRIPT } from '../lib/dyno.js'

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

/** A resolved account to run as. */
export interface RunAs {
  user: string
  uid: number
  gid: number
}

/** One spawned instance: the ChildProcess stays with the worker for its 'exit' event. */
export interface Spawned {
  child: ChildProcess
  pid: number
  /** The process group: the pid itself, since the instance is a session leader. */
  pgid: number
  /** Field 22 of /proc/PID/stat, to recognise this very process after a worker restart. */
  starttime: number
}

const users = new Map<string, RunAs>()

/** Resolves a user name with `getent passwd` (so NSS users work too); cached per process. */
export function lookupUser(user: string): RunAs {
  const cached = users.get(user)
  if (cached) return cached
  let line: string
  try {
    line = execFileSync('getent', ['passwd', user], { encoding: 'utf8' }).trim()
  } catch {
    throw new AppError(
      'E_WORKER',
      `no such user "${user}" (getent passwd ${user} found nothing): create it, or set BAREKU_WORKER_USER or the instance's user to an existing account`,
    )
  }
  const fields = line.split(':')
  const runAs = { user, uid: Number(fields[2]), gid: Number(fields[3]) }
  if (!Number.isInteger(runAs.uid) || !Number.isInteger(runAs.gid)) {
    throw new AppError('E_WORKER', `getent passwd ${user} printed an unreadable entry: ${line}`)
  }
  users.set(user, runAs)
  return runAs
}

/**
 * Who an instance runs as: when the worker is root, the spec's user or else `defaultUser`;
 * otherwise the worker's own account (undefined), which must then be the spec's user if it names
 * one.
 */
export function resolveRunAs(spec: InstanceSpec, defaultUser: string): RunAs | undefined {
  if (process.getuid?.() === 0) return lookupUser(spec.user ?? defaultUser)
  const self = userInfo().username
  if (spec.user !== undefined && spec.user !== self) {
    throw new AppError(
      'E_WORKER',
      `${spec.name} must run as "${spec.user}", but the worker runs as "${self}", not root: run the worker as root, or drop the instance's user`,
    )
  }
  return undefined
}

/** The environment of an instance of `slot` (see the module comment for what goes in). */
export function instanceEnv(spec: InstanceSpec, slot: string): Record<string, string> {
  const env: Record<string, string> = { PATH: DEFAULT_PATH, ...spec.env, HOME: spec.cwd }
  if (spec.port !== undefined) env.PORT = String(spec.port)
  env.DYNO = slot
  env.PS = slot
  return env
}

/** Opens a log file for appending (created 0640: an app's output may hold secrets). */
export function openLog(file: string): number {
  return openSync(file, 'a', 0o640)
}

/** Renames `file` to `file.1` when it has reached `maxBytes`; returns true when it did. */
export function rotateLog(file: string, maxBytes: number): boolean {
  let size: number
  try {
    size = statSync(file).size
  } catch {
    return false
  }
  if (size < maxBytes) return false
  renameSync(file, `${file}.1`)
  return true
}

/**
 * Spawns `spec` as instance `slot` (the env's DYNO), detached, output appended to `logFile`.
 * Resolves once the process exists; rejects with E_WORKER when it could not be started
 * (missing cwd, unknown user, ...).
 */
export async function spawnInstance(
  spec: InstanceSpec,
  slot: string,
  logFile: string,
  runAs: RunAs | undefined,
): Promise<Spawned> {
  const fd = openLog(logFile)
  let child: ChildProcess
  try {
    child = spawn('/bin/sh', ['-c', LAUNCH_SCRIPT, 'bareku-run', spec.command], {
      cwd: spec.cwd,
      env: instanceEnv(spec, slot),
      detached: true,
      stdio: ['ignore', fd, fd],
      ...(runAs ? { uid: runAs.uid, gid: runAs.gid } : {}),
    })
  } finally {
    // The child has its own copy of the descriptor.
    closeSync(fd)
  }
  await new Promise<void>((resolve, reject) => {
    child.once('spawn', resolve)
    child.once('error', (err) =>
      reject(
        new AppError(
          'E_WORKER',
          `cannot spawn ${slot} in ${spec.cwd}${runAs ? ` as ${runAs.user}` : ''}: ${err.message}; check that the slug is unpacked there and readable by that user`,
          { cause: err },
        ),
      ),
    )
  })
  // Not ours to keep alive: the worker may exit (or restart) while its instances run on.
  child.unref()
  const pid = child.pid!
  // A starting process (an interpreter loading its modules) takes CPU from the instances that
  // serve, which a deploy under load sees as latency: it starts at a lower priority, and
  // restorePriority lifts it once it is ready. Only root may lift it again.
  if (process.getuid?.() === 0) {
    try {
      setPriority(pid, STARTING_NICENESS)
    } catch {
      // It exited already: nothing to lower.
    }
  }
  return { child, pid, pgid: pid, starttime: readStartTime(pid) ?? 0 }
}

/**
 * Parses the text of /proc/PID/stat into its state (field 3) and start time (field 22, in clock
 * ticks since boot). Field 2 is "(comm)", and comm may itself hold spaces and parentheses, so
 * the fields are counted from the LAST ')'.
 */
export function parseStat(
  text: string,
): { state: string; pgrp: number; starttime: number } | undefined {
  const end = text.lastIndexOf(')')
  if (end === -1) return undefined
  const fields = text
    .slice(end + 1)
    .trim()
    .split(/\s+/)
  const state = fields[0]
  const pgrp = Number(fields[5 - 3])
  const starttime = Number(fields[22 - 3])
  if (state === undefined || state === '' || !Number.isSafeInteger(starttime)) return undefined
  if (!Number.isSafeInteger(pgrp)) return undefined
  return { state, pgrp, starttime }
}

function readStat(pid: number): ReturnType<typeof parseStat> {
  try {
    return parseStat(readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return undefined
  }
}

/**
 * Whether a process of group `pgid` holds an established TCP connection to `port`: a handler
 * has connected its PULL to the frontend's send spec, so it can take requests. Reads the
 * group's socket inodes from /proc/PID/fd and looks them up in /proc/net/tcp and tcp6.
 */
export function connectedTo(pgid: number, port: number): boolean {
  const inodes = new Set<string>()
  for (const pid of groupPids(pgid)) {
    let fds: string[]
    try {
      fds = readdirSync(`/proc/${pid}/fd`)
    } catch {
      continue
    }
    for (const fd of fds) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`))
        if (m) inodes.add(m[1]!)
      } catch {
        // Closed meanwhile.
      }
    }
  }
  if (inodes.size === 0) return false
  const want = port.toString(16).toUpperCase().padStart(4, '0')
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string
    try {
      text = readFileSync(table, 'utf8')
    } catch {
      continue
    }
    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/)
      if (f[3] === '01' && f[2]?.endsWith(`:${want}`) && inodes.has(f[9] ?? '')) return true
    }
  }
  return false
}

/** The pids of process group `pgid`, from /proc. */
function groupPids(pgid: number): number[] {
  let names: string[]
  try {
    names = readdirSync('/proc')
  } catch {
    return []
  }
  const out: number[] = []
  for (const name of names) {
    if (!/^[0-9]+$/.test(name)) continue
    const pid = Number(name)
    if (pid === pgid || readStat(pid)?.pgrp === pgid) out.push(pid)
  }
  return out
}

/** The niceness of an instance's processes until it is ready (see spawnInstance). */
export const STARTING_NICENESS = 10

/**
 * Gives every process of group `pgid` (the instance and its children: `npm start` runs node as
 * one) the normal priority again. A no-op unless the worker is root.
 */
export function restorePriority(pgid: number): void {
  if (process.getuid?.() !== 0) return
  for (const pid of groupPids(pgid)) {
    try {
      setPriority(pid, 0)
    } catch {
      // Gone meanwhile.
    }
  }
}

const dead = (state: string): boolean => state === 'Z' || state === 'X' || state === 'x'

/** The start time of `pid` (field 22 of /proc/PID/stat, in clock ticks since boot), if it exists. */
export function readStartTime(pid: number): number | undefined {
  return readStat(pid)?.starttime
}

/** True when `pid` exists as a zombie (exited, not yet reaped) or is dying (state Z or X). */
export function isZombie(pid: number): boolean {
  const stat = readStat(pid)
  return stat !== undefined && dead(stat.state)
}

/**
 * True when `pid` runs and is the process that started at `starttime`: not gone, not a zombie
 * (an orphan whose parent does not reap it stays a zombie and still answers kill(pid, 0)), and
 * not a newer process that reused the pid.
 */
export function isAlive(pid: number, starttime?: number): boolean {
  try {
    process.kill(pid, 0)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false
  }
  const stat = readStat(pid)
  if (!stat || dead(stat.state)) return false
  return starttime === undefined || stat.starttime === starttime
}

/** This boot's id (/proc/sys/kernel/random/boot_id): start times only compare within one boot. */
export function bootId(): string {
  return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()
}
