/**
 * @module The user verbs of the `bareku` command (Heroku/Dokku style: `bareku VERB [APP] ...`),
 * each a call to the master's control API (lib/cluster/control-client.ts), printed as text or,
 * with --json, as the master's JSON result. The app is the first argument, as with Dokku, or
 * `--app/-a NAME`, as with Heroku. The master is BAREKU_MASTER or --master (default the local
 * one, tcp://127.0.0.1:7070).
 *
 * Verbs that also act on this machine's files (the git repository of apps:create/destroy, ssh
 * keys, one-off `run`, `logs`) use BAREKU_HOME: run them on the master's machine.
 */
import { readFileSync } from 'node:fs'
import { homeSetting } from '../lib/config/env.js'
import { createRepo, destroyRepo } from '../hooks/repo.js'
import { addKey, listKeys, removeKey } from '../hooks/ssh.js'
import { callMaster } from '../lib/cluster/control-client.js'
import { logsVerb } from './logs.js'
import { runVerb } from './run.js'
import { AppError } from '../lib/errors.js'

/** The options every verb takes, parsed off its arguments. */
export interface VerbContext {
  master: string
  /** BAREKU_HOME on this machine: repos, ssh keys, slugs, logs. */
  home: string
  json: boolean
  app?: string
  /** The remaining positional arguments (after the app). */
  rest: string[]
  /** Flags the verb itself reads (e.g. --confirm NAME, -n 100, -f). */
  flags: Map<string, string | true>
  out: NodeJS.WritableStream
}

export interface Verb {
  summary: string
  usage: string
  /** True when the first positional argument is the app name. */
  app: boolean
  /** Flags that take a value. */
  valueFlags?: string[]
  run(ctx: VerbContext): Promise<unknown>
  /** Text form of the result; the JSON form is the result itself. */
  text?(result: unknown, ctx: VerbContext): string
  /** It writes its own output (logs, run): nothing is printed after it. */
  printsItself?: boolean
  /** After it, show each process of the app as it becomes ready (text mode, unless --no-wait). */
  wait?: boolean
}

interface PsRow {
  name: string
  node: string | null
  port: number | null
  release: number
  state: string
  restarts?: number
}

/**
 * Polls `ps` and prints each process as it becomes ready, until all are (resolves) or
 * `timeoutMs` passes (throws E_APP naming the ones that are not, and where their logs are).
 */
export async function waitForProcesses(ctx: VerbContext, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  const shown = new Set<string>()
  let rows: PsRow[]
  for (;;) {
    rows = (await call(ctx, 'ps', { app: ctx.app })) as PsRow[]
    for (const r of rows) {
      const key = `${r.name}@${r.release}:${r.port ?? ''}`
      if (r.state === 'ready' && !shown.has(key)) {
        shown.add(key)
        ctx.out.write(
          `       ${r.name} (v${r.release} on ${r.node ?? '?'}${r.port ? `, port ${r.port}` : ''}) - ready\n`,
        )
      }
    }
    if (rows.every((r) => r.state === 'ready')) return
    if (Date.now() > deadline) break
    await new Promise((resolve) => setTimeout(resolve, 250))
  }
  const stuck = rows
    .filter((r) => r.state !== 'ready')
    .map((r) => `${r.name} is ${r.state}${r.restarts ? ` after ${r.restarts} restarts` : ''}`)
  throw new AppError(
    'E_APP',
    `not every process of ${ctx.app} is ready after ${timeoutMs / 1000} s: ${stuck.join('; ')}; see "bareku logs ${ctx.app}" and "bareku ps ${ctx.app}" (--no-wait skips this wait)`,
  )
}

/** Splits argv into the common options and the verb's own. */
export function parseVerbArgs(verb: Verb, args: string[], env: NodeJS.ProcessEnv): VerbContext {
  const flags = new Map<string, string | true>()
  const positional: string[] = []
  let master = env.BAREKU_MASTER || 'tcp://127.0.0.1:7070'
  let json = false
  let app: string | undefined
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!
    if (arg === '--') {
      positional.push(...args.slice(i + 1))
      break
    }
    const [name, inline] = arg.startsWith('--') ? arg.split(/=(.*)/s, 2) : [arg, undefined]
    const takeValue = (): string => {
      const value = inline ?? args[++i]
      if (value === undefined) {
        throw new AppError('E_CONFIG', `${name} needs a value\n\nusage: ${verb.usage}`)
      }
      return value
    }
    if (name === '--json') json = true
    else if (name === '--master') master = takeValue()
    else if (name === '--app' || name === '-a') app = takeValue()
    else if (verb.valueFlags?.includes(name)) flags.set(name, takeValue())
    else if (name.startsWith('-') && name !== '-' && !/^-?[0-9]/.test(name)) flags.set(name, true)
    else positional.push(arg)
  }
  if (verb.app && app === undefined) app = positional.shift()
  if (verb.app && app === undefined) {
    throw new AppError('E_APP', `which app? Name it: bareku ${verb.usage}`)
  }
  const home = homeSetting(env)
  return { master, home, json, app, rest: positional, flags, out: process.stdout }
}

