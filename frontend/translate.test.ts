import t, { type Test } from 'tap'
import { encodeJsonRequest, encodeRequest } from '../lib/protocol/mongrel2.js'
import { buildHeaders, headersJson, type TranslateOptions } from './translate.js'

const OPTS: TranslateOptions = {
  pattern: '/app/',
  scheme: 'http',
  noClobberXff: false,
  maxHeaders: 1280,
}

/** The concatenating path against JSON.stringify of the object path, for one request. */
function same(
  t: Test,
  req: { method: string; url: string; query?: string; headers: [string, string][] },
  opts = OPTS,
): void {
  const names = req.headers.map(([n]) => n)
  const values = req.headers.map(([, v]) => v)
  const fast = headersJson(
    req.method,
    req.url,
    req.query,
    names,
    values,
    names.length,
    '10.0.0.7',
    opts,
  )
  const slow = buildHeaders({ ...req, query: req.query, remoteAddr: '10.0.0.7' }, opts)
  t.ok(fast, 'the fast path takes it')
  t.equal(fast!.json, JSON.stringify(slow.headers))
  t.equal(fast!.path, slow.path)
  // eslint-disable-next-line no-control-regex -- ASCII is the range to test
  if (fast!.ascii) t.match(fast!.json, /^[\x00-\x7f]*$/, 'ascii only when it says so')
  const want = encodeRequest({
    sender: 'sender-1',
    connId: 42,
    path: slow.path,
    headers: slow.headers,
    body: Buffer.alloc(0),
    format: 'json',
  })
  t.same(
    encodeJsonRequest('sender-1', 42, fast!.path, fast!.json, Buffer.alloc(0), fast!.ascii),
    want,
  )
  t.same(encodeJsonRequest('sender-1', 42, fast!.path, fast!.json, Buffer.alloc(0)), want)
}

t.test('header JSON built by concatenation is what JSON.stringify gives', async (t) => {
  same(t, { method: 'GET', url: '/app/x', headers: [['host', 'example.com']] })
  same(t, {
    method: 'GET',
    url: '/app/x#frag',
    query: 'a=1&b="2"',
    headers: [
      ['host', 'example.com'],
      ['accept', 'text/html'],
      ['cookie', 'a=1'],
      ['cookie', 'b=2'],
      ['x-forwarded-for', '1.2.3.4'],
      ['cookie', 'c=3'],
      ['user-agent', 'tab\there "quoted" back\\slash \u0001 é ✓'],
    ],
  })
  same(t, { method: 'HEAD', url: '/app/', query: 'q#f', headers: [] })
})

t.test('plain ASCII requests are flagged so, and the flag follows each request', async (t) => {
  const run = (value: string) =>
    headersJson('GET', '/app/', undefined, ['host'], [value], 1, '10.0.0.7', OPTS)!
  t.equal(run('example.com').ascii, true)
  t.equal(run('é').ascii, false)
  t.equal(run('a "quote"').ascii, false)
  t.equal(run('example.com').ascii, true, 'a later plain request is plain again')
  const other = headersJson('GET', '/app/', undefined, [], [], 0, '10.0.0.8', {
    ...OPTS,
    pattern: '/app/ü',
  })!
  t.equal(other.ascii, false, 'a route pattern outside ASCII (the cached tail) counts')
  t.equal(run('example.com').ascii, true)
  t.equal(
    headersJson('GET', '/app/', undefined, [], [], 0, '10.0.0.8', { ...OPTS, pattern: '/app/ü' })!
      .ascii,
    false,
    'and counts again when the tail comes from the cache',
  )
})

t.test('repeats: a list at the first place, at most 5 values', async (t) => {
  const headers: [string, string][] = []
  for (let i = 0; i < 8; i++) headers.push(['x-dup', `v${i}`], ['x-other', `o${i}`])
  same(t, { method: 'GET', url: '/app/', headers })
})

t.test('x-forwarded-for, clobbered or kept', async (t) => {
  const headers: [string, string][] = [
    ['host', 'h'],
    ['x-forwarded-for', '9.9.9.9'],
    ['x-forwarded-for', '8.8.8.8'],
  ]
  same(t, { method: 'GET', url: '/app/', headers })
  same(t, { method: 'GET', url: '/app/', headers }, { ...OPTS, noClobberXff: true })
  same(
    t,
    { method: 'GET', url: '/app/', headers: [['host', 'h']] },
    { ...OPTS, noClobberXff: true },
  )
})

t.test('limits.header_count cuts the list as the object path does', async (t) => {
  const headers: [string, string][] = [
    ['a', '1'],
    ['x-forwarded-for', '2'],
    ['b', '3'],
    ['a', '4'],
  ]
  for (const maxHeaders of [0, 1, 2, 3, 4]) {
    same(t, { method: 'GET', url: '/app/', headers }, { ...OPTS, maxHeaders })
    same(t, { method: 'GET', url: '/app/', headers }, { ...OPTS, maxHeaders, noClobberXff: true })
  }
})

t.test('random requests', async (t) => {
  const pool = ['host', 'accept', 'cookie', 'x-forwarded-for', 'x-a', 'path', 'method']
  const chars = ['a', 'Z', ' ', '"', '\\', '\n', '\u001f', '\u007f', 'é', '\u2028', '😀']
  let seed = 7
  const rand = (n: number): number => {
    seed = (seed * 1103515245 + 12345) % 2147483648
    return seed % n
  }
  for (let i = 0; i < 300; i++) {
    const headers: [string, string][] = []
    const n = rand(12)
    for (let k = 0; k < n; k++) {
      let v = ''
      for (let c = rand(6); c > 0; c--) v += chars[rand(chars.length)]
      headers.push([pool[rand(pool.length)]!, v])
    }
    same(
      t,
      { method: 'GET', url: '/app/p', query: rand(2) ? undefined : 'x=y', headers },
      { ...OPTS, noClobberXff: rand(2) === 0, maxHeaders: rand(3) === 0 ? rand(8) : 1280 },
    )
  }
})

t.test('names an object would reorder or drop, and long lists, go the object path', async (t) => {
  const run = (names: string[]): unknown =>
    headersJson('GET', '/', undefined, names, names, names.length, '1.1.1.1', OPTS)
  t.equal(run(['host', '123']), undefined)
  t.equal(run(['__proto__']), undefined)
  t.equal(run(Array.from({ length: 33 }, (_, i) => `h${i}`)), undefined)
  t.ok(run(Array.from({ length: 32 }, (_, i) => `h${i}`)))
})
