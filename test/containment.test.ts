import { test } from 'node:test'
import assert from 'node:assert/strict'
import { build, closed, connect, listen, logCapture, nextMessage, waitFor } from './helper'

async function app (t: import('node:test').TestContext) {
  const logs = logCapture()
  const server = await build(t, { auth: false }, { fastify: { logger: { level: 'info', stream: logs.stream } } })
  server.get('/echo', { websocket: true }, (socket) => {
    socket.on('message', (data) => socket.send(data))
  })
  return { server, logs }
}

async function expectEchoStillWorks (t: import('node:test').TestContext, url: string): Promise<void> {
  const other = await connect(t, url + '/echo')
  other.send('alive')
  assert.equal(await nextMessage(other), 'alive')
}

test('a handler that throws closes its connection with 1011 and logs the error with the connection bindings', async (t) => {
  const { server, logs } = await app(t)
  server.get('/throws', { websocket: true }, () => {
    throw new Error('handler exploded')
  })
  const url = await listen(server)
  const client = await connect(t, url + '/throws')
  assert.deepEqual(await closed(client), { code: 1011, reason: 'Internal error' })
  const line = logs.lines.find((l) => l.msg === 'connection handler failed')
  assert.ok(line)
  assert.equal(line.level, 50)
  assert.equal(line.source, 'handler')
  assert.equal((line.err as { message: string }).message, 'handler exploded')
  assert.equal(typeof line.connectionId, 'string')
  assert.equal(line.route, '/throws')
  assert.ok('userId' in line)
  await waitFor(() => server.wsManager.connections.size === 0)
  await expectEchoStillWorks(t, url)
})

test('a handler whose promise rejects closes with 1011', async (t) => {
  const { server, logs } = await app(t)
  server.get('/rejects', { websocket: true }, async () => {
    await new Promise((resolve) => setTimeout(resolve, 5))
    throw new Error('async failure')
  })
  const url = await listen(server)
  const client = await connect(t, url + '/rejects')
  assert.equal((await closed(client)).code, 1011)
  assert.ok(logs.lines.some((l) => l.msg === 'connection handler failed' && (l.err as { message: string }).message === 'async failure'))
  await expectEchoStillWorks(t, url)
})

test('a message listener that throws closes only its connection with 1011; the process carries on', async (t) => {
  const { server, logs } = await app(t)
  server.get('/listener', { websocket: true }, (socket) => {
    socket.on('message', (data) => {
      if (data.toString() === 'bad') throw new TypeError('cannot handle this message')
      socket.send(`ok ${data.toString()}`)
    })
  })
  const url = await listen(server)
  const bystander = await connect(t, url + '/listener')
  const victim = await connect(t, url + '/listener')
  victim.send('fine')
  assert.equal(await nextMessage(victim), 'ok fine')
  victim.send('bad')
  assert.deepEqual(await closed(victim), { code: 1011, reason: 'Internal error' })
  bystander.send('still here')
  assert.equal(await nextMessage(bystander), 'ok still here')
  const line = logs.lines.find((l) => l.source === 'listener:message')
  assert.ok(line)
  assert.equal((line.err as { type: string }).type, 'TypeError')
})

test('listeners added with once, addEventListener and onmessage are contained too', async (t) => {
  const { server } = await app(t)
  server.get('/styles', { websocket: true }, (socket, request) => {
    const style = new URL(request.url, 'http://x').searchParams.get('style')
    const boom = (): void => { throw new Error(`boom from ${style}`) }
    if (style === 'once') socket.once('message', boom)
    else if (style === 'event') socket.addEventListener('message', boom)
    else if (style === 'property') socket.onmessage = boom
    else if (style === 'ping') socket.on('ping', boom)
  })
  const url = await listen(server)
  for (const style of ['once', 'event', 'property', 'ping']) {
    const client = await connect(t, `${url}/styles?style=${style}`)
    if (style === 'ping') client.ping()
    else client.send('x')
    assert.equal((await closed(client)).code, 1011, style)
  }
  await expectEchoStillWorks(t, url)
})

test('a close listener that throws is logged and the connection still leaves the registry', async (t) => {
  const { server, logs } = await app(t)
  server.get('/close-throws', { websocket: true }, (socket) => {
    socket.on('close', () => { throw new Error('close listener failed') })
  })
  const url = await listen(server)
  const client = await connect(t, url + '/close-throws')
  await waitFor(() => server.wsManager.connections.size === 1)
  client.close(1000)
  await waitFor(() => logs.lines.some((l) => l.source === 'listener:close'))
  assert.equal(server.wsManager.connections.size, 0)
  await expectEchoStillWorks(t, url)
})

test('removing listeners still works on a managed socket', async (t) => {
  const { server } = await app(t)
  server.get('/remove', { websocket: true }, (socket) => {
    const first = (): void => { throw new Error('should have been removed') }
    const second = (): void => { throw new Error('should have been removed too') }
    socket.on('message', first)
    socket.addEventListener('message', second)
    socket.removeListener('message', first)
    socket.removeEventListener('message', second)
    socket.on('message', (data) => socket.send(data))
  })
  const url = await listen(server)
  const client = await connect(t, url + '/remove')
  client.send('kept')
  assert.equal(await nextMessage(client), 'kept')
})
