/**
 * The worker's run/status.json (read by the client for its reports): startWorker in process,
 * supervising the fixtures of test/fixtures/bin. Every wait is for the file's content or a log
 * record, with a timeout.
 */
import { readFileSync, statSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { pino } from 'pino'
import t from 'tap'
import { renderWorkerConfig, specHash, type InstanceSpec } from '../lib/config/worker-config.js'
import { writeFileAtomic } from '../lib/fs-atomic.js'
import { REPO } from '../test/helpers/process.js'
import { loadConfig } from './config.js'
import { surgeName } from './supervise.js'
import { startWorker } from './worker.js'

const BIN = join(REPO, 'test/fixtures/bin')

interface Status {
  time: number
  epoch: number | null
  seq: number | null
  instances: Array<Record<string, unknown> & { name: string; state: string }>
}

async function until<T>(what: string, check: () => T | undefined | false, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = check()
    if (value !== undefined && value !== false) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${what}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
  })
}

t.test('status.json follows the instances and their states, and only changes', async (t) => {
  const dir = t.testdir({ home: { run: {} }, slug: {} })
  const home = join(dir, 'home')
  const statusFile = join(home, 'run', 'status.json')
  const configFile = join(home, 'run', 'worker.json')
  const lines: string[] = []
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(...chunk.toString().split('\n').filter(Boolean))
      done()
    },
  })
  const log = pino({ level: 'debug' }, sink)
  const status = (): Status | undefined => {
    try {
      return JSON.parse(readFileSync(statusFile, 'utf8')) as Status
    } catch {
      return undefined
    }
  }
  const spec = (name: string, command: string, patch: Partial<InstanceSpec> = {}) => {
    const [app = 'app', type = 'worker'] = name.split('.')
    return { name, app, type, release: 1, command, cwd: join(dir, 'slug'), env: {}, ...patch }
  }
  const write = (seq: number, instances: InstanceSpec[]) =>
    writeFileAtomic(
      configFile,
      renderWorkerConfig({ version: 1, epoch: 3, seq, host: 'n', instances }),
    )
  const forever = `${process.execPath} ${join(BIN, 'forever.js')}`
  const port = await freePort()
  const web = spec('app.web.1', forever, { type: 'web', port, release: 4 })
  const crash = spec('app.crash.1', `${process.execPath} ${join(BIN, 'exit-with.js')} 2`)
  await write(7, [web, spec('app.worker.1', forever)])

  const worker = await startWorker(
    loadConfig({ BAREKU_HOME: home, BAREKU_WORKER_TICK_MS: '250' }),
    log,
  )
  t.teardown(() => worker.stopAll())

  const ready = await until('both ready', () => {
    const s = status()
    return s?.instances.length === 2 && s.instances.every((i) => i.state === 'ready') && s
  })
  t.equal(ready.epoch, 3, 'the epoch of the config it runs')
  t.equal(ready.seq, 7, 'the seq of the config it runs')
  t.ok(ready.time <= Date.now() && ready.time > Date.now() - 60_000, 'time is ms since the epoch')
  const w = ready.instances.find((i) => i.name === 'app.web.1')
  t.match(w, {
    name: 'app.web.1',
    specHash: specHash(web),
    state: 'ready',
    pid: Number,
    port,
    restarts: 0,
    app: 'app',
    type: 'web',
    release: 4,
  })
  t.match(
    ready.instances.find((i) => i.name === 'app.worker.1'),
    { state: 'ready', app: 'app', type: 'worker', release: 1, pid: Number },
  )
  t.notOk('port' in ready.instances.find((i) => i.name === 'app.worker.1')!, 'no port, none set')

  // Ten seconds up makes an instance "running" (stable): still "ready" to the master, so the
  // file is not rewritten although the worker ticked about forty times meanwhile.
  const before = statSync(statusFile)
  await until(
    'app.worker.1 stable',
    () => lines.some((l) => l.includes('"msg":"stable"') && l.includes('app.worker.1')),
    20_000,
  )
  const after = statSync(statusFile)
  t.equal(after.ino, before.ino, 'status.json not replaced while nothing changed')
  t.equal(status()?.time, ready.time, 'same content, same time')

  // A replacement that never becomes ready: the surge instance is listed with its own state.
  const web2 = { ...web, release: 5, port: await freePort(), command: `env -u PORT ${forever}` }
  await write(8, [web2, spec('app.worker.1', forever), crash])
  const surge = surgeName('app.web.1', specHash(web2))
  const changed = await until('surge and backoff listed', () => {
    const s = status()
    const names = s?.instances.map((i) => `${i.name} ${i.state}`) ?? []
    return names.includes(`${surge} starting`) && names.includes('app.crash.1 backoff') && s
  })
  t.equal(changed.seq, 8, 'the new config is named')
  t.match(
    changed.instances.find((i) => i.name === surge),
    {
      specHash: specHash(web2),
      release: 5,
      app: 'app',
      type: 'web',
    },
  )
  t.match(
    changed.instances.find((i) => i.name === 'app.web.1'),
    { state: 'ready', release: 4 },
  )
  const crashed = await until('a restart counted', () => {
    const c = status()?.instances.find((i) => i.name === 'app.crash.1')
    return c !== undefined && (c.restarts as number) >= 1 && c
  })
  t.equal(crashed.state === 'backoff' || crashed.state === 'starting', true, 'crash -> backoff')

  await worker.stopAll()
  t.same(status()?.instances, [], 'stopAll leaves an empty list')
})
