import { readFileSync } from 'node:fs'
import t from 'tap'
import { parseM2sh } from './m2sh.js'
import { compileRoutePattern, compileRoutes } from './match.js'
import type { HandlerTarget, HostSpec, RouteTable, ServerSpec, Target } from './routes.js'

const CONF = new URL('../../test/fixtures/mongrel2-vectors/mongrel2.conf', import.meta.url)

function handler(n: number): HandlerTarget {
  return {
    kind: 'handler',
    sendSpec: `tcp://127.0.0.1:${9000 + n}`,
    sendIdent: `handler${n}`,
    recvSpec: `tcp://127.0.0.1:${9500 + n}`,
    recvIdent: '',
    protocol: 'json',
    rawPayload: false,
  }
}

function hostSpec(name: string, routes: Record<string, Target>, matching = name): HostSpec {
  return { name, matching, routes }
}

function table(hosts: HostSpec[], extra: Partial<ServerSpec> = {}): RouteTable {
  const server: ServerSpec = {
    uuid: 'u-1',
    name: 'main',
    bindAddr: '127.0.0.1',
    port: 0,
    chroot: '',
    defaultHost: hosts[0]?.name ?? 'none',
    hosts,
    ...extra,
  }
  return { servers: [server], settings: {}, mimetypes: {} }
}

/** True when `path` matches route string `route` on its own. */
function matches(route: string, path: string): boolean {
  const { prefix, regex } = compileRoutePattern(route)
  if (!path.startsWith(prefix)) return false
  if (regex === undefined) return true
  regex.lastIndex = prefix.length
  return regex.test(path)
}

