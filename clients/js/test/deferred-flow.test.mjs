// End to end over real sockets: the kit against the real dtr-proxy binary in front of the
// stand-in OP, with a browser login, the verification service's webhook and a ping receiver.

import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { createPrivateKey, randomBytes } from 'node:crypto'
import { DtrClient, KeySet, oauth } from '../dist/index.js'
import {
  CLIENT_JWK,
  CLIENT_JWT_PEM,
  REDIRECT_URI,
  browserLogin,
  complete,
  interactionThenTokens,
  startOp,
  startPingReceiver,
  startProxy,
} from './harness.mjs'

let op
let proxy
let pings

const user = (what) => `${what}-${randomBytes(4).toString('hex')}`

before(async () => {
  op = await startOp()
  pings = await startPingReceiver()
  proxy = await startProxy(op, {
    clients: [
      { client_id: 'dtr-client', redirect_uris: [REDIRECT_URI], notification_endpoint: pings.url },
      { client_id: 'dtr-public', require_dpop: true, notification_endpoint: pings.url },
      { client_id: 'dtr-jwt', jwks: { keys: [CLIENT_JWK] }, notification_endpoint: pings.url },
    ],
  })
})

after(async () => {
  // DTR_TEST_PROXY_LOG=1 shows what the proxy logged (to explain a failure).
  if (process.env.DTR_TEST_PROXY_LOG && proxy) console.error(proxy.log.join(''))
  await proxy?.stop()
  await pings?.stop()
  await op?.stop()
})

function secretClient() {
  return DtrClient.discover(proxy.issuer, {
    client: { client_id: 'dtr-client' },
    clientAuth: oauth.ClientSecretBasic('dtr-client-secret'),
    redirectUri: REDIRECT_URI,
    allowInsecureRequests: true,
  })
}

function publicClient() {
  return DtrClient.discover(proxy.issuer, {
    client: { client_id: 'dtr-public' },
    clientAuth: oauth.None(),
    redirectUri: REDIRECT_URI,
    dpop: true,
    allowInsecureRequests: true,
  })
}

