/**
 * Each shipped buildpack, the Heroku way: bin/detect, bin/compile and bin/release run on a copy
 * of a fixture app (test/fixtures/apps/), then the built app's process is started as the worker
 * starts it (.profile.d sourced, then the command, with PORT and HOME set) and must answer over
 * HTTP; the handler app answers through the real frontend.
 *
 *   fixture app ─copy─> BUILD_DIR ─detect/compile/release─> built app ─/bin/sh -c LAUNCH─> HTTP
 */
import { execFile } from 'node:child_process'
import {
  chmodSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { createServer } from 'node:net'
import { promisify } from 'node:util'
import { homedir, tmpdir } from 'node:os'
import { isAbsolute, join, resolve } from 'node:path'
import t, { type Test } from 'tap'
import { parseReleaseYaml, SHIPPED_DIR } from '../../hooks/build.js'
import { parseProcfile } from '../../lib/config/procfile.js'
import { LAUNCH_SCRIPT } from '../../lib/dyno.js'
import { startFrontendProcess } from '../helpers/frontend.js'
import { REPO, startProcess } from '../helpers/process.js'

const APPS = join(REPO, 'test/fixtures/apps')
// the worker's default PATH for app processes (worker/spawn.ts); builds get the same one
const SYSTEM_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

interface Build {
  app: string
  cache: string
  env: string
  pack: string
}

interface Ran {
  code: number | null
  stdout: string
  stderr: string
}

/** File contents by name; a nested object is a directory. */
interface Files {
  [name: string]: string | Files
}

/** A test dir holding a copy of the app (or the given files), a cache, ENV_DIR and the pack. */
function setup(
  t: Test,
  pack: string,
  app: string | Files,
  config: Record<string, string> = {},
): Build {
  const root = t.testdir({ cache: {}, env: config, ...(typeof app === 'string' ? {} : { app }) })
  if (typeof app === 'string') cpSync(join(APPS, app), join(root, 'app'), { recursive: true })
  // a copy, as the build makes: compile writes its `export` file into the buildpack's own dir
  cpSync(join(SHIPPED_DIR, pack), join(root, 'packs', pack), { recursive: true })
  cpSync(join(SHIPPED_DIR, 'lib'), join(root, 'packs/lib'), { recursive: true })
  return {
    app: join(root, 'app'),
    cache: join(root, 'cache'),
    env: join(root, 'env'),
    pack: join(root, 'packs', pack),
  }
}

function run(file: string, args: string[]): Promise<Ran> {
  return new Promise((resolve) => {
    execFile(
      file,
      args,
      { env: { PATH: SYSTEM_PATH, HOME: homedir(), LANG: 'C.UTF-8', STACK: 'bareku' } },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : null) : 0
        resolve({ code, stdout, stderr })
      },
    )
  })
}

const detect = (b: Build): Promise<Ran> => run(join(b.pack, 'bin/detect'), [b.app])
const compile = (b: Build): Promise<Ran> =>
  run(join(b.pack, 'bin/compile'), [b.app, b.cache, b.env])
async function release(t: Test, b: Build): Promise<ReturnType<typeof parseReleaseYaml>> {
  const r = await run(join(b.pack, 'bin/release'), [b.app, b.cache])
  t.equal(r.code, 0, 'release exits 0')
  return parseReleaseYaml(r.stdout)
}

async function freePort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const address = server.address()
  await new Promise((resolve) => server.close(resolve))
  if (address === null || typeof address === 'string') throw new Error('no port')
  return address.port
}

/**
 * Starts `command` in the built app as the worker does: in its own session and process group
 * (setsid), .profile.d sourced, then exec. Teardown stops the whole group, as the worker does:
 * `npm start` leaves its node child behind when only npm is signalled.
 */
function launch(
  t: Test,
  b: Build,
  command: string,
  env: Record<string, string | undefined> = {},
): ReturnType<typeof startProcess> {
  const proc = startProcess('setsid', ['/bin/sh', '-c', LAUNCH_SCRIPT, 'bareku-run', command], {
    cwd: b.app,
    // the test runner's own variables must not leak into the app (undefined drops them)
    env: { NODE_ENV: undefined, VIRTUAL_ENV: undefined, PATH: SYSTEM_PATH, HOME: b.app, ...env },
  })
  const signalGroup = (signal: NodeJS.Signals): void => {
    try {
      if (proc.child.pid !== undefined) process.kill(-proc.child.pid, signal)
    } catch {
      // the group is gone already
    }
  }
  t.teardown(async () => {
    signalGroup('SIGTERM')
    await proc.stop()
    signalGroup('SIGKILL')
  })
  return proc
}

