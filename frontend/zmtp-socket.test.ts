/**
 * ZmtpHandlerSocket against real ZeroMQ peers: zeromq.js (libzmq 4.3.5) in this process, Python
 * (python3-zmq, libzmq 4.3.4) and Perl (ZMQ::FFI, libzmq 4.3.4) as child processes, plus raw
 * ZMTP peers built from lib/protocol/zmtp.ts for what libzmq will not do on demand (garbage,
 * PING, a 3.0 greeting, non-matching topics). Everything waits on events (log lines, received
 * messages, onReady), never on a sleep.
 */
import { spawnSync } from 'node:child_process'
import { EventEmitter } from 'node:events'
import { existsSync, lstatSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { connect, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pino } from 'pino'
import t, { type Test } from 'tap'
import { Publisher, Pull, Push, Subscriber, XPublisher } from 'zeromq'
import type { HandlerTarget } from '../lib/config/routes.js'
import {
  FLAG_COMMAND,
  FLAG_MORE,
  ZmtpParser,
  encodeCommand,
  encodeFrame,
  encodeGreeting,
  encodePing,
  encodeReady,
  parseCommand,
  parseError,
  parseMetadata,
  parsePing,
  type Greeting,
} from '../lib/protocol/zmtp.js'
import { startProcess } from '../test/helpers/process.js'
import { SUBSCRIBE_CONFIRM_MS, ZmtpHandlerSocket, parseEndpoint } from './zmtp-socket.js'

const PYTHON = '/usr/bin/python3'
const WAIT_MS = 5000

/** Resolves when `pred` holds, re-checked on every `emit()`; rejects after `ms`. */
class Watch extends EventEmitter {
  until(pred: () => boolean, what: string, ms = WAIT_MS): Promise<void> {
    if (pred()) return Promise.resolve()
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (!pred()) return
        clearTimeout(timer)
        this.off('change', check)
        resolve()
      }
      const timer = setTimeout(() => {
        this.off('change', check)
        reject(new Error(`timed out waiting for ${what}`))
      }, ms)
      this.on('change', check)
    })
  }
  changed(): void {
    this.emit('change')
  }
}

interface LogLine {
  level: number
  msg: string
  side?: string
  peers?: number
  reason?: string
  [k: string]: unknown
}

async function handler(t: Test, over: Partial<HandlerTarget> = {}) {
  const watch = new Watch()
  const logs: LogLine[] = []
  const log = pino(
    { level: 'debug' },
    {
      write: (line: string) => {
        logs.push(JSON.parse(line) as LogLine)
        watch.changed()
      },
    },
  )
  const replies: string[] = []
  let readyCalls = 0
  const sock = new ZmtpHandlerSocket(
    {
      kind: 'handler',
      sendSpec: 'tcp://127.0.0.1:*',
      sendIdent: 'zmtp-test',
      recvSpec: 'tcp://127.0.0.1:*',
      recvIdent: '',
      protocol: 'json',
      rawPayload: false,
      ...over,
    },
    {
      onReply: (msg) => {
        replies.push(msg.toString('latin1'))
        watch.changed()
      },
      onReady: () => {
        readyCalls++
        watch.changed()
      },
    },
    log,
  )
  await sock.bind()
  t.teardown(() => sock.close())
  const connected = (side: 'push' | 'sub', peers: number) =>
    watch.until(
      () =>
        logs.some(
          (l) => l.msg === 'handler peer connected' && l.side === side && l.peers === peers,
        ),
      `${peers} ${side} peer(s) connected`,
    )
  return {
    sock,
    logs,
    replies,
    get readyCalls() {
      return readyCalls
    },
    connected,
    disconnected: (side: 'push' | 'sub', peers: number) =>
      watch.until(
        () =>
          logs.some(
            (l) => l.msg === 'handler peer disconnected' && l.side === side && l.peers === peers,
          ),
        `${side} side down to ${peers} peer(s)`,
      ),
    refused: (match: RegExp) =>
      watch.until(
        () => logs.some((l) => l.msg === 'handler peer refused' && match.test(l.reason ?? '')),
        `a peer refused for ${String(match)}`,
      ),
    onReady: () => watch.until(() => readyCalls > 0, 'onReady'),
    replyCount: (n: number) => watch.until(() => replies.length >= n, `${n} replies`),
  }
}

