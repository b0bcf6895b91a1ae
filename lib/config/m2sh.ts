/**
 * @module Mongrel2's m2sh config language (`m2sh load -config mongrel2.conf`), read unchanged into a
 * RouteTable, so a Mongrel2 user can switch with one command. Grammar, as m2sh 1.12 accepts it
 * (tools/m2sh/src/lexer.rl, parser.y), plus trailing commas:
 *
 *   config     = *assignment
 *   assignment = NAME "=" value
 *   value      = STRING | NUMBER | NAME | call | list | dict     ; NAME refers to an assignment
 *   call       = CTOR "(" [ kwarg *( [","] kwarg ) [","] ] ")"  ; commas are optional, as in m2sh
 *   kwarg      = NAME "=" value
 *   list       = "[" [ value *( [","] value ) [","] ] "]"
 *   dict       = "{" [ STRING ":" value *( [","] STRING ":" value ) [","] ] "}"
 *   CTOR       = "Server" | "Host" | "Handler" | "Dir" | "Proxy"
 *   STRING     = "'" *( any but "'" or "\" | "\" any ) "'"   ; likewise with '"'
 *   NUMBER     = 1*DIGIT
 *   NAME       = ( ALPHA | "_" ) *( ALPHA | DIGIT | "_" )
 *   comment    = "#" to the end of the line
 *
 * Strings are kept exactly as written, backslashes included, as m2sh keeps them: a backslash only
 * lets the next character (even the quote) into the string. That is what makes route patterns
 * such as '/img/(\d+\.jpg)' reach the matcher unchanged. A name may refer to an assignment further
 * down, as in m2sh, where names are resolved after the whole file is read; the last assignment
 * to a name wins.
 *
 * The top-level names that mean something are `servers` (a list of Server, required), `settings`
 * (a dict of string or number) and `mimetypes` (a dict of extension -> type). Every top-level
 * constructor call is checked even if nothing uses it. Fields, with m2sh's defaults:
 *
 *   Server(uuid, name, port, default_host, hosts, bind_addr='0.0.0.0', chroot='', access_log,
 *          error_log, pid_file, control_port, use_ssl=0)
 *   Host(name, routes, matching=name, server)          ; server is accepted and ignored
 *   Handler(send_spec, send_ident, recv_spec, recv_ident, protocol='json', raw_payload=0)
 *   Dir(base, index_file, default_ctype, cache_ttl=0)
 *   Proxy(addr, port)
 *
 * Differences from m2sh: the logs and pid_file are optional (m2sh needs them to write its own
 * files); an unknown constructor or keyword (a typo m2sh would ignore) is an error; Filter(...)
 * and Xrequest(...) are C plugins that cannot be loaded here. Every error is
 * AppError('E_M2SH') and starts with `file:line:column`.
 */
import { AppError } from '../errors.js'
import {
  checkDirBase,
  checkEndpoint,
  checkPort,
  checkRouteKey,
  checkSendIdent,
  setOwn,
  type HostSpec,
  type RouteTable,
  type ServerSpec,
  type Target,
} from './routes.js'

interface Pos {
  line: number
  col: number
}

type Punct = '=' | '(' | ')' | '[' | ']' | '{' | '}' | ',' | ':'

type Token =
  | { kind: 'string'; value: string; pos: Pos }
  | { kind: 'number'; value: number; pos: Pos }
  | { kind: 'name'; value: string; pos: Pos }
  | { kind: 'punct'; value: Punct; pos: Pos }
  | { kind: 'eof'; pos: Pos }

type Ctor = 'Server' | 'Host' | 'Handler' | 'Dir' | 'Proxy'

interface Arg {
  value: Node
  pos: Pos
}

type Node =
  | { kind: 'string'; value: string; pos: Pos }
  | { kind: 'number'; value: number; pos: Pos }
  | { kind: 'ref'; name: string; pos: Pos }
  | { kind: 'list'; items: Node[]; pos: Pos }
  | { kind: 'dict'; entries: { key: string; keyPos: Pos; value: Node }[]; pos: Pos }
  | { kind: 'call'; ctor: Ctor; args: Map<string, Arg>; pos: Pos }

type Call = Extract<Node, { kind: 'call' }>

