import t from 'tap'
import { encodeTnetstring, parseTnetstring, type TnetValue } from './tnetstring.js'

t.test('every type decodes', async (t) => {
  const good: [string, string, TnetValue][] = [
    ['STRING', '5:hello,', 'hello'],
    ['EMPTY STRING', '0:,', ''],
    ['INT', '2:42#', 42],
    ['NEGATIVE INT', '3:-17#', -17],
    ['ZERO', '1:0#', 0],
    ['FLOAT', '4:3.25^', 3.25],
    ['NEGATIVE FLOAT', '5:-1e-7^', -1e-7],
    ['TRUE', '4:true!', true],
    ['FALSE', '5:false!', false],
    ['NULL', '0:~', null],
    ['EMPTY LIST', '0:]', []],
    ['LIST', '8:1:a,1:b,]', ['a', 'b']],
    ['EMPTY DICT', '0:}', {}],
    ['DICT', '16:6:METHOD,4:JSON,}', { METHOD: 'JSON' }],
    ['NESTED', '28:3:ctl,18:7:credits,5:16384#}]', ['ctl', { credits: 16384 }]],
    ['MIXED LIST', '20:1:1#0:~4:true!3:1.5^]', [1, null, true, 1.5]],
  ]
  for (const [name, input, value] of good) {
    t.same(parseTnetstring(Buffer.from(input, 'latin1')).value, value, name)
  }
  const utf = Buffer.concat([Buffer.from('5:'), Buffer.from('ü€'), Buffer.from(',')])
  t.equal(parseTnetstring(utf).value, 'ü€', 'UTF-8 STRING')
  const raw = parseTnetstring(Buffer.from('3:\x00\xff\x80,', 'latin1'), 0, {
    strings: 'buffer',
  }).value
  t.same(raw, Buffer.from([0, 0xff, 0x80]), 'strings as buffers keep any byte')
})

t.test('a dict key named __proto__ is data', async (t) => {
  const v = parseTnetstring(Buffer.from('18:9:__proto__,3:bad,}')).value as Record<string, unknown>
  t.equal(Object.getPrototypeOf(v), Object.prototype)
  t.equal(v['__proto__'], 'bad')
})

t.test('bad tnetstrings', async (t) => {
  const bad: [string, string][] = [
    ['EMPTY INPUT', ''],
    ['NO TAG', '5:hello'],
    ['UNKNOWN TAG', '5:hello?'],
    ['TOO SHORT', '6:hello,'],
    ['HUGE DECLARED SIZE', '9999999999:x,'],
    ['LEADING ZERO', '01:a,'],
    ['BAD INT', '2:4x#'],
    ['EMPTY INT', '0:#'],
    ['UNSAFE INT', '17:99999999999999999#'],
    ['BAD FLOAT', '3:1.x^'],
    ['INFINITE FLOAT', '8:Infinity^'],
    ['BAD BOOL', '3:yes!'],
    ['NON-EMPTY NULL', '1:x~'],
    ['NON-UTF-8 STRING', '2:\xff\xfe,'],
    ['DICT KEY NOT A STRING', '6:1:1#0:~}'],
    ['DICT KEY WITHOUT VALUE', '4:1:a,}'],
    ['CHILD OVERRUNS PARENT', '5:9:a,]'],
    ['GARBAGE IN LIST', '3:abc]'],
    ['TOO DEEP', `${'2:'.repeat(0)}${nest(40)}`],
  ]
  for (const [name, input] of bad) {
    t.throws(() => parseTnetstring(Buffer.from(input, 'latin1')), { code: 'E_TNETSTRING' }, name)
  }
})

function nest(depth: number): string {
  let s = '0:]'
  for (let i = 0; i < depth; i++) s = `${s.length}:${s}]`
  return s
}

t.test('encode round-trips', async (t) => {
  const values: TnetValue[] = [
    'hello',
    '',
    'ü€',
    0,
    -5,
    Number.MAX_SAFE_INTEGER,
    2.5,
    -0.125,
    true,
    false,
    null,
    [],
    {},
    ['a', ['b', ['c']], { k: [1, 2, { z: null }] }],
    { METHOD: 'JSON', DOWNLOAD_CREDITS: '76' },
  ]
  for (const v of values) t.same(parseTnetstring(encodeTnetstring(v)).value, v, JSON.stringify(v))
  t.equal(
    encodeTnetstring(['ctl', { credits: 16384 }]).toString(),
    '28:3:ctl,18:7:credits,5:16384#}]',
  )
  t.same(
    encodeTnetstring(Buffer.from([1, 2])),
    Buffer.from('2:\x01\x02,', 'latin1'),
    'Buffer as string',
  )
  t.throws(() => encodeTnetstring(Number.NaN), { code: 'E_TNETSTRING' }, 'NaN')
  t.throws(() => encodeTnetstring(2 ** 60), { code: 'E_TNETSTRING' }, 'unsafe integer')
  const circular: TnetValue[] = []
  circular.push(circular)
  t.throws(() => encodeTnetstring(circular), { code: 'E_TNETSTRING' }, 'circular')
})

t.test('random garbage never crashes or hangs', async (t) => {
  let seed = 12345
  const rand = (n: number): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31
    return seed % n
  }
  const alphabet = Buffer.from('0123456789:,#^!~}]-.etrufalsx')
  let threw = 0
  for (let i = 0; i < 3000; i++) {
    const buf = Buffer.alloc(rand(40))
    for (let j = 0; j < buf.length; j++) buf[j] = alphabet[rand(alphabet.length)]!
    try {
      parseTnetstring(buf)
    } catch (err) {
      if ((err as { code?: string }).code !== 'E_TNETSTRING') throw err
      threw++
    }
  }
  t.ok(threw > 0, `${threw} of 3000 random inputs rejected with E_TNETSTRING, none crashed`)
})
