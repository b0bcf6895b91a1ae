/**
 * @module The control API's commands (lib/protocol/control.ts carries them). Each command checks
 * its args strictly (an unknown or bad field is E_CONTROL naming it), works on a draft of the
 * state, and returns its result and whether the draft changed; master.ts then places, saves and
 * publishes. A refused action (no such app, unknown type, ...) is E_APP with the fix.
 *
 *   endpoints                        -> { control, publish, stats, slugs, logs } (bound)
 *   apps | apps:create {name} | apps:destroy {name} | apps:info {name}
 *   config {app} | config:set {app, vars: {K: V}} | config:unset {app, keys: [K]}
 *   ps {app} | ps:scale {app, formation: {TYPE: N}} | ps:restart {app, type?}
 *   releases {app} | releases:add {app, slug: {sha256, size}, processTypes: {TYPE: CMD},
 *                                  commit?, by?, description?} | rollback {app, version}
 *   domains {app} | domains:add {app, domain} | domains:remove {app, domain}
 *   nodes | status | deploy:status {app, release}
 *   logs {app, n?, type?}            -> the app's last n (default 100) log lines (logs.ts)
 *
 * A config change or a rollback makes a new release (with the same slug), as on Heroku.
 */
import { stat } from 'node:fs/promises'
import { join } from 'node:path'
import { AppError } from '../lib/errors.js'
import type { ControlRequest } from '../lib/protocol/control.js'
import type { InstanceRunState, InstanceStatus, NodeReport } from '../lib/protocol/node-report.js'
import type { MasterSettings } from './config.js'
import { logsCommand } from './logs.js'
import { appHosts, currentRelease, isHandlerType, type Plan } from './plan.js'
import {
  appName,
  CONFIG_KEY,
  configVars,
  healthchecks,
  domainName,
  fields,
  int,
  Invalid,
  map,
  plainKey,
  PROCESS_TYPE,
  processTypes,
  slugRef,
  staticRoot,
  str,
  type App,
  type Release,
  type State,
} from './state.js'

/** The master's bound endpoints, as `endpoints` answers them. */
export interface Endpoints {
  control: string
  publish: string
  stats: string
  slugs: string
  logs: string
}

/** What a command sees: a draft it may change, and read-only views of the running master. */
export interface CommandContext {
  state: State
  settings: MasterSettings
  endpoints: Endpoints
  /** The plan of the current (not the draft) state. */
  plan: Plan
  /** The latest report of each node. */
  reports: ReadonlyMap<string, NodeReport>
  /** When each node last reported (the master's clock); the state keeps it only on a change. */
  lastSeen?: ReadonlyMap<string, number>
  now: number
}

export interface CommandOutcome {
  result: unknown
  changed: boolean
}

/** The largest count `ps:scale` takes for one type. */
const MAX_SCALE = 1000

type Command = (
  args: Record<string, unknown>,
  ctx: CommandContext,
) => CommandOutcome | Promise<CommandOutcome>

/** Runs one request; throws AppError (E_CONTROL for bad args, E_APP for refused actions). */
export async function runCommand(
  req: ControlRequest,
  ctx: CommandContext,
): Promise<CommandOutcome> {
  if (!Object.hasOwn(COMMANDS, req.cmd)) {
    throw new AppError(
      'E_CONTROL',
      `unknown command "${req.cmd}"; the master knows: ${Object.keys(COMMANDS).join(', ')}`,
    )
  }
  try {
    return await COMMANDS[req.cmd]!(req.args, ctx)
  } catch (err) {
    if (err instanceof Invalid) {
      throw new AppError('E_CONTROL', `"${req.cmd}": ${err.message}`)
    }
    throw err
  }
}

const read = (result: unknown): CommandOutcome => ({ result, changed: false })
const wrote = (result: unknown): CommandOutcome => ({ result, changed: true })

function getApp(state: State, name: string): App {
  const app = Object.hasOwn(state.apps, name) ? state.apps[name] : undefined
  if (!app) {
    throw new AppError(
      'E_APP',
      `no app named "${name}"; create it with "bareku apps:create ${name}" (see "bareku apps")`,
    )
  }
  return app
}