t.test('Lua-style patterns, as src/pattern.c reads them', async (t) => {
  const cases: [string, string, string, boolean][] = [
    ['END ANCHOR', '/pat/([a-z]+)$', '/pat/abc', true],
    ['END ANCHOR, UPPER CASE', '/pat/([a-z]+)$', '/pat/ABC', false],
    ['END ANCHOR, TRAILING SLASH', '/pat/([a-z]+)$', '/pat/abc/', false],
    ['ONE OR MORE, NONE', '/pat/([a-z]+)$', '/pat/', false],
    ['NO END ANCHOR', '/users/([0-9]+)', '/users/1234/testing', true],
    ['ANCHORED AT THE PREFIX', '/users/([0-9]+)', '/users/x1234', false],
    ['\\d', '/n/(\\d+)$', '/n/42', true],
    ['%d', '/n/(%d+)$', '/n/42', true],
    ['\\D', '/n/(\\D+)$', '/n/ab', true],
    ['\\D ON A DIGIT', '/n/(\\D+)$', '/n/a1', false],
    ['%a', '/n/(%a+)$', '/n/abXY', true],
    ['%A', '/n/(%A+)$', '/n/12-_', true],
    ['%l', '/n/(%l+)$', '/n/abC', false],
    ['%u', '/n/(%u+)$', '/n/ABC', true],
    ['%w', '/n/(%w+)$', '/n/aB3', true],
    ['%W', '/n/(%W)$', '/n/_', true],
    ['%x', '/n/(%x+)$', '/n/00fF', true],
    ['%x NOT G', '/n/(%x+)$', '/n/0g', false],
    ['%s', '/n/(a%sb)$', '/n/a b', true],
    ['%S', '/n/(a%Sb)$', '/n/a b', false],
    ['%p', '/n/(%p+)$', '/n/.-_~!', true],
    ['%p NOT A LETTER', '/n/(%p)$', '/n/a', false],
    ['%c', '/n/(%c)$', '/n/\t', true],
    ['\\z', '/n/(a\\z)$', '/n/a\0', true],
    ['DOT', '/n/(...)$', '/n/a/b', true],
    ['DOT IS ONE CHARACTER', '/n/(..)$', '/n/abc', false],
    ['ESCAPED DOT', '/f/(.*\\.json)$', '/f/a.json', true],
    ['ESCAPED DOT IS LITERAL', '/f/(.*\\.json)$', '/f/a_json', false],
    ['UNESCAPED DOT IS ANY', '/testsmulti/(.*.json)', '/testsmulti/a_json', true],
    ['%. AND %%', '/f/(%.%%)$', '/f/.%', true],
    ['SET RANGE', '/s/([a-c]+)$', '/s/abcab', true],
    ['SET RANGE, OUTSIDE', '/s/([a-c]+)$', '/s/abd', false],
    ['NEGATED SET', '/s/([^/]+)$', '/s/abc', true],
    ['NEGATED SET, SLASH', '/s/([^/]+)$', '/s/a/c', false],
    ['SET WITH A CLASS', '/s/([%d_]+)$', '/s/1_2', true],
    ['SET WITH A NEGATED CLASS', '/s/([%A]+)$', '/s/1_2', true],
    ['SET WITH A NEGATED CLASS, LETTER', '/s/([%A]+)$', '/s/1a', false],
    ['] FIRST IN A SET IS LITERAL', '/s/([]]+)$', '/s/]]', true],
    ['ESCAPED ] IN A SET', '/s/([\\]a]+)$', '/s/a]', true],
    ['TRAILING - IN A SET IS LITERAL', '/s/([a-]+)$', '/s/a-a', true],
    ['BACKWARD RANGE MATCHES NOTHING', '/s/([z-a])$', '/s/m', false],
    ['NEGATED BACKWARD RANGE MATCHES ALL', '/s/([^z-a])$', '/s/m', true],
    ['STAR', '/q/(ab*c)$', '/q/ac', true],
    ['STAR, MANY', '/q/(ab*c)$', '/q/abbbc', true],
    ['PLUS, NONE', '/q/(ab+c)$', '/q/ac', false],
    ['QUESTION', '/q/(ab?c)$', '/q/abc', true],
    ['QUESTION, TWO', '/q/(ab?c)$', '/q/abbc', false],
    ['MINUS IS LAZY STAR', '/cars-fast/([a-z]-)$', '/cars-fast/cadillac', true],
    ['MINUS IS NOT A DASH', '/w/(foo-bar)$', '/w/foo-bar', false],
    ['MINUS IS NOT A DASH, FOBAR', '/w/(foo-bar)$', '/w/fobar', true],
    ['MINUS IS NOT A DASH, FOOOBAR', '/w/(foo-bar)$', '/w/fooobar', true],
    ['ESCAPED DASH', '/w/(foo\\-bar)$', '/w/foo-bar', true],
    ['MANUAL EXAMPLE', '/images/(\\a-\\-\\d+\\.jpg)', '/images/abc-123.jpg', true],
    ['PARENS ONLY GROUP', '/g/(a)(b)$', '/g/ab', true],
    ['QUANTIFIER AFTER ) IS LITERAL', '/g/(a)*$', '/g/a*', true],
    ['QUANTIFIER AFTER ) IS LITERAL, AA', '/g/(a)*$', '/g/aa', false],
    ['$ NOT AT THE END IS LITERAL', '/d/(a$b)', '/d/a$b', true],
    ['LEADING ^ IS AN ANCHOR', '/x/(^ab)$', '/x/ab', true],
    ['LATER ^ IS LITERAL', '/x/(a^b)$', '/x/a^b', true],
    ['EXACT ROUTE', '/users()$', '/users', true],
    ['EXACT ROUTE, LONGER', '/users()$', '/users/1', false],
    ['PREFIX IS LITERAL', '/a.b/(x)', '/aXb/x', false],
    ['NON-ASCII IS NOT A LETTER', '/n/(%a)$', '/n/é', false],
  ]
  for (const [name, route, path, want] of cases) t.equal(matches(route, path), want, name)
})

