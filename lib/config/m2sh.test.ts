import { readFileSync } from 'node:fs'
import t from 'tap'
import { parseM2sh } from './m2sh.js'
import { encodeRouteTable, parseRouteTable, type HandlerTarget } from './routes.js'

const CONF = new URL('../../test/fixtures/mongrel2-vectors/mongrel2.conf', import.meta.url)

function handler(send: number, sendIdent: string, extra: Partial<HandlerTarget> = {}) {
  return {
    kind: 'handler',
    sendSpec: `tcp://127.0.0.1:${send}`,
    sendIdent,
    recvSpec: `tcp://127.0.0.1:${send - 1}`,
    recvIdent: '',
    protocol: 'json',
    rawPayload: false,
    ...extra,
  }
}

t.test('the captured Mongrel2 config', async (t) => {
  const table = parseM2sh(readFileSync(CONF, 'utf8'), { file: 'mongrel2.conf' })
  const capJson = handler(9999, 'c0ffee00-0000-4000-8000-00000000a001')
  const capTnet = handler(9995, 'c0ffee00-0000-4000-8000-00000000a002', { protocol: 'tnetstring' })
  const bench = handler(9997, 'c0ffee00-0000-4000-8000-00000000b001')
  t.same(table, {
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
              '/': capJson,
              '/tns/': capTnet,
              '/bench': bench,
              '/pat/([a-z]+)$': capJson,
              '@chat': capJson,
            },
          },
        ],
        accessLog: '/logs/access.log',
        errorLog: '/logs/error.log',
        pidFile: '/run/mongrel2.pid',
        controlPort: 'ipc://run/control',
      },
    ],
    settings: {
      'server.daemonize': 0,
      'disable.access_logging': 1,
      'upload.temp_store': '/uploads/upload.XXXXXX',
      'upload.temp_store_mode': '0644',
      'zeromq.threads': 1,
    },
    mimetypes: {},
  })
  const routes = table.servers[0]!.hosts[0]!.routes
  t.same(Object.keys(routes), ['/', '/tns/', '/bench', '/pat/([a-z]+)$', '@chat'], 'route order')
  t.equal(routes['/'], routes['@chat'], 'one Handler used twice is one target')
  t.same(parseRouteTable(JSON.parse(encodeRouteTable(table))), table, 'round-trips through JSON')
})

// In the manner of m2sh's tests/sample.conf: no commas, Handler inside the dict, Dir, Proxy.
const SEVERAL = String.raw`
# Static files and a proxy.
test_directory = Dir(base='tests/',
                     index_file='index.html',
                     default_ctype='text/plain')
web_app_proxy = Proxy(addr='127.0.0.1', port=80)
cached = Dir(base="static/" index_file="index.htm" default_ctype="text/html" cache_ttl=3600)

chat = Handler(send_spec='tcp://127.0.0.1:9999',
               send_ident='54c6755b-9628-40a4-9a2d-cc82a816345e',
               recv_spec='tcp://127.0.0.1:9998', recv_ident='', raw_payload=1)

# notice we don't need commas in this
mongrel2 = Host(name="localhost" routes={
    '@chat': chat
    '/chat/': web_app_proxy
    '/': web_app_proxy
    '/tests/': test_directory
    '/testsmulti/(.*.json)': test_directory
    '/img/(\d+\.jpg)$': cached
    "/q/('\"x)": cached
    '/mp3stream': Handler(
        send_spec='ipc://run/mp3'
        send_ident='53f9f1d1-1116-4751-b6ff-4fbe3e43d142'
        recv_spec='ipc://run/mp3-out' recv_ident='mp3' protocol='tnetstring')
})

api = Host(name='api', matching='api.example.com', server='main', routes=routes_for_api,)
routes_for_api = {'/v1/': chat, '/v2/': Proxy(addr='10.0.0.2', port=8080),}

main = Server(
    uuid="2f62bd5-9e59-49cd-993c-3b6013c28f05",
    chroot="./",
    default_host="localhost",
    name="main",
    port=6767,
    use_ssl=1,
    hosts = [mongrel2, api,],
)
other = Server(uuid='other', name='other', port=8080, default_host='api', hosts=[api])

settings = {"zeromq.threads": 1, 'limits.content_length': 20480,}
mimetypes = {".txt": "text/plain", '.json': 'application/json'}
servers = [main other]
`