/** The app named by args.app (or args.name), after checking the args' fields. */
function appArg(
  args: Record<string, unknown>,
  ctx: CommandContext,
  allowed: string[] = [],
  optional: string[] = [],
  key = 'app',
): App {
  const f = fields(args, 'args', [key, ...allowed, ...optional], [key, ...allowed])
  return getApp(ctx.state, appName(f[key], `args.${key}`))
}

function needRelease(app: App, what: string): Release {
  const release = currentRelease(app)
  if (!release) {
    throw new AppError(
      'E_APP',
      `app "${app.name}" has no release yet, so it cannot ${what}: push first (git push bareku main)`,
    )
  }
  return release
}

function url(app: App, s: MasterSettings): string {
  const port = s.frontendPort === 80 ? '' : `:${s.frontendPort}`
  return `http://${app.name}.${s.domain}${port}/`
}

function appInfo(app: App, s: MasterSettings) {
  const release = currentRelease(app)
  return {
    name: app.name,
    createdAt: app.createdAt,
    url: url(app, s),
    hosts: appHosts(app, s.domain),
    release: app.current,
    processTypes: release?.processTypes ?? {},
    formation: app.formation,
    domains: app.domains,
    releases: app.releases.length,
    configKeys: Object.keys(app.config).sort(),
    ...(app.handler ? { handler: app.handler } : {}),
  }
}

/** Appends a release made from `base` with the app's config; sets it current. */
function addRelease(
  app: App,
  base: Pick<Release, 'slug' | 'processTypes' | 'healthchecks' | 'static'> & { commit?: string },
  by: string,
  description: string,
  now: number,
): Release {
  const release: Release = {
    version: app.releases.length + 1,
    slug: { ...base.slug },
    processTypes: { ...base.processTypes },
    config: { ...app.config },
    by,
    at: new Date(now).toISOString(),
    description,
  }
  if (base.commit !== undefined) release.commit = base.commit
  if (base.healthchecks !== undefined) release.healthchecks = structuredClone(base.healthchecks)
  if (base.static !== undefined) release.static = base.static
  app.releases.push(release)
  app.current = release.version
  // Types never seen get Heroku's defaults: web and handlers 1, others 0 (scale them yourself).
  for (const type of Object.keys(release.processTypes)) {
    if (!Object.hasOwn(app.formation, type)) {
      app.formation[type] = type === 'web' || isHandlerType(type) ? 1 : 0
    }
  }
  return release
}

/**
 * Where release `version`'s health check stands, as the frontend reports it: 'none' without a
 * check (or without a frontend reporting, when nothing can check it), else pending, passed (the
 * frontend routes to it) or failed.
 */
function healthcheckState(
  app: App,
  version: number,
  ctx: CommandContext,
): 'none' | 'pending' | 'passed' | 'failed' {
  const checks = app.releases[version - 1]?.healthchecks
  if (!checks || Object.keys(checks).length === 0 || !ctx.plan.frontend) return 'none'
  const seen = ctx.plan.frontend[app.name]?.releases.find((r) => r.release === version)
  if (seen?.failed === true) return 'failed'
  return seen?.ready === true ? 'passed' : 'pending'
}

/** releases:add's healthchecks argument, checked; each names a process type of the release. */
function checks(v: unknown, types: Record<string, string>): Release['healthchecks'] {
  let out: NonNullable<Release['healthchecks']>
  try {
    out = healthchecks(v, 'args.healthchecks')
  } catch (err) {
    throw new AppError('E_CONTROL', `${(err as Error).message} (app.json "healthchecks")`)
  }
  for (const type of Object.keys(out)) {
    if (!Object.hasOwn(types, type)) {
      throw new AppError(
        'E_CONTROL',
        `args.healthchecks.${type} names no process type of the release (${Object.keys(types).join(', ')}); check app.json "healthchecks" against the Procfile`,
      )
    }
  }
  return out
}

