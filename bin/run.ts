/**
 * @module `bareku run APP -- COMMAND ...`: a one-off process on this machine with the app's
 * current release, as Heroku's `run`: the release's slug (unpacked from BAREKU_HOME/slugs if
 * need be) as cwd and HOME, the release's config vars plus DYNO=run.N and BAREKU_APP, launched
 * like every dyno (lib/dyno.ts: .profile.d first, then exec COMMAND), as the worker's user
 * (nobody) when root. Its stdin, stdout and stderr are this terminal's; `bareku run` exits with
 * its exit code (128 + the signal's number when a signal ended it).
 */
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { constants } from 'node:os'
import { join } from 'node:path'
import { callMaster } from '../lib/cluster/control-client.js'
import { DEFAULT_PATH, LAUNCH_SCRIPT, lookupUser, type RunAs } from '../lib/dyno.js'
import { AppError } from '../lib/errors.js'
import { unpackSlug } from '../lib/slug/unpack.js'
import type { Verb, VerbContext } from './verbs.js'

const USAGE = 'run APP -- COMMAND [ARGS ...]'

interface Release {
  version: number
  current: boolean
  slug: { sha256: string; size: number }
  config: Record<string, string>
}

/** The app's current release, as `releases` answers it. */
async function currentRelease(ctx: VerbContext, app: string): Promise<Release> {
  const releases = (await callMaster(ctx.master, 'releases', { app })) as Release[]
  const current = releases.find((r) => r.current)
  if (!current) {
    throw new AppError(
      'E_APP',
      `app "${app}" has no release yet, so there is nothing to run: push it first (git push bareku main)`,
    )
  }
  return current
}

/** The unpacked slug's directory, unpacking the slug file on this machine when needed. */
async function slugDir(ctx: VerbContext, app: string, release: Release): Promise<string> {
  const { sha256 } = release.slug
  const slugs = process.env.BAREKU_SLUG_DIR || join(ctx.home, 'slugs')
  const dest = join(ctx.home, 'slugs', 'unpacked', sha256)
  if (existsSync(dest)) return dest
  const file = join(slugs, `${sha256}.sqfs`)
  if (!existsSync(file)) {
    throw new AppError(
      'E_SLUG',
      `the slug of ${app} v${release.version} (${sha256}) is not on this machine: neither ${dest} nor ${file} exists; run "bareku run" on the master's machine or on a node that runs ${app}, with that machine's BAREKU_HOME (now ${ctx.home})`,
    )
  }
  process.stderr.write(`-----> Unpacking the slug of ${app} v${release.version}\n`)
  await unpackSlug(file, dest)
  return dest
}

/** Runs the command and resolves with its exit status; signals meant for it are passed on. */
function launch(command: string, cwd: string, env: Record<string, string>, runAs?: RunAs) {
  return new Promise<number>((resolve, reject) => {
    const child = spawn('/bin/sh', ['-c', LAUNCH_SCRIPT, 'bareku-run', command], {
      cwd,
      env,
      stdio: 'inherit',
      ...(runAs ? { uid: runAs.uid, gid: runAs.gid } : {}),
    })
    // Ctrl-C reaches the command from the terminal (same process group): it decides, we wait.
    const ignore = (): void => {}
    const forward = (signal: NodeJS.Signals) => () => child.kill(signal)
    const handlers: [NodeJS.Signals, () => void][] = [
      ['SIGINT', ignore],
      ['SIGQUIT', ignore],
      ['SIGTERM', forward('SIGTERM')],
      ['SIGHUP', forward('SIGHUP')],
    ]
    for (const [signal, fn] of handlers) process.on(signal, fn)
    const done = (): void => {
      for (const [signal, fn] of handlers) process.off(signal, fn)
    }
    child.once('error', (err) => {
      done()
      reject(
        new AppError(
          'E_APP',
          `cannot start the command in ${cwd}${runAs ? ` as ${runAs.user}` : ''}: ${err.message}; check that the slug is readable by that user (every directory above it must be searchable, e.g. chmod 755 on BAREKU_HOME)`,
        ),
      )
    })
    child.once('exit', (code, signal) => {
      done()
      resolve(code ?? 128 + (signal ? constants.signals[signal] : 0))
    })
  })
}

export const runVerb: Verb = {
  summary: "run a one-off command with the app's slug and config on this machine",
  usage: USAGE,
  app: true,
  printsItself: true,
  async run(ctx) {
    const app = ctx.app!
    const [flag] = ctx.flags.keys()
    if (flag !== undefined) {
      throw new AppError(
        'E_CONFIG',
        `run: ${flag} is not an option of run; if it belongs to the command, put the command after "--": bareku run ${app} -- COMMAND ${flag}`,
      )
    }
    if (ctx.rest.length === 0) {
      throw new AppError('E_CONFIG', `run: what should run? e.g. bareku run ${app} -- ls -la`)
    }
    const release = await currentRelease(ctx, app)
    const cwd = await slugDir(ctx, app, release)
    const runAs =
      process.getuid?.() === 0
        ? lookupUser(process.env.BAREKU_WORKER_USER || 'nobody', 'BAREKU_WORKER_USER')
        : undefined
    const dyno = `run.${1 + (process.pid % 9999)}`
    const env: Record<string, string> = {
      PATH: DEFAULT_PATH,
      ...release.config,
      HOME: cwd,
      DYNO: dyno,
      PS: dyno,
      BAREKU_APP: app,
      BAREKU_RELEASE: `v${release.version}`,
    }
    for (const name of ['TERM', 'COLUMNS', 'LINES']) {
      const value = process.env[name]
      if (value !== undefined) env[name] = value
    }
    process.exitCode = await launch(ctx.rest.join(' '), cwd, env, runAs)
    return undefined
  },
}