async function startWeb(t: Test, b: Build, command: string, ready: RegExp): Promise<string> {
  const port = await freePort()
  const proc = launch(t, b, command, { PORT: String(port) })
  await proc.waitFor(ready, 20_000)
  return `http://127.0.0.1:${port}`
}

t.test('nodejs: a zero-dependency app with a lock file and a build script', async (t) => {
  const b = setup(t, 'nodejs', 'node-web')
  const d = await detect(b)
  t.equal(d.code, 0)
  t.equal(d.stdout.trim(), 'Node.js')

  const c = await compile(b)
  t.equal(c.code, 0, c.stderr)
  t.match(c.stdout, /^-----> Using the build host's Node.js v\d+/m)
  t.match(
    c.stdout,
    /^-----> No dependencies to install \(package\.json and package-lock\.json list none\)$/m,
    'npm is not started for an app that depends on nothing',
  )
  t.match(c.stdout, /^-----> Running the "build" script$/m)
  t.notMatch(c.stdout, /Pruning/, 'no node_modules to prune')
  t.match(c.stdout, /^ {7}> node build\.js$/m, 'tool output is indented')
  t.equal(readFileSync(join(b.app, 'build-output.txt'), 'utf8'), 'built', 'the build script ran')
  t.ok(existsSync(join(b.cache, 'npm')), "npm's cache is in CACHE_DIR")
  t.match(readFileSync(join(b.app, '.profile.d/nodejs.sh'), 'utf8'), '$HOME/node_modules/.bin')
  t.match(readFileSync(join(b.pack, 'export'), 'utf8'), `${b.app}/node_modules/.bin`)

  const r = await release(t, b)
  t.same(r.defaultProcessTypes, { web: 'node server.js' }, 'the start script, without npm')

  const url = await startWeb(t, b, r.defaultProcessTypes.web!, /^listening$/)
  const res = await fetch(url)
  t.equal(res.status, 200)
  t.equal(await res.text(), 'node fixture ok production built\n')
})

t.test('nodejs: no lock file means npm install, production only', async (t) => {
  const b = setup(t, 'nodejs', {
    'package.json': JSON.stringify({
      name: 'x',
      version: '1.0.0',
      scripts: { start: 'node .' },
      dependencies: { greet: 'file:greet' },
    }),
    greet: { 'package.json': JSON.stringify({ name: 'greet', version: '1.0.0' }) },
  })
  const c = await compile(b)
  t.equal(c.code, 0, c.stderr)
  t.match(
    c.stdout,
    /^-----> Installing dependencies: npm install --omit=dev \(no package-lock\.json\)$/m,
  )
  t.notMatch(c.stdout, /Pruning/)
})

t.test('nodejs: node_modules is reused while the lock, node and npm are unchanged', async (t) => {
  const files = {
    'package.json': JSON.stringify({
      name: 'x',
      version: '1.0.0',
      dependencies: { greet: 'file:greet' },
      scripts: { start: 'node -p "require(\'greet\')"' },
    }),
    greet: {
      'package.json': JSON.stringify({ name: 'greet', version: '1.0.0' }),
      'index.js': "module.exports = 'hello from greet'\n",
    },
  }
  const first = setup(t, 'nodejs', files)
  // The lock is npm's own, made offline (a file: dependency needs no registry).
  await promisify(execFile)(
    'npm',
    ['install', '--package-lock-only', '--offline', '--no-audit', '--no-fund'],
    { cwd: first.app },
  )
  const lock = readFileSync(join(first.app, 'package-lock.json'), 'utf8')
  const c1 = await compile(first)
  t.equal(c1.code, 0, c1.stderr)
  t.match(c1.stdout, /^-----> Installing dependencies: npm ci --omit=dev$/m)

  // The app's cache outlives its builds; t.testdir is one dir per test, so keep it elsewhere.
  const cache = mkdtempSync(join(tmpdir(), 'bk-npm-cache-'))
  t.teardown(() => rmSync(cache, { recursive: true, force: true }))
  cpSync(first.cache, cache, { recursive: true, verbatimSymlinks: true })
  // A second build of the same app with the same cache: a fresh checkout, as the hook makes.
  const second = { ...setup(t, 'nodejs', { ...files, 'package-lock.json': lock }), cache }
  const c2 = await compile(second)
  t.equal(c2.code, 0, c2.stderr)
  t.match(
    c2.stdout,
    /^-----> Reusing node_modules from the last build \(package-lock\.json, node and npm unchanged\)$/m,
  )
  t.notMatch(c2.stdout, /npm ci/)
  const proc = launch(t, second, 'npm start')
  await proc.waitFor(/^hello from greet$/, 20_000)

  // A changed lock installs again.
  const changed = JSON.parse(lock) as { version: string }
  changed.version = '1.0.1'
  const third = {
    ...setup(t, 'nodejs', { ...files, 'package-lock.json': JSON.stringify(changed) }),
    cache,
  }
  const c3 = await compile(third)
  t.equal(c3.code, 0, c3.stderr)
  t.match(c3.stdout, /^-----> Installing dependencies: npm ci --omit=dev$/m)
})

t.test('nodejs: a broken package.json fails with the parse error', async (t) => {
  const b = setup(t, 'nodejs', { 'package.json': '{ "name": ' })
  const c = await compile(b)
  t.equal(c.code, 1)
  t.match(c.stderr, /^ ! {5}package\.json is not valid JSON/m)
  t.match(c.stderr, /Fix that file and push again/)
})

t.test('python: a stdlib app in a venv that sees Debian packages', async (t) => {
  const b = setup(t, 'python', 'python-web')
  const d = await detect(b)
  t.equal(d.stdout.trim(), 'Python')

  const c = await compile(b)
  t.equal(c.code, 0, c.stderr)
  t.equal(c.stderr, '', 'runtime.txt matches the machine: no warning')
  t.match(c.stdout, /^-----> Using the build host's Python 3\.\d+\.\d+ \(\/usr\/bin\/python3\)$/m)
  t.match(c.stdout, /^-----> Creating a virtualenv/m)
  t.match(c.stdout, /requirements\.txt lists no packages: nothing to install/)
  t.ok(lstatSync(join(b.app, '.venv/bin/python')).isFile(), 'the interpreter is a copy')
  // a slug must hold no link leading out of it
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, e.name)
      if (e.isSymbolicLink()) {
        const target = readlinkSync(path)
        t.notOk(isAbsolute(target), `${path} -> ${target} is relative`)
        t.ok(resolve(dir, target).startsWith(b.app), `${path} stays in the app`)
      } else if (e.isDirectory()) walk(path)
    }
  }
  walk(join(b.app, '.venv'))
  t.match(readFileSync(join(b.app, '.profile.d/python.sh'), 'utf8'), '$HOME/.venv/bin')
  t.notMatch(readFileSync(join(b.app, '.venv/bin/activate'), 'utf8'), b.app, 'no build path')

  const r = await release(t, b)
  t.same(r.defaultProcessTypes, { web: 'python3 app.py' })

  const url = await startWeb(t, b, r.defaultProcessTypes.web!, /^listening$/)
  const res = await fetch(url)
  t.match(await res.text(), /^python fixture ok venv=\.venv zmq=\d+/)
})

