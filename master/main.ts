/**
 * @module `bareku master`: environment -> settings -> logger -> startMaster -> signals. The
 * "ready" line carries the bound endpoints (port 0 resolved); tests and operators wait for it.
 * Stopping the master stops nothing else: nodes keep running what they were told last.
 */
import { runDaemon } from '../lib/daemon.js'
import { loadConfig, USAGE } from './config.js'
import { startMaster } from './master.js'

/** Runs the master until SIGTERM/SIGINT; `args` are the arguments after `master`. */
export function main(args: string[]): Promise<void> {
  return runDaemon({
    name: 'master',
    usage: USAGE,
    args,
    load: (env) => loadConfig(env),
    start: startMaster,
    ready: (config, master) => ({
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
    }),
    stop: (_, master) => ({ run: () => master.close() }),
  })
}
