/**
 * @module The frontend's configuration: a route table from a Mongrel2 m2sh `.conf` file
 * (unchanged) or a JSON file, plus overrides from the environment. Only main.ts calls this.
 *
 *   BAREKU_FRONTEND_CONFIG   path to a .conf (m2sh) or .json route table (or --config FILE)
 *   BAREKU_FRONTEND_LISTEN   host:port to listen on instead of the server's bind_addr/port
 *                            (port 0 picks a free one; the ready log line says which)
 *   BAREKU_FRONTEND_SERVER   which server of the config to run (default: all of them)
 *   LOG_LEVEL                fatal, error, warn, info (default), debug, trace, silent
 */
import { readFileSync } from 'node:fs'
import { AppError } from '../lib/errors.js'
import { parseLevel } from '../lib/log.js'
import { parseM2sh } from '../lib/config/m2sh.js'
import { parseRouteTable, type RouteTable } from '../lib/config/routes.js'
import type { LevelWithSilent } from 'pino'

export interface FrontendConfig {
  /** The config file, read again on SIGHUP. */
  file: string
  routes: RouteTable
  /** Overrides every server's listen address (meant for one-server configs and tests). */
  listen?: { host: string; port: number }
  /** Run only this server of the config. */
  server?: string
  logLevel: LevelWithSilent
}

export const USAGE = `usage: bareku frontend --config FILE

Runs the HTTP/WebSocket frontend: Mongrel2's handler protocol on uWebSockets.js.
FILE is a Mongrel2 m2sh config (.conf, loaded unchanged) or a Bareku route table (.json).
SIGHUP reads FILE again and applies its hosts, routes and handlers without a restart.

settings (environment):
  BAREKU_FRONTEND_CONFIG   the config file, instead of --config
  BAREKU_FRONTEND_LISTEN   host:port to listen on instead of the config's bind_addr/port
                           (default: the config's; port 0 picks a free port)
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

/** Builds the config from the environment and the command line arguments after `frontend`. */
export function loadConfig(env: NodeJS.ProcessEnv, args: string[]): FrontendConfig {
  let file = env.BAREKU_FRONTEND_CONFIG
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!
    if (arg === '--config' || arg === '-c') file = args[++i]
    else if (arg.startsWith('--config=')) file = arg.slice('--config='.length)
    else throw new AppError('E_CONFIG', `unknown argument "${arg}"\n\n${USAGE}`)
  }
  if (!file)
    throw new AppError(
      'E_CONFIG',
      `no config given: pass --config FILE or set BAREKU_FRONTEND_CONFIG\n\n${USAGE}`,
    )
  const routes = loadRouteFile(file)
  const config: FrontendConfig = { file, routes, logLevel: parseLevel(env.LOG_LEVEL) }
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
