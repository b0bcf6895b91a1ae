/**
 * The worker supervising real processes: `bin/bareku worker` as a real process with BAREKU_HOME
 * in a test dir, the config written with writeFileAtomic as the client writes it, and the
 * fixtures of test/fixtures/bin as the instances. Every wait is for a log line, a file or a
 * process state, with a timeout; every instance carries BAREKU_E2E=<scenario id> in its
 * environment, so the teardown finds and kills whatever is left, and the tests count instances
 * by their DYNO from /proc/PID/environ.
 *
 *   test ──writeFileAtomic──> home/run/worker.json ──chokidar──> worker ──spawn──> instances
 *     ^                                                           │ stdout: JSON log lines
 *     └──────── home/log/<name>.log ("up NAME PID"), /proc ───────┘
 */
import { randomBytes } from 'node:crypto'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { createServer, type Socket } from 'node:net'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { pino } from 'pino'
import t, { type Test } from 'tap'
import { renderWorkerConfig, specHash, type InstanceSpec } from '../../lib/config/worker-config.js'
import { writeFileAtomic } from '../../lib/fs-atomic.js'
import { loadConfig } from '../../worker/config.js'
import { surgeName } from '../../worker/supervise.js'
import { isAlive } from '../../worker/spawn.js'
import { startWorker } from '../../worker/worker.js'
import { logRecord, REPO, startProcess, type Proc } from '../helpers/process.js'
import { tagged } from '../helpers/cluster.js'

const BIN = join(REPO, 'test/fixtures/bin')
const TICK_MS = '250'

type Fixture = 'forever.js' | 'exit-with.js' | 'ignore-sigterm.js'
type Rec = Record<string, unknown> & { msg: string; time: number; instance?: string }

/** Resolves once `check` returns a value other than undefined/false; rejects after `timeoutMs`. */
async function until<T>(what: string, check: () => T | undefined | false, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = check()
    if (value !== undefined && value !== false) return value
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
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

const records = (proc: Proc): Rec[] =>
  proc.lines.map(logRecord).filter((r): r is Rec => r !== undefined)

/** Waits for the `n`th log record of `proc` with this msg (and instance, if given). */
async function event(proc: Proc, msg: string, instance?: string, n = 1, timeoutMs = 10_000) {
  const matches = (r: Rec | undefined): boolean =>
    r?.msg === msg && (instance === undefined || r.instance === instance)
  await proc.waitFor(
    (line) =>
      matches(logRecord(line) as Rec | undefined) && records(proc).filter(matches).length >= n,
    timeoutMs,
  )
  return records(proc).filter(matches)[n - 1]!
}

function uidOf(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('Uid:'))
  return Number(line?.split(/\s+/)[1])
}

/** One scenario's node: a BAREKU_HOME, a slug dir, its workers, and the teardown. */
function node(t: Test) {
  // Registered before t.testdir(), so it runs while the test dir still exists.
  t.teardown(() => teardown())
  const dir = t.testdir({ home: { run: {} }, slug: {} })
  const home = join(dir, 'home')
  const slug = join(dir, 'slug')
  const configFile = join(home, 'run', 'worker.json')
  const id = randomBytes(6).toString('hex')
  const workers: Proc[] = []
  let seq = 0

  /** pids of this scenario's live instances, by DYNO. */
  const procs = (): Map<string, number[]> => tagged(id)

  const n = {
    home,
    configFile,
    spec(
      name: string,
      fixture: Fixture,
      patch: Partial<InstanceSpec> = {},
      args = '',
    ): InstanceSpec {
      const [app = 'app', type = 'worker'] = name.split('.')
      return {
        name,
        app,
        type,
        release: 1,
        command: `${process.execPath} ${join(BIN, fixture)}${args ? ` ${args}` : ''}`,
        cwd: slug,
        ...patch,
        env: { BAREKU_E2E: id, ...patch.env },
      }
    },
    /** Writes the config as the client does: rendered, then replaced atomically. */
    async write(instances: InstanceSpec[]): Promise<void> {
      seq++
      await writeFileAtomic(
        configFile,
        renderWorkerConfig({ version: 1, epoch: 1, seq, host: 'e2e', instances }),
      )
    },
    async startWorker(): Promise<Proc> {
      const proc = n.spawnWorker()
      await event(proc, 'ready', undefined, 1, 30_000)
      return proc
    },
    spawnWorker(): Proc {
      const proc = startProcess(join(REPO, 'bin/bareku'), ['worker'], {
        env: {
          BAREKU_HOME: home,
          BAREKU_WORKER_CONFIG: configFile,
          BAREKU_WORKER_TICK_MS: TICK_MS,
          LOG_LEVEL: 'info',
        },
      })
      workers.push(proc)
      return proc
    },
    procs,
    log(name: string): string[] {
      try {
        return readFileSync(join(home, 'log', `${name}.log`), 'utf8').split('\n')
      } catch {
        return []
      }
    },
    /** Waits for the `count`th "up NAME PID" line in the instance's log file; returns its pid. */
    async up(name: string, count = 1): Promise<number> {
      const lines = await until(`up line ${count} of ${name}`, () => {
        const ups = n.log(name).filter((l) => l.startsWith(`up ${name} `))
        return ups.length >= count && ups
      })
      return Number(lines[count - 1]!.split(' ')[2])
    },
  }

  const teardown = async (): Promise<void> => {
    // Stop everything through the worker while one runs (an empty list is "stop all"), then
    // stop the workers, then kill the process group of anything left.
    const running = workers.filter((w) => w.child.exitCode === null && w.child.signalCode === null)
    if (running.length > 0 && procs().size > 0) {
      await n.write([])
      await until('every instance stopped', () => procs().size === 0, 5000).catch(() => undefined)
    }
    for (const w of workers) await w.stop()
    for (const pids of procs().values()) {
      for (const pid of pids) {
        try {
          process.kill(-pid, 'SIGKILL')
        } catch {
          // already gone
        }
      }
    }
  }
  return n
}

