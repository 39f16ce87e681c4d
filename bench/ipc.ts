// Request/reply over the IPC channel between the orchestrator and its child processes. Every
// call has a deadline and every child dies with its parent, so a hung scenario cannot keep
// the harness (or a stray server) alive.

import type { ChildProcess } from 'node:child_process'

interface Request {
  id: number
  cmd: string
  args: unknown
}

interface Reply {
  id: number
  ok: boolean
  result?: unknown
  error?: string
}

/** A child's handlers, by command name. */
export type Handlers = Record<string, (args: never) => unknown>

/** The orchestrator's side of one child process. */
export class Peer {
  readonly name: string
  readonly child: ChildProcess
  #nextId = 1
  readonly #pending = new Map<number, { resolve: (v: unknown) => void, reject: (e: Error) => void, timer: NodeJS.Timeout }>()
  readonly #exited: Promise<number | null>

  constructor (name: string, child: ChildProcess) {
    this.name = name
    this.child = child
    child.on('message', (msg: Reply) => {
      const pending = this.#pending.get(msg.id)
      if (pending === undefined) return
      this.#pending.delete(msg.id)
      clearTimeout(pending.timer)
      if (msg.ok) pending.resolve(msg.result)
      else pending.reject(new Error(`${name}: ${msg.error ?? 'failed'}`))
    })
    this.#exited = new Promise((resolve) => child.once('exit', (code) => {
      for (const [id, pending] of this.#pending) {
        clearTimeout(pending.timer)
        pending.reject(new Error(`${name} exited (code ${String(code)}) during call ${id}`))
      }
      this.#pending.clear()
      resolve(code)
    }))
  }

  /** Sends a command and resolves with the child's result; rejects past the deadline. */
  call<T> (cmd: string, args: unknown = {}, timeoutMs = 30_000): Promise<T> {
    const id = this.#nextId++
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id)
        reject(new Error(`${this.name}: ${cmd} timed out after ${timeoutMs} ms`))
      }, timeoutMs)
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer })
      const request: Request = { id, cmd, args }
      this.child.send(request)
    })
  }

  /** Asks the child to exit, and kills it if it has not within the deadline. */
  async stop (timeoutMs = 10_000): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return
    this.call('exit', {}, timeoutMs).catch(() => {})
    const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs)
    await this.#exited
    clearTimeout(timer)
  }

  /** Kills the child at once (the orchestrator's last resort). */
  kill (): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL')
  }
}

/**
 * The child's side: answers commands with its handlers, exits when the parent goes away
 * or after `maxLifetimeMs` whatever happens.
 */
export function serve (handlers: Handlers, maxLifetimeMs: number): void {
  if (process.send === undefined) throw new Error('run this file through the orchestrator (bench/run.ts)')
  const reply = (msg: Reply): void => {
    if (process.connected) process.send?.(msg)
  }
  process.on('message', (msg: Request) => {
    const handler = handlers[msg.cmd]
    if (handler === undefined) {
      reply({ id: msg.id, ok: false, error: `unknown command ${msg.cmd}` })
      return
    }
    Promise.resolve()
      .then(() => handler(msg.args as never))
      .then(
        (result) => reply({ id: msg.id, ok: true, result }),
        (err: unknown) => reply({ id: msg.id, ok: false, error: err instanceof Error ? err.stack ?? err.message : String(err) })
      )
  })
  process.on('disconnect', () => process.exit(0))
  setTimeout(() => {
    process.stderr.write(`bench child ${process.pid} reached its maximum lifetime, exiting\n`)
    process.exit(2)
  }, maxLifetimeMs).unref()
}

/** Resolves after `ms`. */
export function sleep (ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** Resolves with the `{ ready }` a child sends once it is up; rejects when it exits first or takes longer than `timeoutMs`. */
export function started<T> (peer: Peer, timeoutMs = 30_000): Promise<T> {
  const child = peer.child
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${peer.name} did not start within ${timeoutMs} ms`)), timeoutMs)
    child.on('message', (msg: { ready?: T }) => {
      if (msg.ready === undefined) return
      clearTimeout(timer)
      resolve(msg.ready)
    })
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`${peer.name} exited with code ${String(code)} before it was ready`))
    })
  })
}
