/**
 * Release-aware routing in the real frontend process, from a JSON route table with a
 * `releases` target (what the master publishes during a deploy): new requests go to the newest
 * release with a connected handler; a WebSocket stays on the release it was opened on until
 * limits.websocket_drain after the newer release took over, then is closed with 1001 (going
 * away) and a new one goes to the new release; the older release is then logged drained. The
 * new release's share ramps up over limits.release_ramp (default 1 s; 0: all at once).
 */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import WebSocket from 'ws'
import { logRecord, REPO, startProcess, type Proc } from '../helpers/process.js'

const PYTHON = '/usr/bin/python3'
const HANDLER = join(REPO, 'test/fixtures/apps/release-handler/handler.py')

const handler = (ident: string) => ({
  kind: 'handler',
  sendSpec: 'tcp://127.0.0.1:*',
  sendIdent: ident,
  recvSpec: 'tcp://127.0.0.1:*',
})
const table = {
  servers: [
    {
      uuid: 'deploy',
      name: 'main',
      bindAddr: '127.0.0.1',
      port: 0,
      defaultHost: 'shop',
      hosts: [
        {
          name: 'shop',
          routes: {
            '/': {
              kind: 'releases',
              app: 'shop',
              releases: [
                { release: 2, target: handler('rel-2') },
                { release: 1, target: handler('rel-1') },
              ],
            },
          },
        },
      ],
    },
  ],
  settings: { 'limits.websocket_drain': 1500, 'limits.handler_wait': 5000 },
}

interface Frontend {
  proc: Proc
  file: string
  port: number
  endpoints: Map<string, { sendSpec: string; recvSpec: string }>
}

/** The frontend process on `routes` (a route table), once it is ready. */
async function startFrontend(dir: string, routes: unknown): Promise<Frontend> {
  const file = join(dir, 'routes.json')
  writeFileSync(file, JSON.stringify(routes))
  const proc = startProcess(join(REPO, 'bin/bareku'), ['frontend', '--config', file], {
    env: { BAREKU_FRONTEND_LISTEN: '127.0.0.1:0' },
    cwd: dir,
  })
  const ready = logRecord(await proc.waitFor((l) => logRecord(l)?.msg === 'ready'))!
  const server = (
    ready.endpoints as {
      servers: {
        port: number
        handlers: { sendIdent: string; sendSpec: string; recvSpec: string }[]
      }[]
    }
  ).servers[0]!
  return {
    proc,
    file,
    port: server.port,
    endpoints: new Map(server.handlers.map((h) => [h.sendIdent, h])),
  }
}

let shared: Frontend
let fe: Proc
let file = ''
let port = 0
t.before(async () => {
  shared = await startFrontend(t.testdir(), table)
  fe = shared.proc
  file = shared.file
  port = shared.port
})
t.teardown(() => fe.stop())

/** Release `release`'s handler (release-handler.py), connected to `on` (the shared frontend). */
async function startHandler(t: Test, release: number, on = shared): Promise<Proc> {
  const ep = on.endpoints.get(`rel-${release}`)!
  const p = startProcess(PYTHON, [HANDLER], {
    env: {
      BAREKU_HANDLER_SEND_SPEC: ep.sendSpec,
      BAREKU_HANDLER_RECV_SPEC: ep.recvSpec,
      BAREKU_RELEASE: `v${release}`,
      INSTANCE: `r${release}`,
    },
  })
  t.teardown(() => p.stop(500))
  await p.waitFor(/^ready$/)
  return p
}

async function text(path: string): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { headers: { host: 'shop' } })
  return res.text()
}

function openWs(): Promise<{ ws: WebSocket; next(): Promise<string>; closed: Promise<number> }> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { host: 'shop' } })
  const queue: string[] = []
  const waiting: ((m: string) => void)[] = []
  ws.on('message', (data: Buffer) => {
    const m = data.toString('utf8')
    const w = waiting.shift()
    if (w) w(m)
    else queue.push(m)
  })
  const closed = new Promise<number>((resolve) => ws.on('close', (code) => resolve(code)))
  return new Promise((resolve, reject) => {
    ws.on('open', () =>
      resolve({
        ws,
        closed,
        next: () =>
          queue.length > 0
            ? Promise.resolve(queue.shift()!)
            : new Promise<string>((r) => waiting.push(r)),
      }),
    )
    ws.on('error', reject)
  })
}

