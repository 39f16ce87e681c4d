// Source addresses the load tester binds its sockets to. Each local address has its own
// ephemeral port range toward one server port (~28k on Linux), so spreading connections over
// several is how one machine opens more than that. Only addresses of this machine are
// accepted: binding is all they are used for, and a typo must not look like a target.

import { isIP, isIPv4 } from 'node:net'
import { networkInterfaces } from 'node:os'

/** The most addresses one range may name. */
export const MAX_RANGE = 65_536

function ipv4ToInt (ip: string): number {
  return ip.split('.').reduce((n, octet) => n * 256 + Number(octet), 0)
}

function intToIpv4 (n: number): string {
  return `${Math.floor(n / 16_777_216) % 256}.${Math.floor(n / 65_536) % 256}.${Math.floor(n / 256) % 256}.${n % 256}`
}

/**
 * Whether `ip` is an address of this machine: one of its interfaces' addresses, or on Linux
 * any address of 127.0.0.0/8 (the kernel routes the whole block to loopback).
 */
export function isLocalAddress (ip: string, local: ReadonlySet<string> = interfaceAddresses()): boolean {
  if (process.platform === 'linux' && isIPv4(ip) && ip.startsWith('127.')) return true
  return local.has(ip.toLowerCase())
}

function interfaceAddresses (): Set<string> {
  const set = new Set<string>()
  for (const list of Object.values(networkInterfaces())) {
    for (const entry of list ?? []) set.add(entry.address.toLowerCase())
  }
  return set
}

/**
 * Expands `127.0.0.1`, `127.0.0.1-127.0.0.20` (IPv4 ranges, both ends included) and IPv6
 * addresses into a list without duplicates, in the order given, and checks that every one
 * is local.
 * @throws Error naming the first entry that is not an IP address, not a valid range, or not local.
 */
export function expandSourceAddresses (entries: readonly string[]): string[] {
  const local = interfaceAddresses()
  const out = new Set<string>()
  for (const raw of entries) {
    const entry = raw.trim()
    const dash = entry.indexOf('-')
    if (dash === -1) {
      if (isIP(entry) === 0) throw new Error(`"${entry}" is not an IP address`)
      if (!isLocalAddress(entry, local)) throw new Error(`"${entry}" is not an address of this machine (it is only bound to, never connected to)`)
      out.add(entry)
      continue
    }
    const from = entry.slice(0, dash)
    const to = entry.slice(dash + 1)
    if (!isIPv4(from) || !isIPv4(to)) throw new Error(`"${entry}" is not a range of IPv4 addresses like 127.0.0.1-127.0.0.20`)
    const first = ipv4ToInt(from)
    const last = ipv4ToInt(to)
    if (last < first) throw new Error(`"${entry}" ends before it starts`)
    if (last - first + 1 > MAX_RANGE) throw new Error(`"${entry}" names more than ${MAX_RANGE} addresses`)
    for (let n = first; n <= last; n++) {
      const ip = intToIpv4(n)
      if (!isLocalAddress(ip, local)) throw new Error(`"${ip}" (in ${entry}) is not an address of this machine (it is only bound to, never connected to)`)
      out.add(ip)
    }
  }
  return [...out]
}
