/**
 * @module `bareku frontend`: environment and arguments -> config -> logger -> startFrontend ->
 * signals. The "ready" line carries the bound endpoints; tests and operators wait for it.
 * Routes come from a file (SIGHUP reads it again) or from the master (followed live).
 */
import { createLogger, type Logger } from '../lib/log.js'
import { onShutdown } from '../lib/shutdown.js'
import { loadConfig, loadRouteFile, USAGE, type FrontendConfig } from './config.js'
import { startFrontend, type Frontend } from './frontend.js'
import { followMaster, readCachedTable } from './master-routes.js'
import { staticSlugs } from './static-slugs.js'

export async function main(args: string[]): Promise<void> {
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(USAGE)
    return
  }
  const config = loadConfig(process.env, args)
  const log = createLogger('frontend', config.logLevel)
  const frontend = await startFrontend(config, log)
  const apply = async (table: Parameters<Frontend['reload']>[0]) => {
    const { endpoints, restartNeeded } = await frontend.reload(table)
    for (const reason of restartNeeded) log.warn({ reason }, 'restart needed to apply')
    return endpoints
  }
  let stopFollowing = () => {}
  if (config.master !== undefined && config.cacheFile !== undefined) {
    // The master's tables name static sites by slug: each is fetched, then served from disk.
    let latest: Parameters<Frontend['reload']>[0] | undefined
    let nudge = (): void => {}
    const statics = staticSlugs({
      master: config.master,
      dir: config.staticDir ?? `${config.cacheFile}.static`,
      log,
      retry: () => {
        if (latest) void applyLatest(latest)
      },
    })
    const applyLatest = async (table: Parameters<Frontend['reload']>[0]) => {
      latest = table
      await apply(await statics.resolve(table))
      // A static site is out as soon as its files are served: say so now, not at the next report.
      nudge()
    }
    const cached = readCachedTable(config.cacheFile, log)
    if (cached) await applyLatest(cached.table)
    const follower = followMaster(
      {
        master: config.master,
        cacheFile: config.cacheFile,
        apply: applyLatest,
        log,
        report: {
          intervalMs: config.reportMs,
          collect: () => ({
            ...statics.status(),
            ...Object.fromEntries(
              frontend.status().map((a) => [a.app, { serving: a.serving, releases: a.releases }]),
            ),
          }),
        },
      },
      cached?.meta,
    )
    nudge = () => follower.nudge()
    frontend.onStatus = nudge
    stopFollowing = () => {
      statics.close()
      follower.close()
    }
  }
  log.info({ endpoints: frontend.endpoints, master: config.master }, 'ready')
  onShutdown(log, () => {
    stopFollowing()
    return frontend.close()
  })
  process.on('SIGHUP', () => void reloadFile(config, log, apply))
}

/** As Mongrel2 does: SIGHUP re-reads the config file; a bad file keeps the running config. */
async function reloadFile(
  config: FrontendConfig,
  log: Logger,
  apply: (table: ReturnType<typeof loadRouteFile>) => Promise<unknown>,
): Promise<void> {
  if (config.file === undefined) {
    log.info('SIGHUP ignored: the routes come from the master')
    return
  }
  try {
    const endpoints = await apply(loadRouteFile(config.file))
    log.info({ endpoints, file: config.file }, 'reloaded')
  } catch (err) {
    log.error(
      { file: config.file, err: (err as Error).message },
      'reload failed, keeping the running config',
    )
  }
}
