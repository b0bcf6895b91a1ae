/**
 * unpackSlug against hand-made images: tars written entry by entry with tar-stream and turned
 * into squashfs by the real tar2sqfs (gensquashfs for a socket, which a tar cannot hold; a byte
 * patch for a ".." name, which neither tool will write), then unpacked with the real rdsquashfs.
 *
 *   tar-stream pack ──stdin──> tar2sqfs ──> evil.sqfs ──unpackSlug──> E_SLUG, no DEST, no temp
 */
import { createHash, randomBytes } from 'node:crypto'
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { dirname, join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { execa } from 'execa'
import t, { type Test } from 'tap'
import { pack as tarPack, type Pack } from 'tar-stream'
import { packSlug } from './pack.js'
import { unpackSlug } from './unpack.js'

type Entry = { header: Parameters<Pack['entry']>[0]; body?: string }

const file = (name: string, body: string, mode = 0o644): Entry => ({
  header: { name, mode, type: 'file' },
  body,
})
const symlink = (name: string, linkname: string): Entry => ({
  header: { name, type: 'symlink', linkname, mode: 0o777 },
})

/** Writes `entries` as a tar with tar-stream and turns it into a squashfs image with tar2sqfs. */
async function craft(out: string, entries: Entry[], compressor = 'xz'): Promise<string> {
  const pack = tarPack()
  const child = execa('tar2sqfs', ['--quiet', '--no-skip', '--compressor', compressor, out], {
    stdout: 'ignore',
  })
  const feeding = pipeline(pack, child.stdin)
  for (const { header, body } of entries) {
    const h = { uid: 0, gid: 0, mtime: new Date(0), ...header }
    if (body === undefined) pack.entry(h)
    else pack.entry(h, body)
  }
  pack.finalize()
  await feeding
  await child
  return out
}

/** Nothing but `expected` beside DEST: no DEST, no leftover temp dir. */
function assertUntouched(t: Test, dest: string, expected: string[] = []): void {
  t.notOk(existsSync(dest), 'dest was not created')
  const left = readdirSync(dirname(dest)).filter((n) => !expected.includes(n))
  t.same(left, [], 'no temp dir left beside dest')
}

// [name, the image's entries, a pattern the message must match (naming the entry)]
const unsafe: Array<[string, Entry[], RegExp]> = [
  ['SETUID FILE', [file('bin/su', '#!/bin/sh\n', 0o4755)], /bin\/su has the setuid bit/],
  ['SETGID FILE', [file('bin/sg', '#!/bin/sh\n', 0o2711)], /bin\/sg has the setgid bit/],
  [
    'CHARACTER DEVICE',
    [{ header: { name: 'dev/mem', type: 'character-device', devmajor: 1, devminor: 1 } }],
    /dev\/mem is a character device/,
  ],
  [
    'BLOCK DEVICE',
    [{ header: { name: 'sda', type: 'block-device', devmajor: 8, devminor: 0, mode: 0o660 } }],
    /sda is a block device/,
  ],
  ['FIFO', [{ header: { name: 'run/pipe', type: 'fifo', mode: 0o644 } }], /run\/pipe is a fifo/],
  ['ESCAPING SYMLINK', [symlink('etc', '../../../etc')], /symlink etc -> ".*" leads outside/],
  ['ABSOLUTE SYMLINK', [symlink('passwd', '/etc/passwd')], /symlink passwd -> .* leads outside/],
  [
    'SYMLINK THROUGH A SYMLINK',
    [
      { header: { name: 'a/b', type: 'directory' } },
      symlink('a/b/c', '../..'),
      symlink('x', 'a/b/c/..'),
    ],
    /symlink x -> "a\/b\/c\/\.\." leads outside/,
  ],
  ['SYMLINK LOOP', [symlink('l1', 'l2'), symlink('l2', 'l1')], /symlink l1 .* loops/],
]

t.test('unsafe images are refused before anything is unpacked', async (t) => {
  const dir = t.testdir({ images: {}, nodes: {} })
  for (const [name, entries, named] of unsafe) {
    const slug = join(dir, 'images', `${name}.sqfs`)
    await craft(slug, [file('Procfile', 'web: x\n'), ...entries])
    const dest = join(dir, 'nodes', name)
    await t.rejects(
      unpackSlug(slug, dest),
      { code: 'E_SLUG', message: new RegExp(`is unsafe: .*${named.source}`) },
      name,
    )
    t.notOk(existsSync(dest), `${name}: no dest`)
  }
  t.same(readdirSync(join(dir, 'nodes')), [], 'no dest, no temp dir')
})

t.test('a ".." entry is refused (image patched by hand: no tool writes one)', async (t) => {
  const dir = t.testdir({ node: {} })
  // A random-looking sibling name keeps lz4 from shrinking the directory table, so it is
  // stored as is and the name "QQ" can be found and patched in place.
  let noise = ''
  for (let i = 0; noise.length < 240; i++) {
    noise += createHash('sha512').update(`noise ${i}`).digest('base64').replace(/[/+=]/g, '')
  }
  const good = await craft(
    join(dir, 'good.sqfs'),
    [
      { header: { name: 'QQ', type: 'directory', mode: 0o755 } },
      file('QQ/gotcha', 'escaped\n'),
      file(noise.slice(0, 240), 'noise\n'),
    ],
    'lz4',
  )
  const bytes = readFileSync(good)
  const marker = Buffer.from([1, 0, 0x51, 0x51]) // a dir entry: name size - 1 = 1, then "QQ"
  const at = bytes.indexOf(marker)
  t.ok(at > 0 && bytes.indexOf(marker, at + 1) === -1, 'the entry to patch is there, once')
  bytes.write('..', at + 2, 'latin1')
  const evil = join(dir, 'evil.sqfs')
  writeFileSync(evil, bytes)

  const dest = join(dir, 'node', 'app')
  await t.rejects(unpackSlug(evil, dest), { code: 'E_SLUG', message: /is unsafe: entry "\.\."/ })
  assertUntouched(t, dest)
  t.notOk(existsSync(join(dir, 'node', 'gotcha')), 'nothing written outside')
  t.notOk(existsSync(join(dir, 'gotcha')), 'nothing written outside')
})

t.test('a socket is refused (image made with gensquashfs)', async (t) => {
  const dir = t.testdir({
    'pack.txt': 'file /Procfile 0644 0 0 Procfile\nsock /control.sock 0755 0 0\n',
    Procfile: 'web: x\n',
    node: {},
  })
  const slug = join(dir, 'sock.sqfs')
  await execa('gensquashfs', ['--quiet', '--pack-file', join(dir, 'pack.txt'), slug])
  const dest = join(dir, 'node', 'app')
  await t.rejects(unpackSlug(slug, dest), {
    code: 'E_SLUG',
    message: /is unsafe: entry "control\.sock".*socket/,
  })
  assertUntouched(t, dest)
})

t.test('a truncated, garbage or missing image is refused with the tool message', async (t) => {
  const dir = t.testdir({
    app: { Procfile: 'web: x\n', 'random.bin': randomBytes(200_000).toString('base64') },
  })
  const { path } = await packSlug(join(dir, 'app'), join(dir, 'slugs'))
  const node = join(dir, 'node')
  mkdirSync(node)

  // Cut inside the image proper: the superblock's bytes_used (u64 at 40), not the padding after.
  const whole = readFileSync(path)
  const used = Number(whole.readBigUInt64LE(40))
  t.ok(used > 100_000 && used <= whole.length, `bytes_used ${used} of ${whole.length}`)
  const truncated = join(dir, 'truncated.sqfs')
  writeFileSync(truncated, whole.subarray(0, Math.floor(used / 2)))
  await t.rejects(unpackSlug(truncated, join(node, 'a')), {
    code: 'E_SLUG',
    message: /corrupt or truncated: sqfs2tar said: /,
  })
  const garbage = join(dir, 'garbage.sqfs')
  writeFileSync(garbage, randomBytes(8192))
  await t.rejects(unpackSlug(garbage, join(node, 'b')), {
    code: 'E_SLUG',
    message: /corrupt or truncated: sqfs2tar said: /,
  })
  await t.rejects(unpackSlug(join(dir, 'missing.sqfs'), join(node, 'c')), {
    code: 'E_SLUG',
    message: /cannot be read: .*ENOENT/,
  })
  t.same(readdirSync(node), [], 'no dest, no temp dir')

  await unpackSlug(path, join(node, 'good'))
  t.equal(readFileSync(join(node, 'good/Procfile'), 'utf8'), 'web: x\n', 'the intact slug unpacks')
})

t.test('an existing dest is left alone', async (t) => {
  const dir = t.testdir({ app: { Procfile: 'web: new\n' }, dest: { marker: 'old\n' } })
  const { path } = await packSlug(join(dir, 'app'), join(dir, 'slugs'))
  const dest = join(dir, 'dest')
  const before = statSync(dest)
  await unpackSlug(path, dest)
  t.same(readdirSync(dest), ['marker'])
  t.equal(readFileSync(join(dest, 'marker'), 'utf8'), 'old\n')
  t.equal(statSync(dest).ino, before.ino)
  t.same(readdirSync(dir).sort(), ['app', 'dest', 'slugs'], 'no temp dir made')
  await unpackSlug(join(dir, 'no-such.sqfs'), dest)
  t.pass('not even the slug is looked at')
})

t.test('modes end up usable by an unprivileged app user, owned by the unpacker', async (t) => {
  const dir = t.testdir({ node: {} })
  const slug = await craft(join(dir, 'modes.sqfs'), [
    { header: { name: 'locked', type: 'directory', mode: 0o000, uid: 1234, gid: 1234 } },
    file('locked/inside', 'in\n', 0o600),
    { header: { name: 'private', type: 'directory', mode: 0o700 } },
    file('private/run', '#!/bin/sh\n', 0o700),
    file('group-exec', '#!/bin/sh\n', 0o750),
    file('read-only', 'ro\n', 0o400),
    { header: { name: 'sticky', type: 'directory', mode: 0o1777 } },
  ])
  const dest = join(dir, 'node', 'app')
  await unpackSlug(slug, dest)
  const mode = (p: string): string => (lstatSync(join(dest, p)).mode & 0o7777).toString(8)
  t.same(
    [
      '.',
      'locked',
      'locked/inside',
      'private',
      'private/run',
      'group-exec',
      'read-only',
      'sticky',
    ].map((p) => `${p} ${mode(p)}`),
    [
      '. 755',
      'locked 755',
      'locked/inside 644',
      'private 755',
      'private/run 755',
      'group-exec 755',
      'read-only 644',
      'sticky 755',
    ],
  )
  t.equal(lstatSync(join(dest, 'locked')).uid, process.getuid?.(), 'not chowned to the image uid')
  t.same(readdirSync(join(dir, 'node')), ['app'], 'no temp dir left')
})

t.test('concurrent unpacks of one slug into one dest: one wins, all succeed', async (t) => {
  const dir = t.testdir({ app: { Procfile: 'web: x\n', lib: { 'a.js': 'a\n' } } })
  const { path, sha256 } = await packSlug(join(dir, 'app'), join(dir, 'slugs'))
  const dest = join(dir, 'unpacked', sha256)
  await Promise.all([1, 2, 3].map(() => unpackSlug(path, dest)))
  t.same(readdirSync(dest).sort(), ['Procfile', 'lib'])
  t.same(readdirSync(join(dir, 'unpacked')), [sha256], 'no temp dirs left')
})
