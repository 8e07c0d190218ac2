#!/usr/bin/env node
// A deferred login from the command line, with the kit.
//
//   DTR_ISSUER=https://id.example.com/realms/demo DTR_CLIENT_ID=onboarding-portal \
//   DTR_CLIENT_SECRET=… DTR_REDIRECT_URI=https://rp.example.com/cb \
//   node examples/deferred-login.mjs
//
// It prints the URL to open in a browser (first line of stdout), then reads from stdin the URL
// the browser was sent back to (the acknowledgment), exchanges the deferred code, and polls
// until the verification is done, printing one JSON line per step. Without DTR_CLIENT_SECRET
// the client is public and uses DPoP. DTR_PAR=1 pushes the request first; DTR_PROFILE=ietf
// speaks the IETF profile (draft-ietf-oauth-deferred-token-response) instead of the OpenID
// one; DTR_INSECURE=1 allows http URLs (local tests only).

import { createInterface } from 'node:readline'
import { DtrClient, oauth } from '@dtr-proxy/rp-kit'

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback
  if (value === undefined) {
    console.error(`set ${name}`)
    process.exit(2)
  }
  return value
}

const secret = process.env.DTR_CLIENT_SECRET
const rp = await DtrClient.discover(env('DTR_ISSUER'), {
  profile: env('DTR_PROFILE', 'openid'),
  client: { client_id: env('DTR_CLIENT_ID') },
  clientAuth: secret ? oauth.ClientSecretBasic(secret) : oauth.None(),
  dpop: !secret,
  redirectUri: env('DTR_REDIRECT_URI'),
  allowInsecureRequests: process.env.DTR_INSECURE === '1',
})

// 1. Send the user to the OP.
const { url, pending } = await rp.authorizationUrl({
  scope: env('DTR_SCOPE', 'openid profile email'),
  par: process.env.DTR_PAR === '1',
})
console.log(url.href)

// 2. The acknowledgment: the URL the browser came back to.
const lines = createInterface({ input: process.stdin })
const landed = await new Promise((resolve) => lines.once('line', resolve))
lines.close()
const ack = await rp.acknowledgment(landed.trim(), pending)
if (ack.type !== 'deferred') throw new Error('the OP answered at once with a code')

// 3. The deferred_auth_id (IETF: deferral_code), and who the user says they are (not verified
// yet; the IETF profile has no interim ID token).
const deferred = await rp.exchange(ack, pending)
console.log(JSON.stringify({ step: 'exchanged', sub: deferred.interimClaims?.sub, interval: deferred.interval }))

// 4. Poll until the verification service has decided (or the process expires).
const result = await rp.waitForTokens(deferred, {
  onPending: (p) => console.log(JSON.stringify({ step: p.status, description: p.description })),
})
if (result.status === 'approved') {
  const { sub, email, name } = result.claims
  console.log(JSON.stringify({ step: 'approved', sub, email, name, token_type: result.tokens.token_type }))
} else {
  console.log(JSON.stringify({ step: result.status, description: result.description }))
  process.exitCode = 1
}
