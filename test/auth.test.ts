import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { createHmac, generateKeyPairSync } from 'node:crypto'
import type { IncomingHttpHeaders } from 'node:http'
import { connect as netConnect } from 'node:net'
import Fastify, { type FastifyInstance } from 'fastify'
import cookie from '@fastify/cookie'
import jwt, { type FastifyJWTOptions } from '@fastify/jwt'
import WebSocket, { type ClientOptions } from 'ws'
import wsManager, { type WsManagerOptions } from '../lib/index'
import { attempt, build, closed, connect, listen, logCapture, nextMessage, waitFor } from './helper'

const SECRET = 'auth-test-secret-0123456789-abcdefghijklmnop'

interface Seen {
  userId: string | null
  connectionUser: unknown
  requestUser: unknown
  url: string
  query: unknown
  protocol: string
}

interface Started { app: FastifyInstance, url: string, seen: Seen[] }

interface StartOptions {
  logs?: ReturnType<typeof logCapture>
  jwt?: Partial<FastifyJWTOptions>
  cookie?: boolean
}

// An app with @fastify/jwt and one echo route that records what the handler saw. The
// upgrade rate limit is off unless a test turns it on: these tests open many sockets as one user.
async function start (t: TestContext, options: WsManagerOptions = {}, setup: StartOptions = {}): Promise<Started> {
  const seen: Seen[] = []
  const app = await build(t, { upgradeRateLimit: false, ...options }, {
    fastify: setup.logs === undefined ? { logger: false } : { logger: { level: 'trace', stream: setup.logs.stream } },
    before: async (app) => {
      if (setup.cookie === true) await app.register(cookie, { secret: 'cookie-signing-secret-0123456789' })
      await app.register(jwt, { secret: SECRET, ...setup.jwt } as FastifyJWTOptions)
    }
  })
  app.get('/ws', { websocket: true }, (socket, request) => {
    const connection = request.wsConnection
    seen.push({
      userId: connection?.userId ?? null,
      connectionUser: connection?.user ?? null,
      requestUser: (request as unknown as { user: unknown }).user,
      url: request.url,
      query: { ...(request.query as object) },
      protocol: socket.protocol
    })
    socket.on('message', (data) => socket.send(data))
  })
  const url = await listen(app)
  return { app, url, seen }
}

interface Refusal {
  status: number
  headers: IncomingHttpHeaders
  body: { statusCode: number, error: string, message: string }
}

/** Opens a client that must be refused before the upgrade; resolves with the HTTP answer. */
async function refusal (t: TestContext, url: string, options: ClientOptions & { protocols?: string[] } = {}): Promise<Refusal> {
  const result = await attempt(t, url, options)
  if (result.ws !== null || result.status === null || result.body === null) throw new Error('the upgrade succeeded; a refusal was expected')
  return { status: result.status, headers: result.headers, body: result.body }
}

function assertUnauthorized (answer: Refusal, what: string): void {
  assert.equal(answer.status, 401, what)
  assert.match(String(answer.headers['www-authenticate']), /^Bearer\b/, what)
  assert.equal(answer.body.statusCode, 401, what)
  assert.equal(answer.body.error, 'Unauthorized', what)
  assert.equal(typeof answer.body.message, 'string', what)
}

const bearer = (token: string): ClientOptions => ({ headers: { authorization: `Bearer ${token}` } })

function b64 (value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url')
}

/** An HMAC-signed JWT made by hand, for algorithms and keys @fastify/jwt would not sign with. */
function hmacToken (alg: 'HS256' | 'HS384' | 'HS512', payload: Record<string, unknown>, key: string | Buffer): string {
  const signed = `${b64({ alg, typ: 'JWT' })}.${b64(payload)}`
  return `${signed}.${createHmac(`sha${alg.slice(2)}`, key).update(signed).digest('base64url')}`
}

const nowSeconds = (): number => Math.floor(Date.now() / 1000)

