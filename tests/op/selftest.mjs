// Self-test of the test OP: starts server.mjs, creates a realm whose issuer
// is a (fake) proxy origin, and walks the flows the dtr-proxy tests rely on,
// acting as a user agent that talks to the OP directly but sends the
// X-Forwarded-Host / X-Forwarded-Proto headers the proxy will send.
//
// Run: node tests/op/selftest.mjs   (exits non-zero on failure)
// Only node built-ins are used.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));

// Nothing listens there: it only stands for the proxy's public origin.
const FAKE_PORT = 41234;
const PUBLIC_HOST = `127.0.0.1:${FAKE_PORT}`;
const PUBLIC_ORIGIN = `http://${PUBLIC_HOST}`;
const REALM = 't1';
const ISSUER = `${PUBLIC_ORIGIN}/realms/${REALM}`;
const OIDC = `${ISSUER}/protocol/openid-connect`;
const REDIRECT_URI = 'https://rp.example.com/cb';

const CLIENT_JWT_PRIVATE_KEY = crypto.createPrivateKey(
  fs.readFileSync(path.join(HERE, 'keys/client-jwt.private.pem')),
);

// ---------------------------------------------------------------------------
// OP process
// ---------------------------------------------------------------------------

let opPort;
let opStderr = '';

function startOp() {
  const child = spawn(process.execPath, [path.join(HERE, 'server.mjs')], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, PORT: '0' },
  });
  child.stderr.on('data', (d) => { opStderr += d; });
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl !== -1) {
        const { port } = JSON.parse(out.slice(0, nl));
        resolve({ child, port, rest: () => out.slice(nl + 1) });
      }
    });
    child.on('exit', (code) => reject(new Error(`OP exited early (${code}):\n${opStderr}`)));
    setTimeout(() => reject(new Error(`OP did not start:\n${opStderr}`)), 15000).unref();
  });
}

// ---------------------------------------------------------------------------
// HTTP with a hand-kept cookie jar
// ---------------------------------------------------------------------------

class CookieJar {
  #cookies = new Map(); // key "name|path" -> {name, value, path}

  store(setCookieHeaders = [], requestPath = '/') {
    for (const header of setCookieHeaders) {
      const [pair, ...attrs] = header.split(';').map((s) => s.trim());
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      let cookiePath = requestPath.replace(/\/[^/]*$/, '') || '/';
      let expired = false;
      for (const attr of attrs) {
        const [k, v = ''] = attr.split('=');
        if (k.toLowerCase() === 'path') cookiePath = v;
        if (k.toLowerCase() === 'expires' && new Date(v) < new Date()) expired = true;
        if (k.toLowerCase() === 'max-age' && Number(v) <= 0) expired = true;
      }
      const key = `${name}|${cookiePath}`;
      if (expired || value === '') this.#cookies.delete(key);
      else this.#cookies.set(key, { name, value, path: cookiePath });
    }
  }

  // RFC 6265 path-match.
  header(requestPath) {
    const matching = [...this.#cookies.values()].filter((c) => requestPath === c.path
      || (requestPath.startsWith(c.path) && (c.path.endsWith('/') || requestPath[c.path.length] === '/')));
    matching.sort((a, b) => b.path.length - a.path.length);
    return matching.map((c) => `${c.name}=${c.value}`).join('; ');
  }

  get(name) {
    return [...this.#cookies.values()].find((c) => c.name === name);
  }
}

// `target` is a public URL (on the fake proxy origin) or a path; the request
// goes to the OP itself with the proxy's forwarding headers.
function request(method, target, { headers = {}, body, jar } = {}) {
  const url = new URL(target, PUBLIC_ORIGIN);
  assert.equal(url.origin, PUBLIC_ORIGIN, `request must target the public origin: ${target}`);
  const pathAndQuery = url.pathname + url.search;
  const allHeaders = {
    'x-forwarded-host': PUBLIC_HOST,
    'x-forwarded-proto': 'http',
    ...headers,
  };
  const cookie = jar?.header(url.pathname);
  if (cookie) allHeaders.cookie = cookie;
  if (body !== undefined) allHeaders['content-length'] = Buffer.byteLength(body);
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1', port: opPort, method, path: pathAndQuery, headers: allHeaders,
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        jar?.store(res.headers['set-cookie'], url.pathname);
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        if ((res.headers['content-type'] ?? '').includes('json')) json = JSON.parse(text);
        resolve({
          status: res.statusCode, headers: res.headers, text, json, setCookie: res.headers['set-cookie'] ?? [],
        });
      });
    });
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