const FIELDS: Record<Ctor, string[]> = {
  Server: [
    'uuid',
    'name',
    'bind_addr',
    'port',
    'chroot',
    'default_host',
    'access_log',
    'error_log',
    'pid_file',
    'control_port',
    'hosts',
    'use_ssl',
  ],
  Host: ['name', 'matching', 'server', 'routes'],
  Handler: ['send_spec', 'send_ident', 'recv_spec', 'recv_ident', 'protocol', 'raw_payload'],
  Dir: ['base', 'index_file', 'default_ctype', 'cache_ttl'],
  Proxy: ['addr', 'port'],
}

/** What to write for a missing field: the "what to do" of its error. */
const EXAMPLES: Record<string, string> = {
  uuid: "uuid='f400bf85-4538-4f7a-8908-67e313d515c2'",
  name: "name='main'",
  port: 'port=6767',
  default_host: "default_host='localhost'",
  hosts: 'hosts=[main_host]',
  routes: "routes={'/': app}",
  send_spec: "send_spec='tcp://127.0.0.1:9999'",
  send_ident: "send_ident='54c6755b-9628-40a4-9a2d-cc82a816345e'",
  recv_spec: "recv_spec='tcp://127.0.0.1:9998'",
  recv_ident: "recv_ident=''",
  base: "base='static/'",
  index_file: "index_file='index.html'",
  default_ctype: "default_ctype='text/plain'",
  addr: "addr='127.0.0.1'",
}

const UNSUPPORTED: Record<string, string> = {
  Filter: 'Mongrel2 filters are C plugins, which Bareku cannot load; remove it',
  Xrequest: 'Mongrel2 xrequest plugins are C plugins, which Bareku cannot load; remove it',
  filters: 'Mongrel2 filters are C plugins, which Bareku cannot load; remove filters=',
  xrequests: 'Mongrel2 xrequest plugins are C plugins, which Bareku cannot load; remove xrequests=',
}

const MAX_DEPTH = 64

/**
 * Parses the text of a Mongrel2 m2sh `.conf` file into a RouteTable. `opts.file` names the file in
 * errors. Throws AppError('E_M2SH') with `file:line:column`, what was expected and what came.
 */
export function parseM2sh(text: string, opts: { file?: string } = {}): RouteTable {
  const file = opts.file ?? '<m2sh>'
  const fail = (pos: Pos, message: string): never => {
    throw new AppError('E_M2SH', `${file}:${pos.line}:${pos.col}: ${message}`)
  }
  const vars = new Parser(tokenize(text, fail), fail).config()
  return new Loader(vars, fail).table()
}

function tokenize(text: string, fail: (pos: Pos, message: string) => never): Token[] {
  const tokens: Token[] = []
  let i = 0
  let line = 1
  let lineStart = 0
  const pos = (at: number): Pos => ({ line, col: at - lineStart + 1 })
  while (i < text.length) {
    const c = text[i]!
    if (c === '\n') {
      i++
      line++
      lineStart = i
    } else if (c === ' ' || c === '\t' || c === '\r' || c === '\f' || c === '\v') {
      i++
    } else if (c === '#') {
      while (i < text.length && text[i] !== '\n') i++
    } else if (c === "'" || c === '"') {
      const start = pos(i)
      let j = i + 1
      while (j < text.length && text[j] !== c) {
        if (text[j] === '\\') j++
        if (text[j] === '\n') {
          line++
          lineStart = j + 1
        }
        j++
      }
      if (j >= text.length) {
        fail(start, `this string is never closed: expected a closing ${c}, got the end of the file`)
      }
      tokens.push({ kind: 'string', value: text.slice(i + 1, j), pos: start })
      i = j + 1
    } else if (c >= '0' && c <= '9') {
      let j = i
      while (j < text.length && text[j]! >= '0' && text[j]! <= '9') j++
      const value = Number(text.slice(i, j))
      if (!Number.isSafeInteger(value)) fail(pos(i), `number ${text.slice(i, j)} is too large`)
      tokens.push({ kind: 'number', value, pos: pos(i) })
      i = j
    } else if (/[A-Za-z_]/.test(c)) {
      let j = i
      while (j < text.length && /[A-Za-z0-9_]/.test(text[j]!)) j++
      tokens.push({ kind: 'name', value: text.slice(i, j), pos: pos(i) })
      i = j
    } else if ('=()[]{},:'.includes(c)) {
      tokens.push({ kind: 'punct', value: c as Punct, pos: pos(i) })
      i++
    } else {
      fail(
        pos(i),
        `expected a name, a 'string', a number or one of = ( ) [ ] { } , :, got ${JSON.stringify(c)}` +
          (c === '`' ? '; quote strings with \' or "' : ''),
      )
    }
  }
  tokens.push({ kind: 'eof', pos: pos(i) })
  return tokens
}

