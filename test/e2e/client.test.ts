/**
 * The client as a real process (`bin/bareku client`) against a fake master written here with
 * real ZeroMQ sockets: a ROUTER answering `endpoints` on the control endpoint, an XPUB that sends
 * a node its list when it subscribes (as the real master does), a PULL collecting the reports and
 * a ROUTER slug store serving squashfs slugs made with tar2sqfs. Every wait is for a log line,
 * a report or a file, with a timeout.
 *
 *   fake master: control ROUTER <--REQ endpoints-- client --SUB "node1\0"--> XPUB
 *                stats PULL <--PUSH reports--      client --DEALER chunks--> slug ROUTER
 *                                                    └──> home/run/worker.json, home/slugs/
 */
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { Pull, Router, XPublisher } from 'zeromq'
import { parseWorkerConfig, type WorkerConfig } from '../../lib/config/worker-config.js'
import { writeFileAtomic } from '../../lib/fs-atomic.js'
import { encodeControlReply, parseControlRequest } from '../../lib/protocol/control.js'
import {
  encodePublication,
  type HostInstance,
  type HostList,
} from '../../lib/protocol/host-list.js'
import { parseNodeReport, type NodeReport } from '../../lib/protocol/node-report.js'
import { encodeChunkReply, parseChunkRequest } from '../../lib/protocol/slug-chunk.js'
import { logRecord, REPO, startProcess, type Proc } from '../helpers/process.js'

const NODE = 'node1'

