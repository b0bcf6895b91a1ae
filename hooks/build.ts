/**
 * @module The build step of a push: runs Heroku classic buildpacks over an app's checkout and
 * says what processes the result runs. It produces the built directory; packing the slug and
 * releasing it are the caller's job.
 *
 *   runBuildpacks(opts)
 *     1. prune .slugignore patterns from BUILD_DIR (before any buildpack, as Heroku does)
 *     2. write ENV_DIR: a temp dir with one file per config var, the value byte for byte
 *     3. choose buildpacks: opts.buildpacks, else the app's .buildpacks (one a line), else the
 *        BUILDPACK_URL config var, else the first shipped buildpack whose bin/detect matches, in
 *        DETECTION_ORDER. A buildpack is a shipped name (buildpacks/NAME, "heroku/NAME" too) or
 *        an absolute path; there is no network to fetch a git URL from.
 *     4. per buildpack, on a private copy (it may write `export` into its own dir):
 *          detect BUILD_DIR                       (display name; an explicit pack runs even when
 *                                                  it does not match, as herokuish does)
 *          compile BUILD_DIR CACHE_DIR ENV_DIR    (output streamed to opts.out as it comes)
 *          source its `export`, if written        (the environment of the following packs)
 *          release BUILD_DIR CACHE_DIR            (YAML on stdout)
 *     5. process types: the last pack's default_process_types, overridden type by type by the
 *        Procfile. config_vars (legacy) of all packs, the later pack winning, also go to
 *        .profile.d/00_config_vars.sh, where the app's own config vars win over them.
 *
 * Every child runs in its own process group in BUILD_DIR. One deadline (opts.timeoutMs) covers
 * the whole build; a pack still running then has its group killed. Output lines are shown as
 * the buildpack prints them when they start with "--" or whitespace, else indented 7 spaces (the
 * platform's indent of Heroku's output style). Any failure is an AppError E_BUILD whose message
 * names the cause and the fix; the caller shows it to the pusher.
 *
 * Release YAML: a strict reader for the subset buildpacks print (see parseReleaseYaml).
 * .slugignore: gitignore-like patterns, a documented subset (see pruneSlugignore).
 */
import { spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { constants } from 'node:fs'
import {
  access,
  cp,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rm,
  stat,
  writeFile,
} from 'node:fs/promises'
import { homedir, tmpdir } from 'node:os'
import { basename, isAbsolute, join } from 'node:path'
import type { Writable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import { AppError } from '../lib/errors.js'
import { parseProcfile, PROCESS_TYPE, type ProcessTypes } from '../lib/config/procfile.js'

/** Where the shipped buildpacks live (each `NAME/bin/{detect,compile,release}`, plus `lib/`). */
export const SHIPPED_DIR = fileURLToPath(new URL('../buildpacks/', import.meta.url))

/** The shipped buildpacks, in the order detection tries them; the first match wins. */
export const DETECTION_ORDER = ['handler', 'nodejs', 'python', 'static', 'procfile'] as const

/** Default build timeout: Heroku's historical 15 minutes. */
export const DEFAULT_BUILD_TIMEOUT_MS = 15 * 60_000

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
const CONFIG_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/
const MAX_CAPTURE = 1 << 20
// After a child exits, how long its stdout/stderr may stay open (held by a grandchild that left
// its process group) before they are cut: a stray daemon must not hang the build.
const PIPE_GRACE_MS = 2000

/** What runBuildpacks needs. */
export interface BuildOptions {
  /** The app's fresh checkout; the buildpacks transform it in place into the slug's content. */
  buildDir: string
  /** Kept between builds of this app; created when missing. */
  cacheDir: string
  /** The app's config vars, written to ENV_DIR (one file each). */
  env: Record<string, string>
  /** Buildpacks to run in order: shipped names or absolute paths to a buildpack directory. */
  buildpacks?: string[]
  /** The pusher's stream: all build output goes here, line by line, as it comes. */
  out: Writable
  /** The whole build's time limit; default DEFAULT_BUILD_TIMEOUT_MS. */
  timeoutMs?: number
  /**
   * The environment buildpacks run in (the hook passes its own); default a minimal one: PATH
   * (/usr/local/bin:/usr/bin:/bin...), HOME, LANG. STACK, REQUEST_ID, CURL_CONNECT_TIMEOUT and
   * CURL_TIMEOUT are added when missing.
   */
  baseEnv?: Record<string, string | undefined>
}

/** One buildpack that ran. */
export interface BuildpackRef {
  /** A shipped buildpack's name, or the directory name of one given by path. */
  name: string
  /** Its directory, as chosen (the build ran on a private copy). */
  path: string
  /** What its bin/detect printed (e.g. "Node.js"), or its name when detect printed nothing. */
  detected: string
}

/** What a build produced. */
export interface BuildResult {
  buildpacks: BuildpackRef[]
  /** The Procfile's types over the last buildpack's default_process_types. */
  processTypes: ProcessTypes
  /** Legacy config_vars from the buildpacks' release output. */
  configVars: Record<string, string>
  /** Add-on plans the release output asks for (Heroku applies them on the first deploy). */
  addons: string[]
  /** A document root for the frontend to serve directly (the static buildpack's `static` key). */
  static?: string
}

/** The keys of a release's YAML that Bareku uses. */
export interface ReleaseInfo {
  defaultProcessTypes: ProcessTypes
  configVars: Record<string, string>
  addons: string[]
  static?: string
}

interface Pack {
  name: string
  path: string
  shipped: boolean
}

/** Runs the buildpacks over `opts.buildDir`; see the module comment. Throws AppError E_BUILD. */
export async function runBuildpacks(opts: BuildOptions): Promise<BuildResult> {
  const deadline = Date.now() + (opts.timeoutMs ?? DEFAULT_BUILD_TIMEOUT_MS)
  const say = (line: string): void => void opts.out.write(`${line}\n`)
  await requireDir(opts.buildDir, 'the build directory (the app checkout)')
  await mkdir(opts.cacheDir, { recursive: true })

  const pruned = await pruneSlugignore(opts.buildDir)
  if (pruned.length > 0) {
    say(`-----> Removed ${pruned.length} path(s) matched by .slugignore`)
  }
  // fail before any compile when the Procfile cannot be read (it is read again afterwards)
  await readProcfile(opts.buildDir)

  const scratch = await mkdtemp(join(tmpdir(), 'bareku-build-'))
  try {
    const envDir = join(scratch, 'env')
    await writeEnvDir(envDir, opts.env)
    let env = childEnv(opts.baseEnv)
    const ctx: StepContext = { env, cwd: opts.buildDir, deadline, timeoutMs: opts.timeoutMs }

    const chosen = await choosePacks(opts, ctx)
    if (chosen.source !== 'detection') {
      say(
        `-----> Using buildpack${chosen.packs.length > 1 ? 's' : ''} from ${chosen.source}: ${chosen.packs.map((p) => p.name).join(', ')}`,
      )
    }
    const ran: BuildpackRef[] = []
    const releases: ReleaseInfo[] = []
    for (const [i, pack] of chosen.packs.entries()) {
      const copy = await copyPack(pack, join(scratch, 'packs', String(i)))
      ctx.env = env
      let detected = chosen.detected.get(pack)
      if (detected === undefined) {
        const r = await runStep(join(copy, 'bin/detect'), [opts.buildDir], ctx, pack, 'detect', {
          capture: true,
        })
        detected = r.code === 0 ? firstLine(r.stdout) || pack.name : pack.name
        if (r.code !== 0) {
          say(
            ` !     ${pack.name}: bin/detect does not match this app; running it anyway, as chosen`,
          )
        }
      }
      say(`-----> ${detected} app detected`)
      const compiled = await runStep(
        join(copy, 'bin/compile'),
        [opts.buildDir, opts.cacheDir, envDir],
        ctx,
        pack,
        'compile',
        { out: opts.out },
      )
      if (compiled.code !== 0) {
        throw new AppError(
          'E_BUILD',
          `buildpack "${pack.name}" failed: bin/compile ${exitText(compiled)}. Its output above says why: fix the app and push again, or choose other buildpacks (a .buildpacks file, or the BUILDPACK_URL config var)`,
        )
      }
      env = await sourceExport(copy, ctx, pack, opts.out)
      ctx.env = env
      releases.push(await runRelease(copy, opts, ctx, pack))
      ran.push({ name: pack.name, path: pack.path, detected })
    }

    const result = mergeReleases(ran, releases)
    const procfile = await readProcfile(opts.buildDir)
    say('-----> Discovering process types')
    say(`       Procfile declares types     -> ${typeList(procfile ?? {})}`)
    say(`       Default types for buildpack -> ${typeList(result.processTypes)}`)
    result.processTypes = { ...result.processTypes, ...procfile }
    // A static site needs no process: the frontend serves its document root itself.
    if (Object.keys(result.processTypes).length === 0 && result.static === undefined) {
      throw new AppError(
        'E_BUILD',
        `no process types: ${procfile ? 'the Procfile declares none' : 'the app has no Procfile'} and buildpack "${ran.at(-1)?.name ?? ''}" proposes no default. Add a Procfile saying how to run the app, e.g. "web: ./bin/server" (a web process listens on $PORT) or "handler: python3 handler.py"`,
      )
    }
    await writeConfigVarsProfile(opts.buildDir, result.configVars)
    return result
  } finally {
    await rm(scratch, { recursive: true, force: true })
  }
}

function typeList(types: ProcessTypes): string {
  const names = Object.keys(types)
  return names.length > 0 ? names.join(', ') : '(none)'
}

function firstLine(text: string): string {
  return (text.split('\n').find((l) => l.trim() !== '') ?? '').trim()
}

async function requireDir(dir: string, what: string): Promise<void> {
  const s = await stat(dir).catch(() => undefined)
  if (!s?.isDirectory()) {
    throw new AppError('E_BUILD', `${what} ${dir} is not a directory: check the path`)
  }
}

async function readProcfile(buildDir: string): Promise<ProcessTypes | undefined> {
  let text: string
  try {
    text = await readFile(join(buildDir, 'Procfile'), 'utf8')
  } catch {
    return undefined
  }
  return parseProcfile(text)
}

function childEnv(base: Record<string, string | undefined> | undefined): Record<string, string> {
  const env: Record<string, string> = { PATH: DEFAULT_PATH, HOME: homedir(), LANG: 'C.UTF-8' }
  if (base) {
    for (const [key, value] of Object.entries(base)) if (value !== undefined) env[key] = value
  }
  env.STACK ??= 'bareku'
  env.REQUEST_ID ??= `build-${randomUUID()}`
  env.CURL_CONNECT_TIMEOUT ??= '30'
  env.CURL_TIMEOUT ??= '180'
  return env
}

async function writeEnvDir(dir: string, vars: Record<string, string>): Promise<void> {
  await mkdir(dir, { mode: 0o700 })
  for (const [key, value] of Object.entries(vars)) {
    if (!CONFIG_KEY.test(key)) {
      throw new AppError(
        'E_BUILD',
        `config var name ${JSON.stringify(key)} cannot be passed to buildpacks: a name is letters, digits and "_", not starting with a digit; rename it (config:unset, config:set)`,
      )
    }
    await writeFile(join(dir, key), value, { mode: 0o600 })
  }
}

// ---------------------------------------------------------------------------------------------
// Choosing buildpacks

interface Chosen {
  packs: Pack[]
  /** "the buildpack list", ".buildpacks", "BUILDPACK_URL" or "detection". */
  source: string
  /** What detect printed, for packs found by detection. */
  detected: Map<Pack, string>
}

async function choosePacks(opts: BuildOptions, ctx: StepContext): Promise<Chosen> {
  if (opts.buildpacks && opts.buildpacks.length > 0) {
    const packs = await Promise.all(
      opts.buildpacks.map((e) => resolvePack(e, 'the buildpack list')),
    )
    return { packs, source: 'the buildpack list', detected: new Map() }
  }
  const listed = await readFile(join(opts.buildDir, '.buildpacks'), 'utf8').catch(() => undefined)
  if (listed !== undefined) {
    const entries = listed
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '' && !l.startsWith('#'))
    if (entries.length === 0) {
      throw new AppError(
        'E_BUILD',
        '.buildpacks lists no buildpack: write one per line (a shipped name such as "nodejs", or an absolute path), or delete the file to let detection choose',
      )
    }
    const packs = await Promise.all(entries.map((e) => resolvePack(e, '.buildpacks')))
    return { packs, source: '.buildpacks', detected: new Map() }
  }
  const url = opts.env.BUILDPACK_URL?.trim()
  if (url) {
    return {
      packs: [await resolvePack(url, 'the BUILDPACK_URL config var')],
      source: 'BUILDPACK_URL',
      detected: new Map(),
    }
  }
  const tried: string[] = []
  for (const name of DETECTION_ORDER) {
    const pack = { name, path: join(SHIPPED_DIR, name), shipped: true }
    const r = await runStep(join(pack.path, 'bin/detect'), [opts.buildDir], ctx, pack, 'detect', {
      capture: true,
    })
    if (r.code === 0) {
      return {
        packs: [pack],
        source: 'detection',
        detected: new Map([[pack, firstLine(r.stdout) || name]]),
      }
    }
    tried.push(`  ${name}: ${firstLine(r.stderr) || 'no match'}`)
  }
  throw new AppError(
    'E_BUILD',
    `no buildpack detected for this app. Tried, in order:\n${tried.join('\n')}\nAdd what one of them looks for (package.json for Node.js; requirements.txt or app.py for Python; public/ or index.html for a static site; a Procfile naming your processes for anything else), or choose buildpacks yourself: one per line in a .buildpacks file, or the BUILDPACK_URL config var (shipped: ${DETECTION_ORDER.join(', ')}, or an absolute path to a buildpack directory)`,
  )
}

async function resolvePack(entry: string, where: string): Promise<Pack> {
  let spec = entry.trim()
  if (spec.startsWith('file://')) spec = spec.slice('file://'.length)
  if (spec.startsWith('heroku/')) spec = spec.slice('heroku/'.length)
  const shipped = (DETECTION_ORDER as readonly string[]).includes(spec)
  if (shipped) return checkPack({ name: spec, path: join(SHIPPED_DIR, spec), shipped }, where)
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(spec) || spec.startsWith('git@')) {
    const guess = DETECTION_ORDER.find((n) => spec.toLowerCase().includes(n))
    throw new AppError(
      'E_BUILD',
      `${where} names ${JSON.stringify(entry)}, a URL: this build host cannot fetch buildpacks. Use a shipped one${guess ? ` (did you mean "${guess}"?)` : ''} (${DETECTION_ORDER.join(', ')}), or put the buildpack on the build host and give its absolute path`,
    )
  }
  if (!isAbsolute(spec)) {
    throw new AppError(
      'E_BUILD',
      `${where} names ${JSON.stringify(entry)}, which is neither a shipped buildpack (${DETECTION_ORDER.join(', ')}) nor an absolute path to a buildpack directory: fix the name`,
    )
  }
  return checkPack({ name: basename(spec), path: spec, shipped: false }, where)
}

