/**
 * @module Tagged netstrings (tnetstrings), Mongrel2's alternative header encoding.
 *
 *   tnetstring = length ":" payload tag
 *   tag        = "," string | "#" integer | "^" float | "!" boolean | "~" null
 *              | "}" dict   | "]" list
 *   integer    = ["-"] 1*DIGIT                ; a safe integer (|n| <= 2^53 - 1)
 *   float      = a decimal number as JavaScript prints one (e.g. 3.5, -1e-7)
 *   boolean    = "true" / "false"
 *   null       = ""                           ; always "0:~"
 *   dict       = *(tnetstring-string tnetstring)   ; key, value pairs; keys are strings
 *   list       = *tnetstring
 *
 * Strings decode as UTF-8 (invalid UTF-8 is an error) unless `strings: 'buffer'` is asked for;
 * dict keys are always UTF-8. Nesting is limited (`maxDepth`) so hostile input cannot overflow
 * the stack, and a declared length is checked against the bytes present before it is used.
 */
import { isUtf8 } from 'node:buffer'
import { AppError } from '../errors.js'
import { parseLengthPrefix, type Parsed } from './netstring.js'

export type TnetValue =
  string | Buffer | number | boolean | null | TnetValue[] | { [key: string]: TnetValue }

export interface TnetParseOptions {
  /** How strings come back: UTF-8 text (default; invalid UTF-8 throws) or raw bytes. */
  strings?: 'utf8' | 'buffer'
  /** Deepest nesting of lists and dicts accepted (default 32). */
  maxDepth?: number
}

const TAG_STRING = 0x2c // ,
const TAG_INT = 0x23 // #
const TAG_FLOAT = 0x5e // ^
const TAG_BOOL = 0x21 // !
const TAG_NULL = 0x7e // ~
const TAG_DICT = 0x7d // }
const TAG_LIST = 0x5d // ]

const INT_RE = /^-?[0-9]+$/
const FLOAT_RE = /^-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$/

/** Decodes UTF-8 strictly; `what` names the field in the error. */
export function decodeUtf8(
  bytes: Buffer,
  code: 'E_TNETSTRING' | 'E_M2_REQUEST',
  what: string,
): string {
  if (!isUtf8(bytes)) {
    throw new AppError(
      code,
      `${what} is not valid UTF-8; send UTF-8 text (or binary data in a body)`,
    )
  }
  return bytes.toString('utf8')
}

function fail(message: string): never {
  throw new AppError('E_TNETSTRING', message)
}

const UTF8_KEYS: Required<TnetParseOptions> = { strings: 'utf8', maxDepth: 32 }

// Dict keys are always text; reuse one options object rather than allocating one per key.
function keyOptions(opts: Required<TnetParseOptions>): Required<TnetParseOptions> {
  return opts.strings === 'utf8' ? opts : { ...UTF8_KEYS, maxDepth: opts.maxDepth }
}

function parseAt(
  buf: Buffer,
  offset: number,
  opts: Required<TnetParseOptions>,
  depth: number,
): Parsed<TnetValue> {
  const { length, start } = parseLengthPrefix(buf, offset, 'E_TNETSTRING', 'tnetstring')
  const end = start + length
  if (end >= buf.length)
    fail(
      `tnetstring at offset ${offset} has no type tag after its ${length} bytes; the message is truncated`,
    )
  const tag = buf[end]!
  const next = end + 1
  if (tag === TAG_STRING && opts.strings === 'utf8') {
    // Header strings are nearly always ASCII: decode in place without making a view first.
    let ascii = true
    for (let i = start; i < end; i++) {
      if (buf[i]! > 0x7f) {
        ascii = false
        break
      }
    }
    if (ascii) return { value: buf.toString('latin1', start, end), next }
  }
  const payload = buf.subarray(start, end)
  switch (tag) {
    case TAG_STRING:
      return {
        value:
          opts.strings === 'buffer'
            ? payload
            : decodeUtf8(payload, 'E_TNETSTRING', `string at offset ${offset}`),
        next,
      }
    case TAG_INT: {
      const text = payload.toString('latin1')
      const n = Number(text)
      if (!INT_RE.test(text) || !Number.isSafeInteger(n))
        fail(
          `integer at offset ${offset} must be a decimal safe integer, got "${text.slice(0, 40)}"`,
        )
      return { value: n, next }
    }
    case TAG_FLOAT: {
      const text = payload.toString('latin1')
      const n = Number(text)
      if (!FLOAT_RE.test(text) || !Number.isFinite(n))
        fail(
          `float at offset ${offset} must be a finite decimal number, got "${text.slice(0, 40)}"`,
        )
      return { value: n, next }
    }
    case TAG_BOOL: {
      const text = payload.toString('latin1')
      if (text !== 'true' && text !== 'false')
        fail(`boolean at offset ${offset} must be "true" or "false", got "${text.slice(0, 40)}"`)
      return { value: text === 'true', next }
    }
    case TAG_NULL:
      if (length !== 0) fail(`null at offset ${offset} must be empty ("0:~"), got ${length} bytes`)
      return { value: null, next }
    case TAG_LIST:
    case TAG_DICT: {
      if (depth >= opts.maxDepth)
        fail(
          `tnetstring nests deeper than ${opts.maxDepth} levels at offset ${offset}; flatten the data`,
        )
      // Parse the payload as its own buffer so a child cannot read past its parent's end.
      const isDict = tag === TAG_DICT
      const list: TnetValue[] = []
      const dict: { [key: string]: TnetValue } = {}
      let i = 0
      while (i < payload.length) {
        if (isDict) {
          const key = parseAt(payload, i, keyOptions(opts), depth + 1)
          if (typeof key.value !== 'string' || payload[key.next - 1] !== TAG_STRING) {
            fail(`dict at offset ${offset} has a key that is not a string; keys must be tagged ","`)
          }
          if (key.next >= payload.length) {
            fail(`dict at offset ${offset} has key "${key.value.slice(0, 40)}" with no value`)
          }
          const value = parseAt(payload, key.next, opts, depth + 1)
          if (key.value === '__proto__') {
            // stored as data, not as the prototype
            Object.defineProperty(dict, key.value, {
              value: value.value,
              enumerable: true,
              writable: true,
              configurable: true,
            })
          } else {
            dict[key.value] = value.value
          }
          i = value.next
        } else {
          const item = parseAt(payload, i, opts, depth + 1)
          list.push(item.value)
          i = item.next
        }
      }
      return { value: isDict ? dict : list, next }
    }
    default:
      return fail(
        `tnetstring at offset ${offset} has unknown type tag 0x${tag.toString(16)}; expected one of , # ^ ! ~ } ]`,
      )
  }
}

