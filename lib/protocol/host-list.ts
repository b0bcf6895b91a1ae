/**
 * @module The master -> client (and master -> frontend) publication, on the master's XPUB.
 * Each message is the whole truth for its topic, never a delta:
 *
 *   message  = topic-frame meta-frame body-frame           ; three ZeroMQ frames
 *   topic    = NAME "\0"                                   ; a node name, or "frontend"
 *   meta     = JSON { "epoch": INT, "seq": INT, "sha256": HEX64 }
 *   body     = JSON HostList      (topic = a node)
 *            | JSON RouteTable    (topic = "frontend"; see lib/config/routes.ts)
 *   HostList = { "host": NAME, "instances": [HostInstance, ...],
 *                "slugs": { HEX64: { "size": INT }, ... } }   ; every slug the instances use
 *   HostInstance = InstanceSpec (lib/config/worker-config.ts) without "cwd", plus
 *                  "slug": HEX64                           ; the sha256 of the slug to run from
 *   INT = a non-negative safe integer; HEX64 = 64 lowercase hex digits
 *
 * The topic ends in "\0" because SUB filtering is by prefix ("web1" would match "web10").
 * `epoch` grows by one at every master start and `seq` at every publication within an epoch, so
 * (epoch, seq) orders messages across master restarts: a receiver keeps the newest it has seen
 * and ignores older ones (`isNewer`). `sha256` is of the body frame's bytes: a receiver rewrites
 * its files only when it changes, and refuses a message whose body does not match it.
 */
import { createHash } from 'node:crypto'
import type { InstanceSpec } from '../config/worker-config.js'
import { AppError } from '../errors.js'

/** The topic that carries the frontend's route table. */
export const FRONTEND_TOPIC = 'frontend'

export interface PublicationMeta {
  epoch: number
  seq: number
  sha256: string
}

/** One instance a node must run, as the master says it; the client adds `cwd`. */
export type HostInstance = Omit<InstanceSpec, 'cwd'> & { slug: string }

export interface HostList {
  host: string
  instances: HostInstance[]
  slugs: Record<string, { size: number }>
}

/** A decoded message: the topic name (without "\0"), meta, and the body's parsed JSON. */
export interface Publication {
  topic: string
  meta: PublicationMeta
  body: unknown
}

const HEX64 = /^[0-9a-f]{64}$/
const TOPIC = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/

/** The subscription prefix for a topic: the name and its "\0". */
export function topicFrame(topic: string): Buffer {
  if (!TOPIC.test(topic)) {
    throw new AppError(
      'E_HOST_LIST',
      `topic must be a node name of letters, digits, "_", "." and "-", got ${JSON.stringify(topic)}; set a valid node name (BAREKU_NODE)`,
    )
  }
  return Buffer.from(`${topic}\0`)
}

/** Encodes one publication as its three frames; `body` is any JSON value. */
export function encodePublication(
  topic: string,
  epoch: number,
  seq: number,
  body: unknown,
): [Buffer, Buffer, Buffer] {
  const bodyFrame = Buffer.from(JSON.stringify(body))
  const sha256 = createHash('sha256').update(bodyFrame).digest('hex')
  const meta: PublicationMeta = { epoch, seq, sha256 }
  return [topicFrame(topic), Buffer.from(JSON.stringify(meta)), bodyFrame]
}

function fail(what: string): never {
  throw new AppError(
    'E_HOST_LIST',
    `publication refused: ${what}; the sender is not a Bareku master of this version (check BAREKU_MASTER)`,
  )
}

function safeInt(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0
}

/** Decodes and checks the three frames (topic, meta, body hash, JSON). Throws E_HOST_LIST. */
export function parsePublication(frames: Buffer[]): Publication {
  if (frames.length !== 3) fail(`expected 3 frames (topic, meta, body), got ${frames.length}`)
  const [topicBuf, metaBuf, bodyBuf] = frames as [Buffer, Buffer, Buffer]
  if (topicBuf.length < 2 || topicBuf[topicBuf.length - 1] !== 0) {
    fail('the topic frame does not end in "\\0"')
  }
  const topic = topicBuf.subarray(0, -1).toString('utf8')
  if (!TOPIC.test(topic)) fail(`bad topic ${JSON.stringify(topic.slice(0, 60))}`)
  let meta: unknown
  try {
    meta = JSON.parse(metaBuf.toString('utf8'))
  } catch {
    fail('the meta frame is not JSON')
  }
  const m = meta as Partial<PublicationMeta> | null
  if (typeof m !== 'object' || m === null || !safeInt(m.epoch) || !safeInt(m.seq)) {
    fail('meta must be {"epoch": INT, "seq": INT, "sha256": HEX64}')
  }
  if (typeof m.sha256 !== 'string' || !HEX64.test(m.sha256)) fail('meta.sha256 is not 64 hex')
  const actual = createHash('sha256').update(bodyBuf).digest('hex')
  if (actual !== m.sha256) fail(`the body's sha256 is ${actual}, meta says ${m.sha256}`)
  let body: unknown
  try {
    body = JSON.parse(bodyBuf.toString('utf8'))
  } catch {
    fail('the body frame is not JSON')
  }
  return { topic, meta: { epoch: m.epoch, seq: m.seq, sha256: m.sha256 }, body }
}

/** True when `next` comes after `last` (none yet counts as oldest). */
export function isNewer(next: PublicationMeta, last: PublicationMeta | undefined): boolean {
  if (last === undefined) return true
  return next.epoch > last.epoch || (next.epoch === last.epoch && next.seq > last.seq)
}

/**
 * Checks a host list body: the shape above, each instance a valid InstanceSpec once given a cwd
 * (the caller renders it with renderWorkerConfig, which checks the rest), and every instance's
 * slug listed in `slugs`. Throws E_HOST_LIST naming the field.
 */
export function parseHostList(body: unknown, host: string): HostList {
  const b = body as Partial<HostList> | null
  if (typeof b !== 'object' || b === null || Array.isArray(b))
    fail('the host list is not an object')
  if (b.host !== host) fail(`the host list is for ${JSON.stringify(b.host)}, not ${host}`)
  if (!Array.isArray(b.instances)) fail('host list .instances is not an array')
  if (typeof b.slugs !== 'object' || b.slugs === null || Array.isArray(b.slugs)) {
    fail('host list .slugs is not an object')
  }
  for (const [sha, info] of Object.entries(b.slugs)) {
    if (!HEX64.test(sha)) fail(`slugs key ${JSON.stringify(sha.slice(0, 70))} is not 64 hex`)
    if (!safeInt((info as { size?: unknown } | null)?.size)) fail(`slugs.${sha}.size is not INT`)
  }
  b.instances.forEach((inst: unknown, i) => {
    const x = inst as Partial<HostInstance> | null
    if (typeof x !== 'object' || x === null) fail(`instances[${i}] is not an object`)
    if (typeof x.slug !== 'string' || !HEX64.test(x.slug))
      fail(`instances[${i}].slug is not 64 hex`)
    if (!(x.slug in b.slugs!)) fail(`instances[${i}].slug ${x.slug} is not in .slugs`)
  })
  return b as HostList
}
