/**
 * packSlug with the real tar2sqfs, checked by unpacking with the real rdsquashfs (unpackSlug) and
 * by reading the image back with sqfs2tar:
 *
 *   app dir ──packSlug──> OUT/<sha256>.sqfs ──unpackSlug──> DEST     DEST ≅ app dir
 *                                         └──sqfs2tar──> headers      owner 0, mtime 0, no suid
 */
import { createHash, randomBytes } from 'node:crypto'
import {
  chmodSync,
  cpSync,
  existsSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { mkdtemp, open, rm } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { execa } from 'execa'
import t from 'tap'
import { extract as tarExtract, type Header } from 'tar-stream'
import { packSlug, slugPath } from './pack.js'
import { sha256File } from './sha.js'
import { unpackSlug } from './unpack.js'

const LONG_NAME = `${'x'.repeat(150)}.txt` // over ustar's 100 bytes: needs a pax header

/** A small app with every kind of entry a build leaves behind. */
function makeApp(root: string): void {
  const file = (path: string, body: string, mode = 0o644): void => {
    mkdirSync(join(root, path, '..'), { recursive: true })
    writeFileSync(join(root, path), body)
    chmodSync(join(root, path), mode)
  }
  file('Procfile', 'web: bin/server\n')
  file('bin/server', '#!/bin/sh\necho hi\n', 0o755)
  file('bin/owner-only', '#!/bin/sh\n', 0o700)
  file('private/key', 'secret\n', 0o600)
  chmodSync(join(root, 'private'), 0o700)
  file('lib/deep/er/nested/file.txt', 'nested\n')
  mkdirSync(join(root, 'empty/also-empty'), { recursive: true })
  file('public/ünïcødé 文件.txt', 'utf-8\n')
  file('dir with space/file with space.txt', 'spaces\n')
  file('🚀 launch.txt', 'emoji\n')
  file(`quote's "here".txt`, 'quotes\n')
  file('line\nbreak.txt', 'newline\n')
  file(`long/${LONG_NAME}`, 'long\n')
  file('empty-file', '')
  symlinkSync('server', join(root, 'bin/current'))
  symlinkSync('lib/deep', join(root, 'lib-link'))
  symlinkSync('../../../Procfile', join(root, 'lib/deep/er/up'))
  symlinkSync(`long/${LONG_NAME}`, join(root, 'long-target'))
  symlinkSync('missing-inside', join(root, 'dangling'))
}

/** Writes `mb` MiB, half random and half text, a MiB at a time. */
async function bigFile(path: string, mb: number): Promise<void> {
  const handle = await open(path, 'w')
  try {
    const text = Buffer.alloc(1 << 19, 'the quick brown fox jumps over the lazy dog\n')
    for (let i = 0; i < mb; i++) await handle.write(Buffer.concat([randomBytes(1 << 19), text]))
  } finally {
    await handle.close()
  }
}

/** Every entry under `root`: path -> kind, mode and content hash or link target. */
function snapshot(root: string, normalise = false, dir = ''): Record<string, string> {
  const out: Record<string, string> = {}
  for (const name of readdirSync(join(root, dir)).sort()) {
    const path = dir === '' ? name : `${dir}/${name}`
    const full = join(root, path)
    const st = lstatSync(full)
    let mode = st.mode & 0o7777
    if (st.isSymbolicLink()) {
      out[path] = `symlink -> ${readlinkSync(full)}`
    } else if (st.isDirectory()) {
      out[path] = `dir ${(normalise ? 0o755 : mode).toString(8)}`
      Object.assign(out, snapshot(root, normalise, path))
    } else {
      if (normalise) mode = mode & 0o111 ? 0o755 : 0o644
      const sha = createHash('sha256').update(readFileSync(full)).digest('hex')
      out[path] = `file ${mode.toString(8)} ${st.size} ${sha}`
    }
  }
  return out
}

/** The tar headers of the image, as sqfs2tar reads it back. */
async function listImage(path: string): Promise<Header[]> {
  const child = execa('sqfs2tar', ['--no-xattr', path], { buffer: { stdout: false } })
  const extract = tarExtract()
  child.stdout.pipe(extract)
  const headers: Header[] = []
  for await (const entry of extract) {
    headers.push(entry.header)
    entry.resume()
  }
  await child
  return headers
}

const entriesIn = (dir: string): string[] => (existsSync(dir) ? readdirSync(dir) : [])

t.test('round trip: files, modes, empty dirs, symlinks, odd names, a 50 MB file', async (t) => {
  const dir = t.testdir({ app: {} })
  const app = join(dir, 'app')
  makeApp(app)
  mkdirSync(join(app, 'data'))
  await bigFile(join(app, 'data/big.bin'), 50)

  const out = join(dir, 'slugs')
  const slug = await packSlug(app, out)
  t.match(slug.sha256, /^[0-9a-f]{64}$/)
  t.equal(slug.path, join(out, `${slug.sha256}.sqfs`))
  t.equal(slug.path, slugPath(out, slug.sha256))
  t.equal(slug.size, statSync(slug.path).size)
  t.equal(await sha256File(slug.path), slug.sha256, 'named by the sha256 of its bytes')
  t.same(readdirSync(out), [`${slug.sha256}.sqfs`], 'no temp file left behind')
  t.ok(slug.size < 40 * 1024 * 1024, `compressed (${slug.size} bytes)`)

  const dest = join(dir, 'unpacked', slug.sha256)
  await unpackSlug(slug.path, dest)
  const want = snapshot(app, true)
  t.same(snapshot(dest), want, 'same entries, contents, x bits and link targets')
  t.equal(want['bin/server'], snapshot(dest)['bin/server'])
  t.match(snapshot(dest), {
    'bin/owner-only': /^file 755 /,
    'private/key': /^file 644 /,
    private: 'dir 755',
    'empty/also-empty': 'dir 755',
    'line\nbreak.txt': /^file 644 /,
    dangling: 'symlink -> missing-inside',
  })
  t.equal(readFileSync(join(dest, 'lib/deep/er/up'), 'utf8'), 'web: bin/server\n', 'links work')
  t.equal(statSync(dest).mode & 0o777, 0o755, 'the root is open to the app user too')
})

t.test('the same tree gives the same sha256, whatever its times, place or suid bits', async (t) => {
  const dir = t.testdir({ app: {} })
  const app = join(dir, 'app')
  makeApp(app)
  const first = await packSlug(app, join(dir, 'out1'))
  const again = await packSlug(app, join(dir, 'out2'))
  t.equal(again.sha256, first.sha256, 'packed twice')
  t.equal(again.size, first.size)

  const later = new Date(Date.now() + 3_600_000)
  for (const path of Object.keys(snapshot(app))) lutimesSync(join(app, path), later, later)
  lutimesSync(app, later, later)
  t.equal((await packSlug(app, join(dir, 'out3'))).sha256, first.sha256, 'after touching mtimes')

  const copy = join(dir, 'elsewhere/copy')
  cpSync(app, copy, { recursive: true, verbatimSymlinks: true })
  t.equal((await packSlug(copy, join(dir, 'out4'))).sha256, first.sha256, 'a copy elsewhere')

  chmodSync(join(app, 'bin/server'), 0o4755)
  chmodSync(join(app, 'bin/owner-only'), 0o2700)
  chmodSync(join(app, 'lib'), 0o3755)
  const suid = await packSlug(app, join(dir, 'out5'))
  t.equal(suid.sha256, first.sha256, 'setuid, setgid and sticky bits are dropped')

  const headers = await listImage(suid.path)
  t.ok(headers.length > 20, `${headers.length} entries`)
  t.same(
    headers.filter((h) => (h.mode & 0o7000) !== 0 || h.uid !== 0 || h.gid !== 0),
    [],
    'no special bits, owner root everywhere',
  )
  t.same(
    headers.filter((h) => h.mtime.getTime() !== 0),
    [],
    'every time is 0',
  )
  t.match(
    headers.find((h) => h.name === 'bin/server'),
    { mode: 0o755, type: 'file' },
  )
  t.match(
    headers.find((h) => h.name === 'bin/current'),
    { type: 'symlink', linkname: 'server' },
  )
})

t.test('an existing slug is kept; concurrent packs agree', async (t) => {
  const dir = t.testdir({ app: { Procfile: 'web: x\n', 'a.txt': 'a\n' } })
  const out = join(dir, 'out')
  const first = await packSlug(join(dir, 'app'), out)
  const inode = statSync(first.path).ino
  const second = await packSlug(join(dir, 'app'), out)
  t.same(second, first)
  t.equal(statSync(first.path).ino, inode, 'the existing file was not replaced')

  const racing = await Promise.all([1, 2, 3].map(() => packSlug(join(dir, 'app'), out)))
  t.same(
    racing.map((r) => r.sha256),
    [first.sha256, first.sha256, first.sha256],
  )
  t.same(readdirSync(out), [`${first.sha256}.sqfs`], 'one slug, no temp files')
})

t.test('an empty app packs and unpacks to an empty directory', async (t) => {
  const dir = t.testdir({ app: {} })
  const slug = await packSlug(join(dir, 'app'), join(dir, 'out'))
  await unpackSlug(slug.path, join(dir, 'dest'))
  t.same(readdirSync(join(dir, 'dest')), [])
})

// [name, symlinks to add as [path, target], the path the error must name]
const escaping: Array<[string, Array<[string, string]>, string]> = [
  ['UP PAST THE ROOT', [['lib/evil', '../../etc/passwd']], 'lib/evil'],
  ['ABSOLUTE', [['passwd', '/etc/passwd']], 'passwd'],
  ['ABSOLUTE INTO THE BUILD DIR', [['self', '/tmp/build/app']], 'self'],
  [
    'THROUGH ANOTHER LINK',
    [
      ['a/b/c', '../..'],
      ['x', 'a/b/c/..'],
    ],
    'x',
  ],
  [
    'LOOP',
    [
      ['loop1', 'loop2'],
      ['loop2', 'loop1'],
    ],
    'loop1',
  ],
]

t.test('a symlink leading outside the app is refused', async (t) => {
  for (const [name, links, named] of escaping) {
    const dir = t.testdir({ app: { Procfile: 'web: x\n', a: { b: {} }, lib: {} } })
    for (const [path, target] of links) symlinkSync(target, join(dir, 'app', path))
    const out = join(dir, 'out')
    await t.rejects(
      packSlug(join(dir, 'app'), out),
      { code: 'E_SLUG', message: new RegExp(`${named} in .*symlink.*(ln -sr|relative)`) },
      name,
    )
    t.same(entriesIn(out), [], `${name}: nothing written`)
  }
})

t.test('a fifo, a socket, a missing or non-directory app are refused', async (t) => {
  const dir = t.testdir({ app: { Procfile: 'web: x\n', run: {} }, 'a-file': 'x' })
  await execa('mkfifo', [join(dir, 'app/run/pipe')])
  await t.rejects(packSlug(join(dir, 'app'), join(dir, 'out')), {
    code: 'E_SLUG',
    message: /run\/pipe .*fifo.*remove it/,
  })
  t.same(entriesIn(join(dir, 'out')), [])

  // Unix socket paths must stay under 107 bytes: this app lives in a short temp dir.
  const short = await mkdtemp(join(tmpdir(), 'slug-'))
  t.teardown(() => rm(short, { recursive: true, force: true }))
  writeFileSync(join(short, 'Procfile'), 'web: x\n')
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(join(short, 'control.sock'), resolve))
  t.teardown(() => new Promise((resolve) => server.close(resolve)))
  await t.rejects(packSlug(short, join(dir, 'out')), {
    code: 'E_SLUG',
    message: /control\.sock .*socket/,
  })

  await t.rejects(packSlug(join(dir, 'missing'), join(dir, 'out')), { code: 'E_SLUG' })
  await t.rejects(packSlug(join(dir, 'a-file'), join(dir, 'out')), { code: 'E_SLUG' })
})