/** Parses one tnetstring at `offset`; returns the value and the offset just past it. */
export function parseTnetstring(
  buf: Buffer,
  offset = 0,
  options: TnetParseOptions = {},
): Parsed<TnetValue> {
  return parseAt(
    buf,
    offset,
    { strings: options.strings ?? 'utf8', maxDepth: options.maxDepth ?? 32 },
    0,
  )
}

function frame(payload: Buffer, tag: number): Buffer {
  const prefix = `${payload.length}:`
  const out = Buffer.allocUnsafe(prefix.length + payload.length + 1)
  out.write(prefix, 0, 'latin1')
  payload.copy(out, prefix.length)
  out[out.length - 1] = tag
  return out
}

function checkNumber(value: number): string {
  if (!Number.isFinite(value)) {
    throw new AppError(
      'E_TNETSTRING',
      `cannot encode ${value}: tnetstrings have only finite numbers`,
    )
  }
  if (Number.isInteger(value) && !Number.isSafeInteger(value)) {
    throw new AppError(
      'E_TNETSTRING',
      `cannot encode ${value}: integers must be safe (|n| <= 2^53 - 1)`,
    )
  }
  return String(value)
}

function tooDeep(): never {
  throw new AppError(
    'E_TNETSTRING',
    'value nests deeper than 64 levels (or is circular); flatten it',
  )
}

function badType(value: unknown): never {
  throw new AppError(
    'E_TNETSTRING',
    `cannot encode a value of type ${typeof value}; use string, Buffer, number, boolean, null, array or object`,
  )
}

// The fast path: everything but Buffers encodes as text, tracked with its UTF-8 byte length, so a
// header dict becomes one string and one Buffer instead of a Buffer per value.
interface Text {
  text: string
  bytes: number
}

function hasBuffer(value: TnetValue, depth: number): boolean {
  if (depth > 64) tooDeep()
  if (Buffer.isBuffer(value)) return true
  if (Array.isArray(value)) return value.some((v) => hasBuffer(v, depth + 1))
  if (typeof value === 'object' && value !== null) {
    for (const k in value) if (hasBuffer(value[k]!, depth + 1)) return true
  }
  return false
}

function textFrame(inner: string, bytes: number, tag: string): Text {
  const prefix = `${bytes}:`
  return { text: prefix + inner + tag, bytes: prefix.length + bytes + 1 }
}

function encodeText(value: TnetValue): Text {
  if (typeof value === 'string') return textFrame(value, Buffer.byteLength(value), ',')
  if (typeof value === 'number') {
    const text = checkNumber(value)
    return textFrame(text, text.length, Number.isInteger(value) ? '#' : '^')
  }
  if (typeof value === 'boolean')
    return value ? { text: '4:true!', bytes: 7 } : { text: '5:false!', bytes: 8 }
  if (value === null) return { text: '0:~', bytes: 3 }
  let inner = ''
  let bytes = 0
  if (Array.isArray(value)) {
    for (const v of value) {
      const e = encodeText(v)
      inner += e.text
      bytes += e.bytes
    }
    return textFrame(inner, bytes, ']')
  }
  if (typeof value === 'object' && !Buffer.isBuffer(value)) {
    for (const k in value) {
      const key = textFrame(k, Buffer.byteLength(k), ',')
      const v = encodeText(value[k]!)
      inner += key.text + v.text
      bytes += key.bytes + v.bytes
    }
    return textFrame(inner, bytes, '}')
  }
  return badType(value)
}

function encodeAt(value: TnetValue): Buffer {
  if (typeof value === 'string') return frame(Buffer.from(value, 'utf8'), TAG_STRING)
  if (Buffer.isBuffer(value)) return frame(value, TAG_STRING)
  if (typeof value === 'number' || typeof value === 'boolean' || value === null) {
    return Buffer.from(encodeText(value).text, 'latin1')
  }
  if (Array.isArray(value)) return frame(Buffer.concat(value.map((v) => encodeAt(v))), TAG_LIST)
  if (typeof value === 'object') {
    const parts: Buffer[] = []
    for (const k in value)
      parts.push(frame(Buffer.from(k, 'utf8'), TAG_STRING), encodeAt(value[k]!))
    return frame(Buffer.concat(parts), TAG_DICT)
  }
  return badType(value)
}

/** Encodes a value; integers get "#", other finite numbers "^", strings and Buffers ",". */
export function encodeTnetstring(value: TnetValue): Buffer {
  return hasBuffer(value, 0) ? encodeAt(value) : Buffer.from(encodeText(value).text, 'utf8')
}