t.test('python: a requirement Debian already provides needs no index', async (t) => {
  const b = setup(t, 'python', { 'requirements.txt': '# zmq comes from python3-zmq\npyzmq\n' })
  const c = await compile(b)
  t.equal(c.code, 0, c.stderr)
  t.match(c.stdout, /^-----> Installing requirements with pip$/m)
  t.match(c.stdout, /Requirement already satisfied: pyzmq/)
  t.ok(existsSync(join(b.cache, 'pip')), "pip's cache is in CACHE_DIR")
})

t.test('python: a requirement nobody provides fails and explains the missing index', async (t) => {
  const b = setup(t, 'python', {
    'requirements.txt': 'bareku-no-such-package-3f9c==0.0.1\n',
    'runtime.txt': 'python-3.9.1\n',
  })
  const c = await compile(b)
  t.equal(c.code, 1)
  t.match(
    c.stderr,
    /runtime\.txt asks for python-3\.9\.1, but only Python 3\.\d+\.\d+ is installed/,
  )
  t.match(c.stderr, /^ ! {5}pip could not install requirements\.txt/m)
  t.match(c.stderr, /no Python package index/)
  t.match(c.stderr, /apt-get install python3-/)
})

t.test('static: public/ is the document root, with no process to run', async (t) => {
  const b = setup(t, 'static', 'static-site')
  t.equal((await detect(b)).stdout.trim(), 'Static')

  const c = await compile(b)
  t.equal(c.code, 0, c.stderr)
  t.match(c.stdout, /^-----> Serving static files from public\/ \(2 files\)$/m)
  t.match(c.stdout, /Served by the frontend itself/)
  t.notOk(existsSync(join(b.app, '.bareku')), 'nothing is added to the slug')

  const r = await release(t, b)
  t.same(r.defaultProcessTypes, {}, 'no process')
  t.equal(r.static, 'public', 'the document root, for the frontend Dir route')

  const top = setup(t, 'static', { 'index.html': '<h1>top</h1>\n' })
  const c2 = await compile(top)
  t.equal(c2.code, 0, c2.stderr)
  t.match(c2.stdout, /Put the site in public\/ to keep other files in the repository private/)
  t.equal((await release(t, top)).static, '.')

  const bare = setup(t, 'static', { public: { 'about.html': '<h1>about</h1>\n' } })
  const c3 = await compile(bare)
  t.equal(c3.code, 0, c3.stderr)
  t.match(c3.stderr, /public\/ has no index\.html: \/ will answer 404/)
})

