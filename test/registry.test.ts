import { test } from 'node:test'
import assert from 'node:assert/strict'
import WebSocket from 'ws'
import { Connection } from '../lib/index'
import { build, closed, connect, listen, nextMessage, waitFor } from './helper'

test('each socket becomes a managed connection with identity, route and counters', async (t) => {
  const app = await build(t, { auth: false })
  let seen: Connection | null = null
  app.get('/rooms/:room', { websocket: true }, (socket, request) => {
    seen = request.wsConnection
    socket.on('message', (data) => socket.send(`échо ${data.toString()}`))
  })
  const url = await listen(app)
  const client = await connect(t, url + '/rooms/7')
  client.send('héllo') // 6 bytes
  assert.equal(await nextMessage(client), 'échо héllo')
  const connection = seen as unknown as Connection
  assert.ok(connection instanceof Connection)
  assert.match(connection.id, /^[0-9a-f-]{36}$/)
  assert.equal(connection.userId, null)
  assert.equal(connection.user, null)
  assert.equal(connection.route, '/rooms/:room')
  assert.equal(connection.remoteAddress, '127.0.0.1')
  assert.equal(connection.state, 'open')
  assert.ok(connection.connectedAt <= connection.lastActivityAt)
  assert.equal(connection.messagesIn, 1)
  assert.equal(connection.bytesIn, 6)
  assert.equal(connection.messagesOut, 1)
  assert.equal(connection.bytesOut, Buffer.byteLength('échо héllo'))
  client.send(Buffer.alloc(10), { binary: true })
  await nextMessage(client)
  assert.equal(connection.messagesIn, 2)
  assert.equal(connection.bytesIn, 16)
  client.ping() // control frames are not messages
  await new Promise((resolve) => client.once('pong', resolve))
  assert.equal(connection.messagesIn, 2)

  const registry = app.wsManager.connections
  assert.equal(registry.size, 1)
  assert.equal(registry.get(connection.id), connection)
  assert.deepEqual(registry.byRoute('/rooms/:room'), [connection])
  assert.deepEqual(registry.byRoute('/other'), [])
  assert.deepEqual(registry.byUser('nobody'), [])
  assert.deepEqual([...registry], [connection])
  assert.deepEqual(app.wsManager.getConnectionsByUserId('nobody'), [])
  assert.deepEqual(await app.wsManager.checkConnectionHealth(), {
    activeConnections: 1, healthyConnections: 1, unhealthyConnections: 0, averageLatency: null
  })

  const done = closed(client)
  const result = await connection.close(4001, 'app says bye')
  assert.equal(result.clean, true)
  assert.deepEqual(await done, { code: 4001, reason: 'app says bye' })
  assert.equal(connection.state, 'closed')
  assert.equal(connection.closeCode, 4001)
  assert.equal(registry.size, 0)
  assert.equal(registry.get(connection.id), undefined)
})

test('injectWS connections are managed too', async (t) => {
  const app = await build(t, { auth: false })
  app.get('/ws', { websocket: true }, (socket, request) => {
    socket.send(String(request.wsConnection?.route))
  })
  await app.ready()
  let first: Promise<string> | undefined
  const ws = await app.injectWS('/ws', {}, { onInit: (client) => { first = nextMessage(client) } })
  t.after(() => ws.terminate())
  assert.equal(await first, '/ws')
  assert.equal(app.wsManager.connections.size, 1)
  ws.terminate()
  await waitFor(() => app.wsManager.connections.size === 0)
})

test('closeAll closes every connection with the given code', async (t) => {
  const app = await build(t, { auth: false })
  app.get('/a', { websocket: true }, () => {})
  app.get('/b', { websocket: true }, () => {})
  const url = await listen(app)
  const clients = [await connect(t, url + '/a'), await connect(t, url + '/b'), await connect(t, url + '/b')]
  await waitFor(() => app.wsManager.connections.size === 3)
  assert.equal(app.wsManager.connections.byRoute('/b').length, 2)
  const seen = clients.map((c) => closed(c))
  const results = await app.wsManager.closeAll({ code: 4100, reason: 'maintenance' })
  assert.equal(results.length, 3)
  assert.ok(results.every((r) => r.clean && r.code === 4100))
  for (const s of await Promise.all(seen)) assert.deepEqual(s, { code: 4100, reason: 'maintenance' })
  assert.equal(app.wsManager.connections.size, 0)
})

