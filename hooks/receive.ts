/**
 * @module `bareku hook pre-receive`: what a push to repos/APP.git does. git runs the hook in the
 * bare repo with one `OLD NEW REF` line per updated ref on stdin; a non-zero exit rejects the
 * whole push, and everything the hook prints reaches the pusher as `remote: ...` lines.
 *
 *   deploy ref (master|main) ─ lock apps/APP/build.lock ─ git archive NEW | tar -x (scratch)
 *     ─ size and symlink checks ─ .slugignore ─ buildpacks (cache/APP, the app's config)
 *     ─ packSlug (slugs/<sha256>.sqfs) ─ `release` process type, once ─ releases:add
 *     ─ poll deploy:status until every node has the new instances ready
 *       └ timeout: rollback to the previous release, reject
 *     ─ prune slugs no app's last BAREKU_KEEP_RELEASES releases use
 *   other refs: accepted without a build; deletions: accepted with a note
 *
 * Nothing changes in the master before the slug is built and the release command passed, so a
 * failed build leaves the running release as it was. The scratch dir and the lock go in every
 * case (a lock left by a killed hook names a dead pid, and the next push takes it over).
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { constants as fsConstants, readFileSync, rmSync, unlinkSync } from 'node:fs'
import {
  lstat,
  mkdir,
  open,
  readdir,
  readFile,
  readlink,
  rm,
  stat,
  unlink,
  utimes,
} from 'node:fs/promises'
import { userInfo } from 'node:os'
import { basename, join } from 'node:path'
import type { Writable } from 'node:stream'
import { execa } from 'execa'
import { callMaster } from '../lib/cluster/control-client.js'
import { AppError, isAppError } from '../lib/errors.js'
import { packSlug } from '../lib/slug/pack.js'
import { pruneSlugignore, runBuildpacks } from './build.js'
import { APP_NAME } from './repo.js'

export const USAGE = `usage: bareku hook pre-receive

The git pre-receive hook of an app's repo (repos/APP.git/hooks/pre-receive runs it there): reads
"OLD NEW REF" lines on stdin, builds and deploys a push to master or main, accepts other refs
without a build, and exits non-zero (rejecting the push) on any failure.

settings (environment; the installed hook sets the first two):
  BAREKU_HOME                the home the repo belongs to (repos/, scratch/, cache/, slugs/, apps/)
  BAREKU_MASTER              the master's control endpoint (default: tcp://127.0.0.1:7070)
  BAREKU_SLUG_DIR            where slugs are stored (default: $BAREKU_HOME/slugs; as the master's)
  BAREKU_BUILD_TIMEOUT_MS    the buildpacks, and the release command, each (default: 900000)
  BAREKU_DEPLOY_TIMEOUT_MS   wait this long for every node to run the release (default: 120000)
  BAREKU_MAX_FILE_BYTES      refuse a pushed file larger than this (default: 524288000)
  BAREKU_KEEP_RELEASES       keep the slugs of each app's last N releases (default: 5)
  BAREKU_USER                who pushed, recorded in the release (the ssh key's name; else $USER)
`

/** Everything the hook needs, read once by main from the environment. */
export interface HookSettings {
  home: string
  master: string
  slugDir: string
  buildTimeoutMs: number
  deployTimeoutMs: number
  maxFileBytes: number
  keepReleases: number
  user: string
  /** How often deploy:status is asked. */
  pollMs: number
}

function positiveInt(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const value = env[name]
  if (value === undefined || value === '') return fallback
  const n = Number(value)
  if (!/^[0-9]+$/.test(value) || !Number.isSafeInteger(n) || n < 1) {
    throw new AppError(
      'E_CONFIG',
      `${name} must be a positive integer, got "${value}" (e.g. ${name}=${fallback})`,
    )
  }
  return n
}