t.test('a config with Dir, Proxy, several hosts and servers, m2sh style', async (t) => {
  const table = parseM2sh(SEVERAL, { file: 'several.conf' })
  const [main, other] = table.servers
  t.equal(table.servers.length, 2)
  t.equal(main?.bindAddr, '0.0.0.0', "bind_addr defaults to Mongrel2's 0.0.0.0")
  t.equal(main?.useSsl, true)
  t.equal(main?.chroot, './')
  t.notOk(main && 'accessLog' in main, 'no access_log given, none set')
  t.same(
    main?.hosts.map((h) => [h.name, h.matching]),
    [
      ['localhost', 'localhost'],
      ['api', 'api.example.com'],
    ],
  )
  t.equal(other?.hosts[0], main?.hosts[1], 'one Host shared by two servers')
  t.equal(other?.chroot, '')

  const routes = main!.hosts[0]!.routes
  t.same(Object.keys(routes), [
    '@chat',
    '/chat/',
    '/',
    '/tests/',
    '/testsmulti/(.*.json)',
    '/img/(\\d+\\.jpg)$',
    '/q/(\'\\"x)',
    '/mp3stream',
  ])
  t.same(routes['/'], { kind: 'proxy', backends: [{ addr: '127.0.0.1', port: 80 }] })
  t.same(routes['/tests/'], {
    kind: 'dir',
    base: 'tests/',
    indexFile: 'index.html',
    defaultCtype: 'text/plain',
    cacheTtl: 0,
  })
  t.same(routes['/img/(\\d+\\.jpg)$'], {
    kind: 'dir',
    base: 'static/',
    indexFile: 'index.htm',
    defaultCtype: 'text/html',
    cacheTtl: 3600,
  })
  t.same(routes['@chat'], {
    kind: 'handler',
    sendSpec: 'tcp://127.0.0.1:9999',
    sendIdent: '54c6755b-9628-40a4-9a2d-cc82a816345e',
    recvSpec: 'tcp://127.0.0.1:9998',
    recvIdent: '',
    protocol: 'json',
    rawPayload: true,
  })
  t.same(routes['/mp3stream'], {
    kind: 'handler',
    sendSpec: 'ipc://run/mp3',
    sendIdent: '53f9f1d1-1116-4751-b6ff-4fbe3e43d142',
    recvSpec: 'ipc://run/mp3-out',
    recvIdent: 'mp3',
    protocol: 'tnetstring',
    rawPayload: false,
  })
  const api = main!.hosts[1]!.routes
  t.equal(api['/v1/'], routes['@chat'], 'a name used before its assignment resolves')
  t.same(api['/v2/'], { kind: 'proxy', backends: [{ addr: '10.0.0.2', port: 8080 }] })
  t.same(table.settings, { 'zeromq.threads': 1, 'limits.content_length': 20480 })
  t.same(table.mimetypes, { '.txt': 'text/plain', '.json': 'application/json' })
  t.same(parseRouteTable(JSON.parse(encodeRouteTable(table))), table, 'round-trips through JSON')
})

const HANDLER =
  "h = Handler(send_spec='tcp://127.0.0.1:1', send_ident='id', recv_spec='tcp://127.0.0.1:2', recv_ident='')"

/** A valid config around `routes` (line 2) and a server with `server` extra fields (line 3). */
function conf(routes = "{'/': h}", server = '', host = '', after = ''): string {
  return (
    `${HANDLER}\n` +
    `host = Host(name='localhost', routes=${routes}${host})\n` +
    `main = Server(uuid='u', name='main', port=80, default_host='localhost', hosts=[host]${server})\n` +
    `servers = [main]\n${after}`
  )
}

