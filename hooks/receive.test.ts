/**
 * The hook's parts that need no master: stdin parsing, the deploy-branch rule, the build lock
 * (a second push refused at once, a dead hook's lock taken over), the checkout of a pushed
 * commit (huge files and empty trees refused before anything is written), symlink escapes, and
 * the release command. test/e2e/push.test.ts runs the whole hook through real pushes.
 */
import { spawn } from 'node:child_process'
import { existsSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { PassThrough } from 'node:stream'
import t from 'tap'
import { commitAll, makeWorkTree } from '../test/helpers/git.js'
import {
  acquireBuildLock,
  checkout,
  checkSymlinks,
  isDeployRef,
  loadHookSettings,
  Output,
  parseRefUpdates,
  readHealthchecks,
  runReleaseCommand,
  waitForDeploy,
} from './receive.js'

const A = 'a'.repeat(40)
const B = 'b'.repeat(40)
const Z = '0'.repeat(40)

function capture() {
  const stream = new PassThrough()
  let text = ''
  stream.setEncoding('utf8').on('data', (d: string) => (text += d))
  return { out: new Output(stream), text: () => text }
}

t.test('parseRefUpdates and isDeployRef', async (t) => {
  t.same(parseRefUpdates(`${A} ${B} refs/heads/master\n${B} ${Z} refs/heads/x\n\n`), [
    { old: A, new: B, ref: 'refs/heads/master' },
    { old: B, new: Z, ref: 'refs/heads/x' },
  ])
  t.same(parseRefUpdates(''), [])
  for (const bad of [
    `${A} ${B}`,
    `${A} zz refs/heads/x`,
    `${A} ${B} heads/x`,
    `${A} ${B} refs/x y`,
  ]) {
    t.throws(() => parseRefUpdates(bad), { code: 'E_BUILD' }, bad)
  }
  t.ok(isDeployRef('refs/heads/master'))
  t.ok(isDeployRef('refs/heads/main'))
  for (const ref of ['refs/heads/dev', 'refs/tags/master', 'refs/heads/master2']) {
    t.notOk(isDeployRef(ref), ref)
  }
})

t.test('settings: defaults and bad values', async (t) => {
  const s = loadHookSettings({ BAREKU_HOME: '/srv/b', USER: 'ann' })
  t.match(s, {
    home: '/srv/b',
    master: 'tcp://127.0.0.1:7070',
    slugDir: '/srv/b/slugs',
    buildTimeoutMs: 900_000,
    deployTimeoutMs: 120_000,
    maxFileBytes: 500 * 1024 * 1024,
    keepReleases: 5,
    user: 'ann',
  })
  t.equal(loadHookSettings({ BAREKU_HOME: '/h', BAREKU_USER: 'key1', USER: 'x' }).user, 'key1')
  t.throws(() => loadHookSettings({}), { code: 'E_CONFIG' })
  t.throws(() => loadHookSettings({ BAREKU_HOME: 'rel' }), { code: 'E_CONFIG' })
  for (const name of ['BAREKU_BUILD_TIMEOUT_MS', 'BAREKU_KEEP_RELEASES', 'BAREKU_MAX_FILE_BYTES']) {
    for (const value of ['0', '-1', '1e3', 'x']) {
      t.throws(() => loadHookSettings({ BAREKU_HOME: '/h', [name]: value }), { code: 'E_CONFIG' })
    }
  }
})

t.test('build lock: one push at a time, stale locks taken over', async (t) => {
  const home = t.testdir()
  const unlock = await acquireBuildLock(home, 'shop')
  const file = join(home, 'apps/shop/build.lock')
  t.equal(readFileSync(file, 'utf8'), `${process.pid}\n`)
  await t.rejects(acquireBuildLock(home, 'shop'), {
    code: 'E_BUILD',
    message: /another push is building shop; try again/,
  })
  const other = await acquireBuildLock(home, 'other')
  other()
  unlock()
  t.notOk(existsSync(file))
  unlock() // twice is harmless

  // A lock left by a hook that died: its pid is gone.
  const dead = spawn(process.execPath, ['-e', ''])
  const pid = await new Promise<number>((resolve) => dead.on('exit', () => resolve(dead.pid!)))
  writeFileSync(file, `${pid}\n`)
  const again = await acquireBuildLock(home, 'shop')
  t.equal(readFileSync(file, 'utf8'), `${process.pid}\n`, 'taken over')
  // The previous holder's unlock must not remove a lock that is no longer its own.
  writeFileSync(file, '1\n')
  again()
  t.equal(readFileSync(file, 'utf8'), '1\n')
  await t.rejects(acquireBuildLock(home, 'shop'), { code: 'E_BUILD' }, 'pid 1 is alive')
})

t.test('checkout: the commit tree, huge files and empty trees refused first', async (t) => {
  const dir = t.testdir()
  const work = await makeWorkTree(join(dir, 'work'), {
    files: {
      Procfile: 'web: ./run\n',
      run: { content: '#!/bin/sh\n', mode: 0o755 },
      'lib/a b.txt': 'x\n',
    },
  })
  symlinkSync('lib/a b.txt', join(work, 'link'))
  const commit = await commitAll(work, 'with link')
  const git = { cwd: join(work, '.git'), env: process.env }
  const { out } = capture()
  const dest = join(dir, 'dest')
  await checkout(commit, dest, { ...git, maxFileBytes: 1000, out })
  t.same(readdirSync(dest).sort(), ['Procfile', 'lib', 'link', 'run'])
  t.equal(readFileSync(join(dest, 'link'), 'utf8'), 'x\n')
  await checkSymlinks(dest)

  const big = await commitAll(work, 'big', { 'data.bin': 'y'.repeat(2000) })
  const dest2 = join(dir, 'dest2')
  await t.rejects(checkout(big, dest2, { ...git, maxFileBytes: 1000, out }), {
    code: 'E_BUILD',
    message: /data\.bin.*BAREKU_MAX_FILE_BYTES/,
  })
  t.notOk(existsSync(dest2), 'nothing written')

  const empty = (
    await new Promise<string>((resolve) => {
      const c = spawn(
        'git',
        ['commit-tree', '4b825dc642cb6eb9a060e54bf8d69288fbee4904', '-m', 'e'],
        { cwd: work },
      )
      let s = ''
      c.stdout.on('data', (d: Buffer) => (s += d.toString()))
      c.on('close', () => resolve(s))
    })
  ).trim()
  await t.rejects(checkout(empty, join(dir, 'dest3'), { ...git, maxFileBytes: 1000, out }), {
    code: 'E_BUILD',
    message: /has no files/,
  })
})

t.test('checkSymlinks: links that leave the app are refused', async (t) => {
  // [link name at the app's top, target, stays inside?]
  const cases: [string, string, boolean][] = [
    ['sibling', 'b.txt', true],
    ['down', 'sub/c.txt', true],
    ['dangling', 'nothere/x', true],
    ['up-and-down', 'sub/../b.txt', true],
    ['abs', '/etc/passwd', false],
    ['up', '../outside', false],
    ['deep-up', 'sub/../../x', false],
    // dot -> "." makes dot/.. the app's parent, which a textual check would miss.
    ['via-dot', 'dot/../x', false],
    ['loop', 'loop', false],
  ]
  for (const [name, target, inside] of cases) {
    const root = t.testdir({ 'b.txt': 'b', sub: { 'c.txt': 'c' } })
    symlinkSync('.', join(root, 'dot'))
    symlinkSync(target, join(root, name))
    if (inside) await t.resolves(checkSymlinks(root), name)
    else await t.rejects(checkSymlinks(root), { code: 'E_BUILD', message: /points outside/ }, name)
  }
  const root = t.testdir({ 'b.txt': 'b', sub: { 'c.txt': 'c' } })
  symlinkSync('../b.txt', join(root, 'sub', 'up-ok'))
  symlinkSync('c.txt', join(root, 'sub', 'same-dir'))
  await checkSymlinks(root)
  symlinkSync('../../b.txt', join(root, 'sub', 'out'))
  await t.rejects(checkSymlinks(root), { message: /sub\/out -> \.\.\/\.\.\/b\.txt/ })
})

t.test('release command: env and .profile.d, failures and timeout', async (t) => {
  const dir = t.testdir({
    '.profile.d': { 'a.sh': 'export FROM_PROFILE=yes\n' },
  })
  const { out, text } = capture()
  await runReleaseCommand('echo "$GREETING $FROM_PROFILE $DYNO"; pwd', {
    dir,
    env: { GREETING: 'hello' },
    out,
    timeoutMs: 10_000,
  })
  t.match(text(), `       hello yes release.1\n       ${dir}\n`)
  await t.rejects(
    runReleaseCommand('echo migrating; exit 3', { dir, env: {}, out, timeoutMs: 10_000 }),
    { code: 'E_BUILD', message: /exit 3/ },
  )
  const started = Date.now()
  await t.rejects(runReleaseCommand('sleep 30 & sleep 30', { dir, env: {}, out, timeoutMs: 300 }), {
    code: 'E_BUILD',
    message: /did not finish within 300 ms/,
  })
  t.ok(Date.now() - started < 10_000, 'killed, with its children')
})

t.test('app.json health checks are read for releases:add', async (t) => {
  const dir = t.testdir({
    none: {},
    plain: { 'app.json': JSON.stringify({ name: 'x' }) },
    checks: { 'app.json': JSON.stringify({ healthchecks: { web: { path: '/health' } } }) },
    broken: { 'app.json': '{"healthchecks": ' },
  })
  t.equal(readHealthchecks(join(dir, 'none')), undefined, 'no app.json: none')
  t.equal(readHealthchecks(join(dir, 'plain')), undefined, 'no key: none')
  t.same(readHealthchecks(join(dir, 'checks')), { web: { path: '/health' } })
  t.throws(() => readHealthchecks(join(dir, 'broken')), {
    code: 'E_BUILD',
    message: /app\.json is not valid JSON/,
  })
})

t.test('a release that fails its health check ends the wait at once', async (t) => {
  const { out } = capture()
  const failed = 'v3 failed its health check (app.json "healthchecks")'
  const call = (cmd: string): Promise<unknown> =>
    Promise.resolve(
      cmd === 'deploy:status'
        ? { done: false, nodes: [{ node: 'n1', desired: 1, ready: 1 }], failed }
        : [],
    )
  // A 60 s deadline: the answer comes at the first poll, well inside the file's timeout.
  const r = await waitForDeploy(call, 'shop', 3, {
    out,
    timeoutMs: 60_000,
    pollMs: 50,
    appWord: /shop/,
  })
  t.same(r, { done: false, why: failed })
})
