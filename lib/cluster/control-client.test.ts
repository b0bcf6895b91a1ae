import t, { type Test } from 'tap'
import { Router } from 'zeromq'
import { encodeControlReply, parseControlRequest } from '../protocol/control.js'
import { AppError } from '../errors.js'
import { callMaster, masterEndpoints, reachable } from './control-client.js'

/** A ROUTER that answers each request with `answer(cmd, args)`, or never when it returns null. */
async function fakeMaster(t: Test, answer: (cmd: string) => Buffer | null): Promise<string> {
  const sock = new Router({ linger: 0 })
  await sock.bind('tcp://127.0.0.1:*')
  t.teardown(() => sock.close())
  void (async () => {
    for await (const [id, empty, body] of sock) {
      const reply = answer(parseControlRequest(body!).cmd)
      if (reply !== null) await sock.send([id!, empty!, reply])
    }
  })().catch(() => {})
  return sock.lastEndpoint!
}

t.test('a call returns the result or rethrows the coded error', async (t) => {
  const endpoint = await fakeMaster(t, (cmd) =>
    cmd === 'apps'
      ? encodeControlReply({ result: ['a'] })
      : encodeControlReply({ error: new AppError('E_APP', `no ${cmd}`) }),
  )
  t.same(await callMaster(endpoint, 'apps'), ['a'])
  await t.rejects(callMaster(endpoint, 'nope'), { code: 'E_APP', message: 'no nope' })
})

t.test('no answer in time is E_CONTROL naming the master', async (t) => {
  const endpoint = await fakeMaster(t, () => null)
  await t.rejects(callMaster(endpoint, 'apps', {}, { timeoutMs: 100 }), {
    code: 'E_CONTROL',
    message: new RegExp(`no answer from the master at ${endpoint}`),
  })
})

t.test('endpoints are made reachable through the control host', async (t) => {
  t.equal(reachable('tcp://*:7071', 'tcp://10.0.0.1:7070'), 'tcp://10.0.0.1:7071')
  t.equal(reachable('tcp://0.0.0.0:7071', 'tcp://h:7070'), 'tcp://h:7071')
  t.equal(reachable('tcp://127.0.0.1:7071', 'tcp://h:7070'), 'tcp://127.0.0.1:7071')
  const endpoint = await fakeMaster(t, () =>
    encodeControlReply({
      result: { publish: 'tcp://0.0.0.0:1', stats: 'tcp://127.0.0.1:2', slugs: 'tcp://*:3' },
    }),
  )
  t.same(await masterEndpoints(endpoint), {
    control: endpoint,
    publish: 'tcp://127.0.0.1:1',
    stats: 'tcp://127.0.0.1:2',
    slugs: 'tcp://127.0.0.1:3',
  })
  const old = await fakeMaster(t, () => encodeControlReply({ result: {} }))
  await t.rejects(masterEndpoints(old), { code: 'E_CONTROL' })
})
