/**
 * @module Structured logs: pino, JSON lines on stdout, one base field naming the daemon.
 * Messages are short lowercase event names; data goes in fields. Never log bodies or env values.
 */
import { hostname } from 'node:os'
import { pino, type Logger, type LevelWithSilent } from 'pino'

export type { Logger }

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const

/** Parses a LOG_LEVEL value; an unknown level is a config error that names the choices. */
export function parseLevel(
  value: string | undefined,
  fallback: LevelWithSilent = 'info',
): LevelWithSilent {
  if (value === undefined || value === '') return fallback
  if ((LEVELS as readonly string[]).includes(value)) return value as LevelWithSilent
  throw new Error(
    `LOG_LEVEL must be one of ${LEVELS.join(', ')}, got "${value}" (e.g. LOG_LEVEL=debug)`,
  )
}

/** A logger for one daemon or tool; `destination` defaults to stdout (fd 1), written synchronously. */
export function createLogger(
  name: string,
  level: LevelWithSilent = 'info',
  destination = 1,
): Logger {
  return pino(
    { level, base: { daemon: name, host: hostname() } },
    pino.destination({ dest: destination, sync: true }),
  )
}