/** A config change on a released app makes a new release with the same slug. */
function configRelease(app: App, description: string, now: number): number | undefined {
  const release = currentRelease(app)
  if (!release) return undefined
  const { commit } = release
  const base = {
    slug: release.slug,
    processTypes: release.processTypes,
    healthchecks: release.healthchecks,
    static: release.static,
  }
  return addRelease(
    app,
    commit === undefined ? base : { ...base, commit },
    'bareku',
    description,
    now,
  ).version
}

async function checkSlug(slug: Release['slug'], s: MasterSettings): Promise<void> {
  const file = join(s.slugDir, `${slug.sha256}.sqfs`)
  let size: number
  try {
    size = (await stat(file)).size
  } catch {
    throw new AppError(
      'E_APP',
      `slug ${slug.sha256} is not in the slug store (${file}); build and store the slug first (the git hook does), or check BAREKU_SLUG_DIR`,
    )
  }
  if (size !== slug.size) {
    throw new AppError(
      'E_APP',
      `slug ${slug.sha256} in the store is ${size} bytes, not ${slug.size}: the file is incomplete or the size is wrong; store the slug again`,
    )
  }
}

function typeArg(release: Release, app: App, type: string): void {
  if (!Object.hasOwn(release.processTypes, type)) {
    const types = Object.keys(release.processTypes).join(', ')
    throw new AppError(
      'E_APP',
      `app "${app.name}" has no process type "${type}" in release v${release.version}; its types are: ${types} (add it to the Procfile and push)`,
    )
  }
}

const STATE_RANK: Record<InstanceRunState, number> = {
  ready: 0,
  starting: 1,
  backoff: 2,
  stopping: 3,
}

/** A reported instance is `name` at `release`: its surge twin, or its release's name, too. */
function sameInstance(reported: InstanceStatus, name: string, release: number): boolean {
  const slot = reported.name.split('~')[0]
  return (slot === name || slot === `${name}-v${release}`) && reported.release === release
}

/** What the node last said of instance `name` at `release` (its surge twin counts too). */
function reportedState(
  report: NodeReport | undefined,
  name: string,
  release: number,
): InstanceRunState | undefined {
  let best: InstanceRunState | undefined
  for (const i of report?.instances ?? []) {
    if (!sameInstance(i, name, release)) continue
    if (best === undefined || STATE_RANK[i.state] < STATE_RANK[best]) best = i.state
  }
  return best
}

/** How often the node restarted this instance's release (crashes), as its worker counts. */
function reportedRestarts(report: NodeReport | undefined, name: string, release: number): number {
  let most = 0
  for (const i of report?.instances ?? []) {
    if (sameInstance(i, name, release)) most = Math.max(most, i.restarts)
  }
  return most
}

/** Each desired instance of the app with where it runs and its state. */
function instancesOf(app: App, ctx: CommandContext) {
  const release = currentRelease(app)
  if (!release) return []
  const unplaced = new Map(ctx.plan.unplaced.map((u) => [u.instance, u.reason]))
  const out = []
  for (const type of Object.keys(release.processTypes).sort()) {
    const count = Object.hasOwn(app.formation, type) ? app.formation[type]! : 0
    for (let n = 1; n <= count; n++) {
      const name = `${app.name}.${type}.${n}`
      const slot = ctx.plan.placement[name]
      const node = slot && ctx.state.nodes[slot.node]
      let state: string
      if (!slot || !node) state = 'unplaced'
      else if (node.status === 'down') state = 'down'
      else state = reportedState(ctx.reports.get(node.name), name, slot.release) ?? 'pending'
      out.push({
        name,
        type,
        node: slot?.node ?? null,
        port: slot?.port ?? null,
        release: slot?.release ?? release.version,
        state,
        restarts:
          slot && node ? reportedRestarts(ctx.reports.get(node.name), name, slot.release) : 0,
        ...(state === 'unplaced' ? { reason: unplaced.get(name) ?? 'not placed yet' } : {}),
      })
    }
  }
  return out
}

