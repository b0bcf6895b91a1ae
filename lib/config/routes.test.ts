import t from 'tap'
import {
  checkEndpoint,
  checkPort,
  checkSendIdent,
  encodeRouteTable,
  parseRouteTable,
  type RouteTable,
} from './routes.js'

/** A full table: every field set, every kind of target, several hosts and servers. */
const FULL: RouteTable = {
  servers: [
    {
      uuid: 'f400bf85-4538-4f7a-8908-67e313d515c2',
      name: 'main',
      bindAddr: '127.0.0.1',
      port: 6767,
      chroot: './',
      defaultHost: 'localhost',
      hosts: [
        {
          name: 'localhost',
          matching: 'localhost',
          routes: {
            '/': {
              kind: 'handler',
              sendSpec: 'tcp://127.0.0.1:9999',
              sendIdent: 'c0ffee00-0000-4000-8000-00000000a001',
              recvSpec: 'tcp://127.0.0.1:9998',
              recvIdent: '',
              protocol: 'json',
              rawPayload: false,
            },
            '/pat/([a-z]+)$': {
              kind: 'handler',
              sendSpec: 'ipc://run/send',
              sendIdent: 'tnet',
              recvSpec: 'inproc://recv',
              recvIdent: 'tnet',
              protocol: 'tnetstring',
              rawPayload: true,
            },
            '/static/': {
              kind: 'dir',
              base: 'static/',
              indexFile: 'index.html',
              defaultCtype: 'text/plain',
              cacheTtl: 60,
            },
            '/site/': {
              kind: 'dir',
              base: 'public/',
              indexFile: 'index.html',
              defaultCtype: 'application/octet-stream',
              cacheTtl: 0,
              slug: { app: 'site', sha256: 'b'.repeat(64), size: 4096, release: 3 },
            },
          },
        },
        {
          name: 'api',
          matching: 'api.example.com',
          routes: {
            '/': {
              kind: 'proxy',
              backends: [
                { addr: '127.0.0.1', port: 8080 },
                { addr: '10.0.0.2', port: 8081 },
              ],
            },
          },
        },
      ],
      accessLog: '/logs/access.log',
      errorLog: '/logs/error.log',
      pidFile: '/run/mongrel2.pid',
      controlPort: 'ipc://run/control',
      useSsl: false,
    },
    {
      uuid: 'second',
      name: 'second',
      bindAddr: '0.0.0.0',
      port: 0,
      chroot: '',
      defaultHost: 'only',
      hosts: [{ name: 'only', matching: 'only', routes: {} }],
    },
  ],
  settings: { 'limits.content_length': 20480, 'upload.temp_store': '/uploads/upload.XXXXXX' },
  mimetypes: { '.txt': 'text/plain' },
}

/** The smallest valid table: defaults fill the rest. */
const MINIMAL = {
  servers: [
    {
      uuid: 'u',
      name: 'main',
      port: 80,
      defaultHost: 'h',
      hosts: [
        {
          name: 'h',
          routes: {
            '/': { kind: 'handler', sendSpec: 'tcp://*:1', sendIdent: 'id', recvSpec: 'tcp://*:2' },
            '/d/': { kind: 'dir', base: 'd/', indexFile: 'i.html', defaultCtype: 'text/html' },
          },
        },
      ],
    },
  ],
}

t.test('a full table parses to itself', async (t) => {
  t.same(parseRouteTable(structuredClone(FULL)), FULL)
})

t.test('defaults are filled in', async (t) => {
  const parsed = parseRouteTable(structuredClone(MINIMAL))
  t.same(parsed, {
    servers: [
      {
        uuid: 'u',
        name: 'main',
        bindAddr: '0.0.0.0',
        port: 80,
        chroot: '',
        defaultHost: 'h',
        hosts: [
          {
            name: 'h',
            matching: 'h',
            routes: {
              '/': {
                kind: 'handler',
                sendSpec: 'tcp://*:1',
                sendIdent: 'id',
                recvSpec: 'tcp://*:2',
                recvIdent: '',
                protocol: 'json',
                rawPayload: false,
              },
              '/d/': {
                kind: 'dir',
                base: 'd/',
                indexFile: 'i.html',
                defaultCtype: 'text/html',
                cacheTtl: 0,
              },
            },
          },
        ],
      },
    ],
    settings: {},
    mimetypes: {},
  })
  t.notOk('accessLog' in parsed.servers[0]!, 'absent optional fields stay absent')
})

