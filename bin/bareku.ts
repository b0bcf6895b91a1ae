/**
 * @module The `bareku` command: one entry point, one sub-command per verb or daemon. Errors with a
 * code print their message (which names the fix) and exit 1; anything else is a crash.
 */
import { isAppError } from '../lib/errors.js'

const USAGE = `usage: bareku COMMAND [ARGS]

commands:
  frontend --config FILE   run the HTTP/WebSocket frontend (Mongrel2 .conf or Bareku .json routes)
  worker                   run this node's worker: supervise the processes of its worker config

Run 'bareku COMMAND --help' for a command's settings.
`

async function run(argv: string[]): Promise<void> {
  const [command, ...args] = argv
  switch (command) {
    case 'frontend':
      return (await import('../frontend/main.js')).main(args)
    case 'worker':
      return (await import('../worker/main.js')).main(args)
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE)
      return
    default:
      process.stderr.write(`bareku: unknown command "${command}"\n\n${USAGE}`)
      process.exitCode = 2
  }
}

run(process.argv.slice(2)).catch((err: unknown) => {
  if (isAppError(err)) {
    process.stderr.write(`bareku: ${err.message}\n`)
    process.exit(1)
  }
  throw err
})
