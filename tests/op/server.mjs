// Keycloak-like OpenID Provider for the dtr-proxy integration tests.
//
// One process serves many tests: realms are created at run time through
// `POST /admin/realms`, and each realm is its own oidc-provider instance
// mounted under `/realms/{realm}`, with Keycloak's endpoint layout.
// See README.md for the full contract.
//
// stdout carries exactly one line, `{"port":N}`, once the server listens;
// everything else goes to stderr. The process exits when its stdin closes,
// so a test harness that dies can never leak it.

import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// oidc-provider prints notices with console.info (stdout). stdout belongs to
// the readiness line alone, so every console method is pointed at stderr
// BEFORE oidc-provider is loaded (hence the dynamic import below).
for (const method of ['log', 'info', 'debug']) {
  console[method] = (...args) => console.error(...args);
}

const { default: Provider, errors: oidcErrors } = await import('oidc-provider');

const HERE = path.dirname(fileURLToPath(import.meta.url));
const readJson = (file) => JSON.parse(fs.readFileSync(path.join(HERE, file), 'utf8'));

// Fixed test keys, committed on purpose: tests are reproducible and a
// captured token can be checked offline against the same JWKS.
const OP_SIGNING_JWK = readJson('keys/op-signing.private.jwk.json');
const CLIENT_JWT_PUBLIC_JWK = readJson('keys/client-jwt.public.jwk.json');
const COOKIE_KEYS = [
  'dtr-test-op-cookie-key-1-6f1c2a9e0b7d4c38',
  'dtr-test-op-cookie-key-2-a3e8d5b1c9f0472e',
];

const DEBUG = Boolean(process.env.OP_DEBUG);
const log = (...args) => console.error('[test-op]', ...args);

// ---------------------------------------------------------------------------
// Realm configuration
// ---------------------------------------------------------------------------

const REDIRECT_URIS = ['https://rp.example.com/cb'];
const CLIENT_BASE = {
  redirect_uris: REDIRECT_URIS,
  post_logout_redirect_uris: ['https://rp.example.com/logged-out'],
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  scope: 'openid profile email offline_access',
};