/** Reads the hook's settings; a bad value is E_CONFIG naming the variable. */
export function loadHookSettings(env: NodeJS.ProcessEnv): HookSettings {
  const home = env.BAREKU_HOME ?? ''
  if (!home.startsWith('/')) {
    throw new AppError(
      'E_CONFIG',
      `BAREKU_HOME must be an absolute path, got "${home}": reinstall the hook with "bareku apps:create APP"`,
    )
  }
  return {
    home,
    master: env.BAREKU_MASTER || 'tcp://127.0.0.1:7070',
    slugDir: env.BAREKU_SLUG_DIR || join(home, 'slugs'),
    buildTimeoutMs: positiveInt(env, 'BAREKU_BUILD_TIMEOUT_MS', 900_000),
    deployTimeoutMs: positiveInt(env, 'BAREKU_DEPLOY_TIMEOUT_MS', 120_000),
    maxFileBytes: positiveInt(env, 'BAREKU_MAX_FILE_BYTES', 500 * 1024 * 1024),
    keepReleases: positiveInt(env, 'BAREKU_KEEP_RELEASES', 5),
    user: env.BAREKU_USER || env.USER || userInfo().username,
    pollMs: 50,
  }
}

/** Heroku-style output: `-----> step`, `       detail`, ` !     problem`. */
export class Output {
  constructor(readonly stream: Writable) {}
  step(text: string): void {
    this.stream.write(`-----> ${text}\n`)
  }
  info(text: string): void {
    this.stream.write(`       ${text}\n`)
  }
  warn(text: string): void {
    this.stream.write(` !     ${text}\n`)
  }
}

/** One line of the hook's stdin. */
export interface RefUpdate {
  old: string
  new: string
  ref: string
}

const OID = /^[0-9a-f]{40}([0-9a-f]{24})?$/
const isZero = (oid: string): boolean => /^0+$/.test(oid)

/** Parses the hook's stdin; a malformed line is E_BUILD (git never sends one). */
export function parseRefUpdates(text: string): RefUpdate[] {
  const updates: RefUpdate[] = []
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue
    const [old = '', neu = '', ref = '', extra] = line.trim().split(' ')
    if (!OID.test(old) || !OID.test(neu) || !ref.startsWith('refs/') || extra !== undefined) {
      throw new AppError(
        'E_BUILD',
        `pre-receive expects "OLD NEW REF" lines from git, got ${JSON.stringify(line.slice(0, 200))}`,
      )
    }
    updates.push({ old, new: neu, ref })
  }
  return updates
}

/** Only these branches build and deploy. */
export function isDeployRef(ref: string): boolean {
  return ref === 'refs/heads/master' || ref === 'refs/heads/main'
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/**
 * Takes $home/apps/APP/build.lock (O_EXCL, holding our pid) or throws E_BUILD at once when a
 * live push holds it. A lock whose pid is dead is taken over. Returns the (synchronous, so a
 * signal handler can call it) release function.
 */
export async function acquireBuildLock(home: string, app: string): Promise<() => void> {
  const dir = join(home, 'apps', app)
  const file = join(dir, 'build.lock')
  await mkdir(dir, { recursive: true })
  const mine = `${process.pid}\n`
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fh = await open(
        file,
        fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL,
        0o644,
      )
      await fh.writeFile(mine)
      await fh.close()
      return () => {
        // Only our own lock: never remove one a later push took over.
        try {
          if (readFileSync(file, 'utf8') === mine) unlinkSync(file)
        } catch {
          // gone already
        }
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    }
    const held = await readFile(file, 'utf8').catch(() => '')
    const pid = Number(held.trim())
    // An empty file is a lock being written right now: treat it as held.
    if (held === '' || (Number.isSafeInteger(pid) && pid > 0 && pidAlive(pid))) break
    // Stale (its hook died): take it over, unless it changed hands since we read it.
    if ((await readFile(file, 'utf8').catch(() => '')) === held) {
      await unlink(file).catch(() => undefined)
    }
  }
  throw new AppError(
    'E_BUILD',
    `another push is building ${app}; try again when it has finished (lock: ${file})`,
  )
}

