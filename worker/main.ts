/**
 * @module `bareku worker`: environment -> settings -> logger -> startWorker -> signals. SIGTERM
 * and SIGINT end the worker only: its processes keep running (they are detached, with records),
 * so restarting or upgrading the worker never touches them; the next worker adopts them.
 * The "ready" line carries the config path; tests and operators wait for it.
 */
import { runDaemon } from '../lib/daemon.js'
import { loadConfig, USAGE } from './config.js'
import { startWorker } from './worker.js'

/** Runs the worker until SIGTERM/SIGINT; `args` are the arguments after `worker`. */
export function main(args: string[]): Promise<void> {
  return runDaemon({
    name: 'worker',
    usage: USAGE,
    args,
    load: (env) => loadConfig(env),
    start: startWorker,
    ready: (config, worker) => ({
      endpoints: worker.endpoints,
      configFile: worker.endpoints.configFile,
      tickMs: config.tickMs,
      user: config.user,
      logMaxBytes: config.logMaxBytes,
    }),
    // Stopping every process waits for each one's grace period: allow for it.
    stop: (config, worker) =>
      config.stopOnExit
        ? { run: () => worker.stopAll(), timeoutMs: 60_000 }
        : { run: () => worker.close() },
  })
}
