/**
 * @module bench/zmtp: the frontend's handler sockets on their own, libzmq (HandlerSocket, via
 * zeromq.js) against native ZMTP on node:net (ZmtpHandlerSocket). Prints a Markdown table.
 *
 *   npx tsx bench/zmtp.ts                 (about 30 s)
 *   BENCH_MESSAGES=50000 npx tsx bench/zmtp.ts
 *
 * Each row: the socket under test binds on 127.0.0.1; a child process (this file, `child` mode)
 * connects a zeromq.js PULL and PUB, counts every request and publishes a 120-byte reply for it.
 * The parent keeps `window` requests outstanding (a reply lets the next request go), like a
 * frontend with that many clients waiting; `all` sends every request at once. After a warm-up
 * of 20 000 round trips, 200 000 Mongrel2-sized requests (a JSON-header GET, ~700 bytes) are
 * timed.
 *
 * Columns: msgs/s is round trips per second; frontend CPU is process.cpuUsage() of this process
 * over the timed run (user + system, every thread: libzmq's I/O thread included) per message,
 * the system part in brackets; handler CPU is the child's utime + stime from /proc per message.
 * Each row is the median (by frontend CPU) of 3 runs.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import { pino } from 'pino'
import type { HandlerTarget } from '../lib/config/routes.js'
import { encodeRequest } from '../lib/protocol/mongrel2.js'
import { HandlerSocket } from '../frontend/handler-socket.js'
import { ZmtpHandlerSocket } from '../frontend/zmtp-socket.js'

const MESSAGES = Number(process.env.BENCH_MESSAGES ?? 200_000)
const WARMUP = 20_000
const RUNS = 3
const WINDOWS = [50, 1000, Infinity]
const PHASE_TIMEOUT_MS = 120_000

const SENDER = 'c0ffee00-0000-4000-8000-00000000b001'
const UUID = 'a5a5a5a5-0000-4000-8000-0000000c0de1'

/** What Chrome sends for a page, as the frontend turns it into a Mongrel2 request. */
const REQUEST = encodeRequest({
  sender: SENDER,
  connId: 1234,
  path: '/hello/world.html',
  headers: {
    PATH: '/hello/world.html',
    'x-forwarded-for': '127.0.0.1',
    host: 'localhost:8080',
    connection: 'keep-alive',
    'user-agent':
      'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36',
    accept: 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8',
    'accept-encoding': 'gzip, deflate, br',
    'accept-language': 'en-US,en;q=0.9',
    cookie: 'session=3f2a9c1e8b7d4f60a1b2c3d4e5f60718; theme=dark; prefs=compact',
    'cache-control': 'max-age=0',
    METHOD: 'GET',
    VERSION: 'HTTP/1.1',
    URI: '/hello/world.html?a=1&b=two',
    QUERY: 'a=1&b=two',
    PATTERN: '/',
    URL_SCHEME: 'http',
    REMOTE_ADDR: '127.0.0.1',
  },
  body: Buffer.alloc(0),
  format: 'json',
})

/** A Mongrel2 reply: uuid, connection id netstring, a small HTTP response; 120 bytes. */
function replyBytes(): Buffer {
  const head = `${UUID} 4:1234, `
  const http = 'HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, world!'
  const pad = 120 - head.length - http.length
  return Buffer.from(head + http.replace('OK\r\n', `OK\r\nX-Pad: ${'p'.repeat(pad - 9)}\r\n`))
}

// ------------------------------------------------------------------ child: the handler

async function child(sendSpec: string, recvSpec: string): Promise<void> {
  const { Pull, Publisher } = await import('zeromq')
  // Unlimited HWMs: a PUB at its HWM drops replies, which would hang the parent's count.
  const pull = new Pull({ receiveHighWaterMark: 0 })
  const pub = new Publisher({ sendHighWaterMark: 0 })
  pull.connect(sendSpec)
  pub.connect(recvSpec)
  const reply = replyBytes()
  process.stdout.write('ready\n')
  let count = 0
  for await (const [msg] of pull) {
    if (msg === undefined || msg.length === 0) continue
    count++
    await pub.send(reply)
  }
  process.stderr.write(`child counted ${count}\n`)
}

// ------------------------------------------------------------------ parent

interface Sock {
  bind(): Promise<void>
  send(msg: Buffer): void
  close(): void
  readonly ready: boolean
  sendEndpoint: string
  recvEndpoint: string
}

type Impl = 'libzmq' | 'native'