function describe(t: Token): string {
  switch (t.kind) {
    case 'string':
      return `the string ${JSON.stringify(t.value)}`
    case 'number':
      return `the number ${t.value}`
    case 'name':
      return `the name ${t.value}`
    case 'punct':
      return `'${t.value}'`
    case 'eof':
      return 'the end of the file'
  }
}

class Parser {
  private i = 0
  private depth = 0

  constructor(
    private readonly tokens: Token[],
    private readonly fail: (pos: Pos, message: string) => never,
  ) {}

  private peek(): Token {
    return this.tokens[this.i]!
  }

  private next(): Token {
    const t = this.tokens[this.i]!
    if (t.kind !== 'eof') this.i++
    return t
  }

  private isPunct(value: Punct): boolean {
    const t = this.peek()
    return t.kind === 'punct' && t.value === value
  }

  private expectPunct(value: Punct, context: string): void {
    const t = this.next()
    if (t.kind !== 'punct' || t.value !== value) {
      this.fail(t.pos, `expected '${value}' ${context}, got ${describe(t)}`)
    }
  }

  /** The assignments, last one per name winning. */
  config(): Map<string, { value: Node; pos: Pos }> {
    const vars = new Map<string, { value: Node; pos: Pos }>()
    for (;;) {
      const t = this.next()
      if (t.kind === 'eof') return vars
      if (t.kind !== 'name') {
        this.fail(t.pos, `expected an assignment such as main = Server(...), got ${describe(t)}`)
      }
      this.expectPunct('=', `after ${t.value}`)
      vars.delete(t.value)
      vars.set(t.value, { value: this.value(), pos: t.pos })
    }
  }

  private value(): Node {
    const t = this.next()
    if (++this.depth > MAX_DEPTH) this.fail(t.pos, `values nest deeper than ${MAX_DEPTH} levels`)
    try {
      switch (t.kind) {
        case 'string':
          return { kind: 'string', value: t.value, pos: t.pos }
        case 'number':
          return { kind: 'number', value: t.value, pos: t.pos }
        case 'name':
          return this.isPunct('(')
            ? this.call(t.value, t.pos)
            : { kind: 'ref', name: t.value, pos: t.pos }
        case 'punct':
          if (t.value === '[') return this.list(t.pos)
          if (t.value === '{') return this.dict(t.pos)
      }
      return this.fail(
        t.pos,
        `expected a value ('string', number, name, Handler(...), [list] or {dict}), got ${describe(t)}`,
      )
    } finally {
      this.depth--
    }
  }

  private list(pos: Pos): Node {
    const items: Node[] = []
    while (!this.isPunct(']')) {
      if (this.peek().kind === 'eof')
        this.fail(pos, "this list is never closed: expected ']', got the end of the file")
      items.push(this.value())
      if (this.isPunct(',')) this.next()
    }
    this.next()
    return { kind: 'list', items, pos }
  }

  private dict(pos: Pos): Node {
    const entries: { key: string; keyPos: Pos; value: Node }[] = []
    while (!this.isPunct('}')) {
      const k = this.next()
      if (k.kind !== 'string') {
        this.fail(k.pos, `expected a quoted key such as '/' or a closing '}', got ${describe(k)}`)
      }
      this.expectPunct(':', `after the key ${JSON.stringify(k.value)}`)
      entries.push({ key: k.value, keyPos: k.pos, value: this.value() })
      if (this.isPunct(',')) this.next()
    }
    this.next()
    return { kind: 'dict', entries, pos }
  }

