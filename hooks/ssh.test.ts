/**
 * Keys and the forced command: keys checked by ssh-keygen and refused twice; the forced command
 * lets through only git-receive-pack/git-upload-pack on an existing app. gitShell runs behind a
 * fake ssh (a script handing git's remote command over as SSH_ORIGINAL_COMMAND), so real git
 * talks to it; test/e2e/push-ssh.test.ts does the same through a real sshd.
 *
 *   git ls-remote/push ──GIT_SSH_COMMAND──> fake-ssh ──SSH_ORIGINAL_COMMAND──> bareku git-shell KEY
 *                                                                  └─> git-upload-pack repos/APP.git
 */
import { execFileSync } from 'node:child_process'
import { readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { BAREKU_BIN, makeWorkTree, push, runGit } from '../test/helpers/git.js'
import { createRepo, shellQuote } from './repo.js'
import { addKey, authorizedKeysPath, listKeys, parseGitCommand, removeKey } from './ssh.js'

function keygen(dir: string, name: string): { pub: string; fingerprint: string } {
  const file = join(dir, name)
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', `${name}@test`, '-f', file])
  const fingerprint = execFileSync('ssh-keygen', ['-l', '-f', `${file}.pub`])
    .toString()
    .split(' ')[1]!
  return { pub: readFileSync(`${file}.pub`, 'utf8'), fingerprint }
}

t.test('parseGitCommand: only receive-pack and upload-pack of an app name', async (t) => {
  const ok: [string, string, string][] = [
    ["git-receive-pack 'shop'", 'git-receive-pack', 'shop'],
    ["git-upload-pack 'shop'", 'git-upload-pack', 'shop'],
    ['git-receive-pack shop', 'git-receive-pack', 'shop'],
    ["git-receive-pack '/shop.git'", 'git-receive-pack', 'shop'],
    ["git-receive-pack 'shop.git'", 'git-receive-pack', 'shop'],
    ['git-upload-pack /shop', 'git-upload-pack', 'shop'],
  ]
  for (const [line, command, app] of ok) t.same(parseGitCommand(line), { command, app }, line)
  for (const bad of [
    'ls',
    'git-upload-archive shop',
    "git-receive-pack '../etc'",
    "git-receive-pack 'a/b'",
    "git-receive-pack 'shop",
    "git-receive-pack 'Shop'",
    "git-receive-pack 'shop'; rm -rf /",
    'git-receive-pack',
    "git-receive-pack 'shop' extra",
    "bash -c 'git-receive-pack shop'",
  ]) {
    t.equal(parseGitCommand(bad), undefined, bad)
  }
})

t.test('addKey, listKeys, removeKey', async (t) => {
  const dir = t.testdir()
  const home = join(dir, 'home')
  const alice = keygen(dir, 'alice')
  const bob = keygen(dir, 'bob')
  const info = await addKey(home, 'alice', alice.pub, { bin: '/opt/bareku/bin/bareku' })
  t.same(info, {
    name: 'alice',
    type: 'ssh-ed25519',
    fingerprint: alice.fingerprint,
    comment: 'alice@test',
  })
  const file = authorizedKeysPath(home)
  t.equal(statSync(file).mode & 0o777, 0o600)
  t.equal(statSync(join(home, 'ssh')).mode & 0o777, 0o700)
  const [line] = readFileSync(file, 'utf8').split('\n')
  t.equal(
    line,
    `command="BAREKU_HOME=${shellQuote(home)} '/opt/bareku/bin/bareku' git-shell alice",no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-pty ${alice.pub.trim()}`,
  )
  // sshd reads it: ssh-keygen parses the options and the key.
  t.match(execFileSync('ssh-keygen', ['-l', '-f', file]).toString(), alice.fingerprint)

  await addKey(home, 'bob', bob.pub)
  t.same(
    (await listKeys(home)).map((k) => [k.name, k.fingerprint]),
    [
      ['alice', alice.fingerprint],
      ['bob', bob.fingerprint],
    ],
  )

  await t.rejects(addKey(home, 'carol', alice.pub), { code: 'E_CONFIG' }, 'same key twice')
  await t.rejects(addKey(home, 'alice', keygen(dir, 'x').pub), { code: 'E_CONFIG' }, 'same name')
  await t.rejects(addKey(home, 'bad name', bob.pub), { code: 'E_CONFIG' })
  await t.rejects(addKey(home, 'd', 'ssh-ed25519 AAAAnotakey d@x'), { code: 'E_CONFIG' })
  await t.rejects(addKey(home, 'd', 'hello'), { code: 'E_CONFIG' })
  await t.rejects(addKey(home, 'd', readFileSync(join(dir, 'bob'), 'utf8')), { code: 'E_CONFIG' })
  await t.rejects(addKey(home, 'd', `${alice.pub}${bob.pub}`), { code: 'E_CONFIG' })
  await t.rejects(addKey(home, 'd', `command="sh" ${keygen(dir, 'y').pub}`), { code: 'E_CONFIG' })
  await t.rejects(addKey('relative', 'd', keygen(dir, 'z').pub), { code: 'E_CONFIG' })
  t.equal((await listKeys(home)).length, 2, 'nothing added by refused calls')

  await removeKey(home, 'alice')
  t.same(
    (await listKeys(home)).map((k) => k.name),
    ['bob'],
  )
  await t.rejects(removeKey(home, 'alice'), { code: 'E_CONFIG' })
  t.same(await listKeys(join(dir, 'nohome')), [])
})

t.test('gitShell behind a fake ssh: fetch and push allowed, anything else refused', async (t) => {
  const dir = t.testdir()
  const home = join(dir, 'home')
  const bin = BAREKU_BIN
  await createRepo(home, 'shop', { bin })
  // A pre-receive that accepts and says who pushed, instead of the real build.
  writeFileSync(
    join(home, 'repos/shop.git/hooks/pre-receive'),
    '#!/bin/sh\necho "pushed by $BAREKU_USER"\n',
    { mode: 0o755 },
  )
  const fakeSsh = join(dir, 'fake-ssh')
  writeFileSync(
    fakeSsh,
    `#!/bin/sh
# fake-ssh HOST COMMAND: what sshd does with a forced command
for last; do :; done
SSH_ORIGINAL_COMMAND="$last" BAREKU_HOME=${shellQuote(home)} exec ${shellQuote(bin)} git-shell alice
`,
    { mode: 0o755 },
  )
  const env = { GIT_SSH_COMMAND: fakeSsh, GIT_SSH_VARIANT: 'simple' }
  const work = await makeWorkTree(join(dir, 'work'), { files: { 'a.txt': 'a\n' } })

  const pushed = await push(work, 'git@example:shop', 'master', { env })
  t.equal(pushed.code, 0, pushed.stderr)
  t.match(pushed.stderr, 'remote: pushed by alice')
  const listed = await runGit(work, ['ls-remote', 'git@example:/shop.git'], env)
  t.equal(listed.code, 0, listed.stderr)
  t.match(listed.stdout, /refs\/heads\/master/)

  const missing = await runGit(work, ['ls-remote', 'git@example:nope'], env)
  t.not(missing.code, 0)
  t.match(missing.stderr, 'no app "nope"')

  const shell = (original: string | undefined) => {
    try {
      execFileSync(bin, ['git-shell', 'alice'], {
        env: {
          ...process.env,
          BAREKU_HOME: home,
          ...(original === undefined ? {} : { SSH_ORIGINAL_COMMAND: original }),
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      })
      return { code: 0, stdout: '', stderr: '' }
    } catch (err) {
      const e = err as { status: number; stdout: Buffer; stderr: Buffer }
      return { code: e.status, stdout: e.stdout.toString(), stderr: e.stderr.toString() }
    }
  }
  for (const bad of ['ls', "git-upload-archive 'shop'", "git-receive-pack '../shop'"]) {
    const r = shell(bad)
    t.equal(r.code, 1, bad)
    t.equal(r.stdout, '', 'nothing on stdout: it is the git protocol channel')
    t.match(r.stderr, 'only git push and fetch are allowed here')
  }
  const interactive = shell(undefined)
  t.equal(interactive.code, 1)
  t.match(interactive.stderr, 'there is no shell here')
})