interface GitOptions {
  /** The bare repo. */
  cwd: string
  /** The environment git needs (GIT_DIR and the quarantine variables of this push). */
  env: NodeJS.ProcessEnv
}

function git(args: string[], opts: GitOptions) {
  return execa('git', args, {
    cwd: opts.cwd,
    env: opts.env,
    extendEnv: false,
    stripFinalNewline: false,
    maxBuffer: 256 * 1024 * 1024,
  })
}

/** One file of a commit's tree, from `git ls-tree -r -l`. */
interface TreeEntry {
  mode: string
  type: string
  size: number
  path: string
}

async function listTree(commit: string, opts: GitOptions): Promise<TreeEntry[]> {
  const { stdout } = await git(['ls-tree', '-r', '-l', '-z', '--full-tree', commit], opts)
  const entries: TreeEntry[] = []
  for (const record of stdout.split('\0')) {
    const m = /^(\d+) (\w+) [0-9a-f]+ +(-|\d+)\t(.*)$/s.exec(record)
    if (m === null) continue
    entries.push({ mode: m[1]!, type: m[2]!, size: m[3] === '-' ? 0 : Number(m[3]), path: m[4]! })
  }
  return entries
}

const mb = (bytes: number): string =>
  bytes < 1024 * 1024 ? `${Math.ceil(bytes / 1024)} KB` : `${(bytes / 1024 / 1024).toFixed(1)} MB`

/**
 * Writes the tree of `commit` into `dest` (created) with `git archive | tar -x`, which reads the
 * objects of a push still in quarantine. Files over `maxFileBytes` are refused before anything
 * is written; an empty tree is refused too.
 */
export async function checkout(
  commit: string,
  dest: string,
  opts: GitOptions & { maxFileBytes: number; out: Output },
): Promise<void> {
  const entries = await listTree(commit, opts)
  if (entries.length === 0) {
    throw new AppError(
      'E_BUILD',
      `commit ${commit.slice(0, 7)} has no files: add your app (its code and a Procfile), commit and push again`,
    )
  }
  const big = entries.filter((e) => e.type === 'blob' && e.size > opts.maxFileBytes)
  if (big.length > 0) {
    const list = big.map((e) => `${e.path} (${mb(e.size)})`).join(', ')
    throw new AppError(
      'E_BUILD',
      `files larger than ${mb(opts.maxFileBytes)} are refused: ${list}; remove them from the commit (git rm --cached, or git lfs), or raise BAREKU_MAX_FILE_BYTES`,
    )
  }
  for (const e of entries.filter((e) => e.type === 'commit')) {
    opts.out.info(`Note: submodule ${e.path} is not part of the build (vendor it to include it)`)
  }
  await mkdir(dest, { recursive: true })
  try {
    await git(['archive', '--format=tar', commit], opts).pipe(
      'tar',
      ['-x', '--no-same-owner', '-C', dest],
      { stripFinalNewline: false },
    )
  } catch (err) {
    const detail = (err as { stderr?: string }).stderr?.trim() || (err as Error).message
    throw new AppError(
      'E_BUILD',
      `cannot check out ${commit.slice(0, 7)}: ${detail} (is the disk under ${dest} full?)`,
    )
  }
}

/**
 * Whether the symlink at `rel` (relative to `root`) resolves, as the kernel would resolve it
 * following every link inside the tree, to somewhere outside `root` (or loops).
 */
async function symlinkEscapes(root: string, rel: string): Promise<boolean> {
  const stack: string[] = []
  let todo = rel.split('/')
  let hops = 0
  while (todo.length > 0) {
    const part = todo.shift()!
    if (part === '' || part === '.') continue
    if (part === '..') {
      if (stack.length === 0) return true
      stack.pop()
      continue
    }
    const here = join(root, ...stack, part)
    const st = await lstat(here).catch(() => undefined)
    if (st?.isSymbolicLink()) {
      if (++hops > 40) return true
      const target = await readlink(here)
      if (target.startsWith('/')) return true
      todo = [...target.split('/'), ...todo]
    } else {
      // A missing component stays as written: the link dangles, but inside.
      stack.push(part)
    }
  }
  return false
}

