/**
 * @module `bareku master`: environment -> settings -> logger -> startMaster -> signals. The
 * "ready" line carries the bound endpoints (port 0 resolved); tests and operators wait for it.
 * Stopping the master stops nothing else: nodes keep running what they were told last.
 */
import { isAppError } from '../lib/errors.js'
import { createLogger } from '../lib/log.js'
import { onShutdown } from '../lib/shutdown.js'
import { loadConfig, USAGE } from './config.js'
import { startMaster } from './master.js'

/** Runs the master until SIGTERM/SIGINT; `args` are the arguments after `master`. */
export async function main(args: string[]): Promise<void> {
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(USAGE)
    return
  }
  const [extra] = args
  if (extra !== undefined) {
    process.stderr.write(`bareku master: unknown argument "${extra}"\n\n${USAGE}`)
    process.exitCode = 2
    return
  }
  const config = loadConfig(process.env)
  const log = createLogger('master', config.logLevel)
  let master
  try {
    master = await startMaster(config, log)
  } catch (err) {
    if (isAppError(err)) log.fatal({ code: err.code, err: err.message }, 'cannot start')
    throw err
  }
  log.info(
    {
      endpoints: master.endpoints,
      home: config.home,
      slugDir: config.slugDir,
      domain: config.domain,
      frontendPort: config.frontendPort,
      handlerHost: config.handlerHost,
      handlerPorts: config.handlerPorts,
      webPorts: config.webPorts,
      nodeTtlMs: config.nodeTtlMs,
      republishMs: config.republishMs,
    },
    'ready',
  )
  onShutdown(log, () => master.close())
}