async function checkPack(pack: Pack, where: string): Promise<Pack> {
  await requireDir(pack.path, `buildpack "${pack.name}" from ${where}:`)
  for (const script of ['detect', 'compile']) {
    const file = join(pack.path, 'bin', script)
    try {
      await access(file, constants.X_OK)
    } catch {
      throw new AppError(
        'E_BUILD',
        `buildpack "${pack.name}" (${pack.path}) has no executable bin/${script}: a Heroku buildpack needs bin/detect and bin/compile; if the file is there, make it executable (chmod +x bin/${script})`,
      )
    }
  }
  return pack
}

/** Copies a buildpack where it may write its `export` file; a shipped one gets `lib/` beside it. */
async function copyPack(pack: Pack, dir: string): Promise<string> {
  const target = join(dir, pack.shipped ? pack.name : 'buildpack')
  await cp(pack.path, target, { recursive: true, verbatimSymlinks: true })
  if (pack.shipped) await cp(join(SHIPPED_DIR, 'lib'), join(dir, 'lib'), { recursive: true })
  return target
}

// ---------------------------------------------------------------------------------------------
// Running buildpack scripts

interface StepContext {
  env: Record<string, string>
  cwd: string
  deadline: number
  timeoutMs: number | undefined
}

interface StepResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

