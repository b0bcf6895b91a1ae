/**
 * @module The frontend's configuration: a route table from a Mongrel2 m2sh `.conf` file
 * (unchanged) or a JSON file, plus overrides from the environment. Only main.ts calls this.
 *
 *   BAREKU_FRONTEND_CONFIG   path to a .conf (m2sh) or .json route table (or --config FILE)
 *   BAREKU_MASTER            without a file: follow this master's route table (or --master)
 *   BAREKU_FRONTEND_LISTEN   host:port to listen on instead of the server's bind_addr/port
 *   BAREKU_FRONTEND_REPORT_MS  master mode: period of the deploy status report (default 1000)
 *                            (port 0 picks a free one; the ready log line says which)
 *   BAREKU_FRONTEND_SERVER   which server of the config to run (default: all of them)
 *   LOG_LEVEL                fatal, error, warn, info (default), debug, trace, silent
 */
import { readFileSync } from 'node:fs'
import { homeSetting } from '../lib/config/env.js'
import { join } from 'node:path'
import { AppError } from '../lib/errors.js'
import { parseLevel } from '../lib/log.js'
import { parseM2sh } from '../lib/config/m2sh.js'
import { parseRouteTable, type RouteTable } from '../lib/config/routes.js'
import type { LevelWithSilent } from 'pino'

export interface FrontendConfig {
  /** The config file, read again on SIGHUP; absent when the routes come from a master. */
  file?: string
  /** The master's control endpoint, when the routes come from it. */
  master?: string
  /** Where the master's last route table is kept (master mode). */
  cacheFile?: string
  /** Where static sites' slugs are unpacked, to be served by Dir routes (master mode). */
  staticDir?: string
  routes: RouteTable
  /** Overrides every server's listen address (meant for one-server configs and tests). */
  listen?: { host: string; port: number }
  /** Run only this server of the config. */
  server?: string
  logLevel: LevelWithSilent
  /** How often the deploy status goes to the master (master mode), ms. */
  reportMs: number
}

export const USAGE = `usage: bareku frontend --config FILE
       bareku frontend [--master ENDPOINT]

Runs the HTTP/WebSocket frontend: Mongrel2's handler protocol on uWebSockets.js.
FILE is a Mongrel2 m2sh config (.conf, loaded unchanged) or a Bareku route table (.json).
SIGHUP reads FILE again and applies its hosts, routes and handlers without a restart.
Without a FILE, the routes are the master's: each app at NAME.BAREKU_DOMAIN and its domains,
applied as the master publishes them, and kept while the master is away.

settings (environment):
  BAREKU_FRONTEND_CONFIG   the config file, instead of --config
  BAREKU_MASTER            the master's control endpoint, instead of --master
                           (default: tcp://127.0.0.1:7070, used when no FILE is given)
  BAREKU_HOME              state directory: run/frontend-routes.json caches the master's table
                           (default: /var/lib/bareku as root, else ~/.bareku)
  BAREKU_FRONTEND_LISTEN   host:port to listen on instead of the config's bind_addr/port
  BAREKU_FRONTEND_REPORT_MS  with a master: deploy status report period, ms (default 1000)
                           (default: the config's, or 127.0.0.1:8080 with a master; port 0
                           picks a free port)
  BAREKU_FRONTEND_SERVER   run only the server of that name (default: every server)
  LOG_LEVEL                fatal|error|warn|info|debug|trace|silent (default: info)
`

/** Reads a route table from a file: m2sh syntax for .conf, JSON otherwise. */
export function loadRouteFile(path: string): RouteTable {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    throw new AppError(
      'E_CONFIG',
      `cannot read the frontend config ${path}: ${(err as Error).message}; check the path`,
    )
  }
  if (path.endsWith('.conf')) return parseM2sh(text, { file: path })
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (err) {
    throw new AppError(
      'E_CONFIG',
      `${path} is not valid JSON (${(err as Error).message}); a Mongrel2 config must end in .conf`,
    )
  }
  return parseRouteTable(json)
}

