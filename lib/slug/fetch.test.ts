/**
 * fetchSlug against a tiny slug store written here: a real ZeroMQ ROUTER on 127.0.0.1 that serves
 * `<sha>.sqfs` files from a folder per lib/protocol/slug-chunk.ts, with knobs to misbehave.
 */
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pino } from 'pino'
import t, { type Test } from 'tap'
import { Router } from 'zeromq'
import { encodeChunkReply, parseChunkRequest, type ChunkRequest } from '../protocol/slug-chunk.js'
import { CHUNK_BYTES, fetchSlug } from './fetch.js'

const log = pino({ level: 'silent' })
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')

interface StoreKnobs {
  /** Answer at most this many requests, then go silent. */
  answer?: number
  /** Serve at most this many bytes per chunk. */
  maxChunk?: number
  /** Reply with this error to every request. */
  error?: string
}

/** A slug store serving `files` (by sha256, as named); returns its endpoint and the requests. */
async function store(t: Test, files: Record<string, Buffer>, knobs: StoreKnobs = {}) {
  const sock = new Router({ linger: 0 })
  await sock.bind('tcp://127.0.0.1:*')
  t.teardown(() => sock.close())
  const requests: ChunkRequest[] = []
  void (async () => {
    for await (const [id, body] of sock) {
      const req = parseChunkRequest(body!)
      requests.push(req)
      if (knobs.answer !== undefined && requests.length > knobs.answer) continue
      const file = files[req.sha256]
      const reply =
        knobs.error !== undefined || file === undefined
          ? encodeChunkReply({
              sha256: req.sha256,
              error: { code: 'E_SLUG', message: knobs.error ?? `no slug ${req.sha256}` },
            })
          : encodeChunkReply({
              sha256: req.sha256,
              offset: req.offset,
              size: file.length,
              data: file.subarray(
                req.offset,
                req.offset + Math.min(req.length, knobs.maxChunk ?? Infinity),
              ),
            })
      await sock.send([id!, ...reply])
    }
  })().catch(() => {})
  return { endpoint: sock.lastEndpoint!, requests }
}

const slug = randomBytes(3 * CHUNK_BYTES + 12345)
const SHA = sha(slug)

t.test('a whole fetch: chunk by chunk, verified, then renamed', async (t) => {
  const dir = t.testdir()
  const s = await store(t, { [SHA]: slug })
  const path = await fetchSlug(
    { endpoint: s.endpoint, sha256: SHA, size: slug.length, dir, timeoutMs: 5000 },
    log,
  )
  t.equal(path, join(dir, `${SHA}.sqfs`))
  t.ok(readFileSync(path).equals(slug), 'the bytes are the slug')
  t.notOk(existsSync(`${path}.part`), 'no .part left')
  t.same(
    s.requests.map((r) => [r.offset, r.length]),
    [
      [0, CHUNK_BYTES],
      [CHUNK_BYTES, CHUNK_BYTES],
      [2 * CHUNK_BYTES, CHUNK_BYTES],
      [3 * CHUNK_BYTES, 12345],
    ],
    '1 MiB chunks, the last one short',
  )
  const again = await fetchSlug(
    { endpoint: 'tcp://127.0.0.1:1', sha256: SHA, size: slug.length, dir, timeoutMs: 100 },
    log,
  )
  t.equal(again, path, 'a slug already there is not fetched again')
})

t.test('short chunks from the store are completed', async (t) => {
  const dir = t.testdir()
  const s = await store(t, { [SHA]: slug }, { maxChunk: 300_000 })
  const path = await fetchSlug(
    { endpoint: s.endpoint, sha256: SHA, size: slug.length, dir, timeoutMs: 5000 },
    log,
  )
  t.ok(readFileSync(path).equals(slug))
})

