/**
 * @module Calling the master's control API (lib/protocol/control.ts) from the `bareku` command,
 * the git hook, the client and the frontend. One REQ socket per call, closed after it with
 * linger 0: a REQ that lost its reply is stuck, and a fresh socket per call costs less than
 * recovering one. A call that gets no reply within the timeout fails with E_CONTROL naming the
 * master and what to check.
 */
import { Request } from 'zeromq'
import { AppError } from '../errors.js'
import { controlResult, encodeControlRequest, parseControlReply } from '../protocol/control.js'

export interface CallOptions {
  /** How long to wait for the reply (default 10 s). */
  timeoutMs?: number
}

/** Sends one command to the master at `endpoint` and returns its result (or throws its error). */
export async function callMaster(
  endpoint: string,
  cmd: string,
  args: Record<string, unknown> = {},
  opts: CallOptions = {},
): Promise<unknown> {
  const timeoutMs = opts.timeoutMs ?? 10_000
  const sock = new Request({ linger: 0, sendTimeout: timeoutMs, receiveTimeout: timeoutMs })
  try {
    sock.connect(endpoint)
    await sock.send(encodeControlRequest({ cmd, args }))
    const [frame] = await sock.receive()
    return controlResult(parseControlReply(frame ?? Buffer.alloc(0)))
  } catch (err) {
    if (err instanceof AppError) throw err
    const code = (err as { code?: string }).code
    if (code === 'EAGAIN') {
      throw new AppError(
        'E_CONTROL',
        `no answer from the master at ${endpoint} within ${timeoutMs} ms ("${cmd}"): is it running? (start it with "bareku up" or "bareku master"; set BAREKU_MASTER or --master to its control endpoint)`,
      )
    }
    throw new AppError(
      'E_CONTROL',
      `cannot reach the master at ${endpoint}: ${(err as Error).message}; check BAREKU_MASTER (e.g. tcp://127.0.0.1:7070)`,
    )
  } finally {
    sock.close()
  }
}

/** The master's other endpoints, as answered by its `endpoints` command. */
export interface MasterEndpoints {
  control: string
  publish: string
  stats: string
  slugs: string
  /** Where nodes ship log lines; absent from a master without log shipping. */
  logs?: string
}

/**
 * Replaces a wildcard or unspecified bind host (`*`, 0.0.0.0, [::]) in `bound` by the host of
 * `via` (the control endpoint the caller reached), so `tcp://*:7071` becomes reachable.
 */
export function reachable(bound: string, via: string): string {
  const host = /^tcp:\/\/(\[[^\]]+\]|[^:]+):/.exec(via)?.[1]
  const m = /^tcp:\/\/(\*|0\.0\.0\.0|\[::\]|\[::0\]):(\d+)$/.exec(bound)
  if (host === undefined || m === null) return bound
  return `tcp://${host}:${m[2]}`
}

/** Asks the master at `control` for its publish, stats, slug (and logs) endpoints, reachable. */
export async function masterEndpoints(
  control: string,
  opts: CallOptions = {},
): Promise<MasterEndpoints> {
  const r = (await callMaster(control, 'endpoints', {}, opts)) as Partial<MasterEndpoints> | null
  const out: Partial<MasterEndpoints> = { control }
  for (const key of ['publish', 'stats', 'slugs'] as const) {
    const value = r?.[key]
    if (typeof value !== 'string') {
      throw new AppError(
        'E_CONTROL',
        `the master at ${control} did not say its ${key} endpoint: is it a Bareku master of this version?`,
      )
    }
    out[key] = reachable(value, control)
  }
  if (typeof r?.logs === 'string') out.logs = reachable(r.logs, control)
  return out as MasterEndpoints
}
