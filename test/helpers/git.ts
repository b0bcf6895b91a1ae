/**
 * @module Real git in tests: a work tree made from files (or a fixture app), committed with a
 * local user.name/email, pushed with the real git client; and the `bareku` command the hooks and
 * forced ssh commands run.
 */
import { spawn } from 'node:child_process'
import {
  chmodSync,
  cpSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { REPO } from './process.js'

/** The result of a git command that may fail: exit code and both streams. */
export interface GitResult {
  code: number
  stdout: string
  stderr: string
}

/** Runs git in `cwd`; never throws on a non-zero exit (see `code`). */
export function runGit(
  cwd: string,
  args: string[],
  env: NodeJS.ProcessEnv = {},
  timeoutMs = 180_000,
): Promise<GitResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('git', args, {
      cwd,
      env: { ...process.env, GIT_TERMINAL_PROMPT: '0', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('error', reject)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code: code ?? -1, stdout, stderr })
    })
  })
}

async function must(cwd: string, args: string[]): Promise<string> {
  const r = await runGit(cwd, args)
  if (r.code !== 0) throw new Error(`git ${args.join(' ')} failed (${r.code}): ${r.stderr}`)
  return r.stdout
}

/** Files to write, relative path -> content (a string, or {content, mode}). */
export type Files = Record<string, string | { content: string; mode: number }>

/** Writes `files` under `dir`, making directories as needed. */
export function writeFiles(dir: string, files: Files): void {
  for (const [path, spec] of Object.entries(files)) {
    const file = join(dir, path)
    mkdirSync(dirname(file), { recursive: true })
    const { content, mode } = typeof spec === 'string' ? { content: spec, mode: 0o644 } : spec
    writeFileSync(file, content)
    chmodSync(file, mode)
  }
}

/** A work tree at `dir` on branch master: a copy of `from` (a dir) and/or `files`, committed. */
export async function makeWorkTree(
  dir: string,
  opts: { from?: string; files?: Files; message?: string } = {},
): Promise<string> {
  mkdirSync(dir, { recursive: true })
  if (opts.from !== undefined) cpSync(opts.from, dir, { recursive: true })
  writeFiles(dir, opts.files ?? {})
  await must(dir, ['init', '--quiet', '--initial-branch=master'])
  await must(dir, ['config', 'user.name', 'Bareku Test'])
  await must(dir, ['config', 'user.email', 'test@bareku.invalid'])
  await must(dir, ['config', 'commit.gpgsign', 'false'])
  await commitAll(dir, opts.message ?? 'first')
  return dir
}

/** Writes `files` (if any) and commits everything; returns the new commit's sha. */
export async function commitAll(dir: string, message: string, files: Files = {}): Promise<string> {
  writeFiles(dir, files)
  await must(dir, ['add', '--all'])
  await must(dir, ['commit', '--quiet', '--allow-empty', '-m', message])
  return (await must(dir, ['rev-parse', 'HEAD'])).trim()
}

/** `git push REMOTE REFSPEC` from `dir` (extra args before them, e.g. --force). */
export function push(
  dir: string,
  remote: string,
  refspec = 'master',
  opts: { env?: NodeJS.ProcessEnv; args?: string[]; timeoutMs?: number } = {},
): Promise<GitResult> {
  return runGit(dir, ['push', ...(opts.args ?? []), remote, refspec], opts.env, opts.timeoutMs)
}

/** The pusher's view of the hook's output: the `remote: ` lines, without the prefix. */
export function remoteLines(r: GitResult): string[] {
  return r.stderr
    .split('\n')
    .filter((l) => l.startsWith('remote: '))
    .map((l) => l.slice('remote: '.length).replace(/\s+$/, ''))
}

/** The `bareku` command that hooks and forced ssh commands run. */
export const BAREKU_BIN = join(REPO, 'bin/bareku')

/** A tiny web app for the Procfile buildpack: python3's stdlib only, answering `text` on $PORT. */
export function webApp(text: string): Files {
  return {
    Procfile: 'web: /usr/bin/python3 server\n',
    server: `import http.server, os

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ${JSON.stringify(text)}.encode()
        self.send_response(200)
        self.send_header('Content-Type', 'text/plain')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()
`,
  }
}

/**
 * Kills (SIGKILL) every process whose environment holds `BAREKU_E2E=<id>`: the app instances of
 * one test, given that id as a config var. The worker leaves instances running when it stops
 * (by design), so a test's teardown must end them itself.
 */
export function killInstances(id: string): number {
  let killed = 0
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    let env: string
    try {
      env = readFileSync(`/proc/${entry}/environ`, 'utf8')
    } catch {
      continue
    }
    if (!env.split('\0').includes(`BAREKU_E2E=${id}`)) continue
    try {
      process.kill(Number(entry), 'SIGKILL')
      killed++
    } catch {
      // gone already
    }
  }
  return killed
}

/**
 * A fresh directory in the system temp dir, readable by others (apps run as nobody from slugs
 * unpacked under it). Unlike t.testdir(), its name is unique per run, so two runs of one test
 * file (say, the whole suite and a single file) never share or wipe each other's files. The
 * caller removes it with `removeDir` in a teardown registered after its processes' teardowns.
 */
export function uniqueDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  chmodSync(dir, 0o755)
  return dir
}

/** Removes `dir` and everything in it. */
export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true, maxRetries: 3 })
}
