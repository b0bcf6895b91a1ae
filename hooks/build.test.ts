/**
 * runBuildpacks end to end, with real buildpack processes: detection order, .buildpacks, the
 * explicit list, BUILDPACK_URL, a third-party buildpack run unchanged, `export` between packs,
 * release YAML, Procfile precedence, .slugignore, and each failure as an E_BUILD error.
 *
 *   app dir ─prune .slugignore─> detect ─> compile (ENV_DIR, CACHE_DIR) ─> source export ─>
 *     release YAML ─> ... next pack ... ─> { buildpacks, processTypes, configVars, addons }
 */
import { execFileSync } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import t, { type Test } from 'tap'
import { isAppError } from '../lib/errors.js'
import { REPO } from '../test/helpers/process.js'
import {
  DETECTION_ORDER,
  formatBuildLine,
  parseReleaseYaml,
  pruneSlugignore,
  runBuildpacks,
  type BuildOptions,
  type BuildResult,
} from './build.js'

const THIRDPARTY = join(REPO, 'test/fixtures/buildpacks/thirdparty')

function collector(): { out: Writable; text: () => string } {
  const chunks: string[] = []
  const out = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      chunks.push(chunk.toString())
      callback()
    },
  })
  return { out, text: () => chunks.join('') }
}

/** Writes a buildpack made of bash scripts (each given as its body) into `dir`. */
function makePack(dir: string, scripts: Record<string, string>): string {
  mkdirSync(join(dir, 'bin'), { recursive: true })
  for (const [name, body] of Object.entries(scripts)) {
    writeFileSync(join(dir, 'bin', name), `#!/usr/bin/env bash\n${body}\n`, { mode: 0o755 })
  }
  return dir
}

type Files = NonNullable<Parameters<Test['testdir']>[0]>

interface Run {
  app: string
  cache: string
  output: () => string
  result: Promise<BuildResult>
}

/**
 * A build of `files` (an app made in the test's dir), with the options given. `packs` are
 * buildpacks made of bash scripts, written to PACKS/NAME; "@NAME" in opts.buildpacks and in a
 * .buildpacks file stands for that path.
 */
function build(
  t: Test,
  files: Files,
  opts: Partial<BuildOptions> = {},
  packs: Record<string, Record<string, string>> = {},
): Run {
  const root = t.testdir({ app: files, cache: {} })
  const app = join(root, 'app')
  const cache = join(root, 'cache')
  const packPath = (entry: string): string =>
    entry.startsWith('@') ? join(root, 'packs', entry.slice(1)) : entry
  for (const [name, scripts] of Object.entries(packs)) makePack(packPath(`@${name}`), scripts)
  const listed = join(app, '.buildpacks')
  if (existsSync(listed)) {
    const entries = readFileSync(listed, 'utf8').split('\n').map(packPath)
    writeFileSync(listed, entries.join('\n'))
  }
  const { out, text } = collector()
  let started: Promise<BuildResult> | undefined
  return {
    app,
    cache,
    output: text,
    // started on first use, so a test can prepare the app dir first
    get result() {
      started ??= runBuildpacks({
        buildDir: app,
        cacheDir: cache,
        env: {},
        out,
        ...opts,
        buildpacks: opts.buildpacks?.map(packPath),
      })
      return started
    },
  }
}

async function buildError(t: Test, run: Promise<unknown>, message: RegExp): Promise<void> {
  let err: unknown
  try {
    await run
  } catch (e) {
    err = e
  }
  t.ok(isAppError(err, 'E_BUILD'), `E_BUILD (got ${String(err)})`)
  t.match((err as Error).message, message)
}