/** zeromq.js sockets closed in teardown; receives time out instead of hanging the test. */
function zmq<S extends { close(): void }>(t: Test, sock: S): S {
  t.teardown(() => sock.close())
  return sock
}

async function receiveN(pull: Pull, n: number): Promise<string[]> {
  const out: string[] = []
  for (let i = 0; i < n; i++) {
    const [msg] = await pull.receive()
    out.push(msg!.toString('latin1'))
  }
  return out
}

/** A handler made of zeromq.js sockets: each request read on PULL is published back prefixed. */
function echo(pull: Pull, pub: Publisher | XPublisher, prefix: string): void {
  void (async () => {
    try {
      for await (const [msg] of pull) await pub.send(Buffer.concat([Buffer.from(prefix), msg!]))
    } catch {
      // closed in teardown
    }
  })()
}

t.test('zeromq.js PULL and PUB peers: round-robin, replies, ready only both ways', async (t) => {
  const h = await handler(t)
  t.match(h.sock.sendEndpoint, /^tcp:\/\/127\.0\.0\.1:\d+$/, 'the real port is reported')
  t.not(h.sock.sendEndpoint, h.sock.recvEndpoint)

  const pullA = zmq(t, new Pull({ receiveTimeout: WAIT_MS }))
  pullA.connect(h.sock.sendEndpoint)
  await h.connected('push', 1)
  const pullB = zmq(t, new Pull({ receiveTimeout: WAIT_MS }))
  pullB.connect(h.sock.sendEndpoint)
  await h.connected('push', 2)
  t.equal(h.sock.ready, false, 'PULLs alone are not ready')
  t.equal(h.readyCalls, 0, 'no onReady yet')

  const pub = zmq(t, new Publisher())
  pub.connect(h.sock.recvEndpoint)
  await h.onReady()
  t.equal(h.sock.ready, true, 'ready once a PUB is subscribed')
  t.equal(h.readyCalls, 1)

  // An XPUB shows what arrived: libzmq hands the SUBSCRIBE command to the app as %x01 + topic.
  const xpub = zmq(t, new XPublisher({ receiveTimeout: WAIT_MS }))
  xpub.connect(h.sock.recvEndpoint)
  const [subscription] = await xpub.receive()
  t.same(subscription, Buffer.of(1), 'subscribed to everything (recv_ident "")')
  await h.connected('sub', 2)
  t.equal(h.readyCalls, 1, 'a second peer does not fire onReady again')

  echo(pullA, pub, 'A:')
  echo(pullB, xpub, 'B:')
  for (let i = 0; i < 10; i++) h.sock.send(Buffer.from(`req ${i}`))
  await h.replyCount(10)
  const a = h.replies.filter((r) => r.startsWith('A:')).map((r) => r.slice(2))
  const b = h.replies.filter((r) => r.startsWith('B:')).map((r) => r.slice(2))
  t.equal(a.length, 5, 'half to each PULL')
  t.equal(b.length, 5)
  const evens = ['req 0', 'req 2', 'req 4', 'req 6', 'req 8']
  const odds = ['req 1', 'req 3', 'req 5', 'req 7', 'req 9']
  // Whichever PULL got the first request gets every other one.
  const [first, second] = a[0] === 'req 0' ? [a, b] : [b, a]
  t.same(first, evens, 'strictly alternating, in order')
  t.same(second, odds)
})

