// Issue 3 at the plugin level: heartbeat and idle timeout wired into real connections.
// Every test runs a Fastify app on 127.0.0.1 port 0 with ws clients (or a raw TCP peer) and
// short intervals, and waits for events with deadlines.
import assert from 'node:assert/strict'
import { createHook } from 'node:async_hooks'
import { once } from 'node:events'
import type { Socket } from 'node:net'
import { test, type TestContext } from 'node:test'
import { setTimeout as delay } from 'node:timers/promises'
import Fastify, { type FastifyInstance } from 'fastify'
import type WebSocket from 'ws'
import wsManager, { loadConfig, type Connection, type WsManagerOptions } from '../lib/index'
import { HeartbeatManager, type HeartbeatStats } from '../lib/heartbeat'
import { build, closed, connect, listen, logCapture, rawPeer, socketClosed, waitFor, within, type LogLine } from './helper'

const WAIT_MS = 5000
// Lateness allowed on top of a computed due time: timer lateness, a close handshake on
// loopback, and a machine shared with other test files. Settings are chosen so that a broken
// wiring (no heartbeat, a miss too many or too few, activity not counted) lands well outside.
const LATE_MS = 150
// How early an event may come against its due time: the heartbeat treats what is due within
// 1 ms as due, and the idle sweep reads Date.now(), whole milliseconds.
const EARLY_MS = 2
// Spread allowed on a mean gap between pings as the client sees them (delivery jitter).
const JITTER_MS = 10

interface Route {
  url: string
  config?: Record<string, unknown>
}

/** An app with the plugin (auth off) and the given routes, listening; returns its ws:// base. */
async function start (t: TestContext, options: WsManagerOptions, routes: Route[] = [{ url: '/ws' }], log?: LogCapture): Promise<{ app: FastifyInstance, url: string }> {
  const app = await build(t, { auth: false, ...options }, log === undefined ? {} : { fastify: { logger: { level: 'info', stream: log.stream } } })
  for (const route of routes) {
    if (route.config === undefined) app.get(route.url, { websocket: true }, () => {})
    else app.get(route.url, { websocket: true, config: { wsManager: route.config } }, () => {})
  }
  return { app, url: await listen(app) }
}

type LogCapture = ReturnType<typeof logCapture>

interface Opened {
  ws: WebSocket
  /** performance.now() just before the upgrade request went out. */
  requested: number
  /** performance.now() when the client saw 'open'. */
  opened: number
  /** Times of the pings the client received. */
  pings: number[]
  /** Resolves with the close the client saw and when; rejects after WAIT_MS. */
  closing: Promise<{ code: number, reason: string, at: number }>
}

/** Connects a ws client (terminated when the test ends) and records its pings and its close. */
async function open (t: TestContext, url: string, options: WebSocket.ClientOptions = {}): Promise<Opened> {
  const requested = performance.now()
  const ws = await connect(t, url, options)
  const opened = performance.now()
  const pings: number[] = []
  ws.on('ping', () => { pings.push(performance.now()) })
  const closing = closed(ws, WAIT_MS).then(({ code, reason }) => ({ code, reason, at: performance.now() }))
  // Tests that expect no close never await it; keep its deadline from surfacing.
  closing.catch(() => {})
  return { ws, requested, opened, pings, closing }
}

function assertBetween (value: number, min: number, max: number, what: string): void {
  assert.ok(value >= min && value <= max, `${what}: ${value.toFixed(1)} ms, expected ${min} to ${max} ms`)
}

/**
 * Asserts that an event due `due` ms after the server accepted a connection came on time.
 * The server accepts after the request went out and before (or, under load, just after) the
 * client sees 'open', so "not early" is measured from the request and "not late" from 'open'.
 */
function assertDue (at: number, from: { requested: number, opened: number }, due: number, late: number, what: string): void {
  const early = at - from.requested
  const after = at - from.opened
  assert.ok(early >= due - EARLY_MS, `${what}: ${early.toFixed(1)} ms after the upgrade request, due at ${due} ms`)
  assert.ok(after <= due + late, `${what}: ${after.toFixed(1)} ms after open, due at ${due} ms (+${late} allowed)`)
}

/** The server's side of a client: the connection whose peer port is the client's local port. */
function serverSide (app: FastifyInstance, client: WebSocket): Connection {
  const port = (client as unknown as { _socket: Socket })._socket.localPort
  for (const connection of app.wsManager.connections) {
    if ((connection.socket as unknown as { _socket: Socket })._socket.remotePort === port) return connection
  }
  throw new Error(`no connection for client port ${port}`)
}