interface Result {
  impl: Impl
  window: number
  msgsPerSec: number
  cpuUs: number
  sysUs: number
  childUs: number
}

const CLK_TCK = 100 // Linux's USER_HZ, what /proc/PID/stat counts in

function childCpuMs(pid: number): number {
  // Fields after the command name (which may hold spaces): utime is field 14, stime 15.
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLK_TCK
}

function startChild(send: string, recv: string): Promise<ChildProcess> {
  const proc = spawn(
    process.execPath,
    ['--import', 'tsx', fileURLToPath(import.meta.url), 'child', send, recv],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  )
  return new Promise((resolve, reject) => {
    proc.stdout.setEncoding('utf8')
    proc.stdout.on('data', (d: string) => {
      if (d.includes('ready')) resolve(proc)
    })
    proc.on('exit', (code) => reject(new Error(`handler child exited (${code}) before "ready"`)))
  })
}

async function run(impl: Impl, window: number): Promise<Result> {
  let replies = 0
  let sent = 0
  let target = 0
  let done: (() => void) | undefined
  let onReady: (() => void) | undefined
  const ready = new Promise<void>((resolve) => (onReady = resolve))
  const events = {
    onReply: () => {
      replies++
      if (sent < target) {
        sock.send(REQUEST)
        sent++
      }
      if (replies === target) done?.()
    },
    onReady: () => onReady?.(),
  }
  const target_: HandlerTarget = {
    kind: 'handler',
    sendSpec: 'tcp://127.0.0.1:*',
    sendIdent: SENDER,
    recvSpec: 'tcp://127.0.0.1:*',
    recvIdent: '',
    protocol: 'json',
    rawPayload: false,
  }
  const log = pino({ level: 'silent' })
  const sock: Sock =
    impl === 'libzmq'
      ? new HandlerSocket(target_, events, log)
      : new ZmtpHandlerSocket(target_, events, log)
  await sock.bind()
  const proc = await startChild(sock.sendEndpoint, sock.recvEndpoint)
  try {
    await ready
    const phase = (n: number): Promise<void> =>
      new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () =>
            reject(new Error(`${impl} window ${window}: ${replies}/${n} replies after timeout`)),
          PHASE_TIMEOUT_MS,
        )
        replies = 0
        sent = 0
        target = n
        done = () => {
          clearTimeout(timer)
          resolve()
        }
        const first = Math.min(window, n)
        for (let i = 0; i < first; i++) {
          sock.send(REQUEST)
          sent++
        }
      })
    await phase(WARMUP)
    const childBefore = childCpuMs(proc.pid!)
    const cpu = process.cpuUsage()
    const t0 = performance.now()
    await phase(MESSAGES)
    const seconds = (performance.now() - t0) / 1000
    const used = process.cpuUsage(cpu)
    const childMs = childCpuMs(proc.pid!) - childBefore
    return {
      impl,
      window,
      msgsPerSec: MESSAGES / seconds,
      cpuUs: (used.user + used.system) / MESSAGES,
      sysUs: used.system / MESSAGES,
      childUs: (childMs * 1000) / MESSAGES,
    }
  } finally {
    proc.kill('SIGKILL')
    sock.close()
  }
}

async function main(): Promise<void> {
  console.log(
    `${MESSAGES} requests of ${REQUEST.length} bytes, 120-byte replies, median of ${RUNS} runs; node ${process.version}\n`,
  )
  console.log('| sender | window | msgs/s | frontend CPU µs/msg (sys) | handler CPU µs/msg |')
  console.log('| --- | ---: | ---: | ---: | ---: |')
  for (const window of WINDOWS) {
    for (const impl of ['libzmq', 'native'] as const) {
      const results: Result[] = []
      for (let i = 0; i < RUNS; i++) results.push(await run(impl, window))
      results.sort((a, b) => a.cpuUs - b.cpuUs)
      const r = results[Math.floor(RUNS / 2)]!
      const name = impl === 'libzmq' ? 'HandlerSocket (libzmq)' : 'ZmtpHandlerSocket (native)'
      console.log(
        `| ${name} | ${Number.isFinite(window) ? window : 'all'} | ${Math.round(r.msgsPerSec).toLocaleString('en-US')} | ${r.cpuUs.toFixed(2)} (${r.sysUs.toFixed(2)}) | ${r.childUs.toFixed(2)} |`,
      )
    }
  }
}

if (process.argv[2] === 'child') {
  await child(process.argv[3]!, process.argv[4]!)
} else {
  await main()
  process.exit(0)
}