const form = (obj) => new URLSearchParams(Object.entries(obj).filter(([, v]) => v !== undefined)).toString();
const FORM = { 'content-type': 'application/x-www-form-urlencoded' };

// ---------------------------------------------------------------------------
// JOSE with node:crypto
// ---------------------------------------------------------------------------

const b64u = (x) => Buffer.from(typeof x === 'string' ? x : JSON.stringify(x)).toString('base64url');

function signJwt(header, payload, key) {
  const input = `${b64u(header)}.${b64u(payload)}`;
  const alg = header.alg;
  let sig;
  if (alg === 'ES256') sig = crypto.sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
  else throw new Error(`unsupported alg ${alg}`);
  return `${input}.${sig.toString('base64url')}`;
}

function decodeJwt(jwt) {
  const [h, p] = jwt.split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url')),
    payload: JSON.parse(Buffer.from(p, 'base64url')),
  };
}

let jwks;
function verifyIdToken(jwt) {
  const { header, payload } = decodeJwt(jwt);
  assert.equal(header.alg, 'RS256');
  const jwk = jwks.keys.find((k) => k.kid === header.kid);
  assert.ok(jwk, `id_token kid ${header.kid} is in the JWKS`);
  const [h, p, s] = jwt.split('.');
  const ok = crypto.verify('sha256', Buffer.from(`${h}.${p}`), crypto.createPublicKey({ key: jwk, format: 'jwk' }), Buffer.from(s, 'base64url'));
  assert.ok(ok, 'id_token signature verifies with the JWKS');
  return payload;
}

function clientAssertion(aud) {
  const now = Math.floor(Date.now() / 1000);
  return signJwt(
    { alg: 'ES256', kid: 'dtr-jwt-es256', typ: 'JWT' },
    { iss: 'dtr-jwt', sub: 'dtr-jwt', aud, jti: crypto.randomUUID(), iat: now, exp: now + 60 },
    CLIENT_JWT_PRIVATE_KEY,
  );
}

function dpopProof(keyPair, { htm, htu, accessToken }) {
  const jwk = keyPair.publicKey.export({ format: 'jwk' });
  const payload = { jti: crypto.randomUUID(), htm, htu, iat: Math.floor(Date.now() / 1000) };
  if (accessToken) payload.ath = crypto.hash('sha256', accessToken, 'base64url');
  return signJwt({ typ: 'dpop+jwt', alg: 'ES256', jwk }, payload, keyPair.privateKey);
}

// ---------------------------------------------------------------------------
// Clients: how each authenticates at the token endpoint
// ---------------------------------------------------------------------------

