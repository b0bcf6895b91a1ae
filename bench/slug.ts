/**
 * @module bench/slug: pack and unpack throughput of lib/slug on a ~100 MB app of mixed files,
 * against a plain `tar c | zstd` tarball (Heroku-style slug) and mksquashfs when installed.
 * Prints a Markdown table.
 *
 *   npx tsx bench/slug.ts          (about a minute; each row is the best of BENCH_RUNS=2 runs)
 *
 * The app: a copy of node_modules/typescript and node_modules/zeromq (real JS, JSON and native
 * binaries) plus 20 MB of random bytes (like images) and 20 MB of repetitive text (like logs or
 * fixtures). MB/s is the app's size over the time taken, for packing and unpacking alike.
 * Everything lives in one temp dir under os.tmpdir(), removed at the end.
 */
import { randomBytes } from 'node:crypto'
import { cpSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { execa, execaSync } from 'execa'
import { inspectSlug } from '../lib/slug/inspect.js'
import { packSlug } from '../lib/slug/pack.js'
import { unpackSlug } from '../lib/slug/unpack.js'

const REPO = fileURLToPath(new URL('../', import.meta.url))
const RUNS = Number(process.env.BENCH_RUNS ?? 2)
const MB = 1024 * 1024

function makeApp(app: string): number {
  for (const pkg of ['typescript', 'zeromq']) {
    cpSync(join(REPO, 'node_modules', pkg), join(app, 'node_modules', pkg), {
      recursive: true,
      verbatimSymlinks: true,
    })
  }
  mkdirSync(join(app, 'public/img'), { recursive: true })
  mkdirSync(join(app, 'data'), { recursive: true })
  for (let i = 0; i < 20; i++) writeFileSync(join(app, `public/img/${i}.bin`), randomBytes(MB))
  const line = 'GET /app/items?page=2 200 12ms user=42 "Mozilla/5.0 (X11; Linux x86_64)"\n'
  for (let i = 0; i < 20; i++)
    writeFileSync(join(app, `data/${i}.log`), line.repeat(MB / line.length))
  // Apparent size in bytes: what the app weighs, not its disk blocks.
  return Number(execaSync('du', ['-sb', app]).stdout.split('\t')[0])
}

async function have(tool: string): Promise<boolean> {
  const r = await execa('sh', ['-c', `command -v ${tool}`], { reject: false })
  return r.exitCode === 0
}

/** Best wall time of RUNS runs of `run`; `before` resets state, untimed. */
async function best(run: () => Promise<unknown>, before?: () => void): Promise<number> {
  let min = Infinity
  for (let i = 0; i < RUNS; i++) {
    before?.()
    const start = process.hrtime.bigint()
    await run()
    min = Math.min(min, Number(process.hrtime.bigint() - start) / 1e9)
  }
  return min
}

const sh = (script: string) => () => execa('sh', ['-c', script])

async function main(): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'bench-slug-'))
  try {
    const app = join(work, 'app')
    const bytes = makeApp(app)
    const rows: Array<[string, number, number | undefined]> = []
    const out = join(work, 'out')
    const fresh = (dir: string) => () => rmSync(dir, { recursive: true, force: true })

    const slug = await packSlug(app, out)
    rows.push([
      'pack: packSlug (tar-stream -> tar2sqfs zstd 9)',
      await best(() => packSlug(app, out), fresh(out)),
      statSync(slug.path).size,
    ])
    const gnu = join(work, 'gnu.sqfs')
    rows.push([
      'pack: GNU tar -> tar2sqfs zstd 9 (same options)',
      await best(
        sh(
          `tar -C '${app}' --sort=name --owner=0 --group=0 --mtime=@0 -c . | tar2sqfs --quiet --no-skip --no-xattr --no-keep-time --compressor zstd --comp-extra level=9 '${gnu}'`,
        ),
        fresh(gnu),
      ),
      statSync(gnu).size,
    ])
    const tgz = join(work, 'slug.tar.zst')
    for (const level of [3, 9]) {
      rows.push([
        `pack: tar c | zstd -${level} -T0`,
        await best(sh(`tar -C '${app}' -c . | zstd -q -${level} -T0 -o '${tgz}'`), fresh(tgz)),
        statSync(tgz).size,
      ])
    }
    const mks = join(work, 'mk.sqfs')
    if (await have('mksquashfs')) {
      rows.push([
        'pack: mksquashfs -comp zstd -Xcompression-level 9',
        await best(
          sh(
            `mksquashfs '${app}' '${mks}' -quiet -no-progress -comp zstd -Xcompression-level 9 -all-root`,
          ),
          fresh(mks),
        ),
        statSync(mks).size,
      ])
    } else {
      rows.push(['pack: mksquashfs (not installed)', NaN, undefined])
    }

    const dest = join(work, 'dest')
    rows.push([
      'unpack: unpackSlug (inspect + rdsquashfs + modes + sync)',
      await best(() => unpackSlug(slug.path, dest), fresh(dest)),
      undefined,
    ])
    rows.push([
      'unpack: its inspectSlug alone',
      await best(() => inspectSlug(slug.path)),
      undefined,
    ])
    rows.push([
      'unpack: rdsquashfs -u / alone',
      await best(sh(`rdsquashfs -q -C -u / -p '${dest}' '${slug.path}'`), fresh(dest)),
      undefined,
    ])
    // The tarball left by the last pack row (zstd -9) is the one unpacked.
    rows.push([
      'unpack: zstd -d | tar x',
      await best(
        sh(`mkdir -p '${dest}' && zstd -q -d -c '${tgz}' | tar -C '${dest}' -x`),
        fresh(dest),
      ),
      undefined,
    ])

    console.log(
      `app: ${(bytes / MB).toFixed(1)} MB in ${app.replace(work, '$TMP')}, best of ${RUNS}\n`,
    )
    console.log('| operation | seconds | MB/s | output MB |')
    console.log('| --- | ---: | ---: | ---: |')
    for (const [what, secs, size] of rows) {
      const rate = Number.isNaN(secs) ? 'n/a' : (bytes / MB / secs).toFixed(0)
      const time = Number.isNaN(secs) ? 'n/a' : secs.toFixed(2)
      console.log(
        `| ${what.replaceAll('|', '\\|')} | ${time} | ${rate} | ${size === undefined ? '' : (size / MB).toFixed(1)} |`,
      )
    }
  } finally {
    rmSync(work, { recursive: true, force: true })
  }
}

await main()
