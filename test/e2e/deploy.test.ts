/**
 * Zero-downtime deploys, end to end and under load (bench/deploy-under-load.ts with small
 * numbers): a real cluster (master, worker, client, frontend following the master), an app that
 * answers with its release, keep-alive connections busy through the frontend while the app is
 * redeployed several times in a row and one instance is killed with SIGKILL. Every request must
 * be answered, by a release of the app, with no error; every release must have answered; the
 * old instances must be stopped once drained. A release whose health check fails runs beside
 * the old one and is never routed to.
 */
import { chmodSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { Agent } from 'node:http'
import { join } from 'node:path'
import t from 'tap'
import {
  deployUnderLoad,
  formatResults,
  get,
  startCluster,
  startLoad,
  until,
  workerStatus,
  type AppKind,
} from '../../bench/deploy-under-load.js'
import { packSlug } from '../../lib/slug/pack.js'
import { logRecord, REPO } from '../helpers/process.js'

for (const kind of ['handler', 'web'] as AppKind[]) {
  t.test(`${kind} app: 3 redeploys and a SIGKILL under load, no error, nothing lost`, async (t) => {
    const result = await deployUnderLoad({
      kind,
      connections: 10,
      redeploys: 3,
      killAfter: 2,
      scale: 2,
      dir: t.testdir(),
      timeoutMs: 100_000,
      log: (line) => t.comment(line),
    })
    t.comment(formatResults([result]))
    t.equal(result.errors, 0, `no errors (${result.errorSamples.join(' | ')})`)
    t.equal(result.lost, 0, 'no request lost')
    t.equal(result.answered, result.sent, 'every request answered')
    t.same(Object.keys(result.byRelease).sort(), ['v1', 'v2', 'v3', 'v4'], 'every release answered')
  })
}

t.test('a release whose health check fails is never routed to; a passing one is', async (t) => {
  // Not t.testdir(): its removal would run before the cluster's processes are stopped.
  const dir = mkdtempSync(join(tmpdir(), 'bk-health-'))
  // Apps run as nobody when the worker is root: they must reach their slug below it.
  chmodSync(dir, 0o755)
  const home = join(dir, 'home')
  const cluster = await startCluster(home)
  t.teardown(async () => {
    await cluster.stop()
    rmSync(dir, { recursive: true, force: true })
  })
  mkdirSync(join(home, 'slugs'), { recursive: true })
  const { sha256, size } = await packSlug(
    join(REPO, 'test/fixtures/apps/release-handler'),
    join(home, 'slugs'),
  )
  const app = 'shop'
  const processTypes = { handler: '/usr/bin/python3 handler.py' }
  await cluster.call('apps:create', { name: app })
  await cluster.call('releases:add', { app, slug: { sha256, size }, processTypes })
  const probe = new Agent({ keepAlive: false })
  const host = `${app}.localhost`
  await until(
    'v1 answers',
    async () => (await get(probe, cluster.port, host, '/')).release === 'v1',
    30_000,
  ).catch((err: unknown) => {
    t.comment(cluster.frontend.lines.slice(-30).join('\n'))
    t.comment(JSON.stringify(workerStatus(home)))
    throw err
  })

  const load = startLoad(cluster.port, host, 5)
  const mark = cluster.frontend.lines.length
  const failing = { path: '/health', match: 'nope', attempts: 2, intervalMs: 100, timeoutMs: 1000 }
  await t.rejects(
    cluster.call('releases:add', {
      app,
      slug: { sha256, size },
      processTypes,
      healthchecks: { web: failing },
    }),
    { code: 'E_CONTROL', message: /names no process type/ },
    'a check must name a process type of the release',
  )
  await cluster.call('releases:add', {
    app,
    slug: { sha256, size },
    processTypes,
    healthchecks: { handler: failing },
  })
  await cluster.frontend.waitFor(
    (l) =>
      logRecord(l)?.msg === 'health check failed, release not routed to' &&
      cluster.frontend.lines.indexOf(l) >= mark,
    30_000,
  )
  // The hook's deploy:status says so: the push is to be rejected.
  const v2 = await until(
    'deploy:status says the check failed',
    async () => {
      const st = (await cluster.call('deploy:status', { app, release: 2 })) as {
        healthcheck: string
      }
      return st.healthcheck === 'failed' && st
    },
    30_000,
  )
  t.match(v2, { done: false, failed: /v2 failed its health check/ })
  // v2 runs beside v1, and gets nothing.
  const at = load.samples.length
  await until('more answers', () => load.samples.length > at + 200, 30_000)
  t.ok(
    workerStatus(home).instances.some((i) => i.release === 2 && i.state !== 'stopping'),
    'v2 runs',
  )
  t.ok(
    workerStatus(home).instances.some((i) => i.release === 1),
    'v1 still runs',
  )

  // v3 passes its check: it takes over, v1 and v2 drain and stop.
  await cluster.call('releases:add', {
    app,
    slug: { sha256, size },
    processTypes,
    healthchecks: { handler: { path: '/health', match: 'ok' } },
  })
  await until(
    'v3 serves and v1, v2 are stopped',
    () =>
      load.samples.some((s) => s.release === 'v3') &&
      !workerStatus(home).instances.some((i) => i.release < 3),
    60_000,
  ).catch((err: unknown) => {
    t.comment(cluster.frontend.lines.slice(-40).join('\n'))
    t.comment(JSON.stringify(workerStatus(home)))
    throw err
  })
  const v3 = await until(
    'deploy:status says v3 is done',
    async () => {
      const st = (await cluster.call('deploy:status', { app, release: 3 })) as { done: boolean }
      return st.done && st
    },
    30_000,
  )
  t.match(v3, { healthcheck: 'passed' })
  const { sent, lost } = await load.stop()
  const releases = new Set(load.samples.map((s) => s.release ?? s.error))
  t.equal(lost, 0, 'nothing lost')
  t.equal(load.samples.filter((s) => s.error).length, 0, 'no errors')
  t.equal(load.samples.length, sent)
  t.same([...releases].sort(), ['v1', 'v3'], 'v2 answered nothing')
})