function defaultClients() {
  return [
    {
      ...CLIENT_BASE,
      client_id: 'dtr-client',
      client_secret: 'dtr-client-secret',
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      ...CLIENT_BASE,
      client_id: 'dtr-post',
      client_secret: 'dtr-post-secret',
      token_endpoint_auth_method: 'client_secret_post',
    },
    {
      ...CLIENT_BASE,
      client_id: 'dtr-jwt',
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'ES256',
      jwks: { keys: [CLIENT_JWT_PUBLIC_JWK] },
    },
    {
      ...CLIENT_BASE,
      client_id: 'dtr-hs',
      client_secret: 'dtr-hs-secret-0123456789abcdefghijklmnop',
      token_endpoint_auth_method: 'client_secret_jwt',
      token_endpoint_auth_signing_alg: 'HS256',
    },
    {
      ...CLIENT_BASE,
      client_id: 'dtr-public',
      token_endpoint_auth_method: 'none',
    },
    {
      ...CLIENT_BASE,
      client_id: 'plain-client',
      client_secret: 'plain-client-secret',
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ];
}

// Lifetimes in seconds. Explicit numbers also silence oidc-provider's
// "you SHOULD change the default" notices. A realm may override any of them.
const DEFAULT_TTL = {
  AccessToken: 300,
  AuthorizationCode: 60,
  IdToken: 300,
  RefreshToken: 86400,
  Interaction: 600,
  Session: 86400,
  Grant: 86400,
};

// Keycloak's endpoint names, relative to the realm prefix.
const ROUTES = {
  authorization: '/protocol/openid-connect/auth',
  token: '/protocol/openid-connect/token',
  jwks: '/protocol/openid-connect/certs',
  userinfo: '/protocol/openid-connect/userinfo',
  end_session: '/protocol/openid-connect/logout',
  revocation: '/protocol/openid-connect/revoke',
  introspection: '/protocol/openid-connect/token/introspect',
  pushed_authorization_request: '/protocol/openid-connect/ext/par/request',
};

const LOGIN_ACTIONS = 'login-actions';

// Keycloak does not ask for consent by default. oidc-provider's consent
// prompt is satisfied when the session's Grant already covers what the
// request asks for, so this hook (the documented "skip consent" recipe)
// loads the session's Grant, or starts one, and adds every requested scope,
// claim and resource scope to it: no consent page, and SSO / prompt=none
// work for any client of the realm, as in Keycloak.
async function loadExistingGrant(ctx) {
  const { oidc } = ctx;
  const accountId = oidc.account.accountId;
  const clientId = oidc.client.clientId;
  const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(clientId);

  let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
  if (!grant || grant.accountId !== accountId || grant.clientId !== clientId) {
    grant = new oidc.provider.Grant({ accountId, clientId });
  }

  const scopes = [...oidc.requestParamOIDCScopes];
  if (scopes.length) grant.addOIDCScope(scopes);

  const claims = [...oidc.requestParamClaims];
  if (claims.length) grant.addOIDCClaims(claims);

  for (const [indicator, resourceServer] of Object.entries(oidc.resourceServers)) {
    const wanted = [...oidc.requestParamScopes].filter((s) => resourceServer.scopes.has(s));
    if (wanted.length) grant.addResourceScope(indicator, wanted);
  }

  await grant.save();
  return grant;
}

// offline_access without `prompt=consent`.
//
// OpenID Connect Core section 11 wants `prompt=consent` with offline_access,
// and oidc-provider enforces it in its scope check by dropping
// `offline_access` from the request's scope unless `prompt=consent` is
// present. Keycloak does not: it honours offline_access on a plain request.
// The scope check runs before the `extraParams` validators, which are called
// on every authorization (and PAR) request whether or not their parameter
// is present, so this validator puts `offline_access` back when the
// original request asked for it and the other conditions of that check
// still hold (a `code` response type, a client allowed the refresh_token
// grant and, when the client has a `scope` allow-list, listed there).
// The stored interaction / PAR parameters then keep it, the Grant built by
// loadExistingGrant includes it, the code and refresh token carry it, and
// `expiresWithSession` (default: not for offline_access) lets the refresh
// token outlive the session, as Keycloak's offline tokens do.
function restoreOfflineAccess(ctx, _value, client) {
  const { params } = ctx.oidc;
  const scopes = new Set(params.scope?.split(' ') ?? []);
  if (scopes.has('offline_access')) return;
  if (!String(params.response_type ?? '').split(' ').includes('code')) return;
  if (!client.grantTypeAllowed('refresh_token')) return;
  if (client.scope && !client.scope.split(' ').includes('offline_access')) return;

  // Where the request's own scope came from, before the scope check.
  let original;
  const par = ctx.oidc.entities.PushedAuthorizationRequest;
  if (par?.request) {
    original = JSON.parse(Buffer.from(par.request.split('.')[1], 'base64url')).scope;
  } else if (ctx.method === 'POST') {
    original = ctx.oidc.body?.scope;
  } else {
    original = ctx.query.scope;
  }
  if (typeof original === 'string' && original.split(' ').includes('offline_access')) {
    scopes.add('offline_access');
    params.scope = [...scopes].join(' ');
  }
}

function buildConfiguration({ realm, clients, ttl }) {
  const realmPath = `/realms/${realm}`;
  return {
    clients,
    jwks: { keys: [OP_SIGNING_JWK] },

    // Any account id exists: tests log in as whoever they like.
    async findAccount(ctx, id) {
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            email: `${id}@example.com`,
            email_verified: true,
            name: `User ${id}`,
          };
        },
      };
    },

    scopes: ['openid', 'offline_access', 'profile', 'email'],
    // Merged with oidc-provider's defaults (acr, sid, auth_time, iss).
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
    },
    // Keycloak puts the profile/email claims in the ID token too, not only
    // in the userinfo response.
    conformIdTokenClaims: false,

    routes: ROUTES,

    features: {
      // The built-in dev login pages are replaced by the Keycloak-like
      // `login-actions` pages served below.
      devInteractions: { enabled: false },
      dPoP: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        // `form` is oidc-provider's hidden confirm form (id "op.logoutForm",
        // POST to …/logout/confirm with an `xsrf` field).
        async logoutSource(ctx, form) {
          ctx.body = page('Logging out', `<h1>Do you want to log out?</h1>
  ${form}
  <button type="submit" form="op.logoutForm" name="logout" value="yes">Logout</button>
  <button type="submit" form="op.logoutForm">Cancel</button>`);
        },
        async postLogoutSuccessSource(ctx) {
          ctx.body = page('Signed out', '<h1>You are logged out</h1>');
        },
      },
      introspection: {
        enabled: true,
        // Confidential clients may introspect any token of the realm (as in
        // Keycloak); public clients only their own.
        async allowedPolicy(ctx, client, token) {
          return !(client.clientAuthMethod === 'none' && token.clientId !== client.clientId);
        },
      },
      revocation: {
        enabled: true,
        async allowedPolicy(ctx, client, token) {
          if (token.clientId !== client.clientId) {
            if (client.clientAuthMethod === 'none') return false;
            throw new oidcErrors.InvalidRequest('client is not authorized to revoke the presented token');
          }
          return true;
        },
      },
    },

    // PKCE is mandatory for public clients only.
    pkce: {
      required: (ctx, client) => client.clientAuthMethod === 'none',
    },

    // Like Keycloak: a refresh token whenever the client may use the
    // refresh_token grant, whatever the scope; rotated on every use.
    async issueRefreshToken(ctx, client) {
      return client.grantTypeAllowed('refresh_token');
    },
    rotateRefreshToken: () => true,

    loadExistingGrant,
    // The parameter itself means nothing; it only carries the hook.
    extraParams: { dtr_offline_access: restoreOfflineAccess },

    ttl: { ...DEFAULT_TTL, ...ttl },

    interactions: {
      // Under the realm prefix, as Keycloak's `login-actions`. Absolute
      // (built from the forwarded origin) like Keycloak's own redirects.
      url(ctx, interaction) {
        return new URL(`${realmPath}/${LOGIN_ACTIONS}/${interaction.uid}`, ctx.href).href;
      },
    },

    cookies: {
      keys: COOKIE_KEYS,
      // The session cookie is scoped to the realm, as Keycloak scopes its
      // own; the interaction and resume cookies get exact paths from
      // oidc-provider (the login page and the resume endpoint).
      long: { signed: true, path: realmPath },
      short: { signed: true },
    },

    clientBasedCORS: () => true,

    // Plain pages without external resources (the defaults pull web fonts).
    async renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('Error', `<h1>We are sorry...</h1>
  <p id="kc-error-message">${htmlEscape(out.error)}: ${htmlEscape(out.error_description ?? '')}</p>`);
    },
  };
}

