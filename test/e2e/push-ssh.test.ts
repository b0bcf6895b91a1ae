/**
 * `git push` over ssh, as Dokku and Piku do it: a real OpenSSH sshd on a free loopback port (its
 * own host key and config in the test dir, AuthorizedKeysFile = the home's ssh/authorized_keys),
 * a client key added with addKey, and the real git client with GIT_SSH_COMMAND. Behind it the
 * one-node cluster of push.test.ts deploys the app. Needs root (sshd runs the forced command as
 * the logged-in user, here root): skipped otherwise.
 *
 *   git push root@127.0.0.1:shop ──ssh──> sshd ──forced command──> bareku git-shell tester
 *     └─> git-receive-pack repos/shop.git ──pre-receive──> build, release, deploy
 */
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import t from 'tap'
import { createRepo } from '../../hooks/repo.js'
import { addKey, authorizedKeysPath } from '../../hooks/ssh.js'
import { startMaster, startNode, until } from '../helpers/cluster.js'
import {
  BAREKU_BIN,
  killInstances,
  removeDir,
  uniqueDir,
  makeWorkTree,
  push,
  remoteLines,
  runGit,
  webApp,
  type GitResult,
} from '../helpers/git.js'
import { startProcess } from '../helpers/process.js'

// Below 32768, where Linux picks the local ports of outgoing connections (one could hold ours).
const PORT_BASE = 20_000 + Math.floor(Math.random() * 120) * 100

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

function keygen(file: string): void {
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'test', '-f', file])
}

function show(r: GitResult): string {
  return `exit ${r.code}\n${r.stderr}`
}

const isRoot = process.getuid?.() === 0

t.test(
  'git push over a real sshd with a forced command',
  { skip: !isRoot && 'needs root' },
  async (t) => {
    const dir = uniqueDir('bareku-push-ssh-')
    // tap runs teardowns last-registered first: the daemons stop, then any instance the worker
    // left (they carry this id as a config var) is killed, then the dir goes.
    t.teardown(() => removeDir(dir))
    const id = randomBytes(6).toString('hex')
    t.teardown(() => killInstances(id))
    const home = join(dir, 'home')
    const master = await startMaster(t, home, {
      BAREKU_WEB_PORTS: `${PORT_BASE}-${PORT_BASE + 99}`,
    })
    await startNode(t, home, master.control, { BAREKU_WORKER_STOP_ON_EXIT: '1' })
    const bin = BAREKU_BIN
    await master.call('apps:create', { name: 'shop' })
    await master.call('config:set', { app: 'shop', vars: { BAREKU_E2E: id } })
    await createRepo(home, 'shop', { bin, master: master.control })

    // The client's key, authorized with a forced command; a second key that is not.
    const key = join(dir, 'id_tester')
    const stranger = join(dir, 'id_stranger')
    keygen(key)
    keygen(stranger)
    await addKey(home, 'tester', readFileSync(`${key}.pub`, 'utf8'), { bin })

    // sshd: its own host key and config; privilege separation needs /run/sshd.
    mkdirSync('/run/sshd', { recursive: true, mode: 0o755 })
    const hostKey = join(dir, 'ssh_host_ed25519_key')
    keygen(hostKey)
    const port = await freePort()
    const config = join(dir, 'sshd_config')
    writeFileSync(
      config,
      [
        `Port ${port}`,
        'ListenAddress 127.0.0.1',
        `HostKey ${hostKey}`,
        `PidFile ${join(dir, 'sshd.pid')}`,
        `AuthorizedKeysFile ${authorizedKeysPath(home)}`,
        'StrictModes no',
        'PubkeyAuthentication yes',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'PermitRootLogin forced-commands-only',
        'UsePAM no',
        'LogLevel VERBOSE',
        '',
      ].join('\n'),
    )
    const sshd = startProcess('/usr/sbin/sshd', ['-D', '-e', '-f', config])
    t.teardown(() => sshd.stop())
    await sshd.waitFor(new RegExp(`Server listening on 127\\.0\\.0\\.1 port ${port}`))

    const ssh = (identity: string) =>
      `ssh -i ${identity} -p ${port} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR`
    const env = { GIT_SSH_COMMAND: ssh(key) }
    const remote = 'root@127.0.0.1:shop'
    const work = await makeWorkTree(join(dir, 'work'), { files: webApp('over ssh\n') })

    t.test('push deploys the app', async (t) => {
      const r = await push(work, remote, 'master', { env })
      t.equal(r.code, 0, show(r))
      const lines = remoteLines(r)
      t.ok(lines.includes('-----> Deploying v1'), show(r))
      t.ok(lines.includes('       127.0.0.1 - OK'), show(r))
      t.ok(lines.includes('       Application version: 1'), show(r))
      const [v1] = (await master.call('releases', { app: 'shop' })) as { by: string }[]
      t.equal(v1?.by, 'tester', 'the key name is who deployed')
      const web = await until('shop.web.1 ready', async () => {
        const ps = (await master.call('ps', { app: 'shop' })) as {
          state: string
          port: number | null
        }[]
        return ps.find((i) => i.state === 'ready' && i.port !== null)
      })
      t.equal(await (await fetch(`http://127.0.0.1:${web.port}/`)).text(), 'over ssh\n')
    })

    t.test('fetch and clone work through the same key', async (t) => {
      const ls = await runGit(dir, ['ls-remote', 'root@127.0.0.1:/shop.git'], env)
      t.equal(ls.code, 0, show(ls))
      t.match(ls.stdout, 'refs/heads/master')
      const clone = await runGit(dir, ['clone', '--quiet', remote, join(dir, 'clone')], env)
      t.equal(clone.code, 0, show(clone))
      t.equal(readFileSync(join(dir, 'clone', 'Procfile'), 'utf8'), webApp('').Procfile)
    })

    t.test('anything but git is refused; unknown keys and apps too', async (t) => {
      const run = (identity: string, command: string) =>
        new Promise<GitResult>((resolve) => {
          const child = startProcess('/bin/sh', [
            '-c',
            `${ssh(identity)} root@127.0.0.1 ${command}`,
          ])
          void child.exited.then((code) =>
            resolve({ code: Number(code), stdout: '', stderr: child.lines.join('\n') }),
          )
        })
      const ls = await run(key, 'ls')
      t.equal(ls.code, 1, show(ls))
      t.match(ls.stderr, 'only git push and fetch are allowed here, got "ls"')
      const shell = await run(key, '')
      t.equal(shell.code, 1, show(shell))
      t.match(shell.stderr, 'there is no shell here')
      const other = await runGit(dir, ['ls-remote', 'root@127.0.0.1:nope'], env)
      t.not(other.code, 0)
      t.match(other.stderr, 'no app "nope"')
      const denied = await push(work, remote, 'master', {
        env: { GIT_SSH_COMMAND: ssh(stranger) },
      })
      t.not(denied.code, 0)
      t.match(denied.stderr, /Permission denied/)
    })
  },
)
