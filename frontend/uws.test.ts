import t from 'tap'
import uWS, { isNative, type us_listen_socket } from './uws.js'

t.test('the native uWebSockets.js addon is loaded, not the JS fallback', async (t) => {
  t.ok(isNative)
  t.type(uWS.App, 'function')
})

t.test('a uWS app on port 0 answers a real HTTP client', async (t) => {
  const app = uWS.App()
  app.get('/hello/:name', (res, req) => {
    const name = req.getParameter(0)
    res.cork(() => {
      res.writeStatus('200 OK').writeHeader('content-type', 'text/plain').end(`hi ${name}`)
    })
  })
  const listen = await new Promise<us_listen_socket>((resolve, reject) => {
    app.listen('127.0.0.1', 0, (ls) => (ls ? resolve(ls) : reject(new Error('listen failed'))))
  })
  t.teardown(() => {
    uWS.us_listen_socket_close(listen)
    app.close()
  })
  const port = uWS.us_socket_local_port(listen)
  const res = await fetch(`http://127.0.0.1:${port}/hello/world`)
  t.equal(res.status, 200)
  t.equal(await res.text(), 'hi world')
})