t.test('encode then parse round-trips', async (t) => {
  const tables: [string, RouteTable][] = [
    ['FULL', FULL],
    ['MINIMAL', parseRouteTable(structuredClone(MINIMAL))],
    ['EMPTY', { servers: [], settings: {}, mimetypes: {} }],
  ]
  for (const [name, table] of tables) {
    const json = encodeRouteTable(table)
    t.same(parseRouteTable(JSON.parse(json)), table, name)
    t.equal(encodeRouteTable(parseRouteTable(JSON.parse(json))), json, `${name} encodes stably`)
  }
  t.equal(
    encodeRouteTable(FULL, { indent: 2 }),
    JSON.stringify(JSON.parse(encodeRouteTable(FULL)), null, 2),
    'indent for files',
  )
})

t.test('encode writes only the known fields', async (t) => {
  const table = parseRouteTable(structuredClone(MINIMAL))
  const extra = { ...table, junk: 1 } as unknown as RouteTable
  const json = JSON.parse(encodeRouteTable(extra)) as Record<string, unknown>
  t.same(Object.keys(json), ['servers', 'settings', 'mimetypes'])
})

t.test('keys that look like prototypes are plain data', async (t) => {
  const json = JSON.parse(
    '{"servers":[{"uuid":"u","name":"n","port":1,"defaultHost":"h","hosts":[{"name":"h",' +
      '"routes":{"__proto__":{"kind":"dir","base":"b/","indexFile":"i","defaultCtype":"c"}}}]}],' +
      '"settings":{"__proto__":"x"},"mimetypes":{"__proto__":"y"}}',
  ) as unknown
  const parsed = parseRouteTable(json)
  const routes = parsed.servers[0]!.hosts[0]!.routes
  t.equal(Object.getPrototypeOf(routes), Object.prototype)
  t.same(Object.keys(routes), ['__proto__'])
  t.equal(Object.getPrototypeOf(parsed.settings), Object.prototype)
  t.equal(parsed.settings['__proto__'], 'x')
  t.same(parseRouteTable(JSON.parse(encodeRouteTable(parsed))), parsed, 'and round-trip')
})

/** A copy of FULL, as JSON, with the value at `path` replaced (or deleted, for undefined). */
function bad(path: (string | number)[], value: unknown): unknown {
  const copy: unknown = structuredClone(FULL)
  let node = copy as Record<string | number, unknown>
  for (const key of path.slice(0, -1)) node = node[key] as Record<string | number, unknown>
  const last = path[path.length - 1]!
  if (value === undefined) delete node[last]
  else node[last] = value
  return copy
}

const A_TARGET = { kind: 'proxy', backends: [{ addr: 'a', port: 1 }] }

