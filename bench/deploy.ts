/**
 * bench/deploy: time from `git push` to the new version answering through the frontend, for a
 * small Node web app, a small Python Mongrel2 handler app and a static site (served by the
 * frontend's Dir route from the slug), first deploy and redeploys, split
 * by the hook's own output lines into build, pack, distribute + start, and the wait until the
 * frontend serves the new version. It runs a real `bareku up` (ports picked by the kernel, state
 * in a temp dir) and real git pushes by path, on this machine, then stops everything.
 *
 *   npm run bench:deploy            # BENCH_REDEPLOYS=3 by default
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync, mkdirSync, chmodSync } from 'node:fs'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const BIN = fileURLToPath(new URL('../bin/bareku', import.meta.url))
const REDEPLOYS = Number(process.env.BENCH_REDEPLOYS ?? 3)

interface App {
  name: string
  kind: string
  files(version: number): Record<string, string>
}

const APPS: App[] = [
  {
    name: 'nodeweb',
    kind: 'Node web ($PORT)',
    files: (v) => ({
      'package.json': JSON.stringify({
        name: 'nodeweb',
        version: '1.0.0',
        scripts: { start: 'node server.js' },
      }),
      'package-lock.json': JSON.stringify({
        name: 'nodeweb',
        version: '1.0.0',
        lockfileVersion: 3,
        requires: true,
        packages: { '': { name: 'nodeweb', version: '1.0.0' } },
      }),
      'server.js': `require('node:http').createServer((q, s) => s.end('v${v}\\n')).listen(Number(process.env.PORT), '127.0.0.1')\n`,
    }),
  },
  {
    name: 'pyhandler',
    kind: 'Python handler (Mongrel2)',
    files: (v) => ({
      Procfile: 'handler: /usr/bin/python3 handler.py\n',
      'handler.py': [
        'import os, zmq',
        'ctx = zmq.Context()',
        'pull = ctx.socket(zmq.PULL); pull.connect(os.environ["BAREKU_HANDLER_SEND_SPEC"])',
        'pub = ctx.socket(zmq.XPUB); pub.connect(os.environ["BAREKU_HANDLER_RECV_SPEC"]); pub.recv()',
        'sender = os.environ["BAREKU_HANDLER_SENDER_ID"].encode()',
        'while True:',
        '    uuid, conn, path, rest = pull.recv().split(b" ", 3)',
        '    if path == b"@*": continue',
        `    body = b"v${v}\\n"`,
        '    pub.send(sender + b" %d:%s, " % (len(conn), conn) + b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)',
        '',
      ].join('\n'),
    }),
  },
]

APPS.push({
  name: 'site',
  kind: 'static site (Dir route)',
  files: (v) => ({ 'index.html': `v${v}\n` }),
})

function get(port: number, host: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path: '/', headers: { host } }, (res) => {
      let body = ''
      res.setEncoding('utf8').on('data', (c: string) => (body += c))
      res.on('end', () => resolve(res.statusCode === 200 ? body : undefined))
    })
    req.on('error', () => resolve(undefined))
    req.setTimeout(2000, () => req.destroy())
    req.end()
  })
}

function git(cwd: string, ...args: string[]): void {
  execFileSync('git', args, { cwd, stdio: 'ignore' })
}

/** Pushes, timestamping the hook's lines; resolves with the phase marks (ms from the start). */
function timedPush(
  cwd: string,
): Promise<{ code: number; marks: Record<string, number>; out: string }> {
  const start = performance.now()
  const marks: Record<string, number> = {}
  return new Promise((resolve) => {
    const child = spawn('git', ['push', '-q', 'bareku', 'master'], { cwd })
    let out = ''
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      out += chunk
      const at = performance.now() - start
      if (marks.pack === undefined && chunk.includes('Compressing slug')) marks.pack = at
      if (marks.deploy === undefined && /Deploying v\d+/.test(chunk)) marks.deploy = at
      if (marks.ready === undefined && / - OK/.test(chunk)) marks.ready = at
    })
    child.on('close', (code) => {
      marks.pushed = performance.now() - start
      resolve({ code: code ?? 1, marks, out })
    })
  })
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'bareku-bench-deploy-'))
  chmodSync(dir, 0o755)
  const home = join(dir, 'home')
  const env = {
    ...process.env,
    BAREKU_HOME: home,
    LOG_LEVEL: 'warn',
    BAREKU_MASTER_CONTROL: 'tcp://127.0.0.1:0',
    BAREKU_MASTER_PUBLISH: 'tcp://127.0.0.1:0',
    BAREKU_MASTER_STATS: 'tcp://127.0.0.1:0',
    BAREKU_MASTER_SLUGS: 'tcp://127.0.0.1:0',
    BAREKU_MASTER_LOGS: 'tcp://127.0.0.1:0',
  }
  const up: ChildProcess = spawn(BIN, ['up', '--port', '0'], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const stop = (): void => void up.kill('SIGINT')
  process.on('exit', stop)
  let banner = ''
  await new Promise<void>((resolve, reject) => {
    up.stdout!.setEncoding('utf8').on('data', (c: string) => {
      banner += c
      if (banner.includes('Bareku is up')) resolve()
    })
    up.on('exit', () => reject(new Error(`bareku up exited:\n${banner}`)))
  })
  const master = /master control API at (tcp:\S+)/.exec(banner)![1]!
  const port = Number(/APP\.localhost:(\d+)/.exec(banner)![1])
  const cli = { ...env, BAREKU_MASTER: master }
  const rows: string[][] = []
  try {
    for (const app of APPS) {
      execFileSync(BIN, ['apps:create', app.name], { env: cli, stdio: 'ignore' })
      const work = join(dir, app.name)
      mkdirSync(work)
      git(work, 'init', '-q', '-b', 'master')
      git(work, 'config', 'user.email', 'bench@bareku.invalid')
      git(work, 'config', 'user.name', 'bench')
      git(work, 'remote', 'add', 'bareku', join(home, 'repos', `${app.name}.git`))
      for (let v = 1; v <= 1 + REDEPLOYS; v++) {
        for (const [file, text] of Object.entries(app.files(v)))
          writeFileSync(join(work, file), text)
        git(work, 'add', '-A')
        git(work, 'commit', '-qm', `v${v}`)
        const start = performance.now()
        const r = await timedPush(work)
        if (r.code !== 0) throw new Error(`push of ${app.name} v${v} failed:\n${r.out}`)
        let body: string | undefined
        do body = await get(port, `${app.name}.localhost`)
        while (body !== `v${v}\n` && performance.now() - start < 60_000)
        const served = performance.now() - start
        // A static site has no process to report ready: its push ends when the frontend serves it.
        const m: Record<string, number | undefined> = {
          ...r.marks,
          ready: r.marks.ready ?? r.marks.pushed,
        }
        const ms = (x: number | undefined) => (x === undefined ? '?' : `${Math.round(x)}`)
        rows.push([
          app.kind,
          v === 1 ? 'first deploy' : `redeploy ${v - 1}`,
          ms(m.pack),
          ms(m.deploy !== undefined && m.pack !== undefined ? m.deploy - m.pack : undefined),
          ms(m.ready !== undefined && m.deploy !== undefined ? m.ready - m.deploy : undefined),
          ms(served - (m.ready ?? served)),
          ms(served),
        ])
      }
    }
  } finally {
    stop()
    await new Promise((r) => up.once('exit', r))
    rmSync(dir, { recursive: true, force: true })
  }
  const head = [
    'app',
    'push',
    'build ms',
    'pack+release ms',
    'distribute+start ms',
    'to served ms',
    'total ms',
  ]
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
  const line = (r: string[]) =>
    `| ${r.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`
  console.log(
    `\nbench/deploy: git push by path to the new version answering via the frontend (${process.version})\n`,
  )
  console.log(line(head))
  console.log(
    `|${widths.map((w, i) => (i < 2 ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`,
  )
  for (const r of rows) console.log(line(r))
  console.log(
    '\ntargets: redeploy served within 2000 ms of the push start, first deploy within 3000 ms',
  )
}

await main()