// openid-client form-urlencodes id and secret before base64 (RFC 6749 2.3.1).
const basic = (id, secret) => `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;

const CLIENTS = {
  'dtr-client': { auth: (p) => ({ headers: { authorization: basic('dtr-client', 'dtr-client-secret') }, params: p }) },
  'plain-client': { auth: (p) => ({ headers: { authorization: basic('plain-client', 'plain-client-secret') }, params: p }) },
  'dtr-post': { auth: (p) => ({ headers: {}, params: { ...p, client_id: 'dtr-post', client_secret: 'dtr-post-secret' } }) },
  'dtr-jwt': {
    auth: (p, { aud = `${OIDC}/token` } = {}) => ({
      headers: {},
      params: {
        ...p,
        client_id: 'dtr-jwt',
        client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
        client_assertion: clientAssertion(aud),
      },
    }),
  },
  'dtr-public': { pkce: true, auth: (p) => ({ headers: {}, params: { ...p, client_id: 'dtr-public' } }) },
};

function tokenRequest(clientId, params, { dpop, aud } = {}) {
  const { headers, params: body } = CLIENTS[clientId].auth(params, { aud });
  const h = { ...FORM, ...headers };
  if (dpop) h.dpop = dpop;
  return request('POST', `${OIDC}/token`, { headers: h, body: form(body) });
}

// ---------------------------------------------------------------------------
// The browser part: /auth -> login page -> form -> resume -> redirect_uri
// ---------------------------------------------------------------------------

async function authorize(clientId, {
  jar = new CookieJar(), username = 'alice', outcome, scope = 'openid offline_access', prompt, pkce = CLIENTS[clientId].pkce,
} = {}) {
  const state = crypto.randomBytes(8).toString('hex');
  const nonce = crypto.randomBytes(8).toString('hex');
  let verifier;
  let challenge;
  if (pkce) {
    verifier = crypto.randomBytes(32).toString('base64url');
    challenge = crypto.hash('sha256', verifier, 'base64url');
  }
  const q = form({
    client_id: clientId,
    response_type: 'code',
    scope,
    state,
    nonce,
    redirect_uri: REDIRECT_URI,
    prompt,
    code_challenge: challenge,
    code_challenge_method: pkce ? 'S256' : undefined,
  });

  let res = await request('GET', `${OIDC}/auth?${q}`, { jar });
  let sawLoginPage = false;
  for (let hop = 0; hop < 10; hop += 1) {
    if (res.status === 200) {
      // The login page.
      assert.match(res.headers['content-type'], /^text\/html/);
      const action = /<form[^>]*method="post"[^>]*action="([^"]+)"/.exec(res.text)?.[1];
      assert.ok(action, 'login page has a POST form');
      assert.match(action, new RegExp(`^/realms/${REALM}/login-actions/[^/]+/authenticate$`));
      assert.match(res.text, /<input[^>]*name="username"/);
      sawLoginPage = true;
      res = await request('POST', action, {
        jar, headers: FORM, body: form({ username, outcome }),
      });
      assert.equal(res.status, 303, `form post answers 303: ${res.text}`);
      continue;
    }
    assert.ok([302, 303].includes(res.status), `expected a redirect, got ${res.status}: ${res.text}`);
    const location = res.headers.location;
    if (location.startsWith(REDIRECT_URI)) {
      const cb = new URL(location).searchParams;
      assert.equal(cb.get('state'), state, 'state round-trips');
      assert.equal(cb.get('iss'), ISSUER, 'iss in the authorization response is the issuer');
      return {
        params: Object.fromEntries(cb), nonce, verifier, jar, sawLoginPage,
      };
    }
    const next = new URL(location, PUBLIC_ORIGIN);
    assert.equal(next.origin, PUBLIC_ORIGIN, `OP redirects stay on the public origin: ${location}`);
    if (next.pathname.includes('/login-actions/')) {
      assert.match(next.pathname, new RegExp(`^/realms/${REALM}/login-actions/[^/]+$`));
    }
    res = await request('GET', next.href, { jar });
  }
  throw new Error('too many redirects');
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

const results = [];
async function test(name, fn) {
  try {
    await fn();
    results.push([name, true]);
    console.log(`ok - ${name}`);
  } catch (err) {
    results.push([name, false]);
    console.log(`not ok - ${name}\n  ${String(err.stack ?? err).split('\n').join('\n  ')}`);
  }
}

// Code flow, then refresh with rotation, then replay of the old refresh
// token. Returns the token responses for further checks.
async function codeFlowWithRefresh(clientId, { aud, refreshAud } = {}) {
  const { params, nonce, verifier } = await authorize(clientId);
  assert.ok(params.code, `code issued: ${JSON.stringify(params)}`);

  const t1 = await tokenRequest(clientId, {
    grant_type: 'authorization_code', code: params.code, redirect_uri: REDIRECT_URI, code_verifier: verifier,
  }, { aud });
  assert.equal(t1.status, 200, `token response: ${t1.text}`);
  assert.equal(t1.json.token_type, 'Bearer');
  assert.ok(t1.json.access_token);
  assert.ok(t1.json.refresh_token, 'refresh token issued for offline_access without prompt=consent');
  assert.match(t1.json.scope, /\boffline_access\b/);
  const id1 = verifyIdToken(t1.json.id_token);
  assert.equal(id1.iss, ISSUER);
  assert.equal(id1.aud, clientId);
  assert.equal(id1.sub, 'alice');
  assert.equal(id1.nonce, nonce, 'id_token has the nonce');
  assert.ok(id1.sid, 'id_token has sid');

  const t2 = await tokenRequest(clientId, { grant_type: 'refresh_token', refresh_token: t1.json.refresh_token }, { aud: refreshAud ?? aud });
  assert.equal(t2.status, 200, `refresh response: ${t2.text}`);
  assert.ok(t2.json.access_token);
  assert.notEqual(t2.json.access_token, t1.json.access_token);
  assert.ok(t2.json.refresh_token);
  assert.notEqual(t2.json.refresh_token, t1.json.refresh_token, 'refresh token rotated');
  const id2 = verifyIdToken(t2.json.id_token);
  assert.equal(id2.nonce, nonce, 'refreshed id_token keeps the nonce');
  assert.equal(id2.sid, id1.sid, 'refreshed id_token keeps the sid');
  assert.equal(id2.sub, 'alice');

  const ui = await request('GET', `${OIDC}/userinfo`, { headers: { authorization: `Bearer ${t2.json.access_token}` } });
  assert.equal(ui.status, 200, ui.text);
  // scope was "openid offline_access": only `sub` is released.
  assert.deepEqual(ui.json, { sub: 'alice' });

  const replay = await tokenRequest(clientId, { grant_type: 'refresh_token', refresh_token: t1.json.refresh_token }, { aud: refreshAud ?? aud });
  assert.equal(replay.status, 400, `replayed refresh token fails: ${replay.text}`);
  assert.equal(replay.json.error, 'invalid_grant');

  // Reuse of a rotated refresh token revokes the whole grant: the newest
  // refresh token dies with it.
  const after = await tokenRequest(clientId, { grant_type: 'refresh_token', refresh_token: t2.json.refresh_token }, { aud: refreshAud ?? aud });
  assert.equal(after.status, 400, `grant revoked after reuse: ${after.text}`);
  assert.equal(after.json.error, 'invalid_grant');
}

async function main() {
  const op = await startOp();
  opPort = op.port;
  console.log(`OP on 127.0.0.1:${opPort}, node ${process.version}, public issuer ${ISSUER}`);

  try {
    await test('realm creation', async () => {
      const res = await request('POST', '/admin/realms', {
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ realm: REALM, issuer: ISSUER, ttl: { AuthorizationCode: 60, RefreshToken: 86400 } }),
      });
      assert.equal(res.status, 201, res.text);
      assert.deepEqual(res.json, { realm: REALM, issuer: ISSUER });
    });

    await test('discovery uses the forwarded origin and Keycloak paths', async () => {
      const res = await request('GET', `${ISSUER}/.well-known/openid-configuration`);
      assert.equal(res.status, 200, res.text);
      const d = res.json;
      assert.equal(d.issuer, ISSUER);
      assert.equal(d.authorization_endpoint, `${OIDC}/auth`);
      assert.equal(d.token_endpoint, `${OIDC}/token`);
      assert.equal(d.jwks_uri, `${OIDC}/certs`);
      assert.equal(d.userinfo_endpoint, `${OIDC}/userinfo`);
      assert.equal(d.end_session_endpoint, `${OIDC}/logout`);
      assert.equal(d.revocation_endpoint, `${OIDC}/revoke`);
      assert.equal(d.introspection_endpoint, `${OIDC}/token/introspect`);
      assert.equal(d.pushed_authorization_request_endpoint, `${OIDC}/ext/par/request`);
      assert.ok(d.dpop_signing_alg_values_supported?.includes('ES256'), 'DPoP advertised');
      const certs = await request('GET', d.jwks_uri);
      assert.equal(certs.status, 200);
      jwks = certs.json;
      assert.equal(jwks.keys[0].kid, 'dtr-test-op-rs256');
      assert.equal(jwks.keys[0].d, undefined, 'JWKS is public');
    });

    await test('unknown realm is 404', async () => {
      const res = await request('GET', `${PUBLIC_ORIGIN}/realms/nope/.well-known/openid-configuration`);
      assert.equal(res.status, 404);
    });

    await test('cookies are scoped under the realm prefix', async () => {
      const jar = new CookieJar();
      const q = form({
        client_id: 'dtr-client', response_type: 'code', scope: 'openid', state: 's', redirect_uri: REDIRECT_URI,
      });
      const res = await request('GET', `${OIDC}/auth?${q}`, { jar });
      assert.equal(res.status, 303);
      const loginUrl = new URL(res.headers.location);
      assert.equal(loginUrl.origin, PUBLIC_ORIGIN, 'interaction URL is on the public origin');
      assert.match(loginUrl.pathname, new RegExp(`^/realms/${REALM}/login-actions/[^/]+$`));
      assert.equal(jar.get('_interaction').path, loginUrl.pathname);
      assert.match(jar.get('_interaction_resume').path, new RegExp(`^/realms/${REALM}/protocol/openid-connect/auth/[^/]+$`));
      const page = await request('GET', loginUrl.href, { jar });
      assert.equal(page.status, 200);
      assert.ok(page.text.includes(`action="${loginUrl.pathname}/authenticate"`));
      const done = await request('POST', `${loginUrl.pathname}/authenticate`, { jar, headers: FORM, body: form({ username: 'carol' }) });
      assert.equal(done.status, 303);
      const back = await request('GET', done.headers.location, { jar });
      assert.equal(back.status, 303);
      assert.ok(back.headers.location.startsWith(`${REDIRECT_URI}?code=`), back.headers.location);
      assert.equal(jar.get('_session').path, `/realms/${REALM}`);
    });

    await test('dtr-client (client_secret_basic, urlencoded creds): code, refresh rotation, replay rejected', async () => {
      await codeFlowWithRefresh('dtr-client');
    });

    await test('id_token carries email/name claims for scope "openid profile email"', async () => {
      const { params, nonce } = await authorize('dtr-client', { scope: 'openid profile email', username: 'dave' });
      const t = await tokenRequest('dtr-client', { grant_type: 'authorization_code', code: params.code, redirect_uri: REDIRECT_URI });
      assert.equal(t.status, 200, t.text);
      const id = verifyIdToken(t.json.id_token);
      assert.equal(id.nonce, nonce);
      assert.equal(id.email, 'dave@example.com');
      assert.equal(id.email_verified, true);
      assert.equal(id.name, 'User dave');
      assert.ok(id.sid);
      // Without offline_access there is still a refresh token (session-bound).
      assert.ok(t.json.refresh_token);
      const ui = await request('GET', `${OIDC}/userinfo`, { headers: { authorization: `Bearer ${t.json.access_token}` } });
      assert.equal(ui.status, 200, ui.text);
      assert.deepEqual(ui.json, {
        sub: 'dave', email: 'dave@example.com', email_verified: true, name: 'User dave',
      });
      const intro = await request('POST', `${OIDC}/token/introspect`, {
        headers: { ...FORM, authorization: basic('dtr-client', 'dtr-client-secret') },
        body: form({ token: t.json.access_token }),
      });
      assert.equal(intro.status, 200, intro.text);
      assert.equal(intro.json.active, true);
      assert.equal(intro.json.sub, 'dave');
      const rev = await request('POST', `${OIDC}/revoke`, {
        headers: { ...FORM, authorization: basic('dtr-client', 'dtr-client-secret') },
        body: form({ token: t.json.access_token }),
      });
      assert.equal(rev.status, 200, rev.text);
      const intro2 = await request('POST', `${OIDC}/token/introspect`, {
        headers: { ...FORM, authorization: basic('dtr-client', 'dtr-client-secret') },
        body: form({ token: t.json.access_token }),
      });
      assert.equal(intro2.json.active, false, 'revoked token is inactive');
    });

    await test('plain-client (client_secret_basic, plain creds): code, refresh rotation, replay rejected', async () => {
      await codeFlowWithRefresh('plain-client');
    });

    await test('dtr-post (client_secret_post): code, refresh rotation, replay rejected', async () => {
      await codeFlowWithRefresh('dtr-post');
    });

    await test('dtr-jwt (private_key_jwt): aud = token endpoint for the code, aud = issuer for the refresh', async () => {
      await codeFlowWithRefresh('dtr-jwt', { aud: `${OIDC}/token`, refreshAud: ISSUER });
    });

    await test('dtr-jwt: a client assertion for the OP\'s own origin is rejected', async () => {
      const { params } = await authorize('dtr-jwt');
      const t = await tokenRequest('dtr-jwt', { grant_type: 'authorization_code', code: params.code, redirect_uri: REDIRECT_URI }, {
        aud: `http://127.0.0.1:${opPort}/realms/${REALM}/protocol/openid-connect/token`,
      });
      assert.equal(t.status, 401, t.text);
      assert.equal(t.json.error, 'invalid_client');
    });

    await test('dtr-public (PKCE, no secret): code, refresh rotation, replay rejected', async () => {
      await codeFlowWithRefresh('dtr-public');
    });

    await test('dtr-public without PKCE is refused', async () => {
      const q = form({
        client_id: 'dtr-public', response_type: 'code', scope: 'openid', state: 's', redirect_uri: REDIRECT_URI,
      });
      const res = await request('GET', `${OIDC}/auth?${q}`);
      assert.equal(res.status, 303);
      const cb = new URL(res.headers.location).searchParams;
      assert.equal(cb.get('error'), 'invalid_request');
      assert.match(cb.get('error_description'), /PKCE/);
    });

    await test('outcome=deny gives error=access_denied with state', async () => {
      const { params } = await authorize('dtr-client', { outcome: 'deny' });
      assert.equal(params.error, 'access_denied');
      assert.equal(params.error_description, 'The user declined');
      assert.equal(params.code, undefined);
    });

    await test('prompt=none without a session gives error=login_required', async () => {
      const { params, sawLoginPage } = await authorize('dtr-client', { prompt: 'none' });
      assert.equal(sawLoginPage, false);
      assert.equal(params.error, 'login_required');
    });

    await test('SSO: with a session, prompt=none for another client issues a code without consent', async () => {
      const first = await authorize('dtr-client', { username: 'erin' });
      assert.ok(first.params.code);
      const again = await authorize('plain-client', { jar: first.jar, prompt: 'none' });
      assert.equal(again.sawLoginPage, false);
      assert.ok(again.params.code, JSON.stringify(again.params));
      const t = await tokenRequest('plain-client', { grant_type: 'authorization_code', code: again.params.code, redirect_uri: REDIRECT_URI });
      assert.equal(t.status, 200, t.text);
      assert.equal(verifyIdToken(t.json.id_token).sub, 'erin');
      // Plain re-authorization (no prompt) with offline_access also goes straight through.
      const third = await authorize('dtr-post', { jar: first.jar });
      assert.equal(third.sawLoginPage, false);
      const t3 = await tokenRequest('dtr-post', { grant_type: 'authorization_code', code: third.params.code, redirect_uri: REDIRECT_URI });
      assert.equal(t3.status, 200, t3.text);
      assert.ok(t3.json.refresh_token);
      assert.match(t3.json.scope, /offline_access/);
    });

    await test('DPoP: htu on the public origin gives token_type DPoP; the OP\'s own origin is rejected', async () => {
      const key = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const { params } = await authorize('dtr-client');

      const wrong = await tokenRequest('dtr-client', { grant_type: 'authorization_code', code: params.code, redirect_uri: REDIRECT_URI }, {
        dpop: dpopProof(key, { htm: 'POST', htu: `http://127.0.0.1:${opPort}/realms/${REALM}/protocol/openid-connect/token` }),
      });
      assert.equal(wrong.status, 400, wrong.text);
      assert.equal(wrong.json.error, 'invalid_dpop_proof');
      assert.match(wrong.json.error_description, /htu/);

      // The failed attempt did not consume the code (proofs are checked first).
      const t = await tokenRequest('dtr-client', { grant_type: 'authorization_code', code: params.code, redirect_uri: REDIRECT_URI }, {
        dpop: dpopProof(key, { htm: 'POST', htu: `${OIDC}/token` }),
      });
      assert.equal(t.status, 200, t.text);
      assert.equal(t.json.token_type, 'DPoP');

      const ui = await request('GET', `${OIDC}/userinfo`, {
        headers: {
          authorization: `DPoP ${t.json.access_token}`,
          dpop: dpopProof(key, { htm: 'GET', htu: `${OIDC}/userinfo`, accessToken: t.json.access_token }),
        },
      });
      assert.equal(ui.status, 200, ui.text);
      assert.equal(ui.json.sub, 'alice');

      const r = await tokenRequest('dtr-client', { grant_type: 'refresh_token', refresh_token: t.json.refresh_token }, {
        dpop: dpopProof(key, { htm: 'POST', htu: `${OIDC}/token` }),
      });
      assert.equal(r.status, 200, r.text);
      assert.equal(r.json.token_type, 'DPoP');
    });

    await test('PAR: pushed request with offline_access, then /auth?request_uri', async () => {
      const verifier = crypto.randomBytes(32).toString('base64url');
      const nonce = 'par-nonce';
      const par = await request('POST', `${OIDC}/ext/par/request`, {
        headers: { ...FORM, authorization: basic('dtr-client', 'dtr-client-secret') },
        body: form({
          client_id: 'dtr-client',
          response_type: 'code',
          scope: 'openid offline_access',
          state: 'par-state',
          nonce,
          redirect_uri: REDIRECT_URI,
          code_challenge: crypto.hash('sha256', verifier, 'base64url'),
          code_challenge_method: 'S256',
        }),
      });
      assert.equal(par.status, 201, par.text);
      assert.match(par.json.request_uri, /^urn:ietf:params:oauth:request_uri:/);
      const jar = new CookieJar();
      let res = await request('GET', `${OIDC}/auth?${form({ client_id: 'dtr-client', request_uri: par.json.request_uri })}`, { jar });
      assert.equal(res.status, 303, res.text);
      res = await request('GET', res.headers.location, { jar });
      assert.equal(res.status, 200);
      const action = /action="([^"]+)"/.exec(res.text)[1];
      res = await request('POST', action, { jar, headers: FORM, body: form({ username: 'frank' }) });
      res = await request('GET', res.headers.location, { jar });
      const cb = new URL(res.headers.location).searchParams;
      assert.equal(cb.get('state'), 'par-state');
      const t = await tokenRequest('dtr-client', {
        grant_type: 'authorization_code', code: cb.get('code'), redirect_uri: REDIRECT_URI, code_verifier: verifier,
      });
      assert.equal(t.status, 200, t.text);
      assert.match(t.json.scope, /\boffline_access\b/);
      assert.equal(verifyIdToken(t.json.id_token).nonce, nonce);
    });

    await test('RP-initiated logout: the offline refresh token survives it, the online one does not', async () => {
      const jar = new CookieJar();
      const offline = await authorize('dtr-client', { jar, username: 'gina' });
      const tOff = await tokenRequest('dtr-client', { grant_type: 'authorization_code', code: offline.params.code, redirect_uri: REDIRECT_URI });
      assert.match(tOff.json.scope, /offline_access/);
      const online = await authorize('dtr-post', { jar, scope: 'openid' });
      assert.equal(online.sawLoginPage, false, 'SSO');
      const tOn = await tokenRequest('dtr-post', { grant_type: 'authorization_code', code: online.params.code, redirect_uri: REDIRECT_URI });
      assert.equal(tOn.status, 200, tOn.text);
      assert.ok(tOn.json.refresh_token);

      const q = form({ id_token_hint: tOff.json.id_token, post_logout_redirect_uri: 'https://rp.example.com/logged-out', state: 'bye' });
      const confirm = await request('GET', `${OIDC}/logout?${q}`, { jar });
      assert.equal(confirm.status, 200, confirm.text);
      const action = /<form[^>]*action="([^"]+)"/.exec(confirm.text)[1];
      const xsrf = /name="xsrf" value="([^"]+)"/.exec(confirm.text)[1];
      assert.equal(new URL(action).href, `${OIDC}/logout/confirm`);
      const done = await request('POST', action, { jar, headers: FORM, body: form({ xsrf, logout: 'yes' }) });
      assert.equal(done.status, 303, done.text);
      assert.equal(done.headers.location, 'https://rp.example.com/logged-out?state=bye');

      const rOff = await tokenRequest('dtr-client', { grant_type: 'refresh_token', refresh_token: tOff.json.refresh_token });
      assert.equal(rOff.status, 200, `offline refresh token outlives the session: ${rOff.text}`);
      const rOn = await tokenRequest('dtr-post', { grant_type: 'refresh_token', refresh_token: tOn.json.refresh_token });
      assert.equal(rOn.status, 400, `online refresh token ends with the session: ${rOn.text}`);
      assert.equal(rOn.json.error, 'invalid_grant');

      const again = await authorize('dtr-client', { jar, prompt: 'none' });
      assert.equal(again.params.error, 'login_required', 'session is gone');
    });

    await test('re-creating a realm replaces it (old tokens gone)', async () => {
      const { params } = await authorize('dtr-client');
      const res = await request('POST', '/admin/realms', {
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ realm: REALM, issuer: ISSUER }),
      });
      assert.equal(res.status, 201);
      const t = await tokenRequest('dtr-client', { grant_type: 'authorization_code', code: params.code, redirect_uri: REDIRECT_URI });
      assert.equal(t.status, 400, t.text);
      assert.equal(t.json.error, 'invalid_grant');
    });

    await test('custom clients replace the defaults', async () => {
      const res = await request('POST', '/admin/realms', {
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          realm: 't2',
          issuer: `${PUBLIC_ORIGIN}/realms/t2`,
          clients: [{
            client_id: 'only-one', client_secret: 'only-one-secret', redirect_uris: [REDIRECT_URI], grant_types: ['authorization_code'], response_types: ['code'],
          }],
        }),
      });
      assert.equal(res.status, 201, res.text);
      const q = (id) => form({
        client_id: id, response_type: 'code', scope: 'openid', state: 's', redirect_uri: REDIRECT_URI,
      });
      const known = await request('GET', `${PUBLIC_ORIGIN}/realms/t2/protocol/openid-connect/auth?${q('only-one')}`);
      assert.equal(known.status, 303);
      assert.match(known.headers.location, /\/realms\/t2\/login-actions\//);
      const gone = await request('GET', `${PUBLIC_ORIGIN}/realms/t2/protocol/openid-connect/auth?${q('dtr-client')}`);
      assert.equal(gone.status, 400, 'unknown client is an error page');
    });

    await test('a bad realm request is a 400', async () => {
      const res = await request('POST', '/admin/realms', {
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ realm: 't3', issuer: `${PUBLIC_ORIGIN}/somewhere/else` }),
      });
      assert.equal(res.status, 400, res.text);
    });

    await test('stdout carried only the port line', async () => {
      assert.equal(op.rest(), '');
    });
  } finally {
    // Closing stdin is the only shutdown signal the OP needs.
    const exited = new Promise((resolve) => op.child.on('exit', resolve));
    op.child.stdin.end();
    const timer = setTimeout(() => { op.child.kill(); }, 5000);
    await exited;
    clearTimeout(timer);
  }

  await test('OP exits when its stdin closes', async () => {
    assert.notEqual(op.child.exitCode, null);
    assert.equal(op.child.signalCode, null, 'exited by itself, not killed');
  });

  const passed = results.filter(([, ok]) => ok).length;
  const failed = results.length - passed;
  if (failed || process.env.OP_DEBUG) {
    console.log('--- OP stderr ---');
    console.log(opStderr);
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exitCode = failed ? 1 : 0;
}

main().catch((err) => {
  console.error(err);
  console.error(opStderr);
  process.exit(1);
});
