import { test } from 'node:test'
import assert from 'node:assert/strict'
import WebSocket from 'ws'
import { build, closed, connect, listen, rawPeer, socketClosed, waitFor } from './helper'

test('app.close() sends 1001 with a reason to every connection, in parallel', async (t) => {
  const app = await build(t, { auth: false })
  app.get('/ws', { websocket: true }, () => {})
  const url = await listen(app)
  const clients = await Promise.all([1, 2, 3].map(() => connect(t, url + '/ws')))
  await waitFor(() => app.wsManager.connections.size === 3)
  const seen = clients.map((c) => closed(c))
  await app.close()
  for (const result of await Promise.all(seen)) {
    assert.deepEqual(result, { code: 1001, reason: 'Server shutting down' })
  }
  assert.equal(app.wsManager.connections.size, 0)
  const { active, opened, closed: closedCount } = app.wsManager.stats().connections
  assert.deepEqual({ active, opened, closed: closedCount }, { active: 0, opened: 3, closed: 3 })
})

test('close.shutdownCode and close.shutdownReason choose what clients see', async (t) => {
  const app = await build(t, { auth: false, close: { shutdownCode: 1012, shutdownReason: 'Deploying' } })
  app.get('/ws', { websocket: true }, () => {})
  const url = await listen(app)
  const client = await connect(t, url + '/ws')
  const seen = closed(client)
  await app.close()
  assert.deepEqual(await seen, { code: 1012, reason: 'Deploying' })
})

test('unresponsive peers are terminated and app.close() resolves within the close timeout plus one second', async (t) => {
  const timeout = 400
  const app = await build(t, { auth: false, close: { timeout } })
  app.get('/ws', { websocket: true }, (socket) => {
    // Fill the peer's receive window a little so the close frame queues behind data.
    socket.send(Buffer.alloc(64 * 1024))
  })
  const url = await listen(app)
  const peers = await Promise.all(Array.from({ length: 20 }, () => rawPeer(t, url, '/ws')))
  const responsive = await connect(t, url + '/ws')
  await waitFor(() => app.wsManager.connections.size === 21)
  const seen = closed(responsive)
  const started = Date.now()
  await app.close()
  const elapsed = Date.now() - started
  assert.ok(elapsed >= timeout - 20, `resolved after ${elapsed} ms, before the timeout`)
  assert.ok(elapsed < timeout + 1000, `resolved after ${elapsed} ms`)
  assert.equal((await seen).code, 1001)
  assert.equal(app.wsManager.connections.size, 0)
  const stats = app.wsManager.stats().close
  assert.equal(stats.forced, 20)
  assert.equal(stats.clean, 1)
  await Promise.all(peers.map((p) => socketClosed(p, 2000)))
})

test('an upgrade that arrives during shutdown gets 503 with a JSON body, and its socket is closed', async (t) => {
  const app = await build(t, { auth: false, close: { timeout: 1500 } })
  app.get('/ws', { websocket: true }, () => {})
  const url = await listen(app)
  await rawPeer(t, url, '/ws') // keeps shutdown busy for the whole close timeout
  await waitFor(() => app.wsManager.connections.size === 1)
  const closing = app.close()
  await waitFor(() => app.wsManager.shuttingDown)

  const late = new WebSocket(url + '/ws')
  t.after(() => late.terminate())
  const response = await new Promise<{ status: number | undefined, body: string, retryAfter: unknown }>((resolve, reject) => {
    late.once('open', () => reject(new Error('upgraded during shutdown')))
    late.once('error', reject)
    late.once('unexpected-response', (_req, res) => {
      let body = ''
      res.on('data', (chunk: Buffer) => { body += chunk.toString() })
      res.on('end', () => resolve({ status: res.statusCode, body, retryAfter: res.headers['retry-after'] }))
    })
  })
  assert.equal(response.status, 503)
  assert.deepEqual(JSON.parse(response.body), { statusCode: 503, error: 'Service Unavailable', message: 'Server is shutting down' })
  assert.equal(response.retryAfter, '1')

  // A raw client that never closes its side: the server must close the socket itself,
  // or every refused upgrade would keep a file descriptor open.
  const { connect: netConnect } = await import('node:net')
  const raw = netConnect({ port: Number(new URL(url).port), host: '127.0.0.1' })
  t.after(() => raw.destroy())
  let head = ''
  raw.on('data', (chunk: Buffer) => { head += chunk.toString() })
  raw.write('GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n')
  await socketClosed(raw, 1000)
  assert.match(head, /^HTTP\/1.1 503/)
  await closing
})
