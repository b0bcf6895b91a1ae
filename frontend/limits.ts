/**
 * @module The frontend's limits and settings, read from Mongrel2's `settings` names so that an
 * m2sh config keeps its meaning, with Bareku's additions under the same scheme.
 */
import { AppError } from '../lib/errors.js'

export interface Limits {
  /** Largest request head (request line plus headers), bytes; over it: 431. */
  headerSize: number
  /** Most headers kept per request (Mongrel2 ignores the rest). */
  headerCount: number
  /** Largest body sent inline; larger bodies are spooled to upload.temp_store, or get 413. */
  contentLength: number
  /** Largest upload spooled to disk; over it: 413. */
  uploadMax: number
  /** mkstemp template for spooled uploads, relative to the server's chroot; unset: no uploads. */
  uploadTempStore: string | undefined
  uploadTempStoreMode: number
  /** How long a request waits for a handler to connect before a 503, ms. */
  handlerWait: number
  /**
   * How long a request taken by a handler whose connection closed may still be answered (a
   * draining handler) before it is retried or answered 502, ms; a handler seen dead is not
   * waited for.
   */
  handlerLostGrace: number
  /** Largest WebSocket message either way, bytes. */
  websocketMax: number
  /**
   * How long a WebSocket may stay on a release after a newer one took over, ms; then it is
   * closed with 1001 (going away) and the client reconnects to the new release.
   */
  websocketDrain: number
  /**
   * How long a newly ready release takes to get every new request, ms: a share growing from
   * none to all goes to it meanwhile, the rest to the previous release (0: at once).
   */
  releaseRamp: number
  /** Most response bytes buffered for one slow client before the frontend closes it. */
  connBuffer: number
  /** Keep a client's X-Forwarded-For instead of replacing it. */
  noClobberXff: boolean
  /** Seconds without traffic before a WebSocket is closed (0: never; otherwise at least 8). */
  websocketIdle: number
  /** Handler sockets: ZMTP 3 spoken by the frontend itself ('native') or through libzmq. */
  zmtp: 'native' | 'libzmq'
}

function num(settings: Record<string, string | number>, key: string, fallback: number): number {
  const v = settings[key]
  if (v === undefined) return fallback
  const n = typeof v === 'number' ? v : Number(v)
  if (!Number.isFinite(n) || n < 0) {
    throw new AppError(
      'E_CONFIG',
      `setting ${key} must be a non-negative number, got ${JSON.stringify(v)} (e.g. '${key}': ${fallback})`,
    )
  }
  return n
}

/** Reads the limits from a route table's settings, with Mongrel2's defaults where it has one. */
export function limitsFromSettings(settings: Record<string, string | number>): Limits {
  const store = settings['upload.temp_store']
  const idle = num(settings, 'limits.websocket_idle', 120)
  if (idle !== 0 && idle < 8) {
    // uWS aborts the whole process on an idle timeout from 1 to 7: refuse it here instead.
    throw new AppError(
      'E_CONFIG',
      `setting limits.websocket_idle must be 0 or at least 8 seconds, got ${idle}`,
    )
  }
  const zmtp = settings['frontend.zmtp'] ?? 'native'
  if (zmtp !== 'native' && zmtp !== 'libzmq') {
    throw new AppError(
      'E_CONFIG',
      `setting frontend.zmtp must be 'native' or 'libzmq', got ${JSON.stringify(zmtp)}`,
    )
  }
  return {
    zmtp,
    headerSize: Math.max(
      num(settings, 'limits.buffer_size', 4096),
      num(settings, 'limits.header_size', 16384),
    ),
    headerCount: num(settings, 'limits.header_count', 1280),
    contentLength: num(settings, 'limits.content_length', 20480),
    uploadMax: num(settings, 'limits.upload_max', 1024 * 1024 * 1024),
    uploadTempStore: typeof store === 'string' && store !== '' ? store : undefined,
    uploadTempStoreMode: parseInt(String(settings['upload.temp_store_mode'] ?? '0600'), 8),
    handlerWait: num(settings, 'limits.handler_wait', 30_000),
    handlerLostGrace: num(settings, 'limits.handler_lost_grace', 5000),
    websocketMax: num(settings, 'limits.websocket_max', 16 * 1024 * 1024),
    websocketDrain: num(settings, 'limits.websocket_drain', 60_000),
    releaseRamp: num(settings, 'limits.release_ramp', 1000),
    connBuffer: num(settings, 'limits.conn_buffer', 8 * 1024 * 1024),
    noClobberXff: num(settings, 'no_clobber_xff', 0) === 1,
    websocketIdle: idle,
  }
}
