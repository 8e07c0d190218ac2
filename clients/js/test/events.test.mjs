// The kit's lifecycle event verifier on the verification service's side, against the events a
// real dtr-proxy sends (DTR_EVENTS_URL, DTR_EVENTS_SECRET) while the kit runs deferred flows.

import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { createHmac, randomBytes } from 'node:crypto'
import { createServer } from 'node:http'
import { DtrClient, EventVerificationError, EventVerifier, oauth } from '../dist/index.js'
import { REDIRECT_URI, browserLogin, complete, startOp, startPingReceiver, startProxy } from './harness.mjs'

const EVENTS_SECRET = 'whsec_a2l0LWV2ZW50cy1zZWNyZXQtMDEyMzQ1Njc4OWFiY2RlZg=='

let op
let proxy
let pings
let receiver
const received = []

/** The verification service's events endpoint: keeps every delivery as received, answers 204. */
function startEventReceiver() {
  const server = createServer((req, res) => {
    const chunks = []
    req.on('data', (chunk) => chunks.push(chunk))
    req.on('end', () => {
      received.push({ headers: req.headers, body: Buffer.concat(chunks) })
      res.writeHead(204).end()
    })
  })
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({
        url: `http://127.0.0.1:${server.address().port}/dtr-events`,
        stop: () => new Promise((done) => server.close(() => done())),
      }),
    ),
  )
}

async function waitForEvents(n, ms) {
  const deadline = Date.now() + ms
  while (received.length < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100))
  return received.slice()
}

before(async () => {
  op = await startOp()
  pings = await startPingReceiver()
  receiver = await startEventReceiver()
  proxy = await startProxy(op, {
    clients: [{ client_id: 'dtr-client', redirect_uris: [REDIRECT_URI], notification_endpoint: pings.url }],
    env: { DTR_EVENTS_URL: receiver.url, DTR_EVENTS_SECRET: EVENTS_SECRET },
  })
})

after(async () => {
  if (process.env.DTR_TEST_PROXY_LOG && proxy) console.error(proxy.log.join(''))
  await proxy?.stop()
  await receiver?.stop()
  await pings?.stop()
  await op?.stop()
})

async function startProcess(rp, username) {
  const { url, pending } = await rp.authorizationUrl({ scope: 'openid profile email' })
  const landed = await browserLogin(proxy.base, url, username)
  const ack = await rp.acknowledgment(landed.redirect, pending)
  const deferred = await rp.exchange(ack, pending)
  pings.tokens.set(deferred.deferredAuthId, deferred.notificationToken)
  return deferred
}

describe('lifecycle events', () => {
  test('events a proxy really sent verify with the kit, and only with the right secret and bytes', async () => {
    const rp = await DtrClient.discover(proxy.issuer, {
      client: { client_id: 'dtr-client' },
      clientAuth: oauth.ClientSecretBasic('dtr-client-secret'),
      redirectUri: REDIRECT_URI,
      allowInsecureRequests: true,
    })
    const cancelled = await startProcess(rp, `ev-${randomBytes(4).toString('hex')}`)
    await rp.cancel(cancelled)
    const username = `ev-${randomBytes(4).toString('hex')}`
    const approved = await startProcess(rp, username)
    assert.equal((await complete(proxy, { outcome: 'approved', sub: username, client_id: 'dtr-client' })).status, 200)
    const result = await rp.waitForTokens(approved, { maxWaitMs: 20_000 })
    assert.equal(result.status, 'approved')

    const verifier = new EventVerifier(EVENTS_SECRET)
    const deliveries = await waitForEvents(4, 15_000)
    const events = deliveries.map(({ headers, body }) => verifier.verify(headers, body))
    assert.deepEqual(events.map((e) => e.type).sort(), [
      'deferred.cancelled',
      'deferred.delivered',
      'deferred.started',
      'deferred.started',
    ])
    for (const event of events) {
      assert.match(event.id, /^evt_/)
      assert.equal(event.data.client_id, 'dtr-client')
      assert.equal(typeof event.data.process_id, 'string')
    }
    const delivered = events.find((e) => e.type === 'deferred.delivered')
    assert.equal(delivered.data.sub, username)
    const started = events.filter((e) => e.type === 'deferred.started').map((e) => e.data.process_id)
    assert.ok(started.includes(delivered.data.process_id), 'one process_id from start to delivery')
    // No deferred_auth_id leaves the proxy.
    for (const { body } of deliveries) assert.ok(!body.toString().includes(approved.deferredAuthId))

    // Refused: another secret, altered bytes, another id, a stale or non-canonical timestamp.
    const { headers, body } = deliveries[0]
    const refused = (fn) => assert.throws(fn, EventVerificationError)
    const code = (fn) => {
      try {
        fn()
      } catch (err) {
        return err.code
      }
      return 'accepted'
    }
    assert.equal(code(() => new EventVerifier('whsec_b3RoZXItc2VjcmV0LTAxMjM0NTY3ODlhYmNkZWY=').verify(headers, body)), 'bad_signature')
    assert.equal(code(() => verifier.verify(headers, body.toString().replace('dtr-client', 'dtr-clienx'))), 'bad_signature')
    assert.equal(code(() => verifier.verify({ ...headers, 'webhook-id': 'evt_other' }, body)), 'bad_signature')
    const sentAt = Number(headers['webhook-timestamp'])
    assert.equal(code(() => verifier.verify(headers, body, sentAt + 301)), 'stale')
    assert.equal(code(() => new EventVerifier(EVENTS_SECRET, { toleranceSeconds: 5 }).verify(headers, body, sentAt + 6)), 'stale')
    assert.equal(code(() => verifier.verify({ ...headers, 'webhook-timestamp': `0${sentAt}` }, body)), 'bad_timestamp')
    const { 'webhook-signature': _, ...unsigned } = headers
    assert.equal(code(() => verifier.verify(unsigned, body)), 'missing_header')
    refused(() => verifier.verify({ ...headers, 'webhook-signature': headers['webhook-signature'].replace('v1,', 'v2,') }, body))
    // The prefix is optional; several signatures may be listed (rotation on the sender's side).
    const bare = new EventVerifier(EVENTS_SECRET.replace(/^whsec_/, ''))
    const listed = { ...headers, 'webhook-signature': `v1,bm90LWl0 v2,abc ${headers['webhook-signature']}` }
    assert.equal(bare.verify(listed, body).id, headers['webhook-id'])
    assert.equal(verifier.verify(new Headers(listed), new Uint8Array(body)).type, events[0].type)
  })

  test('the Standard Webhooks reference signature', () => {
    // The specification's example secret, id, timestamp and signature, over an event body.
    const secret = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'
    const id = 'msg_p5jXN8AQM9LWM0D4loKWxJek'
    const timestamp = 1614265330
    const reference = createHmac('sha256', Buffer.from(secret.slice(6), 'base64'))
      .update(`${id}.${timestamp}.{"test": 2432232314}`)
      .digest('base64')
    assert.equal(reference, 'g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=')
    const verifier = new EventVerifier(secret)
    const headers = { 'webhook-id': id, 'webhook-timestamp': String(timestamp), 'webhook-signature': `v1,${reference}` }
    // Signature right, body not an event.
    assert.throws(() => verifier.verify(headers, '{"test": 2432232314}', timestamp), (err) => err.code === 'bad_body')
    assert.throws(() => new EventVerifier('whsec_!!'), TypeError)
  })
})
