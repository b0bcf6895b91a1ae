/**
 * Requests in the hands of a handler that dies: the real frontend process and real handler
 * processes (test/fixtures/apps/release-handler, python3-zmq). A GET a killed handler took is
 * answered by another handler, or held until one connects; a POST gets a clear 502; a draining
 * handler (SIGTERM: PULL closed first) still answers what it holds, and nothing is retried.
 * Also the holding of a request while no handler is connected, and its 503 past the deadline.
 */
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { logRecord, REPO, startProcess, type Proc } from '../helpers/process.js'
import { startFrontendProcess, type RunningFrontend } from '../helpers/frontend.js'

const PYTHON = '/usr/bin/python3'
const HANDLER = join(REPO, 'test/fixtures/apps/release-handler/handler.py')

const conf = `
h = Handler(send_spec='tcp://127.0.0.1:*', send_ident='h', recv_spec='tcp://127.0.0.1:*', recv_ident='')
idle = Handler(send_spec='tcp://127.0.0.1:*', send_ident='idle', recv_spec='tcp://127.0.0.1:*', recv_ident='')
main = Server(uuid='d1', name='main', chroot='./', default_host='localhost', bind_addr='127.0.0.1',
    port=6767, hosts=[Host(name='localhost', routes={'/': h, '/idle/': idle})])
settings = {'limits.handler_wait': 1500, 'limits.handler_lost_grace': 3000}
servers = [main]
`

let fe: RunningFrontend
t.before(async () => {
  fe = await startFrontendProcess(t.testdir(), conf)
})
t.teardown(() => fe.proc.stop())

/** Resolves once the frontend counts `n` handler processes on h, logged after line `mark`. */
function peers(n: number, mark: number): Promise<string> {
  return fe.proc.waitFor((l) => {
    const r = logRecord(l)
    return (
      r?.msg === 'handler peers' &&
      r.handler === 'h' &&
      r.peers === n &&
      fe.proc.lines.indexOf(l) >= mark
    )
  })
}

async function handler(t: Test, instance: string, env: NodeJS.ProcessEnv = {}): Promise<Proc> {
  const mark = fe.proc.lines.length
  const before = Number(
    logRecord(fe.proc.lines.findLast((l) => logRecord(l)?.msg === 'handler peers') ?? '{}')
      ?.peers ?? 0,
  )
  const p = startProcess(PYTHON, [HANDLER], {
    env: { ...fe.handlerEnv('h'), INSTANCE: instance, BAREKU_RELEASE: 'v1', ...env },
  })
  t.teardown(() => p.stop(500))
  await p.waitFor(/^ready$/)
  await peers(before + 1, mark)
  return p
}

/** Resolves with the first frontend log record `msg` printed at or after line `mark`. */
function logged(msg: string, mark: number): Promise<string> {
  return fe.proc.waitFor((l) => logRecord(l)?.msg === msg && fe.proc.lines.indexOf(l) >= mark)
}

async function killed(p: Proc): Promise<void> {
  p.child.kill('SIGKILL')
  await p.exited
}

t.test('a GET a killed handler took is answered by another handler', async (t) => {
  const a = await handler(t, 'A', { HANG: '1' })
  const b = await handler(t, 'B')
  const answers = [1, 2, 3, 4].map(() => fetch(`${fe.url}/hang`))
  await a.waitFor(/^got \/hang$/)
  const mark = fe.proc.lines.length
  await killed(a)
  const res = await Promise.all(answers)
  t.same(
    res.map((r) => r.status),
    [200, 200, 200, 200],
  )
  for (const r of res) t.equal(await r.text(), 'release v1 instance B path /hang')
  await logged('retrying a lost request', mark)
  t.ok(b.lines.filter((l) => l === 'got /hang').length >= 4, 'B answered its own and the retried')
  await peers(1, mark)
  const last = fe.proc.lines.length
  await b.stop(500)
  await peers(0, last)
})

t.test('a GET whose only handler was killed waits for the next one', async (t) => {
  const a = await handler(t, 'A', { HANG: '1' })
  const pending = fetch(`${fe.url}/hang`)
  await a.waitFor(/^got \/hang$/)
  const mark = fe.proc.lines.length
  await killed(a)
  // No handler is left: the retried request is held until one connects.
  await logged('retrying a lost request', mark)
  await peers(0, mark)
  await handler(t, 'C')
  const res = await pending
  t.equal(res.status, 200)
  t.equal(await res.text(), 'release v1 instance C path /hang')
})

t.test('a POST a killed handler took gets a clear 502', async (t) => {
  const a = await handler(t, 'A2', { HANG: '1' })
  const started = Date.now()
  const pending = fetch(`${fe.url}/hang`, { method: 'POST', body: 'x=1' })
  await a.waitFor(/^got \/hang$/)
  const mark = fe.proc.lines.length
  await killed(a)
  await peers(0, mark)
  const res = await pending
  t.equal(res.status, 502)
  t.match(await res.text(), /handler died before answering.*not idempotent/)
  t.ok(Date.now() - started < 3000, 'answered before the lost grace: the handler was seen dead')
})

t.test('a draining handler answers what it holds; nothing is retried', async (t) => {
  const retries = fe.proc.lines.filter((l) => logRecord(l)?.msg === 'retrying a lost request')
  const a = await handler(t, 'D')
  const pending = fetch(`${fe.url}/slow/400`, { method: 'POST', body: 'x' })
  await a.waitFor(/^got \/slow\/400$/)
  const mark = fe.proc.lines.length
  a.child.kill('SIGTERM')
  const res = await pending
  t.equal(res.status, 200)
  t.equal(await res.text(), 'release v1 instance D path /slow/400')
  t.equal(await a.exited, 0)
  await peers(0, mark)
  t.equal(
    fe.proc.lines.filter((l) => logRecord(l)?.msg === 'retrying a lost request').length,
    retries.length,
  )
})

t.test('with no handler, a request is held, then gets a 503 with Retry-After', async (t) => {
  const started = Date.now()
  const res = await fetch(`${fe.url}/idle/x`)
  t.equal(res.status, 503)
  t.equal(res.headers.get('retry-after'), '5')
  t.match(await res.text(), /no handler of this route connected within 1500 ms/)
  t.ok(Date.now() - started >= 1400, 'held for the deadline')
})
