/**
 * @module The Mongrel2 test vectors: bytes captured from the real Mongrel2 1.12.2, kept in
 * test/fixtures/mongrel2-vectors (a copy of ../shared/mongrel2-vectors), one folder per case.
 */
import { readdirSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

export const VECTORS_DIR = fileURLToPath(new URL('../fixtures/mongrel2-vectors/', import.meta.url))

export type VectorKind =
  'client-send' | 'client-recv' | 'client-close' | 'handler-recv' | 'handler-send' | 'note'

export interface VectorEvent {
  n: number
  kind: VectorKind
  file?: string
  /** The captured bytes (empty for events without a file: client-close, note). */
  bytes: Buffer
  /** Which client socket (client-send, client-recv, client-close). */
  client?: string
  /** Which handler (handler-recv, handler-send): 'json' or 'tnet'. */
  route?: string
  /** client-recv: the server closed the connection after these bytes. */
  eof?: boolean
  /** What the capture tool decoded from a handler-recv message. */
  decoded?: {
    sender: string
    conn_id: string
    path: string
    header_format: 'json' | 'tnetstring'
    headers: [string, string | string[]][]
    body_len: number
    body_sha256: string
  }
}

export interface VectorCase {
  name: string
  note: string
  events: VectorEvent[]
}

/** Every captured case, its events in order, with their bytes read from disk. */
export function loadVectors(): VectorCase[] {
  return readdirSync(VECTORS_DIR, { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .map((d) => {
      const index = JSON.parse(readFileSync(`${VECTORS_DIR}${d.name}/index.json`, 'utf8')) as {
        note: string
        events: Omit<VectorEvent, 'bytes'>[]
      }
      return {
        name: d.name,
        note: index.note,
        events: index.events.map((e) => ({
          ...e,
          bytes: e.file ? readFileSync(`${VECTORS_DIR}${d.name}/${e.file}`) : Buffer.alloc(0),
        })),
      }
    })
}