/** Resolves once `check` returns a value other than undefined/false; rejects after `timeoutMs`. */
async function until<T>(what: string, check: () => T | undefined | false, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = check()
    if (value !== undefined && value !== false) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${what}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

interface Slug {
  sha256: string
  size: number
  bytes: Buffer
}

/** A squashfs slug of `files` (path -> content), made with tar2sqfs. */
function makeSlug(dir: string, name: string, files: Record<string, string>): Slug {
  const src = join(dir, `src-${name}`)
  for (const [path, content] of Object.entries(files)) {
    mkdirSync(join(src, path, '..'), { recursive: true })
    writeFileSync(join(src, path), content)
  }
  const out = join(dir, `${name}.sqfs`)
  execFileSync('sh', ['-c', 'tar -C "$1" -cf - . | tar2sqfs -q -f "$2"', 'sh', src, out])
  const bytes = readFileSync(out)
  return { sha256: createHash('sha256').update(bytes).digest('hex'), size: bytes.length, bytes }
}

/** A fake master on 127.0.0.1: control on `control` (or a new port), the rest on new ports. */
async function fakeMaster(t: Test, slugs: Slug[], control = 'tcp://127.0.0.1:*') {
  const ctl = new Router({ linger: 0 })
  const pub = new XPublisher({ linger: 0 })
  const stats = new Pull({ linger: 0 })
  const store = new Router({ linger: 0 })
  await ctl.bind(control)
  await pub.bind('tcp://127.0.0.1:*')
  await stats.bind('tcp://127.0.0.1:*')
  await store.bind('tcp://127.0.0.1:*')
  const sockets = [ctl, pub, stats, store]
  const close = (): void => {
    for (const s of sockets) if (!s.closed) s.close()
  }
  t.teardown(close)
  const served = new Map(slugs.map((s) => [s.sha256, s.bytes]))
  const reports: NodeReport[] = []
  const current = new Map<string, Buffer[]>()
  let sending = Promise.resolve()
  const send = (frames: Buffer[]): Promise<void> =>
    (sending = sending.then(() => pub.send(frames)).catch(() => {}))

  void (async () => {
    for await (const [id, empty, body] of ctl) {
      const cmd = parseControlRequest(body!).cmd
      const reply =
        cmd === 'endpoints'
          ? encodeControlReply({
              // as a master bound on every interface would say them
              result: {
                control: ctl.lastEndpoint,
                publish: pub.lastEndpoint!.replace('127.0.0.1', '0.0.0.0'),
                stats: stats.lastEndpoint!.replace('127.0.0.1', '*'),
                slugs: store.lastEndpoint,
              },
            })
          : encodeControlReply({ error: new Error(`no ${cmd} here`) })
      await ctl.send([id!, empty!, reply])
    }
  })().catch(() => {})
  void (async () => {
    for await (const [msg] of pub) {
      if (msg?.[0] !== 1) continue
      const frames = current.get(msg.subarray(1).toString())
      if (frames) await send(frames)
    }
  })().catch(() => {})
  void (async () => {
    for await (const [frame] of stats) reports.push(parseNodeReport(frame!))
  })().catch(() => {})
  void (async () => {
    for await (const [id, body] of store) {
      const req = parseChunkRequest(body!)
      const bytes = served.get(req.sha256)
      const reply = bytes
        ? encodeChunkReply({
            sha256: req.sha256,
            offset: req.offset,
            size: bytes.length,
            data: bytes.subarray(req.offset, req.offset + req.length),
          })
        : encodeChunkReply({
            sha256: req.sha256,
            error: { code: 'E_SLUG', message: `no slug ${req.sha256}` },
          })
      await store.send([id!, ...reply])
    }
  })().catch(() => {})

  return {
    control: ctl.lastEndpoint!,
    reports,
    /** Serves `bytes` under `sha256` (e.g. a corrupt copy). */
    serve(sha256: string, bytes: Buffer) {
      served.set(sha256, bytes)
    },
    /** Publishes `body` for NODE as (epoch, seq); later subscribers get it too. */
    publish(epoch: number, seq: number, body: unknown): Promise<void> {
      const frames = encodePublication(NODE, epoch, seq, body)
      current.set(`${NODE}\0`, frames)
      return send(frames)
    },
    raw(frames: Buffer[]): Promise<void> {
      return send(frames)
    },
    close,
  }
}

function inst(name: string, slug: Slug, patch: Partial<HostInstance> = {}): HostInstance {
  const [app = 'x', type = 'worker'] = name.split('.')
  return {
    name,
    app,
    type,
    release: 1,
    command: `./run ${type}`,
    env: { GREETING: 'hi' },
    slug: slug.sha256,
    ...patch,
  }
}

function hostList(...instances: HostInstance[]): HostList {
  const slugs: HostList['slugs'] = {}
  for (const i of instances) slugs[i.slug] = { size: 0 }
  return { host: NODE, instances, slugs }
}

/** Fills in the slug sizes. */
function sized(list: HostList, all: Slug[]): HostList {
  for (const sha of Object.keys(list.slugs)) {
    list.slugs[sha] = { size: all.find((s) => s.sha256 === sha)!.size }
  }
  return list
}

function startClient(t: Test, home: string, master: string): Proc {
  const proc = startProcess(join(REPO, 'bin/bareku'), ['client'], {
    env: {
      BAREKU_HOME: home,
      BAREKU_MASTER: master,
      BAREKU_NODE: NODE,
      BAREKU_NODE_ADDR: '10.1.2.3',
      BAREKU_CLIENT_REPORT_MS: '100',
      LOG_LEVEL: 'debug',
    },
  })
  t.teardown(() => proc.stop())
  return proc
}

/** Waits for the client's log record with this msg for which `pred` holds. */
function event(
  proc: Proc,
  msg: string,
  pred: (r: Record<string, unknown>) => boolean = () => true,
) {
  return proc
    .waitFor((line) => {
      const r = logRecord(line)
      return r?.msg === msg && pred(r)
    })
    .then((line) => logRecord(line)!)
}

const readConfig = (file: string): WorkerConfig => parseWorkerConfig(readFileSync(file, 'utf8'))

t.test('follows its host list: slugs, worker.json, reports, a restarted master', async (t) => {
  const dir = t.testdir({ home: {}, build: {} })
  const home = join(dir, 'home')
  const build = join(dir, 'build')
  const configFile = join(home, 'run', 'worker.json')
  const A = makeSlug(build, 'a', { 'app.txt': 'hello A\n', run: '#!/bin/sh\necho A\n' })
  const B = makeSlug(build, 'b', { 'app.txt': 'hello B\n', 'lib/deep/x.txt': 'x' })
  const C = makeSlug(build, 'c', { 'app.txt': 'hello C\n' })
  const all = [A, B, C]
  const master = await fakeMaster(t, all)
  const client = startClient(t, home, master.control)
  await event(client, 'ready', (r) => r.node === NODE && r.master === master.control)
  const found = await event(client, 'master found')
  t.match(
    found.publish,
    /^tcp:\/\/127\.0\.0\.1:\d+$/,
    'a 0.0.0.0 bind is reached via the master host',
  )
  t.match(found.stats, /^tcp:\/\/127\.0\.0\.1:\d+$/, 'a * bind likewise')

  // A list arrives: both slugs are fetched and unpacked, worker.json is written.
  const l1 = sized(
    hostList(
      inst('blog.web.1', A, { type: 'web', port: 5001 }),
      inst('blog.worker.1', A),
      inst('shop.worker.1', B),
    ),
    all,
  )
  await master.publish(5, 10, l1)
  await event(client, 'worker config written', (r) => r.seq === 10)
  const c1 = readConfig(configFile)
  t.match(c1, { version: 1, epoch: 5, seq: 10, host: NODE })
  const unpacked = (s: Slug): string => join(home, 'slugs', 'unpacked', s.sha256)
  t.same(
    c1.instances.map((i) => [i.name, i.cwd, i.port]),
    [
      ['blog.web.1', unpacked(A), 5001],
      ['blog.worker.1', unpacked(A), undefined],
      ['shop.worker.1', unpacked(B), undefined],
    ],
    'each instance runs from its unpacked slug',
  )
  t.same(c1.instances[0]!.env, { GREETING: 'hi' }, 'the env as the master gave it')
  t.equal(readFileSync(join(unpacked(A), 'app.txt'), 'utf8'), 'hello A\n', 'slug A unpacked')
  t.equal(readFileSync(join(unpacked(B), 'lib/deep/x.txt'), 'utf8'), 'x', 'slug B unpacked')
  t.ok(existsSync(join(home, 'slugs', `${A.sha256}.sqfs`)), 'the verified slug is kept')
  t.notOk(existsSync(join(home, 'slugs', `${A.sha256}.sqfs.part`)), 'no .part left')

  // Reports: the worker's status.json, the applied list, the node's facts.
  await writeFileAtomic(
    join(home, 'run', 'status.json'),
    JSON.stringify({
      time: Date.now(),
      epoch: 5,
      seq: 10,
      instances: [
        {
          name: 'blog.web.1',
          specHash: 'h',
          state: 'ready',
          pid: 42,
          port: 5001,
          restarts: 0,
          app: 'blog',
          type: 'web',
          release: 1,
        },
        {
          name: 'blog.web.1~12345678',
          specHash: 'h2',
          state: 'starting',
          pid: 43,
          restarts: 0,
          app: 'blog',
          type: 'web',
          release: 2,
        },
      ],
    }),
  )
  const r1 = await until('a report with the instances', () =>
    master.reports.find((r) => r.instances.length === 2 && r.applied?.seq === 10),
  )
  t.match(r1, {
    node: NODE,
    addr: '10.1.2.3',
    capacity: 50,
    applied: { epoch: 5, seq: 10 },
    mem: { total: Number, free: Number },
    errors: [],
  })
  t.equal(r1.load.length, 3, 'the load averages')
  t.same(
    r1.instances.map((i) => `${i.name} ${i.state} ${i.pid}`),
    ['blog.web.1 ready 42', 'blog.web.1~12345678 starting 43'],
    'the instances as status.json has them, surge included',
  )

  // An older list is ignored.
  const before = statSync(configFile)
  await master.publish(5, 9, sized(hostList(), all))
  await event(client, 'older publication ignored', (r) => r.seq === 9)
  t.equal(readConfig(configFile).instances.length, 3, 'the older (empty) list was not applied')

  // The same list again (a republish, seq grows): worker.json is not rewritten.
  await master.publish(5, 11, l1)
  await event(client, 'worker config unchanged', (r) => r.seq === 11)
  const same = statSync(configFile)
  t.equal(same.ino, before.ino, 'same inode')
  t.equal(same.mtimeMs, before.mtimeMs, 'same mtime')
  await until('applied seq 11 reported', () => master.reports.some((r) => r.applied?.seq === 11))

  // Garbage on the SUB socket is dropped; the client goes on.
  await master.raw([Buffer.from(`${NODE}\0`), Buffer.from('not json'), Buffer.from('{}')])
  await master.raw([Buffer.from(`${NODE}\0`), Buffer.from('{"epoch":1}')])
  await event(client, 'publication dropped')
  t.equal(client.child.exitCode, null, 'still running')

  // A slug with a bad hash: that app keeps its old instances, the other updates.
  const corrupt = Buffer.from(C.bytes)
  corrupt[100] = corrupt[100]! ^ 0xff
  master.serve(C.sha256, corrupt)
  const l2 = sized(
    hostList(
      inst('blog.web.1', C, { type: 'web', port: 5002, release: 2 }),
      inst('shop.worker.1', A, { release: 2 }),
      inst('shop.worker.2', A, { release: 2 }),
    ),
    all,
  )
  await master.publish(5, 12, l2)
  const failed = await event(client, 'host list not fully applied')
  t.match(
    failed.reason,
    new RegExp(`^app blog not updated: slug ${C.sha256}: .*has sha256`),
    'the reason is logged',
  )
  await event(client, 'worker config written', (r) => r.seq === 12)
  const c2 = readConfig(configFile)
  t.same(
    c2.instances.map((i) => [i.name, i.release, i.cwd]),
    [
      ['blog.web.1', 1, unpacked(A)],
      ['blog.worker.1', 1, unpacked(A)],
      ['shop.worker.1', 2, unpacked(A)],
      ['shop.worker.2', 2, unpacked(A)],
    ],
    'blog keeps release 1; shop moved to release 2',
  )
  t.notOk(existsSync(unpacked(C)), 'the bad slug was not unpacked')
  t.notOk(existsSync(join(home, 'slugs', `${C.sha256}.sqfs`)), 'nor kept under its name')
  const r2 = await until('a report with the error', () =>
    master.reports.find((r) => r.applied?.seq === 12 && r.errors.length > 0),
  )
  t.match(r2.errors, [new RegExp(`^app blog not updated: slug ${C.sha256}: .*has sha256`)])

  // The master goes away: reports are dropped without blocking, worker.json stays.
  const written = readFileSync(configFile, 'utf8')
  master.close()
  await writeFileAtomic(join(home, 'run', 'status.json'), '{"instances":[]}')
  await event(client, 'report dropped: master not connected')
  t.equal(readFileSync(configFile, 'utf8'), written, 'worker.json kept as it was')
  t.equal(client.child.exitCode, null, 'still running')

  // It comes back on the same control endpoint, with a higher epoch and its other sockets on
  // new ports: the client asks again, follows it, and reports to it.
  const again = await fakeMaster(t, all, master.control)
  await again.publish(6, 1, sized(hostList(inst('shop.worker.1', B, { release: 3 })), all))
  await event(client, 'worker config written', (r) => r.epoch === 6 && r.seq === 1)
  t.same(
    readConfig(configFile).instances.map((i) => [i.name, i.release]),
    [['shop.worker.1', 3]],
    'the restarted master is followed (blog is gone from its list)',
  )
  await until('reports reach the new master', () =>
    again.reports.some((r) => r.applied?.epoch === 6 && r.errors.length === 0),
  )

  // SIGTERM stops the client; worker.json stays for the worker.
  const text = readFileSync(configFile, 'utf8')
  t.equal(await client.stop(), 0, 'exits 0 on SIGTERM')
  t.equal(readFileSync(configFile, 'utf8'), text, 'worker.json stays')

  // A restarted client does not go back to an older list.
  const next = startClient(t, home, again.control)
  await event(next, 'master found')
  await again.publish(6, 0, sized(hostList(), all))
  await event(next, 'older publication ignored', (r) => r.epoch === 6 && r.seq === 0)
  t.equal(readFileSync(configFile, 'utf8'), text, 'not rewritten')
})

t.test('a client started before its master converges when the master appears', async (t) => {
  const dir = t.testdir({ home: {}, build: {} })
  const home = join(dir, 'home')
  const A = makeSlug(join(dir, 'build'), 'a', { 'app.txt': 'A' })
  // A port nothing listens on yet: bind, note it, close.
  const probe = new Router({ linger: 0 })
  await probe.bind('tcp://127.0.0.1:*')
  const control = probe.lastEndpoint!
  probe.close()

  const client = startClient(t, home, control)
  await event(client, 'ready')
  await event(client, 'master not reachable, retrying')
  t.notOk(existsSync(join(home, 'run', 'worker.json')), 'nothing written without a master')

  const master = await fakeMaster(t, [A], control)
  await master.publish(1, 1, sized(hostList(inst('app.worker.1', A)), [A]))
  await event(client, 'worker config written', (r) => r.seq === 1)
  const c = readConfig(join(home, 'run', 'worker.json'))
  t.same(
    c.instances.map((i) => i.cwd),
    [join(home, 'slugs', 'unpacked', A.sha256)],
  )
  t.equal(readFileSync(join(c.instances[0]!.cwd, 'app.txt'), 'utf8'), 'A')
  await until('a report', () => master.reports.some((r) => r.applied?.seq === 1))
})

t.test('bad settings are refused with the variable and an example', async (t) => {
  const proc = startProcess(join(REPO, 'bin/bareku'), ['client'], {
    env: { BAREKU_HOME: t.testdir(), BAREKU_NODE_CAPACITY: 'lots' },
  })
  t.teardown(() => proc.stop())
  t.equal(await proc.exited, 1)
  t.match(
    proc.lines.join('\n'),
    /BAREKU_NODE_CAPACITY must be a positive integer, got "lots" \(e\.g\. BAREKU_NODE_CAPACITY=50\)/,
  )
  const help = startProcess(join(REPO, 'bin/bareku'), ['client', '--help'])
  t.teardown(() => help.stop())
  t.equal(await help.exited, 0)
  t.match(help.lines.join('\n'), /BAREKU_MASTER/)
})