t.test(
  'new requests go to the newest ready release; WebSockets move after the drain',
  async (t) => {
    await startHandler(t, 1)
    t.equal(await text('/a'), 'release v1 instance r1 path /a', 'only v1 connected: v1 serves')
    const old = await openWs()
    old.ws.send('hi')
    t.equal(await old.next(), 'release v1 ws hi')

    const mark = fe.lines.length
    await startHandler(t, 2)
    // Slow start: until v2 takes all new requests, a growing share goes to it, the rest to v1.
    const serving = (): boolean =>
      fe.lines
        .slice(mark)
        .some((l) => logRecord(l)?.msg === 'release serving' && logRecord(l)?.release === 2)
    const during = new Set<string>()
    for (let n = 0; !serving() && n < 20_000; n++) {
      during.add(/^release (v\d)/.exec(await text(`/ramp/${n}`))?.[1] ?? '?')
    }
    t.ok(serving(), "v2's ramp ended")
    t.same([...during].sort(), ['v1', 'v2'], 'during the ramp both releases answered')
    t.equal(
      await text('/b'),
      'release v2 instance r2 path /b',
      'v2 connected: new requests go to v2',
    )
    old.ws.send('still')
    t.equal(await old.next(), 'release v1 ws still', 'the open WebSocket stays on v1')

    const started = Date.now()
    t.equal(await old.closed, 1001, 'closed with going away after limits.websocket_drain')
    t.ok(Date.now() - started > 500, 'not at once')
    await fe.waitFor((l) => logRecord(l)?.msg === 'release drained' && logRecord(l)?.release === 1)
    const fresh = await openWs()
    fresh.ws.send('hello')
    t.equal(await fresh.next(), 'release v2 ws hello', 'a new WebSocket goes to v2')
    fresh.ws.close()
    await fresh.closed
  },
)

t.test('a release dropped from the table finishes the requests it has first', async (t) => {
  const v1 = await startHandler(t, 1)
  t.equal(await text('/a'), 'release v1 instance r1 path /a', 'only v1 connected: v1 serves')
  const slow = text('/slow/800')
  await v1.waitFor(/^got \/slow\/800$/)
  // The table loses release 1 while its handler holds the slow request.
  const only2 = structuredClone(table)
  const route = only2.servers[0]!.hosts[0]!.routes['/']
  route.releases = route.releases.filter((r) => r.release === 2)
  writeFileSync(file, JSON.stringify(only2))
  const mark = fe.lines.length
  fe.child.kill('SIGHUP')
  await fe.waitFor((l) => logRecord(l)?.msg === 'handler retiring' && fe.lines.indexOf(l) >= mark)
  t.equal(await slow, 'release v1 instance r1 path /slow/800', 'answered by the retiring release')
  await fe.waitFor(
    (l) =>
      logRecord(l)?.msg === 'handler removed' &&
      logRecord(l)?.handler === 'rel-1' &&
      fe.lines.indexOf(l) >= mark,
  )
})

t.test('limits.release_ramp 0: a ready release takes every new request at once', async (t) => {
  const noRamp = structuredClone(table)
  Object.assign(noRamp.settings, { 'limits.release_ramp': 0 })
  const own = await startFrontend(t.testdir(), noRamp)
  t.teardown(() => own.proc.stop())
  const start = async (release: number): Promise<void> => {
    await startHandler(t, release, own)
    await own.proc.waitFor((l) => {
      const r = logRecord(l)
      return r?.msg === 'handler peers' && r.handler === `rel-${release}` && r.peers === 1
    })
  }
  const get = async (path: string): Promise<string> => {
    const res = await fetch(`http://127.0.0.1:${own.port}${path}`, { headers: { host: 'shop' } })
    return /^release (v\d)/.exec(await res.text())?.[1] ?? '?'
  }

  await start(1)
  t.equal(await get('/a'), 'v1', 'only v1 connected: v1 serves')
  await start(2)
  const answers = new Set<string>()
  for (let n = 0; n < 20; n++) answers.add(await get(`/at-once/${n}`))
  // With the default ramp (1 s), most of 20 requests made at once would still go to v1.
  t.same([...answers], ['v2'], 'every request after v2 connected went to v2')
  await own.proc.waitFor(
    (l) => logRecord(l)?.msg === 'release drained' && logRecord(l)?.release === 1,
  )
  t.pass('and v1 drained')
})