t.test('detection order: the first shipped buildpack that matches builds the app', async (t) => {
  const cases: [string, Files, string, string, Record<string, string>][] = [
    [
      'handler app',
      { Procfile: 'handler: python3 handler.py\n', 'handler.py': '' },
      'handler',
      'Mongrel2 handler',
      { handler: 'python3 handler.py' },
    ],
    [
      'a manifest beats handler',
      {
        Procfile: 'handler: node h.js\n',
        'package.json': '{ "name": "x", "version": "1.0.0" }',
        'h.js': '',
      },
      'nodejs',
      'Node.js',
      { handler: 'node h.js' },
    ],
    [
      'python beats static',
      { 'app.py': '', public: { 'index.html': '' } },
      'python',
      'Python',
      { web: 'python3 app.py' },
    ],
    ['static site', { public: { 'index.html': '' } }, 'static', 'Static', {}],
    [
      'a web type turns static files into a procfile app',
      { 'index.html': '', Procfile: 'web: bin/web\n', bin: { web: '' } },
      'procfile',
      'Procfile',
      { web: 'bin/web' },
    ],
  ]
  for (const [name, files, pack, detected, types] of cases) {
    t.test(name, async (t) => {
      const run = build(t, files)
      if (existsSync(join(run.app, 'bin/web')))
        execFileSync('chmod', ['+x', join(run.app, 'bin/web')])
      const result = await run.result
      t.same(
        result.buildpacks.map((b) => [b.name, b.detected]),
        [[pack, detected]],
      )
      t.same(result.processTypes, types)
      t.match(run.output(), `-----> ${detected} app detected\n`)
    })
  }
})

t.test('a third-party buildpack runs unchanged from the explicit list', async (t) => {
  const root = t.testdir({
    app: {
      'thirdparty.txt': '',
      Procfile: '# the app overrides web; worker comes from the release\nweb: bin/hello --web\n',
      '.buildpacks': 'static\n', // the explicit list wins over it
    },
    cache: {},
  })
  const env = { GREETING: 'hi there\nsecond line', PATH: '/nowhere' }
  const first = collector()
  const app1 = join(root, 'build1')
  cpSync(join(root, 'app'), app1, { recursive: true })
  const result = await runBuildpacks({
    buildDir: app1,
    cacheDir: join(root, 'cache'),
    env,
    buildpacks: [THIRDPARTY],
    out: first.out,
  })
  t.same(result.buildpacks, [{ name: 'thirdparty', path: THIRDPARTY, detected: 'ThirdParty' }])
  t.same(result.processTypes, { web: 'bin/hello --web', worker: 'bin/hello --forever' })
  t.same(result.configVars, { THIRDPARTY_MODE: 'release', QUOTED: `it's "quoted"` })
  t.same(result.addons, ['heroku-postgresql:dev'])

  const out = first.text()
  t.match(out, '-----> Using buildpack from the buildpack list: thirdparty\n')
  t.match(out, '-----> ThirdParty app detected\n')
  t.match(out, '-----> Compiling with the third-party buildpack\n')
  t.match(out, '       greeting is hi there\n       second line\n', 'ENV_DIR holds the vars')
  t.match(out, '\n       an unindented line\n', 'the platform indents plain lines')
  t.match(out, '       Procfile declares types     -> web\n')
  t.match(out, '       Default types for buildpack -> web, worker\n')
  t.equal(readFileSync(join(app1, 'greeting.txt'), 'utf8'), 'hi there\nsecond line\n')
  t.equal(readFileSync(join(app1, 'stack.txt'), 'utf8'), 'bareku\n')
  t.notOk(existsSync(join(THIRDPARTY, 'export')), 'its export file went to a private copy')

  // legacy config_vars reach the runtime through .profile.d; the app's own config vars win
  const sourced = execFileSync(
    'bash',
    ['-c', '. .profile.d/00_config_vars.sh; printf "%s|%s" "$QUOTED" "$THIRDPARTY_MODE"'],
    { cwd: app1, env: { QUOTED: 'mine' }, encoding: 'utf8' },
  )
  t.equal(sourced, 'mine|release')

  // CACHE_DIR persists between builds of the app
  const app2 = join(root, 'build2')
  cpSync(join(root, 'app'), app2, { recursive: true })
  await runBuildpacks({
    buildDir: app2,
    cacheDir: join(root, 'cache'),
    env,
    buildpacks: [THIRDPARTY],
    out: collector().out,
  })
  t.equal(readFileSync(join(root, 'cache/count'), 'utf8'), '2\n')
})

