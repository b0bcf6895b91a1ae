/**
 * @module How a squashfs-tools-ng run ended, in one sentence for an E_SLUG message: the tool's
 * own words on stderr when it has any, else execa's ("exited with code 1", "was killed with ...").
 */
import type { Result } from 'execa'

/** Why `tool` failed; says how to install it when it is missing. */
export function toolFailure(tool: string, result: Result): string {
  if (result.code === 'ENOENT') {
    return `${tool} is not installed (it comes with squashfs-tools-ng: apt-get install squashfs-tools-ng)`
  }
  const stderr = typeof result.stderr === 'string' ? result.stderr.trim() : ''
  const how = result.shortMessage ?? `${tool} failed`
  return stderr === '' ? how : `${tool} said: ${stderr.split('\n').join(' / ')}`
}