t.test('bad tables are E_ROUTES and name the bad field', async (t) => {
  const cases: [string, unknown, RegExp][] = [
    ['NOT AN OBJECT', [], /route table must be an object/],
    ['NULL', null, /route table must be an object/],
    ['NO SERVERS', {}, /^servers must be a list, got nothing/],
    ['SERVERS NOT A LIST', { servers: {} }, /^servers must be a list/],
    ['UNKNOWN TOP-LEVEL FIELD', bad(['hosts'], []), /^hosts is not a field/],
    ['SNAKE CASE FIELD', bad(['servers', 0, 'bind_addr'], 'x'), /^servers\[0\]\.bind_addr /],
    ['SERVER NOT AN OBJECT', bad(['servers', 1], 'main'), /^servers\[1\] must be an object/],
    ['EMPTY UUID', bad(['servers', 0, 'uuid'], ''), /^servers\[0\]\.uuid /],
    ['MISSING NAME', bad(['servers', 0, 'name'], undefined), /^servers\[0\]\.name .*missing/],
    ['PORT TOO BIG', bad(['servers', 0, 'port'], 65536), /^servers\[0\]\.port /],
    ['NEGATIVE PORT', bad(['servers', 0, 'port'], -1), /^servers\[0\]\.port /],
    ['FRACTIONAL PORT', bad(['servers', 0, 'port'], 80.5), /^servers\[0\]\.port /],
    ['PORT AS STRING', bad(['servers', 0, 'port'], '80'), /^servers\[0\]\.port .*"80"/],
    ['BIND ADDR NUMBER', bad(['servers', 0, 'bindAddr'], 0), /^servers\[0\]\.bindAddr /],
    ['USE SSL AS NUMBER', bad(['servers', 0, 'useSsl'], 1), /^servers\[0\]\.useSsl /],
    ['ACCESS LOG NULL', bad(['servers', 0, 'accessLog'], null), /^servers\[0\]\.accessLog /],
    [
      'DEFAULT HOST NAMES NO HOST',
      bad(['servers', 0, 'defaultHost'], 'nope'),
      /^servers\[0\]\.defaultHost .*"localhost", "api"/,
    ],
    [
      'DEFAULT HOST IS A MATCHING, NOT A NAME',
      bad(['servers', 0, 'defaultHost'], 'api.example.com'),
      /^servers\[0\]\.defaultHost /,
    ],
    [
      'DUPLICATE SERVER NAME',
      bad(['servers', 1, 'name'], 'main'),
      /^servers\[1\]\.name "main" repeats servers\[0\]/,
    ],
    [
      'DUPLICATE HOST NAME',
      bad(['servers', 0, 'hosts', 1, 'name'], 'localhost'),
      /^servers\[0\]\.hosts\[1\]\.name /,
    ],
    [
      'DUPLICATE MATCHING',
      bad(['servers', 0, 'hosts', 1, 'matching'], 'localhost'),
      /^servers\[0\]\.hosts\[1\]\.matching /,
    ],
    ['HOSTS NOT A LIST', bad(['servers', 0, 'hosts'], {}), /^servers\[0\]\.hosts must be a list/],
    [
      'EMPTY HOST NAME',
      bad(['servers', 0, 'hosts', 0, 'name'], ''),
      /^servers\[0\]\.hosts\[0\]\.name /,
    ],
    [
      'EMPTY MATCHING',
      bad(['servers', 0, 'hosts', 0, 'matching'], ''),
      /^servers\[0\]\.hosts\[0\]\.matching /,
    ],
    [
      'NO ROUTES',
      bad(['servers', 0, 'hosts', 1, 'routes'], undefined),
      /^servers\[0\]\.hosts\[1\]\.routes /,
    ],
    [
      'EMPTY ROUTE STRING',
      bad(['servers', 0, 'hosts', 1, 'routes', ''], A_TARGET),
      /^servers\[0\]\.hosts\[1\]\.routes\[""\]/,
    ],
    [
      'MALFORMED PATTERN',
      bad(['servers', 0, 'hosts', 1, 'routes', '/x([a-z'], A_TARGET),
      /^servers\[0\]\.hosts\[1\]\.routes\["\/x\(\[a-z"\]/,
    ],
    [
      'TARGET NOT AN OBJECT',
      bad(['servers', 0, 'hosts', 1, 'routes', '/x'], 'app'),
      /^servers\[0\]\.hosts\[1\]\.routes\["\/x"\] must be an object/,
    ],
    [
      'MISSING KIND',
      bad(['servers', 0, 'hosts', 0, 'routes', '/', 'kind'], undefined),
      /^servers\[0\]\.hosts\[0\]\.routes\["\/"\]\.kind /,
    ],
    [
      'UNKNOWN KIND',
      bad(['servers', 0, 'hosts', 0, 'routes', '/', 'kind'], 'Handler'),
      /\.kind must be 'handler', 'dir', 'proxy' or 'releases', got "Handler"/,
    ],
    [
      'FIELD OF ANOTHER KIND',
      bad(['servers', 0, 'hosts', 0, 'routes', '/', 'base'], 'x/'),
      /routes\["\/"\]\.base is not a field/,
    ],
    [
      'HTTP SEND SPEC',
      bad(['servers', 0, 'hosts', 0, 'routes', '/', 'sendSpec'], 'http://127.0.0.1:9999'),
      /routes\["\/"\]\.sendSpec must be a ZeroMQ endpoint/,
    ],
    [
      'TCP SEND SPEC WITHOUT PORT',
      bad(['servers', 0, 'hosts', 0, 'routes', '/', 'sendSpec'], 'tcp://127.0.0.1'),
      /\.sendSpec /,
    ],
    [
      'TCP SEND SPEC PORT TOO BIG',
      bad(['servers', 0, 'hosts', 0, 'routes', '/', 'sendSpec'], 'tcp://127.0.0.1:70000'),
      /\.sendSpec /,
    ],
    [
      'BAD RECV SPEC',
      bad(['servers', 0, 'hosts', 0, 'routes', '/', 'recvSpec'], '127.0.0.1:9998'),
      /\.recvSpec /,
    ],
    [
      'EMPTY SEND IDENT',
      bad(['servers', 0, 'hosts', 0, 'routes', '/', 'sendIdent'], ''),
      /\.sendIdent /,
    ],
    [
      'SEND IDENT WITH A SPACE',
      bad(['servers', 0, 'hosts', 0, 'routes', '/', 'sendIdent'], 'a b'),
      /\.sendIdent /,
    ],
    [
      'RECV IDENT NUMBER',
      bad(['servers', 0, 'hosts', 0, 'routes', '/', 'recvIdent'], 0),
      /\.recvIdent /,
    ],
    [
      'BAD PROTOCOL',
      bad(['servers', 0, 'hosts', 0, 'routes', '/', 'protocol'], 'xml'),
      /\.protocol /,
    ],
    [
      'RAW PAYLOAD AS NUMBER',
      bad(['servers', 0, 'hosts', 0, 'routes', '/', 'rawPayload'], 1),
      /\.rawPayload /,
    ],
    [
      'DIR BASE WITHOUT SLASH',
      bad(['servers', 0, 'hosts', 0, 'routes', '/static/', 'base'], 'static'),
      /routes\["\/static\/"\]\.base must be a directory ending with '\/'/,
    ],
    [
      'DIR WITHOUT INDEX FILE',
      bad(['servers', 0, 'hosts', 0, 'routes', '/static/', 'indexFile'], undefined),
      /\.indexFile /,
    ],
    [
      'NEGATIVE CACHE TTL',
      bad(['servers', 0, 'hosts', 0, 'routes', '/static/', 'cacheTtl'], -1),
      /\.cacheTtl /,
    ],
    [
      'DIR SLUG WITH A SHORT SHA',
      bad(['servers', 0, 'hosts', 0, 'routes', '/static/', 'slug'], {
        app: 'site',
        sha256: 'abc',
        size: 10,
        release: 1,
      }),
      /routes\["\/static\/"\]\.slug\.sha256 must be 64 lowercase hex digits/,
    ],
    [
      'DIR SLUG WITHOUT RELEASE',
      bad(['servers', 0, 'hosts', 0, 'routes', '/static/', 'slug'], {
        app: 'site',
        sha256: 'a'.repeat(64),
        size: 10,
      }),
      /\.slug\.release /,
    ],
    [
      'PROXY WITHOUT BACKENDS',
      bad(['servers', 0, 'hosts', 1, 'routes', '/', 'backends'], []),
      /routes\["\/"\]\.backends must be at least one/,
    ],
    [
      'PROXY IN MONGREL2 FORM',
      bad(['servers', 0, 'hosts', 1, 'routes', '/'], { kind: 'proxy', addr: 'a', port: 1 }),
      /routes\["\/"\]\.addr is not a field/,
    ],
    [
      'PROXY BACKEND PORT',
      bad(['servers', 0, 'hosts', 1, 'routes', '/', 'backends', 1, 'port'], 99999),
      /routes\["\/"\]\.backends\[1\]\.port /,
    ],
    [
      'PROXY BACKEND WITHOUT ADDR',
      bad(['servers', 0, 'hosts', 1, 'routes', '/', 'backends', 0, 'addr'], undefined),
      /\.backends\[0\]\.addr /,
    ],
    ['SETTINGS A LIST', bad(['settings'], []), /^settings must be an object/],
    [
      'SETTING AN OBJECT',
      bad(['settings', 'limits.x'], {}),
      /^settings\["limits\.x"\] must be a string or a number/,
    ],
    ['SETTING INFINITE', bad(['settings', 'x'], Infinity), /^settings\.x /],
    ['MIMETYPE NUMBER', bad(['mimetypes', '.txt'], 1), /^mimetypes\["\.txt"\] /],
  ]
  for (const [name, json, message] of cases) {
    t.throws(() => parseRouteTable(json), { code: 'E_ROUTES', message }, name)
  }
})