async function jwtClient() {
  const pem = createPrivateKey(CLIENT_JWT_PEM).export({ format: 'pem', type: 'pkcs8' })
  const der = Buffer.from(pem.toString().replace(/-----[^-]+-----|\s/g, ''), 'base64')
  const key = await crypto.subtle.importKey('pkcs8', der, { name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign'])
  return DtrClient.discover(proxy.issuer, {
    client: { client_id: 'dtr-jwt' },
    clientAuth: oauth.PrivateKeyJwt({ key, kid: CLIENT_JWK.kid }),
    redirectUri: REDIRECT_URI,
    allowInsecureRequests: true,
  })
}

/** Authorization request, browser login, acknowledgment, exchange: a running process. */
async function start(rp, username, options = {}) {
  const { url, pending } = await rp.authorizationUrl({ scope: 'openid profile email', ...options })
  const landed = await browserLogin(proxy.base, url, username)
  const ack = await rp.acknowledgment(landed.redirect ?? landed.formPost, pending)
  assert.equal(ack.type, 'deferred')
  const process = await rp.exchange(ack, pending)
  pings.tokens.set(process.deferredAuthId, process.notificationToken)
  return { process, pending, url, landed }
}

describe('deferred flow through the kit', () => {
  test('discovery names the deferred response type and the cancellation endpoint', async () => {
    const rp = await secretClient()
    assert.ok(rp.as.response_types_supported.includes('deferred_code'))
    assert.ok(rp.as.grant_types_supported.includes('urn:openid:params:grant-type:deferred'))
    assert.equal(rp.cancellationEndpoint, `${proxy.issuer}/protocol/openid-connect/deferred/cancel`)
  })

  test('client_secret_basic: acknowledgment, exchange, pending, webhook, ping, final tokens', async () => {
    const rp = await secretClient()
    const username = user('basic')
    const { process, pending } = await start(rp, username)
    assert.ok(process.deferredAuthId.length >= 22)
    assert.equal(process.interval, 1)
    assert.ok(process.expiresAt > Date.now())
    assert.equal(process.interimClaims.sub, username)
    assert.equal(process.interimClaims.nonce, pending.nonce)

    const first = await rp.poll(process)
    assert.equal(first.status, 'pending')

    const done = await complete(proxy, { outcome: 'approved', sub: username, client_id: 'dtr-client' })
    assert.equal(done.status, 200, JSON.stringify(done.json))
    assert.ok(await pings.waitFor(process.deferredAuthId, 15_000), 'the ping arrived with its bearer token')

    const result = await rp.poll(process)
    assert.equal(result.status, 'approved')
    assert.equal(result.claims.sub, username)
    assert.equal(result.claims.nonce, pending.nonce)
    assert.equal(result.claims.aud, 'dtr-client')
    assert.equal(result.claims.iss, proxy.issuer)
    assert.equal(result.tokens.token_type, 'bearer')
    assert.ok(result.tokens.access_token)

    // The access token is the user's at the OP (userinfo through the proxy).
    const info = await oauth.userInfoRequest(rp.as, rp.client, result.tokens.access_token, {
      [oauth.allowInsecureRequests]: true,
    })
    assert.equal((await info.json()).sub, username)

    // Both ID tokens verify with the OP's keys; a changed payload does not.
    const keys = new KeySet(rp.as)
    await keys.verify(process.interimIdToken)
    await keys.verify(result.tokens.id_token)
    const [h, p, sig] = result.tokens.id_token.split('.')
    const forged = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(p, 'base64url')), sub: 'mallory' })).toString('base64url')
    await assert.rejects(keys.verify(`${h}.${forged}.${sig}`), /signature does not verify/)

    // The id is spent.
    const again = await rp.poll(process)
    assert.equal(again.status, 'invalid_grant')
  })

  test('public client with DPoP, fragment acknowledgment: DPoP-bound tokens', async () => {
    const rp = await publicClient()
    const username = user('dpop')
    const { process, landed } = await start(rp, username, { responseMode: 'fragment' })
    assert.ok(new URL(landed.redirect).hash.includes('deferred_code='))
    assert.ok(process.dpopKeyPair, 'a key pair was made for this process')

    assert.equal((await rp.poll(process)).status, 'pending')
    assert.equal((await complete(proxy, { outcome: 'approved', sub: username, client_id: 'dtr-public' })).status, 200)
    const result = await rp.waitForTokens(process, { maxWaitMs: 20_000 })
    assert.equal(result.status, 'approved')
    assert.equal(result.tokens.token_type, 'dpop')
    assert.equal(result.claims.sub, username)
  })

  test('public client: a poll by another DPoP key is refused', async () => {
    const rp = await publicClient()
    const username = user('dpop-key')
    const { process } = await start(rp, username)
    const stolen = { ...process, dpopKeyPair: await oauth.generateKeyPair('ES256'), lastPollAt: undefined }
    await assert.rejects(rp.poll(stolen), (err) => err instanceof oauth.ResponseBodyError && err.error === 'invalid_dpop_proof')
    await rp.cancel(process)
  })

  test('a public client without DPoP is refused at the exchange', async () => {
    const rp = await DtrClient.discover(proxy.issuer, {
      client: { client_id: 'dtr-public' },
      redirectUri: REDIRECT_URI,
      allowInsecureRequests: true,
    })
    const { url, pending } = await rp.authorizationUrl()
    const landed = await browserLogin(proxy.base, url, user('no-dpop'))
    const ack = await rp.acknowledgment(landed.redirect, pending)
    await assert.rejects(rp.exchange(ack, pending), (err) => err instanceof oauth.ResponseBodyError && err.error === 'invalid_dpop_proof')
  })

  test('private_key_jwt, form_post acknowledgment', async () => {
    const rp = await jwtClient()
    const username = user('jwt')
    const { process, landed } = await start(rp, username, { responseMode: 'form_post' })
    assert.ok(landed.formPost, 'the acknowledgment came as a form_post page')
    assert.equal((await rp.poll(process)).status, 'pending')
    assert.equal((await complete(proxy, { outcome: 'approved', sub: username, client_id: 'dtr-jwt' })).status, 200)
    assert.ok(await pings.waitFor(process.deferredAuthId, 15_000))
    const result = await rp.waitForTokens(process, { maxWaitMs: 20_000 })
    assert.equal(result.status, 'approved')
    assert.equal(result.claims.sub, username)
    assert.equal(result.claims.aud, 'dtr-jwt')
  })

  test('PAR: the front channel carries only client_id and request_uri', async () => {
    const rp = await secretClient()
    const username = user('par')
    const { process, url } = await start(rp, username, { par: true })
    assert.deepEqual([...url.searchParams.keys()].sort(), ['client_id', 'request_uri'])
    assert.equal(process.interimClaims.sub, username)
    assert.equal((await complete(proxy, { outcome: 'approved', sub: username, client_id: 'dtr-client' })).status, 200)
    const result = await rp.waitForTokens(process, { maxWaitMs: 20_000 })
    assert.equal(result.status, 'approved')
    assert.equal(result.claims.sub, username)
  })

  test('response_type "deferred_code code" is acknowledged as deferred', async () => {
    const rp = await secretClient()
    const username = user('both')
    const { process, url } = await start(rp, username, { responseType: 'deferred_code code' })
    assert.equal(url.searchParams.get('response_type'), 'deferred_code code')
    assert.equal(process.interimClaims.sub, username)
    await rp.cancel(process)
  })

  test('PAR with a public DPoP client', async () => {
    const rp = await publicClient()
    const username = user('par-dpop')
    const { process } = await start(rp, username, { par: true })
    assert.equal((await complete(proxy, { outcome: 'approved', sub: username, client_id: 'dtr-public' })).status, 200)
    const result = await rp.waitForTokens(process, { maxWaitMs: 20_000 })
    assert.equal(result.status, 'approved')
    assert.equal(result.tokens.token_type, 'dpop')
  })

  test('an interaction need: the poll names the URL and the progress, then the tokens come', async () => {
    await interactionThenTokens(proxy, await secretClient(), start, user('interaction'))
  })

  test('cancel: later polls answer access_denied, and no ping is sent', async () => {
    for (const make of [secretClient, publicClient]) {
      const rp = await make()
      const { process } = await start(rp, user('cancel'))
      assert.equal((await rp.poll(process)).status, 'pending')
      await rp.cancel(process)
      const result = await rp.poll(process)
      assert.equal(result.status, 'access_denied')
      assert.equal(await pings.waitFor(process.deferredAuthId, 2_500), false, 'no ping for a cancel')
    }
  })

  test('denial by the verification service: ping, then access_denied with its text', async () => {
    const rp = await secretClient()
    const username = user('deny')
    const { process } = await start(rp, username)
    const done = await complete(proxy, {
      outcome: 'denied',
      sub: username,
      client_id: 'dtr-client',
      error_description: 'Document expired',
    })
    assert.equal(done.status, 200)
    assert.ok(await pings.waitFor(process.deferredAuthId, 15_000))
    const result = await rp.waitForTokens(process, { maxWaitMs: 10_000 })
    assert.equal(result.status, 'access_denied')
    assert.match(result.description, /Document expired/)
  })

  test('progress text reaches pending polls', async () => {
    const rp = await secretClient()
    const username = user('progress')
    const { process } = await start(rp, username)
    const update = await complete(proxy, {
      outcome: 'pending',
      sub: username,
      client_id: 'dtr-client',
      error_description: 'Video check: step 2 of 3',
    })
    assert.equal(update.status, 200)
    const result = await rp.poll(process)
    assert.equal(result.status, 'pending')
    assert.match(result.description, /step 2 of 3/)
    await rp.cancel(process)
  })

  test('slow_down: the interval grows by 5 s and the kit keeps it', async () => {
    const rp = await secretClient()
    const username = user('slow')
    const { process } = await start(rp, username)
    assert.equal((await rp.poll(process)).status, 'pending')
    const tooSoon = await rp.poll(process, { respectInterval: false })
    assert.equal(tooSoon.status, 'slow_down')
    assert.equal(tooSoon.interval, 6)
    assert.equal(process.interval, 6)
    assert.equal((await complete(proxy, { outcome: 'approved', sub: username, client_id: 'dtr-client' })).status, 200)
    const seen = []
    const started = Date.now()
    const result = await rp.waitForTokens(process, { maxWaitMs: 30_000, onPending: (r) => seen.push(r) })
    assert.equal(result.status, 'approved')
    // A brief 5xx (status 'unavailable') is the proxy's to explain, not the kit's: allowed here.
    assert.deepEqual(seen.filter((r) => r.status !== 'unavailable'), [], 'no further slow_down')
    assert.ok(Date.now() - started >= 5_000, 'the kit waited the grown interval')
  })

  test('waitForTokens gives up at maxWaitMs', async () => {
    const rp = await secretClient()
    const { process } = await start(rp, user('timeout'))
    await assert.rejects(rp.waitForTokens(process, { maxWaitMs: 2_500 }), (err) => err.code === 'timeout')
    await rp.cancel(process)
  })
})

