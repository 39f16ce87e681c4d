// Lifecycle hooks: `fastify.wsManager.addHook(name, fn)` for every route, and
// `config.wsManager.hooks` for one. Fastify's style: a function may be async or take a `done`
// callback as its last argument. A hook's error is contained: logged, and for onConnection and
// onMessage the connection is closed with 1011, as for a throwing handler.
import type { FastifyRequest } from 'fastify'
import type WebSocket from 'ws'
import type { CloseInfo, Connection, HookRunner } from './connection'

export type { CloseInfo } from './connection'
import { errors } from './errors'

/** What onRefused hooks learn of an upgrade refused before (or right after) the upgrade. */
export interface RefusalInfo {
  statusCode: number
  /** Why, as in the log line; never the token. */
  reason: string
}

/** A callback-style hook's `done`. */
export type Done = (err?: Error | null) => void

// Each hook may be async (return a promise) or take `done` as its last parameter; which one
// is decided by the function's length, as Fastify does.

/** Runs once per accepted connection, before the route's handler; the socket is not read until it finishes. */
export type OnConnectionHook = (connection: Connection, request: FastifyRequest, done: Done) => void | Promise<unknown>
/** Runs for every data message handed to the application (after the rate limit, before the router and listeners). */
export type OnMessageHook = (connection: Connection, data: WebSocket.RawData, isBinary: boolean, done: Done) => void | Promise<unknown>
/** Runs once per connection, after its socket closed and it left the registry. */
export type OnCloseHook = (connection: Connection, info: CloseInfo, done: Done) => void | Promise<unknown>
/** Runs for every upgrade refused. */
export type OnRefusedHook = (request: FastifyRequest, info: RefusalInfo, done: Done) => void | Promise<unknown>

/** The hooks by name. */
export interface HookTypes {
  onConnection: OnConnectionHook
  onMessage: OnMessageHook
  onClose: OnCloseHook
  onRefused: OnRefusedHook
}

/** A hook's name. */
export type HookName = keyof HookTypes

const ARITY: Record<HookName, number> = { onConnection: 2, onMessage: 3, onClose: 2, onRefused: 2 }
const NAMES = Object.keys(ARITY) as HookName[]

/** Hook lists by name: the plugin's, or one route's own. */
export class HookSet {
  readonly onConnection: OnConnectionHook[] = []
  readonly onMessage: OnMessageHook[] = []
  readonly onClose: OnCloseHook[] = []
  readonly onRefused: OnRefusedHook[] = []

  /**
   * Adds a hook.
   * @throws FST_WSM_HOOK_INVALID for an unknown name or a value that is not a function.
   */
  add<K extends HookName> (name: K, fn: HookTypes[K]): void {
    if (!NAMES.includes(name)) throw new errors.FST_WSM_HOOK_INVALID(String(name), `unknown hook; known: ${NAMES.join(', ')}`)
    if (typeof fn !== 'function') throw new errors.FST_WSM_HOOK_INVALID(name, 'expected a function')
    // As Fastify: an async function that also takes `done` would have its rejection lost.
    if (fn.constructor.name === 'AsyncFunction' && fn.length > ARITY[name]) {
      throw new errors.FST_WSM_HOOK_INVALID(name, 'an async hook must not take a done callback too')
    }
    ;(this[name] as Array<HookTypes[K]>).push(fn)
  }
}

type AnyHook = (...args: any[]) => unknown

/**
 * The hooks that apply to one route: the plugin's (read live, so hooks added after the route
 * still run), then the route's own.
 */
export class RouteHooks implements HookRunner {
  readonly #plugin: HookSet
  readonly #own: HookSet | null

  /** @throws FST_WSM_HOOK_INVALID naming the route's hook that is not valid. */
  constructor (plugin: HookSet, route: RouteHookOptions | undefined, where: string) {
    this.#plugin = plugin
    if (route === undefined) {
      this.#own = null
      return
    }
    if (typeof route !== 'object' || route === null || Array.isArray(route)) throw new errors.FST_WSM_HOOK_INVALID(where, 'expected an object of hooks')
    const own = new HookSet()
    for (const [name, value] of Object.entries(route)) {
      for (const fn of Array.isArray(value) ? value : [value]) own.add(name as HookName, fn as never)
    }
    this.#own = own
  }

  /** Whether any hook of this name applies. */
  has (name: HookName): boolean {
    return this.#plugin[name].length > 0 || (this.#own !== null && this.#own[name].length > 0)
  }

  /**
   * Runs the hooks of a name in order; null when every one finished synchronously, else a
   * promise of the end. A hook's error stops the rest: thrown when synchronous, a rejection after.
   */
  run (name: HookName, args: unknown[]): Promise<void> | null {
    return this.#runFrom(name, args, 0)
  }

  #runFrom (name: HookName, args: unknown[], start: number): Promise<void> | null {
    const plugin = this.#plugin[name] as AnyHook[]
    const own = this.#own === null ? [] : this.#own[name] as AnyHook[]
    const total = plugin.length + own.length
    for (let i = start; i < total; i++) {
      const pending = callHook(i < plugin.length ? plugin[i] : own[i - plugin.length], name, args)
      if (pending !== null) return pending.then(() => this.#runFrom(name, args, i + 1) ?? undefined)
    }
    return null
  }
}

/** Hooks of one route, as `config.wsManager.hooks`: each a function or a list of them. */
export type RouteHookOptions = { [K in HookName]?: HookTypes[K] | Array<HookTypes[K]> }

/**
 * Calls one hook: with a `done` callback when it declares one more parameter than the hook's
 * arguments, else as a function that may return a promise. Null when it finished
 * synchronously; a promise otherwise, rejected with its error (a rejection or an error passed
 * to done). A synchronous throw is thrown.
 */
export function callHook (fn: AnyHook, name: HookName, args: unknown[]): Promise<void> | null {
  if (fn.length > ARITY[name]) {
    let returned: unknown
    const done = new Promise<void>((resolve, reject) => {
      returned = fn(...args, (err?: Error | null) => { if (err !== undefined && err !== null) reject(err); else resolve() })
    })
    // A function that takes done and returns a promise as well finishes when both have, and
    // either one's error is its error.
    if (returned !== null && typeof returned === 'object' && typeof (returned as PromiseLike<unknown>).then === 'function') {
      return Promise.all([done, returned as PromiseLike<unknown>]).then(noop)
    }
    return done
  }
  const result = fn(...args)
  if (result !== null && typeof result === 'object' && typeof (result as PromiseLike<unknown>).then === 'function') {
    return Promise.resolve(result as PromiseLike<unknown>).then(noop)
  }
  return null
}

function noop (): void {}
