/**
 * @module The master's settings, read once from the environment by main.ts (see USAGE for the
 * variables and their defaults). Nothing else in master/ reads process.env.
 */
import { join, resolve } from 'node:path'
import type { LevelWithSilent } from 'pino'
import { checkEndpoint } from '../lib/config/routes.js'
import { badSetting, homeSetting, levelSetting, positiveIntSetting } from '../lib/config/env.js'

/** An inclusive range of TCP ports. */
export interface PortRange {
  from: number
  to: number
}

/** Everything startMaster needs. */
export interface MasterSettings {
  /** BAREKU_HOME: master/state.json lives under it. */
  home: string
  /** Bind endpoints: control API (ROUTER), publication (XPUB), reports (PULL), slugs (ROUTER). */
  control: string
  publish: string
  stats: string
  slugs: string
  /** Bind endpoint for the nodes' log batches (ROUTER). */
  logs: string
  /** An app's log history (master/logs/APP.log) is rotated to APP.log.1 at this size. */
  logMaxBytes: number
  /** Where slugs are stored, as `<sha256>.sqfs`. */
  slugDir: string
  /** A node not heard from for this long is marked down and its instances move. */
  nodeTtlMs: number
  /** Every topic is published again this often (the heartbeat). */
  republishMs: number
  /** Apps are served at NAME.domain. */
  domain: string
  /** The frontend's public port: the route table's server port, and in app URLs. */
  frontendPort: number
  /** The frontend's address that handlers connect to. */
  handlerHost: string
  /** Ports the frontend binds for handlers, two per app. */
  handlerPorts: PortRange
  /** $PORT values for web instances, unique per node. */
  webPorts: PortRange
  logLevel: LevelWithSilent
}

export const USAGE = `usage: bareku master

Runs the master: holds the desired state (apps, releases, formation, domains, nodes), places
instances on nodes, publishes each node's process list and the frontend's route table, serves
slugs, and answers the control API (the bareku command and the git hook use it).
SIGTERM or SIGINT stops it; apps keep running, and a restarted master picks up where it left.

settings (environment):
  BAREKU_HOME                 state directory (default: /var/lib/bareku as root, else ~/.bareku)
  BAREKU_MASTER_CONTROL       control API, ROUTER bind (default: tcp://127.0.0.1:7070)
  BAREKU_MASTER_PUBLISH       host lists and route table, XPUB bind (default: tcp://127.0.0.1:7071)
  BAREKU_MASTER_STATS         node reports, PULL bind (default: tcp://127.0.0.1:7072)
  BAREKU_MASTER_SLUGS         slug store, ROUTER bind (default: tcp://127.0.0.1:7073)
  BAREKU_MASTER_LOGS          nodes' log lines, ROUTER bind (default: tcp://127.0.0.1:7074)
  BAREKU_MASTER_LOG_MAX_BYTES rotate an app's log history to .1 at this size (default: 10485760)
  BAREKU_SLUG_DIR             slug files <sha256>.sqfs (default: $BAREKU_HOME/slugs)
  BAREKU_MASTER_NODE_TTL_MS   a silent node is down after this long (default: 10000)
  BAREKU_MASTER_REPUBLISH_MS  publish every topic again this often (default: 2000)
  BAREKU_DOMAIN               apps are served at NAME.BAREKU_DOMAIN (default: localhost)
  BAREKU_FRONTEND_PORT        the frontend's public port, for routes and URLs (default: 8080)
  BAREKU_HANDLER_HOST         the frontend's address handlers connect to (default: 127.0.0.1)
  BAREKU_HANDLER_PORTS        frontend ports for handler sockets, two per app (default: 9500-9999)
  BAREKU_WEB_PORTS            $PORT range for web processes on nodes (default: 5000-5999)
  LOG_LEVEL                   fatal|error|warn|info|debug|trace|silent (default: info)

files:
  $BAREKU_HOME/master/state.json   the desired state, rewritten atomically after every change
  $BAREKU_HOME/master/logs/        APP.log (+ APP.log.1): each app's log lines, one JSON a line;
                                   offsets.json: how far each node's log files were received
`