  private call(name: string, pos: Pos): Node {
    if (!(name in FIELDS)) {
      this.fail(
        pos,
        `expected Server, Host, Handler, Dir or Proxy, got ${name}(...)` +
          (UNSUPPORTED[name] !== undefined ? `; ${UNSUPPORTED[name]}` : ''),
      )
    }
    const ctor = name as Ctor
    const args = new Map<string, Arg>()
    this.next() // '('
    while (!this.isPunct(')')) {
      const k = this.next()
      if (k.kind !== 'name') {
        this.fail(
          k.pos,
          `expected a keyword argument such as name='x' or ')' to close ${ctor}(, got ${describe(k)}`,
        )
      }
      if (!FIELDS[ctor].includes(k.value)) {
        this.fail(
          k.pos,
          `${ctor} takes ${FIELDS[ctor].join(', ')}; got ${k.value}` +
            (UNSUPPORTED[k.value] !== undefined
              ? ` (${UNSUPPORTED[k.value]})`
              : '; check the spelling'),
        )
      }
      if (args.has(k.value)) this.fail(k.pos, `${ctor} is given ${k.value} twice; keep one`)
      this.expectPunct('=', `after ${k.value}`)
      args.set(k.value, { value: this.value(), pos: k.pos })
      if (this.isPunct(',')) this.next()
    }
    this.next()
    return { kind: 'call', ctor, args, pos }
  }
}

function what(node: Node): string {
  switch (node.kind) {
    case 'string':
      return `the string ${JSON.stringify(node.value)}`
    case 'number':
      return `the number ${node.value}`
    case 'ref':
      return `the name ${node.name}`
    case 'list':
      return 'a [list]'
    case 'dict':
      return 'a {dict}'
    case 'call':
      return `${node.ctor}(...)`
  }
}

/** Turns the assignments into a RouteTable, resolving names and checking every field. */
class Loader {
  private readonly resolving = new Set<string>()
  private readonly targets = new Map<Node, Target>()
  private readonly hosts = new Map<Node, HostSpec>()
  private readonly servers = new Map<Node, ServerSpec>()

  constructor(
    private readonly vars: Map<string, { value: Node; pos: Pos }>,
    private readonly fail: (pos: Pos, message: string) => never,
  ) {}

  table(): RouteTable {
    for (const { value } of this.vars.values()) {
      if (value.kind === 'call') this.any(value)
    }
    const serversVar = this.vars.get('servers')
    if (serversVar === undefined) {
      return this.fail(
        { line: 1, col: 1 },
        'expected a servers = [...] assignment listing the servers to run, got none; add servers = [main]',
      )
    }
    const servers = this.list(serversVar.value, 'servers').map((n) => this.server(n))
    const names = new Map<string, ServerSpec>()
    servers.forEach((s, i) => {
      const first = names.get(s.name)
      if (first !== undefined && first !== s) {
        this.fail(
          this.listItemPos(serversVar.value, i),
          `two servers are named ${JSON.stringify(s.name)}; rename one`,
        )
      }
      names.set(s.name, s)
    })

    const settings: Record<string, string | number> = {}
    const settingsVar = this.vars.get('settings')
    if (settingsVar !== undefined) {
      for (const e of this.dict(settingsVar.value, 'settings')) {
        const v = this.resolve(e.value)
        if (v.kind !== 'string' && v.kind !== 'number') {
          this.fail(
            e.value.pos,
            `setting ${JSON.stringify(e.key)} must be a string or a number, got ${what(v)}`,
          )
        }
        setOwn(settings, e.key, v.value)
      }
    }

    const mimetypes: Record<string, string> = {}
    const mimeVar = this.vars.get('mimetypes')
    if (mimeVar !== undefined) {
      for (const e of this.dict(mimeVar.value, 'mimetypes')) {
        const v = this.resolve(e.value)
        if (v.kind !== 'string') {
          this.fail(
            e.value.pos,
            `mimetype ${JSON.stringify(e.key)} must be a string such as 'text/plain', got ${what(v)}`,
          )
        }
        setOwn(mimetypes, e.key, v.value)
      }
    }
    return { servers, settings, mimetypes }
  }

  private listItemPos(node: Node, i: number): Pos {
    const list = this.resolve(node)
    return list.kind === 'list' ? (list.items[i]?.pos ?? list.pos) : node.pos
  }

