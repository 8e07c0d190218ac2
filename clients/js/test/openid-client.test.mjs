// What docs/rp-guide.md says of openid-client 6, proven against the proxy: in the OpenID
// profile its generic grant cannot take the deferred code exchange (the answer has no
// access_token), but it can poll, and the kit's exchange hands over to it; in the IETF profile
// its own calls walk the whole flow (the deferred answer is an OAuth error it throws).

import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import * as client from 'openid-client'
import { DtrClient, oauth } from '../dist/index.js'
import { REDIRECT_URI, browserLogin, complete, startOp, startProxy } from './harness.mjs'

const DEFERRED = 'urn:openid:params:grant-type:deferred'
let op
let proxy
let ietf

before(async () => {
  op = await startOp()
  proxy = await startProxy(op, { clients: [{ client_id: 'dtr-client', redirect_uris: [REDIRECT_URI] }] })
  ietf = await startProxy(op, { profile: 'ietf', clients: [{ client_id: 'dtr-client', redirect_uris: [REDIRECT_URI] }] })
})

after(async () => {
  await ietf?.stop()
  await proxy?.stop()
  await op?.stop()
})

test('openid-client 6: the exchange is refused by its generic grant, polls work', async () => {
  // openid-client defaults to client_secret_post; the proxy wants every call of a process to
  // authenticate as the exchange did (the kit's: client_secret_basic).
  const config = await client.discovery(
    new URL(proxy.issuer),
    'dtr-client',
    undefined,
    client.ClientSecretBasic('dtr-client-secret'),
    { execute: [client.allowInsecureRequests] },
  )
  const rp = await DtrClient.discover(proxy.issuer, {
    client: { client_id: 'dtr-client' },
    clientAuth: oauth.ClientSecretBasic('dtr-client-secret'),
    redirectUri: REDIRECT_URI,
    allowInsecureRequests: true,
  })
  const login = async (username) => {
    const { url, pending } = await rp.authorizationUrl({ scope: 'openid profile' })
    const landed = await browserLogin(proxy.base, url, username)
    return { ack: await rp.acknowledgment(landed.redirect, pending), pending }
  }

  // The exchange through openid-client: the proxy answers 200, the library refuses the answer.
  const first = await login('oc-refused')
  await assert.rejects(
    client.genericGrantRequest(config, DEFERRED, {
      deferred_code: first.ack.deferredCode,
      redirect_uri: REDIRECT_URI,
      code_verifier: first.pending.codeVerifier,
    }),
    (err) => /access_token/.test(`${err.message} ${err.cause?.message}`),
  )

  // The kit's exchange, then openid-client's polls.
  const username = `oc-${Date.now()}`
  const second = await login(username)
  const process = await rp.exchange(second.ack, second.pending)
  await assert.rejects(
    client.genericGrantRequest(config, DEFERRED, { deferred_auth_id: process.deferredAuthId }),
    (err) => err instanceof client.ResponseBodyError && err.error === 'authorization_pending',
  )
  assert.equal((await complete(proxy, { outcome: 'approved', sub: username, client_id: 'dtr-client' })).status, 200)
  await new Promise((resolve) => setTimeout(resolve, (process.interval + 0.2) * 1000))
  const tokens = await client.genericGrantRequest(config, DEFERRED, { deferred_auth_id: process.deferredAuthId })
  assert.equal(tokens.claims().sub, username)
  assert.equal(tokens.claims().nonce, second.pending.nonce)
})

test('openid-client 6 alone walks the IETF profile: code grant, deferral_code, polls, revocation', async () => {
  const config = await client.discovery(
    new URL(ietf.issuer),
    'dtr-client',
    undefined,
    client.ClientSecretBasic('dtr-client-secret'),
    { execute: [client.allowInsecureRequests] },
  )
  assert.equal(config.serverMetadata().deferred_token_response_supported, true)
  const IETF_DEFERRED = 'urn:ietf:params:oauth:grant-type:deferred'

  // The authorization request with the advance hint; the code grant with completion_mode,
  // answered 400 authorization_pending with the deferral_code (thrown by openid-client).
  const login = async (username) => {
    const codeVerifier = client.randomPKCECodeVerifier()
    const checks = { pkceCodeVerifier: codeVerifier, expectedState: client.randomState(), expectedNonce: client.randomNonce() }
    const url = client.buildAuthorizationUrl(config, {
      redirect_uri: REDIRECT_URI,
      scope: 'openid profile',
      code_challenge: await client.calculatePKCECodeChallenge(codeVerifier),
      code_challenge_method: 'S256',
      state: checks.expectedState,
      nonce: checks.expectedNonce,
      completion_mode: 'deferred',
    })
    const landed = await browserLogin(ietf.base, url, username)
    let deferred
    await assert.rejects(
      client.authorizationCodeGrant(config, new URL(landed.redirect), checks, {
        completion_mode: 'deferred',
        client_notification_token: 'a-callback-token',
      }),
      (err) => {
        deferred = err.cause
        return err instanceof client.ResponseBodyError && err.error === 'authorization_pending'
      },
    )
    assert.equal(typeof deferred.deferral_code, 'string')
    assert.equal(deferred.interval, 1)
    return { deferralCode: deferred.deferral_code, nonce: checks.expectedNonce }
  }

  const username = `oc-ietf-${Date.now()}`
  const { deferralCode, nonce } = await login(username)
  await assert.rejects(
    client.genericGrantRequest(config, IETF_DEFERRED, { deferral_code: deferralCode }),
    (err) => err instanceof client.ResponseBodyError && err.error === 'authorization_pending',
  )
  assert.equal((await complete(ietf, { outcome: 'approved', sub: username, client_id: 'dtr-client' })).status, 200)
  await new Promise((resolve) => setTimeout(resolve, 1_200))
  const tokens = await client.genericGrantRequest(config, IETF_DEFERRED, { deferral_code: deferralCode })
  assert.equal(tokens.claims().sub, username)
  assert.equal(tokens.claims().nonce, nonce)

  // Cancellation: openid-client's revocation with the deferral code's token type.
  const cancelled = await login(`oc-ietf-cancel-${Date.now()}`)
  await client.tokenRevocation(config, cancelled.deferralCode, {
    token_type_hint: 'urn:ietf:params:oauth:token-type:deferral-code',
  })
  await assert.rejects(
    client.genericGrantRequest(config, IETF_DEFERRED, { deferral_code: cancelled.deferralCode }),
    (err) => err instanceof client.ResponseBodyError && err.error === 'access_denied',
  )
})
