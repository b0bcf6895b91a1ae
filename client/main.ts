/**
 * @module `bareku client`: environment -> settings -> logger -> startClient -> signals. SIGTERM
 * and SIGINT end the client only: worker.json stays, so the worker keeps running what it has.
 * The "ready" line carries the node name and the master's control endpoint; tests and operators
 * wait for it.
 */
import { runDaemon } from '../lib/daemon.js'
import { startClient } from './client.js'
import { loadConfig, USAGE } from './config.js'

/** Runs the client until SIGTERM/SIGINT; `args` are the arguments after `client`. */
export function main(args: string[]): Promise<void> {
  return runDaemon({
    name: 'client',
    usage: USAGE,
    args,
    load: (env) => loadConfig(env),
    start: startClient,
    ready: (config, client) => ({
      node: config.node,
      master: config.master,
      addr: config.addr,
      capacity: config.capacity,
      reportMs: config.reportMs,
      endpoints: client.endpoints,
    }),
    stop: (_, client) => ({ run: () => client.close() }),
  })
}