function port(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const value = env[name]
  if (value === undefined || value === '') return fallback
  const n = Number(value)
  if (!/^[0-9]+$/.test(value) || n < 1 || n > 65535) {
    throw badSetting(name, 'a port from 1 to 65535', value, String(fallback))
  }
  return n
}

function range(env: NodeJS.ProcessEnv, name: string, fallback: string): PortRange {
  const value = env[name] || fallback
  const m = /^([0-9]{1,5})-([0-9]{1,5})$/.exec(value)
  const from = Number(m?.[1])
  const to = Number(m?.[2])
  if (m === null || from < 1 || to > 65535 || from > to) {
    throw badSetting(name, 'a port range FROM-TO with 1 <= FROM <= TO <= 65535', value, fallback)
  }
  return { from, to }
}

function endpoint(env: NodeJS.ProcessEnv, name: string, fallback: string): string {
  const value = env[name] || fallback
  if (checkEndpoint(value) !== undefined) {
    throw badSetting(
      name,
      'a ZeroMQ endpoint to bind (tcp://HOST:PORT or ipc://PATH)',
      value,
      fallback,
    )
  }
  return value
}

function host(env: NodeJS.ProcessEnv, name: string, fallback: string, example: string): string {
  const value = env[name] || fallback
  if (!/^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(value) || value.length > 200) {
    throw badSetting(name, 'a host name or IPv4 address', value, example)
  }
  return value
}

/** Builds the settings from an environment; `isRoot` picks the default BAREKU_HOME. */
export function loadConfig(
  env: NodeJS.ProcessEnv,
  isRoot = process.getuid?.() === 0,
): MasterSettings {
  const home = homeSetting(env, isRoot)
  const handlerPorts = range(env, 'BAREKU_HANDLER_PORTS', '9500-9999')
  if (handlerPorts.to - handlerPorts.from < 1) {
    throw badSetting(
      'BAREKU_HANDLER_PORTS',
      'a range of at least two ports (each app takes two)',
      env.BAREKU_HANDLER_PORTS ?? '',
      '9500-9999',
    )
  }
  return Object.freeze({
    home,
    control: endpoint(env, 'BAREKU_MASTER_CONTROL', 'tcp://127.0.0.1:7070'),
    publish: endpoint(env, 'BAREKU_MASTER_PUBLISH', 'tcp://127.0.0.1:7071'),
    stats: endpoint(env, 'BAREKU_MASTER_STATS', 'tcp://127.0.0.1:7072'),
    slugs: endpoint(env, 'BAREKU_MASTER_SLUGS', 'tcp://127.0.0.1:7073'),
    logs: endpoint(env, 'BAREKU_MASTER_LOGS', 'tcp://127.0.0.1:7074'),
    logMaxBytes: positiveIntSetting(
      env,
      'BAREKU_MASTER_LOG_MAX_BYTES',
      10 * 1024 * 1024,
      '10485760',
    ),
    slugDir: resolve(env.BAREKU_SLUG_DIR || join(home, 'slugs')),
    nodeTtlMs: positiveIntSetting(env, 'BAREKU_MASTER_NODE_TTL_MS', 10_000, '10000'),
    republishMs: positiveIntSetting(env, 'BAREKU_MASTER_REPUBLISH_MS', 2000, '2000'),
    domain: host(env, 'BAREKU_DOMAIN', 'localhost', 'apps.example.com').toLowerCase(),
    frontendPort: port(env, 'BAREKU_FRONTEND_PORT', 8080),
    handlerHost: host(env, 'BAREKU_HANDLER_HOST', '127.0.0.1', '10.0.0.5'),
    handlerPorts,
    webPorts: range(env, 'BAREKU_WEB_PORTS', '5000-5999'),
    logLevel: levelSetting(env),
  })
}
