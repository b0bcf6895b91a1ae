/**
 * @module The one place that loads uWebSockets.js. It requires the native addon directly, so a
 * failed native load (missing binary, old glibc) throws at startup instead of the package
 * silently falling back to its pure-JS implementation, which is many times slower.
 */
import { createRequire } from 'node:module'
import type * as UWS from 'uWebSockets.js'

const require = createRequire(import.meta.url)
const binary = `uWebSockets.js/binaries/uws_${process.platform}_${process.arch}_${process.versions.modules}.node`

function load(): typeof UWS {
  try {
    return require(binary) as typeof UWS
  } catch (err) {
    throw new Error(
      `uWebSockets.js native addon ${binary} failed to load (${(err as Error).message}); ` +
        'run `npm ci` on Node 20 (ABI 115) with glibc >= 2.27; there is no slow fallback on purpose',
      { cause: err },
    )
  }
}

const uWS = load()

/** True when the native addon is in use (the JS fallback has no getParts). */
export const isNative: boolean = typeof (uWS as { getParts?: unknown }).getParts === 'function'
if (!isNative) throw new Error(`${binary} loaded but is not the native uWebSockets.js addon`)

export default uWS

const NOT_ASCII = /[^\0-\x7f]/

/**
 * Bytes that were decoded as latin1 (one char per byte), ready for a uWS write: uWS writes a
 * string as UTF-8, which would turn each byte over 0x7f into two; a Buffer goes out unchanged.
 * ASCII stays a string, which uWS copies without an allocation of ours.
 */
export function latin1Bytes(text: string): string | Buffer {
  return NOT_ASCII.test(text) ? Buffer.from(text, 'latin1') : text
}
export type {
  TemplatedApp,
  HttpRequest,
  HttpResponse,
  WebSocket,
  WebSocketBehavior,
  us_listen_socket,
  us_socket,
} from 'uWebSockets.js'

// The bundled docs/index.d.ts (v20.30) lacks App#close(), which the native addon has.
declare module 'uWebSockets.js' {
  interface TemplatedApp {
    /** Closes all sockets including listen sockets (forcefully terminates connections). */
    close(): TemplatedApp
  }
}