// ---------------------------------------------------------------------------------------------
// Heartbeat: detection

test('a client that never answers pings is terminated (no second graceful close) within the detection bound', async (t) => {
  const heartbeat = { pingInterval: 300, pongTimeout: 100, maxMissedPongs: 2 }
  const bound = heartbeat.pingInterval + heartbeat.maxMissedPongs * heartbeat.pongTimeout // 500
  const { app, url } = await start(t, { heartbeat, idleTimeout: 0, close: { timeout: 500 } })
  const silent = await open(t, `${url}/ws`, { autoPong: false })
  const accepted = [...app.wsManager.connections][0].connectedAt

  // The peer is known dead: it gets no close frame, the TCP connection is cut (1006).
  const { code, reason, at } = await silent.closing
  const sinceAccept = Date.now() - accepted
  assert.equal(code, 1006)
  assert.equal(reason, '')
  assertDue(at, silent, bound, LATE_MS, 'close')
  // The first ping after one interval, then one retry right after each miss.
  assert.equal(silent.pings.length, heartbeat.maxMissedPongs)
  assertDue(silent.pings[0], silent, heartbeat.pingInterval, LATE_MS, 'first ping')

  await waitFor(() => app.wsManager.connections.size === 0, WAIT_MS, 'registry empty')
  const stats = app.wsManager.stats()
  assert.equal(stats.connections.heartbeatClosed, 1)
  assert.equal(stats.connections.idleClosed, 0)
  assert.equal(stats.connections.closed, 1)
  assert.equal(stats.heartbeat.timeouts, 1)
  assert.equal(stats.heartbeat.pingsSent, heartbeat.maxMissedPongs)
  assert.equal(stats.heartbeat.missedPongs, heartbeat.maxMissedPongs)
  assert.equal(stats.heartbeat.pongsReceived, 0)
  assert.equal(stats.heartbeat.tracked, 0)
  assert.deepEqual(stats.close, { closing: 0, clean: 0, forced: 1 })
  assert.ok(sinceAccept >= bound - EARLY_MS && sinceAccept <= bound + LATE_MS, `close seen ${sinceAccept} ms after the server accepted`)
  t.diagnostic(`detection: client saw 1006 ${sinceAccept} ms after the server accepted, ${(at - silent.opened).toFixed(1)} ms after open (bound ${bound} ms)`)
})

test('a raw TCP peer that answers nothing is terminated within the bound, without waiting out the close timeout', async (t) => {
  const heartbeat = { pingInterval: 200, pongTimeout: 100, maxMissedPongs: 2 }
  const closeTimeout = 2000
  const bound = heartbeat.pingInterval + heartbeat.maxMissedPongs * heartbeat.pongTimeout // 400
  const { app, url } = await start(t, { heartbeat, idleTimeout: 0, close: { timeout: closeTimeout } })
  const requested = performance.now()
  const peer = await rawPeer(t, url, '/ws')
  const upgraded = performance.now()
  assert.equal(app.wsManager.connections.size, 1)

  await waitFor(() => app.wsManager.stats().connections.heartbeatClosed === 1, WAIT_MS, 'heartbeat timeout')
  assertDue(performance.now(), { requested, opened: upgraded }, bound, LATE_MS, 'heartbeat timeout')

  await waitFor(() => app.wsManager.connections.size === 0, WAIT_MS, 'registry empty')
  const gone = performance.now()
  // Terminated at once: long before the 2 s close timeout a graceful close would wait out.
  assertDue(gone, { requested, opened: upgraded }, bound, LATE_MS, 'terminated')
  await socketClosed(peer, WAIT_MS)
  assert.deepEqual(app.wsManager.stats().close, { closing: 0, clean: 0, forced: 1 })
  assert.equal(app.wsManager.heartbeat.getStats().tracked, 0)
})

