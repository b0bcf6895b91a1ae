/**
 * Repos: names checked before any path is made, a bare repo on master with the hook installed
 * (home, master and command written in), idempotent creation, destruction.
 */
import { execFileSync } from 'node:child_process'
import { existsSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { BAREKU_BIN, checkAppName, createRepo, destroyRepo, repoPath, shellQuote } from './repo.js'

t.test('app names: the master rule, no path tricks', async (t) => {
  for (const good of ['a', 'my-app', 'app2', 'a'.repeat(30)]) t.equal(checkAppName(good), good)
  for (const bad of [
    '',
    'A',
    '1app',
    '-app',
    '../etc',
    'a/b',
    'a.git',
    'a b',
    'a'.repeat(31),
    '.',
  ]) {
    t.throws(() => checkAppName(bad), { code: 'E_APP' }, JSON.stringify(bad))
    t.throws(() => repoPath('/h', bad), { code: 'E_APP' })
  }
  t.equal(repoPath('/h', 'web'), '/h/repos/web.git')
})

t.test('shellQuote survives quotes', async (t) => {
  const out = execFileSync('/bin/sh', ['-c', `printf %s ${shellQuote('it\'s a "dir" $HOME')}`])
  t.equal(out.toString(), 'it\'s a "dir" $HOME')
})

t.test('createRepo: bare, master, hook installed; idempotent; destroyRepo', async (t) => {
  const home = join(t.testdir(), "ho'me")
  const path = await createRepo(home, 'shop', { master: 'tcp://127.0.0.1:7777' })
  t.equal(path, join(home, 'repos/shop.git'))
  t.equal(
    execFileSync('git', ['--git-dir', path, 'symbolic-ref', 'HEAD']).toString().trim(),
    'refs/heads/master',
  )
  t.equal(
    execFileSync('git', ['--git-dir', path, 'rev-parse', '--is-bare-repository']).toString().trim(),
    'true',
  )
  const hook = join(path, 'hooks/pre-receive')
  t.equal(statSync(hook).mode & 0o777, 0o755)
  const text = readFileSync(hook, 'utf8')
  t.notMatch(text, /@BAREKU_/)
  t.match(text, 'tcp://127.0.0.1:7777')
  t.match(text, shellQuote(home))
  t.match(text, shellQuote(BAREKU_BIN))
  // The hook as bash reads it: run it with a fake bareku that prints what it was given.
  const fake = join(home, 'fake-bareku')
  execFileSync('/bin/sh', [
    '-c',
    `printf '#!/bin/sh\\necho "$BAREKU_HOME|$BAREKU_MASTER|$*"\\n' > "$1"; chmod +x "$1"`,
    'sh',
    fake,
  ])
  const seen = execFileSync(hook, ['x'], {
    env: { ...process.env, BAREKU_BIN: fake, BAREKU_MASTER: '' },
  })
  t.equal(seen.toString(), `${home}|tcp://127.0.0.1:7777|hook pre-receive x\n`)
  // The command and master written in, when the environment does not override them.
  await createRepo(home, 'shop', { bin: fake, master: 'tcp://127.0.0.1:7777' })
  const { BAREKU_BIN: _b, BAREKU_MASTER: _m, ...env } = process.env
  t.equal(
    execFileSync(hook, [], { env }).toString(),
    `${home}|tcp://127.0.0.1:7777|hook pre-receive\n`,
  )

  // Again: same repo, history kept, hook rewritten (here with another command).
  execFileSync('git', ['--git-dir', path, 'config', 'bareku.marker', 'kept'])
  await createRepo(home, 'shop', { bin: '/opt/bareku/bin/bareku' })
  t.equal(
    execFileSync('git', ['--git-dir', path, 'config', 'bareku.marker']).toString().trim(),
    'kept',
  )
  t.match(readFileSync(hook, 'utf8'), "'/opt/bareku/bin/bareku'")
  t.match(readFileSync(hook, 'utf8'), 'tcp://127.0.0.1:7070', 'default master')

  await destroyRepo(home, 'shop')
  t.notOk(existsSync(path))
  await destroyRepo(home, 'shop')
})

t.test('createRepo refuses bad input', async (t) => {
  const home = t.testdir()
  await t.rejects(createRepo(home, '../x'), { code: 'E_APP' })
  await t.rejects(createRepo('relative/home', 'x'), { code: 'E_CONFIG' })
  await t.rejects(createRepo(home, 'x', { master: 'tcp://a:1"; rm -rf /' }), { code: 'E_CONFIG' })
  t.notOk(existsSync(join(home, 'repos', 'x.git')))
})
