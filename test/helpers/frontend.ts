/**
 * @module Starting the real frontend process in tests: writes an m2sh config into a test dir,
 * runs `bin/bareku frontend` listening on 127.0.0.1:0 with handler sockets on `tcp://127.0.0.1:*`,
 * and reads the bound port and handler endpoints from its "ready" log line.
 */
import { writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { join } from 'node:path'
import { logRecord, REPO, startProcess, type Proc } from './process.js'

export interface HandlerEndpoints {
  sendIdent: string
  sendSpec: string
  recvSpec: string
}

export interface RunningFrontend {
  proc: Proc
  port: number
  url: string
  /** Bound endpoints by send_ident. */
  handlers: Map<string, HandlerEndpoints>
  /** Environment for a handler process connecting to the handler with this send_ident. */
  handlerEnv(sendIdent: string): NodeJS.ProcessEnv
}

/** Starts the frontend on an m2sh config text written to `dir/frontend.conf`. */
export async function startFrontendProcess(
  dir: string,
  conf: string,
  env: NodeJS.ProcessEnv = {},
): Promise<RunningFrontend> {
  const file = join(dir, 'frontend.conf')
  writeFileSync(file, conf)
  const proc = startProcess(join(REPO, 'bin/bareku'), ['frontend', '--config', file], {
    env: { BAREKU_FRONTEND_LISTEN: '127.0.0.1:0', ...env },
    cwd: dir,
  })
  const line = await proc.waitFor((l) => logRecord(l)?.msg === 'ready', 30_000)
  const endpoints = logRecord(line)!.endpoints as {
    servers: { port: number; handlers: HandlerEndpoints[] }[]
  }
  const server = endpoints.servers[0]!
  const handlers = new Map(server.handlers.map((h) => [h.sendIdent, h]))
  return {
    proc,
    port: server.port,
    url: `http://127.0.0.1:${server.port}`,
    handlers,
    handlerEnv(sendIdent) {
      const h = handlers.get(sendIdent)
      if (!h) throw new Error(`no handler ${sendIdent} in the frontend's ready line`)
      return { BAREKU_HANDLER_SEND_SPEC: h.sendSpec, BAREKU_HANDLER_RECV_SPEC: h.recvSpec }
    },
  }
}

/** Writes raw bytes to the frontend and collects what comes back until the server closes or `until` holds. */
export function rawRequest(
  port: number,
  bytes: Buffer | string,
  until?: (got: Buffer) => boolean,
  timeoutMs = 10_000,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    const sock = connect(port, '127.0.0.1', () => sock.write(bytes))
    const timer = setTimeout(() => {
      sock.destroy()
      reject(
        new Error(
          `no complete answer in ${timeoutMs} ms; got ${JSON.stringify(Buffer.concat(chunks).toString('latin1').slice(0, 300))}`,
        ),
      )
    }, timeoutMs)
    const done = (): void => {
      clearTimeout(timer)
      sock.destroy()
      resolve(Buffer.concat(chunks))
    }
    sock.on('data', (d) => {
      chunks.push(d)
      if (until?.(Buffer.concat(chunks))) done()
    })
    sock.on('close', done)
    sock.on('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
  })
}