test('a connection the heartbeat found dead is neither active nor healthy, in stats and health alike', async (t) => {
  const { app, url } = await start(t, { heartbeat: { pingInterval: 100, pongTimeout: 50, maxMissedPongs: 2 }, idleTimeout: 0, close: { timeout: 5000 } })
  await rawPeer(t, url, '/ws')
  await waitFor(() => app.wsManager.stats().connections.heartbeatClosed === 1, WAIT_MS, 'heartbeat timeout')
  const health = await app.wsManager.checkConnectionHealth()
  const stats = app.wsManager.stats()
  assert.equal(health.healthyConnections, 0)
  assert.equal(health.activeConnections, stats.connections.active, 'stats and the health check agree on what is open')
  assert.equal(stats.connections.active, 0)
  // Terminated, not closed gracefully: gone long before the 5 s close timeout.
  await waitFor(() => app.wsManager.connections.size === 0, 1000, 'registry empty')
})

test('the heartbeat timeout is logged at warn with missedPongs and latency', async (t) => {
  const log = logCapture()
  const heartbeat = { pingInterval: 150, pongTimeout: 60, maxMissedPongs: 2 }
  const { url } = await start(t, { heartbeat, idleTimeout: 0, close: { timeout: 300 } }, [{ url: '/ws' }], log)
  const client = await open(t, `${url}/ws`, { autoPong: false })
  // Answer the first ping only, so the connection has a latency, then fall silent.
  client.ws.once('ping', (data) => client.ws.pong(data))

  const { code, reason } = await client.closing
  assert.deepEqual({ code, reason }, { code: 1006, reason: '' })
  await waitFor(() => log.lines.some((l) => l.msg === 'connection closed'), WAIT_MS, 'closed log line')
  const lines = log.lines.filter((l) => l.msg === 'heartbeat timeout')
  assert.equal(lines.length, 1)
  const line = lines[0] as LogLine & { missedPongs: unknown, latency: unknown, connectionId: unknown, route: unknown }
  assert.equal(line.level, 40)
  assert.equal(line.route, '/ws')
  assert.equal(typeof line.connectionId, 'string')
  assert.equal(line.missedPongs, heartbeat.maxMissedPongs)
  assert.equal(typeof line.latency, 'number')
  assert.ok((line.latency as number) >= 0 && (line.latency as number) < heartbeat.pongTimeout, `latency ${String(line.latency)}`)
})

test('the timeout callback gets the socket\'s final figures, as the plugin\'s log line needs them', async (t) => {
  // The callback runs after the socket was untracked, so getHeartbeatStats() cannot give them.
  const { app, url } = await start(t, { heartbeat: false, idleTimeout: 0 })
  const client = await open(t, `${url}/ws`, { autoPong: false })
  client.ws.once('ping', (data) => client.ws.pong(data))
  const server = [...app.wsManager.connections][0].socket
  const hb = new HeartbeatManager({ pingInterval: 100, pongTimeout: 50, maxMissedPongs: 3 })
  t.after(() => hb.stopAll())
  let seen: HeartbeatStats | undefined
  const timedOut = new Promise<void>((resolve) => {
    hb.startHeartbeat(server, (_ws, stats) => {
      seen = stats
      resolve()
    })
  })
  await within(timedOut, WAIT_MS, 'timeout callback')
  assert.equal(hb.getHeartbeatStats(server), undefined)
  assert.ok(seen !== undefined)
  assert.equal(seen.missedPongs, 3)
  assert.equal(seen.pingsSent, 4)
  assert.equal(seen.pongsReceived, 1)
  assert.equal(typeof seen.latency, 'number')
})

// ---------------------------------------------------------------------------------------------
// Heartbeat: healthy connections, health report and statistics