/** Throws E_BUILD naming the first symlink under `root` that points outside it. */
export async function checkSymlinks(root: string): Promise<void> {
  const walk = async (rel: string): Promise<void> => {
    for (const entry of await readdir(join(root, rel), { withFileTypes: true })) {
      const path = rel === '' ? entry.name : `${rel}/${entry.name}`
      if (entry.isDirectory()) await walk(path)
      else if (entry.isSymbolicLink() && (await symlinkEscapes(root, path))) {
        const target = await readlink(join(root, path))
        throw new AppError(
          'E_BUILD',
          `symlink ${path} -> ${target} points outside the app: the slug may only link to its own files; make it relative and inside the repo, or commit the file itself`,
        )
      }
    }
  }
  await walk('')
}

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
/** As the worker starts a process (worker/spawn.ts): `.profile.d` first, then the command. */
const RELEASE_SCRIPT = 'for f in .profile.d/*.sh; do [ -r "$f" ] && . "$f"; done; eval "$1"'

/** Copies `from` to `out`, each line indented as a detail. */
function indentInto(from: NodeJS.ReadableStream, out: Output): Promise<void> {
  return new Promise((resolve) => {
    let pending = ''
    from.setEncoding('utf8')
    from.on('data', (chunk: string) => {
      pending += chunk
      const lines = pending.split('\n')
      pending = lines.pop() ?? ''
      for (const line of lines) out.info(line)
    })
    from.on('end', () => {
      if (pending !== '') out.info(pending)
      resolve()
    })
  })
}

/**
 * Runs the `release` process type once in the built app, with the app's config as its
 * environment; a non-zero exit or the timeout is E_BUILD.
 */
export async function runReleaseCommand(
  command: string,
  opts: { dir: string; env: Record<string, string>; out: Output; timeoutMs: number },
): Promise<void> {
  const child = spawn('/bin/sh', ['-c', RELEASE_SCRIPT, 'bareku-release', command], {
    cwd: opts.dir,
    env: { PATH: DEFAULT_PATH, ...opts.env, HOME: opts.dir, DYNO: 'release.1' },
    stdio: ['ignore', 'pipe', 'pipe'],
    // Its own process group, so the timeout kills whatever it started too.
    detached: true,
  })
  let timedOut = false
  const timer = setTimeout(() => {
    timedOut = true
    try {
      process.kill(-child.pid!, 'SIGKILL')
    } catch {
      // already gone
    }
  }, opts.timeoutMs)
  const copied = Promise.all([
    indentInto(child.stdout, opts.out),
    indentInto(child.stderr, opts.out),
  ])
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => {
    child.on('error', () => resolve([127, null]))
    child.on('close', (c, s) => resolve([c, s]))
  })
  clearTimeout(timer)
  await copied
  if (timedOut) {
    throw new AppError(
      'E_BUILD',
      `the release command "${command}" did not finish within ${opts.timeoutMs} ms and was killed: make it finish sooner, or raise BAREKU_BUILD_TIMEOUT_MS; nothing was deployed`,
    )
  }
  if (code !== 0) {
    throw new AppError(
      'E_BUILD',
      `the release command "${command}" failed (${signal ? `killed by ${signal}` : `exit ${code}`}); fix it (its output is above) and push again; nothing was deployed`,
    )
  }
}

/** Calls one control command on the master. */
export type Call = (cmd: string, args?: Record<string, unknown>) => Promise<unknown>