  /** Follows names to the value they were assigned. */
  private resolve(node: Node): Exclude<Node, { kind: 'ref' }> {
    if (node.kind !== 'ref') return node
    const v = this.vars.get(node.name)
    if (v === undefined) {
      return this.fail(
        node.pos,
        `expected a name assigned in this file, got ${node.name}, which is not; ` +
          `assign it (${node.name} = ...) or fix the spelling`,
      )
    }
    if (this.resolving.has(node.name)) {
      return this.fail(node.pos, `${node.name} refers to itself; give it a value`)
    }
    this.resolving.add(node.name)
    try {
      return this.resolve(v.value)
    } finally {
      this.resolving.delete(node.name)
    }
  }

  private any(call: Call): void {
    if (call.ctor === 'Server') this.server(call)
    else if (call.ctor === 'Host') this.host(call)
    else this.target(call)
  }

  private list(node: Node, name: string): Node[] {
    const v = this.resolve(node)
    if (v.kind !== 'list') this.fail(node.pos, `${name} must be a [list], got ${what(v)}`)
    return v.items
  }

  private dict(node: Node, name: string): { key: string; keyPos: Pos; value: Node }[] {
    const v = this.resolve(node)
    if (v.kind !== 'dict') this.fail(node.pos, `${name} must be a {dict}, got ${what(v)}`)
    return v.entries
  }

  private callOf(node: Node, ctors: Ctor[], role: string): Call {
    const v = this.resolve(node)
    if (v.kind !== 'call' || !ctors.includes(v.ctor)) {
      const expected = ctors
        .map((c) => `${c}(...)`)
        .join(', ')
        .replace(/, ([^,]*)$/, ' or $1')
      return this.fail(node.pos, `${role} must be ${expected}, got ${what(v)}`)
    }
    return v
  }

  private missing(call: Call, key: string): never {
    const example = EXAMPLES[key] ?? `${key}=...`
    return this.fail(call.pos, `${call.ctor}(...) is missing ${key}; add ${example}`)
  }

  private optString(call: Call, key: string): string | undefined {
    const arg = call.args.get(key)
    if (arg === undefined) return undefined
    const v = this.resolve(arg.value)
    if (v.kind !== 'string') {
      this.fail(arg.value.pos, `${call.ctor} ${key} must be a 'string', got ${what(v)}; quote it`)
    }
    return v.value
  }

  private string(call: Call, key: string, check?: (s: string) => string | undefined): string {
    const s = this.optString(call, key)
    if (s === undefined) return this.missing(call, key)
    const problem = check?.(s)
    if (problem !== undefined) {
      this.fail(
        call.args.get(key)!.value.pos,
        `${call.ctor} ${key} must be ${problem}, got ${JSON.stringify(s)}`,
      )
    }
    return s
  }

  private optNumber(
    call: Call,
    key: string,
    check: (n: number) => string | undefined,
  ): number | undefined {
    const arg = call.args.get(key)
    if (arg === undefined) return undefined
    const v = this.resolve(arg.value)
    if (v.kind !== 'number') {
      return this.fail(
        arg.value.pos,
        `${call.ctor} ${key} must be a number, got ${what(v)}; write it without quotes`,
      )
    }
    const problem = check(v.value)
    if (problem !== undefined)
      this.fail(arg.value.pos, `${call.ctor} ${key} must be ${problem}, got ${v.value}`)
    return v.value
  }

  private number(call: Call, key: string, check: (n: number) => string | undefined): number {
    return this.optNumber(call, key, check) ?? this.missing(call, key)
  }

