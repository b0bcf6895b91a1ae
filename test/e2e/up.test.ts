/**
 * The README's first command, as a user runs it: `bareku up` brings up a one-node Bareku; the
 * documented apps:create + git push of an app answers at the printed URL; Ctrl-C stops the
 * daemons and the app; `bareku up` again brings the app back without a push.
 */
import { execFile } from 'node:child_process'
import { existsSync, readFileSync, rmSync } from 'node:fs'
import { request } from 'node:http'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { BAREKU, until } from '../helpers/cluster.js'
import { commitAll, makeWorkTree, push, removeDir, uniqueDir } from '../helpers/git.js'
import { REPO, startProcess } from '../helpers/process.js'

const run = promisify(execFile)

/** One request by Host header to 127.0.0.1 (*.localhost names need no resolver here). */
function fetchHost(
  url: string,
  headers: Record<string, string> = {},
): Promise<{
  status: number
  headers: Record<string, string | string[] | undefined>
  body: string
}> {
  const u = new URL(url)
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port: u.port, path: u.pathname, headers: { host: u.host, ...headers } },
      (res) => {
        let body = ''
        res.setEncoding('utf8').on('data', (c: string) => (body += c))
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }))
      },
    )
    // A lost answer fails the poll that sent it instead of stalling it past its deadline.
    req.setTimeout(10_000, () => req.destroy(new Error(`no answer from ${url} in 10 s`)))
    req.on('error', reject)
    req.end()
  })
}

/** The body of a 200 answer; anything else rejects. */
async function get(url: string): Promise<string> {
  const res = await fetchHost(url)
  if (res.status !== 200) throw new Error(`${res.status}: ${res.body}`)
  return res.body
}