test('a responsive client stays open; checkConnectionHealth and stats().heartbeat report real figures', async (t) => {
  const heartbeat = { pingInterval: 100, pongTimeout: 50, maxMissedPongs: 2 }
  const { app, url } = await start(t, { heartbeat, idleTimeout: 0 }, [
    { url: '/ws' },
    // A long run of misses before the timeout, so the silent client stays unhealthy a while.
    { url: '/patient', config: { heartbeat: { pingInterval: 100, pongTimeout: 90, maxMissedPongs: 20 } } }
  ])
  const responsive = await open(t, `${url}/ws`)

  // Ten intervals: five times the detection bound of 200 ms.
  await waitFor(() => responsive.pings.length >= 10, WAIT_MS, 'ten pings')
  assert.equal(responsive.ws.readyState, responsive.ws.OPEN)
  let health = await app.wsManager.checkConnectionHealth()
  assert.equal(health.activeConnections, 1)
  assert.equal(health.healthyConnections, 1)
  assert.equal(health.unhealthyConnections, 0)
  assert.equal(typeof health.averageLatency, 'number')
  assert.ok((health.averageLatency as number) >= 0 && (health.averageLatency as number) < heartbeat.pongTimeout)

  const silent = await open(t, `${url}/patient`, { autoPong: false })
  await waitFor(() => silent.pings.length >= 2, WAIT_MS, 'a missed pong on the silent client')
  health = await app.wsManager.checkConnectionHealth()
  assert.equal(health.activeConnections, 2)
  assert.equal(health.healthyConnections, 1)
  assert.equal(health.unhealthyConnections, 1)
  // Only the responsive client has a latency; the silent one does not drag the mean to null.
  assert.equal(typeof health.averageLatency, 'number')

  const hb = app.wsManager.stats().heartbeat
  assert.equal(hb.tracked, 2)
  assert.equal(hb.healthy, 1)
  assert.equal(hb.unhealthy, 1)
  assert.equal(hb.averageLatency, health.averageLatency)
  assert.equal(hb.timeouts, 0)
  assert.ok(hb.missedPongs >= 1)
  assert.ok(hb.pongsReceived >= 10)
  // Every ping sent reaches its client; allow for those still on the wire.
  const seen = responsive.pings.length + silent.pings.length
  assert.ok(hb.pingsSent >= seen && hb.pingsSent <= seen + 2, `pingsSent ${hb.pingsSent}, clients saw ${seen}`)
  await waitFor(() => {
    const sent = app.wsManager.stats().heartbeat.pingsSent
    return sent === responsive.pings.length + silent.pings.length
  }, WAIT_MS, 'pingsSent equal to the pings the clients saw')
  assert.equal(app.wsManager.stats().connections.heartbeatClosed, 0)
  assert.equal(responsive.ws.readyState, responsive.ws.OPEN)
})

test('a client that misses two pongs and then answers is not closed', async (t) => {
  const heartbeat = { pingInterval: 200, pongTimeout: 80, maxMissedPongs: 3 }
  const { app, url } = await start(t, { heartbeat, idleTimeout: 0 })
  const client = await open(t, `${url}/ws`, { autoPong: false })
  // Pings 1 and 2 go unanswered (two misses), ping 3 is the second retry: answer it and all after.
  client.ws.on('ping', (data) => {
    if (client.pings.length >= 3) client.ws.pong(data)
  })
  let unhealthySeen = 0
  const watch = setInterval(() => {
    const stats = app.wsManager.stats().heartbeat
    unhealthySeen = Math.max(unhealthySeen, stats.unhealthy)
  }, 10)
  t.after(() => clearInterval(watch))

  // Six pings: 200 + 80 + 80 ms for the first three, then three more intervals, well past
  // the 440 ms detection bound.
  await waitFor(() => client.pings.length >= 6, WAIT_MS, 'six pings')
  clearInterval(watch)
  assert.equal(client.ws.readyState, client.ws.OPEN)
  const stats = app.wsManager.stats()
  assert.equal(stats.heartbeat.missedPongs, 2)
  assert.equal(stats.heartbeat.timeouts, 0)
  assert.equal(stats.connections.heartbeatClosed, 0)
  assert.equal(unhealthySeen, 1, 'the connection was reported unhealthy while it missed pongs')
  await waitFor(() => app.wsManager.stats().heartbeat.unhealthy === 0, WAIT_MS, 'healthy again')
  const health = await app.wsManager.checkConnectionHealth()
  assert.deepEqual({ ...health, averageLatency: typeof health.averageLatency },
    { activeConnections: 1, healthyConnections: 1, unhealthyConnections: 0, averageLatency: 'number' })
  // The retries came one pongTimeout apart, not one pingInterval.
  assert.ok(client.pings[2] - client.pings[1] < heartbeat.pingInterval - 50, `retry gap ${client.pings[2] - client.pings[1]} ms`)
})

test('a client\'s ping gets a pong from the server (requirement 6.3)', async (t) => {
  const { url } = await start(t, { heartbeat: false, idleTimeout: 0 })
  const client = await open(t, `${url}/ws`)
  for (const payload of ['first', 'second']) {
    const pong = within(once(client.ws, 'pong'), WAIT_MS, 'pong')
    client.ws.ping(payload)
    const [data] = await pong as [Buffer]
    assert.equal(data.toString(), payload)
  }
})

// ---------------------------------------------------------------------------------------------
// Heartbeat: on, off, per route