interface DeployNode {
  node: string
  desired: number
  ready: number
}
interface DeployStatus {
  done: boolean
  /** Set when the release failed its health check: it will never be routed to. */
  failed?: string
  nodes: DeployNode[]
  unplaced?: number
  errors?: string[]
}
interface PsEntry {
  name: string
  node: string | null
  release: number
  state: string
  reason?: string
  restarts?: number
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/**
 * Polls deploy:status until every node runs release `version` ready, printing each node as it
 * completes. Resolves true when done, false at the deadline (having said what is missing).
 */
export async function waitForDeploy(
  call: Call,
  app: string,
  version: number,
  opts: { out: Output; timeoutMs: number; pollMs: number; appWord: RegExp; home?: string },
): Promise<{ done: true } | { done: false; why: string }> {
  const deadline = Date.now() + opts.timeoutMs
  const addrs = new Map<string, string>()
  const reported = new Set<string>()
  const seenErrors = new Set<string>()
  let last: DeployStatus | undefined
  let lastError: string | undefined
  const addrOf = async (node: string): Promise<string> => {
    if (!addrs.has(node)) {
      const nodes = (await call('nodes').catch(() => [])) as { name: string; addr?: string }[]
      for (const n of nodes) addrs.set(n.name, n.addr ?? n.name)
    }
    return addrs.get(node) ?? node
  }
  for (;;) {
    try {
      last = (await call('deploy:status', { app, release: version })) as DeployStatus
      lastError = undefined
      for (const n of last.nodes) {
        if (n.desired > 0 && n.ready >= n.desired && !reported.has(n.node)) {
          reported.add(n.node)
          opts.out.info(`${await addrOf(n.node)} - OK`)
        }
      }
      for (const e of last.errors ?? []) {
        if (!seenErrors.has(e) && opts.appWord.test(e)) {
          seenErrors.add(e)
          opts.out.warn(e)
        }
      }
      if (last.done) return { done: true }
      if (last.failed !== undefined) return { done: false, why: last.failed }
      const crashing = await crashLoops(call, app, version)
      if (crashing.length > 0) {
        return {
          done: false,
          why: crashing
            .map(
              (i) =>
                `${i.name} on ${i.node} crashed ${i.restarts} times while starting; its output is in log/${i.name}.log under BAREKU_HOME on that node (or "bareku logs ${app}")${tail(opts.home, i.name)}`,
            )
            .join('\n'),
        }
      }
    } catch (err) {
      // The master may be restarting: keep asking until the deadline.
      lastError = (err as Error).message
    }
    if (Date.now() >= deadline) break
    await sleep(Math.min(opts.pollMs, Math.max(0, deadline - Date.now())))
  }
  const lines: string[] = []
  if (last === undefined) lines.push(`the master did not answer: ${lastError ?? 'no reply'}`)
  const ps = (await call('ps', { app }).catch(() => [])) as PsEntry[]
  for (const n of last?.nodes ?? []) {
    if (n.ready >= n.desired) continue
    const stuck = ps
      .filter((i) => i.node === n.node && i.release === version && i.state !== 'ready')
      .map((i) => `${i.name} (${i.state}): log/${i.name}.log`)
    lines.push(
      `node ${n.node} (${await addrOf(n.node)}) has ${n.ready} of ${n.desired} instances of v${version} ready; logs under BAREKU_HOME on that node: ${stuck.join(', ') || `log/${app}.*.log`} (or "bareku logs ${app}")`,
    )
  }
  const unplaced = ps.filter((i) => i.node === null && i.release === version)
  if (unplaced.length > 0) {
    const reasons = [...new Set(unplaced.map((i) => i.reason ?? 'not placed'))].join('; ')
    lines.push(`${unplaced.length} instance(s) could not be placed on any node: ${reasons}`)
  }
  if (lines.length === 0) lines.push('the master never reported the release done')
  return { done: false, why: lines.join('\n') }
}

/**
 * app.json's "healthchecks" (Heroku's manifest file), which the master checks in full; a missing
 * app.json or key is none, an unreadable one is an E_BUILD naming the fix.
 */
export function readHealthchecks(buildDir: string): unknown {
  let text: string
  try {
    text = readFileSync(join(buildDir, 'app.json'), 'utf8')
  } catch {
    return undefined
  }
  let manifest: unknown
  try {
    manifest = JSON.parse(text)
  } catch (err) {
    throw new AppError(
      'E_BUILD',
      `app.json is not valid JSON (${(err as Error).message}): fix it or remove it, then push again`,
    )
  }
  return (manifest as { healthchecks?: unknown } | null)?.healthchecks
}

/** A release whose instance crashed this many times while starting is given up at once. */
const CRASHES_TO_GIVE_UP = 3

/**
 * The instances of `version` that their node restarted CRASHES_TO_GIVE_UP times (the worker's
 * count, from the master's ps): waiting out the deploy timeout would only repeat the crash.
 */
async function crashLoops(call: Call, app: string, version: number): Promise<PsEntry[]> {
  const ps = (await call('ps', { app })) as PsEntry[]
  return ps.filter(
    (i) => i.release === version && i.state !== 'ready' && (i.restarts ?? 0) >= CRASHES_TO_GIVE_UP,
  )
}

/** The last lines of an instance's log when it is on this machine (a one-node install). */
function tail(home: string | undefined, name: string): string {
  if (home === undefined) return ''
  try {
    const text = readFileSync(join(home, 'log', `${name}.log`), 'utf8')
    const lines = text.trimEnd().split('\n').slice(-5)
    return `; its last lines:\n${lines.map((l) => `  ${l}`).join('\n')}`
  } catch {
    return ''
  }
}

interface ReleaseEntry {
  version: number
  slug: { sha256: string }
  current?: boolean
}

/**
 * Removes slugs (`<sha256>.sqfs` in `slugDir`) that no app's last `keep` releases (nor its
 * current one) use. A slug younger than `graceMs` stays: another push may be about to release
 * it. Returns the removed file names.
 */
export async function pruneSlugs(
  call: Call,
  slugDir: string,
  keep: number,
  graceMs: number,
): Promise<string[]> {
  const apps = (await call('apps')) as { name: string }[]
  const used = new Set<string>()
  for (const { name } of apps) {
    const releases = (await call('releases', { app: name })) as ReleaseEntry[]
    const newest = [...releases].sort((a, b) => b.version - a.version)
    for (const r of newest.slice(0, keep)) used.add(r.slug.sha256)
    for (const r of newest.filter((r) => r.current === true)) used.add(r.slug.sha256)
  }
  const removed: string[] = []
  const now = Date.now()
  for (const name of await readdir(slugDir).catch(() => [] as string[])) {
    const m = /^([0-9a-f]{64})\.sqfs$/.exec(name)
    if (m === null || used.has(m[1]!)) continue
    const st = await stat(join(slugDir, name)).catch(() => undefined)
    if (st === undefined || now - st.mtimeMs < graceMs) continue
    await unlink(join(slugDir, name)).catch(() => undefined)
    removed.push(name)
  }
  return removed
}

/** What one push needs beyond the settings. */
export interface PushContext {
  app: string
  out: Output
  /** The bare repo and git's environment for this push (quarantine included). */
  git: GitOptions
  call: Call
}

interface AppInfo {
  release: number | null
  url?: string
  formation?: Record<string, number>
}

/** Builds and deploys `update` (a push to the deploy branch). Throws AppError to reject. */
export async function deploy(s: HookSettings, ctx: PushContext, update: RefUpdate): Promise<void> {
  const { app, out, call } = ctx
  const commit = update.new
  const unlock = await acquireBuildLock(s.home, app)
  const scratch = join(s.home, 'scratch', `${app}-${randomBytes(6).toString('hex')}`)
  const cleanup = (): void => {
    rmSync(scratch, { recursive: true, force: true, maxRetries: 2 })
    unlock()
  }
  cleanups.add(cleanup)
  try {
    const branch = update.ref.replace(/^refs\/heads\//, '')
    out.step(`Building ${app} from ${commit.slice(0, 7)} (${branch})`)
    const config = (await call('config', { app })) as Record<string, string>
    const before = (await call('apps:info', { name: app })) as AppInfo
    await checkout(commit, scratch, { ...ctx.git, maxFileBytes: s.maxFileBytes, out })
    await checkSymlinks(scratch)
    await pruneSlugignore(scratch)
    const cacheDir = join(s.home, 'cache', app)
    await mkdir(cacheDir, { recursive: true })
    const built = await runBuildpacks({
      buildDir: scratch,
      cacheDir,
      env: config,
      out: out.stream,
      timeoutMs: s.buildTimeoutMs,
    })
    const { release: releaseCommand, ...processTypes } = built.processTypes
    if (Object.keys(processTypes).length === 0 && built.static === undefined) {
      throw new AppError(
        'E_BUILD',
        'the app declares no process type besides "release": add one to the Procfile (e.g. "web: python3 app.py") and push again',
      )
    }

    out.step('Compressing slug')
    await mkdir(s.slugDir, { recursive: true })
    const slug = await packSlug(scratch, s.slugDir)
    // A slug reused from an earlier build keeps its old mtime: freshen it, so a concurrent
    // push's prune does not take it before our release names it.
    const now = new Date()
    await utimes(slug.path, now, now)
    out.info(`Done: ${mb(slug.size)} (${slug.sha256.slice(0, 12)})`)

    // Legacy config_vars are defaults (runBuildpacks also writes them to .profile.d, where
    // the app's own config wins): the same here.
    const env = { ...built.configVars, ...config }
    if (releaseCommand !== undefined) {
      out.step(`Running release command: ${releaseCommand}`)
      await runReleaseCommand(releaseCommand, {
        dir: scratch,
        env,
        out,
        timeoutMs: s.buildTimeoutMs,
      })
    }

    const subject = (await git(['log', '-1', '--format=%s', commit], ctx.git)).stdout.trim()
    const healthchecks = readHealthchecks(scratch)
    const release = (await call('releases:add', {
      app,
      slug: { sha256: slug.sha256, size: slug.size },
      processTypes,
      ...(healthchecks === undefined ? {} : { healthchecks }),
      ...(built.static === undefined ? {} : { static: built.static }),
      commit,
      by: s.user.slice(0, 200),
      description: `Deploy ${commit.slice(0, 7)}${subject ? `: ${subject}` : ''}`.slice(0, 500),
    })) as { version: number; url?: string; formation?: Record<string, number> }

    out.step(`Deploying v${release.version}`)
    const appWord = new RegExp(`(^|[^a-z0-9-])${app}([^a-z0-9-]|$)`)
    const result = await waitForDeploy(call, app, release.version, {
      out,
      timeoutMs: s.deployTimeoutMs,
      pollMs: s.pollMs,
      appWord,
      home: s.home,
    })
    if (!result.done) {
      for (const line of result.why.split('\n')) out.warn(line)
      let undo = `v${release.version} stays current (there was no earlier release to go back to)`
      if (before.release !== null) {
        try {
          const back = (await call('rollback', { app, version: before.release })) as {
            version: number
          }
          undo = `rolled back to v${before.release} (as v${back.version})`
        } catch (err) {
          undo = `rolling back to v${before.release} failed too (${(err as Error).message}): run "bareku rollback ${app} v${before.release}"`
        }
      }
      throw Object.assign(
        new AppError(
          'E_BUILD',
          `v${release.version} did not get ready on every node within ${s.deployTimeoutMs / 1000} s (see above); ${undo}. Fix the app (check that it answers on $PORT) and push again, or raise BAREKU_DEPLOY_TIMEOUT_MS`,
        ),
        { released: true },
      )
    }

    const after = (await call('apps:info', { name: app }).catch(() => before)) as AppInfo
    const formation = after.formation ?? release.formation ?? {}
    out.stream.write('=====> Application deployed\n')
    out.info(`Application version: ${release.version}`)
    out.info(
      `Scale: ${
        Object.entries(formation)
          .sort(([a], [b]) => (a < b ? -1 : 1))
          .map(([type, n]) => `${type}=${n}`)
          .join(', ') || 'none'
      }`,
    )
    out.info(`URL: ${after.url ?? release.url ?? `http://${app}.localhost:8080/`}`)

    try {
      const removed = await pruneSlugs(
        call,
        s.slugDir,
        s.keepReleases,
        s.buildTimeoutMs + s.deployTimeoutMs,
      )
      if (removed.length > 0) out.info(`Pruned ${removed.length} old slug(s)`)
    } catch (err) {
      out.info(`Note: old slugs were not pruned (${(err as Error).message})`)
    }
  } finally {
    cleanups.delete(cleanup)
    await rm(scratch, { recursive: true, force: true }).catch(() => undefined)
    unlock()
  }
}

/** What a signal must undo before the hook exits: the scratch dir and the lock of a build. */
const cleanups = new Set<() => void>()

/** Handles one push's ref updates: deploys the deploy branch, notes the others. */
export async function receive(
  s: HookSettings,
  ctx: PushContext,
  updates: RefUpdate[],
): Promise<void> {
  const { out } = ctx
  if (updates.length === 0) {
    out.step('Nothing to deploy: this push updates no branch')
    return
  }
  const builds: RefUpdate[] = []
  for (const u of updates) {
    const name = u.ref.replace(/^refs\/(heads|tags)\//, '')
    if (isZero(u.new)) {
      out.step(
        `Deleting ${name}: nothing to build${isDeployRef(u.ref) ? '; the running release keeps serving' : ''}`,
      )
    } else if (!isDeployRef(u.ref)) {
      out.step(
        `Accepted ${name} without a build: only master or main deploys (git push bareku ${name}:master to deploy it)`,
      )
    } else {
      builds.push(u)
    }
  }
  if (builds.length > 1) {
    throw new AppError(
      'E_BUILD',
      'this push updates both master and main: push one deploy branch at a time (git push bareku master)',
    )
  }
  if (builds[0] !== undefined) await deploy(s, ctx, builds[0])
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = []
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks).toString('utf8')
}

/**
 * `bareku hook pre-receive`: run by git in the bare repo. Exits 1 (rejecting the push) with the
 * cause and the fix on any failure.
 */
export async function main(args: string[]): Promise<void> {
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(USAGE)
    return
  }
  const out = new Output(process.stderr)
  // A pusher who hangs up must not crash the build half-way: its output just goes nowhere.
  process.stderr.on('error', () => undefined)
  process.stdout.on('error', () => undefined)
  const [which, ...extra] = args
  if (which !== 'pre-receive' || extra.length > 0) {
    process.stderr.write(`bareku hook: expected "pre-receive", got "${args.join(' ')}"\n\n${USAGE}`)
    process.exitCode = 2
    return
  }
  // git's variables (GIT_DIR, the quarantine's object dirs) are for our git commands only:
  // a buildpack running git or npm must not see this repo.
  const gitEnv: NodeJS.ProcessEnv = { ...process.env }
  for (const key of Object.keys(process.env)) {
    if (key.startsWith('GIT_')) delete process.env[key]
  }
  const repoDir = process.cwd()
  const app = basename(repoDir).replace(/\.git$/, '')
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    process.once(signal, () => {
      for (const undo of cleanups) undo()
      out.warn(`stopped by ${signal}; the push is rejected`)
      process.exit(1)
    })
  }
  try {
    if (!APP_NAME.test(app)) {
      throw new AppError(
        'E_APP',
        `this hook runs in repos/APP.git, but "${repoDir}" is not an app's repo: recreate the app with "bareku apps:create NAME"`,
      )
    }
    const s = loadHookSettings(process.env)
    const call: Call = (cmd, callArgs = {}) =>
      callMaster(s.master, cmd, callArgs, { timeoutMs: 10_000 })
    await receive(
      s,
      { app, out, git: { cwd: repoDir, env: gitEnv }, call },
      parseRefUpdates(await readStdin()),
    )
  } catch (err) {
    if (!isAppError(err)) throw err
    process.stderr.write('\n')
    for (const line of err.message.split('\n')) out.warn(line)
    const released = (err as { released?: boolean }).released === true
    out.warn(released ? 'Push rejected.' : 'Push rejected: the running release is unchanged.')
    process.exitCode = 1
  }
}
