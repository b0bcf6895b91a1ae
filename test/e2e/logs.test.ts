/**
 * Logs and one-off processes end to end: a real master, worker and client (bin/bareku) on
 * loopback, running a ticker app (one line every 50 ms, "tick N") packed from a directory made
 * here, and the `bareku logs` and `bareku run` commands as a user types them.
 *
 *   ticker ──stdout──> node log/shop.ticker.1.log ──client DEALER──> master ROUTER
 *                                    master/logs/shop.log <──┘   └──XPUB "logs.shop"──> logs -f
 *
 * The node's log file is the truth the master's history is compared with: after a kill -9 of
 * the master, the lines it has must be exactly the file's first lines, in order, each once.
 * Waits are for output, replies or conditions polled with a deadline, never a fixed sleep.
 */
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { execa } from 'execa'
import t from 'tap'
import type { LogLine } from '../../lib/protocol/log-batch.js'
import {
  BAREKU,
  killTagged,
  slugFrom,
  startMaster,
  startNode,
  until,
  type MasterProc,
} from '../helpers/cluster.js'
import { startProcess } from '../helpers/process.js'

t.setTimeout(240_000)

const NODE_ENV = { BAREKU_WORKER_STOP_ON_EXIT: '1', BAREKU_NODE: 'node1' }
const TICKER = `import sys, time
print('ticker started', file=sys.stderr, flush=True)
n = 0
while True:
    n += 1
    print(f'tick {n}', flush=True)
    time.sleep(0.05)
`

/** `bareku ARGS` as a user runs it against the master `control` with BAREKU_HOME `home`. */
function bareku(args: string[], control: string, home: string) {
  return execa(BAREKU, args, {
    env: { BAREKU_MASTER: control, BAREKU_HOME: home },
    reject: false,
    stdin: 'ignore',
    timeout: 60_000,
  })
}

const history = async (m: MasterProc, n = 10_000): Promise<LogLine[]> =>
  (await m.call('logs', { app: 'shop', n })) as LogLine[]

/** The highest N of the "tick N" lines. */
const lastTick = (lines: string[]): number =>
  Math.max(0, ...lines.map((l) => Number(/tick (\d+)$/.exec(l)?.[1] ?? 0)))