test('heartbeat: false sends no pings; a route may turn it back on with its own interval', async (t) => {
  const { app, url } = await start(t, { heartbeat: false, idleTimeout: 0 }, [
    { url: '/off' },
    { url: '/on', config: { heartbeat: { pingInterval: 100, pongTimeout: 50 } } }
  ])
  const off = await open(t, `${url}/off`)
  const on = await open(t, `${url}/on`)
  await waitFor(() => on.pings.length >= 4, WAIT_MS, 'four pings on the route with a heartbeat')
  assert.equal(off.pings.length, 0)
  assert.equal(app.wsManager.heartbeat.getStats().tracked, 1)
  assert.equal(app.wsManager.heartbeat.isTracked([...app.wsManager.connections.byRoute('/off')][0].socket), false)
  const health = await app.wsManager.checkConnectionHealth()
  assert.equal(health.activeConnections, 2)
  assert.equal(health.healthyConnections, 2)
})

test('per-route heartbeat: false and per-route pingInterval are honoured next to the plugin\'s settings', async (t) => {
  const { app, url } = await start(t, { heartbeat: { pingInterval: 300, pongTimeout: 50, maxMissedPongs: 2 }, idleTimeout: 0 }, [
    { url: '/default' },
    { url: '/off', config: { heartbeat: false } },
    { url: '/fast', config: { heartbeat: { pingInterval: 100 } } },
    { url: '/fast-silent', config: { heartbeat: { pingInterval: 100 } } }
  ])
  const fallback = await open(t, `${url}/default`)
  const off = await open(t, `${url}/off`)
  const fast = await open(t, `${url}/fast`)
  // The route's pongTimeout and maxMissedPongs come from the plugin: 100 + 2 × 50 ms.
  const fastSilent = await open(t, `${url}/fast-silent`, { autoPong: false })

  const { code, reason, at } = await fastSilent.closing
  assert.deepEqual({ code, reason }, { code: 1006, reason: '' })
  assertDue(at, fastSilent, 200, LATE_MS, 'per-route detection')

  await waitFor(() => fallback.pings.length >= 3, WAIT_MS, 'three pings at the plugin\'s interval')
  assert.equal(off.pings.length, 0)
  const gaps = (pings: number[]): number => (pings[pings.length - 1] - pings[0]) / (pings.length - 1)
  assertBetween(gaps(fallback.pings), 300 - JITTER_MS, 300 + 50, 'mean gap at the plugin\'s interval')
  assert.ok(fast.pings.length >= 7, `${fast.pings.length} pings on /fast`)
  assertBetween(gaps(fast.pings), 100 - JITTER_MS, 100 + 30, 'mean gap at the route\'s interval')
  assert.equal(app.wsManager.heartbeat.getStats().tracked, 2)
  assert.equal(app.wsManager.stats().connections.heartbeatClosed, 1)
  for (const c of [fallback, off, fast]) assert.equal(c.ws.readyState, c.ws.OPEN)
})

// ---------------------------------------------------------------------------------------------
// Idle timeout

const IDLE_MS = 400
// The sweep runs every idleTimeout / 4, so a close comes up to a quarter late.
const IDLE_LATE = IDLE_MS / 4 + LATE_MS

test('a connection with no data message either way is closed with 1001 "Idle timeout" on time', async (t) => {
  const { app, url } = await start(t, { heartbeat: false, idleTimeout: IDLE_MS })
  // The first connection starts the sweep, so its timeout falls on a sweep. The second comes
  // just after: the sweep after its timeout is nearly one period later, which tells a sweep
  // every idleTimeout / 4 from one every idleTimeout.
  const first = await open(t, `${url}/ws`)
  const client = await open(t, `${url}/ws`)
  for (const c of [first, client]) {
    const { code, reason, at } = await c.closing
    assert.deepEqual({ code, reason }, { code: 1001, reason: 'Idle timeout' })
    assertDue(at, c, IDLE_MS, IDLE_LATE, 'idle close')
  }
  await waitFor(() => app.wsManager.connections.size === 0, WAIT_MS, 'registry empty')
  const stats = app.wsManager.stats().connections
  assert.equal(stats.idleClosed, 2)
  assert.equal(stats.heartbeatClosed, 0)
})

