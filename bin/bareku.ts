/**
 * @module The `bareku` command: one entry point, one sub-command per verb or daemon. Errors with a
 * code print their message (which names the fix) and exit 1; anything else is a crash.
 */
import { isAppError } from '../lib/errors.js'
import { parseVerbArgs, VERBS, waitForProcesses } from './verbs.js'

const DAEMONS = `daemons (one per machine role; 'bareku DAEMON --help' lists its settings):
  up                       a whole one-node Bareku in the foreground (master, worker, client,
                           frontend); Ctrl-C stops it and its apps
  master                   the master: desired state, placement, publication, control API
  client                   this node's client: follow the master, fetch slugs, write worker.json
  worker                   this node's worker: supervise the processes of its worker config
  frontend [--config FILE] the HTTP/WebSocket frontend (Mongrel2 .conf or Bareku .json routes,
                           or the master's routes without FILE)
`

const DAEMON_NAMES = ['up', 'master', 'client', 'worker', 'frontend']

/** The name nearest to `word` by edit distance, if any is within a third of its length. */
export function closest(word: string, names: string[]): string | undefined {
  const distance = (a: string, b: string): number => {
    let prev = Array.from({ length: b.length + 1 }, (_, j) => j)
    for (let i = 1; i <= a.length; i++) {
      const row = [i]
      for (let j = 1; j <= b.length; j++) {
        row[j] = Math.min(
          prev[j]! + 1,
          row[j - 1]! + 1,
          prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1),
        )
      }
      prev = row
    }
    return prev[b.length]!
  }
  let best: string | undefined
  let bestD = Math.max(2, Math.ceil(word.length / 3)) + 1
  for (const name of names) {
    const d = distance(word, name)
    if (d < bestD) [best, bestD] = [name, d]
  }
  return best
}

function usage(): string {
  const width = Math.max(...Object.values(VERBS).map((v) => v.usage.split(' ')[0]!.length))
  const verbs = Object.entries(VERBS)
    .map(([name, v]) => `  ${name.padEnd(width)}  ${v.summary}`)
    .join('\n')
  return `usage: bareku COMMAND [ARGS] [--json] [--master tcp://HOST:7070]

${DAEMONS}
apps and the cluster (Heroku/Dokku verbs; the app is the first argument or --app NAME):
${verbs}

Run 'bareku COMMAND --help' for a command's usage.
`
}

async function run(argv: string[]): Promise<void> {
  const [command, ...args] = argv
  switch (command) {
    case 'up':
      return (await import('./up.js')).up(args, process.env)
    case 'frontend':
      return (await import('../frontend/main.js')).main(args)
    case 'master':
      return (await import('../master/main.js')).main(args)
    case 'client':
      return (await import('../client/main.js')).main(args)
    case 'worker':
      return (await import('../worker/main.js')).main(args)
    case 'hook':
      // The repos' pre-receive hook runs `bareku hook pre-receive`.
      return (await import('../hooks/receive.js')).main(args)
    case 'git-shell':
      // The forced command of each key in authorized_keys.
      return (await import('../hooks/ssh.js')).gitShell(args)
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(usage())
      return
  }
  const verb = VERBS[command]
  if (verb === undefined) {
    const near = closest(command, [...Object.keys(VERBS), ...DAEMON_NAMES])
    const hint = near ? ` (did you mean "${near}"?)` : ''
    process.stderr.write(
      `bareku: unknown command "${command}"${hint}; run "bareku help" for the list\n`,
    )
    process.exitCode = 2
    return
  }
  // What follows "--" is the command of `run`, whose own -h is not ours.
  const ours = args.includes('--') ? args.slice(0, args.indexOf('--')) : args
  if (ours.includes('--help') || ours.includes('-h')) {
    process.stdout.write(`usage: bareku ${verb.usage}\n\n${verb.summary}\n`)
    return
  }
  const ctx = parseVerbArgs(verb, args, process.env)
  const result = await verb.run(ctx)
  if (verb.printsItself) return
  if (ctx.json) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`)
  else process.stdout.write(verb.text ? verb.text(result, ctx) : `${JSON.stringify(result)}\n`)
  if (verb.wait && !ctx.json && !ctx.flags.has('--no-wait')) await waitForProcesses(ctx)
}

run(process.argv.slice(2)).catch((err: unknown) => {
  if (isAppError(err)) {
    process.stderr.write(`bareku: ${err.message}\n`)
    process.exit(1)
  }
  throw err
})
