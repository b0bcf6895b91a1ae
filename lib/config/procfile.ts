/**
 * @module Procfile parsing (Heroku's and piku's grammar, typed and strict).
 *
 *   Procfile = { line "\n" }            ; "\r\n" endings are accepted
 *   line     = blank | comment | entry
 *   blank    = only whitespace
 *   comment  = [whitespace] "#" anything
 *   entry    = [ws] TYPE [ws] ":" [ws] COMMAND [ws]
 *   TYPE     = [A-Za-z0-9_-]+            ; unique in the file
 *   COMMAND  = anything non-empty        ; run by a shell; a "#" inside it is the shell's business
 *
 * Heroku silently skips lines it cannot read; here a line without a colon, a bad type name, an
 * empty command or a duplicate type is an E_BUILD error naming the line number, showing the line
 * and saying how to fix it, so a typo fails the push instead of dropping a process.
 */
import { AppError } from '../errors.js'

/** Process type names: what may stand before the colon. */
export const PROCESS_TYPE = /^[A-Za-z0-9_-]+$/

/** Process types by name, in file order: { web: 'node server.js', ... }. */
export type ProcessTypes = Record<string, string>

const ENTRY = /^\s*([^:]*?)\s*:\s*(.*?)\s*$/

function bad(lineNo: number, line: string, problem: string, fix: string): AppError {
  return new AppError(
    'E_BUILD',
    `Procfile line ${lineNo}: ${problem}\n    ${lineNo} | ${line}\n  ${fix}`,
  )
}

/** Parses a Procfile's text; throws AppError E_BUILD on the first bad line. */
export function parseProcfile(text: string): ProcessTypes {
  const types: ProcessTypes = {}
  const lines = text.split('\n')
  for (const [i, raw] of lines.entries()) {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw
    const lineNo = i + 1
    const trimmed = line.trim()
    if (trimmed === '' || trimmed.startsWith('#')) continue
    const m = ENTRY.exec(line)
    if (!m) {
      throw bad(
        lineNo,
        line,
        'expected "TYPE: COMMAND", got a line without a colon',
        'write it as e.g. "web: node server.js", or comment it out with "#"',
      )
    }
    const [, type = '', command = ''] = m
    if (!PROCESS_TYPE.test(type)) {
      throw bad(
        lineNo,
        line,
        `the process type ${JSON.stringify(type)} is not a valid name`,
        'a type is letters, digits, "_" and "-" only (e.g. "web", "worker", "chat-handler")',
      )
    }
    if (command === '') {
      throw bad(
        lineNo,
        line,
        `the process type "${type}" has an empty command`,
        `put the command after the colon (e.g. "${type}: ./bin/${type}"), or delete the line`,
      )
    }
    if (Object.hasOwn(types, type)) {
      throw bad(
        lineNo,
        line,
        `the process type "${type}" is declared twice`,
        `keep one "${type}:" line (a type runs one command; scale it with ps:scale instead)`,
      )
    }
    types[type] = command
  }
  return types
}

/**
 * True for a process type that is a Mongrel2 handler (it gets the frontend's handler endpoints
 * instead of $PORT): `handler`, or any type whose name ends in "handler" (`chat-handler`).
 */
export function isHandlerType(type: string): boolean {
  return type.endsWith('handler')
}
