/**
 * @module Reading the daemons' settings from the environment: the readers every daemon's
 * config.ts shares, each failing with E_CONFIG and a message that names the variable, what it
 * must be, what came, and an example.
 *
 *   BAREKU_HOME  absolute path; default /var/lib/bareku as root, else ~/.bareku
 *   NAME=N       a positive integer (unset or empty: the default)
 *   NAME=0|1     a flag (unset or empty: off)
 *   LOG_LEVEL    a pino level (lib/log.ts)
 */
import { homedir } from 'node:os'
import { join } from 'node:path'
import type { LevelWithSilent } from 'pino'
import { AppError } from '../errors.js'
import { parseLevel } from '../log.js'

/** E_CONFIG: `NAME must be EXPECTED, got "VALUE" (e.g. NAME=EXAMPLE)`. */
export function badSetting(
  name: string,
  expected: string,
  value: string,
  example: string,
): AppError {
  return new AppError(
    'E_CONFIG',
    `${name} must be ${expected}, got "${value}" (e.g. ${name}=${example})`,
  )
}

/** BAREKU_HOME, or the default for the user (`isRoot` picks /var/lib/bareku). */
export function homeSetting(env: NodeJS.ProcessEnv, isRoot = process.getuid?.() === 0): string {
  const home =
    env.BAREKU_HOME || (isRoot ? '/var/lib/bareku' : join(env.HOME || homedir(), '.bareku'))
  if (!home.startsWith('/'))
    throw badSetting('BAREKU_HOME', 'an absolute path', home, '/var/lib/bareku')
  return home
}

export function positiveIntSetting(
  env: NodeJS.ProcessEnv,
  name: string,
  fallback: number,
  example = String(fallback),
): number {
  const value = env[name]
  if (value === undefined || value === '') return fallback
  const n = Number(value)
  if (!/^[0-9]+$/.test(value) || !Number.isSafeInteger(n) || n < 1) {
    throw badSetting(name, 'a positive integer', value, example)
  }
  return n
}

export function flagSetting(env: NodeJS.ProcessEnv, name: string): boolean {
  const value = env[name] ?? ''
  if (value === '' || value === '0') return false
  if (value === '1') return true
  throw badSetting(name, '0 or 1', value, '1')
}

export function levelSetting(env: NodeJS.ProcessEnv): LevelWithSilent {
  try {
    return parseLevel(env.LOG_LEVEL)
  } catch (err) {
    throw new AppError('E_CONFIG', (err as Error).message)
  }
}
