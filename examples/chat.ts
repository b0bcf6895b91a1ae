/**
 * @module A WebSocket chat handler: accepts every handshake, broadcasts each text message to every
 * joined connection (one message per 128 ids), answers pings, closes on close frames, and forgets
 * ids on disconnect. Plain HTTP requests get a 426. Run it like hello.ts (see README.md).
 */
import { connectHandler, handlerOptionsFromEnv, OPCODE } from '../lib/handler/index.js'
import { createLogger, parseLevel } from '../lib/log.js'
import { parseClosePayload } from '../lib/protocol/websocket.js'

const log = createLogger('chat', parseLevel(process.env.LOG_LEVEL))
let handler
try {
  handler = await connectHandler({ ...handlerOptionsFromEnv(process.env), log })
} catch (err) {
  log.fatal({ err }, 'cannot start')
  process.exit(1)
}
handler.drainOnSignal({ timeoutMs: 5000 })
log.info({ senderId: handler.senderId }, 'ready')

const joined = new Set<number>()

// The close code to echo: the client's own, 1000 when it sent none, 1002 when it sent a bad one.
function closeCode(payload: Buffer): number {
  try {
    return parseClosePayload(payload).code ?? 1000
  } catch {
    return 1002
  }
}

for await (const req of handler) {
  if (req.isDisconnect) {
    joined.delete(req.connId)
  } else if (req.isWebSocketHandshake) {
    await handler.acceptWebSocket(req)
    joined.add(req.connId)
    log.info({ conn: req.connId, members: joined.size }, 'joined')
  } else if (req.isWebSocket) {
    switch (req.wsOpcode) {
      case OPCODE.TEXT:
        // Relay the bytes as they came: Mongrel2 has already reassembled fragments.
        await handler.sendFrame(joined, OPCODE.TEXT, req.body)
        break
      case OPCODE.PING:
        await handler.pong(req)
        break
      case OPCODE.CLOSE:
        joined.delete(req.connId)
        await handler.closeWebSocket(req, closeCode(req.body))
        break
      default:
        break
    }
  } else {
    await handler.replyHttp(
      req,
      426,
      { 'Content-Type': 'text/plain', Upgrade: 'websocket' },
      'This is a WebSocket chat: connect with a WebSocket client.\n',
    )
  }
}