test('a message from the client postpones the idle timeout', async (t) => {
  const { app, url } = await start(t, { heartbeat: false, idleTimeout: IDLE_MS })
  const client = await open(t, `${url}/ws`)
  await delay(IDLE_MS * 0.6)
  client.ws.send('still here')
  const sent = performance.now()
  const { code, reason, at } = await client.closing
  assert.deepEqual({ code, reason }, { code: 1001, reason: 'Idle timeout' })
  assertBetween(at - sent, IDLE_MS - EARLY_MS, IDLE_MS + IDLE_LATE, 'idle close after the client\'s message')
  assert.equal(app.wsManager.stats().connections.idleClosed, 1)
})

test('a message from the server postpones the idle timeout', async (t) => {
  const { app, url } = await start(t, { heartbeat: false, idleTimeout: IDLE_MS })
  const client = await open(t, `${url}/ws`)
  const received: number[] = []
  client.ws.on('message', () => { received.push(performance.now()) })
  await delay(IDLE_MS * 0.6)
  const sent = performance.now()
  assert.equal(await app.wsManager.broadcast({ type: 'tick' }), 1)
  const { code, reason, at } = await client.closing
  assert.deepEqual({ code, reason }, { code: 1001, reason: 'Idle timeout' })
  assert.equal(received.length, 1)
  assertBetween(at - sent, IDLE_MS - EARLY_MS, IDLE_MS + IDLE_LATE, 'idle close after the server\'s message')
  assert.equal(app.wsManager.stats().connections.idleClosed, 1)
})

test('pings and pongs are not activity: a fast heartbeat does not keep an idle connection open', async (t) => {
  const { app, url } = await start(t, { heartbeat: { pingInterval: 40, pongTimeout: 20, maxMissedPongs: 2 }, idleTimeout: IDLE_MS })
  const client = await open(t, `${url}/ws`)
  // Pings from the client too (the server answers them), every 40 ms.
  const clientPings = setInterval(() => { if (client.ws.readyState === client.ws.OPEN) client.ws.ping() }, 40)
  t.after(() => clearInterval(clientPings))
  const { code, reason, at } = await client.closing
  clearInterval(clientPings)
  assert.deepEqual({ code, reason }, { code: 1001, reason: 'Idle timeout' })
  assertDue(at, client, IDLE_MS, IDLE_LATE, 'idle close despite pings')
  assert.ok(client.pings.length >= 5, `${client.pings.length} server pings during the idle period`)
  const stats = app.wsManager.stats()
  assert.ok(stats.heartbeat.pongsReceived >= 5)
  assert.equal(stats.heartbeat.timeouts, 0)
  assert.equal(stats.connections.idleClosed, 1)
})

test('per-route idleTimeout, and 0 turning it off, next to the plugin\'s idleTimeout', async (t) => {
  const { app, url } = await start(t, { heartbeat: false, idleTimeout: 600 }, [
    { url: '/default' },
    { url: '/short', config: { idleTimeout: 200 } },
    { url: '/never', config: { idleTimeout: 0 } }
  ])
  const never = await open(t, `${url}/never`)
  const fallback = await open(t, `${url}/default`)
  const short = await open(t, `${url}/short`)
  // The sweep runs at a quarter of the shortest timeout (50 ms), so both close at most 50 ms late.
  const s = await short.closing
  assert.deepEqual({ code: s.code, reason: s.reason }, { code: 1001, reason: 'Idle timeout' })
  assertDue(s.at, short, 200, 50 + LATE_MS, '/short idle close')
  const d = await fallback.closing
  assert.deepEqual({ code: d.code, reason: d.reason }, { code: 1001, reason: 'Idle timeout' })
  assertDue(d.at, fallback, 600, 50 + LATE_MS, '/default idle close')
  // Older than both, silent all along, swept a dozen times.
  assert.equal(never.ws.readyState, never.ws.OPEN)
  assert.equal(app.wsManager.stats().connections.idleClosed, 2)
  await waitFor(() => app.wsManager.connections.size === 1, WAIT_MS, 'only /never left')
  assert.equal([...app.wsManager.connections][0].route, '/never')
})

test('idleTimeout: 0 turns the idle timeout off: no sweep timer, no close', async (t) => {
  const { app, url } = await start(t, { heartbeat: { pingInterval: 100, pongTimeout: 50 }, idleTimeout: 0 })
  const timers = timerTracker(t)
  const client = await open(t, `${url}/ws`)
  // Control: the heartbeat's timer is seen by the tracker; no interval timer (the sweep) is.
  assert.equal(timers.live().filter((r) => r.repeat === null && r.after <= 100).length, 1)
  await waitFor(() => client.pings.length >= 5, WAIT_MS, 'five pings')
  assert.deepEqual(timers.live().filter((r) => r.repeat !== null), [])
  assert.equal(client.ws.readyState, client.ws.OPEN)
  assert.equal(app.wsManager.stats().connections.idleClosed, 0)
})

