/**
 * Each shipped buildpack's bin/detect on small apps: the exit code, the name it prints, and the
 * reason it gives on stderr when it does not match. Together the table is the detection rules
 * of buildpacks/README.md.
 */
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import t from 'tap'
import { DETECTION_ORDER, SHIPPED_DIR } from '../../hooks/build.js'

type Files = Record<string, string | Record<string, string>>

// app files -> the name each buildpack prints (undefined: no match)
const table: [string, Files, Partial<Record<(typeof DETECTION_ORDER)[number], string>>][] = [
  ['EMPTY APP', { 'README.md': 'hi' }, {}],
  [
    'PYTHON HANDLER, NO MANIFEST',
    { Procfile: 'handler: python3 handler.py\n', 'handler.py': '' },
    { handler: 'Mongrel2 handler', python: 'Python', procfile: 'Procfile' },
  ],
  [
    'HANDLER TYPE ENDING IN handler',
    { Procfile: 'web: ./web\nchat-handler: perl chat.pl\n', 'chat.pl': '' },
    { handler: 'Mongrel2 handler', procfile: 'Procfile' },
  ],
  [
    'HANDLER WITH A MANIFEST',
    { Procfile: 'handler: node h.js\n', 'package.json': '{}' },
    { nodejs: 'Node.js', procfile: 'Procfile' },
  ],
  [
    'HANDLER WITH requirements.txt',
    { Procfile: 'handler: python3 h.py\n', 'requirements.txt': 'pyzmq\n' },
    { python: 'Python', procfile: 'Procfile' },
  ],
  ['NODE', { 'package.json': '{}' }, { nodejs: 'Node.js' }],
  [
    'NODE WITH public/',
    { 'package.json': '{}', public: { 'index.html': '' } },
    { nodejs: 'Node.js' },
  ],
  ['PYTHON requirements.txt', { 'requirements.txt': '' }, { python: 'Python' }],
  ['PYTHON setup.py', { 'setup.py': '' }, { python: 'Python' }],
  ['PYTHON pyproject.toml', { 'pyproject.toml': '' }, { python: 'Python' }],
  ['PYTHON runtime.txt', { 'runtime.txt': 'python-3.11' }, { python: 'Python' }],
  ['PYTHON *.py ONLY', { 'app.py': '' }, { python: 'Python' }],
  ['PYTHON BEATS STATIC', { 'app.py': '', public: { 'index.html': '' } }, { python: 'Python' }],
  ['STATIC public/', { public: { 'index.html': '' } }, { static: 'Static' }],
  ['STATIC index.html', { 'index.html': '' }, { static: 'Static' }],
  [
    'STATIC WITH A WORKER IN THE PROCFILE',
    { 'index.html': '', Procfile: 'worker: ./bin/worker\n' },
    { static: 'Static', procfile: 'Procfile' },
  ],
  [
    'STATIC FILES BUT A WEB PROCESS',
    { 'index.html': '', Procfile: 'web: ./bin/web\n' },
    { procfile: 'Procfile' },
  ],
  ['PROCFILE ONLY', { Procfile: 'web: ./run\n', run: '' }, { procfile: 'Procfile' }],
]

function detect(pack: string, dir: string): { code: number | null; out: string; err: string } {
  const r = spawnSync(join(SHIPPED_DIR, pack, 'bin/detect'), [dir], { encoding: 'utf8' })
  return { code: r.status, out: r.stdout.trim(), err: r.stderr.trim() }
}

for (const [name, files, want] of table) {
  t.test(name, async (t) => {
    const dir = t.testdir(files)
    for (const pack of DETECTION_ORDER) {
      const r = detect(pack, dir)
      const expected = want[pack]
      if (expected === undefined) {
        t.equal(r.code, 1, `${pack} does not match`)
        t.not(r.err, '', `${pack} says why not`)
      } else {
        t.equal(r.code, 0, `${pack} matches`)
        t.equal(r.out, expected, `${pack} prints its name`)
      }
    }
  })
}

t.test('the shipped scripts are executable', async (t) => {
  for (const pack of DETECTION_ORDER) {
    for (const script of ['detect', 'compile', 'release']) {
      const r = spawnSync('test', ['-x', join(SHIPPED_DIR, pack, 'bin', script)])
      t.equal(r.status, 0, `${pack}/bin/${script}`)
    }
  }
})
