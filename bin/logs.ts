/**
 * @module `bareku logs APP [-f] [--type TYPE] [-n N] [--json]`: the app's last N log lines (from
 * every node, as the master keeps them: master/logs.ts), Heroku style
 *
 *   2026-11-23T19:00:00.000Z app[web.1]: listening on 5000
 *
 * or one JSON object a line with --json. With -f (or --tail) it then subscribes to "logs.APP"
 * on the master's publish endpoint and prints new lines as they arrive, until Ctrl-C. The
 * subscription is made before the history is asked for, so no line falls between the two; a
 * line that comes both ways, or a live line older than one printed from the same file, is not
 * printed (lines of one file are printed once, in order).
 */
import { Subscriber } from 'zeromq'
import { callMaster, masterEndpoints } from '../lib/cluster/control-client.js'
import { AppError } from '../lib/errors.js'
import {
  fileKey,
  formatLine,
  logTopic,
  parseLive,
  publicLine,
  sourceKey,
  type LogLine,
} from '../lib/protocol/log-batch.js'
import type { Verb, VerbContext } from './verbs.js'

const USAGE = 'logs APP [-f] [--type TYPE] [-n N] [--json]'
const FOLLOW = ['-f', '--tail', '--follow']
/** How long -f waits for the connection to the master's publish endpoint. */
const CONNECT_TIMEOUT_MS = 10_000

/** A log file of an instance on a node: its lines come in file order, each with its end offset. */
const fileOf = (l: LogLine): string => `${sourceKey(l)}/${fileKey(l)}`

function options(ctx: VerbContext) {
  for (const flag of ctx.flags.keys()) {
    if (!FOLLOW.includes(flag) && !['--type', '-n', '--num'].includes(flag)) {
      throw new AppError('E_CONFIG', `logs: unknown option ${flag}\n\nusage: bareku ${USAGE}`)
    }
  }
  if (ctx.rest.length > 0) {
    throw new AppError('E_CONFIG', `logs: unexpected "${ctx.rest[0]}"\n\nusage: bareku ${USAGE}`)
  }
  const count = ctx.flags.get('-n') ?? ctx.flags.get('--num') ?? '100'
  const n = Number(count)
  if (typeof count !== 'string' || !/^[0-9]{1,5}$/.test(count) || n < 1 || n > 10_000) {
    throw new AppError(
      'E_CONFIG',
      `logs: -n must be a number of lines from 1 to 10000, got "${String(count)}" (e.g. -n 200)`,
    )
  }
  const type = ctx.flags.get('--type')
  if (type === true || (type !== undefined && !/^[A-Za-z0-9_-]{1,40}$/.test(type))) {
    throw new AppError(
      'E_CONFIG',
      `logs: --type must be a process type such as web or worker, got "${String(type)}"`,
    )
  }
  return { n, type, follow: FOLLOW.some((f) => ctx.flags.has(f)) }
}

/** Connects a subscriber to the app's live lines; resolves once connected to the master. */
async function subscribe(ctx: VerbContext, app: string): Promise<Subscriber> {
  const { publish } = await masterEndpoints(ctx.master)
  const sub = new Subscriber({ linger: 0 })
  const connected = new Promise<void>((resolve) => sub.events.on('handshake', () => resolve()))
  sub.subscribe(`${logTopic(app)}\0`)
  sub.connect(publish)
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new AppError(
            'E_CONTROL',
            `cannot follow the logs: no connection to the master's publish endpoint ${publish} within ${CONNECT_TIMEOUT_MS} ms; is it reachable from here (firewall, BAREKU_MASTER_PUBLISH bound to loopback)?`,
          ),
        ),
      CONNECT_TIMEOUT_MS,
    )
  })
  try {
    await Promise.race([connected, timeout])
  } catch (err) {
    sub.close()
    throw err
  } finally {
    clearTimeout(timer)
  }
  return sub
}

export const logsVerb: Verb = {
  summary: "an app's log lines from every node; -f follows new ones",
  usage: USAGE,
  app: true,
  printsItself: true,
  valueFlags: ['--type', '-n', '--num'],
  async run(ctx) {
    const app = ctx.app!
    const { n, type, follow } = options(ctx)
    // With --json it prints one JSON object a line, as it goes.
    const json = ctx.json
    const print = (l: LogLine): void => {
      ctx.out.write(`${json ? JSON.stringify(publicLine(l)) : formatLine(l)}\n`)
    }
    const sub = follow ? await subscribe(ctx, app) : undefined
    try {
      const lines = (await callMaster(ctx.master, 'logs', {
        app,
        n,
        ...(type === undefined ? {} : { type }),
      })) as LogLine[]
      lines.forEach(print)
      if (!sub) {
        if (lines.length === 0 && !json) {
          process.stderr.write(`no log lines of ${app} yet${type ? ` (type ${type})` : ''}\n`)
        }
        return undefined
      }
      // Per file, how far it was printed: a live line up to there (sent before the history was
      // read, published after) is not printed again, nor out of order.
      const printed = new Map<string, number>()
      const mark = (l: LogLine): void => {
        printed.set(fileOf(l), Math.max(printed.get(fileOf(l)) ?? 0, l.end))
      }
      lines.forEach(mark)
      const stop = (): void => sub.close()
      process.once('SIGINT', stop)
      process.once('SIGTERM', stop)
      try {
        for await (const frames of sub) {
          let live: LogLine[]
          try {
            live = parseLive(frames).lines
          } catch {
            continue
          }
          for (const l of live) {
            if (type !== undefined && l.type !== type) continue
            if (l.end <= (printed.get(fileOf(l)) ?? 0)) continue
            mark(l)
            print(l)
          }
        }
      } finally {
        process.off('SIGINT', stop)
        process.off('SIGTERM', stop)
      }
      return undefined
    } finally {
      if (sub && !sub.closed) sub.close()
    }
  },
  text: () => '',
}
