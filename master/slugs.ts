/**
 * @module The slug store's answer to one chunk request (lib/protocol/slug-chunk.ts): the bytes
 * [offset, offset + length) of `<slugDir>/<sha256>.sqfs`, read with one positioned read, so a
 * transfer never holds a whole slug in memory. Every request gets a reply: a bad one, a missing
 * slug or an offset past the end is an E_SLUG error reply. An error reply must carry a sha256;
 * for a request too broken to name one, it is 64 zeros.
 */
import { open } from 'node:fs/promises'
import { join } from 'node:path'
import { isAppError } from '../lib/errors.js'
import { encodeChunkReply, parseChunkRequest } from '../lib/protocol/slug-chunk.js'

const NO_SHA = '0'.repeat(64)

function refuse(sha256: string, message: string): Buffer[] {
  return encodeChunkReply({ sha256, error: { code: 'E_SLUG', message } })
}

/** The sha256 a broken request named, if it named a well-formed one. */
function namedSha(frame: Buffer): string {
  try {
    const sha = (JSON.parse(frame.toString('utf8')) as { sha256?: unknown } | null)?.sha256
    return typeof sha === 'string' && /^[0-9a-f]{64}$/.test(sha) ? sha : NO_SHA
  } catch {
    return NO_SHA
  }
}

/** The reply frames for one request frame. */
export async function serveChunk(slugDir: string, frame: Buffer): Promise<Buffer[]> {
  let req
  try {
    req = parseChunkRequest(frame)
  } catch (err) {
    if (!isAppError(err)) throw err
    return refuse(namedSha(frame), err.message)
  }
  const file = join(slugDir, `${req.sha256}.sqfs`)
  let handle
  try {
    handle = await open(file, 'r')
  } catch (err) {
    const why =
      (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'is not in' : 'cannot be read from'
    return refuse(
      req.sha256,
      `slug ${req.sha256} ${why} the slug store (${(err as Error).message}); push the app again to rebuild it`,
    )
  }
  try {
    const size = (await handle.stat()).size
    if (req.offset > size) {
      return refuse(
        req.sha256,
        `offset ${req.offset} is past the end of slug ${req.sha256} (${size} bytes)`,
      )
    }
    const data = Buffer.alloc(Math.min(req.length, size - req.offset))
    let got = 0
    while (got < data.length) {
      const { bytesRead } = await handle.read(data, got, data.length - got, req.offset + got)
      if (bytesRead === 0) break
      got += bytesRead
    }
    return encodeChunkReply({
      sha256: req.sha256,
      offset: req.offset,
      size,
      data: data.subarray(0, got),
    })
  } finally {
    await handle.close()
  }
}
