/**
 * @module Errors with a stable code. Codes are never renamed once released; tests assert the code,
 * not the wording. A message says what was expected, what came, and what to do.
 */

export type ErrorCode =
  | 'E_CONFIG'
  | 'E_NETSTRING'
  | 'E_TNETSTRING'
  | 'E_M2_REQUEST'
  | 'E_M2_REPLY'
  | 'E_WS_FRAME'
  | 'E_HANDLER'
  | 'E_M2SH'
  | 'E_ROUTES'
  | 'E_HTTP_RESPONSE'
  | 'E_PROXY'
  | 'E_WORKER_CONFIG'
  | 'E_WORKER'
  | 'E_ZMTP'
  | 'E_HOST_LIST'
  | 'E_NODE_REPORT'
  | 'E_CONTROL'
  | 'E_SLUG'
  | 'E_MASTER'
  | 'E_CLIENT'
  | 'E_APP'
  | 'E_BUILD'
  | 'E_LOGS'

export class AppError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options)
    this.name = 'AppError'
  }
}

/** True when `err` is an AppError, optionally with the given code. */
export function isAppError(err: unknown, code?: ErrorCode): err is AppError {
  return err instanceof AppError && (code === undefined || err.code === code)
}