t.test(
  'runs 3 instances; they outlive kill -9 of the worker; a new worker adopts them',
  async (t) => {
    const n = node(t)
    const port = await freePort()
    const specs = [
      n.spec('app.web.1', 'forever.js', { type: 'web', port }),
      // A comm with spaces and parentheses: adoption must parse /proc/PID/stat after the last ')'.
      n.spec('app.worker.1', 'forever.js', { env: { TITLE: 'x) (y z' } }),
      n.spec('app.worker.2', 'forever.js'),
    ]
    await n.write(specs)
    const w1 = await n.startWorker()
    const pids = new Map<string, number>()
    for (const s of specs) pids.set(s.name, await n.up(s.name))
    for (const [name, pid] of pids) {
      t.ok(isAlive(pid), `${name} runs (pid ${pid})`)
      t.equal(uidOf(pid), 65534, `${name} runs as nobody`)
      t.same(n.procs().get(name), [pid], `one process for ${name}`)
    }
    t.equal(
      await (await fetch(`http://127.0.0.1:${port}/`)).text(),
      `app.web.1 ${pids.get('app.web.1')}\n`,
      'the web instance serves on its $PORT',
    )
    await event(w1, 'instance ready', 'app.web.1')

    w1.child.kill('SIGKILL')
    await w1.exited
    for (const [name, pid] of pids)
      t.ok(isAlive(pid), `${name} still runs after kill -9 of the worker`)

    const w2 = await n.startWorker()
    for (const [name, pid] of pids) {
      const adopted = await event(w2, 'adopted', name)
      t.equal(adopted.pid, pid, `${name} adopted with the same pid`)
    }
    await event(w2, 'config loaded')
    await until('the adopted instances ready', () =>
      specs.every((s) =>
        records(w2).some((r) => r.msg === 'instance ready' && r.instance === s.name),
      ),
    )
    t.notOk(
      records(w2).some((r) => r.msg === 'spawned'),
      'the new worker spawned nothing',
    )
    t.same(
      [...n.procs()].sort(),
      [...pids].map(([name, pid]) => [name, [pid]]).sort(),
      'no duplicates: one process per DYNO, the same pids',
    )

    // Supervision resumes: an adopted instance that dies (it is not the new worker's child, and
    // stays a zombie under PID 1 here) is noticed and restarted.
    const victim = pids.get('app.worker.2')!
    process.kill(victim, 'SIGKILL')
    const exited = await event(w2, 'exited', 'app.worker.2')
    t.equal(exited.pid, victim, 'the exit of the adopted instance is noticed')
    const spawned = await event(w2, 'spawned', 'app.worker.2')
    t.not(spawned.pid, victim, 'it is restarted as a new process')
    t.equal(await n.up('app.worker.2', 2), spawned.pid, 'the new process is up')
    t.same(n.procs().get('app.worker.2'), [spawned.pid], 'one process for app.worker.2')
  },
)