t.test('.buildpacks: several packs, export between them, the last release wins', async (t) => {
  const run = build(
    t,
    {
      'thirdparty.txt': '',
      Procfile: 'web: bin/hello\n',
      '.buildpacks': `# build order\n${THIRDPARTY}\n\n@recorder\n`,
    },
    {},
    {
      recorder: {
        detect: 'echo Recorder',
        // sees what the third-party pack exported (its env var, and its bin/ on PATH)
        compile: 'echo "home=$THIRDPARTY_HOME hello=$(command -v hello)" > "$1/recorded.txt"',
        release: 'echo "--- {}"',
      },
    },
  )
  const result = await run.result
  t.same(
    result.buildpacks.map((b) => b.name),
    ['thirdparty', 'recorder'],
  )
  t.equal(
    readFileSync(join(run.app, 'recorded.txt'), 'utf8'),
    `home=${run.app}/.thirdparty hello=${run.app}/bin/hello\n`,
  )
  t.same(result.processTypes, { web: 'bin/hello' }, "the recorder's (empty) defaults are last")
  t.same(result.configVars, { THIRDPARTY_MODE: 'release', QUOTED: `it's "quoted"` })
  t.match(run.output(), '-----> Using buildpacks from .buildpacks: thirdparty, recorder\n')
})

t.test('BUILDPACK_URL names a shipped buildpack, or fails on a URL', async (t) => {
  const run = build(
    t,
    { 'app.py': '', Procfile: 'web: python3 app.py\n' },
    { env: { BUILDPACK_URL: 'heroku/procfile' } },
  )
  const result = await run.result
  t.same(
    result.buildpacks.map((b) => b.name),
    ['procfile'],
  )
  t.match(run.output(), '-----> Using buildpack from BUILDPACK_URL: procfile\n')

  const url = build(
    t,
    { 'package.json': '{}' },
    { env: { BUILDPACK_URL: 'https://github.com/heroku/heroku-buildpack-nodejs.git#v200' } },
  )
  await buildError(t, url.result, /a URL: this build host cannot fetch buildpacks.*"nodejs"/)
})