// ---------------------------------------------------------------------------------------------
// No timer survives the connections

interface TimerInfo {
  name: string
  /** The interval of a setInterval timer, null for a setTimeout. */
  repeat: number | null
  after: number
}

/**
 * Tracks every Timeout created from now until the test ends. Node marks a timer `_destroyed`
 * as soon as it fired (without repeat) or was cleared, so what is not destroyed is alive,
 * unref'd timers included (process.getActiveResourcesInfo() lists only ref'd ones).
 */
function timerTracker (t: TestContext): { live: () => TimerInfo[] } {
  const created: Array<{ _destroyed?: boolean, _repeat?: number | null, _idleTimeout?: number, _onTimeout?: { name?: string } }> = []
  const hook = createHook({
    init (_id, type, _trigger, resource) {
      if (type === 'Timeout') created.push(resource as (typeof created)[number])
    }
  }).enable()
  t.after(() => { hook.disable() })
  return {
    live: () => created.filter((r) => r._destroyed !== true).map((r) => ({
      name: r._onTimeout?.name ?? '',
      repeat: r._repeat ?? null,
      after: r._idleTimeout ?? -1
    }))
  }
}

test('no heartbeat or idle timer survives the connections, however they ended', async (t) => {
  const heartbeat = { pingInterval: 100, pongTimeout: 50, maxMissedPongs: 1 }
  const { app, url } = await start(t, { heartbeat, idleTimeout: 300, close: { timeout: 200 } }, [
    { url: '/ws' },
    // An idle close here; the other route's sweep interval must stop once all are gone.
    { url: '/idle', config: { heartbeat: false } }
  ])
  const timers = timerTracker(t)
  const byClient = await open(t, `${url}/ws`)
  const byNetwork = await open(t, `${url}/ws`)
  const byHeartbeat = await open(t, `${url}/ws`, { autoPong: false })
  const byIdle = await open(t, `${url}/idle`)
  const byServer = await open(t, `${url}/ws`)

  // Control: while connections are open the tracker sees the heartbeat's timer and the sweep.
  const live = timers.live()
  assert.equal(live.filter((r) => r.repeat === null && r.after <= heartbeat.pingInterval).length, 1, JSON.stringify(live))
  assert.deepEqual(live.filter((r) => r.repeat !== null).map((r) => r.repeat), [75])
  assert.equal(app.wsManager.heartbeat.getStats().tracked, 4)

  const ends = [byClient, byNetwork, byHeartbeat, byIdle, byServer].map((c) => c.closing)
  byClient.ws.close(1000, 'bye')
  byNetwork.ws.terminate()
  const closedByServer = await serverSide(app, byServer.ws).close(1000, 'done')
  assert.equal(closedByServer.clean, true)
  const [h, i] = await Promise.all([byHeartbeat.closing, byIdle.closing])
  assert.deepEqual({ code: h.code, reason: h.reason }, { code: 1006, reason: '' })
  assert.deepEqual({ code: i.code, reason: i.reason }, { code: 1001, reason: 'Idle timeout' })
  await Promise.all(ends)
  await waitFor(() => app.wsManager.connections.size === 0, WAIT_MS, 'registry empty')

  assert.equal(app.wsManager.heartbeat.getStats().tracked, 0)
  await waitFor(() => timers.live().length === 0, 1000, `no live timer: ${JSON.stringify(timers.live())}`)
  assert.deepEqual(timers.live(), [])
})

// ---------------------------------------------------------------------------------------------
// Configuration: environment and option validation