interface StepIo {
  /** Stream stdout and stderr here, formatted (compile). */
  out?: Writable
  /** Capture stdout and stderr (detect). */
  capture?: boolean
  /** Capture stdout and stream stderr here (release, export). */
  stderrTo?: Writable
}

function exitText(r: StepResult): string {
  return r.signal ? `was killed with ${r.signal}` : `exited with code ${r.code}`
}

/** Heroku's platform indent: lines a buildpack did not format itself get 7 spaces. */
export function formatBuildLine(line: string): string {
  return line === '' || line.startsWith('--') || /^\s/.test(line) ? line : `       ${line}`
}

function lineSink(out: Writable): { push(text: string): void; end(): void } {
  let pending = ''
  return {
    push(text) {
      pending += text
      const lines = pending.split('\n')
      pending = lines.pop() ?? ''
      if (lines.length > 0) out.write(lines.map((l) => `${formatBuildLine(l)}\n`).join(''))
    },
    end() {
      if (pending !== '') out.write(`${formatBuildLine(pending)}\n`)
      pending = ''
    },
  }
}

function runStep(
  file: string,
  args: string[],
  ctx: StepContext,
  pack: Pack,
  what: string,
  io: StepIo,
): Promise<StepResult> {
  return new Promise((resolve, reject) => {
    const remaining = ctx.deadline - Date.now()
    if (remaining <= 0) {
      reject(timeoutError(pack, what, ctx))
      return
    }
    const child = spawn(file, args, {
      cwd: ctx.cwd,
      env: ctx.env,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    const captured = { stdout: '', stderr: '' }
    const sinks: { push(text: string): void; end(): void }[] = []
    for (const name of ['stdout', 'stderr'] as const) {
      const stream = child[name]
      stream.setEncoding('utf8')
      const target = io.out ?? (name === 'stderr' ? io.stderrTo : undefined)
      if (target) {
        const sink = lineSink(target)
        sinks.push(sink)
        stream.on('data', (text: string) => sink.push(text))
      } else {
        stream.on('data', (text: string) => {
          if (captured[name].length < MAX_CAPTURE) captured[name] += text
        })
      }
    }
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      killGroup(child.pid)
    }, remaining)
    child.on('error', (err) => {
      clearTimeout(timer)
      reject(
        new AppError(
          'E_BUILD',
          `buildpack "${pack.name}": bin/${what} could not be started (${err.message}): it must be an executable file with a #! line`,
          { cause: err },
        ),
      )
    })
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      // whatever the script left behind in its group (a stray background job) goes with it
      killGroup(child.pid)
      const cut = setTimeout(() => {
        child.stdout.destroy()
        child.stderr.destroy()
      }, PIPE_GRACE_MS)
      const finish = (): void => {
        clearTimeout(cut)
        for (const sink of sinks) sink.end()
        if (timedOut) reject(timeoutError(pack, what, ctx))
        else resolve({ code, signal, ...captured })
      }
      if (child.stdout.closed && child.stderr.closed) finish()
      else child.once('close', finish)
    })
  })
}

