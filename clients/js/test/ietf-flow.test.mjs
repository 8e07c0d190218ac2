// The IETF profile (draft-ietf-oauth-deferred-token-response) end to end over real sockets: the
// kit with `profile: 'ietf'` against the real dtr-proxy binary in front of the stand-in OP, in a
// realm of DTR_IETF_REALMS, with a browser login, the verification service's webhook and the
// RP's callback endpoint.

import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { createPrivateKey, randomBytes } from 'node:crypto'
import { DEFERRAL_CODE_TOKEN_TYPE, DtrClient, oauth } from '../dist/index.js'
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
  pings = await startPingReceiver({ profile: 'ietf' })
  proxy = await startProxy(op, {
    profile: 'ietf',
    clients: [
      { client_id: 'dtr-client', redirect_uris: [REDIRECT_URI], notification_endpoint: pings.url },
      { client_id: 'dtr-public', require_dpop: true, notification_endpoint: pings.url },
      { client_id: 'dtr-jwt', jwks: { keys: [CLIENT_JWK] }, notification_endpoint: pings.url },
    ],
  })
})

after(async () => {
  if (process.env.DTR_TEST_PROXY_LOG && proxy) console.error(proxy.log.join(''))
  await proxy?.stop()
  await pings?.stop()
  await op?.stop()
})

function secretClient({ dpop = false } = {}) {
  return DtrClient.discover(proxy.issuer, {
    profile: 'ietf',
    client: { client_id: 'dtr-client' },
    clientAuth: oauth.ClientSecretBasic('dtr-client-secret'),
    redirectUri: REDIRECT_URI,
    dpop,
    allowInsecureRequests: true,
  })
}

