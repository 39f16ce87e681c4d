// Connection ids. Node 20's crypto.randomUUID() returns its string as a rope of small pieces,
// which storing it or using it as a Map key does not flatten: ~490 B of heap per id where
// the 36 characters flat take ~70 (bench/scale.ts --heap). One id lives as long as its connection.
import { randomUUID } from 'node:crypto'

/** A random UUID as one flat string. */
export function connectionId (): string {
  return Buffer.from(randomUUID(), 'latin1').toString('latin1')
}
