import t, { type Test } from 'tap'
import { MAX_CONN_ID } from '../lib/protocol/mongrel2.js'
import { ConnTable, IdMap } from './connections.js'

/** Runs the same operations on an IdMap and a Map; they must agree after every step. */
function against(t: Test, ops: number, pick: () => number, rand: (n: number) => number): void {
  const ids = new IdMap<number>()
  const model = new Map<number, number>()
  let wrong = 0
  for (let step = 0; step < ops; step++) {
    const id = pick()
    if (rand(3) === 0) {
      if (ids.delete(id) !== model.delete(id)) wrong++
    } else {
      ids.set(id, step)
      model.set(id, step)
    }
    if (ids.get(id) !== model.get(id) || ids.size !== model.size) wrong++
  }
  for (const [id, v] of model) if (ids.get(id) !== v) wrong++
  t.equal(wrong, 0, 'agrees with a Map at every step')
  t.same(
    ids.ids(),
    [...model.keys()].sort((a, b) => a - b),
  )
}

t.test('IdMap behaves as a Map of ids', async (t) => {
  let seed = 11
  const rand = (n: number): number => {
    seed = (seed * 1103515245 + 12345) % 2147483648
    return seed % n
  }
  // Few ids, many collisions on the low bits (multiples of the table size share a slot).
  against(t, 20_000, () => 1 + 64 * rand(40), rand)
  // Consecutive ids in a moving window, as requests come and go.
  let base = 1
  against(t, 50_000, () => (rand(50) === 0 ? base++ : base + rand(80)), rand)
  // Anything up to the largest id.
  against(t, 20_000, () => 1 + rand(MAX_CONN_ID), rand)
})

t.test('IdMap clear and values', async (t) => {
  const m = new IdMap<string>()
  for (let id = 1; id <= 300; id++) m.set(id * 7, `v${id}`)
  t.equal(m.size, 300)
  t.same(m.values().slice(0, 3), ['v1', 'v2', 'v3'], 'values by ascending id')
  m.clear()
  t.equal(m.size, 0)
  t.equal(m.get(7), undefined)
  m.set(7, 'again')
  t.equal(m.get(7), 'again')
})

t.test('ConnTable: fresh ids, skipping those in use after a wrap', async (t) => {
  const table = new ConnTable<string>()
  const a = table.add('a')
  const b = table.add('b')
  t.same([a, b], [1, 2])
  table.delete(a)
  t.equal(table.get(a), undefined)
  t.equal(table.get(b), 'b')
  t.equal(table.size, 1)
  table.set(b, 'b2')
  t.same([...table.values()], ['b2'])
  // Walk to the wrap: ids in use are skipped, freed ones reused.
  const internals = table as unknown as { next: number }
  internals.next = MAX_CONN_ID
  t.equal(table.add('last'), MAX_CONN_ID)
  t.equal(table.add('wrapped'), 1, 'wraps to 1 (free again)')
  t.equal(table.add('skip'), 3, '2 is still in use')
})