function publicClient() {
  return DtrClient.discover(proxy.issuer, {
    profile: 'ietf',
    client: { client_id: 'dtr-public' },
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
    profile: 'ietf',
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
  return { process, pending, url, landed, ack }
}

const approve = async (username, clientId) =>
  assert.equal((await complete(proxy, { outcome: 'approved', sub: username, client_id: clientId })).status, 200)

const refusedWith = (error) => (err) => err.error === error

describe('the IETF profile through the kit', () => {
  test('discovery: the flag, the grant type, the revocation endpoint and its token type', async () => {
    const rp = await secretClient()
    assert.equal(rp.profile, 'ietf')
    assert.equal(rp.as.deferred_token_response_supported, true)
    assert.ok(rp.as.grant_types_supported.includes('urn:ietf:params:oauth:grant-type:deferred'))
    assert.equal(rp.as.revocation_endpoint, `${proxy.issuer}/protocol/openid-connect/revoke`)
    assert.ok(rp.as.revocation_endpoint_token_type_values_supported.includes(DEFERRAL_CODE_TOKEN_TYPE))
    // The realm offers nothing of the OpenID profile: a client of that profile is refused.
    await assert.rejects(
      DtrClient.discover(proxy.issuer, { client: { client_id: 'dtr-client' }, redirectUri: REDIRECT_URI, allowInsecureRequests: true }),
      (err) => err.code === 'unsupported',
    )
  })

  test('client_secret_basic: code flow, authorization_pending with deferral_code, callback, tokens', async () => {
    const rp = await secretClient()
    const username = user('ietf')
    const { process, pending, url, landed, ack } = await start(rp, username)
    assert.equal(url.searchParams.get('response_type'), 'code')
    assert.equal(url.searchParams.get('completion_mode'), 'deferred')
    const back = new URL(landed.redirect)
    assert.equal(back.searchParams.get('code'), ack.deferredCode)
    assert.equal(back.searchParams.has('deferred_code'), false)
    assert.ok(process.deferredAuthId.length >= 22, 'a deferral_code')
    assert.equal(process.interval, 1)
    assert.ok(process.expiresAt > Date.now())
    assert.equal(process.interimIdToken, undefined, 'the IETF profile has no interim ID token')
    assert.ok(process.notificationToken, 'a client_notification_token was sent')
    // The code is spent by the exchange.
    await assert.rejects(rp.exchange(ack, pending), refusedWith('invalid_grant'))

    assert.equal((await rp.poll(process)).status, 'pending')
    await approve(username, 'dtr-client')
    assert.ok(await pings.waitFor(process.deferredAuthId, 15_000), 'the callback names the deferral_code with its bearer')
    const result = await rp.waitForTokens(process, { maxWaitMs: 20_000 })
    assert.equal(result.status, 'approved')
    assert.equal(result.claims.sub, username)
    assert.equal(result.claims.nonce, pending.nonce)
    assert.equal(result.claims.iss, proxy.issuer)
    assert.equal(result.claims.aud, 'dtr-client')
    assert.equal(result.tokens.token_type, 'bearer')

    const info = await oauth.userInfoRequest(rp.as, rp.client, result.tokens.access_token, {
      [oauth.allowInsecureRequests]: true,
    })
    assert.equal((await info.json()).sub, username)

    // IETF §6.6: to the client it was issued to, a redeemed code says so.
    const again = await rp.poll(process)
    assert.equal(again.status, 'invalid_grant')
    assert.match(again.description, /already redeemed/)
  })

  test('public client with DPoP, fragment acknowledgment: DPoP-bound tokens; another key is refused', async () => {
    const rp = await publicClient()
    const username = user('ietf-dpop')
    const { process, landed } = await start(rp, username, { responseMode: 'fragment' })
    assert.ok(new URL(landed.redirect).hash.includes('code='))
    const stolen = { ...process, dpopKeyPair: await oauth.generateKeyPair('ES256'), lastPollAt: undefined }
    await assert.rejects(rp.poll(stolen), refusedWith('invalid_dpop_proof'))
    await approve(username, 'dtr-public')
    assert.ok(await pings.waitFor(process.deferredAuthId, 15_000))
    const result = await rp.waitForTokens(process, { maxWaitMs: 20_000 })
    assert.equal(result.status, 'approved')
    assert.equal(result.tokens.token_type, 'dpop')
    assert.equal(result.claims.sub, username)
  })

  test('a confidential client with DPoP is held to its key for polls and revocation (IETF §11.1)', async () => {
    const rp = await secretClient({ dpop: true })
    const { process } = await start(rp, user('ietf-bound'))
    const stolen = { ...process, dpopKeyPair: await oauth.generateKeyPair('ES256'), lastPollAt: undefined }
    await assert.rejects(rp.poll(stolen), refusedWith('invalid_dpop_proof'))
    await assert.rejects(rp.cancel(stolen), refusedWith('invalid_dpop_proof'))
    assert.equal((await rp.poll(process)).status, 'pending')
    await rp.cancel(process)
    assert.equal((await rp.poll(process)).status, 'access_denied')
  })

  test('private_key_jwt, PAR, form_post acknowledgment', async () => {
    const rp = await jwtClient()
    const username = user('ietf-jwt')
    const { process, url, landed } = await start(rp, username, { par: true, responseMode: 'form_post' })
    assert.deepEqual([...url.searchParams.keys()].sort(), ['client_id', 'request_uri'])
    assert.ok(landed.formPost, 'the acknowledgment came as a form_post page')
    assert.equal((await rp.poll(process)).status, 'pending')
    await approve(username, 'dtr-jwt')
    const result = await rp.waitForTokens(process, { maxWaitMs: 20_000 })
    assert.equal(result.status, 'approved')
    assert.equal(result.claims.sub, username)
    assert.equal(result.claims.aud, 'dtr-jwt')
  })

  test('cancellation by revocation: later polls answer access_denied, and no callback is sent', async () => {
    for (const make of [secretClient, publicClient]) {
      const rp = await make()
      const { process } = await start(rp, user('ietf-cancel'))
      assert.equal((await rp.poll(process)).status, 'pending')
      await rp.cancel(process)
      assert.equal((await rp.poll(process)).status, 'access_denied')
      assert.equal(await pings.waitFor(process.deferredAuthId, 2_500), false, 'no callback for a cancel')
    }
  })

  test('an interaction need: the poll names the URL and the progress, then the tokens come', async () => {
    await interactionThenTokens(proxy, await secretClient(), start, user('interaction'))
  })

  test('slow_down grows the interval by 5 s', async () => {
    const rp = await secretClient()
    const { process } = await start(rp, user('ietf-slow'))
    assert.equal((await rp.poll(process)).status, 'pending')
    const tooSoon = await rp.poll(process, { respectInterval: false })
    assert.equal(tooSoon.status, 'slow_down')
    assert.equal(process.interval, 6)
    await rp.cancel(process)
  })

  test('acknowledgment checks: the code flow code, state and iss', async () => {
    const rp = await secretClient()
    await assert.rejects(rp.authorizationUrl({ responseType: 'deferred_code' }), (err) => err.code === 'unsupported')
    const pending = { state: 's1' }
    const ok = new URLSearchParams({ code: 'abc', state: 's1', iss: proxy.issuer })
    const ack = await rp.acknowledgment(ok, pending)
    assert.equal(ack.type, 'deferred')
    assert.equal(ack.deferredCode, 'abc')
    await assert.rejects(rp.acknowledgment(new URLSearchParams({ code: 'abc', state: 's2', iss: proxy.issuer }), pending), /state/)
    await assert.rejects(rp.acknowledgment(new URLSearchParams({ code: 'abc', state: 's1' }), pending), /iss/)
    await assert.rejects(
      rp.acknowledgment(new URLSearchParams({ deferred_code: 'abc', state: 's1', iss: proxy.issuer }), pending),
      /no code/,
    )
  })

  test('a callback names the deferral_code; the OpenID name or another bearer is refused', async () => {
    const id = `dc-${randomBytes(6).toString('hex')}`
    pings.tokens.set(id, 'the-right-token')
    const send = (auth, body) =>
      fetch(pings.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(auth ? { authorization: auth } : {}) },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(5_000),
      }).then((r) => r.status)
    assert.equal(await send('Bearer the-right-token', { deferred_auth_id: id }), 400)
    assert.equal(await send('Bearer the-wrong-token', { deferral_code: id }), 401)
    assert.equal(await send(undefined, { deferral_code: id }), 401)
    assert.equal(await send('Bearer the-right-token', { deferral_code: id }), 204)
    assert.ok(pings.pings.includes(id))
  })
})