t.test('logs, logs -f, a master crash, and run', async (top) => {
  // Daemons started in a subtest belong to the whole scenario: their teardown is top's.
  const t = top
  const tag = randomBytes(6).toString('hex')
  t.teardown(() => killTagged(tag))
  const dir = t.testdir({
    master: {},
    node: {},
    empty: {},
    app: { Procfile: 'ticker: /usr/bin/python3 -u ticker.py\n', 'ticker.py': TICKER },
  })
  const mHome = join(dir, 'master')
  const nHome = join(dir, 'node')
  let m = await startMaster(t, mHome)
  t.ok(m.endpoints.logs, 'the master binds a logs endpoint')
  t.same(await m.call('endpoints'), m.endpoints, 'and names it')
  await startNode(t, nHome, m.control, NODE_ENV)
  await m.call('apps:create', { name: 'shop' })
  await m.call('config:set', { app: 'shop', vars: { BAREKU_E2E: tag } })
  const slug = await slugFrom(join(dir, 'app'), mHome)
  await m.call('releases:add', {
    app: 'shop',
    slug,
    processTypes: { ticker: '/usr/bin/python3 -u ticker.py' },
  })
  await m.call('ps:scale', { app: 'shop', formation: { ticker: 1 } })
  const nodeLog = join(nHome, 'log', 'shop.ticker.1.log')
  const fileLines = (): string[] => readFileSync(nodeLog, 'utf8').split('\n').slice(0, -1)

  await t.test('bareku logs shows the lines, tagged', async (t) => {
    await until(
      'ticks at the master',
      async () => lastTick((await history(m)).map((l) => l.line)) >= 5,
    )
    const json = await bareku(['logs', 'shop', '--json', '-n', '1000'], m.control, mHome)
    t.equal(json.exitCode, 0, json.stderr)
    const lines = json.stdout.split('\n').map((l) => JSON.parse(l) as Record<string, unknown>)
    t.same(lines[0], {
      time: lines[0]!.time,
      app: 'shop',
      type: 'ticker',
      instance: 'shop.ticker.1',
      release: 1,
      node: 'node1',
      line: 'ticker started',
    })
    t.match(lines[0]!.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, 'an ISO time')
    t.same(
      lines.slice(1, 4).map((l) => l.line),
      ['tick 1', 'tick 2', 'tick 3'],
      'stdout and stderr, in order',
    )
    const text = await bareku(['logs', 'shop', '-n', '2'], m.control, mHome)
    t.equal(text.exitCode, 0, text.stderr)
    const shown = text.stdout.split('\n')
    t.equal(shown.length, 2, '-n 2: two lines')
    for (const l of shown) t.match(l, /^\d{4}-\S+Z app\[ticker\.1\]: tick \d+$/, 'Heroku style')
    const none = await bareku(['logs', 'shop', '--type', 'web'], m.control, mHome)
    t.equal(none.stdout, '', '--type web: none')
    t.match(none.stderr, /no log lines of shop yet \(type web\)/)
    const unknown = await bareku(['logs', 'nope'], m.control, mHome)
    t.equal(unknown.exitCode, 1)
    t.match(unknown.stderr, /no app named "nope"/)
    const badN = await bareku(['logs', 'shop', '-n', 'lots'], m.control, mHome)
    t.equal(badN.exitCode, 1)
    t.match(badN.stderr, /-n must be a number of lines from 1 to 10000, got "lots"/)
  })

  await t.test('bareku logs -f prints new lines as the app prints them', async (t) => {
    const follow = startProcess(BAREKU, ['logs', 'shop', '-f', '-n', '1'], {
      env: { BAREKU_MASTER: m.control, BAREKU_HOME: mHome },
    })
    t.teardown(() => follow.stop())
    const first = await follow.waitFor(/app\[ticker\.1\]: tick \d+$/, 30_000)
    const from = lastTick([first])
    await follow.waitFor((l) => lastTick([l]) >= from + 10, 30_000)
    const ticks = follow.lines.map((l) => lastTick([l])).filter((n) => n > 0)
    t.same(
      ticks,
      ticks.map((_, i) => from + i),
      `every tick after ${from}, once, in order: live`,
    )
    follow.child.kill('SIGINT')
    t.equal(await follow.exited, 0, 'Ctrl-C ends it cleanly')
  })

  await t.test('kill -9 of the master: nothing lost, nothing twice', async (t) => {
    const before = (await history(m)).length
    const endpoints = m.endpoints
    m.proc.child.kill('SIGKILL')
    t.equal(await m.proc.exited, 'SIGKILL')
    const printed = lastTick(fileLines())
    await until('30 more ticks printed while the master is down', () => {
      return lastTick(fileLines()) >= printed + 30
    })
    const whileDown = lastTick(fileLines())
    m = await startMaster(top, mHome, {}, endpoints)
    await until('the ticks printed meanwhile at the new master', async () => {
      return lastTick((await history(m)).map((l) => l.line)) >= whileDown
    })
    const got = (await history(m)).map((l) => l.line)
    t.ok(got.length > before, `${got.length} lines now, ${before} before`)
    t.same(got, fileLines().slice(0, got.length), "the node's file, line for line, each once")
  })

  await t.test('bareku run: the slug, the env, the exit code', async (t) => {
    const echo = await bareku(['run', 'shop', '--', 'echo', '$BAREKU_APP'], m.control, mHome)
    t.equal(echo.exitCode, 0, echo.stderr)
    t.equal(echo.stdout, 'shop', 'the command runs with the app in its env')
    t.match(echo.stderr, /Unpacking the slug of shop v1/, 'unpacked from the slug store here')
    const env = await bareku(
      ['run', 'shop', '--', 'echo $DYNO $BAREKU_E2E $BAREKU_RELEASE $(id -un) $(pwd) $HOME'],
      m.control,
      mHome,
    )
    t.equal(env.exitCode, 0, env.stderr)
    const cwd = join(mHome, 'slugs', 'unpacked', slug.sha256)
    t.match(env.stdout, new RegExp(`^run\\.\\d+ ${tag} v1 nobody ${cwd} ${cwd}$`))
    t.equal(env.stderr, '', 'unpacked once')
    t.equal(
      (await bareku(['run', 'shop', '--', 'cat', 'ticker.py'], m.control, mHome)).stdout,
      TICKER.trimEnd(),
      'cwd is the slug',
    )
    const code = await bareku(['run', 'shop', '--', "sh -c 'exit 7'"], m.control, mHome)
    t.equal(code.exitCode, 7, 'the exit code passes through')
    const node = await bareku(['run', 'shop', '--', 'test', '-d', '.'], m.control, nHome)
    t.equal(node.exitCode, 0, 'on a node, the slug the client unpacked is used')

    await m.call('apps:create', { name: 'empty' })
    const empty = await bareku(['run', 'empty', '--', 'true'], m.control, mHome)
    t.equal(empty.exitCode, 1)
    t.match(empty.stderr, /app "empty" has no release yet.*git push/)
    const missing = await bareku(['run', 'shop', '--', 'true'], m.control, join(dir, 'empty'))
    t.equal(missing.exitCode, 1)
    t.match(missing.stderr, /slug of shop v1 .* is not on this machine/)
    const nothing = await bareku(['run', 'shop'], m.control, mHome)
    t.equal(nothing.exitCode, 1)
    t.match(nothing.stderr, /what should run\?/)
  })
})