t.test('small things that parse', async (t) => {
  const one = (text: string) => parseM2sh(text).servers[0]!
  t.equal(one(conf()).hosts[0]!.routes['/']?.kind, 'handler', 'the base config')
  t.same(parseM2sh(conf(), {}).settings, {}, 'no settings')
  t.equal(one(conf("{'/': h}", ", bind_addr='::'")).bindAddr, '::', 'bind_addr kept as written')
  t.equal(one(conf("{'/': h}", ', use_ssl=0')).useSsl, false)
  t.same(
    Object.keys(one(conf('r', '', '', "r = {'/a/': h, '/b/': h}\n")).hosts[0]!.routes),
    ['/a/', '/b/'],
    'routes by name',
  )
  t.equal(
    one(conf("{'/': h}").replace('port=80', 'port=p') + 'p = 8080\n').port,
    8080,
    'a number by name',
  )
  t.same(
    Object.keys(one(conf("{'/': h, '/': h}")).hosts[0]!.routes),
    ['/'],
    'a repeated route key: the last wins, as in m2sh',
  )
  t.equal(
    one(conf().replace("name='main'", 'name=n') + 'n = nm\nnm = "chained"\n').name,
    'chained',
    'a name that names a name',
  )
  t.equal(
    one(
      `${conf()}main = Server(uuid='u2', name='later', port=1, default_host='localhost', hosts=[host])\n`,
    ).name,
    'later',
    'the last assignment wins',
  )
  t.equal(
    one(conf("{'/x/(a\\\\b)': h}")).hosts[0]!.routes['/x/(a\\\\b)'] !== undefined,
    true,
    'backslashes are kept as written',
  )
  t.same(parseM2sh(conf() + '# a comment at the end without a newline').servers.length, 1)
  t.same(parseM2sh(conf().replace(/\n/g, '\r\n')).servers.length, 1, 'CRLF line ends')
  t.same(parseM2sh('servers = []').servers, [], 'no servers at all')
})