t.test('failures are E_BUILD errors that say what to do', async (t) => {
  t.test('no buildpack detected', async (t) => {
    const run = build(t, { 'README.md': 'just words' })
    await buildError(t, run.result, /no buildpack detected/)
    const err = await run.result.catch((e: Error) => e.message)
    for (const name of DETECTION_ORDER) t.match(err, `\n  ${name}: `, `lists ${name}`)
    t.match(err, /\.buildpacks file/)
  })

  t.test('compile exits non-zero', async (t) => {
    const run = build(
      t,
      {},
      { buildpacks: ['@failing'] },
      {
        failing: {
          detect: 'echo Failing',
          compile: 'echo "-----> Trying"; echo "something broke" >&2; exit 3',
        },
      },
    )
    await buildError(t, run.result, /buildpack "failing" failed: bin\/compile exited with code 3/)
    t.match(run.output(), '-----> Trying\n       something broke\n', 'stderr streamed too')
  })

  t.test('a hanging compile is killed with its process group', async (t) => {
    const hanging = {
      detect: 'echo Hanging',
      compile: [
        'echo $$ > "$1/compile.pid"',
        'sleep 1000 &',
        'echo $! > "$1/child.pid"',
        'echo "-----> Waiting forever"',
        'wait',
      ].join('\n'),
    }
    const run = build(t, {}, { buildpacks: ['@hanging'], timeoutMs: 1500 }, { hanging })
    const started = Date.now()
    await buildError(t, run.result, /build timed out: buildpack "hanging" \(bin\/compile\).*1\.5 s/)
    t.ok(Date.now() - started < 10_000, 'stopped at the deadline')
    t.match(run.output(), '-----> Waiting forever\n', 'output streamed before the kill')
    for (const file of ['compile.pid', 'child.pid']) {
      const pid = readFileSync(join(run.app, file), 'utf8').trim()
      const stat = existsSync(`/proc/${pid}/stat`) ? readFileSync(`/proc/${pid}/stat`, 'utf8') : ''
      t.ok(stat === '' || / Z /.test(stat), `${file} (${pid}) is gone`)
    }
  })

  t.test('a bad Procfile fails before any compile', async (t) => {
    const run = build(t, { Procfile: 'web: ok\nworker bin/worker\n' })
    await buildError(t, run.result, /Procfile line 2:/)
    t.notMatch(run.output(), 'app detected')
  })

  t.test('no process types at all', async (t) => {
    const run = build(t, { Procfile: '# nothing here yet\n' })
    await buildError(t, run.result, /no process types: the Procfile declares none.*"web: /)
  })

  t.test('a release that is not YAML we can read', async (t) => {
    const badyaml = {
      detect: 'echo Bad',
      compile: 'true',
      release: 'echo "default_process_types: [web]"',
    }
    const run = build(t, {}, { buildpacks: ['@badyaml'] }, { badyaml })
    await buildError(t, run.result, /buildpack "badyaml" bin\/release is not YAML.*line 1/)
  })

  t.test('a buildpack without an executable bin/compile', async (t) => {
    const run = build(t, {}, { buildpacks: ['@noexec'] }, { noexec: { detect: 'echo x' } })
    writeFileSync(join(run.app, '../packs/noexec/bin/compile'), '#!/bin/sh\n', { mode: 0o644 })
    await buildError(t, run.result, /no executable bin\/compile.*chmod \+x/)
  })

  t.test('.buildpacks with a bad entry, or with none', async (t) => {
    const rel = build(t, { '.buildpacks': 'buildpacks/mine\n' })
    await buildError(t, rel.result, /neither a shipped buildpack.*nor an absolute path/)
    const empty = build(t, { '.buildpacks': '# later\n\n' })
    await buildError(t, empty.result, /\.buildpacks lists no buildpack/)
  })
})

t.test('.slugignore', async (t) => {
  t.test('prunes matching paths before the build', async (t) => {
    const root = t.testdir({
      app: {
        '.slugignore': [
          '# docs and art',
          '*.psd',
          '/docs',
          'log/',
          'spec/fixtures',
          '**/*.bak',
          'tmp?  ',
          'linked',
          '',
        ].join('\n'),
        'logo.psd': '',
        art: { 'logo.psd': '', 'logo.png': '' },
        docs: { 'a.md': '' },
        sub: { docs: { 'keep.md': '' }, log: 'a file named log' },
        log: { 'x.log': '' },
        spec: { fixtures: { a: '' }, other: '' },
        a: { b: { 'c.bak': '' } },
        'x.bak': '',
        tmp1: { f: '' },
        tmpxx: '',
        Procfile: 'web: ./run\n',
      },
      outside: { 'keep.txt': 'safe' },
    })
    const app = join(root, 'app')
    symlinkSync('../outside', join(app, 'linked'))
    const removed = await pruneSlugignore(app)
    t.same(removed, [
      'a/b/c.bak',
      'art/logo.psd',
      'docs',
      'linked',
      'log',
      'logo.psd',
      'spec/fixtures',
      'tmp1',
      'x.bak',
    ])
    for (const kept of ['art/logo.png', 'sub/docs/keep.md', 'sub/log', 'spec/other', 'tmpxx']) {
      t.ok(existsSync(join(app, kept)), `${kept} is kept`)
    }
    t.equal(readFileSync(join(root, 'outside/keep.txt'), 'utf8'), 'safe', 'links are not followed')
  })

  t.test('runs before the buildpacks', async (t) => {
    const run = build(t, {
      '.slugignore': '*.psd\n',
      'big.psd': '',
      Procfile: 'worker: sleep 1\n',
    })
    await run.result
    t.notOk(existsSync(join(run.app, 'big.psd')))
    t.match(run.output(), /^-----> Removed 1 path\(s\) matched by \.slugignore$/m)
  })

  t.test('"!" is refused', async (t) => {
    const dir = t.testdir({ '.slugignore': '*.log\n!keep.log\n' })
    await buildError(t, pruneSlugignore(dir), /line 2: "!keep\.log" re-includes/)
  })

  t.test('no .slugignore, nothing removed', async (t) => {
    t.same(await pruneSlugignore(t.testdir({ a: '' })), [])
  })
})

t.test('release YAML', async (t) => {
  const good: [string, string, ReturnType<typeof parseReleaseYaml>][] = [
    ['EMPTY OUTPUT', '', { defaultProcessTypes: {}, configVars: {}, addons: [] }],
    ['EMPTY DOCUMENT', '--- {}\n', { defaultProcessTypes: {}, configVars: {}, addons: [] }],
    [
      "HEROKU'S EXAMPLE",
      '---\naddons:\n  - heroku-postgresql:dev\ndefault_process_types:\n  web: bin/node server.js\n',
      {
        defaultProcessTypes: { web: 'bin/node server.js' },
        configVars: {},
        addons: ['heroku-postgresql:dev'],
      },
    ],
    [
      'NO DOCUMENT MARKER, EMPTY COLLECTIONS, COMMENTS',
      '# made by x\naddons: []\ndefault_process_types: {}   # none\nconfig_vars:\n',
      { defaultProcessTypes: {}, configVars: {}, addons: [] },
    ],
    [
      'QUOTED VALUES AND KEYS',
      `---\nconfig_vars:\n  A: 'it''s'\n  "B": "tab\\there"\n  C: plain # comment\n  D: a#b\n  E:\n  F: 5000\n`,
      {
        defaultProcessTypes: {},
        configVars: { A: "it's", B: 'tab\there', C: 'plain', D: 'a#b', E: '', F: '5000' },
        addons: [],
      },
    ],
    [
      'DEEPER INDENT, CRLF, END MARKER, UNKNOWN KEYS IGNORED, STATIC',
      '---\r\ndefault_process_types:\r\n    web: npm start\r\n    worker: node w.js\r\nstatic: public\r\nother:\r\n  x: y\r\n...\r\n',
      {
        defaultProcessTypes: { web: 'npm start', worker: 'node w.js' },
        configVars: {},
        addons: [],
        static: 'public',
      },
    ],
  ]
  for (const [name, text, want] of good) t.same(parseReleaseYaml(text), want, name)

  const bad: [string, string][] = [
    ['NOT A MAPPING', '- a\n- b\n'],
    ['FLOW MAPPING WITH CONTENT', 'default_process_types: {web: x}\n'],
    ['BLOCK SCALAR', 'config_vars:\n  A: |\n    text\n'],
    ['ANCHOR', 'default_process_types: &x\n'],
    ['COLON IN A PLAIN VALUE', 'default_process_types:\n  web: java -Da=b: c\n'],
    ['UNCLOSED QUOTE', "config_vars:\n  A: 'open\n"],
    ['DUPLICATE KEY', 'config_vars:\n  A: 1\n  A: 2\n'],
    ['BAD INDENTATION', 'config_vars:\n    A: 1\n  B: 2\n'],
    ['TAB INDENT', 'config_vars:\n\tA: 1\n'],
    ['BAD PROCESS TYPE', 'default_process_types:\n  web.1: x\n'],
    ['EMPTY COMMAND', 'default_process_types:\n  web:\n'],
    ['ADDONS NOT A LIST', 'addons: heroku-redis\n'],
    ['NESTED LIST ITEM', 'addons:\n  -\n    a: b\n'],
    ['NOT KEY VALUE', 'just some words\n'],
  ]
  for (const [name, text] of bad) {
    t.throws(() => parseReleaseYaml(text), { code: 'E_BUILD' }, name)
  }
})

t.test('output lines: the platform indents what a buildpack did not format', async (t) => {
  const table: [string, string][] = [
    ['-----> Step', '-----> Step'],
    ['       info', '       info'],
    [' !     error', ' !     error'],
    ['\ttabbed', '\ttabbed'],
    ['plain', '       plain'],
    ['', ''],
  ]
  for (const [line, want] of table) t.equal(formatBuildLine(line), want, JSON.stringify(line))
})