const call = (ctx: VerbContext, cmd: string, args: Record<string, unknown> = {}) =>
  callMaster(ctx.master, cmd, args)

/** KEY=VALUE arguments -> an object; anything else is a clear error. */
export function parseAssignments(items: string[], example: string): Record<string, string> {
  if (items.length === 0) throw new AppError('E_CONFIG', `nothing to set: give ${example}`)
  const out: Record<string, string> = {}
  for (const item of items) {
    const eq = item.indexOf('=')
    if (eq <= 0) throw new AppError('E_CONFIG', `"${item}" is not KEY=VALUE (e.g. ${example})`)
    out[item.slice(0, eq)] = item.slice(eq + 1)
  }
  return out
}

/** `web=3 worker=1` -> { web: 3, worker: 1 }. */
export function parseFormation(items: string[]): Record<string, number> {
  const raw = parseAssignments(items, 'web=2 worker=1')
  const out: Record<string, number> = {}
  for (const [type, count] of Object.entries(raw)) {
    if (!/^[0-9]{1,4}$/.test(count)) {
      throw new AppError(
        'E_CONFIG',
        `${type}=${count}: the count must be a number 0..9999 (e.g. ${type}=2)`,
      )
    }
    out[type] = Number(count)
  }
  return out
}

/** A plain text table: columns padded to their widest cell. */
export function table(rows: Record<string, unknown>[], columns: string[]): string {
  if (rows.length === 0) return ''
  const cell = (v: unknown): string =>
    v === undefined || v === null ? '' : typeof v === 'string' ? v : JSON.stringify(v)
  const cells = rows.map((r) => columns.map((c) => cell(r[c])))
  const widths = columns.map((c, i) => Math.max(c.length, ...cells.map((r) => r[i]!.length)))
  const line = (values: string[]) =>
    values
      .map((v, i) => v.padEnd(widths[i]!))
      .join('  ')
      .trimEnd()
  return [line(columns.map((c) => c.toUpperCase())), ...cells.map(line)].join('\n') + '\n'
}

const asRows = (v: unknown): Record<string, unknown>[] =>
  Array.isArray(v) ? (v as Record<string, unknown>[]) : []

const lines = (obj: unknown): string =>
  Object.entries((obj ?? {}) as Record<string, unknown>)
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join('\n') + '\n'