function timers (): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length
}

test('1,000 connect/disconnect cycles by every way out leave the registry empty and nothing behind', async (t) => {
  const app = await build(t, { auth: false, upgradeRateLimit: false, close: { timeout: 300 } })
  app.get('/churn', { websocket: true }, (socket, request) => {
    const mode = new URL(request.url, 'http://x').searchParams.get('mode')
    if (mode === 'throw') throw new Error('handler throw')
    if (mode === 'server-close') {
      request.wsConnection?.close(1000, 'done').catch(() => {})
      return
    }
    if (mode === 'server-terminate') {
      setImmediate(() => socket.terminate())
      return
    }
    socket.on('message', () => socket.send('ack'))
  })
  const url = await listen(app)
  const wss = app.websocketServer
  const upgradeListeners = app.server.listenerCount('upgrade')
  const baseTimers = timers()
  const modes = ['client-close', 'client-terminate', 'throw', 'server-close', 'server-terminate']

  let cycle = 0
  const batch = 50
  while (cycle < 1000) {
    const round: Promise<void>[] = []
    for (let i = 0; i < batch; i++, cycle++) {
      const mode = modes[cycle % modes.length]
      round.push((async () => {
        const ws = new WebSocket(`${url}/churn?mode=${mode}`)
        const end = new Promise<void>((resolve) => ws.once('close', () => resolve()))
        ws.on('error', () => {})
        await new Promise<void>((resolve) => ws.once('open', () => resolve()))
        if (mode === 'client-close') ws.close(1000)
        else if (mode === 'client-terminate') ws.terminate()
        await end
      })())
    }
    await Promise.all(round)
  }
  await waitFor(() => app.wsManager.connections.size === 0, 5000, 'registry to empty')
  const manager = app.wsManager
  const { connections, admission } = manager.stats()
  assert.equal(connections.active, 0)
  assert.equal(connections.opened, 1000)
  assert.equal(connections.closed, 1000)
  assert.equal(admission.messages?.buckets, 0, 'every rate bucket released')
  assert.equal(manager.heartbeat.getStats().tracked, 0, 'nothing left under heartbeat')
  assert.deepEqual((manager.connections as unknown as { indexSizes: () => unknown }).indexSizes(), { users: 0, routes: 0, ips: 0 })
  assert.equal(manager.closer.getClosingCount(), 0)
  await waitFor(() => wss.clients.size === 0, 2000, 'ws client set to empty')
  assert.equal(app.server.listenerCount('upgrade'), upgradeListeners)
  await waitFor(() => timers() <= baseTimers, 2000, 'timers to be cleared')
})

test('an open connection keeps neither its request nor its HTTP response alive', async (t) => {
  const { setFlagsFromString } = await import('node:v8')
  const { runInNewContext } = await import('node:vm')
  setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc') as () => void
  const app = await build(t, { auth: false })
  const refs: Array<WeakRef<object>> = []
  app.get('/ws', { websocket: true }, (_socket, request) => {
    refs.push(new WeakRef(request), new WeakRef(request.raw))
  })
  const url = await listen(app)
  const client = await connect(t, url + '/ws')
  await waitFor(() => refs.length === 2)
  client.send('still open')
  for (let i = 0; i < 20 && refs.some((r) => r.deref() !== undefined); i++) {
    await new Promise((resolve) => setTimeout(resolve, 20))
    gc()
  }
  assert.equal(app.wsManager.connections.size, 1)
  assert.equal(refs[0].deref(), undefined, 'the FastifyRequest was collected')
  assert.equal(refs[1].deref(), undefined, 'the IncomingMessage was collected')
})