t.test('bareku up, push, Ctrl-C, up again', async (t) => {
  const dir = uniqueDir('bareku-up-')
  t.teardown(() => removeDir(dir))
  const home = join(dir, 'home')
  const env = {
    BAREKU_HOME: home,
    // Every port picked by the kernel: the banner says which.
    BAREKU_MASTER_CONTROL: 'tcp://127.0.0.1:0',
    BAREKU_MASTER_PUBLISH: 'tcp://127.0.0.1:0',
    BAREKU_MASTER_STATS: 'tcp://127.0.0.1:0',
    BAREKU_MASTER_SLUGS: 'tcp://127.0.0.1:0',
    BAREKU_MASTER_LOGS: 'tcp://127.0.0.1:0',
  }
  const up = () => {
    const proc = startProcess(BAREKU, ['up', '--port', '0'], { env })
    t.teardown(() => proc.stop(70_000))
    return proc
  }
  let proc = up()
  await proc.waitFor(/Bareku is up/, 60_000)
  const banner = proc.lines.join('\n')
  const master = /master control API at (tcp:\S+)/.exec(banner)![1]!
  const port = /apps answer at http:\/\/APP\.localhost:(\d+)\//.exec(banner)![1]!
  t.match(banner, /git push bareku master/, 'it says what to do next')

  const cli = { ...process.env, BAREKU_HOME: home, BAREKU_MASTER: master }
  const created = await run(BAREKU, ['apps:create', 'hello'], { env: cli })
  t.match(created.stdout, /git remote add bareku (\S+hello\.git)/)
  const work = await makeWorkTree(join(dir, 'app'), {
    from: join(REPO, 'test/fixtures/apps/python-web'),
  })
  const pushed = await push(work, join(home, 'repos', 'hello.git'))
  t.equal(pushed.code, 0, pushed.stderr)
  const url = `http://hello.localhost:${port}/`
  t.match(
    pushed.stderr,
    new RegExp(`URL: ${url.replaceAll('.', '\\.')}`),
    'the push prints the URL',
  )
  // The frontend may need one health-check round to see the new backend up.
  const first = await until('the app answers', () => get(url), 10_000)
  t.match(first, /python fixture ok/, 'the app answers at the printed URL')
  const ps = JSON.parse((await run(BAREKU, ['ps', 'hello', '--json'], { env: cli })).stdout) as {
    state: string
  }[]
  t.same(
    ps.map((p) => p.state),
    ['ready'],
  )

  // A scale shows each process as it becomes ready, then returns.
  const scaled = await run(BAREKU, ['ps:scale', 'hello', 'web=2'], { env: cli })
  t.match(scaled.stdout, /Scaled hello to web=2/)
  t.match(scaled.stdout, /hello\.web\.2 \(v1 on \S+, port \d+\) - ready/, 'progress of the scale')
  const set = await run(BAREKU, ['config:set', 'hello', 'GREETING=hi'], { env: cli })
  t.match(set.stdout, /hello\.web\.1 \(v2 on [^)]+\) - ready/, 'a config change rolls out v2')

  // run: the release's env (the new config var), its output and its exit code.
  const oneOff = await run(BAREKU, ['run', 'hello', '--', 'echo "$GREETING from $DYNO"; exit 3'], {
    env: cli,
  }).catch((err: { code: number; stdout: string }) => err)
  t.equal((oneOff as { code?: number }).code, 3, 'run exits with the command status')
  t.match(oneOff.stdout, /^hi from run\.\d+$/m, 'run sees the config var set above')

  // A new version, then a rollback serves the old one again.
  await commitAll(work, 'v3', {
    'app.py': readFileSync(join(work, 'app.py'), 'utf8').replace('fixture ok', 'fixture NEW'),
  })
  t.equal((await push(work, join(home, 'repos', 'hello.git'))).code, 0)
  t.match(
    await until('v3 answers', () =>
      get(url).then(
        (b) => /NEW/.test(b) && b,
        () => undefined,
      ),
    ),
    /fixture NEW/,
  )
  const back = await run(BAREKU, ['rollback', 'hello', 'v2'], { env: cli })
  t.match(back.stdout, /Rolled hello back to v2: now v4/)
  t.match(
    await until('the old version answers', () =>
      get(url).then(
        (b) => /fixture ok/.test(b) && b,
        () => undefined,
      ),
    ),
    /fixture ok/,
    'rollback serves the old version',
  )
  // The frontend ramps v4 up and reports v3 drained; then the master drops v3 and the worker
  // stops it: from then on only v4 answers.
  await until('v3 stopped', () => {
    const status = JSON.parse(readFileSync(join(home, 'run', 'status.json'), 'utf8')) as {
      instances: { release: number }[]
    }
    return !status.instances.some((i) => i.release === 3)
  })

  // A release whose app.json health check fails: the push is rejected, and every request made
  // meanwhile is answered by the release that was running.
  await commitAll(work, 'a release that never becomes healthy', {
    'app.py': readFileSync(join(work, 'app.py'), 'utf8').replace('fixture NEW', 'fixture BAD'),
    'app.json': JSON.stringify({
      healthchecks: {
        web: { path: '/health', match: 'never there', attempts: 2, intervalMs: 100 },
      },
    }),
  })
  let pushing = true
  const answers: string[] = []
  const load = (async () => {
    // Bounded: it stops with the push, or after 20,000 requests.
    while (pushing && answers.length < 20_000) answers.push(await get(url).catch(String))
  })()
  const bad = await push(work, join(home, 'repos', 'hello.git'))
  pushing = false
  await load
  t.not(bad.code, 0, 'the push is rejected')
  t.match(bad.stderr, /v5 failed its health check/, 'and says why')
  t.ok(answers.length > 0, `requests during the push: ${answers.length}`)
  t.same(
    answers.filter((a) => !/fixture ok/.test(a)),
    [],
    'every request during the push was answered by the running release',
  )
  t.match(await get(url), /fixture ok/, 'the running release still answers')

  // A static site: no process, the frontend serves public/ from the slug (a Dir route).
  await run(BAREKU, ['apps:create', 'site'], { env: cli })
  const siteWork = await makeWorkTree(join(dir, 'site'), {
    from: join(REPO, 'test/fixtures/apps/static-site'),
  })
  const sitePush = await push(siteWork, join(home, 'repos', 'site.git'))
  t.equal(sitePush.code, 0, sitePush.stderr)
  t.match(sitePush.stderr, /Served by the frontend itself/)
  const site = `http://site.localhost:${port}`
  t.equal(await get(`${site}/`), '<h1>static fixture ok</h1>\n', 'served once the push is done')
  const css = await fetchHost(`${site}/css/site.css`)
  t.equal(css.status, 200)
  t.match(css.headers['content-type'], /^text\/css/)
  const etag = String(css.headers.etag)
  const cached = await fetchHost(`${site}/css/site.css`, { 'if-none-match': etag })
  t.equal(cached.status, 304, 'ETag and If-None-Match')
  t.equal((await fetchHost(`${site}/nope.html`)).status, 404)
  const sitePs = JSON.parse(
    (await run(BAREKU, ['ps', 'site', '--json'], { env: cli })).stdout,
  ) as unknown[]
  t.same(sitePs, [], 'no process runs for it')
  await commitAll(siteWork, 'new page', { 'public/index.html': '<h1>static v2</h1>\n' })
  t.equal((await push(siteWork, join(home, 'repos', 'site.git'))).code, 0)
  t.equal(await get(`${site}/`), '<h1>static v2</h1>\n', 'a redeploy serves the new files')

  // A Node web app and a Python Mongrel2 handler app, pushed the same way, answer too.
  for (const [name, fixture, answer] of [
    ['nodeapp', 'node-web', /^node fixture ok production built$/m],
    ['pyh', 'python-handler', /^python handler ok \/hello$/],
  ] as const) {
    await run(BAREKU, ['apps:create', name], { env: cli })
    const tree = await makeWorkTree(join(dir, name), {
      from: join(REPO, 'test/fixtures/apps', fixture),
    })
    const pushed = await push(tree, join(home, 'repos', `${name}.git`))
    t.equal(pushed.code, 0, pushed.stderr)
    t.match(
      await until(`${name} answers`, () => get(`http://${name}.localhost:${port}/hello`)),
      answer,
      `${fixture} answers through the frontend`,
    )
  }

  // The Node app becomes a static site, under load: its process serves until the site does.
  const nodeTree = join(dir, 'nodeapp')
  for (const f of ['package.json', 'package-lock.json', 'server.js', 'build.js']) {
    rmSync(join(nodeTree, f))
  }
  await commitAll(nodeTree, 'now a static site', { 'public/index.html': '<h1>now static</h1>\n' })
  const nodeUrl = `http://nodeapp.localhost:${port}/`
  let switching = true
  const seen: string[] = []
  const switchLoad = (async () => {
    // Bounded: it stops once the site answers after the push, or after 20,000 requests.
    while (switching && seen.length < 20_000) seen.push(await get(nodeUrl).catch(String))
  })()
  const toStatic = await push(nodeTree, join(home, 'repos', 'nodeapp.git'))
  t.equal(toStatic.code, 0, toStatic.stderr)
  await until('the site answers', async () => (await get(nodeUrl)) === '<h1>now static</h1>\n')
  switching = false
  await switchLoad
  t.same(
    seen.filter((a) => !/^node fixture ok|^<h1>now static<\/h1>/.test(a)),
    [],
    `every request during the switch was answered, by the process or the site (${seen.length})`,
  )
  await until('its process stopped', async () => {
    const ps = await run(BAREKU, ['ps', 'nodeapp', '--json'], { env: cli })
    return (JSON.parse(ps.stdout) as unknown[]).length === 0
  })
  // And back: requests wait for the new process rather than fail.
  await run('git', ['revert', '--no-edit', 'HEAD'], { cwd: nodeTree })
  switching = true
  seen.length = 0
  const backLoad = (async () => {
    while (switching && seen.length < 20_000) seen.push(await get(nodeUrl).catch(String))
  })()
  const toNode = await push(nodeTree, join(home, 'repos', 'nodeapp.git'))
  t.equal(toNode.code, 0, toNode.stderr)
  await until('the process answers', async () => /^node fixture ok/.test(await get(nodeUrl)))
  switching = false
  await backLoad
  t.same(
    seen.filter((a) => !/^node fixture ok|^<h1>now static<\/h1>/.test(a)),
    [],
    `every request during the switch back was answered (${seen.length})`,
  )

  // domains:add routes a new Host to the app.
  await run(BAREKU, ['domains:add', 'hello', 'www.example.test'], { env: cli })
  t.match(
    await until('the domain answers', () => get(`http://www.example.test:${port}/`)),
    /fixture ok/,
  )

  // logs -f shows a line the app prints after it started (python's request log line).
  const follow = startProcess(BAREKU, ['logs', 'hello', '-f', '-n', '1'], { env: cli })
  t.teardown(() => follow.stop())
  await until('logs -f prints the history', () => follow.lines.length > 0)
  await get(`${url}after-start`)
  await follow.waitFor(/app\[web\.\d+\]: .*GET \/after-start/, 20_000)
  t.pass('logs -f shows a line printed after it started')
  await follow.stop()

  // Bad input: a clear message, a non-zero exit, nothing changed.
  const fails = async (args: string[], env = cli) =>
    run(BAREKU, args, { env }).then(
      () => ({ code: 0, stderr: '' }),
      (err: { code: number; stderr: string }) => err,
    )
  const typo = await fails(['ps:scal', 'hello', 'web=1'])
  t.match(typo, { code: 2, stderr: /did you mean "ps:scale"/ })
  t.match(await fails(['ps', 'nope']), { code: 1, stderr: /no app named "nope"/ })
  t.match(await fails(['config:set', 'hello', 'NOEQUALS']), { code: 1, stderr: /not KEY=VALUE/ })
  t.match(await fails(['ps:scale', 'hello', 'web=-1']), {
    code: 1,
    stderr: /count must be a number/,
  })
  t.match(await fails(['ps:scale', 'hello', 'bogus=1']), { code: 1, stderr: /bogus/ })
  t.match(
    await fails(['apps'], { ...cli, BAREKU_MASTER: 'tcp://127.0.0.1:1' }),
    { code: 1, stderr: /tcp:\/\/127\.0\.0\.1:1/ },
    'an unreachable master: where it tried',
  )
  const after = JSON.parse(
    (await run(BAREKU, ['ps', 'hello', '--json'], { env: cli })).stdout,
  ) as unknown[]
  t.equal(after.length, 2, 'no partial change: still web=2')

  // Ctrl-C: everything stops, the app too.
  proc.child.kill('SIGINT')
  t.equal(await proc.exited, 0, 'up exits 0')
  t.match(proc.lines.join('\n'), /Bareku stopped/)
  t.notOk(existsSync(join(home, 'run', 'up.lock')), 'the lock is released')
  await t.rejects(get(url), 'nothing answers any more')

  // Again: the app comes back from the saved state, without a push.
  proc = up()
  await proc.waitFor(/Bareku is up/, 60_000)
  const again = /master control API at (tcp:\S+)/.exec(proc.lines.join('\n'))![1]!
  const port2 = /apps answer at http:\/\/APP\.localhost:(\d+)\//.exec(proc.lines.join('\n'))![1]!
  t.ok(again)
  const body = await until('the app answers again', () => get(`http://hello.localhost:${port2}/`))
  t.match(body, /python fixture ok/)
})