t.test('bad configs are E_M2SH with file:line:column', async (t) => {
  const cases: [string, string, string][] = [
    ['UNKNOWN CONSTRUCTOR', 'x = Hadler()\n' + conf(), 'f.conf:1:5:'],
    ['FILTER PLUGIN', "x = Filter(name='null')\n" + conf(), 'f.conf:1:5:'],
    ['UNKNOWN KEYWORD', conf("{'/': h}", ", bindaddr='x'"), 'f.conf:3:87:'],
    ['FILTERS KEYWORD', conf("{'/': h}", ', filters=[]'), 'f.conf:3:87:'],
    ['KEYWORD GIVEN TWICE', conf("{'/': h}", ', port=81'), 'f.conf:3:87:'],
    ['UNDEFINED NAME', conf("{'/': app}"), 'f.conf:2:44:'],
    ['SELF REFERENCE', conf('r', '', '', 'r = r\n'), 'f.conf:5:5:'],
    [
      'MISSING SEND SPEC',
      "h = Handler(send_ident='x', recv_spec='tcp://a:1', recv_ident='')\nservers = []",
      'f.conf:1:5:',
    ],
    [
      'MISSING RECV IDENT',
      "h = Handler(send_spec='tcp://a:1', send_ident='x', recv_spec='tcp://a:1')\nservers = []",
      'f.conf:1:5:',
    ],
    [
      'MISSING HOSTS',
      "s = Server(uuid='u', name='n', port=1, default_host='x')\nservers = [s]",
      'f.conf:1:5:',
    ],
    ['MISSING ROUTES', "servers = []\nh = Host(name='x')", 'f.conf:2:5:'],
    ['NO SERVERS', HANDLER, 'f.conf:1:1:'],
    ['SERVERS NOT A LIST', `${HANDLER}\nservers = h`, 'f.conf:2:11:'],
    [
      'SERVERS HOLDS A HOST',
      conf().replace('servers = [main]', 'servers = [host]'),
      'f.conf:4:12:',
    ],
    ['HOST AS A TARGET', conf("{'/': host}"), 'f.conf:2:44:'],
    ['STRING AS A TARGET', conf("{'/': 'h'}"), 'f.conf:2:44:'],
    ['PORT AS A STRING', conf("{'/': h}").replace('port=80', "port='80'"), 'f.conf:3:43:'],
    ['PORT TOO BIG', conf("{'/': h}").replace('port=80', 'port=65536'), 'f.conf:3:43:'],
    ['NAME AS A NUMBER', conf("{'/': h}").replace("name='main'", 'name=1'), 'f.conf:3:30:'],
    ['EMPTY UUID', conf("{'/': h}").replace("uuid='u'", "uuid=''"), 'f.conf:3:20:'],
    [
      'HTTP SEND SPEC',
      HANDLER.replace('tcp://127.0.0.1:1', 'http://x:1') + '\nservers = []',
      'f.conf:1:23:',
    ],
    [
      'SEND IDENT WITH A SPACE',
      HANDLER.replace("'id'", "'i d'") + '\nservers = []',
      'f.conf:1:55:',
    ],
    [
      'BAD PROTOCOL',
      conf(
        "{'/': Handler(send_spec='tcp://a:1', send_ident='x', recv_spec='tcp://a:2', recv_ident='', protocol='xml')}",
      ),
      'f.conf:2:138:',
    ],
    ['RAW PAYLOAD 2', HANDLER.replace(')', ', raw_payload=2)') + '\nservers = []', 'f.conf:1:119:'],
    [
      'DIR BASE WITHOUT SLASH',
      "d = Dir(base='x', index_file='i', default_ctype='c')\nservers = []",
      'f.conf:1:14:',
    ],
    ['PROXY PORT A STRING', "p = Proxy(addr='a', port='80')\nservers = []", 'f.conf:1:26:'],
    [
      'DEFAULT HOST NAMES NO HOST',
      conf().replace("default_host='localhost'", "default_host='other'"),
      'f.conf:3:60:',
    ],
    [
      'DUPLICATE HOST',
      conf().replace('hosts=[host]', 'hosts=[host, host2]') +
        "host2 = Host(name='localhost', matching='x', routes={})\n",
      'f.conf:3:79:',
    ],
    ['BAD ROUTE PATTERN', conf("{'/': h, '/x([a-z': h}"), 'f.conf:2:47:'],
    ['EMPTY ROUTE', conf("{'': h}"), 'f.conf:2:39:'],
    ['SETTING A LIST', conf() + 'settings = {"a": [1]}\n', 'f.conf:5:18:'],
    ['SETTINGS A LIST', conf() + 'settings = [1]\n', 'f.conf:5:12:'],
    ['MIMETYPE A NUMBER', conf() + "mimetypes = {'.txt': 1}\n", 'f.conf:5:22:'],
    ['UNCLOSED STRING', "servers = []\nx = 'abc\n", 'f.conf:2:5:'],
    ['BACKTICK STRING', 'servers = [`x`]', 'f.conf:1:12:'],
    ['MISSING EQUALS', 'servers []', 'f.conf:1:9:'],
    ['NOT AN ASSIGNMENT', "servers = []\n'x'", 'f.conf:2:1:'],
    ['MISSING CLOSE PAREN', "servers = []\nh = Host(name='x'", 'f.conf:2:18:'],
    ['UNCLOSED LIST', 'servers = [', 'f.conf:1:11:'],
    ['DICT KEY NOT QUOTED', 'servers = []\nd = {a: 1}', 'f.conf:2:6:'],
    ['DICT WITHOUT COLON', "servers = []\nd = {'a' 1}", 'f.conf:2:10:'],
    ['DOUBLE COMMA', 'servers = [,]', 'f.conf:1:12:'],
    ['NEGATIVE NUMBER', "p = Proxy(addr='a', port=-1)\nservers = []", 'f.conf:1:26:'],
    ['POSITIONAL ARGUMENT', "p = Proxy('a', 80)\nservers = []", 'f.conf:1:11:'],
    ['TOO DEEP', `servers = ${'['.repeat(100)}${']'.repeat(100)}`, 'f.conf:1:'],
    ['UNUSED BROKEN HANDLER', `${conf()}spare = Handler(send_spec='tcp://a:1')\n`, 'f.conf:5:9:'],
    [
      'TWO SERVERS ONE NAME',
      conf().replace('[main]', '[main, main2]') +
        "main2 = Server(uuid='v', name='main', port=1, default_host='localhost', hosts=[host])\n",
      'f.conf:4:18:',
    ],
  ]
  for (const [name, text, where] of cases) {
    t.throws(
      () => parseM2sh(text, { file: 'f.conf' }),
      { code: 'E_M2SH', message: new RegExp(`^${where.replace(/\./g, '\\.')}`) },
      name,
    )
  }
  t.throws(() => parseM2sh('x'), { code: 'E_M2SH', message: /^<m2sh>:1:2:/ }, 'default file name')
})
