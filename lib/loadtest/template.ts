// Message templates: JSON text with {{seq}}, {{conn}} and {{ts}} placeholders, split once into
// literal parts and placeholder slots, so that rendering a message is a few concatenations.

/** The placeholders a template may use. */
export const PLACEHOLDERS = ['seq', 'conn', 'ts'] as const

const SEQ = 0
const CONN = 1
const TS = 2

/** A compiled template; render() fills the placeholders with whole numbers. */
export interface Template {
  /**
   * The message text.
   * @param seq the connection's message counter (0, 1, ...)
   * @param conn the connection's index in the run (0 to connections - 1)
   * @param ts Date.now() at the send
   */
  render (seq: number, conn: number, ts: number): string
}

/** A request template: like {@link Template}, plus the `id` the load tester correlates replies by. */
export interface RequestTemplate {
  render (seq: number, conn: number, ts: number, id: number): string
}

function split (text: string): Array<string | number> {
  const parts: Array<string | number> = []
  const pattern = /\{\{\s*([A-Za-z_]\w*)\s*\}\}/g
  let last = 0
  for (let match = pattern.exec(text); match !== null; match = pattern.exec(text)) {
    const slot = (PLACEHOLDERS as readonly string[]).indexOf(match[1] as string)
    if (slot === -1) throw new Error(`has an unknown placeholder {{${match[1] as string}}} (known: ${PLACEHOLDERS.map((p) => `{{${p}}}`).join(', ')})`)
    parts.push(text.slice(last, match.index), slot)
    last = match.index + match[0].length
  }
  parts.push(text.slice(last))
  return parts.filter((part) => part !== '')
}

function renderer (parts: ReadonlyArray<string | number>): Template['render'] {
  if (parts.length === 1 && typeof parts[0] === 'string') {
    const constant = parts[0]
    return () => constant
  }
  return (seq, conn, ts) => {
    let out = ''
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i] as string | number
      out += part === SEQ ? seq : part === CONN ? conn : part === TS ? ts : part
    }
    return out
  }
}

// Placeholders stand for whole numbers, inside strings ("{{seq}}") or bare ({{seq}}): with
// each replaced by 0 the template must be JSON, and then every rendering is too.
function parseSample (text: string): unknown {
  try {
    return JSON.parse(text.replace(/\{\{\s*[A-Za-z_]\w*\s*\}\}/g, '0'))
  } catch (err) {
    throw new Error(`is not JSON: ${(err as Error).message}`)
  }
}

/**
 * Compiles a `--json` template: any JSON value.
 * @throws Error saying what is wrong (not JSON, an unknown placeholder).
 */
export function compileTemplate (text: string): Template {
  const parts = split(text)
  parseSample(text)
  return { render: renderer(parts) }
}

/**
 * Compiles a `--request` template: a JSON object without an `id` (the load tester adds a
 * unique one to every request and matches the reply that carries it).
 * @throws Error saying what is wrong (not JSON, not an object, has an id, an unknown placeholder).
 */
export function compileRequestTemplate (text: string): RequestTemplate {
  const sample = parseSample(text)
  if (typeof sample !== 'object' || sample === null || Array.isArray(sample)) throw new Error('is not a JSON object')
  if (Object.hasOwn(sample, 'id')) throw new Error('has an "id": the load tester adds a unique one to every request')
  const trimmed = text.trimEnd()
  // The id goes in front of the closing brace of the object.
  const head = renderer(split(trimmed.slice(0, -1)))
  const separator = Object.keys(sample).length === 0 ? '"id":' : ',"id":'
  return { render: (seq, conn, ts, id) => head(seq, conn, ts) + separator + id + '}' }
}
