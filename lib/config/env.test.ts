/** @module The shared environment readers: defaults, good values, and each bad one's message. */
import t from 'tap'
import { flagSetting, homeSetting, levelSetting, positiveIntSetting } from './env.js'

t.test('BAREKU_HOME', async (t) => {
  t.equal(homeSetting({ BAREKU_HOME: '/srv/bk' }), '/srv/bk')
  t.equal(homeSetting({}, true), '/var/lib/bareku', 'root')
  t.equal(homeSetting({ HOME: '/home/ann' }, false), '/home/ann/.bareku', 'a user')
  t.throws(() => homeSetting({ BAREKU_HOME: 'rel/dir' }), {
    code: 'E_CONFIG',
    message:
      'BAREKU_HOME must be an absolute path, got "rel/dir" (e.g. BAREKU_HOME=/var/lib/bareku)',
  })
})

t.test('positive integers', async (t) => {
  t.equal(positiveIntSetting({}, 'N_MS', 250), 250, 'unset: the default')
  t.equal(positiveIntSetting({ N_MS: '' }, 'N_MS', 250), 250, 'empty: the default')
  t.equal(positiveIntSetting({ N_MS: '40' }, 'N_MS', 250), 40)
  for (const bad of ['0', '-1', '1.5', 'often', '9007199254740993']) {
    t.throws(
      () => positiveIntSetting({ N_MS: bad }, 'N_MS', 250),
      {
        code: 'E_CONFIG',
        message: `N_MS must be a positive integer, got "${bad}" (e.g. N_MS=250)`,
      },
      bad,
    )
  }
})

t.test('flags and log levels', async (t) => {
  t.equal(flagSetting({}, 'F'), false)
  t.equal(flagSetting({ F: '0' }, 'F'), false)
  t.equal(flagSetting({ F: '1' }, 'F'), true)
  t.throws(() => flagSetting({ F: 'yes' }, 'F'), {
    message: 'F must be 0 or 1, got "yes" (e.g. F=1)',
  })
  t.equal(levelSetting({ LOG_LEVEL: 'debug' }), 'debug')
  t.throws(() => levelSetting({ LOG_LEVEL: 'loud' }), { code: 'E_CONFIG', message: /LOG_LEVEL/ })
})