t.test('resumes from the .part left by a crash', async (t) => {
  const dir = t.testdir()
  const have = CHUNK_BYTES + 777
  writeFileSync(join(dir, `${SHA}.sqfs.part`), slug.subarray(0, have))
  const s = await store(t, { [SHA]: slug })
  const path = await fetchSlug(
    { endpoint: s.endpoint, sha256: SHA, size: slug.length, dir, timeoutMs: 5000 },
    log,
  )
  t.ok(readFileSync(path).equals(slug), 'the whole slug')
  t.equal(s.requests[0]?.offset, have, 'the first request starts at the .part size')
})

t.test('a store that goes silent: E_SLUG after the timeout, the next fetch resumes', async (t) => {
  const dir = t.testdir()
  const silent = await store(t, { [SHA]: slug }, { answer: 2 })
  await t.rejects(
    fetchSlug(
      { endpoint: silent.endpoint, sha256: SHA, size: slug.length, dir, timeoutMs: 300 },
      log,
    ),
    { code: 'E_SLUG', message: /no answer within 300 ms/ },
  )
  const part = join(dir, `${SHA}.sqfs.part`)
  t.equal(readFileSync(part).length, 2 * CHUNK_BYTES, 'the two answered chunks are kept')
  t.notOk(existsSync(join(dir, `${SHA}.sqfs`)), 'no final file')
  const s = await store(t, { [SHA]: slug })
  const path = await fetchSlug(
    { endpoint: s.endpoint, sha256: SHA, size: slug.length, dir, timeoutMs: 5000 },
    log,
  )
  t.ok(readFileSync(path).equals(slug), 'the whole slug')
  t.equal(s.requests[0]?.offset, 2 * CHUNK_BYTES, 'resumed after the kept bytes')
})

t.test('a sha256 mismatch: E_SLUG, no final file, the .part deleted', async (t) => {
  const dir = t.testdir()
  const wrong = Buffer.from(slug)
  wrong[5] = wrong[5]! ^ 0xff
  const s = await store(t, { [SHA]: wrong })
  await t.rejects(
    fetchSlug({ endpoint: s.endpoint, sha256: SHA, size: slug.length, dir, timeoutMs: 5000 }, log),
    { code: 'E_SLUG', message: new RegExp(`has sha256 ${sha(wrong)}`) },
  )
  t.notOk(existsSync(join(dir, `${SHA}.sqfs`)), 'no final file')
  t.notOk(existsSync(join(dir, `${SHA}.sqfs.part`)), 'no .part')
})

t.test('a size the store disagrees with: E_SLUG, the .part deleted', async (t) => {
  const dir = t.testdir()
  const s = await store(t, { [SHA]: slug })
  await t.rejects(
    fetchSlug({ endpoint: s.endpoint, sha256: SHA, size: 100, dir, timeoutMs: 5000 }, log),
    { code: 'E_SLUG', message: /the host list says 100/ },
  )
  t.notOk(existsSync(join(dir, `${SHA}.sqfs.part`)), 'no .part')
})

t.test("the store's error reply: E_SLUG with its message, no final file", async (t) => {
  const dir = t.testdir()
  const s = await store(t, {})
  await t.rejects(
    fetchSlug({ endpoint: s.endpoint, sha256: SHA, size: slug.length, dir, timeoutMs: 5000 }, log),
    { code: 'E_SLUG', message: new RegExp(`refused slug ${SHA}: no slug ${SHA}`) },
  )
  t.notOk(existsSync(join(dir, `${SHA}.sqfs`)), 'no final file')
})

t.test('aborting stops the fetch at once', async (t) => {
  const dir = t.testdir()
  const silent = await store(t, { [SHA]: slug }, { answer: 0 })
  const ac = new AbortController()
  const fetching = fetchSlug(
    {
      endpoint: silent.endpoint,
      sha256: SHA,
      size: slug.length,
      dir,
      timeoutMs: 60_000,
      signal: ac.signal,
    },
    log,
  )
  await t.resolves(
    (async () => {
      while (silent.requests.length === 0) await new Promise((r) => setImmediate(r))
    })(),
  )
  ac.abort()
  await t.rejects(fetching, { code: 'E_SLUG', message: /the fetch was stopped/ })
})
