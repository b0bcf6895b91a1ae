/**
 * @module `bareku worker`: environment -> settings -> logger -> startWorker -> signals. SIGTERM
 * and SIGINT end the worker only: its processes keep running (they are detached, with records),
 * so restarting or upgrading the worker never touches them; the next worker adopts them.
 * The "ready" line carries the config path; tests and operators wait for it.
 */
import { isAppError } from '../lib/errors.js'
import { createLogger } from '../lib/log.js'
import { onShutdown } from '../lib/shutdown.js'
import { loadConfig, USAGE } from './config.js'
import { startWorker } from './worker.js'

/** Runs the worker until SIGTERM/SIGINT; `args` are the arguments after `worker`. */
export async function main(args: string[]): Promise<void> {
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(USAGE)
    return
  }
  const [extra] = args
  if (extra !== undefined) {
    process.stderr.write(`bareku worker: unknown argument "${extra}"\n\n${USAGE}`)
    process.exitCode = 2
    return
  }
  const config = loadConfig(process.env)
  const log = createLogger('worker', config.logLevel)
  let worker
  try {
    worker = await startWorker(config, log)
  } catch (err) {
    if (isAppError(err)) log.fatal({ code: err.code, err: err.message }, 'cannot start')
    throw err
  }
  log.info(
    {
      endpoints: worker.endpoints,
      configFile: worker.endpoints.configFile,
      tickMs: config.tickMs,
      user: config.user,
      logMaxBytes: config.logMaxBytes,
    },
    'ready',
  )
  // Stopping every process waits for each one's grace period: allow for it.
  if (config.stopOnExit) onShutdown(log, () => worker.stopAll(), 60_000)
  else onShutdown(log, () => worker.close())
}
