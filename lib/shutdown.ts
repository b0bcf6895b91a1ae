/**
 * @module SIGTERM/SIGINT -> close() once, with a deadline; a second signal or a missed deadline
 * exits at once. Only a daemon's main.ts calls this.
 */
import type { Logger } from './log.js'

export function onShutdown(log: Logger, close: () => Promise<void>, deadlineMs = 10_000): void {
  let closing = false
  const handler = (signal: NodeJS.Signals): void => {
    if (closing) {
      log.warn({ signal }, 'second signal, exiting now')
      process.exit(1)
    }
    closing = true
    log.info({ signal }, 'shutting down')
    const timer = setTimeout(() => {
      log.error({ deadlineMs }, 'shutdown deadline passed, exiting')
      process.exit(1)
    }, deadlineMs)
    timer.unref()
    close().then(
      () => {
        log.info('stopped')
        process.exit(0)
      },
      (err: unknown) => {
        log.error({ err }, 'shutdown failed')
        process.exit(1)
      },
    )
  }
  process.on('SIGTERM', handler)
  process.on('SIGINT', handler)
}