function killGroup(pid: number | undefined): void {
  if (pid === undefined) return
  try {
    process.kill(-pid, 'SIGKILL')
  } catch {
    // the group is already gone
  }
}

function timeoutError(pack: Pack, what: string, ctx: StepContext): AppError {
  const limit = ctx.timeoutMs ?? DEFAULT_BUILD_TIMEOUT_MS
  return new AppError(
    'E_BUILD',
    `build timed out: buildpack "${pack.name}" (bin/${what}) was still running when the build's ${limit / 1000} s limit ran out, so it was stopped (its whole process group killed). The output above shows where it hung (waiting for input? a download with no network?): fix that, or raise the build timeout if the build is just slow`,
  )
}

const SHELL_ONLY = new Set(['_', 'SHLVL', 'PWD', 'OLDPWD'])

/** Sources the pack's `export` file (when compile wrote one) and returns the environment after. */
async function sourceExport(
  copy: string,
  ctx: StepContext,
  pack: Pack,
  out: Writable,
): Promise<Record<string, string>> {
  const file = join(copy, 'export')
  if (!(await stat(file).catch(() => undefined))?.isFile()) return ctx.env
  const r = await runStep(
    'bash',
    ['-c', 'source "$1" >&2 && env -0', 'bareku-export', file],
    ctx,
    pack,
    'compile (its export file)',
    { stderrTo: out },
  )
  if (r.code !== 0) {
    throw new AppError(
      'E_BUILD',
      `buildpack "${pack.name}": sourcing the export file its compile wrote ${exitText(r)}; the export file must be bash that sets variables (e.g. export PATH="$BUILD_DIR/bin:$PATH"): fix the buildpack`,
    )
  }
  const env: Record<string, string> = {}
  for (const entry of r.stdout.split('\0')) {
    const eq = entry.indexOf('=')
    if (eq <= 0) continue
    const key = entry.slice(0, eq)
    if (!SHELL_ONLY.has(key)) env[key] = entry.slice(eq + 1)
  }
  for (const key of SHELL_ONLY) {
    const kept = ctx.env[key]
    if (kept !== undefined) env[key] = kept
  }
  return env
}

async function runRelease(
  copy: string,
  opts: BuildOptions,
  ctx: StepContext,
  pack: Pack,
): Promise<ReleaseInfo> {
  const file = join(copy, 'bin/release')
  try {
    await access(file, constants.X_OK)
  } catch {
    return { defaultProcessTypes: {}, configVars: {}, addons: [] } // optional in the contract
  }
  const r = await runStep(file, [opts.buildDir, opts.cacheDir], ctx, pack, 'release', {
    stderrTo: opts.out,
  })
  if (r.code !== 0) {
    throw new AppError(
      'E_BUILD',
      `buildpack "${pack.name}" failed: bin/release ${exitText(r)} (it must print YAML and exit 0): fix the buildpack, or choose another one`,
    )
  }
  return parseReleaseYaml(r.stdout, `buildpack "${pack.name}" bin/release`)
}

