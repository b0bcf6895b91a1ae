import t from 'tap'
import { encodeNetstring, parseNetstring } from './netstring.js'

t.test('good netstrings', async (t) => {
  const good: [string, string, string, number][] = [
    ['EMPTY', '0:,', '', 3],
    ['HELLO', '5:hello,', 'hello', 8],
    ['TRAILING DATA KEPT', '3:abc,rest', 'abc', 6],
    ['BINARY', '3:\x00\xff,,', '\x00\xff,', 6],
    ['COLON AND COMMA INSIDE', '4::,:,,', ':,:,', 7],
  ]
  for (const [name, input, value, next] of good) {
    const r = parseNetstring(Buffer.from(input, 'latin1'))
    t.equal(r.value.toString('latin1'), value, name)
    t.equal(r.next, next, `${name}: next`)
  }
  const at = parseNetstring(Buffer.from('xx2:ab,'), 2)
  t.equal(at.value.toString(), 'ab', 'parses at an offset')
})

t.test('bad netstrings', async (t) => {
  const bad: [string, string][] = [
    ['EMPTY INPUT', ''],
    ['NO COLON', '5hello,'],
    ['NO LENGTH', ':hello,'],
    ['NOT A NUMBER', 'x:hello,'],
    ['NEGATIVE', '-1:a,'],
    ['LEADING ZERO', '05:hello,'],
    ['TOO SHORT', '6:hello,'],
    ['TOO LONG', '4:hello,'],
    ['MISSING COMMA', '5:hello'],
    ['WRONG TERMINATOR', '5:hello;'],
    ['HUGE DECLARED SIZE', '9999999999:x,'],
    ['TOO MANY DIGITS', '99999999999:x,'],
    ['ONLY DIGITS', '12345'],
  ]
  for (const [name, input] of bad) {
    t.throws(() => parseNetstring(Buffer.from(input, 'latin1')), { code: 'E_NETSTRING' }, name)
  }
})

t.test('encode round-trips', async (t) => {
  for (const s of ['', 'a', 'hello world', 'ü€', 'x'.repeat(100_000)]) {
    const enc = encodeNetstring(s)
    t.equal(enc.toString('utf8', 0, enc.indexOf(':')), String(Buffer.byteLength(s)))
    t.equal(parseNetstring(enc).value.toString('utf8'), s)
  }
  const bin = Buffer.from([0, 1, 2, 255])
  t.same(parseNetstring(encodeNetstring(bin)).value, bin, 'binary payload')
})
