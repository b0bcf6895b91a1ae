/**
 * @module Pushing over ssh, as Dokku and Piku do it: OpenSSH's sshd authenticates the key, and
 * each key's line in $BAREKU_HOME/ssh/authorized_keys forces one command,
 *
 *   command="BAREKU_HOME='HOME' 'BIN' git-shell NAME",no-port-forwarding,no-X11-forwarding,
 *     no-agent-forwarding,no-pty ssh-ed25519 AAAA... comment
 *
 * so whatever the client asked for arrives in SSH_ORIGINAL_COMMAND, and gitShell lets through
 * only `git-receive-pack 'APP'` and `git-upload-pack 'APP'` on an existing app's repo. The key's
 * NAME becomes BAREKU_USER, which the hook records as who deployed.
 */
import { spawn, execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { AppError } from '../lib/errors.js'
import { writeFileAtomic } from '../lib/fs-atomic.js'
import { APP_NAME, BAREKU_BIN, repoPath, shellQuote } from './repo.js'

const run = promisify(execFile)

/** Key names: safe inside the forced command without quoting. */
export const KEY_NAME = /^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$/

const KEY_TYPE =
  /^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)$/

const OPTIONS = 'no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-pty'

/** One authorized key as listKeys shows it. */
export interface KeyInfo {
  name: string
  type: string
  /** OpenSSH's SHA256 fingerprint, as `ssh-keygen -l` prints it. */
  fingerprint: string
  comment: string
}

interface KeyLine extends KeyInfo {
  blob: string
  line: string
}

/** The authorized_keys file sshd must use (AuthorizedKeysFile) for pushes to `home`. */
export function authorizedKeysPath(home: string): string {
  return join(home, 'ssh', 'authorized_keys')
}

function fingerprint(blob: string): string {
  const digest = createHash('sha256').update(Buffer.from(blob, 'base64')).digest('base64')
  return `SHA256:${digest.replace(/=+$/, '')}`
}