export const VERBS: Record<string, Verb> = {
  apps: {
    summary: 'list the apps',
    usage: 'apps [--json]',
    app: false,
    run: (ctx) => call(ctx, 'apps'),
    text: (r) =>
      table(asRows(r), ['name', 'release', 'url']) || 'no apps yet: bareku apps:create NAME\n',
  },
  'apps:create': {
    summary: 'create an app and its git repository',
    usage: 'apps:create NAME',
    app: true,
    async run(ctx) {
      const info = (await call(ctx, 'apps:create', { name: ctx.app })) as Record<string, unknown>
      const repo = await createRepo(ctx.home, ctx.app!, { master: ctx.master })
      return { ...info, repo }
    },
    text: (r) => {
      const a = r as { name: string; repo: string; url: string }
      return [
        `-----> Created ${a.name}`,
        `       git remote add bareku ${a.repo}`,
        `       (over ssh, once your key is added with keys:add: git remote add bareku root@HOST:${a.name})`,
        `       git push bareku master`,
        `       then: ${a.url}`,
        '',
      ].join('\n')
    },
  },
  'apps:destroy': {
    summary: 'destroy an app: its processes, releases and repository (asks first)',
    usage: 'apps:destroy NAME [--confirm NAME]',
    app: true,
    valueFlags: ['--confirm'],
    async run(ctx) {
      let confirm = ctx.flags.get('--confirm')
      if (confirm === undefined && process.stdin.isTTY) {
        process.stderr.write(
          ` !     This destroys ${ctx.app}, its processes, releases and git repository.\n !     Type the app name to confirm: `,
        )
        confirm = await new Promise<string>((resolve) =>
          process.stdin.once('data', (d) => resolve(d.toString().trim())),
        )
        process.stdin.pause()
      }
      if (confirm !== ctx.app) {
        throw new AppError(
          'E_APP',
          `not destroyed: confirm with --confirm ${ctx.app} (this cannot be undone)`,
        )
      }
      const result = await call(ctx, 'apps:destroy', { name: ctx.app })
      await destroyRepo(ctx.home, ctx.app!)
      return result
    },
    text: (_r, ctx) => `-----> Destroyed ${ctx.app}\n`,
  },
  'apps:info': {
    summary: "an app's release, formation, domains and URL",
    usage: 'apps:info APP [--json]',
    app: true,
    run: (ctx) => call(ctx, 'apps:info', { name: ctx.app }),
    text: (r) =>
      Object.entries(r as Record<string, unknown>)
        .map(([k, v]) => `${`${k}:`.padEnd(14)}${typeof v === 'string' ? v : JSON.stringify(v)}`)
        .join('\n') + '\n',
  },
  config: {
    summary: "an app's config vars",
    usage: 'config APP [--json]',
    app: true,
    run: (ctx) => call(ctx, 'config', { app: ctx.app }),
    text: lines,
  },
  'config:set': {
    summary: 'set config vars (makes a new release)',
    usage: 'config:set APP KEY=VALUE ...',
    app: true,
    wait: true,
    run: (ctx) =>
      call(ctx, 'config:set', { app: ctx.app, vars: parseAssignments(ctx.rest, 'DEBUG=1') }),
    text: (_r, ctx) =>
      `-----> Set ${ctx.rest.map((a) => a.split('=')[0]).join(', ')} on ${ctx.app}\n`,
  },
  'config:unset': {
    summary: 'remove config vars (makes a new release)',
    usage: 'config:unset APP KEY ...',
    app: true,
    wait: true,
    run: (ctx) => {
      if (ctx.rest.length === 0)
        throw new AppError('E_CONFIG', 'name the vars: config:unset APP KEY ...')
      return call(ctx, 'config:unset', { app: ctx.app, keys: ctx.rest })
    },
    text: (_r, ctx) => `-----> Unset ${ctx.rest.join(', ')} on ${ctx.app}\n`,
  },
  ps: {
    summary: "an app's processes: node, port, release, state",
    usage: 'ps APP [--json]',
    app: true,
    run: (ctx) => call(ctx, 'ps', { app: ctx.app }),
    text: (r) =>
      table(asRows(r), ['name', 'node', 'port', 'release', 'state', 'restarts']) ||
      'no processes\n',
  },
  'ps:scale': {
    summary: 'set how many processes of each type run',
    usage: 'ps:scale APP TYPE=N ...   (e.g. web=3 worker=1)',
    app: true,
    wait: true,
    run: (ctx) => call(ctx, 'ps:scale', { app: ctx.app, formation: parseFormation(ctx.rest) }),
    text: (_r, ctx) => `-----> Scaled ${ctx.app} to ${ctx.rest.join(' ')}\n`,
  },
  'ps:restart': {
    summary: "restart an app's processes (all, or one type), new before old",
    usage: 'ps:restart APP [TYPE]',
    app: true,
    wait: true,
    run: (ctx) =>
      call(ctx, 'ps:restart', { app: ctx.app, ...(ctx.rest[0] ? { type: ctx.rest[0] } : {}) }),
    text: (_r, ctx) => `-----> Restarting ${ctx.rest[0] ?? 'all'} processes of ${ctx.app}\n`,
  },
  releases: {
    summary: "an app's releases, newest first",
    usage: 'releases APP [--json]',
    app: true,
    run: (ctx) => call(ctx, 'releases', { app: ctx.app }),
    text: (r) => {
      const rows = asRows(r).map((x) => ({
        ...x,
        version: `v${String(x.version)}${x.current === true ? ' (current)' : ''}`,
      }))
      return table(rows, ['version', 'description', 'by', 'at']) || 'no releases yet: git push\n'
    },
  },
  rollback: {
    summary: 'go back to an earlier release (no rebuild; makes a new release)',
    usage: 'rollback APP vN',
    app: true,
    wait: true,
    run: (ctx) => {
      const m = /^v?([0-9]+)$/.exec(ctx.rest[0] ?? '')
      if (!m)
        throw new AppError(
          'E_CONFIG',
          `which release? e.g. bareku rollback ${ctx.app} v3 (see bareku releases ${ctx.app})`,
        )
      return call(ctx, 'rollback', { app: ctx.app, version: Number(m[1]) })
    },
    text: (r, ctx) =>
      `-----> Rolled ${ctx.app} back to ${ctx.rest[0]}: now v${String((r as { version?: number })?.version)}\n`,
  },
  domains: {
    summary: "an app's domains (besides NAME.DOMAIN)",
    usage: 'domains APP [--json]',
    app: true,
    run: (ctx) => call(ctx, 'domains', { app: ctx.app }),
    text: (r) => {
      const d = r as { default?: string; domains?: string[] }
      return [d.default, ...(d.domains ?? [])].filter(Boolean).join('\n') + '\n'
    },
  },
  'domains:add': {
    summary: 'route a domain (Host header) to the app',
    usage: 'domains:add APP DOMAIN',
    app: true,
    run: (ctx) => call(ctx, 'domains:add', { app: ctx.app, domain: ctx.rest[0] }),
    text: (_r, ctx) => `-----> Added ${ctx.rest[0]} to ${ctx.app}\n`,
  },
  'domains:remove': {
    summary: 'stop routing a domain to the app',
    usage: 'domains:remove APP DOMAIN',
    app: true,
    run: (ctx) => call(ctx, 'domains:remove', { app: ctx.app, domain: ctx.rest[0] }),
    text: (_r, ctx) => `-----> Removed ${ctx.rest[0]} from ${ctx.app}\n`,
  },
  keys: {
    summary: 'the ssh keys that may push (git over ssh)',
    usage: 'keys [--json]',
    app: false,
    run: (ctx) => listKeys(ctx.home),
    text: (r) =>
      table(asRows(r), ['name', 'type', 'fingerprint', 'comment']) ||
      'no keys yet: bareku keys:add NAME FILE.pub\n',
  },
  'keys:add': {
    summary: 'allow an ssh public key to push (FILE, or - for stdin)',
    usage: 'keys:add NAME FILE.pub',
    app: false,
    run: (ctx) => {
      const [name, file] = ctx.rest
      if (name === undefined || file === undefined) {
        throw new AppError(
          'E_CONFIG',
          'usage: bareku keys:add NAME FILE.pub (e.g. keys:add alice ~/.ssh/id_ed25519.pub)',
        )
      }
      let text: string
      try {
        text = readFileSync(file === '-' ? 0 : file, 'utf8')
      } catch (err) {
        throw new AppError('E_CONFIG', `cannot read the key ${file}: ${(err as Error).message}`)
      }
      return addKey(ctx.home, name, text)
    },
    text: (r) => {
      const k = r as { name: string; fingerprint: string }
      return `-----> Added key ${k.name} (${k.fingerprint})\n       point sshd's AuthorizedKeysFile at the home's ssh/authorized_keys (see README)\n`
    },
  },
  'keys:remove': {
    summary: 'stop an ssh key from pushing',
    usage: 'keys:remove NAME',
    app: false,
    async run(ctx) {
      if (ctx.rest[0] === undefined)
        throw new AppError('E_CONFIG', 'usage: bareku keys:remove NAME')
      await removeKey(ctx.home, ctx.rest[0])
      return { removed: ctx.rest[0] }
    },
    text: (_r, ctx) => `-----> Removed key ${ctx.rest[0]}\n`,
  },
  logs: logsVerb,
  run: runVerb,
  nodes: {
    summary: 'the nodes, their status and load',
    usage: 'nodes [--json]',
    app: false,
    run: (ctx) => call(ctx, 'nodes'),
    text: (r) =>
      table(asRows(r), ['name', 'addr', 'status', 'instances', 'capacity', 'load']) ||
      'no nodes have reported yet\n',
  },
  status: {
    summary: 'the whole cluster at a glance',
    usage: 'status [--json]',
    app: false,
    run: (ctx) => call(ctx, 'status'),
    text: (r) => {
      const s = r as {
        nodes?: unknown
        apps?: unknown
        unplaced?: { instance: string; reason: string }[]
      }
      const unplaced = (s.unplaced ?? []).map(
        (u) => ` !     ${u.instance} is not placed: ${u.reason}`,
      )
      return [
        '=== Nodes',
        table(asRows(s.nodes), ['name', 'addr', 'status', 'capacity']) || 'none yet\n',
        '=== Apps',
        table(asRows(s.apps), ['name', 'release', 'desired', 'placed', 'ready']) || 'none yet\n',
        ...unplaced.map((u) => `${u}\n`),
      ].join('\n')
    },
  },
}