function mergeReleases(ran: BuildpackRef[], releases: ReleaseInfo[]): BuildResult {
  const result: BuildResult = {
    buildpacks: ran,
    processTypes: { ...releases.at(-1)?.defaultProcessTypes },
    configVars: {},
    addons: [],
  }
  for (const r of releases) {
    Object.assign(result.configVars, r.configVars)
    for (const addon of r.addons) if (!result.addons.includes(addon)) result.addons.push(addon)
    if (r.static !== undefined) result.static = r.static
  }
  return result
}

/** Herokuish's handling of legacy config_vars, except that the app's own config vars win. */
async function writeConfigVarsProfile(
  buildDir: string,
  vars: Record<string, string>,
): Promise<void> {
  const keys = Object.keys(vars)
  if (keys.length === 0) return
  const quote = (v: string): string => `'${v.replaceAll("'", `'\\''`)}'`
  const lines = keys.map((k) => `[ -n "\${${k}+x}" ] || export ${k}=${quote(vars[k] ?? '')}`)
  await mkdir(join(buildDir, '.profile.d'), { recursive: true })
  await writeFile(
    join(buildDir, '.profile.d/00_config_vars.sh'),
    `# config_vars from the buildpacks' release output; the app's config vars win\n${lines.join('\n')}\n`,
  )
}

// ---------------------------------------------------------------------------------------------
// Release YAML

type Yaml = string | null | Yaml[] | { [key: string]: Yaml }

interface YamlLine {
  no: number
  indent: number
  text: string
}

/**
 * Reads a bin/release's YAML: the subset buildpacks print, strictly.
 *
 *   - an optional "---" first line ("--- {}" is an empty document) and "..." last line
 *   - block mappings ("key: value", "key:" + a more indented block) and block sequences
 *     ("- value"), indented with spaces; "{}" and "[]" for empty ones
 *   - scalars: plain (up to a " #" comment), 'single' ('' is a quote) or "double" (JSON escapes);
 *     ~, null and nothing are null
 *   - anything else (anchors, tags, block scalars |, flow collections with content, a ": "
 *     inside a plain value) is an error saying what to change
 *
 * Keys used: default_process_types (TYPE: COMMAND), config_vars (KEY: VALUE), addons (a list),
 * static (a path); other keys are ignored. `where` names the source in error messages.
 */
export function parseReleaseYaml(text: string, where = 'release output'): ReleaseInfo {
  const fail = (no: number, problem: string): AppError =>
    new AppError(
      'E_BUILD',
      `${where} is not YAML Bareku can read: ${no > 0 ? `line ${no}: ` : ''}${problem}. A release prints e.g. "---\\ndefault_process_types:\\n  web: bin/server"; fix the buildpack's bin/release`,
    )
  const lines: YamlLine[] = []
  let doc: Yaml | undefined
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.replace(/\r$/, '')
    if (line.includes('\t') && /^\s*\t/.test(line)) throw fail(i + 1, 'a tab in the indentation')
    if (line.trim() === '' || line.trim().startsWith('#')) continue
    if (lines.length === 0 && doc === undefined && /^---(\s|$)/.test(line)) {
      const rest = line.slice(3).trim()
      if (rest !== '' && !rest.startsWith('#')) doc = scalarOrEmpty(rest, i + 1, fail)
      continue
    }
    if (line.trim() === '...') break
    if (doc !== undefined) throw fail(i + 1, 'more content after a one-line document')
    lines.push({ no: i + 1, indent: line.length - line.trimStart().length, text: line.trim() })
  }
  if (doc === undefined) {
    if (lines.length === 0) doc = null
    else {
      const [value, next] = parseBlock(lines, 0, lines[0]!.indent, fail)
      if (next < lines.length) throw fail(lines[next]!.no, 'indentation does not match')
      doc = value
    }
  }
  if (doc === null) return { defaultProcessTypes: {}, configVars: {}, addons: [] }
  if (typeof doc !== 'object' || Array.isArray(doc)) {
    throw fail(
      0,
      'the document must be a mapping of keys (default_process_types, config_vars, ...)',
    )
  }
  const info: ReleaseInfo = {
    defaultProcessTypes: stringMap(
      doc.default_process_types,
      'default_process_types',
      PROCESS_TYPE,
      fail,
    ),
    configVars: stringMap(doc.config_vars, 'config_vars', CONFIG_KEY, fail),
    addons: [],
  }
  const addons = doc.addons ?? null
  if (addons !== null) {
    if (!Array.isArray(addons) || addons.some((a) => typeof a !== 'string')) {
      throw fail(0, 'addons must be a list of add-on plans ("- heroku-postgresql:dev")')
    }
    info.addons = addons as string[]
  }
  const root = doc.static ?? null
  if (root !== null) {
    if (typeof root !== 'string') throw fail(0, 'static must be a path (e.g. "static: public")')
    info.static = root
  }
  return info
}

