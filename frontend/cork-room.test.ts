/**
 * The cork room's arithmetic: what fits, what waits for a fresh cork, how data is split, and
 * which head lines are too long for any cork.
 */
import t from 'tap'
import type { ResponseHead } from '../lib/protocol/http-response.js'
import {
  CORK_ROOM,
  corkIsFresh,
  freshCork,
  lineTooLong,
  MAX_LINE_BYTES,
  takeCork,
  takePiece,
} from './cork-room.js'

t.test('small writes share a cork until it is full', async (t) => {
  freshCork()
  t.ok(corkIsFresh())
  let n = 0
  while (takeCork(1000)) n++
  t.equal(n, Math.floor(CORK_ROOM / 1016), 'each write counts with what uWS adds to it')
  t.notOk(corkIsFresh())
  t.notOk(takeCork(1000), 'a full cork takes nothing more')
  freshCork()
  t.ok(takeCork(1000), 'a fresh one does')
})

t.test('a write larger than a whole cork never fits', async (t) => {
  freshCork()
  t.notOk(takeCork(CORK_ROOM), 'not even in a fresh cork')
  t.ok(corkIsFresh(), 'and takes no room')
})

t.test('data is cut into pieces that fit, and small leftovers wait', async (t) => {
  freshCork()
  const first = takePiece(64 * 1024)
  t.ok(first > 15_000 && first < CORK_ROOM, `a fresh cork takes ${first} bytes of 64 KiB`)
  t.equal(takePiece(64 * 1024), 0, 'then nothing')
  freshCork()
  t.equal(takePiece(100), 100, 'a small chunk whole')
  const rest = takePiece(64 * 1024)
  t.ok(rest > 0 && rest < first, 'the rest of the cork')
  freshCork()
  takeCork(CORK_ROOM - 600)
  t.equal(takePiece(4000), 0, 'under 1 KiB of room: the piece waits for a fresh cork')
  t.equal(takePiece(300), 300, 'unless the whole chunk fits')
})

t.test('a head line that no cork can take is named', async (t) => {
  const head = (reason: string, headers: [string, string][]): ResponseHead => ({
    status: 200,
    reason,
    version: 'HTTP/1.1',
    headers,
    framing: 'length',
    keepAlive: true,
  })
  const long = 'a'.repeat(MAX_LINE_BYTES)
  t.equal(lineTooLong(head('OK', [['x', 'y']])), undefined)
  t.equal(lineTooLong(head('OK', [['x', long.slice(1)]])), undefined, 'at the limit')
  t.equal(
    lineTooLong(
      head('OK', [
        ['x', 'y'],
        ['x-big', long],
      ]),
    ),
    'x-big',
  )
  t.equal(lineTooLong(head(long + 'b', [])), 'reason')
})