t.test(
  'an instance starts at a lower CPU priority and gets the normal one once ready',
  async (t) => {
    const n = node(t)
    const niceness = (pid: number): number => {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
      return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19 - 3])
    }
    await n.write([n.spec('app.worker.1', 'forever.js')])
    const w = await n.startWorker()
    const pid = await n.up('app.worker.1')
    // Ready means alive for 1 s: the process is up well before that.
    const root = process.getuid?.() === 0
    t.equal(
      niceness(pid),
      root ? 10 : 0,
      root ? 'niceness 10 while starting' : 'unchanged (not root)',
    )
    await event(w, 'instance ready', 'app.worker.1')
    t.equal(niceness(pid), 0, 'niceness 0 once ready')
  },
)

t.test('a handler is ready once connected to its send spec, not after 1 s alive', async (t) => {
  const n = node(t)
  // The frontend's side: a TCP listener on the handler's send port.
  const conns: Socket[] = []
  const front = createServer((s) => conns.push(s.on('error', () => {})))
  await new Promise<void>((resolve) => front.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const c of conns) c.destroy()
    return new Promise((resolve) => front.close(resolve))
  })
  const port = (front.address() as { port: number }).port
  await n.write([
    n.spec('app.handler.1', 'forever.js', {
      type: 'handler',
      env: { BAREKU_HANDLER_SEND_SPEC: `tcp://127.0.0.1:${port}` },
    }),
    n.spec('app.worker.1', 'forever.js'),
  ])
  const w = await n.startWorker()
  const handler = await event(w, 'instance ready', 'app.handler.1')
  t.equal(handler.by, 'connected', 'the handler: by its connection')
  const plain = await event(w, 'instance ready', 'app.worker.1')
  t.equal(plain.by, 'alive', 'anything else: by staying alive')
})

t.test('a crashing instance restarts with a growing backoff: 1 s, 2 s, 4 s', async (t) => {
  const n = node(t)
  await n.write([n.spec('app.crash.1', 'exit-with.js', {}, '3')])
  const w = await n.startWorker()
  await event(w, 'spawned', 'app.crash.1', 4, 15_000)
  const of = (msg: string) =>
    records(w).filter((r) => r.msg === msg && r.instance === 'app.crash.1')
  const exits = of('exited')
  const spawns = of('spawned')
  t.equal(exits[0]?.reason, 'exited with code 3', "the exit is logged in execa's wording")
  t.same(
    of('restart scheduled')
      .slice(0, 3)
      .map((r) => r.restarts),
    [1, 2, 3],
    'restarts are counted',
  )
  const gaps = [0, 1, 2].map((i) => spawns[i + 1]!.time - exits[i]!.time)
  t.ok(gaps[0]! >= 950 && gaps[0]! < 1600, `first restart after 1 s (${gaps[0]} ms)`)
  t.ok(gaps[1]! >= 1950 && gaps[1]! < 2600, `second after 2 s (${gaps[1]} ms)`)
  t.ok(gaps[2]! >= 3950 && gaps[2]! < 4600, `third after 4 s (${gaps[2]} ms)`)
  await until(
    '4 runs in the log file',
    () => n.log('app.crash.1').filter((l) => l.startsWith('exit app.crash.1 ')).length >= 4,
  )
  t.pass('each run printed to the log file')
})

