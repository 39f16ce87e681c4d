import { errors } from './errors'

/** Throws the coded option error naming the option and what it allows. */
export function fail (name: string, allowed: string): never {
  throw new errors.FST_WSM_OPTION_INVALID(name, allowed)
}

/** A non-null object that is not an array. */
export function isPlainObject (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** Validates a whole number in [min, max]; used for every millisecond and byte option. */
export function checkInt (name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    fail(name, `expected an integer from ${min} to ${max}, got ${JSON.stringify(value)}`)
  }
  return value
}

/** Validates a string. */
export function checkString (name: string, value: unknown): string {
  if (typeof value !== 'string') fail(name, `expected a string, got ${JSON.stringify(value)}`)
  return value
}

/** Validates one of a fixed set of values. */
export function checkOneOf<T extends string> (name: string, value: unknown, allowed: readonly T[]): T {
  if (!allowed.includes(value as T)) fail(name, `expected one of ${allowed.map((a) => `'${a}'`).join(', ')}, got ${JSON.stringify(value)}`)
  return value as T
}

/** An optional object section of the options; undefined gives an empty one. */
export function section (name: string, value: unknown, known: readonly string[]): Record<string, unknown> {
  if (value === undefined) return {}
  if (!isPlainObject(value)) fail(name, 'expected an object')
  for (const key of Object.keys(value)) {
    if (!known.includes(key)) fail(`${name === '' ? '' : name + '.'}${key}`, `unknown option; known: ${known.join(', ')}`)
  }
  return value
}

/** Validates a boolean. */
export function checkBool (name: string, value: unknown): boolean {
  if (typeof value !== 'boolean') fail(name, `expected true or false, got ${JSON.stringify(value)}`)
  return value
}
