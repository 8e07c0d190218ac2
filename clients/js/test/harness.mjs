// The test bed: the stand-in OP (tests/op), the real dtr-proxy binary in front of it, a browser
// that logs in through the OP's login form, the verification service's signed completion
// webhook, and a ping receiver. Every wait is bounded; every process is stopped by `stop()`.

import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { createHmac, randomBytes } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { createServer as createNetServer } from 'node:net'
import { createInterface } from 'node:readline'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { pingHandler } from '../dist/index.js'

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
export const REDIRECT_URI = 'https://rp.example.com/cb'
export const WEBHOOK_SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'
export const CLIENT_JWK = JSON.parse(readFileSync(join(ROOT, 'tests/op/keys/client-jwt.public.jwk.json'), 'utf8'))
export const CLIENT_JWT_PEM = readFileSync(join(ROOT, 'tests/op/keys/client-jwt.private.pem'), 'utf8')

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createNetServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

function withTimeout(promise, ms, what) {
  let timer
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}

/** The stand-in OP: it prints {"port":N} once and exits when its stdin closes. */
export async function startOp() {
  const child = spawn(process.execPath, [join(ROOT, 'tests/op/server.mjs')], {
    stdio: ['pipe', 'pipe', process.env.DTR_TEST_OP_LOG ? 'inherit' : 'ignore'],
  })
  const lines = createInterface({ input: child.stdout })
  const first = new Promise((resolve, reject) => {
    lines.once('line', resolve)
    child.once('exit', (code) => reject(new Error(`the test OP exited (${code}); run scripts/ensure-deps.sh`)))
  })
  const line = await withTimeout(first, 20_000, 'test OP start')
  const { port } = JSON.parse(line)
  return {
    port,
    stop: () => stopChild(child, () => child.stdin.end()),
  }
}

function stopChild(child, politely) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 5_000)
    child.once('exit', () => {
      clearTimeout(timer)
      resolve()
    })
    politely()
  })
}

/** The dtr-proxy binary (`DTR_PROXY_BIN`, else the debug build, built once if missing). */
export function proxyBinary() {
  if (process.env.DTR_PROXY_BIN) return process.env.DTR_PROXY_BIN
  const binary = join(ROOT, 'target', 'debug', 'dtr-proxy')
  if (!existsSync(binary)) {
    const built = spawnSync('cargo', ['build', '--locked', '--bin', 'dtr-proxy'], { cwd: ROOT, stdio: 'inherit' })
    if (built.status !== 0) throw new Error('cargo build failed')
  }
  return binary
}

/** Creates a realm at the OP whose issuer is the proxy's public URL. */
export async function createRealm(opPort, realm, publicBase) {
  const issuer = `${publicBase}/realms/${realm}`
  const response = await fetch(`http://127.0.0.1:${opPort}/admin/realms`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ realm, issuer }),
    signal: AbortSignal.timeout(10_000),
  })
  if (response.status !== 201) throw new Error(`realm creation: ${response.status} ${await response.text()}`)
  return issuer
}

/**
 * Starts the proxy binary in front of the OP in a fresh realm; resolves once /healthz answers.
 * `profile: 'ietf'`: every client of the realm speaks the IETF profile (`DTR_IETF_REALMS`).
 */