/** Sends a handshake over raw TCP and returns the response head; the socket is destroyed at once. */
function rawHandshake (t: TestContext, url: string, extraHeaders: string): Promise<string> {
  const { port } = new URL(url)
  const socket = netConnect({ port: Number(port), host: '127.0.0.1' })
  t.after(() => socket.destroy())
  socket.on('error', () => {})
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no handshake answer within 5000 ms')), 5000)
    let head = ''
    socket.on('data', (chunk: Buffer) => {
      head += chunk.toString('latin1')
      const end = head.indexOf('\r\n\r\n')
      if (end !== -1) {
        clearTimeout(timer)
        // An upgraded peer that never answers a close frame would hold app.close() for the close timeout.
        socket.destroy()
        resolve(head.slice(0, end))
      }
    })
    socket.once('connect', () => {
      socket.write(`GET /ws HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n${extraHeaders}\r\n`)
    })
  })
}

test('a token in the Authorization header authenticates: request.user, wsConnection.user and userId hold the claims, byUser indexes it', async (t) => {
  const { app, url, seen } = await start(t)
  const token = app.jwt.sign({ sub: 'alice', role: 'admin' })
  const client = await connect(t, url + '/ws', bearer(token))
  await waitFor(() => seen.length === 1)
  assert.equal(seen[0].userId, 'alice')
  const user = seen[0].connectionUser as Record<string, unknown>
  assert.equal(user.sub, 'alice')
  assert.equal(user.role, 'admin')
  assert.equal(typeof user.iat, 'number')
  assert.deepEqual(seen[0].requestUser, user)
  const byUser = app.wsManager.connections.byUser('alice')
  assert.equal(byUser.length, 1)
  assert.equal(byUser[0].userId, 'alice')
  assert.equal(app.wsManager.connections.byUser('bob').length, 0)

  client.send('ping')
  assert.equal(await nextMessage(client), 'ping')
})

test('a subprotocol bearer.<jwt> authenticates; the server selects the other offered protocol and never echoes the token', async (t) => {
  const { app, url, seen } = await start(t)
  const token = app.jwt.sign({ sub: 'sub-user' })

  for (const protocols of [['chat', `bearer.${token}`], [`bearer.${token}`, 'chat']]) {
    const headers: IncomingHttpHeaders[] = []
    const ws = new WebSocket(url + '/ws', protocols)
    t.after(() => ws.terminate())
    ws.once('upgrade', (res) => headers.push(res.headers))
    await new Promise<void>((resolve, reject) => {
      ws.once('open', resolve)
      ws.once('error', reject)
    })
    assert.equal(ws.protocol, 'chat', protocols.join(', '))
    assert.equal(headers[0]['sec-websocket-protocol'], 'chat')
    ws.terminate()
  }
  await waitFor(() => seen.length === 2)
  assert.deepEqual(seen.map((s) => [s.userId, s.protocol]), [['sub-user', 'chat'], ['sub-user', 'chat']])

  // Offered alone, the token entry is still never selected: the 101 carries no protocol at all.
  const head = await rawHandshake(t, url, `Sec-WebSocket-Protocol: bearer.${token}\r\n`)
  assert.match(head, /^HTTP\/1\.1 101 /)
  assert.doesNotMatch(head, /sec-websocket-protocol/i)
  assert.ok(!head.includes(token))
  await waitFor(() => seen.length === 3)
  assert.equal(seen[2].userId, 'sub-user')
})

test('a query token authenticates and is stripped from the URL the application sees; the parameter name is configurable', async (t) => {
  const { app, url, seen } = await start(t)
  const token = app.jwt.sign({ sub: 'query-user' })
  await connect(t, `${url}/ws?room=7&access_token=${token}`)
  await waitFor(() => seen.length === 1)
  assert.equal(seen[0].userId, 'query-user')
  assert.equal(seen[0].url, '/ws?room=7')
  assert.deepEqual(seen[0].query, { room: '7' })

  const custom = await start(t, { auth: { queryParam: 'token' } })
  const other = custom.app.jwt.sign({ sub: 'custom-query' })
  await connect(t, `${custom.url}/ws?token=${other}`)
  await waitFor(() => custom.seen.length === 1)
  assert.equal(custom.seen[0].userId, 'custom-query')
  assert.equal(custom.seen[0].url, '/ws')
  // The default name is not a source any more once another is configured.
  assertUnauthorized(await refusal(t, `${custom.url}/ws?access_token=${other}`), 'access_token with queryParam token')
})