t.test('a changed spec is replaced surge-first', async (t) => {
  const n = node(t)
  const [p1, p2] = [await freePort(), await freePort()]
  const v1 = n.spec('app.web.1', 'forever.js', { type: 'web', port: p1 })
  const v2 = { ...v1, release: 2, port: p2 }
  await n.write([v1])
  const w = await n.startWorker()
  const oldPid = await n.up('app.web.1')
  await event(w, 'instance ready', 'app.web.1')

  await n.write([v2])
  const surge = surgeName('app.web.1', specHash(v2))
  const promoted = await event(w, 'promoted', 'app.web.1')
  const newPid = promoted.pid as number
  const all = records(w)
  const at = (msg: string, instance: string): number =>
    all.findIndex((r) => r.msg === msg && r.instance === instance)
  const steps = [
    at('spawned', surge),
    at('instance ready', surge),
    at('stopping', 'app.web.1'),
    at('exited', 'app.web.1'),
    all.findIndex((r) => r.msg === 'promoted'),
  ]
  t.ok(
    steps.every((i, k) => i >= 0 && (k === 0 || i > steps[k - 1]!)),
    `surge spawned < surge ready < old stopping < old exited < promoted (${steps.join(' ')})`,
  )
  const stopping = all[steps[2]!]!
  t.equal(stopping.reason, 'replaced', 'the old one was stopped as replaced')
  t.equal(stopping.pid, oldPid, 'the old pid got SIGTERM')
  t.equal(all[steps[0]!]!.pid, newPid, 'the surge is the promoted process')

  const log = n.log('app.web.1')
  const upNew = log.indexOf(`up app.web.1 ${newPid}`)
  const termOld = log.indexOf(`term app.web.1 ${oldPid}`)
  t.ok(upNew >= 0 && termOld > upNew, 'the new instance was up before the old one got SIGTERM')
  t.equal(
    await (await fetch(`http://127.0.0.1:${p2}/`)).text(),
    `app.web.1 ${newPid}\n`,
    'the new release serves',
  )
  t.ok(existsSync(join(n.home, 'run/instances/app.web.1.json')), 'the record has the slot name')
  t.notOk(existsSync(join(n.home, `run/instances/${surge}.json`)), 'no surge record is left')
  t.same(n.procs().get('app.web.1'), [newPid], 'one process for app.web.1')
})

t.test('scale 3 -> 1 -> 3', async (t) => {
  const n = node(t)
  const three = [1, 2, 3].map((i) => n.spec(`app.worker.${i}`, 'forever.js'))
  await n.write(three)
  const w = await n.startWorker()
  const first = await Promise.all(three.map((s) => n.up(s.name)))
  t.equal(n.procs().size, 3, 'three run')

  await n.write(three.slice(0, 1))
  await event(w, 'stopped', 'app.worker.2')
  await event(w, 'stopped', 'app.worker.3')
  t.same([...n.procs()], [['app.worker.1', [first[0]]]], 'one runs, untouched')

  await n.write(three)
  const again = [await n.up('app.worker.2', 2), await n.up('app.worker.3', 2)]
  t.same(
    [...n.procs()].sort(),
    [
      ['app.worker.1', [first[0]]],
      ['app.worker.2', [again[0]]],
      ['app.worker.3', [again[1]]],
    ],
    'three run again; the first was never restarted',
  )
})

t.test('an instance that ignores SIGTERM is SIGKILLed after graceMs', async (t) => {
  const n = node(t)
  await n.write([n.spec('app.stubborn.1', 'ignore-sigterm.js', { graceMs: 400 })])
  const w = await n.startWorker()
  const pid = await n.up('app.stubborn.1')
  await n.write([])
  const stopping = await event(w, 'stopping', 'app.stubborn.1')
  const killing = await event(w, 'killing', 'app.stubborn.1')
  const exited = await event(w, 'exited', 'app.stubborn.1')
  t.ok(
    killing.time - stopping.time >= 390,
    `SIGKILL ${killing.time - stopping.time} ms after SIGTERM`,
  )
  t.equal(exited.reason, 'was killed with SIGKILL')
  t.ok(n.log('app.stubborn.1').includes(`ignored SIGTERM ${pid}`), 'it did get SIGTERM first')
  await until('the process gone', () => !isAlive(pid))
  t.equal(n.procs().size, 0, 'nothing left')
})

t.test(
  'one worker per node: a second one refuses; SIGTERM leaves the instances running',
  async (t) => {
    const n = node(t)
    await n.write([n.spec('app.worker.1', 'forever.js')])
    const w1 = await n.startWorker()
    const pid = await n.up('app.worker.1')
    const w2 = n.spawnWorker()
    const code = await w2.exited
    t.not(code, 0, `the second worker exits non-zero (${code})`)
    const text = w2.lines.join('\n')
    t.match(text, /worker\.lock/, 'its message names the lock')
    t.match(text, new RegExp(`pid ${w1.child.pid}`), 'and the pid holding it')

    t.equal(await w1.stop(), 0, 'the first worker stops cleanly on SIGTERM')
    t.ok(isAlive(pid), 'its instance keeps running')
    t.notOk(existsSync(join(n.home, 'run/worker.lock')), 'the lock is released')
    const w3 = await n.startWorker()
    t.equal((await event(w3, 'adopted', 'app.worker.1')).pid, pid, 'the next worker adopts it')
  },
)