t.test('malformed patterns are E_ROUTES', async (t) => {
  const bad: [string, string][] = [
    ['UNCLOSED SET', '/x([a-z)'],
    ['UNCLOSED NEGATED SET', '/x([^)'],
    ['ONLY ] IN A SET', '/x([])'],
    ['TRAILING BACKSLASH', '/x(abc\\'],
    ['TRAILING PERCENT', '/x(%'],
    ['BALANCED MATCH', '/x(%b())'],
    ['FRONTIER', '/x(\\f[a])'],
  ]
  for (const [name, route] of bad)
    t.throws(() => compileRoutePattern(route), { code: 'E_ROUTES' }, name)
  const routes = table([hostSpec('h', { '/x([a-z)': handler(1) })])
  t.throws(() => compileRoutes(routes), { code: 'E_ROUTES' }, 'compileRoutes reports it too')
})

t.test('routes: longest prefix, then its patterns (manual, "How Routing Works")', async (t) => {
  const m = compileRoutes(
    table([
      hostSpec('localhost', {
        '/': handler(0),
        '/users/([0-9]+)': handler(1),
        '/users': handler(2),
        '/users/people/([0-9]+)$': handler(3),
        '/cars-fast/([a-z]-)$': handler(4),
      }),
    ]),
  )
  const cases: [string, string | undefined][] = [
    ['/users/1234/testing', '/users/([0-9]+)'],
    ['/users', '/users'],
    ['/users/people/1234', '/users/people/([0-9]+)$'],
    ['/cars-fast/cadillac', '/cars-fast/([a-z]-)$'],
    ['/users/1234', '/users/([0-9]+)'],
    ['/', '/'],
    ['/usersBLAHAHAHAHA', '/users'],
    // Mongrel2 sends /us to '/users' (the start of a prefix); we do not.
    ['/us', '/'],
    // The longest prefix '/users/' has a pattern that fails: 404, not a shorter prefix.
    ['/users/abc', undefined],
    ['/users/people/x', undefined],
    ['/cars-fast/BMW', undefined],
    ['XRAY', undefined],
    ['', undefined],
  ]
  for (const [path, want] of cases) t.equal(m.match('localhost', path)?.routeKey, want, path)
})

t.test('several routes with one prefix: patterns in order, then the plain one', async (t) => {
  const m = compileRoutes(
    table([
      hostSpec('h', {
        '/u/': handler(3),
        '/u/(%d+)$': handler(1),
        '/u/(%a+)$': handler(2),
      }),
    ]),
  )
  t.equal(m.match('h', '/u/12')?.routeKey, '/u/(%d+)$')
  t.equal(m.match('h', '/u/ab')?.routeKey, '/u/(%a+)$')
  t.equal(m.match('h', '/u/a1')?.routeKey, '/u/')
  t.equal(m.match('h', '/u/')?.routeKey, '/u/')
  t.equal(m.match('h', '/v')?.routeKey, undefined)
})

t.test('a match carries the host, the whole route string and the target', async (t) => {
  const target = handler(7)
  const h = hostSpec('h', { '/app/(%d+)': target })
  const found = compileRoutes(table([h])).match('h', '/app/1')
  t.equal(found?.host, h)
  t.equal(found?.routeKey, '/app/(%d+)')
  t.equal(found?.target, target)
})

t.test('JSON socket routes never match an HTTP path', async (t) => {
  const m = compileRoutes(table([hostSpec('h', { '@chat': handler(1), '<xml': handler(2) })]))
  t.equal(m.match('h', '@chat'), undefined)
  t.equal(m.match('h', '<xml'), undefined)
  t.equal(m.match('h', '/'), undefined)
})