test('queryParam: false turns the query source off', async (t) => {
  const { app, url, seen } = await start(t, { auth: { queryParam: false } })
  const token = app.jwt.sign({ sub: 'q' })
  assertUnauthorized(await refusal(t, `${url}/ws?access_token=${token}`), 'query source off')
  assert.equal(seen.length, 0)
})

test('a cookie authenticates where @fastify/jwt has the cookie option, signed or not', async (t) => {
  const plain = await start(t, {}, { cookie: true, jwt: { cookie: { cookieName: 'token', signed: false } } })
  const token = plain.app.jwt.sign({ sub: 'cookie-user' })
  await connect(t, plain.url + '/ws', { headers: { cookie: `token=${token}` } })
  await waitFor(() => plain.seen.length === 1)
  assert.equal(plain.seen[0].userId, 'cookie-user')

  const signed = await start(t, {}, { cookie: true, jwt: { cookie: { cookieName: 'token', signed: true } } })
  const signedToken = signed.app.jwt.sign({ sub: 'signed-cookie-user' })
  const value = signed.app.signCookie(signedToken)
  await connect(t, signed.url + '/ws', { headers: { cookie: `token=${encodeURIComponent(value)}` } })
  await waitFor(() => signed.seen.length === 1)
  assert.equal(signed.seen[0].userId, 'signed-cookie-user')
  // A signed cookie whose signature does not check out is no token at all.
  assertUnauthorized(await refusal(t, signed.url + '/ws', { headers: { cookie: `token=${signedToken}.forged` } }), 'bad cookie signature')

  // Without the cookie option the cookie is not a source.
  const none = await start(t, {}, { cookie: true })
  assertUnauthorized(await refusal(t, none.url + '/ws', { headers: { cookie: `token=${none.app.jwt.sign({ sub: 'x' })}` } }), 'no cookie option')
})

test('sources are taken in order: header, then subprotocol, then query, then cookie', async (t) => {
  const { app, url, seen } = await start(t, {}, { cookie: true, jwt: { cookie: { cookieName: 'token', signed: false } } })
  const as = (sub: string): string => app.jwt.sign({ sub })
  const cookieHeader = (sub: string): string => `token=${as(sub)}`

  await connect(t, `${url}/ws?access_token=${as('query')}`, {
    protocols: ['chat', `bearer.${as('subprotocol')}`],
    headers: { authorization: `Bearer ${as('header')}`, cookie: cookieHeader('cookie') }
  })
  await connect(t, `${url}/ws?access_token=${as('query')}`, {
    protocols: ['chat', `bearer.${as('subprotocol')}`],
    headers: { cookie: cookieHeader('cookie') }
  })
  await connect(t, `${url}/ws?access_token=${as('query')}`, { headers: { cookie: cookieHeader('cookie') } })
  await connect(t, `${url}/ws`, { headers: { cookie: cookieHeader('cookie') } })
  await waitFor(() => seen.length === 4)
  assert.deepEqual(seen.map((s) => s.userId), ['header', 'subprotocol', 'query', 'cookie'])

  // The first source found is the one verified: a bad header token is not rescued by a good subprotocol one.
  assertUnauthorized(await refusal(t, url + '/ws', {
    protocols: ['chat', `bearer.${as('subprotocol')}`],
    headers: { authorization: 'Bearer not.a.token' }
  }), 'bad header, good subprotocol')
})

