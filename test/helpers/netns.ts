/**
 * @module Several machines on one, for multi-node tests (root only): network namespaces joined
 * by a bridge, each host with its own address and, for the processes run in it, its own hostname.
 *
 *   bkSUFFIX-hub:  br0 ─┬─ v1 ═══ eth0  bkSUFFIX-master  10.A.B.1/24
 *                       ├─ v2 ═══ eth0  bkSUFFIX-node1   10.A.B.2/24
 *                       └─ v3 ═══ eth0  bkSUFFIX-node2   10.A.B.3/24   (veth pairs, lo up in each)
 *
 * SUFFIX is random and 10.A.B.0/24 too, so two runs never share a name. A command runs in a
 * host as `ip netns exec NS unshare --uts sh -c 'hostname HOST && exec CMD'`: every step execs,
 * so the pid a test holds is the command's own. `cut` sets the hub side of a host's veth down
 * (its cable pulled), `heal` sets it up again. Everything is deleted in teardown, and also when
 * the test process exits without one (a timeout), so no namespace outlives a run.
 */
import { execFile, execFileSync } from 'node:child_process'
import { randomBytes, randomInt } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Test } from 'tap'
import { startProcess, type Proc } from './process.js'

export interface NetHost {
  /** The host's name: its namespace's suffix and the hostname of what runs in it. */
  name: string
  ns: string
  addr: string
  /** The hub side of its veth pair (what `cut` sets down). */
  hubIf: string
}

export interface Net {
  hub: string
  hosts: Record<string, NetHost>
  /** Starts `cmd args` in `host`'s namespace with `host` as its hostname (stopped in teardown). */
  run(t: Test, host: string, cmd: string, args: string[], env?: NodeJS.ProcessEnv): Proc
  /** Runs `cmd args` to completion in `host`'s namespace. */
  exec(
    host: string,
    cmd: string,
    args: string[],
  ): Promise<{ code: number; stdout: string; stderr: string }>
  /** Pulls `host`'s cable: the hub side of its veth goes down. */
  cut(host: string): void
  /** Plugs it back in. */
  heal(host: string): void
}

const live = new Set<string>()

function ip(args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] })
}

function deleteNs(names: Iterable<string>): void {
  for (const ns of [...names]) {
    try {
      ip(['netns', 'del', ns])
    } catch {
      // already gone
    }
    live.delete(ns)
  }
}
process.on('exit', () => deleteNs(live))

/**
 * Why namespaces cannot be made here (not root, no `ip`, no netns support), or undefined when
 * they can: a probe namespace is created and deleted to find out.
 */
export function netnsProblem(): string | undefined {
  if (process.getuid?.() !== 0) return 'network namespaces need root (run the tests as root)'
  const probe = `bkprobe${randomBytes(3).toString('hex')}`
  try {
    ip(['netns', 'add', probe])
  } catch (err) {
    const stderr = String((err as { stderr?: Buffer }).stderr ?? (err as Error).message).trim()
    return `"ip netns add" failed (${stderr}); install iproute2 and run with CAP_SYS_ADMIN`
  }
  try {
    ip(['netns', 'del', probe])
  } catch {
    // the probe is empty: nothing holds it
  }
  return undefined
}

/** Creates the hub and one namespace per name in `hosts`; all deleted in `t`'s teardown. */
export function createNet(t: Test, hosts: string[]): Net {
  const suffix = randomBytes(3).toString('hex')
  const subnet = `10.${randomInt(200, 250)}.${randomInt(0, 256)}`
  const hub = `bk${suffix}-hub`
  const net: Net = {
    hub,
    hosts: {},
    run(t, host, cmd, args, env = {}) {
      const h = net.hosts[host]!
      const proc = startProcess(
        'ip',
        [
          ...['netns', 'exec', h.ns, 'unshare', '--uts', 'sh', '-c'],
          'hostname "$0" && exec "$@"',
          h.name,
          cmd,
          ...args,
        ],
        { env },
      )
      t.teardown(async () => {
        if (!t.passing()) {
          t.comment(
            `last lines of ${cmd} ${args.join(' ')} in ${host}:\n${proc.lines.slice(-40).join('\n')}`,
          )
        }
        await proc.stop()
      })
      return proc
    },
    exec(host, cmd, args) {
      const h = net.hosts[host]!
      return new Promise((resolve) => {
        execFile('ip', ['netns', 'exec', h.ns, cmd, ...args], (err, stdout, stderr) => {
          const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0
          resolve({ code, stdout, stderr })
        })
      })
    },
    cut(host) {
      ip(['-n', hub, 'link', 'set', net.hosts[host]!.hubIf, 'down'])
    },
    heal(host) {
      ip(['-n', hub, 'link', 'set', net.hosts[host]!.hubIf, 'up'])
    },
  }
  const mine: string[] = []
  t.teardown(() => deleteNs(mine))
  const add = (ns: string): void => {
    ip(['netns', 'add', ns])
    live.add(ns)
    mine.push(ns)
    ip(['-n', ns, 'link', 'set', 'lo', 'up'])
  }
  add(hub)
  ip(['-n', hub, 'link', 'add', 'br0', 'type', 'bridge'])
  ip(['-n', hub, 'link', 'set', 'br0', 'up'])
  hosts.forEach((name, i) => {
    const h: NetHost = {
      name,
      ns: `bk${suffix}-${name}`,
      addr: `${subnet}.${i + 1}`,
      hubIf: `v${i + 1}`,
    }
    add(h.ns)
    ip(['-n', hub, 'link', 'add', h.hubIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', h.ns])
    ip(['-n', hub, 'link', 'set', h.hubIf, 'master', 'br0'])
    ip(['-n', hub, 'link', 'set', h.hubIf, 'up'])
    ip(['-n', h.ns, 'addr', 'add', `${h.addr}/24`, 'dev', 'eth0'])
    ip(['-n', h.ns, 'link', 'set', 'eth0', 'up'])
    net.hosts[name] = h
  })
  return net
}

/** Forwards each request from a ROUTER on `front` to the control endpoint `back` over a REQ. */
const CONTROL_PROXY = `
import { Request, Router } from 'zeromq'
const [front, back] = process.argv.slice(1)
const router = new Router({ linger: 0 })
await router.bind(front)
console.log(JSON.stringify({ msg: 'ready', front, back }))
for await (const [id, delimiter, body] of router) {
  const req = new Request({ linger: 0, sendTimeout: 10000, receiveTimeout: 10000 })
  try {
    req.connect(back)
    await req.send(body)
    const [reply] = await req.receive()
    await router.send([id, delimiter, reply])
  } catch (err) {
    console.error(JSON.stringify({ msg: 'not forwarded', err: String(err) }))
  } finally {
    req.close()
  }
}
`

/**
 * Runs a tiny control proxy in `host` (the master's namespace): the test, outside every
 * namespace, reaches the master's tcp control endpoint `control` through the returned ipc://
 * endpoint (a unix socket is a file, so it crosses network namespaces).
 */
export async function controlProxy(
  t: Test,
  net: Net,
  host: string,
  control: string,
): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'bk-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const front = `ipc://${join(dir, 'control')}`
  const proc = net.run(t, host, process.execPath, [
    '--input-type=module',
    '-e',
    CONTROL_PROXY,
    front,
    control,
  ])
  await proc.waitFor((l) => l.includes('"msg":"ready"'), 30_000)
  return front
}
