// Deterministic JSON payloads: every run, and the generator and the server alike, build the
// same bytes from a seed, so nothing has to travel over IPC and ratios compare across runs.
// The text mixes what real feeds carry (repeated keys, ids that do not repeat, words from a
// vocabulary), so compression ratios are neither flattering nor hopeless.

const WORDS = ('the a to and of in is it you that for on with this was are be at have not but ' +
  'they we what all can just so your from if about like out one more when up time how get ' +
  'release deploy server client latency cache queue socket stream message channel room thread ' +
  'reply update status build test merge review ticket incident alert metric graph coffee lunch ' +
  'meeting today tonight please thanks great sounds looks works broken fixed shipped waiting').split(' ')
const NAMES = ['Ana', 'Ben', 'Chen', 'Dara', 'Eli', 'Fatima', 'Goran', 'Hana', 'Ivan', 'Jun', 'Kofi', 'Lena']

// mulberry32: small, seeded, good enough for test data.
export function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function item (rand: () => number, seq: number): Record<string, unknown> {
  const words: string[] = []
  const count = 6 + Math.floor(rand() * 18)
  for (let i = 0; i < count; i++) words.push(WORDS[Math.floor(rand() * WORDS.length)])
  return {
    id: Math.floor(rand() * 2 ** 48).toString(16),
    seq,
    author: { name: NAMES[Math.floor(rand() * NAMES.length)], avatar: `https://cdn.example.com/u/${Math.floor(rand() * 1e6)}.png` },
    at: 1_760_000_000_000 + Math.floor(rand() * 1e9),
    text: words.join(' '),
    reactions: Math.floor(rand() * 20)
  }
}

/** A JSON feed page of about `bytes` bytes (whole items); pages with different seeds differ in content. */
export function feedPage (seed: number, bytes: number): string {
  const rand = prng(seed)
  const items: Record<string, unknown>[] = []
  let size = 30
  while (size < bytes) {
    const next = item(rand, items.length)
    size += JSON.stringify(next).length + 1
    items.push(next)
  }
  return JSON.stringify({ type: 'feed', page: seed, items })
}

/** A JSON text of exactly `bytes` bytes (at least 40): a feed page cut to size and padded. */
export function exactJson (seed: number, bytes: number): Buffer {
  const frame = (fill: string): string => JSON.stringify({ type: 'echo', seed, fill })
  const empty = frame('').length
  if (bytes < empty) throw new Error(`exactJson needs at least ${empty} bytes`)
  // The filler is printable JSON-safe text taken from a page, so it looks like real content.
  const source = feedPage(seed, bytes).replace(/["\\]/g, "'")
  const fill = source.slice(0, bytes - empty).padEnd(bytes - empty, ' ')
  const text = frame(fill)
  if (text.length !== bytes) throw new Error(`exactJson built ${text.length} bytes, wanted ${bytes}`)
  return Buffer.from(text)
}

/** The value a broadcast sends: `JSON.stringify` of it is exactly `bytes` bytes. */
export function broadcastValue (bytes: number): { type: string, seq: number, data: string } {
  const value = { type: 'tick', seq: 0, data: '' }
  const base = JSON.stringify(value).length
  value.data = exactJson(1, Math.max(40, bytes - base)).toString().replace(/["\\]/g, "'").slice(0, bytes - base)
  return value
}