test('missing, malformed, badly signed, alg none, unpinned, not-yet-valid, expired and claimless tokens get 401 with WWW-Authenticate: Bearer before the upgrade', async (t) => {
  const logs = logCapture()
  const { app, url, seen } = await start(t, { auth: { failureLimit: false } }, { logs })
  const now = nowSeconds()
  const cases: Array<[string, ClientOptions & { protocols?: string[] }, string?]> = [
    ['missing', {}],
    ['empty bearer', { headers: { authorization: 'Bearer ' } }],
    ['malformed', bearer('not-a-jwt')],
    ['malformed parts', bearer('aaa.bbb.ccc')],
    ['badly signed', bearer(hmacToken('HS256', { sub: 'alice', iat: now }, 'another-secret-another-secret-1234'))],
    ['tampered payload', bearer((() => {
      const [h, , s] = app.jwt.sign({ sub: 'alice' }).split('.')
      return `${h}.${b64({ sub: 'admin' })}.${s}`
    })())],
    ['alg none', bearer(`${b64({ alg: 'none', typ: 'JWT' })}.${b64({ sub: 'alice', iat: now })}.`)],
    ['alg none with a signature', bearer(`${b64({ alg: 'none', typ: 'JWT' })}.${b64({ sub: 'alice', iat: now })}.c2ln`)],
    // Signed with the right secret, but HS512 is not the pinned HS256.
    ['unpinned algorithm', bearer(hmacToken('HS512', { sub: 'alice', iat: now }, SECRET))],
    ['not yet valid', bearer(app.jwt.sign({ sub: 'alice', nbf: now + 3600 }))],
    ['expired', bearer(app.jwt.sign({ sub: 'alice', iat: now - 120, exp: now - 60 }))],
    ['no sub claim', bearer(app.jwt.sign({ name: 'nobody' }))],
    ['expired, by subprotocol', { protocols: ['chat', `bearer.${app.jwt.sign({ sub: 'alice', iat: now - 120, exp: now - 60 })}`] }],
    ['alg none, by query', {}, `?access_token=${b64({ alg: 'none' })}.${b64({ sub: 'alice' })}.`]
  ]
  for (const [what, options, query] of cases) {
    const answer = await refusal(t, `${url}/ws${query ?? ''}`, options)
    assertUnauthorized(answer, what)
    if (what !== 'missing' && what !== 'empty bearer') {
      assert.match(String(answer.headers['www-authenticate']), /error="invalid_token"/, what)
    }
  }
  assert.equal(seen.length, 0, 'no handler ran')
  assert.equal(app.wsManager.connections.size, 0)
  const stats = app.wsManager.stats().admission
  assert.equal(stats.refused['401'], cases.length)
  assert.equal(stats.authFailures, cases.length)
  // Each refusal is logged, with a reason and without the token.
  const rejected = logs.lines.filter((l) => l.msg === 'upgrade rejected')
  assert.equal(rejected.length, cases.length)
  for (const line of rejected) {
    assert.equal(line.statusCode, 401)
    assert.equal(typeof line.reason, 'string')
  }
  // A loose look at the messages: the client learns which kind of failure it was.
  const expired = await refusal(t, url + '/ws', bearer(app.jwt.sign({ sub: 'alice', iat: now - 120, exp: now - 60 })))
  assert.match(expired.body.message, /expired/i)
  const missing = await refusal(t, url + '/ws')
  assert.match(missing.body.message, /missing/i)

  // And the same app lets a good token in.
  await connect(t, url + '/ws', bearer(app.jwt.sign({ sub: 'alice' })))
  await waitFor(() => seen.length === 1)
})

function rsaKeys (): { private: string, public: string } {
  const pair = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' }
  })
  return { private: pair.privateKey, public: pair.publicKey }
}

