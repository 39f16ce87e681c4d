/**
 * The key an IP is counted under: IPv4 as it is, IPv6 by its /64 prefix, since a single
 * client usually holds a whole /64 and could rotate through it. IPv4-mapped IPv6 addresses
 * count as their IPv4 address.
 */
export function ipKey (ip: string | undefined): string {
  // Injected requests (app.injectWS) come without a socket address.
  if (typeof ip !== 'string' || ip === '') return 'unknown'
  if (!ip.includes(':')) return ip
  const lower = ip.toLowerCase()
  if (lower.startsWith('::ffff:') && lower.includes('.')) return lower.slice(7)
  const zone = lower.indexOf('%')
  const address = zone === -1 ? lower : lower.slice(0, zone)
  const [head, tail] = address.split('::')
  const left = head === '' ? [] : head.split(':')
  const right = tail === undefined || tail === '' ? [] : tail.split(':')
  const groups = tail === undefined ? left : [...left, ...Array(Math.max(0, 8 - left.length - right.length)).fill('0'), ...right]
  return `${groups.slice(0, 4).map((g) => g.replace(/^0+(?=.)/, '')).join(':')}::/64`
}
