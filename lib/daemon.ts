/**
 * @module The shape every daemon's main.ts shares (master, client, worker): `--help`, refusing
 * extra arguments (exit 2), settings from the environment, the logger, start, a fatal log line
 * naming the code when the start fails, the "ready" line (what tests and operators wait for),
 * and stopping on SIGTERM/SIGINT.
 */
import type { LevelWithSilent } from 'pino'
import { isAppError } from './errors.js'
import { createLogger, type Logger } from './log.js'
import { onShutdown } from './shutdown.js'

export interface DaemonSpec<C extends { logLevel: LevelWithSilent }, H> {
  name: string
  usage: string
  /** The arguments after the daemon's name. */
  args: string[]
  load(env: NodeJS.ProcessEnv): C
  start(config: C, log: Logger): Promise<H>
  /** The fields of the "ready" line. */
  ready(config: C, handle: H): Record<string, unknown>
  /** What SIGTERM/SIGINT run, and how long they may take (lib/shutdown.ts's default if unset). */
  stop(config: C, handle: H): { run(): Promise<void>; timeoutMs?: number }
}

export async function runDaemon<C extends { logLevel: LevelWithSilent }, H>(
  spec: DaemonSpec<C, H>,
): Promise<void> {
  if (spec.args.includes('--help') || spec.args.includes('-h')) {
    process.stdout.write(spec.usage)
    return
  }
  const [extra] = spec.args
  if (extra !== undefined) {
    process.stderr.write(`bareku ${spec.name}: unknown argument "${extra}"\n\n${spec.usage}`)
    process.exitCode = 2
    return
  }
  const config = spec.load(process.env)
  const log = createLogger(spec.name, config.logLevel)
  let handle: H
  try {
    handle = await spec.start(config, log)
  } catch (err) {
    if (isAppError(err)) log.fatal({ code: err.code, err: err.message }, 'cannot start')
    throw err
  }
  log.info(spec.ready(config, handle), 'ready')
  const stop = spec.stop(config, handle)
  onShutdown(log, () => stop.run(), stop.timeoutMs)
}