type Fail = (no: number, problem: string) => AppError

function stringMap(
  value: Yaml | undefined,
  key: string,
  name: RegExp,
  fail: Fail,
): Record<string, string> {
  if (value === undefined || value === null) return {}
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw fail(0, `${key} must be a mapping (NAME: VALUE per line)`)
  }
  const map: Record<string, string> = {}
  for (const [k, v] of Object.entries(value)) {
    if (!name.test(k)) throw fail(0, `${key} has a bad name ${JSON.stringify(k)}`)
    if (v !== null && typeof v !== 'string') throw fail(0, `${key}.${k} must be a plain value`)
    if (key === 'default_process_types' && (v === null || v === '')) {
      throw fail(0, `${key}.${k} has an empty command`)
    }
    map[k] = v ?? ''
  }
  return map
}

function parseBlock(lines: YamlLine[], start: number, indent: number, fail: Fail): [Yaml, number] {
  const first = lines[start]!
  if (first.text === '-' || first.text.startsWith('- ')) {
    const items: Yaml[] = []
    let i = start
    while (i < lines.length && lines[i]!.indent === indent && /^-( |$)/.test(lines[i]!.text)) {
      const line = lines[i]!
      const rest = line.text.slice(1).trim()
      if (rest === '') throw fail(line.no, 'nested blocks in a list are not supported')
      items.push(scalarOrEmpty(rest, line.no, fail))
      i++
    }
    return [items, i]
  }
  const map: { [key: string]: Yaml } = {}
  let i = start
  while (i < lines.length && lines[i]!.indent === indent) {
    const line = lines[i]!
    const [key, rest] = splitKey(line, fail)
    if (Object.hasOwn(map, key)) throw fail(line.no, `the key "${key}" appears twice`)
    i++
    if (rest !== '' && !rest.startsWith('#')) {
      map[key] = scalarOrEmpty(rest, line.no, fail)
    } else if (i < lines.length && lines[i]!.indent > indent) {
      const [value, next] = parseBlock(lines, i, lines[i]!.indent, fail)
      map[key] = value
      i = next
    } else {
      map[key] = null
    }
  }
  if (i < lines.length && lines[i]!.indent > indent) {
    throw fail(lines[i]!.no, 'unexpected indentation')
  }
  return [map, i]
}