t.test('procfile: a shell app that brings its own server', async (t) => {
  const b = setup(t, 'procfile', 'procfile-shell')
  t.equal((await detect(b)).stdout.trim(), 'Procfile')

  const c = await compile(b)
  t.equal(c.code, 0, c.stderr)
  t.match(c.stdout, /^ {7}web: bin\/web$/m)
  t.ok(existsSync(join(b.app, '.profile.d/procfile.sh')))
  const r = await release(t, b)
  t.same(r.defaultProcessTypes, {}, 'the Procfile has the types')

  const types = parseProcfile(readFileSync(join(b.app, 'Procfile'), 'utf8'))
  const url = await startWeb(t, b, types.web!, /Serving HTTP on/)
  t.equal(await (await fetch(url)).text(), 'shell fixture ok\n')
})

t.test('procfile: a program that is missing or not executable fails the build', async (t) => {
  const b = setup(t, 'procfile', 'procfile-shell')
  chmodSync(join(b.app, 'bin/web'), 0o644)
  const c = await compile(b)
  t.equal(c.code, 1)
  t.match(c.stderr, /"web" runs bin\/web, which is not executable/)
  t.match(c.stderr, /git update-index --chmod=\+x bin\/web/)

  writeFileSync(join(b.app, 'Procfile'), 'web: ./bin/missing --port $PORT\n')
  const m = await compile(b)
  t.equal(m.code, 1)
  t.match(m.stderr, /"web" runs \.\/bin\/missing, which is not in the app/)
})

t.test('handler: a Python Mongrel2 handler answers through the frontend', async (t) => {
  const b = setup(t, 'handler', 'python-handler')
  t.equal((await detect(b)).stdout.trim(), 'Mongrel2 handler')

  const c = await compile(b)
  t.equal(c.code, 0, c.stderr)
  t.equal(c.stderr, '', 'python3-zmq is installed: no warning')
  t.match(c.stdout, /^ {7}handler \(Mongrel2 handler\): python3 handler\.py$/m)
  const r = await release(t, b)
  t.same(r.defaultProcessTypes, {})

  const types = parseProcfile(readFileSync(join(b.app, 'Procfile'), 'utf8'))
  const fe = await startFrontendProcess(
    join(b.app, '..'),
    `app = Handler(send_spec='tcp://127.0.0.1:*', send_ident='fixture-app', recv_spec='tcp://127.0.0.1:*', recv_ident='')
main = Server(uuid='0b9a3c55-5b8e-4a51-9a57-2f0f4a1d7c31', name='main', chroot='./',
    default_host='localhost', bind_addr='127.0.0.1', port=6767,
    hosts=[Host(name='localhost', routes={'/': app})])
servers = [main]
`,
  )
  t.teardown(() => fe.proc.stop())
  const handler = launch(t, b, types.handler!, {
    ...fe.handlerEnv('fixture-app'),
    BAREKU_HANDLER_SENDER_ID: 'fixture-handler-1',
  })
  await handler.waitFor(/^ready$/, 20_000)
  const res = await fetch(`${fe.url}/hello`)
  t.equal(res.status, 200)
  t.equal(await res.text(), 'python handler ok /hello')
})
