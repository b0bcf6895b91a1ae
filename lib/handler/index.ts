/**
 * @module The handler library's public API: connect to a Bareku (or Mongrel2) frontend, iterate
 * requests, reply. See handler.ts for the model and examples/ for two small apps.
 */
export {
  connectHandler,
  handlerOptionsFromEnv,
  toIncomingRequest,
  type DrainResult,
  type Handler,
  type HandlerEndpoints,
  type HandlerOptions,
  type IncomingRequest,
  type ReplyHttpOptions,
  type ResponseStream,
  type Target,
  type Targets,
} from './handler.js'
export {
  buildHttpResponse,
  buildStreamHead,
  buildWebSocketAccept,
  connectionAfter,
  encodeChunk,
  firstHeader,
  LAST_CHUNK,
  statusLine,
  type ResponseHeaders,
} from './http.js'
export { OPCODE } from '../protocol/websocket.js'