// A line we wrote: command="... git-shell NAME",OPTIONS TYPE BLOB [COMMENT]
const LINE = /^command="[^"]* git-shell ([^ "]+)",\S+ (\S+) (\S+)(?: (.*))?$/

async function readKeys(home: string): Promise<KeyLine[]> {
  let text: string
  try {
    text = await readFile(authorizedKeysPath(home), 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw err
  }
  const keys: KeyLine[] = []
  for (const line of text.split('\n')) {
    const m = LINE.exec(line)
    if (m === null) continue
    const [, name = '', type = '', blob = '', comment = ''] = m
    keys.push({ name, type, blob, comment, fingerprint: fingerprint(blob), line })
  }
  return keys
}

async function writeKeys(home: string, lines: string[]): Promise<void> {
  // sshd's StrictModes wants the file and its directory writable by the owner only.
  await mkdir(join(home, 'ssh'), { recursive: true, mode: 0o700 })
  await writeFileAtomic(authorizedKeysPath(home), lines.map((l) => `${l}\n`).join(''), {
    mode: 0o600,
  })
}

function badKey(message: string): AppError {
  return new AppError('E_CONFIG', message)
}

/** Parses and checks one public key line ("TYPE BASE64 [COMMENT]"), with ssh-keygen's verdict. */
async function parsePublicKey(
  text: string,
): Promise<{ type: string; blob: string; comment: string }> {
  const lines = text.split('\n').filter((l) => l.trim() !== '')
  if (lines.length !== 1) {
    throw badKey(
      `expected one public key line ("ssh-ed25519 AAAA... you@host"), got ${lines.length} lines: add keys one at a time`,
    )
  }
  const [type = '', blob = '', ...rest] = lines[0]!.trim().split(/\s+/)
  if (!KEY_TYPE.test(type) || !/^[A-Za-z0-9+/]+={0,2}$/.test(blob)) {
    throw badKey(
      `expected a public key line such as "ssh-ed25519 AAAA... you@host" (the .pub file, not the private key, no options), got one starting with ${JSON.stringify(type.slice(0, 30))}`,
    )
  }
  const dir = await mkdtemp(join(tmpdir(), 'bareku-key-'))
  try {
    const file = join(dir, 'key.pub')
    await writeFile(file, `${type} ${blob}\n`)
    await run('ssh-keygen', ['-l', '-f', file])
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr?.trim()
    throw badKey(
      `ssh-keygen does not accept this public key${stderr ? ` (${stderr})` : ''}: copy the whole line of your ~/.ssh/id_ed25519.pub`,
    )
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
  return { type, blob, comment: rest.join(' ').replace(/[^\x20-\x7e]/g, '') }
}

export interface KeyOptions {
  /** The `bareku` command the forced command runs (default: this checkout's bin/bareku). */
  bin?: string
}

/**
 * Authorizes `publicKeyText` to push as `name`: appends its forced-command line to
 * $home/ssh/authorized_keys. Refuses a bad key, a key already added, and a name already used.
 */
export async function addKey(
  home: string,
  name: string,
  publicKeyText: string,
  opts: KeyOptions = {},
): Promise<KeyInfo> {
  if (!KEY_NAME.test(name)) {
    throw badKey(
      `key name must be 1-64 characters of letters, digits, "_", ".", "@" and "-", got ${JSON.stringify(name)} (e.g. "alice")`,
    )
  }
  const bin = opts.bin ?? BAREKU_BIN
  for (const [what, path] of [
    ['BAREKU_HOME', home],
    ['the bareku command', bin],
  ] as const) {
    if (!path.startsWith('/') || /["\\\n]/.test(path)) {
      throw badKey(`${what} must be an absolute path without quotes or backslashes, got "${path}"`)
    }
  }
  const key = await parsePublicKey(publicKeyText)
  const keys = await readKeys(home)
  const same = keys.find((k) => k.blob === key.blob)
  if (same !== undefined) {
    throw badKey(
      `this key (${fingerprint(key.blob)}) is already added as "${same.name}": remove it first with keys:remove ${same.name}`,
    )
  }
  if (keys.some((k) => k.name === name)) {
    throw badKey(`a key named "${name}" exists already: pick another name or remove it first`)
  }
  const command = `BAREKU_HOME=${shellQuote(home)} ${shellQuote(bin)} git-shell ${name}`
  const line = `command="${command}",${OPTIONS} ${key.type} ${key.blob}${key.comment ? ` ${key.comment}` : ''}`
  await writeKeys(home, [...keys.map((k) => k.line), line])
  return { name, type: key.type, fingerprint: fingerprint(key.blob), comment: key.comment }
}

/** Removes the key named `name`; throws E_CONFIG if there is none. */
export async function removeKey(home: string, name: string): Promise<void> {
  const keys = await readKeys(home)
  if (!keys.some((k) => k.name === name)) {
    const names = keys.map((k) => k.name).join(', ') || 'none'
    throw badKey(`no key named "${name}" (keys: ${names}); see keys`)
  }
  await writeKeys(
    home,
    keys.filter((k) => k.name !== name).map((k) => k.line),
  )
}

/** The authorized keys, in the file's order. */
export async function listKeys(home: string): Promise<KeyInfo[]> {
  return (await readKeys(home)).map(({ name, type, fingerprint, comment }) => ({
    name,
    type,
    fingerprint,
    comment,
  }))
}

/** The git command and app that SSH_ORIGINAL_COMMAND asks for, or undefined if not allowed. */
export function parseGitCommand(
  original: string,
): { command: 'git-receive-pack' | 'git-upload-pack'; app: string } | undefined {
  const m = /^(git-receive-pack|git-upload-pack) +('?)\/?([^'/]+?)(?:\.git)?\/?\2$/.exec(
    original.trim(),
  )
  if (m === null || !APP_NAME.test(m[3]!)) return undefined
  return { command: m[1] as 'git-receive-pack' | 'git-upload-pack', app: m[3]! }
}

function refuse(message: string): never {
  process.stderr.write(`bareku: ${message}\n`)
  process.exit(1)
}

/**
 * `bareku git-shell KEYNAME`: the forced command of every authorized key. Runs
 * git-receive-pack or git-upload-pack on an existing app's repo with stdio inherited (the git
 * protocol flows through), and refuses anything else on stderr with exit 1.
 */
export async function gitShell(args: string[]): Promise<void> {
  const [user = 'unknown'] = args
  const home = process.env.BAREKU_HOME
  const original = process.env.SSH_ORIGINAL_COMMAND
  if (home === undefined || !home.startsWith('/')) {
    refuse('BAREKU_HOME is not set in the forced command: add the key again with keys:add')
  }
  if (original === undefined || original.trim() === '') {
    refuse(
      `hi ${user}, you are authenticated, but there is no shell here: push with "git push bareku master" (remote git@HOST:APP)`,
    )
  }
  const asked = parseGitCommand(original)
  if (asked === undefined) {
    refuse(
      `only git push and fetch are allowed here, got ${JSON.stringify(original.slice(0, 100))} (use "git remote add bareku git@HOST:APP")`,
    )
  }
  const repo = repoPath(home, asked.app)
  if (!existsSync(join(repo, 'HEAD'))) {
    refuse(`no app "${asked.app}": create it first with "bareku apps:create ${asked.app}"`)
  }
  const child = spawn(asked.command, [repo], {
    stdio: 'inherit',
    env: { ...process.env, BAREKU_USER: KEY_NAME.test(user) ? user : 'unknown' },
  })
  const code = await new Promise<number>((resolve) => {
    child.on('error', (err) => {
      process.stderr.write(
        `bareku: cannot run ${asked.command}: ${err.message} (is git installed?)\n`,
      )
      resolve(1)
    })
    child.on('exit', (c, signal) => resolve(c ?? (signal ? 1 : 0)))
  })
  process.exitCode = code
}
