/**
 * @module `bareku frontend`: environment and arguments -> config -> logger -> startFrontend ->
 * signals. The "ready" line carries the bound endpoints; tests and operators wait for it.
 */
import { createLogger } from '../lib/log.js'
import { onShutdown } from '../lib/shutdown.js'
import { loadConfig, loadRouteFile, USAGE } from './config.js'
import { startFrontend } from './frontend.js'

export async function main(args: string[]): Promise<void> {
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(USAGE)
    return
  }
  const config = loadConfig(process.env, args)
  const log = createLogger('frontend', config.logLevel)
  const frontend = await startFrontend(config, log)
  log.info({ endpoints: frontend.endpoints }, 'ready')
  onShutdown(log, () => frontend.close())
  // As Mongrel2 does: SIGHUP re-reads the config; a bad file keeps the running one.
  process.on('SIGHUP', () => {
    void (async () => {
      try {
        const { endpoints, restartNeeded } = await frontend.reload(loadRouteFile(config.file))
        log.info({ endpoints, file: config.file }, 'reloaded')
        for (const reason of restartNeeded) log.warn({ reason }, 'restart needed to apply')
      } catch (err) {
        log.error(
          { file: config.file, err: (err as Error).message },
          'reload failed, keeping the running config',
        )
      }
    })()
  })
}