// ---------------------------------------------------------------------------
// Realm registry
// ---------------------------------------------------------------------------

/** @type {Map<string, {provider: Provider, callback: Function, issuer: string}>} */
const realms = new Map();

const REALM_NAME = /^[A-Za-z0-9._-]{1,100}$/;

function createRealm(body) {
  const { realm, issuer, clients, ttl, provisioning_secret: provisioningSecret } = body ?? {};
  if (typeof realm !== 'string' || !REALM_NAME.test(realm)) {
    throw new HttpError(400, 'realm must match [A-Za-z0-9._-]{1,100}');
  }
  let issuerUrl;
  try {
    issuerUrl = new URL(issuer);
  } catch {
    throw new HttpError(400, 'issuer must be an absolute URL');
  }
  // Endpoint URLs are built from the forwarded origin plus the OP's own
  // path, so the issuer must sit at the same path for discovery to be
  // consistent.
  if (issuerUrl.pathname !== `/realms/${realm}` || issuerUrl.search || issuerUrl.hash) {
    throw new HttpError(400, `issuer path must be exactly /realms/${realm}`);
  }
  if (clients !== undefined && !Array.isArray(clients)) {
    throw new HttpError(400, 'clients must be an array of client metadata objects');
  }
  if (ttl !== undefined && (typeof ttl !== 'object' || ttl === null || Array.isArray(ttl))) {
    throw new HttpError(400, 'ttl must be an object');
  }

  let provider;
  try {
    provider = new Provider(issuer, buildConfiguration({
      realm,
      clients: clients ?? defaultClients(),
      ttl: ttl ?? {},
    }));
  } catch (err) {
    throw new HttpError(400, `invalid realm configuration: ${err.message}`);
  }

  // The issuer is the proxy's origin; the OP listens elsewhere. With
  // `proxy`, Koa takes host and scheme from X-Forwarded-Host/-Proto, so
  // every URL oidc-provider builds (discovery, redirects, DPoP `htu`,
  // client assertion `aud`) is the public one.
  provider.proxy = true;

  // `sid` in ID tokens: oidc-provider adds it only for clients registered
  // for back-channel logout (or when the `claims` request parameter asks
  // for it). Keycloak always includes it, and the proxy relies on it, so
  // this realm's Client class says yes for every client. The class is
  // private to this Provider instance.
  provider.Client.prototype.includeSid = () => true;

  provider.on('server_error', (ctx, err) => log(`realm ${realm}: server_error`, err));
  if (DEBUG) {
    for (const event of ['authorization.error', 'grant.error', 'introspection.error',
      'revocation.error', 'userinfo.error', 'end_session.error', 'pushed_authorization_request.error']) {
      provider.on(event, (ctx, err) => log(`realm ${realm}: ${event}: ${err.message} ${err.error_description ?? ''}`));
    }
  }

  if (provisioningSecret !== undefined && (typeof provisioningSecret !== 'string' || provisioningSecret.length < 16)) {
    throw new HttpError(400, 'provisioning_secret must be a string of at least 16 characters');
  }
  realms.set(realm, { provider, callback: provider.callback(), issuer, provisioningSecret });
  log(`realm ${realm} ready, issuer ${issuer}`);
  return { realm, issuer };
}