test('with an RSA key pair, RS256 tokens get in and an HS256 token signed with the public key gets 401 (auth.algorithms or verify.algorithms)', async (t) => {
  const keys = rsaKeys()
  const setups: Array<[string, WsManagerOptions, Partial<FastifyJWTOptions>]> = [
    ['auth.algorithms', { auth: { algorithms: ['RS256'], failureLimit: false } }, { secret: keys, sign: { algorithm: 'RS256' } }],
    ['verify.algorithms', { auth: { failureLimit: false } }, { secret: keys, sign: { algorithm: 'RS256' }, verify: { algorithms: ['RS256'] } }]
  ]
  for (const [what, options, jwtOptions] of setups) {
    const { app, url, seen } = await start(t, options, { jwt: jwtOptions })
    const good = app.jwt.sign({ sub: 'rsa-user' })
    assert.equal(JSON.parse(Buffer.from(good.split('.')[0], 'base64url').toString()).alg, 'RS256')
    await connect(t, url + '/ws', bearer(good))
    await waitFor(() => seen.length === 1, 5000, what)
    assert.equal(seen[0].userId, 'rsa-user')

    const payload = { sub: 'attacker', iat: nowSeconds() }
    for (const key of [keys.public, Buffer.from(keys.public)]) {
      assertUnauthorized(await refusal(t, url + '/ws', bearer(hmacToken('HS256', payload, key))), `${what}: HS256 with the public key`)
    }
    assertUnauthorized(await refusal(t, url + '/ws', bearer(`${b64({ alg: 'none' })}.${b64(payload)}.`)), `${what}: alg none`)
    assert.equal(seen.length, 1, what)
  }
})

test('tokens never reach a log line, from the header, the subprotocol or the query, accepted or refused', async (t) => {
  const logs = logCapture()
  const { app, url, seen } = await start(t, { auth: { failureLimit: false } }, { logs })
  const tokens = {
    header: app.jwt.sign({ sub: 'log-header' }),
    subprotocol: app.jwt.sign({ sub: 'log-subprotocol' }),
    query: app.jwt.sign({ sub: 'log-query' }),
    badHeader: hmacToken('HS256', { sub: 'bad-header' }, 'wrong-secret-wrong-secret-wrong-secret'),
    badSubprotocol: hmacToken('HS256', { sub: 'bad-subprotocol' }, 'wrong-secret-wrong-secret-wrong-secret'),
    badQuery: hmacToken('HS256', { sub: 'bad-query' }, 'wrong-secret-wrong-secret-wrong-secret')
  }
  const a = await connect(t, url + '/ws', bearer(tokens.header))
  const b = await connect(t, url + '/ws', { protocols: ['chat', `bearer.${tokens.subprotocol}`] })
  const c = await connect(t, `${url}/ws?room=lobby&access_token=${tokens.query}`)
  assertUnauthorized(await refusal(t, url + '/ws', bearer(tokens.badHeader)), 'bad header')
  assertUnauthorized(await refusal(t, url + '/ws', { protocols: ['chat', `bearer.${tokens.badSubprotocol}`] }), 'bad subprotocol')
  assertUnauthorized(await refusal(t, `${url}/ws?access_token=${tokens.badQuery}`), 'bad query')
  await waitFor(() => seen.length === 3)
  for (const client of [a, b, c]) {
    client.send('hi')
    await nextMessage(client)
  }
  const done = Promise.all([a, b, c].map((client) => closed(client)))
  for (const client of [a, b, c]) client.close(1000, 'bye')
  await done
  await waitFor(() => logs.lines.filter((l) => l.msg === 'connection closed').length === 3)

  // The log is not empty: requests, opens, refusals and closes were all written, with the URL minus the token.
  const urls = logs.lines.map((l) => (l.req as { url?: string } | undefined)?.url).filter((u) => u !== undefined)
  assert.ok(urls.includes('/ws?room=lobby'), 'the query request was logged with the token removed')
  assert.equal(logs.lines.filter((l) => l.msg === 'connection opened').length, 3)
  assert.equal(logs.lines.filter((l) => l.msg === 'upgrade rejected').length, 3)
  const text = logs.text()
  for (const [source, token] of Object.entries(tokens)) {
    assert.ok(!text.includes(token), `the ${source} token is in the log`)
    assert.ok(!text.includes(token.split('.')[2]), `the ${source} token's signature is in the log`)
  }
})

