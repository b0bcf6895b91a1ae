/**
 * @module Slug transfer: a node fetches a slug it lacks from the slug store (a ROUTER the master
 * binds; the client uses a DEALER), one chunk per request, so a transfer resumes from the bytes
 * already on disk and never holds a whole slug in memory.
 *
 *   request = frame JSON { "sha256": HEX64, "offset": INT, "length": 1..4194304 }
 *   reply   = frame JSON { "sha256": HEX64, "offset": INT, "size": INT }   ; size = whole slug
 *             frame DATA                                   ; bytes [offset, offset + len(DATA))
 *           | frame JSON { "sha256": HEX64, "error": { "code": "E_SLUG", "message": STRING } }
 *   HEX64 = 64 lowercase hex digits; INT = a non-negative safe integer
 *
 * DATA is empty only at offset = size (end). The receiver checks the sha256 of the whole file
 * before it is used; the store serves only files named `<sha256>.sqfs` in its folder.
 */
import { AppError } from '../errors.js'

export const MAX_CHUNK = 4 * 1024 * 1024

export interface ChunkRequest {
  sha256: string
  offset: number
  length: number
}

export type ChunkReply =
  | { sha256: string; offset: number; size: number; data: Buffer }
  | { sha256: string; error: { code: 'E_SLUG'; message: string } }

const HEX64 = /^[0-9a-f]{64}$/

function fail(what: string): never {
  throw new AppError('E_SLUG', `slug transfer: ${what}; are both ends the same Bareku version?`)
}

function json(frame: Buffer | undefined, what: string): Record<string, unknown> {
  let v: unknown
  try {
    v = JSON.parse((frame ?? Buffer.alloc(0)).toString('utf8'))
  } catch {
    fail(`the ${what} frame is not JSON`)
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(`the ${what} is not an object`)
  return v as Record<string, unknown>
}

function int(v: unknown, field: string, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > max) {
    fail(`${field} must be an integer from 0 to ${max}`)
  }
  return v
}

function sha(v: unknown): string {
  if (typeof v !== 'string' || !HEX64.test(v)) fail('sha256 must be 64 lowercase hex digits')
  return v
}

export function encodeChunkRequest(req: ChunkRequest): Buffer {
  return Buffer.from(JSON.stringify(req))
}

export function parseChunkRequest(frame: Buffer): ChunkRequest {
  const r = json(frame, 'request')
  const length = int(r.length, 'length', MAX_CHUNK)
  if (length === 0) fail('length must be at least 1')
  return { sha256: sha(r.sha256), offset: int(r.offset, 'offset'), length }
}

export function encodeChunkReply(reply: ChunkReply): Buffer[] {
  if ('error' in reply) return [Buffer.from(JSON.stringify(reply))]
  const { data, ...head } = reply
  return [Buffer.from(JSON.stringify(head)), data]
}

export function parseChunkReply(frames: Buffer[]): ChunkReply {
  const head = json(frames[0], 'reply')
  const sha256 = sha(head.sha256)
  if (head.error !== undefined) {
    const e = head.error as Record<string, unknown> | null
    if (frames.length !== 1 || typeof e?.message !== 'string') fail('bad error reply')
    return { sha256, error: { code: 'E_SLUG', message: e.message } }
  }
  if (frames.length !== 2) fail(`a chunk reply has 2 frames, got ${frames.length}`)
  const offset = int(head.offset, 'offset')
  const size = int(head.size, 'size')
  const data = frames[1]!
  if (offset + data.length > size) fail('the chunk runs past the slug size')
  if (data.length === 0 && offset !== size) fail('an empty chunk before the end')
  return { sha256, offset, size, data }
}
