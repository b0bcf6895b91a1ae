/**
 * @module The sha256 of a file, read as a stream: slugs can be hundreds of MB, so never whole.
 */
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'

/** The lowercase hex sha256 of the file at `path`, read in 1 MiB chunks. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) {
    hash.update(chunk as Buffer)
  }
  return hash.digest('hex')
}