describe('acknowledgment checks', () => {
  test('state, iss, code and error answers are refused', async () => {
    const rp = await secretClient()
    const pending = { state: 's1' }
    const ok = new URLSearchParams({ deferred_code: 'abc', state: 's1', iss: proxy.issuer })
    assert.equal((await rp.acknowledgment(ok, pending)).type, 'deferred')
    const bad = (extra) => rp.acknowledgment(new URLSearchParams({ ...Object.fromEntries(ok), ...extra }), pending)
    await assert.rejects(bad({ state: 's2' }), /state/)
    // The OP announces RFC 9207, so an acknowledgment without iss is refused too.
    assert.equal(rp.as.authorization_response_iss_parameter_supported, true)
    await assert.rejects(rp.acknowledgment(new URLSearchParams({ deferred_code: 'abc', state: 's1' }), pending), /iss/)
    await assert.rejects(bad({ iss: 'http://127.0.0.1:1/realms/x' }), /iss/)
    await assert.rejects(bad({ code: 'c' }), /both code and deferred_code/)
    await assert.rejects(rp.acknowledgment(new URLSearchParams({ state: 's1', iss: proxy.issuer }), pending), /no deferred_code/)
    await assert.rejects(
      rp.acknowledgment(new URLSearchParams({ error: 'access_denied', state: 's1', iss: proxy.issuer }), pending),
      (err) => err instanceof oauth.AuthorizationResponseError,
    )
  })

  test('a user who declines at the OP gets an error acknowledgment', async () => {
    const rp = await secretClient()
    const { url, pending } = await rp.authorizationUrl()
    const landed = await browserLogin(proxy.base, url, user('decline'), { outcome: 'deny' })
    await assert.rejects(
      rp.acknowledgment(landed.redirect, pending),
      (err) => err instanceof oauth.AuthorizationResponseError && err.error === 'access_denied',
    )
  })
})