const COMMANDS: Record<string, Command> = {
  endpoints(args, ctx) {
    fields(args, 'args', [])
    return read({ ...ctx.endpoints })
  },

  apps(args, ctx) {
    fields(args, 'args', [])
    return read(
      Object.values(ctx.state.apps)
        .sort((a, b) => (a.name < b.name ? -1 : 1))
        .map((a) => ({
          name: a.name,
          release: a.current,
          createdAt: a.createdAt,
          url: url(a, ctx.settings),
        })),
    )
  },

  'apps:create'(args, ctx) {
    const f = fields(args, 'args', ['name'])
    const name = appName(f.name, 'args.name')
    if (Object.hasOwn(ctx.state.apps, name)) {
      throw new AppError('E_APP', `app "${name}" already exists; pick another name or use it`)
    }
    const app: App = {
      name,
      createdAt: new Date(ctx.now).toISOString(),
      config: {},
      formation: {},
      releases: [],
      current: null,
      domains: [],
      restarts: {},
    }
    ctx.state.apps[name] = app
    return wrote(appInfo(app, ctx.settings))
  },

  'apps:destroy'(args, ctx) {
    const app = appArg(args, ctx, [], [], 'name')
    delete ctx.state.apps[app.name]
    for (const inst of Object.keys(ctx.state.placement)) {
      if (inst.startsWith(`${app.name}.`)) delete ctx.state.placement[inst]
    }
    return wrote({ name: app.name, destroyed: true })
  },

  'apps:info'(args, ctx) {
    return read(appInfo(appArg(args, ctx, [], [], 'name'), ctx.settings))
  },

  config(args, ctx) {
    return read({ ...appArg(args, ctx).config })
  },

  'config:set'(args, ctx) {
    const app = appArg(args, ctx, ['vars'])
    const vars = configVars(args.vars, 'args.vars')
    const keys = Object.keys(vars)
    if (keys.length === 0) throw new Invalid('args.vars', 'at least one KEY: VALUE', vars)
    Object.assign(app.config, vars)
    const release = configRelease(app, `Set ${keys.join(', ')} config vars`, ctx.now)
    return wrote({ config: { ...app.config }, release: release ?? null })
  },

  'config:unset'(args, ctx) {
    const app = appArg(args, ctx, ['keys'])
    const keys = args.keys
    if (!Array.isArray(keys) || keys.length === 0) {
      throw new Invalid('args.keys', 'a non-empty list of variable names', keys)
    }
    keys.forEach((k, i) => str(k, `args.keys[${i}]`, CONFIG_KEY, 'a variable name'))
    const present = (keys as string[]).filter((k) => plainKey(k) && Object.hasOwn(app.config, k))
    if (present.length === 0) return read({ config: { ...app.config }, release: null })
    for (const k of present) delete app.config[k]
    const release = configRelease(app, `Unset ${present.join(', ')} config vars`, ctx.now)
    return wrote({ config: { ...app.config }, release: release ?? null })
  },

  ps(args, ctx) {
    return read(instancesOf(appArg(args, ctx), ctx))
  },

  'ps:scale'(args, ctx) {
    const app = appArg(args, ctx, ['formation'])
    const formation = map(
      args.formation,
      'args.formation',
      PROCESS_TYPE,
      'a process type',
      (x, at) => int(x, at, 0, MAX_SCALE),
    )
    if (Object.keys(formation).length === 0) {
      throw new Invalid('args.formation', 'at least one TYPE: COUNT, e.g. {"web": 2}', formation)
    }
    const release = needRelease(app, 'be scaled')
    for (const type of Object.keys(formation)) typeArg(release, app, type)
    Object.assign(app.formation, formation)
    return wrote({ formation: { ...app.formation } })
  },

  'ps:restart'(args, ctx) {
    const app = appArg(args, ctx, [], ['type'])
    const release = needRelease(app, 'be restarted')
    let types = Object.keys(release.processTypes)
    if (args.type !== undefined) {
      const type = str(args.type, 'args.type', PROCESS_TYPE, 'a process type such as "web"')
      typeArg(release, app, type)
      types = [type]
    }
    for (const type of types) {
      app.restarts[type] = (Object.hasOwn(app.restarts, type) ? app.restarts[type]! : 0) + 1
    }
    return wrote({ restarted: types })
  },

  releases(args, ctx) {
    const app = appArg(args, ctx)
    return read(
      [...app.releases].reverse().map((r) => ({ ...r, current: r.version === app.current })),
    )
  },

  async 'releases:add'(args, ctx) {
    const app = appArg(
      args,
      ctx,
      ['slug', 'processTypes'],
      ['commit', 'by', 'description', 'healthchecks', 'static'],
    )
    const slug = slugRef(args.slug, 'args.slug')
    // A static site (the static buildpack's "static" root) may have no process at all.
    const root = args.static === undefined ? undefined : staticRoot(args.static, 'args.static')
    const types = processTypes(args.processTypes, 'args.processTypes', root !== undefined)
    const commit =
      args.commit === undefined ? undefined : str(args.commit, 'args.commit', /^\S{1,100}$/)
    const by = args.by === undefined ? 'bareku' : str(args.by, 'args.by', /^.{1,200}$/)
    const description =
      args.description === undefined
        ? `Deploy ${commit?.slice(0, 7) ?? slug.sha256.slice(0, 7)}`
        : str(args.description, 'args.description', /^.{0,500}$/)
    await checkSlug(slug, ctx.settings)
    const base = {
      slug,
      processTypes: types,
      // app.json's "healthchecks" ({ TYPE: { path, ... } }), passed on by the git hook.
      healthchecks: args.healthchecks === undefined ? undefined : checks(args.healthchecks, types),
      static: root,
    }
    const release = addRelease(
      app,
      commit === undefined ? base : { ...base, commit },
      by,
      description,
      ctx.now,
    )
    return wrote({ ...release, url: url(app, ctx.settings), formation: { ...app.formation } })
  },

  async rollback(args, ctx) {
    const app = appArg(args, ctx, ['version'])
    const version = int(args.version, 'args.version', 1)
    const old = app.releases[version - 1]
    if (!old) {
      throw new AppError(
        'E_APP',
        `app "${app.name}" has no release v${version} (it has v1..v${app.releases.length}); see "bareku releases"`,
      )
    }
    await checkSlug(old.slug, ctx.settings)
    app.config = { ...old.config }
    const base = {
      slug: old.slug,
      processTypes: old.processTypes,
      healthchecks: old.healthchecks,
      static: old.static,
    }
    const release = addRelease(
      app,
      old.commit === undefined ? base : { ...base, commit: old.commit },
      'bareku',
      `Rollback to v${version}`,
      ctx.now,
    )
    return wrote(release)
  },

  domains(args, ctx) {
    const app = appArg(args, ctx)
    return read({ default: `${app.name}.${ctx.settings.domain}`, domains: [...app.domains] })
  },

  'domains:add'(args, ctx) {
    const app = appArg(args, ctx, ['domain'])
    const domain = domainName(args.domain, 'args.domain')
    for (const other of Object.values(ctx.state.apps)) {
      if (appHosts(other, ctx.settings.domain).includes(domain)) {
        throw new AppError(
          'E_APP',
          other === app
            ? `app "${app.name}" already answers to ${domain}`
            : `${domain} belongs to app "${other.name}"; remove it there first (domains:remove)`,
        )
      }
    }
    if (domain === 'default') {
      throw new AppError('E_APP', '"default" is the frontend\'s fallback host; use a real domain')
    }
    app.domains.push(domain)
    return wrote({ domains: [...app.domains] })
  },

  'domains:remove'(args, ctx) {
    const app = appArg(args, ctx, ['domain'])
    const domain = domainName(args.domain, 'args.domain')
    if (!app.domains.includes(domain)) {
      throw new AppError(
        'E_APP',
        `app "${app.name}" has no domain ${domain}; its domains: ${app.domains.join(', ') || 'none'}`,
      )
    }
    app.domains = app.domains.filter((d) => d !== domain)
    return wrote({ domains: [...app.domains] })
  },

  nodes(args, ctx) {
    fields(args, 'args', [])
    const count = new Map<string, number>()
    for (const slot of Object.values(ctx.plan.placement)) {
      count.set(slot.node, (count.get(slot.node) ?? 0) + 1)
    }
    return read(
      Object.values(ctx.state.nodes)
        .sort((a, b) => (a.name < b.name ? -1 : 1))
        .map((n) => {
          const r = ctx.reports.get(n.name)
          return {
            ...n,
            lastSeen: Math.max(n.lastSeen, ctx.lastSeen?.get(n.name) ?? 0),
            instances: count.get(n.name) ?? 0,
            ...(r ? { load: r.load, mem: r.mem, applied: r.applied, errors: r.errors } : {}),
          }
        }),
    )
  },

  status(args, ctx) {
    fields(args, 'args', [])
    const apps = Object.values(ctx.state.apps)
      .sort((a, b) => (a.name < b.name ? -1 : 1))
      .map((app) => {
        const insts = instancesOf(app, ctx)
        return {
          name: app.name,
          release: app.current,
          desired: insts.length,
          placed: insts.filter((i) => i.state !== 'unplaced').length,
          ready: insts.filter((i) => i.state === 'ready').length,
        }
      })
    const nodes = Object.values(ctx.state.nodes)
      .sort((a, b) => (a.name < b.name ? -1 : 1))
      .map((n) => ({ name: n.name, addr: n.addr, status: n.status, capacity: n.capacity }))
    return read({ epoch: ctx.state.epoch, nodes, apps, unplaced: ctx.plan.unplaced })
  },

  logs: async (args, ctx) => read(await logsCommand(args, ctx.state, ctx.settings)),

  'deploy:status'(args, ctx) {
    const app = appArg(args, ctx, ['release'])
    const version = int(args.release, 'args.release', 1)
    if (version > app.releases.length) {
      throw new AppError(
        'E_APP',
        `app "${app.name}" has no release v${version} (it has ${app.releases.length}); add it with releases:add first`,
      )
    }
    const perNode = new Map<string, { node: string; desired: number; ready: number }>()
    let unplaced = 0
    for (const inst of instancesOf(app, ctx)) {
      if (inst.release !== version) continue
      if (inst.node === null) {
        unplaced++
        continue
      }
      const entry = perNode.get(inst.node) ?? { node: inst.node, desired: 0, ready: 0 }
      entry.desired++
      if (inst.state === 'ready') entry.ready++
      perNode.set(inst.node, entry)
    }
    const nodes = [...perNode.values()].sort((a, b) => (a.node < b.node ? -1 : 1))
    const errors: string[] = []
    for (const n of nodes) {
      for (const e of ctx.reports.get(n.node)?.errors ?? []) errors.push(`${n.node}: ${e}`)
    }
    const current = app.current === version
    const check = healthcheckState(app, version, ctx)
    // A static site has no instance to be ready: it is out once the frontend serves its files.
    const rel = app.releases[version - 1]!
    const staticSite =
      rel.static !== undefined && ctx.plan.frontend !== undefined && nodes.length === 0
    const served = !staticSite || (ctx.plan.frontend?.[app.name]?.serving ?? 0) >= version
    const done =
      current &&
      unplaced === 0 &&
      nodes.every((n) => n.ready >= n.desired) &&
      (check === 'none' || check === 'passed') &&
      served
    const reasons = ctx.plan.unplaced.filter((u) => u.app === app.name).map((u) => u.reason)
    return read({
      app: app.name,
      release: version,
      current,
      done,
      nodes,
      unplaced,
      errors: [...errors, ...new Set(reasons)],
      healthcheck: check,
      ...(check === 'failed'
        ? {
            failed: `v${version} failed its health check (app.json "healthchecks"): the frontend never routes to it and the previous release keeps serving; fix the app or the check and push again`,
          }
        : {}),
    })
  },
}