async function foreignHandler(
  t: Test,
  lang: string,
  command: string,
  args: (send: string, recv: string) => string[],
) {
  const h = await handler(t)
  const proc = startProcess(command, args(h.sock.sendEndpoint, h.sock.recvEndpoint))
  t.teardown(() => proc.stop())
  await proc.waitFor(/^ready$/)
  await h.onReady()
  const msgs = [
    ...Array.from({ length: 100 }, (_, i) => `${lang} request ${i}`),
    'x'.repeat(300), // a long frame each way
    Array.from({ length: 1 << 20 }, (_, i) => String.fromCharCode(0x41 + (i % 26))).join(''),
  ]
  for (const m of msgs) h.sock.send(Buffer.from(m, 'latin1'))
  await h.replyCount(msgs.length)
  t.equal(h.replies.length, msgs.length, 'one reply per request')
  t.same(
    h.replies,
    msgs.map((m) => `${lang} ${m}`),
    'every reply, complete and in order (incl. 300 B and 1 MiB)',
  )
  t.equal(h.logs.filter((l) => l.level >= 40).length, 0, 'no warnings')
}

t.test('a Python (python3-zmq) handler', async (t) => {
  const script = [
    'import sys, zmq',
    'ctx = zmq.Context()',
    'pull = ctx.socket(zmq.PULL); pull.connect(sys.argv[1])',
    'pub = ctx.socket(zmq.PUB); pub.connect(sys.argv[2])',
    "print('ready', flush=True)",
    'while True:',
    "    pub.send(b'py ' + pull.recv())",
  ].join('\n')
  await foreignHandler(t, 'py', PYTHON, (send, recv) => ['-c', script, send, recv])
})

t.test('a Perl (ZMQ::FFI) handler', async (t) => {
  const script = [
    'use ZMQ::FFI qw(ZMQ_PULL ZMQ_PUB);',
    '$| = 1;',
    'my $ctx = ZMQ::FFI->new();',
    'my $pull = $ctx->socket(ZMQ_PULL); $pull->connect($ARGV[0]);',
    'my $pub = $ctx->socket(ZMQ_PUB); $pub->connect($ARGV[1]);',
    'print "ready\\n";',
    'while (1) { my $m = $pull->recv(); $pub->send("pl $m"); }',
  ].join('\n')
  await foreignHandler(t, 'pl', 'perl', (send, recv) => ['-e', script, send, recv])
})

t.test('10 000 messages in one burst reach a single PULL complete and in order', async (t) => {
  const h = await handler(t)
  const pull = zmq(t, new Pull({ receiveTimeout: WAIT_MS }))
  pull.connect(h.sock.sendEndpoint)
  await h.connected('push', 1)
  // Sizes cross the short/long frame boundary.
  const msg = (i: number) => `${i}:${'m'.repeat(i % 600)}`
  for (let i = 0; i < 10_000; i++) h.sock.send(Buffer.from(msg(i)))
  const got = await receiveN(pull, 10_000)
  const wrong = got.findIndex((m, i) => m !== msg(i))
  t.equal(wrong, -1, 'all 10 000, in order')
})

t.test('requests sent with no PULL connected wait for one, in order', async (t) => {
  const h = await handler(t)
  for (let i = 0; i < 100; i++) h.sock.send(Buffer.from(`early ${i}`))
  const pull = zmq(t, new Pull({ receiveTimeout: WAIT_MS }))
  pull.connect(h.sock.sendEndpoint)
  t.same(
    await receiveN(pull, 100),
    Array.from({ length: 100 }, (_, i) => `early ${i}`),
  )
})

/** A hand-made ZMTP peer: whatever greeting and frames a test wants to send. */
async function rawPeer(endpoint: string) {
  const ep = parseEndpoint(endpoint)
  const sock: Socket = ep.kind === 'tcp' ? connect(ep.port, ep.host) : connect(ep.path)
  const watch = new Watch()
  const frames: { body: Buffer; flags: number }[] = []
  let greeting: Greeting | undefined
  let closed = false
  let error: unknown
  const parser = new ZmtpParser({
    greeting: (g) => (greeting = g),
    frame: (body, flags) => frames.push({ body: Buffer.from(body), flags }),
  })
  sock.on('data', (d: Buffer) => {
    try {
      parser.push(d)
    } catch (err) {
      error = err
    }
    watch.changed()
  })
  sock.on('error', () => {})
  sock.on('close', () => {
    closed = true
    watch.changed()
  })
  await new Promise((resolve) => sock.once('connect', resolve))
  return {
    sock,
    frames,
    get greeting() {
      return greeting
    },
    get error() {
      return error
    },
    /** Greets and sends READY with this socket type. */
    handshake(type: string, minor = 1) {
      sock.write(Buffer.concat([encodeGreeting({ minor }), encodeReady({ 'Socket-Type': type })]))
    },
    frame: (n: number) => watch.until(() => frames.length >= n, `${n} frames from the socket`),
    closed: () => watch.until(() => closed, 'the socket closing this peer'),
    close: () => sock.destroy(),
  }
}

