/**
 * @module The master's control API: request/reply over ZeroMQ (the master binds a ROUTER; a
 * caller uses a REQ, or a DEALER that sends an empty delimiter frame first), one JSON frame each
 * way. Used by the `bareku` command, the git hook and the client (for `endpoints`).
 *
 *   request = JSON { "cmd": CMD, "args": { ... } }
 *   reply   = JSON { "ok": true, "result": ANY }
 *           | JSON { "ok": false, "error": { "code": ERROR_CODE, "message": STRING } }
 *   CMD     = [a-z][a-z:-]*     ; e.g. "apps:create", "ps:scale" (see master/control.ts)
 *
 * An unknown command, bad args or a failed action is an `ok: false` reply with a stable code
 * (lib/errors.ts) and a message that says what to do; the master never drops a request silently.
 */
import { AppError, isAppError, type ErrorCode } from '../errors.js'

export interface ControlRequest {
  cmd: string
  args: Record<string, unknown>
}

export type ControlReply =
  { ok: true; result: unknown } | { ok: false; error: { code: ErrorCode; message: string } }

const CMD = /^[a-z][a-z:-]*$/

export function encodeControlRequest(req: ControlRequest): Buffer {
  return Buffer.from(JSON.stringify(req))
}

/** Parses one request frame. Throws E_CONTROL with what was wrong. */
export function parseControlRequest(frame: Buffer): ControlRequest {
  let v: unknown
  try {
    v = JSON.parse(frame.toString('utf8'))
  } catch {
    throw new AppError(
      'E_CONTROL',
      'control request is not JSON: send {"cmd": "...", "args": {...}} (use the bareku command)',
    )
  }
  const r = v as Partial<ControlRequest> | null
  if (typeof r !== 'object' || r === null || typeof r.cmd !== 'string' || !CMD.test(r.cmd)) {
    throw new AppError(
      'E_CONTROL',
      'control request needs "cmd", a command name such as "apps:create" (use the bareku command)',
    )
  }
  const args = r.args ?? {}
  if (typeof args !== 'object' || args === null || Array.isArray(args)) {
    throw new AppError('E_CONTROL', `control request "${r.cmd}": "args" must be an object`)
  }
  return { cmd: r.cmd, args: args }
}

/** The reply for a result, or for a thrown error (an AppError keeps its code; others E_MASTER). */
export function encodeControlReply(outcome: { result: unknown } | { error: unknown }): Buffer {
  if ('result' in outcome) return Buffer.from(JSON.stringify({ ok: true, result: outcome.result }))
  const err = outcome.error
  const code: ErrorCode = isAppError(err) ? err.code : 'E_MASTER'
  const message = err instanceof Error ? err.message : String(err)
  return Buffer.from(JSON.stringify({ ok: false, error: { code, message } }))
}

/** Parses a reply frame; throws E_CONTROL when it is not one. */
export function parseControlReply(frame: Buffer): ControlReply {
  let v: unknown
  try {
    v = JSON.parse(frame.toString('utf8'))
  } catch {
    throw new AppError('E_CONTROL', 'control reply is not JSON: is BAREKU_MASTER a Bareku master?')
  }
  const r = v as Record<string, unknown> | null
  if (typeof r === 'object' && r !== null && r.ok === true && 'result' in r) {
    return { ok: true, result: r.result }
  }
  const e = r?.error as Record<string, unknown> | undefined
  if (r?.ok === false && typeof e?.code === 'string' && typeof e.message === 'string') {
    return { ok: false, error: { code: e.code as ErrorCode, message: e.message } }
  }
  throw new AppError('E_CONTROL', 'control reply has neither ok/result nor error: wrong version?')
}

/** Unwraps a reply: the result, or the error rethrown as an AppError with its code. */
export function controlResult(reply: ControlReply): unknown {
  if (reply.ok) return reply.result
  throw new AppError(reply.error.code, reply.error.message)
}