t.test(
  'a failing or missing tar2sqfs is an E_SLUG with its words, and leaves nothing',
  async (t) => {
    const dir = t.testdir({
      app: { Procfile: 'web: x\n' },
      // Reads a little, then dies as a full disk would make the real one, while we still write.
      bin: {
        tar2sqfs:
          '#!/bin/sh\nhead -c 100000 >/dev/null\necho "writing data block: No space left on device" >&2\nexit 1\n',
      },
      empty: {},
    })
    chmodSync(join(dir, 'bin/tar2sqfs'), 0o755)
    await bigFile(join(dir, 'app/big.bin'), 5)
    const path = process.env.PATH
    t.teardown(() => {
      process.env.PATH = path
    })
    const out = join(dir, 'out')

    process.env.PATH = `${join(dir, 'bin')}:${path}`
    await t.rejects(packSlug(join(dir, 'app'), out), {
      code: 'E_SLUG',
      message: /tar2sqfs said: writing data block: No space left on device/,
    })
    t.same(readdirSync(out), [], 'the temp image is removed')

    process.env.PATH = join(dir, 'empty')
    await t.rejects(packSlug(join(dir, 'app'), out), {
      code: 'E_SLUG',
      message: /tar2sqfs is not installed .*squashfs-tools-ng/,
    })
    t.same(readdirSync(out), [])

    process.env.PATH = path
    await t.rejects(packSlug(join(dir, 'app'), join(dir, 'app/Procfile/out')), { code: 'E_SLUG' })
  },
)

t.test('slugPath names a slug by its sha256 and nothing else', async (t) => {
  const sha = 'ab'.repeat(32)
  t.equal(slugPath('/var/slugs', sha), `/var/slugs/${sha}.sqfs`)
  for (const bad of ['', sha.toUpperCase(), '../../etc/passwd', `${sha}0`, sha.slice(1)]) {
    t.throws(() => slugPath('/var/slugs', bad), { code: 'E_SLUG' }, JSON.stringify(bad))
  }
})

t.test('sha256File hashes a file as a stream', async (t) => {
  const dir = t.testdir({ f: 'hello\n', empty: '' })
  t.equal(await sha256File(join(dir, 'f')), createHash('sha256').update('hello\n').digest('hex'))
  t.equal(
    await sha256File(join(dir, 'empty')),
    'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
  )
  await t.rejects(sha256File(join(dir, 'missing')), { code: 'ENOENT' })
})