/** A working zeromq.js handler on `h`, answering "ok:" + request. */
async function workingHandler(t: Test, h: Awaited<ReturnType<typeof handler>>) {
  const pull = zmq(t, new Pull({ receiveTimeout: WAIT_MS }))
  const pub = zmq(t, new Publisher())
  pull.connect(h.sock.sendEndpoint)
  pub.connect(h.sock.recvEndpoint)
  echo(pull, pub, 'ok:')
  await h.onReady()
}

t.test('a peer sending garbage is dropped; the others keep working', async (t) => {
  const h = await handler(t)
  await workingHandler(t, h)

  const http = await rawPeer(h.sock.sendEndpoint)
  t.teardown(http.close)
  http.sock.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n')
  await http.closed()
  await h.refused(/starts with 0xff, got 0x47/)

  const badFrame = await rawPeer(h.sock.recvEndpoint)
  t.teardown(badFrame.close)
  badFrame.handshake('PUB')
  await badFrame.frame(2) // our READY and subscription: it is connected
  badFrame.sock.write(Buffer.of(0xf0, 0x00))
  await badFrame.closed()
  await h.refused(/reserved bits/)

  const curve = await rawPeer(h.sock.sendEndpoint)
  t.teardown(curve.close)
  curve.sock.write(encodeGreeting({ mechanism: 'CURVE' }))
  await curve.closed()
  await h.refused(/CURVE security mechanism/)

  const huge = await rawPeer(h.sock.recvEndpoint)
  t.teardown(huge.close)
  huge.handshake('PUB')
  huge.sock.write(Buffer.from('02 00000000ffffffff'.replace(/ /g, ''), 'hex'))
  await huge.closed()
  await h.refused(/above the limit/)

  t.equal(h.sock.ready, true, 'still ready')
  h.sock.send(Buffer.from('still here'))
  await h.replyCount(1)
  t.same(h.replies, ['ok:still here'], 'the good handler still answers')
})

t.test('a peer with the wrong socket type is refused', async (t) => {
  const h = await handler(t)
  const push = zmq(t, new Push())
  push.connect(h.sock.sendEndpoint)
  await h.refused(/peer is a PUSH; the PUSH side of handler zmtp-test accepts PULL only/)
  push.close()
  const sub = zmq(t, new Subscriber())
  sub.connect(h.sock.recvEndpoint)
  sub.subscribe('')
  await h.refused(/peer is a SUB; the SUB side .* accepts PUB or XPUB only/)
  sub.close()
  t.equal(h.sock.ready, false)
  t.equal(h.readyCalls, 0)

  // What a refused peer sees: our greeting, then an ERROR with the reason, then the close.
  const raw = await rawPeer(h.sock.sendEndpoint)
  t.teardown(raw.close)
  raw.handshake('PUB')
  await raw.frame(1)
  await raw.closed()
  t.equal(raw.greeting?.mechanism, 'NULL')
  const cmd = parseCommand(raw.frames[0]!.body)
  t.equal(cmd.name, 'ERROR')
  t.match(parseError(cmd.data), /peer is a PUB/)
})