t.test("releases: an app's releases side by side, checked and round-tripped", async (t) => {
  const handler = (port: number) => ({
    kind: 'handler',
    sendSpec: `tcp://127.0.0.1:${port}`,
    sendIdent: 'app-ident',
    recvSpec: `tcp://127.0.0.1:${port + 1}`,
  })
  const table = (target: unknown) => ({
    servers: [
      {
        uuid: 'u',
        name: 'bareku',
        port: 80,
        defaultHost: 'd',
        hosts: [{ name: 'd', routes: { '/': target } }],
      },
    ],
  })
  const parsed = parseRouteTable(
    table({
      kind: 'releases',
      app: 'shop',
      releases: [
        { release: 3, target: handler(9502) },
        { release: 2, target: A_TARGET },
      ],
    }),
  )
  const target = parsed.servers[0]!.hosts[0]!.routes['/']!
  t.match(target, {
    kind: 'releases',
    app: 'shop',
    minReady: 1,
    releases: [
      { release: 3, target: { kind: 'handler', recvIdent: '', protocol: 'json' } },
      { release: 2, target: A_TARGET },
    ],
  })
  t.same(parseRouteTable(JSON.parse(encodeRouteTable(parsed))), parsed, 'round trip')
  const cases: [string, unknown, RegExp][] = [
    ['NO RELEASES', { kind: 'releases', app: 'a', releases: [] }, /releases must be at least one/],
    [
      'A DIR',
      { kind: 'releases', app: 'a', releases: [{ release: 1, target: { kind: 'dir' } }] },
      /releases\[0\]\.target/,
    ],
    [
      'RELEASE 0',
      { kind: 'releases', app: 'a', releases: [{ release: 0, target: A_TARGET }] },
      /releases\[0\]\.release must be a release number/,
    ],
    [
      'TWICE',
      {
        kind: 'releases',
        app: 'a',
        releases: [
          { release: 1, target: A_TARGET },
          { release: 1, target: A_TARGET },
        ],
      },
      /repeats/,
    ],
    [
      'NESTED',
      {
        kind: 'releases',
        app: 'a',
        releases: [{ release: 1, target: { kind: 'releases', app: 'a', releases: [] } }],
      },
      /releases must be at least one|target\.kind must be 'handler' or 'proxy'/,
    ],
    ['NO APP', { kind: 'releases', releases: [{ release: 1, target: A_TARGET }] }, /\.app must be/],
    [
      'MIN READY 0',
      { kind: 'releases', app: 'a', minReady: 0, releases: [{ release: 1, target: A_TARGET }] },
      /minReady must be/,
    ],
  ]
  for (const [name, target, message] of cases) {
    t.throws(() => parseRouteTable(table(target)), { code: 'E_ROUTES', message }, name)
  }
})