test('a token that expires while open closes its connection with 1008 "Token expired" at exp', async (t) => {
  const { app, url } = await start(t)
  // At least 0.8 s of life; exp has a one-second resolution.
  const exp = Math.ceil((Date.now() + 800) / 1000)
  const client = await connect(t, url + '/ws', bearer(app.jwt.sign({ sub: 'expiring', exp })))
  const long = await connect(t, url + '/ws', bearer(app.jwt.sign({ sub: 'long-lived', expiresIn: '1h' })))
  const result = await closed(client, 4000)
  const at = Date.now()
  assert.deepEqual(result, { code: 1008, reason: 'Token expired' })
  assert.ok(at >= exp * 1000, `closed ${exp * 1000 - at} ms before exp`)
  assert.ok(at <= exp * 1000 + 600, `closed ${at - exp * 1000} ms after exp`)
  await waitFor(() => app.wsManager.connections.size === 1)
  assert.equal(app.wsManager.stats().connections.expiredClosed, 1)
  // Only the expired connection went.
  long.send('still here')
  assert.equal(await nextMessage(long), 'still here')
})

test('expiryGraceMs delays the expiry close; closeOnExpiry: false keeps the connection open', async (t) => {
  const grace = await start(t, { auth: { expiryGraceMs: 400 } })
  const off = await start(t, { auth: { closeOnExpiry: false } })
  const exp = Math.ceil((Date.now() + 800) / 1000)
  const graced = await connect(t, grace.url + '/ws', bearer(grace.app.jwt.sign({ sub: 'g', exp })))
  const kept = await connect(t, off.url + '/ws', bearer(off.app.jwt.sign({ sub: 'k', exp })))
  const keptClose = closed(kept, 30_000).catch(() => null)

  const result = await closed(graced, 4000)
  const at = Date.now()
  assert.deepEqual(result, { code: 1008, reason: 'Token expired' })
  assert.ok(at >= exp * 1000 + 400, `closed ${exp * 1000 + 400 - at} ms before exp + grace`)
  assert.ok(at <= exp * 1000 + 400 + 600, `closed ${at - exp * 1000 - 400} ms after exp + grace`)

  // Past exp + 400 ms the other connection still answers: several sweeps have passed it by.
  kept.send('alive')
  assert.equal(await nextMessage(kept), 'alive')
  assert.equal(kept.readyState, WebSocket.OPEN)
  assert.equal(off.app.wsManager.stats().connections.expiredClosed, 0)
  kept.terminate()
  await keptClose
})

test('userIdClaim picks the claim that names the user; a numeric id becomes a string; a token without it gets 401', async (t) => {
  const { app, url, seen } = await start(t, { auth: { userIdClaim: 'uid' } })
  await connect(t, url + '/ws', bearer(app.jwt.sign({ sub: 'ignored', uid: 'from-uid' })))
  await connect(t, url + '/ws', bearer(app.jwt.sign({ uid: 42 })))
  await waitFor(() => seen.length === 2)
  assert.deepEqual(seen.map((s) => s.userId), ['from-uid', '42'])
  assert.equal(app.wsManager.connections.byUser('42').length, 1)
  assert.equal((seen[1].connectionUser as { uid: unknown }).uid, 42)
  assertUnauthorized(await refusal(t, url + '/ws', bearer(app.jwt.sign({ sub: 'only-sub' }))), 'no uid claim')
  assertUnauthorized(await refusal(t, url + '/ws', bearer(app.jwt.sign({ uid: '' }))), 'empty uid claim')
})

