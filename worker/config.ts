/**
 * @module The worker's settings, read once from the environment by main.ts (see USAGE for the
 * variables and their defaults). Nothing else in worker/ reads process.env.
 */
import { join, resolve } from 'node:path'
import type { LevelWithSilent } from 'pino'
import { AppError } from '../lib/errors.js'
import { flagSetting, homeSetting, levelSetting, positiveIntSetting } from '../lib/config/env.js'

/** Everything startWorker needs. */
export interface WorkerSettings {
  /** BAREKU_HOME: run/ (lock, instance records, worker.json) and log/ live here. */
  home: string
  /** The file the client writes and the worker reads. */
  configFile: string
  /** Reconcile period in ms (a config change also reconciles at once). */
  tickMs: number
  /** Who instances run as when the worker is root and their spec names no user. */
  user: string
  /** A log file at least this big is rotated to .1 on the next tick. */
  logMaxBytes: number
  logLevel: LevelWithSilent
  /** Stop every instance when the worker stops (`bareku up`), instead of leaving them running. */
  stopOnExit: boolean
}

export const USAGE = `usage: bareku worker

Runs the worker of this node: reads the worker config the client writes, and starts, stops,
replaces (surge-first) and restarts (with backoff) the processes it lists. One worker per node.
SIGTERM or SIGINT stops the worker and leaves the processes running; the next worker adopts them.

settings (environment):
  BAREKU_HOME                   state directory (default: /var/lib/bareku as root, else ~/.bareku)
  BAREKU_WORKER_CONFIG          the worker config file (default: $BAREKU_HOME/run/worker.json)
  BAREKU_WORKER_TICK_MS         reconcile period in ms (default: 2000)
  BAREKU_WORKER_USER            user processes run as when the worker is root (default: nobody)
  BAREKU_WORKER_LOG_MAX_BYTES   rotate a process log to .1 at this size (default: 10485760)
  BAREKU_WORKER_STOP_ON_EXIT    1: SIGTERM/SIGINT also stops every process (bareku up sets it;
                                default: 0, the processes keep running for the next worker)
  LOG_LEVEL                     fatal|error|warn|info|debug|trace|silent (default: info)

files:
  $BAREKU_HOME/run/worker.lock        the pid of the running worker
  $BAREKU_HOME/run/instances/*.json   one record per running process, for adoption
  $BAREKU_HOME/log/<name>.log         each process's stdout and stderr
`

/** Builds the settings from an environment; `isRoot` picks the default BAREKU_HOME. */
export function loadConfig(
  env: NodeJS.ProcessEnv,
  isRoot = process.getuid?.() === 0,
): WorkerSettings {
  const home = homeSetting(env, isRoot)
  const user = env.BAREKU_WORKER_USER || 'nobody'
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]*$/.test(user)) {
    throw new AppError(
      'E_CONFIG',
      `BAREKU_WORKER_USER must be a user name, got "${user}" (e.g. BAREKU_WORKER_USER=nobody)`,
    )
  }
  return Object.freeze({
    home,
    configFile: resolve(env.BAREKU_WORKER_CONFIG || join(home, 'run', 'worker.json')),
    tickMs: positiveIntSetting(env, 'BAREKU_WORKER_TICK_MS', 2000, '2000'),
    user,
    logMaxBytes: positiveIntSetting(
      env,
      'BAREKU_WORKER_LOG_MAX_BYTES',
      10 * 1024 * 1024,
      '10485760',
    ),
    logLevel: levelSetting(env),
    stopOnExit: flagSetting(env, 'BAREKU_WORKER_STOP_ON_EXIT'),
  })
}