t.test('hosts: longest suffix of the Host header, else the default host', async (t) => {
  const m = compileRoutes(
    table(
      [
        hostSpec('fallback', { '/': handler(0) }),
        hostSpec('example', { '/': handler(1) }, 'example.com'),
        hostSpec('api', { '/': handler(2) }, 'api.example.com'),
        hostSpec('pattern', { '/': handler(3) }, '([a-z]+%.test)'),
        hostSpec('Upper', { '/': handler(4) }, 'UPPER.org'),
      ],
      { defaultHost: 'fallback' },
    ),
  )
  const cases: [string | undefined, string][] = [
    ['example.com', 'example'],
    ['www.example.com', 'example'],
    ['example.com:8080', 'example'],
    ['api.example.com', 'api'],
    ['v2.api.example.com', 'api'],
    ['API.Example.COM:443', 'api'],
    ['upper.org', 'Upper'],
    // A plain suffix match, as in Mongrel2: no dot boundary.
    ['badexample.com', 'example'],
    ['foo.test', 'pattern'],
    ['foo.bar.test', 'fallback'],
    ['other.org', 'fallback'],
    // Mongrel2 sends a host that is only the end of a matching string there too; we do not.
    ['com', 'fallback'],
    ['[::1]:8080', 'fallback'],
    ['', 'fallback'],
    [undefined, 'fallback'],
  ]
  for (const [header, want] of cases) {
    t.equal(m.match(header, '/')?.host.name, want, String(header))
  }
})

t.test('a host that matches but has no route gives undefined, not the default host', async (t) => {
  const m = compileRoutes(
    table([hostSpec('main', { '/': handler(0) }), hostSpec('api', { '/v1/': handler(1) })]),
  )
  t.equal(m.match('api', '/v1/x')?.routeKey, '/v1/')
  t.equal(m.match('api', '/'), undefined)
  t.equal(m.match('nobody', '/')?.host.name, 'main')
})

t.test('choosing the server', async (t) => {
  const one = table([hostSpec('h', { '/': handler(0) })])
  const two: RouteTable = {
    ...one,
    servers: [...one.servers, { ...one.servers[0]!, name: 'second', uuid: 'u-2', port: 1 }],
  }
  t.equal(compileRoutes(one).server.name, 'main', 'the only server')
  t.equal(compileRoutes(two, 'second').server.name, 'second', 'by name')
  t.equal(compileRoutes(two, 'u-2').server.name, 'second', 'by uuid')
  t.throws(() => compileRoutes(two), { code: 'E_ROUTES' }, 'TWO SERVERS, NONE NAMED')
  t.throws(() => compileRoutes(one, 'nope'), { code: 'E_ROUTES' }, 'NO SUCH SERVER')
  t.throws(
    () => compileRoutes({ servers: [], settings: {}, mimetypes: {} }),
    { code: 'E_ROUTES' },
    'NO SERVERS',
  )
  t.throws(
    () => compileRoutes(table([hostSpec('h', {})], { defaultHost: 'missing' })),
    { code: 'E_ROUTES' },
    'DEFAULT HOST NAMES NO HOST',
  )
})

t.test('the captured Mongrel2 config routes as the captures did', async (t) => {
  const m = compileRoutes(parseM2sh(readFileSync(CONF, 'utf8'), { file: 'mongrel2.conf' }), 'main')
  const cases: [string, string | undefined, string | undefined][] = [
    ['/hello/world.html', '/', 'c0ffee00-0000-4000-8000-00000000a001'],
    ['/tns/x', '/tns/', 'c0ffee00-0000-4000-8000-00000000a002'],
    ['/bench', '/bench', 'c0ffee00-0000-4000-8000-00000000b001'],
    ['/pat/abc', '/pat/([a-z]+)$', 'c0ffee00-0000-4000-8000-00000000a001'],
    ['/pat/123', undefined, undefined],
    // route_prefix_quirk: Mongrel2 sent /tn to '/tns/'; here it is '/'.
    ['/tn', '/', 'c0ffee00-0000-4000-8000-00000000a001'],
  ]
  for (const [path, route, ident] of cases) {
    const found = m.match('localhost:6767', path)
    t.equal(found?.routeKey, route, path)
    t.equal(found?.target.kind === 'handler' ? found.target.sendIdent : undefined, ident, path)
  }
  t.equal(m.match('elsewhere', '/bench')?.host.name, 'localhost', 'default host')
})
