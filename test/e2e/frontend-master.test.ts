/**
 * Without a config file the frontend follows the master's route table: a fake master (real
 * ROUTER + XPUB, as master/ binds them) publishes tables; the frontend applies the newer ones,
 * ignores older ones and garbage, and a frontend restarted while the master is gone serves the
 * last table from its cache.
 */
import { request, createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { Router, XPublisher } from 'zeromq'
import { encodeRouteTable, parseRouteTable } from '../../lib/config/routes.js'
import { encodeControlReply } from '../../lib/protocol/control.js'
import { encodePublication } from '../../lib/protocol/host-list.js'
import { logRecord, REPO, startProcess, type Proc } from '../helpers/process.js'

function table(hosts: Record<string, number>) {
  return JSON.parse(
    encodeRouteTable(
      parseRouteTable({
        servers: [
          {
            uuid: 'bareku',
            name: 'bareku',
            port: 8080,
            defaultHost: 'default',
            hosts: [
              { name: 'default', routes: {} },
              ...Object.entries(hosts).map(([name, port]) => ({
                name,
                routes: { '/': { kind: 'proxy', backends: [{ addr: '127.0.0.1', port }] } },
              })),
            ],
          },
        ],
      }),
    ),
  ) as unknown
}

/** A master as far as a frontend sees one: `endpoints` on a ROUTER, tables on an XPUB. */
async function fakeMaster(t: Test) {
  const control = new Router({ linger: 0 })
  const pub = new XPublisher({ linger: 0 })
  await control.bind('tcp://127.0.0.1:*')
  await pub.bind('tcp://127.0.0.1:*')
  let current: Buffer[] | undefined
  const subscribed = new Promise<void>((resolve) => {
    void (async () => {
      for await (const [msg] of pub) {
        if (msg?.[0] === 1) {
          if (current) await pub.send(current)
          resolve()
        }
      }
    })().catch(() => {})
  })
  void (async () => {
    for await (const [id, empty] of control) {
      const result = {
        publish: pub.lastEndpoint,
        stats: 'tcp://127.0.0.1:1',
        slugs: 'tcp://127.0.0.1:1',
      }
      await control.send([id!, empty!, encodeControlReply({ result })])
    }
  })().catch(() => {})
  const m = {
    endpoint: control.lastEndpoint!,
    subscribed,
    async publish(frames: Buffer[]) {
      current = frames
      await pub.send(frames)
    },
    close() {
      control.close()
      pub.close()
    },
  }
  t.teardown(() => m.close())
  return m
}

async function backend(t: Test, body: string): Promise<number> {
  const server: Server = createServer((_req, res) => res.end(body))
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => server.close())
  return (server.address() as AddressInfo).port
}

function get(port: number, host: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/', headers: { host } }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => (body += c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

async function startFrontend(t: Test, master: string, home: string) {
  const proc = startProcess(`${REPO}/bin/bareku`, ['frontend', '--master', master], {
    env: { BAREKU_HOME: home, BAREKU_FRONTEND_LISTEN: '127.0.0.1:0', LOG_LEVEL: 'info' },
  })
  t.teardown(() => proc.stop())
  const ready = logRecord(await proc.waitFor((l) => logRecord(l)?.msg === 'ready'))!
  const port = (ready.endpoints as { servers: { port: number }[] }).servers[0]!.port
  return { proc, port }
}

const applied = (proc: Proc, n: number) =>
  proc.waitFor(
    () => proc.lines.filter((l) => logRecord(l)?.msg === 'route table applied').length >= n,
  )

t.test('the frontend follows the master and keeps its last table', async (t) => {
  const home = t.testdir({})
  const one = await backend(t, 'one')
  const two = await backend(t, 'two')
  const master = await fakeMaster(t)
  await master.publish(encodePublication('frontend', 1, 5, table({ 'one.localhost': one })))
  const fe = await startFrontend(t, master.endpoint, home)
  await applied(fe.proc, 1)
  t.same(await get(fe.port, 'one.localhost'), { status: 200, body: 'one' }, 'an app answers')
  t.equal((await get(fe.port, 'nothing.localhost')).status, 404, 'an unknown host is a 404')

  // Older than what it has: ignored. Garbage: dropped with a warning. Newer: applied.
  await master.publish(encodePublication('frontend', 1, 4, table({})))
  await master.publish([Buffer.from('frontend\0'), Buffer.from('{'), Buffer.from('x')])
  await fe.proc.waitFor((l) => logRecord(l)?.msg === 'route table publication dropped')
  t.equal((await get(fe.port, 'one.localhost')).status, 200, 'the older table was ignored')
  await master.publish(encodePublication('frontend', 1, 6, table({ 'two.localhost': two })))
  await applied(fe.proc, 2)
  t.same(await get(fe.port, 'two.localhost'), { status: 200, body: 'two' })
  t.equal((await get(fe.port, 'one.localhost')).status, 404, 'the removed app is gone')

  // The master goes away; a restarted frontend serves the cached table at once.
  master.close()
  await fe.proc.stop()
  const again = await startFrontend(t, master.endpoint, home)
  t.same(await get(again.port, 'two.localhost'), { status: 200, body: 'two' }, 'from the cache')
  t.notOk(again.proc.lines.some((l) => logRecord(l)?.msg === 'route table applied'))
})

t.test('a bad master endpoint is a clear error', async (t) => {
  const proc = startProcess(`${REPO}/bin/bareku`, ['frontend', '--master', 'nonsense'], {
    env: { BAREKU_HOME: t.testdir({}) },
  })
  t.equal(await proc.exited, 1)
  t.match(proc.lines.join('\n'), /tcp:\/\/HOST:PORT, got "nonsense"/)
})