describe('pings', () => {
  test('a ping without the right bearer token is refused with 401', async () => {
    const id = `id-${randomBytes(6).toString('hex')}`
    pings.tokens.set(id, 'the-right-token')
    const send = (auth, body = { deferred_auth_id: id }) =>
      fetch(pings.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(auth ? { authorization: auth } : {}) },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(5_000),
      }).then((r) => r.status)
    assert.equal(await send(undefined), 401)
    assert.equal(await send('Bearer the-wrong-token'), 401)
    assert.equal(await send('Bearer the-right-token', { deferred_auth_id: 'another-id' }), 401)
    assert.equal(await send('Bearer the-right-token', {}), 400)
    assert.equal(await send('Bearer the-right-token'), 204)
    assert.ok(pings.pings.includes(id))
  })
})

const EXAMPLES = [
  // The kit's example, as a public DPoP client.
  { file: 'deferred-login.mjs', client: 'dtr-public', env: {}, tokenType: 'dpop' },
  // The same with oauth4webapi alone (docs/rp-guide.md), as a confidential client.
  { file: 'plain-oauth4webapi.mjs', client: 'dtr-client', env: { DTR_CLIENT_SECRET: 'dtr-client-secret' }, tokenType: 'bearer' },
]

describe('the examples', () => {
  for (const example of EXAMPLES) test(`examples/${example.file} walks a whole deferred login`, async () => {
    const { spawn } = await import('node:child_process')
    const { createInterface } = await import('node:readline')
    const username = user('example')
    const child = spawn(process.execPath, [new URL(`../examples/${example.file}`, import.meta.url).pathname], {
      env: {
        PATH: process.env.PATH,
        DTR_ISSUER: proxy.issuer,
        DTR_CLIENT_ID: example.client,
        DTR_REDIRECT_URI: REDIRECT_URI,
        DTR_INSECURE: '1',
        ...example.env,
      },
      stdio: ['pipe', 'pipe', 'inherit'],
    })
    const killer = setTimeout(() => child.kill('SIGKILL'), 40_000)
    try {
      const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]()
      const next = async () => (await lines.next()).value
      const url = await next()
      const landed = await browserLogin(proxy.base, url, username)
      child.stdin.write(`${landed.redirect}\n`)
      assert.deepEqual(JSON.parse(await next()), { step: 'exchanged', sub: username, interval: 1 })
      assert.equal(JSON.parse(await next()).step, 'pending')
      assert.equal((await complete(proxy, { outcome: 'approved', sub: username, client_id: example.client })).status, 200)
      let last
      while ((last = JSON.parse(await next())).step === 'pending');
      assert.deepEqual(last, {
        step: 'approved',
        sub: username,
        email: `${username}@example.com`,
        name: `User ${username}`,
        token_type: example.tokenType,
      })
      const code = await new Promise((resolve) => (child.exitCode !== null ? resolve(child.exitCode) : child.once('exit', resolve)))
      assert.equal(code, 0)
    } finally {
      clearTimeout(killer)
      child.kill('SIGKILL')
    }
  })
})