function parseListen(value: string): { host: string; port: number } {
  const m = /^(.+):([0-9]{1,5})$/.exec(value)
  const port = Number(m?.[2])
  if (!m || port > 65535) {
    throw new AppError(
      'E_CONFIG',
      `BAREKU_FRONTEND_LISTEN must be host:port, got "${value}" (e.g. BAREKU_FRONTEND_LISTEN=127.0.0.1:8080)`,
    )
  }
  return { host: m[1]!.replace(/^\[(.*)\]$/, '$1'), port }
}

/** The one server a master's route table describes (master/plan.ts names it so too). */
const MASTER_SERVER = 'bareku'

function masterConfig(env: NodeJS.ProcessEnv, flag: string | undefined): FrontendConfig {
  const master = flag || env.BAREKU_MASTER || 'tcp://127.0.0.1:7070'
  if (!/^tcp:\/\/.+:[0-9]+$/.test(master)) {
    throw new AppError(
      'E_CONFIG',
      `the master's control endpoint must be tcp://HOST:PORT, got "${master}" (e.g. --master tcp://127.0.0.1:7070)`,
    )
  }
  const home = homeSetting(env)
  const listen = parseListen(env.BAREKU_FRONTEND_LISTEN || '127.0.0.1:8080')
  // Until the master's first table arrives: one server with no apps (every request is a 404).
  const routes = parseRouteTable({
    servers: [
      {
        uuid: MASTER_SERVER,
        name: MASTER_SERVER,
        bindAddr: listen.host,
        port: listen.port,
        defaultHost: 'default',
        hosts: [{ name: 'default', routes: {} }],
      },
    ],
  })
  return Object.freeze({
    master,
    cacheFile: join(home, 'run', 'frontend-routes.json'),
    staticDir: join(home, 'frontend', 'static'),
    routes,
    listen,
    server: MASTER_SERVER,
    logLevel: parseLevel(env.LOG_LEVEL),
    reportMs: reportMs(env),
  })
}

/** Builds the config from the environment and the command line arguments after `frontend`. */
export function loadConfig(env: NodeJS.ProcessEnv, args: string[]): FrontendConfig {
  let file = env.BAREKU_FRONTEND_CONFIG
  let master: string | undefined
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!
    if (arg === '--config' || arg === '-c') file = args[++i]
    else if (arg.startsWith('--config=')) file = arg.slice('--config='.length)
    else if (arg === '--master') master = args[++i]
    else if (arg.startsWith('--master=')) master = arg.slice('--master='.length)
    else throw new AppError('E_CONFIG', `unknown argument "${arg}"\n\n${USAGE}`)
  }
  if (!file) return masterConfig(env, master)
  const routes = loadRouteFile(file)
  const config: FrontendConfig = {
    file,
    routes,
    logLevel: parseLevel(env.LOG_LEVEL),
    reportMs: reportMs(env),
  }
  if (env.BAREKU_FRONTEND_LISTEN) config.listen = parseListen(env.BAREKU_FRONTEND_LISTEN)
  if (env.BAREKU_FRONTEND_SERVER) {
    config.server = env.BAREKU_FRONTEND_SERVER
    if (!routes.servers.some((s) => s.name === config.server)) {
      throw new AppError(
        'E_CONFIG',
        `BAREKU_FRONTEND_SERVER names "${config.server}", but ${file} has only ${routes.servers.map((s) => s.name).join(', ')}`,
      )
    }
  }
  if (config.listen && !config.server && routes.servers.length > 1) {
    throw new AppError(
      'E_CONFIG',
      `BAREKU_FRONTEND_LISTEN gives one address but ${file} has ${routes.servers.length} servers; also set BAREKU_FRONTEND_SERVER`,
    )
  }
  return Object.freeze(config)
}

/** BAREKU_FRONTEND_REPORT_MS: the period of the deploy status report to the master. */
function reportMs(env: NodeJS.ProcessEnv): number {
  const raw = env.BAREKU_FRONTEND_REPORT_MS ?? '1000'
  const n = Number(raw)
  if (!/^[0-9]+$/.test(raw) || n < 10) {
    throw new AppError(
      'E_CONFIG',
      `BAREKU_FRONTEND_REPORT_MS must be a whole number of milliseconds, 10 or more, got "${raw}" (e.g. 1000)`,
    )
  }
  return n
}