function splitKey(line: YamlLine, fail: Fail): [string, string] {
  const t = line.text
  if (t.startsWith('"') || t.startsWith("'")) {
    const [key, end] = quoted(t, 0, line.no, fail)
    if (t[end] !== ':') throw fail(line.no, 'expected ":" after a quoted key')
    return [key, t.slice(end + 1).trim()]
  }
  const m = /^([^:#]*?):(\s+|$)/.exec(t)
  if (!m) throw fail(line.no, `expected "key: value", got ${JSON.stringify(t)}`)
  return [m[1]!, t.slice(m[0].length).trim()]
}

function scalarOrEmpty(text: string, no: number, fail: Fail): Yaml {
  if (/^\{\s*\}\s*(#.*)?$/.test(text)) return {}
  if (/^\[\s*\]\s*(#.*)?$/.test(text)) return []
  if (text.startsWith('"') || text.startsWith("'")) {
    const [value, end] = quoted(text, 0, no, fail)
    const after = text.slice(end).trim()
    if (after !== '' && !after.startsWith('#')) throw fail(no, 'text after a quoted value')
    return value
  }
  if (/^[{[|>&*!%@`]/.test(text)) {
    throw fail(
      no,
      `${JSON.stringify(text[0])} starts a YAML feature this reader does not take (flow collections, block scalars, anchors, tags): quote the value`,
    )
  }
  const value = text.replace(/\s+#.*$/, '').trim()
  if (/:(\s|$)/.test(value))
    throw fail(no, `a plain value holds ": " (${JSON.stringify(value)}): quote it`)
  return value === '' || value === '~' || value === 'null' ? null : value
}

function quoted(text: string, from: number, no: number, fail: Fail): [string, number] {
  const q = text[from]
  if (q === "'") {
    let out = ''
    for (let i = from + 1; i < text.length; i++) {
      if (text[i] === "'") {
        if (text[i + 1] === "'") {
          out += "'"
          i++
          continue
        }
        return [out, i + 1]
      }
      out += text[i]
    }
    throw fail(no, 'a single-quoted value is not closed')
  }
  for (let i = from + 1; i < text.length; i++) {
    if (text[i] === '\\') {
      i++
      continue
    }
    if (text[i] === '"') {
      try {
        return [JSON.parse(text.slice(from, i + 1)) as string, i + 1]
      } catch {
        throw fail(
          no,
          'a double-quoted value has an escape this reader does not know (use JSON escapes)',
        )
      }
    }
  }
  throw fail(no, 'a double-quoted value is not closed')
}

// ---------------------------------------------------------------------------------------------
// .slugignore

interface IgnorePattern {
  re: RegExp
  dirOnly: boolean
}

/**
 * Removes what the app's `.slugignore` lists from `buildDir`, before any buildpack runs, and
 * returns the removed paths (relative, sorted). The patterns are a subset of .gitignore's:
 *
 *   - one pattern a line; blank lines and lines starting with "#" are skipped; trailing spaces
 *     are dropped
 *   - a pattern without "/" (except a trailing one) matches a file or folder name at any depth
 *     ("*.psd", "tmp"); with a "/" it is a path from the app's root ("/docs", "spec/fixtures")
 *   - a trailing "/" matches folders only ("log/")
 *   - "*" matches within a name, "?" one character, "[abc]" / "[!a-z]" a set, "**" any number
 *     of folders ("**\/*.bak", "assets/**"), and "\" makes the next character literal
 *   - a matched folder goes with all it holds; symlinks are removed, never followed
 *   - "!" (re-include) is not supported: it is an E_BUILD error rather than a silent surprise
 */
export async function pruneSlugignore(buildDir: string): Promise<string[]> {
  let text: string
  try {
    text = await readFile(join(buildDir, '.slugignore'), 'utf8')
  } catch {
    return []
  }
  const patterns = parseSlugignore(text)
  const removed: string[] = []
  const walk = async (rel: string): Promise<void> => {
    const entries = await readdir(join(buildDir, rel), { withFileTypes: true })
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    for (const entry of entries) {
      const path = rel === '' ? entry.name : `${rel}/${entry.name}`
      const isDir = entry.isDirectory()
      if (patterns.some((p) => p.re.test(path) && (!p.dirOnly || isDir))) {
        await rm(join(buildDir, path), { recursive: true, force: true })
        removed.push(path)
      } else if (isDir) {
        await walk(path)
      }
    }
  }
  await walk('')
  return removed.sort()
}

function parseSlugignore(text: string): IgnorePattern[] {
  const patterns: IgnorePattern[] = []
  for (const [i, raw] of text.split('\n').entries()) {
    let p = raw.replace(/\r$/, '').replace(/(?<!\\)\s+$/, '')
    if (p === '' || p.startsWith('#')) continue
    if (p.startsWith('!')) {
      throw new AppError(
        'E_BUILD',
        `.slugignore line ${i + 1}: "${p}" re-includes with "!", which is not supported: list only what to remove (patterns like "*.psd", "/docs", "log/")`,
      )
    }
    const dirOnly = p.endsWith('/')
    p = p.replace(/\/+$/, '')
    const anchored = p.includes('/')
    p = p.replace(/^\/+/, '')
    if (p === '') continue
    const body = globToRegex(p)
    patterns.push({ re: new RegExp(anchored ? `^${body}$` : `^(?:.*/)?${body}$`), dirOnly })
  }
  return patterns
}

function globToRegex(glob: string): string {
  let re = ''
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!
    if (c === '*' && glob[i + 1] === '*') {
      if (glob[i + 2] === '/') {
        re += '(?:.*/)?'
        i += 2
      } else {
        re += '.*'
        i += 1
      }
    } else if (c === '*') {
      re += '[^/]*'
    } else if (c === '?') {
      re += '[^/]'
    } else if (c === '[') {
      const end = glob.indexOf(']', i + 2)
      if (end === -1) {
        re += '\\['
        continue
      }
      let set = glob.slice(i + 1, end).replaceAll('\\', '\\\\')
      if (set.startsWith('!')) set = `^${set.slice(1)}`
      re += `[${set}]`
      i = end
    } else if (c === '\\' && i + 1 < glob.length) {
      re += escapeRegex(glob[i + 1]!)
      i += 1
    } else {
      re += escapeRegex(c)
    }
  }
  return re
}

function escapeRegex(c: string): string {
  return /[.*+?^${}()|[\]\\/]/.test(c) ? `\\${c}` : c
}
