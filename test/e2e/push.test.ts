/**
 * `git push` into an app's repo with the real git client, against a real one-node cluster: the
 * master, a client and a worker (bin/bareku master|client|worker, one BAREKU_HOME, ports picked
 * by the kernel). The repo's pre-receive hook builds with the shipped buildpacks, packs the
 * slug, releases it and waits until the node runs it; the app (python3's stdlib, test/helpers/
 * git.ts webApp) is then asked over HTTP on the port `ps` gives.
 *
 *   git push ──> repos/shop.git ──pre-receive──> bareku hook pre-receive ──control──> master
 *                                                     │ slugs/<sha>.sqfs               │ XPUB
 *   test ──HTTP 127.0.0.1:PORT──> app <──worker <── worker.json <── client <──────────┘
 *
 * Every wait is for a push to finish, a file to appear or a condition with a deadline.
 */
import { randomBytes } from 'node:crypto'
import { existsSync, readdirSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { createRepo } from '../../hooks/repo.js'
import { startMaster, startNode, until, type MasterProc } from '../helpers/cluster.js'
import {
  BAREKU_BIN,
  killInstances,
  removeDir,
  uniqueDir,
  commitAll,
  makeWorkTree,
  push,
  remoteLines,
  runGit,
  webApp,
  writeFiles,
  type Files,
  type GitResult,
} from '../helpers/git.js'

const DEPLOY_TIMEOUT_MS = 8000
// Web ports of this file's apps: a random range, so parallel test files do not collide.
// Below 32768, where Linux picks the local ports of outgoing connections (one could hold ours).
const PORT_BASE = 20_000 + Math.floor(Math.random() * 120) * 100

interface Instance {
  name: string
  port: number | null
  state: string
  release: number
}

async function get(port: number): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/`)
  return res.text()
}

/** The body the app's web instance answers, once it runs release `version` and is ready. */
async function answer(master: MasterProc, app: string, version: number): Promise<string> {
  const web = await until(`${app} v${version} ready`, async () => {
    const ps = (await master.call('ps', { app })) as Instance[]
    const w = ps.find((i) => i.name === `${app}.web.1`)
    return w?.release === version && w.state === 'ready' && w.port !== null ? w : undefined
  })
  return get(web.port!)
}

function show(r: GitResult): string {
  return `exit ${r.code}\n${r.stderr}`
}

t.test('git push deploys, redeploys, and rejects what does not build or run', async (t) => {
  const dir = uniqueDir('bareku-push-')
  // tap runs teardowns last-registered first: the daemons stop, then any instance the worker
  // left (they carry this id as a config var) is killed, then the dir goes.
  t.teardown(() => removeDir(dir))
  const id = randomBytes(6).toString('hex')
  t.teardown(() => killInstances(id))
  const home = join(dir, 'home')
  const master = await startMaster(t, home, {
    BAREKU_WEB_PORTS: `${PORT_BASE}-${PORT_BASE + 99}`,
    BAREKU_MASTER_REPUBLISH_MS: '500',
  })
  await startNode(t, home, master.control, { BAREKU_WORKER_STOP_ON_EXIT: '1' })
  const bin = BAREKU_BIN
  await master.call('apps:create', { name: 'shop' })
  await master.call('config:set', { app: 'shop', vars: { BAREKU_E2E: id } })
  const repo = await createRepo(home, 'shop', { bin, master: master.control })
  const env = { BAREKU_DEPLOY_TIMEOUT_MS: String(DEPLOY_TIMEOUT_MS), BAREKU_USER: 'tester' }
  const work = await makeWorkTree(join(dir, 'work'), { files: webApp('hello v1\n') })
  const releases = async () =>
    ((await master.call('releases', { app: 'shop' })) as { version: number }[]).length

  t.test('a branch other than master or main is accepted without a build', async (t) => {
    const r = await push(work, repo, 'master:dev', { env })
    t.equal(r.code, 0, show(r))
    t.match(remoteLines(r).join('\n'), 'Accepted dev without a build: only master or main deploys')
    t.equal(await releases(), 0)
    const del = await push(work, repo, ':dev', { env })
    t.equal(del.code, 0, show(del))
    t.match(remoteLines(del).join('\n'), 'Deleting dev: nothing to build')
  })

  t.test('first push: built, released as v1, running', async (t) => {
    const r = await push(work, repo, 'master', { env })
    t.equal(r.code, 0, show(r))
    const lines = remoteLines(r)
    const text = lines.join('\n')
    t.match(text, /-----> Building shop from [0-9a-f]{7} \(master\)/)
    t.match(text, /Procfile declares types +-> web/)
    t.match(text, '-----> Compressing slug')
    t.ok(lines.includes('-----> Deploying v1'), text)
    t.ok(lines.includes('       127.0.0.1 - OK'), text)
    t.ok(lines.includes('=====> Application deployed'), text)
    t.ok(lines.includes('       Application version: 1'), text)
    t.ok(lines.includes('       Scale: web=1'), text)
    t.ok(lines.includes('       URL: http://shop.localhost:8080/'), text)
    t.equal(await answer(master, 'shop', 1), 'hello v1\n')
    const [v1] = (await master.call('releases', { app: 'shop' })) as Record<string, unknown>[]
    t.match(v1, { version: 1, by: 'tester', description: /^Deploy [0-9a-f]{7}: first$/ })
    t.notOk(existsSync(join(home, 'apps/shop/build.lock')), 'lock released')
    t.same(readdirSync(join(home, 'scratch')), [], 'scratch removed')
  })

  t.test('a change: v2 replaces v1', async (t) => {
    await commitAll(work, 'v2', webApp('hello v2\n'))
    const r = await push(work, repo, 'master', { env })
    t.equal(r.code, 0, show(r))
    t.ok(remoteLines(r).includes('       Application version: 2'), show(r))
    t.equal(await answer(master, 'shop', 2), 'hello v2\n')
  })

  t.test('a build failure is rejected before anything changes', async (t) => {
    await commitAll(work, 'bad procfile', { Procfile: 'web /usr/bin/python3 server\n' })
    const r = await push(work, repo, 'master', { env })
    t.not(r.code, 0, show(r))
    const text = remoteLines(r).join('\n')
    t.match(text, 'Procfile')
    t.match(text, 'Push rejected: the running release is unchanged.')
    t.match(r.stderr, /pre-receive hook declined/)
    t.equal(await releases(), 2)
    t.equal(await answer(master, 'shop', 2), 'hello v2\n')
    t.same(readdirSync(join(home, 'scratch')), [], 'scratch removed')
  })

  t.test('bad input: each push refused with the cause, nothing released', async (t) => {
    const hang = join(dir, 'hang-bp')
    writeFiles(hang, {
      'bin/detect': { content: '#!/bin/sh\necho Hang\n', mode: 0o755 },
      'bin/compile': { content: '#!/bin/sh\necho compiling forever\nsleep 60\n', mode: 0o755 },
      'bin/release': { content: '#!/bin/sh\necho "--- {}"\n', mode: 0o755 },
    })
    const cases: [string, Files, RegExp, NodeJS.ProcessEnv?][] = [
      ['no matching buildpack', { 'README.md': 'hi\n' }, /buildpack/i],
      ['a huge file', { ...webApp('x'), 'big.bin': 'x'.repeat(200_000) }, /big\.bin/],
      ['a hanging buildpack', { ...webApp('x'), '.buildpacks': `${hang}\n` }, /timed out|within/],
    ]
    const bad = join(dir, 'bad')
    await makeWorkTree(bad, { message: 'empty' })
    const empty = await push(bad, repo, 'master', { env, args: ['--force'] })
    t.not(empty.code, 0, show(empty))
    t.match(remoteLines(empty).join('\n'), /has no files/)
    for (const [what, files, expected] of cases) {
      await runGit(bad, ['rm', '-rq', '--ignore-unmatch', '.'])
      await commitAll(bad, what, files)
      const r = await push(bad, repo, 'master', {
        env: { ...env, BAREKU_MAX_FILE_BYTES: '100000', BAREKU_BUILD_TIMEOUT_MS: '3000' },
        args: ['--force'],
      })
      t.not(r.code, 0, `${what}: ${show(r)}`)
      t.match(remoteLines(r).join('\n'), expected, what)
      t.match(remoteLines(r).join('\n'), 'Push rejected: the running release is unchanged.')
    }
    await runGit(bad, ['rm', '-rq', '.'])
    await commitAll(bad, 'escaping link', webApp('x'))
    symlinkSync('../../../etc/passwd', join(bad, 'passwd'))
    await commitAll(bad, 'escaping link')
    const link = await push(bad, repo, 'master', { env, args: ['--force'] })
    t.not(link.code, 0, show(link))
    t.match(remoteLines(link).join('\n'), /symlink passwd -> \S+ points outside the app/)
    t.equal(await releases(), 2)
    t.same(readdirSync(join(home, 'scratch')), [], 'scratch removed')
    t.notOk(existsSync(join(home, 'apps/shop/build.lock')), 'lock released')
    t.equal(await answer(master, 'shop', 2), 'hello v2\n')
  })

  t.test(
    'an app that crashes at start: given up early, rolled back, v2 keeps answering',
    async (t) => {
      await commitAll(work, 'crashes', {
        Procfile: 'web: /usr/bin/python3 -c "import sys; sys.exit(3)"\n',
      })
      const r = await push(work, repo, 'master', { env })
      t.not(r.code, 0, show(r))
      const text = remoteLines(r).join('\n')
      t.match(text, '-----> Deploying v3')
      t.match(text, /shop\.web\.1 on \S+ crashed \d+ times while starting/)
      t.match(text, 'log/shop.web.1.log')
      t.match(text, 'rolled back to v2 (as v4)')
      const info = (await master.call('apps:info', { name: 'shop' })) as { release: number }
      t.equal(info.release, 4)
      t.equal(await answer(master, 'shop', 4), 'hello v2\n')
    },
  )

  t.test('a release command gates the rollout', async (t) => {
    await commitAll(work, 'release fails', {
      ...webApp('hello v5\n'),
      Procfile: 'web: /usr/bin/python3 server\nrelease: echo migrating; exit 4\n',
    })
    const r = await push(work, repo, 'master', { env })
    t.not(r.code, 0, show(r))
    t.match(remoteLines(r).join('\n'), /-----> Running release command[^]*migrating[^]*exit 4/)
    t.equal(await releases(), 4)

    await commitAll(work, 'release passes', {
      Procfile: 'web: /usr/bin/python3 server\nrelease: echo "migrated $GREETING"\n',
    })
    await master.call('config:set', { app: 'shop', vars: { GREETING: 'hi' } }) // v5
    const ok = await push(work, repo, 'master', { env })
    t.equal(ok.code, 0, show(ok))
    t.match(remoteLines(ok).join('\n'), '       migrated hi')
    t.ok(remoteLines(ok).includes('       Application version: 6'), show(ok))
    t.ok(remoteLines(ok).includes('       Scale: web=1'), 'release is not a scaled type')
    t.equal(await answer(master, 'shop', 6), 'hello v5\n')
  })

  t.test('two pushes at once: the second is refused at once', async (t) => {
    const marker = join(dir, 'building')
    const go = join(dir, 'go')
    await master.call('config:set', { app: 'shop', vars: { MARKER: marker, GO: go } }) // v7
    await commitAll(work, 'slow release', {
      Procfile:
        'web: /usr/bin/python3 server\nrelease: sh -c \'touch "$MARKER"; while [ ! -e "$GO" ]; do sleep 0.1; done\'\n',
    })
    // The build timeout also bounds the release command, should the test fail before "go".
    const first = push(work, repo, 'master', {
      env: { ...env, BAREKU_BUILD_TIMEOUT_MS: '60000' },
    })
    await until('the first push is in its release command', () => existsSync(marker))
    const other = await makeWorkTree(join(dir, 'other'), { files: webApp('other\n') })
    const second = await push(other, repo, 'master', { env, args: ['--force'] })
    t.not(second.code, 0, show(second))
    t.match(remoteLines(second).join('\n'), 'another push is building shop; try again')
    writeFileSync(go, '')
    const r = await first
    t.equal(r.code, 0, show(r))
    t.ok(remoteLines(r).includes('       Application version: 8'), show(r))
  })

  t.test('a force push of another history to main builds it', async (t) => {
    const other = join(dir, 'other')
    await commitAll(other, 'another history', webApp('forced\n'))
    const r = await push(other, repo, 'master:main', { env, args: ['--force'] })
    t.equal(r.code, 0, show(r))
    t.match(remoteLines(r).join('\n'), /Building shop from [0-9a-f]{7} \(main\)/)
    t.equal(await answer(master, 'shop', 9), 'forced\n')
    const forced = await push(other, repo, 'master', { env, args: ['--force'] })
    t.equal(forced.code, 0, show(forced))
    t.equal(await answer(master, 'shop', 10), 'forced\n')
  })

  t.test('old slugs are pruned, keeping the last N releases', async (t) => {
    const slugs = () => readdirSync(join(home, 'slugs')).filter((n) => n.endsWith('.sqfs'))
    t.ok(slugs().length >= 3, slugs().join(' '))
    // Slugs younger than a build and a deploy are kept (a push may be about to release them).
    const old = new Date(Date.now() - 3600_000)
    for (const name of slugs()) utimesSync(join(home, 'slugs', name), old, old)
    await commitAll(work, 'v11', webApp('hello v11\n'))
    const r = await push(work, repo, 'master', {
      env: { ...env, BAREKU_KEEP_RELEASES: '2', BAREKU_BUILD_TIMEOUT_MS: '60000' },
      args: ['--force'],
    })
    t.equal(r.code, 0, show(r))
    t.match(remoteLines(r).join('\n'), /Pruned \d+ old slug/)
    const kept = (await master.call('releases', { app: 'shop' })) as {
      slug: { sha256: string }
    }[]
    t.same(
      slugs().sort(),
      [...new Set(kept.slice(0, 2).map((r) => `${r.slug.sha256}.sqfs`))].sort(),
    )
    t.equal(await answer(master, 'shop', 11), 'hello v11\n')
  })

  t.test('an app the master does not know is refused', async (t) => {
    const ghost = await createRepo(home, 'ghost', { bin, master: master.control })
    const r = await push(work, ghost, 'master', { env })
    t.not(r.code, 0, show(r))
    t.match(remoteLines(r).join('\n'), 'no app named "ghost"')
    t.same(readdirSync(join(home, 'scratch')), [])
  })

  t.test('pushing nothing new', async (t) => {
    const r = await push(work, repo, 'master', { env, args: ['--force'] })
    t.equal(r.code, 0, show(r))
    t.match(r.stderr, 'Everything up-to-date')
    const ls = await runGit(work, ['ls-remote', repo])
    t.match(ls.stdout, 'refs/heads/master')
  })
})