/** Writes bad configs one by one; each must be refused while the instances stay as they are. */
async function refuses(
  t: Test,
  bad: (n: ReturnType<typeof node>, good: string) => [string, string, RegExp][],
) {
  const n = node(t)
  const specs = [n.spec('app.worker.1', 'forever.js'), n.spec('app.worker.2', 'forever.js')]
  await n.write(specs)
  const w = await n.startWorker()
  const pids = [await n.up('app.worker.1'), await n.up('app.worker.2')]
  const good = readFileSync(n.configFile, 'utf8')
  const cases = bad(n, good)
  for (const [i, [name, text, reason]] of cases.entries()) {
    await writeFileAtomic(n.configFile, text)
    const refused = await event(
      w,
      'config refused, keeping the running instances',
      undefined,
      i + 1,
    )
    t.match(refused.reason, reason, `${name}: refused with the reason`)
    t.equal(refused.code, 'E_WORKER_CONFIG')
  }
  // A good config with one more instance: once that one is up, the worker has planned with
  // the good config after every refusal, and that touched nothing else.
  await n.write([...specs, n.spec('app.worker.3', 'forever.js')])
  const third = await n.up('app.worker.3')
  t.same(
    [...n.procs()].sort(),
    [
      ['app.worker.1', [pids[0]]],
      ['app.worker.2', [pids[1]]],
      ['app.worker.3', [third]],
    ],
    'the running instances were untouched',
  )
  t.same(
    records(w)
      .filter((r) => r.msg === 'spawned' || r.msg === 'stopping')
      .map((r) => `${r.msg} ${r.instance}`),
    ['spawned app.worker.1', 'spawned app.worker.2', 'spawned app.worker.3'],
    'nothing was stopped or restarted',
  )
}

t.test('a corrupt or truncated config is refused; the instances are untouched', async (t) => {
  await refuses(t, (_n, good) => [
    ['TRUNCATED', good.slice(0, Math.floor(good.length / 2)), /truncated or corrupt/],
    ['EMPTY', '', /truncated or corrupt/],
    ['GARBAGE', '\u0000\u0001 not json', /not valid JSON/],
  ])
})

t.test('an unknown field or a bad value in an instance spec is refused likewise', async (t) => {
  await refuses(t, (_n, good) => {
    const patch = (p: Record<string, unknown>): string => {
      const c = JSON.parse(good) as { instances: Record<string, unknown>[] }
      Object.assign(c.instances[1]!, p)
      return JSON.stringify(c)
    }
    return [
      ['UNKNOWN FIELD', patch({ colour: 'blue' }), /unknown field instances\[1\]\.colour/],
      ['BAD PORT', patch({ port: 'x' }), /instances\[1\]\.port must be an integer/],
      ['RELATIVE CWD', patch({ cwd: 'slug' }), /instances\[1\]\.cwd must be an absolute path/],
    ]
  })
})

t.test('in process: close() leaves the instances running; stopAll() stops them all', async (t) => {
  const n = node(t)
  const lines: string[] = []
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(...chunk.toString().split('\n').filter(Boolean))
      done()
    },
  })
  const log = pino({ level: 'info' }, sink)
  const settings = loadConfig({ BAREKU_HOME: n.home, BAREKU_WORKER_TICK_MS: TICK_MS })
  await n.write([
    n.spec('app.worker.1', 'forever.js'),
    n.spec('app.stubborn.1', 'ignore-sigterm.js', { graceMs: 300 }),
  ])
  const a = await startWorker(settings, log)
  t.equal(a.endpoints.configFile, n.configFile, 'the endpoints name the config file')
  const pids = [await n.up('app.worker.1'), await n.up('app.stubborn.1')]
  await a.close()
  t.ok(
    pids.every((pid) => isAlive(pid)),
    'close() left both running',
  )

  const b = await startWorker(settings, log)
  t.teardown(() => b.stopAll())
  t.equal(
    lines.filter((l) => l.includes('"msg":"adopted"')).length,
    2,
    'the next worker adopts both',
  )
  await b.stopAll()
  t.ok(
    pids.every((pid) => !isAlive(pid)),
    'stopAll() stopped both (one needed SIGKILL)',
  )
  t.ok(
    lines.some((l) => l.includes('"msg":"killing"')),
    'the stubborn one was SIGKILLed',
  )
  t.same(readdirSync(join(n.home, 'run/instances')), [], 'no records are left')
  t.notOk(existsSync(join(n.home, 'run/worker.lock')), 'the lock is released')
  t.equal(n.procs().size, 0, 'nothing left')
})
