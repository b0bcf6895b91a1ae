import t from 'tap'
import { isAppError } from '../errors.js'
import { isHandlerType, parseProcfile } from './procfile.js'

const good: [string, string, Record<string, string>][] = [
  ['EMPTY FILE', '', {}],
  ['ONLY COMMENTS AND BLANKS', '# a comment\n\n   \n  # indented comment\n', {}],
  ['ONE WEB', 'web: node server.js\n', { web: 'node server.js' }],
  ['NO TRAILING NEWLINE', 'web: node server.js', { web: 'node server.js' }],
  [
    'SEVERAL TYPES IN ORDER',
    'web: bin/web\nworker: bin/worker --queue a\nhandler: python3 handler.py\n',
    { web: 'bin/web', worker: 'bin/worker --queue a', handler: 'python3 handler.py' },
  ],
  ['CRLF LINE ENDINGS', 'web: a\r\nworker: b\r\n', { web: 'a', worker: 'b' }],
  ['SPACES AROUND', '  web  :   node   app.js  \n', { web: 'node   app.js' }],
  ['NO SPACE AFTER COLON', 'web:node app.js', { web: 'node app.js' }],
  [
    'COLONS AND HASHES IN THE COMMAND',
    'web: env A=b:c node app.js # not a comment here',
    { web: 'env A=b:c node app.js # not a comment here' },
  ],
  ['DIGITS _ AND -', 'chat-handler: x\nworker_2: y\n', { 'chat-handler': 'x', worker_2: 'y' }],
]

for (const [name, text, want] of good) {
  t.same(parseProcfile(text), want, name)
}

const bad: [string, string, number][] = [
  ['MISSING COLON', 'web: ok\nworker bin/worker\n', 2],
  ['EMPTY COMMAND', 'web:\n', 1],
  ['EMPTY COMMAND WITH SPACES', '# c\nweb:    \n', 2],
  ['DUPLICATE TYPE', 'web: a\nworker: b\nweb: c\n', 3],
  ['SPACE IN TYPE', 'my web: a\n', 1],
  ['DOT IN TYPE', 'web.1: a\n', 1],
  ['EMPTY TYPE', ': a\n', 1],
  ['COLON ONLY IN THE COMMAND', 'node app.js --port=a:b', 1],
]

for (const [name, text, lineNo] of bad) {
  t.test(name, async (t) => {
    let err: unknown
    try {
      parseProcfile(text)
    } catch (e) {
      err = e
    }
    t.ok(isAppError(err, 'E_BUILD'), 'E_BUILD')
    const message = (err as Error).message
    t.match(message, `Procfile line ${lineNo}:`, 'names the line number')
    const line = text.split('\n')[lineNo - 1]!.replace(/\r$/, '')
    t.ok(message.includes(`${lineNo} | ${line}`), 'shows the line')
    t.match(message, /e\.g\.|delete the line|keep one/, 'says how to fix it')
  })
}

t.test('handler types', async (t) => {
  const table: [string, boolean][] = [
    ['handler', true],
    ['chat-handler', true],
    ['apihandler', true],
    ['web', false],
    ['handlers', false],
    ['handler-2', false],
  ]
  for (const [type, want] of table) t.equal(isHandlerType(type), want, type)
})
