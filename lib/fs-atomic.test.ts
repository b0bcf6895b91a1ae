import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { isAtomicTemp, tempPathFor, writeFileAtomic, writeFileAtomicSync } from './fs-atomic.js'

t.test('writes a new file and replaces an existing one, leaving no temp file', async (t) => {
  const dir = t.testdir({ 'old.json': 'old\n' })
  await writeFileAtomic(join(dir, 'new.json'), 'new\n')
  await writeFileAtomic(join(dir, 'old.json'), Buffer.from('replaced\n'))
  t.equal(readFileSync(join(dir, 'new.json'), 'utf8'), 'new\n')
  t.equal(readFileSync(join(dir, 'old.json'), 'utf8'), 'replaced\n')
  writeFileAtomicSync(join(dir, 'sync.json'), 'sync\n')
  writeFileAtomicSync(join(dir, 'sync.json'), 'sync again\n')
  t.equal(readFileSync(join(dir, 'sync.json'), 'utf8'), 'sync again\n')
  t.same(readdirSync(dir).sort(), ['new.json', 'old.json', 'sync.json'], 'only the files')
})

t.test('mode applies to the new file', async (t) => {
  const dir = t.testdir({})
  await writeFileAtomic(join(dir, 'secret'), 'x', { mode: 0o600 })
  writeFileAtomicSync(join(dir, 'secret-sync'), 'x', { mode: 0o600 })
  t.equal(statSync(join(dir, 'secret')).mode & 0o777, 0o600)
  t.equal(statSync(join(dir, 'secret-sync')).mode & 0o777, 0o600)
})

t.test('a failure leaves neither a temp file nor a changed target', async (t) => {
  const dir = t.testdir({ 'a-dir': {} })
  // Renaming a file over a directory fails after the temp file was written.
  await t.rejects(writeFileAtomic(join(dir, 'a-dir'), 'x'), { code: 'EISDIR' })
  t.throws(() => writeFileAtomicSync(join(dir, 'a-dir'), 'x'), { code: 'EISDIR' })
  t.same(readdirSync(dir), ['a-dir'], 'the temp files were removed')
  await t.rejects(writeFileAtomic(join(dir, 'missing', 'f'), 'x'), { code: 'ENOENT' })
})

t.test('a reader never sees a partial file while writers race', async (t) => {
  const dir = t.testdir({})
  const file = join(dir, 'f.json')
  const contents = ['a', 'b', 'c', 'd'].map((c) => JSON.stringify({ fill: c.repeat(200_000) }))
  await writeFileAtomic(file, contents[0]!)
  let reads = 0
  let partial = 0
  const writers = Promise.all(
    contents.flatMap((c) => [1, 2, 3].map(() => writeFileAtomic(file, c))),
  )
  let done = false
  void writers.then(() => (done = true))
  while (!done) {
    if (!contents.includes(readFileSync(file, 'utf8'))) partial++
    reads++
    await new Promise((r) => setImmediate(r))
  }
  t.ok(reads > 0, `read ${reads} times while writing`)
  t.equal(partial, 0, 'every read saw one whole version')
  t.same(readdirSync(dir), ['f.json'], 'no temp file left')
})

t.test('temp names are hidden, in the same directory, and recognisable', async (t) => {
  const tmp = tempPathFor('/srv/run/worker.json')
  t.match(tmp, /^\/srv\/run\/\.worker\.json\.\d+\.[0-9a-f]{8}\.tmp$/)
  t.ok(isAtomicTemp(tmp))
  t.notOk(isAtomicTemp('/srv/run/worker.json'))
  t.not(tempPathFor('/x/y'), tempPathFor('/x/y'), 'unique per call')
})
