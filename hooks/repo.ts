/**
 * @module An app's git repository: $BAREKU_HOME/repos/NAME.git, bare, default branch master, with
 * hooks/pre-receive (a copy of this folder's pre-receive with the home, the master's control
 * endpoint and the absolute path of this checkout's bin/bareku written in) handing every push to
 * `bareku hook pre-receive` (hooks/receive.ts).
 */
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { chmod, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { isAbsolute, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { AppError } from '../lib/errors.js'

const run = promisify(execFile)

/** The master's rule for app names (master/state.ts): also a safe file and repo name. */
export const APP_NAME = /^[a-z][a-z0-9-]{0,29}$/

/** This checkout's `bareku` command, the default that hooks and forced ssh commands run. */
export const BAREKU_BIN = fileURLToPath(new URL('../bin/bareku', import.meta.url))

// From the repository root's level, so that it holds in hooks/ and in the bundle in dist/.
const TEMPLATE = fileURLToPath(new URL('../hooks/pre-receive', import.meta.url))

/** Throws E_APP unless `name` is a valid app name (no path tricks: no `/`, `..`, dots, caps). */
export function checkAppName(name: string): string {
  if (!APP_NAME.test(name)) {
    throw new AppError(
      'E_APP',
      `app name must be 1-30 characters of a-z, 0-9 and "-", starting with a letter, got ${JSON.stringify(name)} (e.g. "my-app")`,
    )
  }
  return name
}

/** Where app `name`'s bare repo lives under `home`. */
export function repoPath(home: string, name: string): string {
  return join(home, 'repos', `${checkAppName(name)}.git`)
}

/** Quotes `s` for a POSIX shell. */
export function shellQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`
}

export interface RepoOptions {
  /** The `bareku` command the hook runs (default: this checkout's bin/bareku). */
  bin?: string
  /** The master's control endpoint the hook calls (default: tcp://127.0.0.1:7070). */
  master?: string
}

/** The pre-receive hook's text for this home, master and command. */
export async function renderHook(home: string, opts: RepoOptions = {}): Promise<string> {
  const template = await readFile(TEMPLATE, 'utf8')
  const master = opts.master ?? 'tcp://127.0.0.1:7070'
  if (!/^[A-Za-z0-9+.:/_*[\]-]+$/.test(master)) {
    throw new AppError(
      'E_CONFIG',
      `the master's control endpoint must look like tcp://HOST:PORT, got ${JSON.stringify(opts.master)}`,
    )
  }
  const values: Record<string, string> = {
    '@BAREKU_HOME@': shellQuote(home),
    '@BAREKU_MASTER@': shellQuote(master),
    '@BAREKU_BIN@': shellQuote(opts.bin ?? BAREKU_BIN),
  }
  return template.replace(/@BAREKU_(HOME|MASTER|BIN)@/g, (m) => values[m]!)
}

/**
 * Makes $home/repos/NAME.git (bare, default branch master) and (re)installs its pre-receive hook.
 * Idempotent: an existing repo keeps its history and gets the current hook. Returns the path.
 */
export async function createRepo(home: string, name: string, opts: RepoOptions = {}) {
  if (!isAbsolute(home)) {
    throw new AppError('E_CONFIG', `BAREKU_HOME must be an absolute path, got "${home}"`)
  }
  const path = repoPath(home, name)
  const hookText = await renderHook(home, opts)
  await mkdir(join(home, 'repos'), { recursive: true })
  if (!existsSync(join(path, 'HEAD'))) {
    try {
      await run('git', ['init', '--quiet', '--bare', '--initial-branch=master', path])
    } catch (err) {
      throw new AppError(
        'E_APP',
        `cannot create the git repo ${path}: ${(err as { stderr?: string }).stderr || (err as Error).message} (is git installed, and ${home} writable?)`,
      )
    }
  }
  const hook = join(path, 'hooks', 'pre-receive')
  const tmp = `${hook}.${process.pid}.tmp`
  await mkdir(join(path, 'hooks'), { recursive: true })
  await writeFile(tmp, hookText, { mode: 0o755 })
  await chmod(tmp, 0o755)
  await rename(tmp, hook)
  return path
}

/** Removes app `name`'s repo (no error if it is already gone). */
export async function destroyRepo(home: string, name: string): Promise<void> {
  await rm(repoPath(home, name), { recursive: true, force: true })
}
