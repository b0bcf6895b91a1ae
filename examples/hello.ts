/**
 * @module The smallest Bareku handler: answers every request with "Hello from Bareku" and drains
 * on SIGTERM. Run: BAREKU_HANDLER_SEND_SPEC=tcp://127.0.0.1:9997
 * BAREKU_HANDLER_RECV_SPEC=tcp://127.0.0.1:9996 npx tsx examples/hello.ts (see README.md).
 */
import { connectHandler, handlerOptionsFromEnv } from '../lib/handler/index.js'
import { createLogger, parseLevel } from '../lib/log.js'

const log = createLogger('hello', parseLevel(process.env.LOG_LEVEL))
let handler
try {
  handler = await connectHandler({ ...handlerOptionsFromEnv(process.env), log })
} catch (err) {
  log.fatal({ err }, 'cannot start')
  process.exit(1)
}
handler.drainOnSignal({ timeoutMs: 5000 })
log.info({ senderId: handler.senderId }, 'ready')

for await (const req of handler) {
  if (req.isDisconnect) continue
  await handler.replyHttp(req, 200, { 'Content-Type': 'text/plain' }, 'Hello from Bareku\n')
}
