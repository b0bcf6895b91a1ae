/**
 * @module How an app process is launched, shared by whoever starts one outside the worker
 * (`bareku run`): Heroku's contract of sourcing the slug's `.profile.d/*.sh` first, then
 * replacing the shell with the command, as an unprivileged account when started by root.
 *
 *   /bin/sh -c LAUNCH_SCRIPT bareku-run COMMAND     (cwd = the unpacked slug)
 *
 * COMMAND travels as $1 and is parsed by the shell exactly once. worker/spawn.ts launches
 * instances the same way.
 */
import { execFileSync } from 'node:child_process'
import { AppError } from './errors.js'

/**
 * Sources `.profile.d/*.sh`, then runs the command given as $1: a simple command is exec'd (so
 * it gets signals straight); a list (`a; b`, `a && b`, a pipe) runs under this shell, as
 * Heroku's `bash -c` does, since `exec` would end the list after its first command.
 */
export const LAUNCH_SCRIPT =
  'for f in .profile.d/*.sh; do [ -r "$f" ] && . "$f"; done; ' +
  'case "$1" in *[\\;\\&\\|]*) eval "$1" ;; *) eval "exec $1" ;; esac'

/** PATH when the app's config does not set one. */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

/** A resolved account to run as. */
export interface RunAs {
  user: string
  uid: number
  gid: number
}

/** Resolves a user name with `getent passwd` (so NSS users work too). */
export function lookupUser(user: string, setting: string): RunAs {
  let line: string
  try {
    line = execFileSync('getent', ['passwd', user], { encoding: 'utf8' }).trim()
  } catch {
    throw new AppError(
      'E_CONFIG',
      `no such user "${user}" (getent passwd ${user} found nothing): create it, or set ${setting} to an existing account`,
    )
  }
  const fields = line.split(':')
  const runAs = { user, uid: Number(fields[2]), gid: Number(fields[3]) }
  if (!Number.isInteger(runAs.uid) || !Number.isInteger(runAs.gid)) {
    throw new AppError('E_CONFIG', `getent passwd ${user} printed an unreadable entry: ${line}`)
  }
  return runAs
}