test('with auth on and no @fastify/jwt, ready() fails with FST_WSM_JWT_MISSING; @fastify/jwt may come after the plugin', async (t) => {
  const missing = Fastify()
  t.after(() => missing.close())
  missing.register(wsManager)
  missing.register(async (app) => {
    app.get('/ws', { websocket: true }, () => {})
  })
  await assert.rejects(async () => { await missing.ready() }, { code: 'FST_WSM_JWT_MISSING' })

  // Registered after the plugin, @fastify/jwt is picked up when the app is ready.
  const later = Fastify()
  t.after(() => later.close())
  await later.register(wsManager, { upgradeRateLimit: false })
  await later.register(jwt, { secret: SECRET })
  const seen: Array<string | null> = []
  later.get('/ws', { websocket: true }, (_socket, request) => { seen.push(request.wsConnection?.userId ?? null) })
  const url = await listen(later)
  assertUnauthorized(await refusal(t, url + '/ws'), 'jwt registered later')
  await connect(t, url + '/ws', bearer(later.jwt.sign({ sub: 'late' })))
  await waitFor(() => seen.length === 1)
  assert.deepEqual(seen, ['late'])

  // auth: false needs no @fastify/jwt.
  const open = Fastify()
  t.after(() => open.close())
  await open.register(wsManager, { auth: false })
  open.get('/ws', { websocket: true }, () => {})
  await open.ready()
})

test('bad auth settings are coded registration errors', async () => {
  const bad: Array<[WsManagerOptions, string]> = [
    [{ auth: { algorithms: ['none'] } }, 'FST_WSM_OPTION_INVALID'],
    [{ auth: { algorithms: [] } }, 'FST_WSM_OPTION_INVALID'],
    [{ auth: { queryParam: 'a b' } }, 'FST_WSM_OPTION_INVALID'],
    [{ auth: { subprotocolPrefix: '' } }, 'FST_WSM_OPTION_INVALID'],
    [{ auth: { expiryGraceMs: -1 } }, 'FST_WSM_OPTION_INVALID'],
    [{ auth: { failureLimit: { max: 0 } } }, 'FST_WSM_OPTION_INVALID'],
    [{ auth: { closeOnExpiry: 'yes' as never } }, 'FST_WSM_OPTION_INVALID']
  ]
  for (const [options, code] of bad) {
    const app = Fastify()
    app.register(jwt, { secret: SECRET })
    app.register(wsManager, options)
    await assert.rejects(async () => { await app.ready() }, { code }, JSON.stringify(options))
    await app.close()
  }
  // A route can only opt out of auth, not into anything else.
  const app = Fastify()
  app.register(jwt, { secret: SECRET })
  app.register(wsManager)
  app.register(async (child) => {
    child.get('/ws', { websocket: true, config: { wsManager: { auth: true as never } } }, () => {})
  })
  await assert.rejects(async () => { await app.ready() }, { code: 'FST_WSM_OPTION_INVALID' })
  await app.close()
})

test('a query token never reaches a log line, even with the parameter name percent-encoded or on a plain HTTP request', async (t) => {
  const logs = logCapture()
  const { app, url } = await start(t, { auth: { failureLimit: false } }, { logs })
  const token = app.jwt.sign({ sub: 'leaky' })
  const ws = new WebSocket(`${url}/ws?access%5Ftoken=${token}`)
  t.after(() => ws.terminate())
  ws.on('error', () => {})
  await new Promise<void>((resolve) => {
    ws.once('open', () => resolve())
    ws.once('unexpected-response', (_req, res) => {
      res.resume()
      res.once('end', () => resolve())
    })
  })
  const plain = await fetch(`${url.replace('ws://', 'http://')}/ws?access_token=${token}`)
  await plain.arrayBuffer()
  await waitFor(() => logs.lines.filter((l) => l.msg === 'incoming request').length === 2)
  assert.ok(!logs.text().includes(token.split('.')[2]), 'the token is in the log')
})

test('@fastify/jwt\'s trusted check (token revocation) applies to upgrades too', async (t) => {
  const revoked = new Set<string>()
  const { app, url, seen } = await start(t, {}, {
    jwt: { trusted: (_request: unknown, decoded: { jti?: string }) => decoded.jti === undefined || !revoked.has(decoded.jti) } as Partial<FastifyJWTOptions>
  })
  await connect(t, url + '/ws', bearer(app.jwt.sign({ sub: 'alice', jti: 'good' })))
  await waitFor(() => seen.length === 1)
  revoked.add('stolen')
  assertUnauthorized(await refusal(t, url + '/ws', bearer(app.jwt.sign({ sub: 'alice', jti: 'stolen' }))), 'revoked token')
})
