/**
 * @module pruneUnpacked on a real directory: slugs in use stay, unused ones go only after
 * unusedMs without a use, a slug used again is kept, old temp dirs of a crashed unpack go, and
 * anything else in the directory is left alone.
 */
import { existsSync, mkdirSync, utimesSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pino } from 'pino'
import t from 'tap'
import { pruneUnpacked } from './prune.js'

const log = pino({ level: 'silent' })
const A = 'a'.repeat(64)
const B = 'b'.repeat(64)
const C = 'c'.repeat(64)

t.test('unused slugs go after unusedMs; used ones, and other files, stay', async (t) => {
  const dir = t.testdir({
    [A]: { 'app.py': '' },
    [B]: { 'app.py': '' },
    [C]: { 'app.py': '' },
    'keep-me.txt': '',
  })
  const tracker = new Map<string, number>()
  const prune = (inUse: string[], now: number) =>
    pruneUnpacked({ dir, inUse: new Set(inUse), unusedMs: 1000, tracker, log, now })

  t.same(await prune([A], 10_000), [], 'nothing goes the first time it is seen unused')
  t.same(await prune([A, C], 10_500), [], 'C is in use again')
  t.same(await prune([A], 11_000), [B], 'B went unused 1000 ms ago')
  t.notOk(existsSync(join(dir, B)))
  t.ok(existsSync(join(dir, C)), 'C was unused only from 11000')
  t.same(await prune([A], 12_000), [C])
  t.ok(existsSync(join(dir, A)))
  t.ok(existsSync(join(dir, 'keep-me.txt')), 'not a slug: left alone')
  t.same([...tracker.keys()], [], 'nothing tracked that is gone')
})

t.test('the temp dir of a crashed unpack goes once it is old', async (t) => {
  const dir = t.testdir({})
  const temp = join(dir, `.${A}.4242.deadbeef.tmp`)
  mkdirSync(temp)
  writeFileSync(join(temp, 'half'), 'x')
  const tracker = new Map<string, number>()
  const now = Date.now()
  const prune = () => pruneUnpacked({ dir, inUse: new Set(), unusedMs: 60_000, tracker, log, now })
  t.same(await prune(), [], 'a fresh one may be an unpack in progress')
  utimesSync(temp, new Date(now - 120_000), new Date(now - 120_000))
  t.same(await prune(), [`.${A}.4242.deadbeef.tmp`])
  t.notOk(existsSync(temp))
})

t.test('a directory that does not exist yet is nothing to prune', async (t) => {
  const tracker = new Map<string, number>()
  t.same(
    await pruneUnpacked({
      dir: join(t.testdir({}), 'nope'),
      inUse: new Set(),
      unusedMs: 1,
      tracker,
      log,
    }),
    [],
  )
})
