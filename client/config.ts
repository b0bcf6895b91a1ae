/**
 * @module The client's settings, read once from the environment by main.ts (see USAGE for the
 * variables and their defaults). Nothing else in client/ reads process.env.
 */
import { hostname } from 'node:os'
import { join, resolve } from 'node:path'
import type { LevelWithSilent } from 'pino'
import { AppError } from '../lib/errors.js'
import { homeSetting, levelSetting, positiveIntSetting } from '../lib/config/env.js'

/** Everything startClient needs. */
export interface ClientSettings {
  /** BAREKU_HOME: slugs/ (fetched and unpacked slugs) and run/ (worker.json, status.json). */
  home: string
  /** The master's control endpoint; its `endpoints` command names the others. */
  master: string
  /** This node's name: the topic of its host list and the name in its reports. */
  node: string
  /** The address the frontend and the other nodes reach this node at. */
  addr: string
  /** The most instances this node takes (the master's placement respects it). */
  capacity: number
  /** Report period in ms (a change is also reported at once). */
  reportMs: number
  /** An unpacked slug no instance has used for this long is removed. */
  slugPruneMs: number
  /** The file the client writes and the worker reads. */
  workerConfig: string
  logLevel: LevelWithSilent
}

export const USAGE = `usage: bareku client

Runs the client of this node: asks the master (BAREKU_MASTER) for its endpoints, subscribes to
this node's host list, fetches and unpacks the slugs it needs, writes the worker config
atomically when it changes, and reports the node and its processes to the master. If the master
goes away, the node keeps running what it has and the client reconnects by itself.
SIGTERM or SIGINT stops the client; the worker config stays, so the processes keep running.

settings (environment):
  BAREKU_HOME               state directory (default: /var/lib/bareku as root, else ~/.bareku)
  BAREKU_MASTER             the master's control endpoint (default: tcp://127.0.0.1:7070)
  BAREKU_NODE               this node's name (default: the host name)
  BAREKU_NODE_ADDR          the address the frontend and other nodes reach this node at
                            (default: 127.0.0.1)
  BAREKU_NODE_CAPACITY      the most instances this node runs (default: 50)
  BAREKU_CLIENT_REPORT_MS   report period in ms (default: 1000)
  BAREKU_SLUG_PRUNE_MS      remove an unpacked slug unused for this long (default: 600000)
  BAREKU_WORKER_CONFIG      the worker config file (default: $BAREKU_HOME/run/worker.json)
  LOG_LEVEL                 fatal|error|warn|info|debug|trace|silent (default: info)

files:
  $BAREKU_HOME/slugs/<sha256>.sqfs           fetched slugs (verified before they get this name)
  $BAREKU_HOME/slugs/<sha256>.sqfs.part      a fetch in progress, resumed after a crash
  $BAREKU_HOME/slugs/unpacked/<sha256>/      unpacked slugs, the instances' working directories
  $BAREKU_HOME/run/worker.json               the worker config (written by the client)
  $BAREKU_HOME/run/status.json               the worker's instance states (read for reports)
`

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/
const ADDR = /^[A-Za-z0-9_.:-]+$/
const ENDPOINT = /^(tcp:\/\/(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}|ipc:\/\/\S+)$/

/** Builds the settings from an environment; `isRoot` picks the default BAREKU_HOME. */
export function loadConfig(
  env: NodeJS.ProcessEnv,
  isRoot = process.getuid?.() === 0,
  host = hostname(),
): ClientSettings {
  const home = homeSetting(env, isRoot)
  const master = env.BAREKU_MASTER || 'tcp://127.0.0.1:7070'
  if (!ENDPOINT.test(master)) {
    throw new AppError(
      'E_CONFIG',
      `BAREKU_MASTER must be the master's control endpoint, tcp://HOST:PORT or ipc://PATH, got "${master}" (e.g. BAREKU_MASTER=tcp://10.0.0.1:7070)`,
    )
  }
  const node = env.BAREKU_NODE || host
  if (!NAME.test(node) || node.length > 200) {
    throw new AppError(
      'E_CONFIG',
      `BAREKU_NODE must be a node name of letters, digits, "_", "." and "-", got "${node}" (e.g. BAREKU_NODE=node1)`,
    )
  }
  const addr = env.BAREKU_NODE_ADDR || '127.0.0.1'
  if (!ADDR.test(addr)) {
    throw new AppError(
      'E_CONFIG',
      `BAREKU_NODE_ADDR must be an IP address or a host name, got "${addr}" (e.g. BAREKU_NODE_ADDR=10.0.0.2)`,
    )
  }
  return Object.freeze({
    home,
    master,
    node,
    addr,
    capacity: positiveIntSetting(env, 'BAREKU_NODE_CAPACITY', 50, '50'),
    reportMs: positiveIntSetting(env, 'BAREKU_CLIENT_REPORT_MS', 1000, '1000'),
    slugPruneMs: positiveIntSetting(env, 'BAREKU_SLUG_PRUNE_MS', 600_000, '600000'),
    workerConfig: resolve(env.BAREKU_WORKER_CONFIG || join(home, 'run', 'worker.json')),
    logLevel: levelSetting(env),
  })
}