// ---------------------------------------------------------------------------
// Login pages (Keycloak's `login-actions`), non-interactive for tests
// ---------------------------------------------------------------------------

const htmlEscape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage({ realm, uid, clientId, prompt, message }) {
  return page(`Sign in to ${realm}`, `<h1 id="kc-page-title">Sign in to your account</h1>
  <p>Client: <code>${htmlEscape(clientId)}</code>, prompt: <code>${htmlEscape(prompt)}</code></p>
  ${message ? `<p class="kc-feedback-text">${htmlEscape(message)}</p>` : ''}
  <form id="kc-form-login" method="post" action="/realms/${htmlEscape(realm)}/${LOGIN_ACTIONS}/${htmlEscape(uid)}/authenticate">
    <label for="username">Username</label>
    <input id="username" name="username" type="text" autofocus>
    <label for="password">Password (not checked)</label>
    <input id="password" name="password" type="password">
    <button type="submit" name="outcome" value="login">Sign In</button>
    <button type="submit" name="outcome" value="deny">Cancel</button>
  </form>`);
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>${htmlEscape(title)}</title></head>
<body>
  ${body}
</body>
</html>
`;
}

function errorPage(status, title, detail) {
  return {
    status,
    html: page(title, `<h1>${htmlEscape(title)}</h1>
  <p id="kc-error-message">${htmlEscape(detail)}</p>`),
  };
}

function sendHtml(res, status, html) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(html),
  });
  res.end(html);
}

// Looks up the pending interaction from its (signed, path-scoped) cookie and
// checks it is the one named in the URL.
async function pendingInteraction(provider, req, res, uid) {
  try {
    const details = await provider.interactionDetails(req, res);
    if (details.uid !== uid) {
      return { error: errorPage(400, 'Invalid request', 'The login session does not match this page.') };
    }
    return { details };
  } catch (err) {
    if (err instanceof oidcErrors.SessionNotFound) {
      return { error: errorPage(400, 'Page has expired', 'Your login attempt timed out. Login will start from the beginning.') };
    }
    throw err;
  }
}

async function showLogin(realmName, realm, req, res, uid) {
  const { details, error } = await pendingInteraction(realm.provider, req, res, uid);
  if (error) return sendHtml(res, error.status, error.html);
  sendHtml(res, 200, loginPage({
    realm: realmName,
    uid,
    clientId: details.params.client_id,
    prompt: details.prompt.name,
  }));
}

async function authenticate(realm, req, res, uid) {
  const { details, error } = await pendingInteraction(realm.provider, req, res, uid);
  if (error) return sendHtml(res, error.status, error.html);

  const form = new URLSearchParams(await readBody(req));
  let result;
  if (form.get('outcome') === 'deny') {
    result = { error: 'access_denied', error_description: 'The user declined' };
  } else {
    const username = form.get('username')?.trim();
    if (!username) {
      return sendHtml(res, 400, loginPage({
        realm: req.realmName,
        uid,
        clientId: details.params.client_id,
        prompt: details.prompt.name,
        message: 'Invalid username.',
      }));
    }
    // `consent: {}` also satisfies the one consent check the Grant cannot
    // (native clients always prompt); the Grant itself comes from
    // loadExistingGrant when the authorization request resumes.
    result = { login: { accountId: username }, consent: {} };
  }
  // Answers 303 to the resume URL (…/protocol/openid-connect/auth/{uid}),
  // which then redirects to the client's redirect_uri.
  await realm.provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

// ---------------------------------------------------------------------------
// HTTP plumbing
// ---------------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function readBody(req, limit = 1024 * 1024) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > limit) {
        reject(new HttpError(413, 'request body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function sendJson(res, status, body) {
  const json = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(json),
  });
  res.end(json);
}

async function admin(req, res, pathname) {
  if (pathname === '/admin/realms' && req.method === 'POST') {
    let body;
    try {
      body = JSON.parse(await readBody(req));
    } catch (err) {
      if (err instanceof HttpError) throw err;
      throw new HttpError(400, 'body must be JSON');
    }
    return sendJson(res, 201, createRealm(body));
  }
  const provisioning = /^\/admin\/provisioning\/([^/]+)\/([^/]+)$/.exec(pathname);
  if (provisioning && req.method === 'GET') {
    const realm = realms.get(decodeURIComponent(provisioning[1]));
    const metadata = realm?.provisioned?.get(decodeURIComponent(provisioning[2]));
    if (!metadata) throw new HttpError(404, 'not provisioned');
    return sendJson(res, 200, metadata);
  }
  if (provisioning && req.method === 'PUT') {
    return provision(req, res, decodeURIComponent(provisioning[1]), decodeURIComponent(provisioning[2]));
  }
  const listing = /^\/admin\/provisioning\/([^/]+)$/.exec(pathname);
  if (listing && req.method === 'GET') {
    return listProvisioned(req, res, decodeURIComponent(listing[1]));
  }
  const m = /^\/admin\/realms\/([^/]+)$/.exec(pathname);
  if (m && req.method === 'DELETE') {
    realms.delete(decodeURIComponent(m[1]));
    res.writeHead(204).end();
    return undefined;
  }
  throw new HttpError(404, 'no such admin endpoint');
}

// Federated clients provisioned by the proxy (its `endpoint` provisioner): the realm's
// client adapter holds them, so oidc-provider finds them as it finds any client it did not
// start with. Guarded by the realm's provisioning secret (a bearer token).
const CLIENT_FIELDS = ['client_id', 'redirect_uris', 'scope', 'token_endpoint_auth_method', 'jwks',
  'grant_types', 'response_types'];

// What the proxy marks its clients with (its owner, the trust root, the statement's expiry),
// kept beside the client so the proxy can list and reconcile what it provisioned.
const OWNER_FIELDS = ['dtr_owner', 'dtr_federation', 'dtr_expires_at'];

function provisioningRealm(req, res, realmName) {
  const realm = realms.get(realmName);
  if (!realm) throw new HttpError(404, `realm ${realmName} not found`);
  const presented = req.headers.authorization ?? '';
  if (!realm.provisioningSecret || presented !== `Bearer ${realm.provisioningSecret}`) {
    res.writeHead(401, { 'www-authenticate': 'Bearer' }).end();
    return undefined;
  }
  return realm;
}

async function provision(req, res, realmName, clientId) {
  const realm = provisioningRealm(req, res, realmName);
  if (!realm) return undefined;
  let body;
  try {
    body = JSON.parse(await readBody(req));
  } catch (err) {
    if (err instanceof HttpError) throw err;
    throw new HttpError(400, 'body must be JSON');
  }
  if (body?.client_id !== clientId) throw new HttpError(400, 'client_id must match the path');
  const adapter = realm.provider.Client.adapter;
  if (body.enabled === false) {
    // Conditional: only the record the caller listed (same trust root and expiry) is
    // disabled, so a client refreshed meanwhile by another replica stays enabled.
    const record = realm.provisioned?.get(clientId);
    if (!record) throw new HttpError(404, 'not provisioned');
    const stale = OWNER_FIELDS.some((k) => body[k] !== undefined && body[k] !== record[k]);
    if (record.enabled === false || stale) {
      return sendJson(res, 409, { error: 'conflict', error_description: 'the client is not as listed' });
    }
    await adapter.destroy(clientId);
    realm.provisioned.set(clientId, { ...record, enabled: false });
    log(`realm ${realmName}: client ${clientId} disabled`);
    return sendJson(res, 200, { client_id: clientId, enabled: false });
  }
  const metadata = Object.fromEntries(CLIENT_FIELDS.filter((k) => body[k] !== undefined).map((k) => [k, body[k]]));
  await adapter.upsert(clientId, metadata);
  // Checked now, so a client oidc-provider would refuse is a 400 here, not at first use.
  try {
    await realm.provider.Client.find(clientId);
  } catch (err) {
    await adapter.destroy(clientId);
    throw new HttpError(400, `invalid client metadata: ${err.error_description ?? err.message}`);
  }
  const owner = Object.fromEntries(OWNER_FIELDS.filter((k) => body[k] !== undefined).map((k) => [k, body[k]]));
  realm.provisioned ??= new Map();
  realm.provisioned.set(clientId, { ...metadata, ...owner, enabled: true });
  log(`realm ${realmName}: client ${clientId} provisioned`);
  return sendJson(res, 200, { ...metadata, enabled: true });
}

// The clients provisioned in a realm, enabled or not, paged by `first` and `max`.
function listProvisioned(req, res, realmName) {
  const realm = provisioningRealm(req, res, realmName);
  if (!realm) return undefined;
  const { searchParams } = new URL(req.url, 'http://op.invalid');
  const first = Math.max(0, Number.parseInt(searchParams.get('first') ?? '0', 10) || 0);
  const max = Math.min(1000, Math.max(1, Number.parseInt(searchParams.get('max') ?? '100', 10) || 100));
  const clients = [...(realm.provisioned?.values() ?? [])].slice(first, first + max);
  return sendJson(res, 200, { clients });
}

async function handle(req, res) {
  const { pathname } = new URL(req.url, 'http://op.invalid');

  if (pathname === '/admin' || pathname.startsWith('/admin/')) {
    return admin(req, res, pathname);
  }

  const m = /^\/realms\/([^/]+)(\/.*)?$/.exec(pathname);
  if (!m) throw new HttpError(404, 'not found');
  const realmName = decodeURIComponent(m[1]);
  const realm = realms.get(realmName);
  if (!realm) throw new HttpError(404, `realm ${realmName} not found`);
  req.realmName = realmName;
  const rest = m[2] ?? '/';

  const page = new RegExp(`^/${LOGIN_ACTIONS}/([^/]+)(/authenticate)?$`).exec(rest);
  if (page) {
    const uid = decodeURIComponent(page[1]);
    if (!page[2] && (req.method === 'GET' || req.method === 'HEAD')) return showLogin(realmName, realm, req, res, uid);
    if (page[2] && req.method === 'POST') return authenticate(realm, req, res, uid);
    throw new HttpError(405, 'method not allowed');
  }

  // Hand the request to the realm's provider with the prefix stripped, but
  // keep `req.originalUrl`: oidc-provider derives its mount path from the
  // difference, so the URLs it builds keep `/realms/{realm}`.
  const [prefix] = /^\/realms\/[^/?#]+/.exec(req.url);
  req.originalUrl = req.url;
  const stripped = req.url.slice(prefix.length);
  req.url = stripped.startsWith('/') ? stripped : `/${stripped}`;
  return realm.callback(req, res);
}

// Keycloak accepts large cookies and headers (its own cookies are big); so must the look-alike.
const server = http.createServer({ maxHeaderSize: 128 * 1024 }, (req, res) => {
  handle(req, res).catch((err) => {
    const status = err instanceof HttpError ? err.status : 500;
    if (status === 500) log('unhandled error', err);
    if (res.headersSent) {
      res.destroy();
      return;
    }
    sendJson(res, status, { error: status === 500 ? 'server_error' : 'invalid_request', error_description: err.message });
  });
});

// The parent test process holds our stdin; when it goes away (normally or
// not) stdin ends and the OP goes with it.
const shutdown = () => {
  server.close();
  process.exit(0);
};
process.stdin.on('end', shutdown);
process.stdin.on('close', shutdown);
process.stdin.on('error', shutdown);
process.stdin.resume();

server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  const { port } = server.address();
  process.stdout.write(`${JSON.stringify({ port })}\n`);
  log(`listening on 127.0.0.1:${port} (node ${process.version})`);
});
