/**
 * @module startFrontend: one uWebSockets.js listener per configured server, each with its
 * handler sockets. Returns the endpoints actually bound and a close().
 */
import { compileRoutes } from '../lib/config/match.js'
import type { RouteTable, ServerSpec } from '../lib/config/routes.js'
import type { Logger } from '../lib/log.js'
import { startHttpServer, type AppReleases, type HttpServer } from './http.js'
import { limitsFromSettings } from './limits.js'

export interface FrontendOptions {
  routes: RouteTable
  listen?: { host: string; port: number }
  server?: string
}

export interface FrontendEndpoints {
  servers: { name: string; port: number; handlers: ReturnType<HttpServer['handlers']> }[]
}

export interface Frontend {
  endpoints: FrontendEndpoints
  /** Client connections in flight, over all servers. */
  connections(): number
  /** Apps with releases side by side (a deploy), over all servers. */
  status(): AppReleases[]
  /** Called, coalesced, whenever status() may have changed. */
  onStatus: (() => void) | undefined
  /**
   * Applies a new route table (SIGHUP reload, or the master's table): each running server takes
   * its new hosts, routes and handlers; servers added or removed, and listen addresses, need a
   * restart and are reported in `restartNeeded`.
   */
  reload(routes: RouteTable): Promise<{ endpoints: FrontendEndpoints; restartNeeded: string[] }>
  close(): Promise<void>
}

export async function startFrontend(opts: FrontendOptions, log: Logger): Promise<Frontend> {
  const limits = limitsFromSettings(opts.routes.settings)
  const servers: { name: string; spec: ServerSpec; http: HttpServer }[] = []
  // Set by the caller after start (main.ts: the master report), read on every status change.
  const hooks: { onStatus?: () => void } = {}
  try {
    for (const server of opts.routes.servers) {
      if (opts.server !== undefined && server.name !== opts.server) continue
      const matcher = compileRoutes(opts.routes, server.name)
      const http = await startHttpServer({
        server,
        mimetypes: opts.routes.mimetypes,
        matcher,
        limits,
        listen: opts.listen,
        log: log.child({ server: server.name }),
        onStatus: () => hooks.onStatus?.(),
      })
      servers.push({ name: server.name, spec: server, http })
    }
  } catch (err) {
    for (const s of servers) s.http.close()
    throw err
  }
  const endpoints = (): FrontendEndpoints => ({
    servers: servers.map((s) => ({ name: s.name, port: s.http.port, handlers: s.http.handlers() })),
  })
  return {
    endpoints: endpoints(),
    get onStatus() {
      return hooks.onStatus
    },
    set onStatus(fn) {
      hooks.onStatus = fn
    },
    status: () => servers.flatMap((s) => s.http.status()),
    async reload(routes) {
      const restartNeeded: string[] = []
      for (const s of servers) {
        const spec = routes.servers.find((x) => x.name === s.name)
        if (!spec) {
          restartNeeded.push(`server ${s.name} is gone from the config`)
          continue
        }
        if (!opts.listen && (spec.port !== s.spec.port || spec.bindAddr !== s.spec.bindAddr)) {
          restartNeeded.push(`server ${s.name} listens on ${spec.bindAddr}:${spec.port} now`)
        }
        await s.http.update(spec, compileRoutes(routes, s.name), routes.mimetypes)
        s.spec = spec
      }
      for (const spec of routes.servers) {
        const wanted = opts.server === undefined || spec.name === opts.server
        if (wanted && !servers.some((s) => s.name === spec.name)) {
          restartNeeded.push(`server ${spec.name} is new`)
        }
      }
      return { endpoints: endpoints(), restartNeeded }
    },
    connections: () => servers.reduce((n, s) => n + s.http.connections(), 0),
    close: () => {
      for (const s of servers) s.http.close()
      return Promise.resolve()
    },
  }
}
