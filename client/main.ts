/**
 * @module `bareku client`: environment -> settings -> logger -> startClient -> signals. SIGTERM
 * and SIGINT end the client only: worker.json stays, so the worker keeps running what it has.
 * The "ready" line carries the node name and the master's control endpoint; tests and operators
 * wait for it.
 */
import { isAppError } from '../lib/errors.js'
import { createLogger } from '../lib/log.js'
import { onShutdown } from '../lib/shutdown.js'
import { startClient } from './client.js'
import { loadConfig, USAGE } from './config.js'

/** Runs the client until SIGTERM/SIGINT; `args` are the arguments after `client`. */
export async function main(args: string[]): Promise<void> {
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(USAGE)
    return
  }
  const [extra] = args
  if (extra !== undefined) {
    process.stderr.write(`bareku client: unknown argument "${extra}"\n\n${USAGE}`)
    process.exitCode = 2
    return
  }
  const config = loadConfig(process.env)
  const log = createLogger('client', config.logLevel)
  let client
  try {
    client = await startClient(config, log)
  } catch (err) {
    if (isAppError(err)) log.fatal({ code: err.code, err: err.message }, 'cannot start')
    throw err
  }
  log.info(
    {
      node: config.node,
      master: config.master,
      addr: config.addr,
      capacity: config.capacity,
      reportMs: config.reportMs,
      endpoints: client.endpoints,
    },
    'ready',
  )
  onShutdown(log, () => client.close())
}