/** Not t.testdir(): its long fixture paths can pass the 107-byte limit of a unix socket path. */
function shortTmpDir(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'bareku-ipc-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

t.test('ipc:// endpoints, replacing a stale socket file', async (t) => {
  const dir = shortTmpDir(t)
  const sendPath = join(dir, 'send.sock')
  const recvPath = join(dir, 'recv.sock')
  // A socket file left behind by a dead process (Python does not unlink on exit).
  const py = spawnSync(PYTHON, [
    '-c',
    'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])',
    sendPath,
  ])
  t.equal(py.status, 0)
  t.ok(lstatSync(sendPath).isSocket(), 'a stale socket file is in the way')

  const h = await handler(t, { sendSpec: `ipc://${sendPath}`, recvSpec: `ipc://${recvPath}` })
  t.equal(h.sock.sendEndpoint, `ipc://${sendPath}`)
  t.equal(h.sock.recvEndpoint, `ipc://${recvPath}`)
  await workingHandler(t, h)
  for (let i = 0; i < 3; i++) h.sock.send(Buffer.from(`over ipc ${i}`))
  await h.replyCount(3)
  t.same(h.replies, ['ok:over ipc 0', 'ok:over ipc 1', 'ok:over ipc 2'])
  h.sock.close()
  t.notOk(existsSync(recvPath), 'the socket file is removed on close')
})

t.test('a PULL that disconnects mid-stream: later requests go to the other', async (t) => {
  const h = await handler(t)
  const pullA = zmq(t, new Pull({ receiveTimeout: WAIT_MS }))
  pullA.connect(h.sock.sendEndpoint)
  await h.connected('push', 1)
  const pullB = zmq(t, new Pull({ receiveTimeout: WAIT_MS }))
  pullB.connect(h.sock.sendEndpoint)
  await h.connected('push', 2)
  for (let i = 0; i < 10; i++) h.sock.send(Buffer.from(`first ${i}`))
  const a = await receiveN(pullA, 5)
  const b = await receiveN(pullB, 5)
  t.same([...a, ...b].sort(), Array.from({ length: 10 }, (_, i) => `first ${i}`).sort())

  pullA.close()
  await h.disconnected('push', 1)
  for (let i = 0; i < 10; i++) h.sock.send(Buffer.from(`then ${i}`))
  t.same(
    await receiveN(pullB, 10),
    Array.from({ length: 10 }, (_, i) => `then ${i}`),
    'all to the remaining PULL, in order',
  )
})

t.test('raw peers: PING/PONG, 3.0 vs 3.1 subscriptions, topic filter, multipart', async (t) => {
  const h = await handler(t, { recvIdent: 'abc' })

  const pull = await rawPeer(h.sock.sendEndpoint)
  t.teardown(pull.close)
  pull.handshake('PULL')
  await pull.frame(1)
  const ready = parseCommand(pull.frames[0]!.body)
  t.equal(ready.name, 'READY')
  const meta = parseMetadata(ready.data)
  t.equal(meta.get('socket-type')?.toString(), 'PUSH')
  t.equal(meta.get('identity')?.toString(), 'zmtp-test', 'Identity is the send_ident')
  pull.sock.write(encodePing(10, Buffer.from('ctx-1')))
  await pull.frame(2)
  t.same(
    pull.frames[1],
    { body: encodeCommand('PONG', Buffer.from('ctx-1')).subarray(2), flags: FLAG_COMMAND },
    'PONG echoes the context',
  )

  const pub31 = await rawPeer(h.sock.recvEndpoint)
  t.teardown(pub31.close)
  pub31.handshake('PUB', 1)
  await pub31.frame(2)
  t.same(pub31.frames[1]!.flags, FLAG_COMMAND, 'a 3.1 peer gets a command')
  t.same(parseCommand(pub31.frames[1]!.body), { name: 'SUBSCRIBE', data: Buffer.from('abc') })

  const pub30 = await rawPeer(h.sock.recvEndpoint)
  t.teardown(pub30.close)
  pub30.handshake('XPUB', 0)
  await pub30.frame(2)
  t.same(pub30.frames[1], { body: Buffer.from('\x01abc'), flags: 0 }, 'a 3.0 peer gets %x01+topic')
  await h.onReady()

  pub30.sock.write(
    Buffer.concat([
      encodeFrame(Buffer.from('abc one')),
      encodeFrame(Buffer.from('xyz not for us')),
      encodeFrame(Buffer.from('ab')), // shorter than the topic
      encodeFrame(Buffer.from('abc '), true),
      encodeFrame(Buffer.from('multi'), true),
      encodeFrame(Buffer.from('part')),
      encodePing(0),
      encodeFrame(Buffer.from('abc last')),
    ]),
  )
  await h.replyCount(3)
  t.same(h.replies, ['abc one', 'abc multipart', 'abc last'], 'filtered by topic, parts joined')
  await pub30.frame(3)
  t.same(
    pub30.frames[2],
    { body: encodeCommand('PONG').subarray(2), flags: FLAG_COMMAND },
    'the SUB side answers PING too',
  )
  t.notOk(pub30.frames.some((f) => (f.flags & FLAG_MORE) !== 0))

  // A PULL never sends messages: one that does is broken.
  pull.sock.write(encodeFrame(Buffer.from('from a PULL')))
  await pull.closed()
  await h.refused(/PULL sockets only receive/)
})

t.test('a 3.1 PUB counts once it answers the PING sent after our SUBSCRIBE', async (t) => {
  // A PUB drops what it sends before its subscription is in: a request delivered to a handler
  // the moment it connects (a held one) would lose its reply. The PONG says it is in.
  const h = await handler(t)
  const pull = await rawPeer(h.sock.sendEndpoint)
  t.teardown(pull.close)
  pull.handshake('PULL')
  await h.connected('push', 1)
  const pub = await rawPeer(h.sock.recvEndpoint)
  t.teardown(pub.close)
  pub.handshake('PUB', 1)
  await pub.frame(3)
  t.same(parseCommand(pub.frames[1]!.body), { name: 'SUBSCRIBE', data: Buffer.alloc(0) })
  const ping = parseCommand(pub.frames[2]!.body)
  t.equal(ping.name, 'PING', 'then a PING')
  t.notOk(h.sock.ready, 'not ready while the PING is unanswered')
  t.equal(h.readyCalls, 0, 'so held requests stay held')
  pub.sock.write(encodeCommand('PONG', parsePing(ping.data).context))
  await h.onReady()
  t.equal(h.sock.peerCount, 1, 'ready once the PONG is in')

  // A 3.1 peer that never answers still counts, later.
  const h2 = await handler(t)
  const pull2 = await rawPeer(h2.sock.sendEndpoint)
  t.teardown(pull2.close)
  pull2.handshake('PULL')
  const silent = await rawPeer(h2.sock.recvEndpoint)
  t.teardown(silent.close)
  silent.handshake('PUB', 1)
  await silent.frame(3)
  const asked = Date.now()
  await h2.onReady()
  t.ok(Date.now() - asked >= SUBSCRIBE_CONFIRM_MS - 50, `counted after ${SUBSCRIBE_CONFIRM_MS} ms`)
})

t.test('endpoint specs', async (t) => {
  t.same(parseEndpoint('tcp://127.0.0.1:9999'), { kind: 'tcp', host: '127.0.0.1', port: 9999 })
  t.same(parseEndpoint('tcp://*:*'), { kind: 'tcp', host: '0.0.0.0', port: 0 })
  t.same(parseEndpoint('tcp://[::1]:0'), { kind: 'tcp', host: '::1', port: 0 })
  t.same(parseEndpoint('tcp://localhost:80'), { kind: 'tcp', host: 'localhost', port: 80 })
  t.same(parseEndpoint('ipc:///run/x.sock'), { kind: 'ipc', path: '/run/x.sock' })
  t.same(parseEndpoint('ipc://@abstract'), { kind: 'ipc', path: '\0abstract' })
  for (const bad of [
    'inproc://x',
    'tcp://127.0.0.1',
    'tcp://:80',
    'tcp://h:99999',
    'ipc://',
    'ipc://*',
    `ipc:///${'x'.repeat(107)}`,
    'udp://h:1',
  ]) {
    t.throws(() => parseEndpoint(bad), { code: 'E_ZMTP' }, bad)
  }
  const h = new ZmtpHandlerSocket(
    {
      kind: 'handler',
      sendSpec: 'tcp://256.1.1.1:1',
      sendIdent: 'x',
      recvSpec: 'tcp://127.0.0.1:*',
      recvIdent: '',
      protocol: 'json',
      rawPayload: false,
    },
    { onReply: () => {}, onReady: () => {} },
    pino({ level: 'silent' }),
  )
  t.teardown(() => h.close())
  await t.rejects(h.bind(), { code: 'E_ZMTP' }, 'a failed listen is E_ZMTP')
})

t.test('handshake violations are refused with the reason', async (t) => {
  const h = await handler(t)
  const greet = encodeGreeting()
  const rows: [string, Buffer, RegExp][] = [
    ['MESSAGE BEFORE READY', encodeFrame(Buffer.from('hi')), /message before its READY/],
    [
      'ERROR INSTEAD OF READY',
      encodeCommand('ERROR', Buffer.from('\x07go away')),
      /peer sent ERROR: go away/,
    ],
    [
      'ANOTHER MECHANISM COMMAND',
      encodeCommand('HELLO'),
      /sent HELLO where the NULL mechanism expects READY/,
    ],
    ['NO SOCKET-TYPE', encodeReady({ Identity: 'x' }), /socket without Socket-Type/],
    [
      'TRUNCATED METADATA',
      encodeCommand('READY', Buffer.from('\x0bSocket-Type\0\0\0\x09PULL')),
      /declares 9 bytes but 4 follow/,
    ],
    ['BAD COMMAND NAME', Buffer.from('\x04\x02\x00A'), /empty name/],
  ]
  for (const [name, frame, reason] of rows) {
    const peer = await rawPeer(h.sock.sendEndpoint)
    t.teardown(peer.close)
    peer.sock.write(Buffer.concat([greet, frame]))
    await peer.closed()
    await h.refused(reason)
    t.pass(name)
  }
  t.equal(h.sock.ready, false)

  const file = join(shortTmpDir(t), 'not-a-socket')
  writeFileSync(file, 'data')
  const bad = new ZmtpHandlerSocket(
    {
      kind: 'handler',
      sendSpec: `ipc://${file}`,
      sendIdent: 'x',
      recvSpec: 'tcp://127.0.0.1:*',
      recvIdent: '',
      protocol: 'json',
      rawPayload: false,
    },
    { onReply: () => {}, onReady: () => {} },
    pino({ level: 'silent' }),
  )
  t.teardown(() => bad.close())
  await t.rejects(
    bad.bind(),
    { code: 'E_ZMTP', message: /is not a socket/ },
    'a regular file is left alone',
  )
  t.ok(existsSync(file))
})

t.test('an onReply that throws loses that reply only', async (t) => {
  const watch = new Watch()
  const got: string[] = []
  const sock = new ZmtpHandlerSocket(
    {
      kind: 'handler',
      sendSpec: 'tcp://127.0.0.1:*',
      sendIdent: 'x',
      recvSpec: 'tcp://127.0.0.1:*',
      recvIdent: '',
      protocol: 'json',
      rawPayload: false,
    },
    {
      onReply: (msg) => {
        if (msg.toString() === 'ok:boom') throw new Error('bug in the caller')
        got.push(msg.toString())
        watch.changed()
      },
      onReady: () => watch.changed(),
    },
    pino({ level: 'silent' }),
  )
  await sock.bind()
  t.teardown(() => sock.close())
  const pull = zmq(t, new Pull({ receiveTimeout: WAIT_MS }))
  const pub = zmq(t, new Publisher())
  pull.connect(sock.sendEndpoint)
  pub.connect(sock.recvEndpoint)
  echo(pull, pub, 'ok:')
  await watch.until(() => sock.ready, 'ready')
  sock.send(Buffer.from('boom'))
  sock.send(Buffer.from('after'))
  await watch.until(() => got.length > 0, 'the reply after the throw')
  t.same(got, ['ok:after'], 'the connection survived the throw')
})