t.test('the shared rules', async (t) => {
  const endpoints: [string, boolean][] = [
    ['tcp://127.0.0.1:9999', true],
    ['tcp://*:5555', true],
    ['tcp://127.0.0.1:*', true],
    ['tcp://[::1]:9999', true],
    ['tcp://localhost:65535', true],
    ['ipc://run/control', true],
    ['ipc:///tmp/sock', true],
    ['inproc://x', true],
    ['tcp://127.0.0.1', false],
    ['tcp://127.0.0.1:65536', false],
    ['tcp://:', false],
    ['udp://127.0.0.1:1', false],
    ['ipc://', false],
    ['ipc://a b', false],
    ['', false],
  ]
  for (const [spec, ok] of endpoints) t.equal(checkEndpoint(spec) === undefined, ok, spec)
  const ports: [number, boolean][] = [
    [0, true],
    [65535, true],
    [65536, false],
    [-1, false],
    [1.5, false],
    [NaN, false],
  ]
  for (const [port, ok] of ports) t.equal(checkPort(port) === undefined, ok, `port ${port}`)
  t.equal(checkSendIdent('54c6755b-9628-40a4-9a2d-cc82a816345e'), undefined, 'uuid ident')
  t.type(checkSendIdent('a\tb'), 'string', 'ident with a tab')
})
