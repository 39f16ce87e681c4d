// Where a server's heap per connection goes: compares two V8 heap snapshots taken at two
// connection counts (`npm run bench:scale -- --heap plugin` writes one at each memory point)
// and prints, by kind of object, the bytes and objects added per connection between them.
//
//   node --import tsx bench/scale-heap.ts <low.heapsnapshot> <high.heapsnapshot> <connections between> [top]

import { readFileSync } from 'node:fs'

interface Snapshot {
  snapshot: { meta: { node_fields: string[], node_types: [string[], ...unknown[]] } }
  nodes: number[]
  strings: string[]
}

/** Self size and count of the heap's objects, by kind: a constructor's name, or the kind of a string, array, closure. */
export function heapByKind (file: string): Map<string, { bytes: number, count: number }> {
  const snap = JSON.parse(readFileSync(file, 'utf8')) as Snapshot
  const fields = snap.snapshot.meta.node_fields
  const types = snap.snapshot.meta.node_types[0]
  const width = fields.length
  const typeAt = fields.indexOf('type')
  const nameAt = fields.indexOf('name')
  const sizeAt = fields.indexOf('self_size')
  const out = new Map<string, { bytes: number, count: number }>()
  for (let i = 0; i < snap.nodes.length; i += width) {
    const type = types[snap.nodes[i + typeAt]]
    const name = snap.strings[snap.nodes[i + nameAt]]
    // Strings and numbers are grouped by kind, not content; objects by constructor.
    let key: string
    if (type === 'object' || type === 'native') key = name
    else if (type === 'closure') key = `(closure) ${name === '' ? '(anonymous)' : name}`
    else if (type === 'hidden' || type === 'object shape' || type === 'code') key = `(${type}) ${name.slice(0, 40)}`
    else key = `(${type})`
    const entry = out.get(key)
    if (entry === undefined) out.set(key, { bytes: snap.nodes[i + sizeAt], count: 1 })
    else {
      entry.bytes += snap.nodes[i + sizeAt]
      entry.count++
    }
  }
  return out
}

/** The difference per connection between two snapshots, largest first. */
export function heapDiff (low: string, high: string, connections: number, top = 25): string {
  const a = heapByKind(low)
  const b = heapByKind(high)
  const rows: Array<{ key: string, bytes: number, count: number }> = []
  let total = 0
  for (const key of new Set([...a.keys(), ...b.keys()])) {
    const bytes = ((b.get(key)?.bytes ?? 0) - (a.get(key)?.bytes ?? 0)) / connections
    const count = ((b.get(key)?.count ?? 0) - (a.get(key)?.count ?? 0)) / connections
    total += bytes
    rows.push({ key, bytes, count })
  }
  rows.sort((x, y) => Math.abs(y.bytes) - Math.abs(x.bytes))
  const lines = [`${total.toFixed(0)} B per connection in all (self sizes, ${connections} connections between the snapshots); by kind:`]
  for (const r of rows.slice(0, top)) lines.push(`  ${r.bytes.toFixed(0).padStart(7)} B  ${r.count.toFixed(2).padStart(6)} objects  ${r.key}`)
  return lines.join('\n')
}

if (require.main === module) {
  const [low, high, connections, top] = process.argv.slice(2)
  if (low === undefined || high === undefined || connections === undefined) {
    console.error('usage: node --import tsx bench/scale-heap.ts <low.heapsnapshot> <high.heapsnapshot> <connections between> [top]')
    process.exit(1)
  }
  console.log(heapDiff(low, high, Number(connections), top === undefined ? 25 : Number(top)))
}