export async function startProxy(op, { clients, env = {}, profile = 'openid' }) {
  const [publicPort, adminPort] = [await freePort(), await freePort()]
  const base = `http://127.0.0.1:${publicPort}`
  const realm = `js${process.pid}x${randomBytes(4).toString('hex')}`
  const issuer = await createRealm(op.port, realm, base)
  const log = []
  const child = spawn(proxyBinary(), [], {
    env: {
      PATH: process.env.PATH,
      DTR_UPSTREAM_URL: `http://127.0.0.1:${op.port}`,
      DTR_PUBLIC_URL: base,
      DTR_ALLOW_INSECURE_HTTP: 'true',
      DTR_WEBHOOK_SECRET: WEBHOOK_SECRET,
      DTR_DEFAULT_INTERVAL: '1',
      DTR_HASH_KEY: Buffer.alloc(32, 7).toString('base64'),
      DTR_TOKEN_KEYS: `k1:${Buffer.alloc(32, 9).toString('base64')}`,
      DTR_LISTEN: `127.0.0.1:${publicPort}`,
      DTR_ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
      DTR_CLIENTS: JSON.stringify(clients),
      DTR_SHUTDOWN_DELAY: '0',
      DTR_SHUTDOWN_GRACE: '2',
      ...(profile === 'ietf' ? { DTR_IETF_REALMS: realm } : {}),
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  child.stdout.on('data', (d) => log.push(d.toString()))
  child.stderr.on('data', (d) => log.push(d.toString()))
  const admin = `http://127.0.0.1:${adminPort}`
  let up = false
  for (let i = 0; i < 150 && !up && child.exitCode === null; i++) {
    try {
      up = (await fetch(`${admin}/healthz`, { signal: AbortSignal.timeout(1_000) })).ok
    } catch {
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  if (!up) {
    child.kill('SIGKILL')
    throw new Error(`dtr-proxy did not come up:\n${log.join('')}`)
  }
  return {
    base,
    admin,
    realm,
    issuer,
    log,
    stop: () => stopChild(child, () => child.kill('SIGTERM')),
  }
}

/** A cookie jar that honours Path and deletion, enough for the OP's login cookies. */
class CookieJar {
  #cookies = new Map()
  store(response) {
    for (const line of response.headers.getSetCookie()) {
      const [pair, ...attrs] = line.split(';')
      const eq = pair.indexOf('=')
      const name = pair.slice(0, eq).trim()
      const value = pair.slice(eq + 1).trim()
      let path = '/'
      let gone = value === ''
      for (const attr of attrs) {
        const [k, v = ''] = attr.trim().split('=')
        if (k.toLowerCase() === 'path') path = v
        if (k.toLowerCase() === 'max-age' && Number(v) <= 0) gone = true
        if (k.toLowerCase() === 'expires' && Date.parse(v) < Date.now()) gone = true
      }
      const key = `${name}\u0000${path}`
      if (gone) this.#cookies.delete(key)
      else this.#cookies.set(key, { name, value, path })
    }
  }
  header(url) {
    const path = new URL(url).pathname
    return [...this.#cookies.values()]
      .filter((c) => path === c.path || path.startsWith(c.path.endsWith('/') ? c.path : `${c.path}/`))
      .map((c) => `${c.name}=${c.value}`)
      .join('; ')
  }
}

function formInputs(html) {
  const params = new URLSearchParams()
  for (const input of html.split('<input').slice(1)) {
    const attr = (name) => {
      const m = new RegExp(`${name}="([^"]*)"`).exec(input)
      return m && m[1].replace(/&quot;/g, '"').replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&#x27;/g, "'").replace(/&amp;/g, '&')
    }
    const name = attr('name')
    const value = attr('value')
    if (name !== null && value !== null) params.append(name, value)
  }
  return params
}

/**
 * A browser walking the login at the OP through the proxy: follows redirects on the proxy's
 * origin by hand, keeps cookies, fills the login form as `username`. Ends at the answer meant
 * for the RP: `{ redirect }` (the Location to the RP), `{ formPost }` (a Request as the
 * browser would POST it to the RP), or throws with the page it ended on.
 */
export async function browserLogin(proxyBase, authorizationUrl, username, { outcome } = {}) {
  const jar = new CookieJar()
  const go = async (url, init = {}) => {
    const headers = new Headers(init.headers)
    const cookie = jar.header(url)
    if (cookie) headers.set('cookie', cookie)
    const response = await fetch(url, { ...init, headers, redirect: 'manual', signal: AbortSignal.timeout(15_000) })
    jar.store(response)
    return response
  }
  let response = await go(String(authorizationUrl))
  for (let step = 0; step < 12; step++) {
    const location = response.headers.get('location')
    if (location) {
      const next = new URL(location, proxyBase)
      if (next.origin !== new URL(proxyBase).origin) return { redirect: next.href }
      response = await go(next.href)
      continue
    }
    const html = await response.text()
    const action = /action="([^"]*)"/.exec(html)?.[1]?.replace(/&amp;/g, '&')
    if (response.status !== 200 || !action) throw new Error(`login ended on ${response.status}: ${html.slice(0, 500)}`)
    const target = new URL(action, proxyBase)
    if (target.origin !== new URL(proxyBase).origin) {
      // The proxy's form_post acknowledgment: the browser would submit it to the RP.
      return {
        formPost: new Request(target, {
          method: 'POST',
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          body: formInputs(html).toString(),
        }),
      }
    }
    const form = new URLSearchParams({ username, password: 'unused' })
    if (outcome) form.set('outcome', outcome)
    response = await go(target.href, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: form.toString(),
    })
  }
  throw new Error('the login did not finish within 12 steps')
}

/** The verification service: a completion webhook signed per Standard Webhooks. */
export async function complete(proxy, payload, { secret = WEBHOOK_SECRET } = {}) {
  const body = JSON.stringify(payload)
  const id = `msg_${randomBytes(8).toString('hex')}`
  const timestamp = Math.floor(Date.now() / 1000).toString()
  const key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64')
  const signature = createHmac('sha256', key).update(`${id}.${timestamp}.${body}`).digest('base64')
  const response = await fetch(`${proxy.admin}/v1/completions`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      'webhook-id': id,
      'webhook-timestamp': timestamp,
      'webhook-signature': `v1,${signature}`,
    },
    body,
    signal: AbortSignal.timeout(10_000),
  })
  return { status: response.status, json: await response.json().catch(() => null) }
}

/**
 * The RP's notification endpoint, served by the kit's `pingHandler` for `profile`'s pings.
 * `tokens` maps each deferred_auth_id (deferral_code) to its notification token; `pings`
 * records what was accepted, `refused` what was not.
 */
export async function startPingReceiver({ profile = 'openid' } = {}) {
  const tokens = new Map()
  const pings = []
  const waiters = []
  const handler = pingHandler(
    (id) => tokens.get(id),
    (id) => {
      pings.push(id)
      for (const w of waiters.splice(0)) w()
    },
    { profile },
  )
  let refused = 0
  const server = createServer((req, res) => {
    res.on('finish', () => {
      if (res.statusCode !== 204) refused++
    })
    handler(req, res)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const url = `http://127.0.0.1:${server.address().port}/dtr/ping`
  return {
    url,
    tokens,
    pings,
    get refused() {
      return refused
    },
    /** Resolves true once a ping for `id` was accepted, false after `ms`. */
    async waitFor(id, ms) {
      const deadline = Date.now() + ms
      while (!pings.includes(id)) {
        const left = deadline - Date.now()
        if (left <= 0) return false
        await new Promise((resolve) => {
          const timer = setTimeout(resolve, left)
          waiters.push(() => {
            clearTimeout(timer)
            resolve()
          })
        })
      }
      return true
    },
    stop: () =>
      new Promise((resolve) => {
        server.closeAllConnections?.()
        server.close(() => resolve())
      }),
  }
}

/**
 * The verification service asks for the end-user again (`interaction_uri` on a pending
 * webhook): the kit's poll names the URL and the progress text, whatever the profile, and
 * the process goes on to its tokens once approved. `start(rp, username)` runs a process to
 * its exchange for the `dtr-client` client of `rp`.
 */
export async function interactionThenTokens(proxy, rp, start, username) {
  const { process } = await start(rp, username)
  const uri = 'https://idv.example/book?slot=video&p=7'
  const asked = await complete(proxy, { outcome: 'pending', sub: username, error_description: 'step=video_ident', interaction_uri: uri })
  assert.equal(asked.status, 200)
  const waiting = await rp.poll(process)
  assert.deepEqual(waiting, { status: 'interaction_required', interactionUri: uri, description: 'step=video_ident' })
  assert.equal((await complete(proxy, { outcome: 'approved', sub: username, client_id: 'dtr-client' })).status, 200)
  const result = await rp.waitForTokens(process, { maxWaitMs: 20_000 })
  assert.equal(result.status, 'approved')
  assert.equal(result.claims.sub, username)
}