test('env PING_INTERVAL, PONG_TIMEOUT, MAX_MISSED_PONGS and IDLE_TIMEOUT map to the options and run', async (t) => {
  const env = { PING_INTERVAL: '1000', PONG_TIMEOUT: '200', MAX_MISSED_PONGS: '2', IDLE_TIMEOUT: '0' }
  const config = loadConfig(env)
  assert.deepEqual(config.options.heartbeat, { pingInterval: 1000, pongTimeout: 200, maxMissedPongs: 2 })
  assert.equal(config.options.idleTimeout, 0)
  assert.equal(loadConfig({ HEARTBEAT_ENABLED: 'false' }).options.heartbeat, false)
  assert.deepEqual(loadConfig({}).options.heartbeat, { pingInterval: 30_000, pongTimeout: 5000, maxMissedPongs: 3 })
  assert.equal(loadConfig({}).options.idleTimeout, 300_000)

  const app = Fastify({ logger: false })
  t.after(() => app.close())
  await app.register(wsManager, { ...config.options, auth: false })
  app.get('/ws', { websocket: true }, () => {})
  const url = await listen(app)
  assert.deepEqual(app.wsManager.heartbeat.settings, { pingInterval: 1000, pongTimeout: 200, maxMissedPongs: 2 })
  assert.equal(app.wsManager.options.idleTimeout, 0)

  const silent = await open(t, `${url}/ws`, { autoPong: false })
  const { code, reason, at } = await silent.closing
  assert.deepEqual({ code, reason }, { code: 1006, reason: '' })
  assertDue(at, silent, 1400, LATE_MS, 'detection with the env settings')
  assert.equal(silent.pings.length, 2)
})

test('bad heartbeat and idle env values throw FST_WSM_ENV_INVALID', () => {
  const bad: Array<Record<string, string>> = [
    { PING_INTERVAL: 'abc' },
    { PING_INTERVAL: '5' },
    { PING_INTERVAL: '1000', PONG_TIMEOUT: '1000' },
    { PING_INTERVAL: '1000', PONG_TIMEOUT: '1500' },
    { PONG_TIMEOUT: '30000' },
    { MAX_MISSED_PONGS: '0' },
    { MAX_MISSED_PONGS: '1.5' },
    { HEARTBEAT_ENABLED: 'maybe' },
    { IDLE_TIMEOUT: '-1' },
    { IDLE_TIMEOUT: 'never' }
  ]
  for (const env of bad) {
    assert.throws(() => loadConfig(env), { code: 'FST_WSM_ENV_INVALID' }, JSON.stringify(env))
  }
})

test('invalid heartbeat and idle options fail ready() with FST_WSM_OPTION_INVALID', async (t) => {
  const plugin: Array<Record<string, unknown>> = [
    { heartbeat: { pingInterval: 100, pongTimeout: 100 } },
    { heartbeat: { pingInterval: 5 } },
    { heartbeat: { maxMissedPongs: 0 } },
    { heartbeat: { pingInterval: 1000, pongTimeout: 200, maxMissedPongs: 2, maxDetectionTime: 1000 } },
    { heartbeat: { interval: 100 } },
    { heartbeat: 'on' },
    { idleTimeout: -1 },
    { idleTimeout: 1.5 }
  ]
  for (const options of plugin) {
    const app = Fastify({ logger: false })
    t.after(() => app.close())
    app.register(wsManager, { auth: false, ...options } as WsManagerOptions)
    await assert.rejects(async () => { await app.ready() }, { code: 'FST_WSM_OPTION_INVALID' }, JSON.stringify(options))
  }
  const route: Array<Record<string, unknown>> = [
    { heartbeat: { pingInterval: 50 } }, // the plugin's pongTimeout of 80 is not below it
    { heartbeat: { pongTimeout: 0 } },
    { heartbeat: { maxMissedPongs: 101 } },
    { heartbeat: { pingInterval: 1000, maxMissedPongs: 3 } }, // 1000 + 3 × 80 over maxDetectionTime 1200
    { heartbeat: true },
    { idleTimeout: -5 }
  ]
  for (const config of route) {
    const app = Fastify({ logger: false })
    t.after(() => app.close())
    app.register(wsManager, { auth: false, heartbeat: { pingInterval: 200, pongTimeout: 80, maxDetectionTime: 1200 } })
    app.register(async (scope) => {
      scope.get('/ws', { websocket: true, config: { wsManager: config } }, () => {})
    })
    await assert.rejects(async () => { await app.ready() }, { code: 'FST_WSM_OPTION_INVALID' }, JSON.stringify(config))
  }
  // Control: the same plugin options with a valid route config are fine.
  const app = Fastify({ logger: false })
  t.after(() => app.close())
  app.register(wsManager, { auth: false, heartbeat: { pingInterval: 200, pongTimeout: 80, maxDetectionTime: 1200 } })
  app.register(async (scope) => {
    scope.get('/ws', { websocket: true, config: { wsManager: { heartbeat: { pingInterval: 300, maxMissedPongs: 2 }, idleTimeout: 1000 } } }, () => {})
  })
  await app.ready()
})
