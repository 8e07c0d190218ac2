#!/usr/bin/env node
// The same deferred login with oauth4webapi alone, for RPs that add no dependency: what the kit
// does, minus its check of the interim ID token's signature, its DPoP handling, PAR, cancel and
// its ping helpers. Same environment and output as deferred-login.mjs (a confidential client).

import { createInterface } from 'node:readline'
import * as oauth from 'oauth4webapi'

const issuer = new URL(process.env.DTR_ISSUER)
const client = { client_id: process.env.DTR_CLIENT_ID }
const clientAuth = oauth.ClientSecretBasic(process.env.DTR_CLIENT_SECRET)
const redirect_uri = process.env.DTR_REDIRECT_URI
const http = process.env.DTR_INSECURE === '1' ? { [oauth.allowInsecureRequests]: true } : {}
const DEFERRED = 'urn:openid:params:grant-type:deferred'

const as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer, http))

// 1. The authorization request: response_type=deferred_code, PKCE, state, nonce.
const state = oauth.generateRandomState()
const nonce = oauth.generateRandomNonce()
const code_verifier = oauth.generateRandomCodeVerifier()
const url = new URL(as.authorization_endpoint)
url.search = new URLSearchParams({
  client_id: client.client_id, redirect_uri, response_type: 'deferred_code', scope: 'openid profile email',
  state, nonce, code_challenge: await oauth.calculatePKCECodeChallenge(code_verifier), code_challenge_method: 'S256',
}).toString()
console.log(url.href)

// 2. The acknowledgment: iss and state checked by oauth4webapi, then deferred_code without code.
const lines = createInterface({ input: process.stdin })
const landed = new URL(await new Promise((resolve) => lines.once('line', resolve)))
lines.close()
const ack = oauth.validateAuthResponse(as, client, landed.searchParams, state)
if (!ack.get('deferred_code') || ack.get('code')) throw new Error('not a deferred acknowledgment')

// 3. The exchange. Its answer has no access_token: read it yourself, let oauth4webapi read errors.
const notification_token = oauth.generateRandomState() // pings carry it as a Bearer token
const exchanged = await oauth.genericTokenEndpointRequest(as, client, clientAuth, DEFERRED, {
  deferred_code: ack.get('deferred_code'), redirect_uri, code_verifier, deferred_notification_token: notification_token,
}, http)
if (exchanged.status !== 200) await oauth.processGenericTokenEndpointResponse(as, client, exchanged) // throws
const exchange = await exchanged.json()
const { deferred_auth_id } = exchange
let interval = exchange.interval ?? 5
// The interim ID token, decoded only (the kit also verifies its signature and claims).
const interim = JSON.parse(Buffer.from(exchange.interim_id_token.split('.')[1], 'base64url'))
if (interim.nonce !== nonce) throw new Error('interim ID token: wrong nonce')
console.log(JSON.stringify({ step: 'exchanged', sub: interim.sub, interval }))

// 4. Poll with the interval: authorization_pending waits, slow_down adds 5 s, anything else ends.
for (const deadline = Date.now() + (exchange.expires_in ?? 86400) * 1000; Date.now() < deadline; ) {
  await new Promise((resolve) => setTimeout(resolve, interval * 1000))
  try {
    const response = await oauth.genericTokenEndpointRequest(as, client, clientAuth, DEFERRED, { deferred_auth_id }, http)
    const tokens = await oauth.processGenericTokenEndpointResponse(as, client, response)
    await oauth.validateApplicationLevelSignature(as, response, http) // the ID token's signature (JWKS)
    const claims = oauth.getValidatedIdTokenClaims(tokens) // iss, aud, exp, iat checked
    if (claims.nonce !== nonce || claims.sub !== interim.sub) throw new Error('not the login this process began with')
    const { sub, email, name } = claims
    console.log(JSON.stringify({ step: 'approved', sub, email, name, token_type: tokens.token_type }))
    break
  } catch (err) {
    if (!(err instanceof oauth.ResponseBodyError)) throw err
    if (err.error === 'slow_down') interval += 5
    else if (err.error === 'authorization_pending') console.log(JSON.stringify({ step: 'pending', description: err.error_description }))
    else {
      console.log(JSON.stringify({ step: err.error, description: err.error_description })) // access_denied, expired_token…
      process.exitCode = 1
      break
    }
  }
}