  private server(node: Node): ServerSpec {
    const call = this.callOf(node, ['Server'], 'each item of servers')
    const cached = this.servers.get(call)
    if (cached !== undefined) return cached
    const scalars = {
      uuid: this.string(call, 'uuid', nonEmpty),
      name: this.string(call, 'name', nonEmpty),
      bindAddr: this.optString(call, 'bind_addr') ?? '0.0.0.0',
      port: this.number(call, 'port', checkPort),
      chroot: this.optString(call, 'chroot') ?? '',
      defaultHost: this.string(call, 'default_host'),
    }
    const hostsArg = call.args.get('hosts') ?? this.missing(call, 'hosts')
    const hosts = this.list(hostsArg.value, 'Server hosts').map((n) => this.host(n))
    const spec: ServerSpec = { ...scalars, hosts }
    const seen = new Map<string, string>()
    for (const h of hosts) {
      for (const [field, value] of [
        ['name', h.name],
        ['matching', h.matching],
      ] as const) {
        const key = `${field}\0${value}`
        if (seen.has(key)) {
          this.fail(
            hostsArg.value.pos,
            `two hosts of this server have the ${field} ${JSON.stringify(value)}; each must be unique`,
          )
        }
        seen.set(key, h.name)
      }
    }
    if (!hosts.some((h) => h.name === spec.defaultHost)) {
      const names = hosts.map((h) => JSON.stringify(h.name)).join(', ') || 'none'
      this.fail(
        call.args.get('default_host')!.value.pos,
        `Server default_host must be the name of one of its hosts (${names}), got ${JSON.stringify(spec.defaultHost)}`,
      )
    }
    const optional = {
      access_log: 'accessLog',
      error_log: 'errorLog',
      pid_file: 'pidFile',
      control_port: 'controlPort',
    } as const
    for (const [key, field] of Object.entries(optional)) {
      const v = this.optString(call, key)
      if (v !== undefined) spec[field] = v
    }
    const useSsl = this.optNumber(call, 'use_ssl', zeroOrOne)
    if (useSsl !== undefined) spec.useSsl = useSsl === 1
    this.servers.set(call, spec)
    return spec
  }

  private host(node: Node): HostSpec {
    const call = this.callOf(node, ['Host'], 'each item of Server hosts')
    const cached = this.hosts.get(call)
    if (cached !== undefined) return cached
    const name = this.string(call, 'name', nonEmpty)
    const matching = this.optString(call, 'matching') ?? name
    if (matching === '')
      this.fail(
        call.args.get('matching')!.value.pos,
        'Host matching must be a host name suffix such as \'example.com\', got ""',
      )
    this.optString(call, 'server') // m2sh stores it and Mongrel2 never reads it
    const routesArg = call.args.get('routes') ?? this.missing(call, 'routes')
    const routes: Record<string, Target> = {}
    for (const e of this.dict(routesArg.value, 'Host routes')) {
      const problem = checkRouteKey(e.key)
      if (problem !== undefined) this.fail(e.keyPos, problem)
      setOwn(routes, e.key, this.target(e.value))
    }
    const spec = { name, matching, routes }
    this.hosts.set(call, spec)
    return spec
  }

  private target(node: Node): Target {
    const call = this.callOf(node, ['Handler', 'Dir', 'Proxy'], 'a route target')
    const cached = this.targets.get(call)
    if (cached !== undefined) return cached
    let target: Target
    if (call.ctor === 'Handler') {
      const protocol = this.optString(call, 'protocol') ?? 'json'
      if (protocol !== 'json' && protocol !== 'tnetstring') {
        return this.fail(
          call.args.get('protocol')!.value.pos,
          `Handler protocol must be 'json' or 'tnetstring', got ${JSON.stringify(protocol)}`,
        )
      }
      target = {
        kind: 'handler',
        sendSpec: this.string(call, 'send_spec', checkEndpoint),
        sendIdent: this.string(call, 'send_ident', checkSendIdent),
        recvSpec: this.string(call, 'recv_spec', checkEndpoint),
        recvIdent: this.string(call, 'recv_ident'),
        protocol,
        rawPayload: this.optNumber(call, 'raw_payload', zeroOrOne) === 1,
      }
    } else if (call.ctor === 'Dir') {
      target = {
        kind: 'dir',
        base: this.string(call, 'base', checkDirBase),
        indexFile: this.string(call, 'index_file', nonEmpty),
        defaultCtype: this.string(call, 'default_ctype', nonEmpty),
        cacheTtl: this.optNumber(call, 'cache_ttl', () => undefined) ?? 0,
      }
    } else {
      target = {
        kind: 'proxy',
        backends: [
          { addr: this.string(call, 'addr', nonEmpty), port: this.number(call, 'port', checkPort) },
        ],
      }
    }
    this.targets.set(call, target)
    return target
  }
}

function nonEmpty(s: string): string | undefined {
  return s === '' ? 'non-empty' : undefined
}

function zeroOrOne(n: number): string | undefined {
  return n === 0 || n === 1 ? undefined : '0 or 1'
}
