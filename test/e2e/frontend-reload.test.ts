/**
 * SIGHUP makes the frontend read its config again, as Mongrel2 does: new routes and handlers
 * start serving, removed ones stop (after the requests they have), a broken file keeps the
 * running config.
 */
import { writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import t from 'tap'
import { startFrontendProcess } from '../helpers/frontend.js'
import { logRecord, REPO, startProcess } from '../helpers/process.js'

const handler = (name: string): string =>
  `${name} = Handler(send_spec='tcp://127.0.0.1:*', send_ident='${name}', recv_spec='tcp://127.0.0.1:*', recv_ident='')`
const conf = (routes: string, extra = ''): string => `
${handler('one')}
${handler('two')}
${extra}
main = Server(uuid='f400bf85-4538-4f7a-8908-67e313d515c2', name='main', chroot='./', default_host='localhost',
    bind_addr='127.0.0.1', port=6767, hosts=[Host(name='localhost', routes={${routes}})])
settings = {'limits.handler_wait': 5000}
servers = [main]
`

t.test('SIGHUP applies a changed config without a restart', async (t) => {
  const dir = t.testdir({ public: { 'hi.txt': 'static hi\n' } })
  const fe = await startFrontendProcess(dir, conf(`'/one/': one`))
  const one = startProcess(
    '/usr/bin/python3',
    [join(REPO, 'test/fixtures/handlers/m2handler.py')],
    { env: fe.handlerEnv('one') },
  )
  t.teardown(async () => {
    await one.stop()
    await fe.proc.stop()
  })
  t.equal((await fetch(`${fe.url}/one/x`)).status, 200, 'the first route serves')
  t.equal((await fetch(`${fe.url}/two/x`)).status, 404, 'the second is not there yet')

  const reloaded = (n: number): Promise<Record<string, unknown>> =>
    fe.proc
      .waitFor(
        (l) =>
          logRecord(l)?.msg === 'reloaded' &&
          fe.proc.lines.filter((x) => logRecord(x)?.msg === 'reloaded').length >= n,
      )
      .then((l) => logRecord(l)!)

  writeFileSync(
    join(dir, 'frontend.conf'),
    conf(
      `'/one/': one, '/two/': two, '/static/': Dir(base='public/', index_file='index.html', default_ctype='text/plain')`,
    ),
  )
  fe.proc.child.kill('SIGHUP')
  const rec = await reloaded(1)
  const servers = (
    rec.endpoints as {
      servers: { handlers: { sendIdent: string; sendSpec: string; recvSpec: string }[] }[]
    }
  ).servers
  const two = servers[0]!.handlers.find((h) => h.sendIdent === 'two')!
  t.ok(two, 'the new handler is bound and reported')
  const py2 = startProcess(
    '/usr/bin/python3',
    [join(REPO, 'test/fixtures/handlers/m2handler.py')],
    {
      env: { BAREKU_HANDLER_SEND_SPEC: two.sendSpec, BAREKU_HANDLER_RECV_SPEC: two.recvSpec },
    },
  )
  t.teardown(() => py2.stop())
  const res = await fetch(`${fe.url}/two/x`)
  t.equal(res.status, 200, 'the new route serves through the new handler')
  t.equal(((await res.json()) as { sender: string }).sender, 'two')
  t.equal(
    await (await fetch(`${fe.url}/static/hi.txt`)).text(),
    'static hi\n',
    'a new Dir route serves',
  )
  t.equal((await fetch(`${fe.url}/one/x`)).status, 200, 'the old route still serves')

  writeFileSync(join(dir, 'frontend.conf'), 'main = Server(this is not a config')
  fe.proc.child.kill('SIGHUP')
  await fe.proc.waitFor((l) => logRecord(l)?.msg === 'reload failed, keeping the running config')
  t.equal((await fetch(`${fe.url}/two/x`)).status, 200, 'a broken file keeps the running config')

  writeFileSync(join(dir, 'frontend.conf'), conf(`'/two/': two`))
  fe.proc.child.kill('SIGHUP')
  await reloaded(2)
  t.equal((await fetch(`${fe.url}/one/x`)).status, 404, 'a removed route is gone')
  t.equal((await fetch(`${fe.url}/two/x`)).status, 200, 'the kept route still serves')
})

t.test('a proxy route replaced by a Dir route finishes the request it has', async (t) => {
  const dir = t.testdir({ public: { 'index.html': 'static now\n' } })
  // A backend whose /slow answer waits until the test lets it go.
  let release: (() => void) | undefined
  let backendGot: (() => void) | undefined
  const got = new Promise<void>((resolve) => (backendGot = resolve))
  const backend = createServer((req, res) => {
    if (req.url === '/slow') {
      backendGot?.()
      release = () => res.end('slow from the backend\n')
      return
    }
    res.end('fast from the backend\n')
  })
  await new Promise<void>((resolve) => backend.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => backend.close(() => resolve())))
  const port = (backend.address() as AddressInfo).port
  const proxied = conf(`'/': Proxy(addr='127.0.0.1', port=${port})`)
  const fe = await startFrontendProcess(dir, proxied)
  t.teardown(() => fe.proc.stop())
  t.equal(await (await fetch(`${fe.url}/x`)).text(), 'fast from the backend\n', 'proxied')

  const slow = fetch(`${fe.url}/slow`).then((r) => r.text())
  await got
  writeFileSync(
    join(dir, 'frontend.conf'),
    conf(`'/': Dir(base='public/', index_file='index.html', default_ctype='text/plain')`),
  )
  const mark = fe.proc.lines.length
  fe.proc.child.kill('SIGHUP')
  await fe.proc.waitFor((l) => logRecord(l)?.msg === 'reloaded' && fe.proc.lines.indexOf(l) >= mark)
  t.equal(await (await fetch(`${fe.url}/`)).text(), 'static now\n', 'new requests get the files')
  release!()
  t.equal(
    await slow,
    'slow from the backend\n',
    'the request in flight was answered by the backend',
  )
})
