// A relying-party kit for the Deferred Token Response (DTR) flow, built on oauth4webapi:
// discovery, PKCE, PAR, client authentication, DPoP, token requests and ID token claim checks
// are oauth4webapi's; this module adds what DTR needs on top of them, in both DTR profiles
// (OpenID Connect DTR 1.0, the default, and the OAuth working group's
// draft-ietf-oauth-deferred-token-response), chosen by the `profile` option.

import * as oauth from 'oauth4webapi'
import { timingSafeEqual } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { KeySet, decodeJws } from './jwks.js'

export { KeySet, decodeJws } from './jwks.js'
export {
  EventVerifier,
  EventVerificationError,
  DEFAULT_EVENT_TOLERANCE_SECONDS,
  type LifecycleEvent,
  type EventVerifierOptions,
  type EventErrorCode,
} from './events.js'
export * as oauth from 'oauth4webapi'

/** `grant_type` of the OpenID profile's deferred code exchange and of its polls. */
export const DEFERRED_GRANT = 'urn:openid:params:grant-type:deferred'
/** `grant_type` of the IETF profile's polls (draft-ietf-oauth-deferred-token-response §6.5). */
export const DEFERRED_GRANT_IETF = 'urn:ietf:params:oauth:grant-type:deferred'
/** The `token_type_hint` of a deferral code at the revocation endpoint (IETF §8.1). */
export const DEFERRAL_CODE_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:deferral-code'
/** Discovery metadata naming the cancellation endpoint (OpenID profile). */
export const CANCELLATION_ENDPOINT = 'deferred_authentication_cancellation_endpoint'
/** The IETF profile's authorization server metadata flag (IETF §5.1). */
export const DEFERRED_TOKEN_RESPONSE_SUPPORTED = 'deferred_token_response_supported'

/**
 * The DTR profile a client speaks: `openid` (OpenID Connect DTR 1.0, the default) or `ietf`
 * (the OAuth working group's draft-ietf-oauth-deferred-token-response). At dtr-proxy, the
 * client's `profile` setting or its realm's (`DTR_IETF_REALMS`).
 */
export type Profile = 'openid' | 'ietf'

/** The names each step puts on the wire, per profile. */
export interface ProfileNames {
  /** The authorization request's `response_type` values; the first is the default. */
  responseTypes: readonly string[]
  /** `completion_mode` on the authorization request (advance hint) and the code exchange. */
  completionMode?: 'deferred'
  /** The acknowledgment's parameter carrying the code to exchange. */
  acknowledgmentCode: 'deferred_code' | 'code'
  /** The code exchange's `grant_type`. */
  exchangeGrant: string
  /** What a deferred exchange answers: OpenID `200`; IETF `400 authorization_pending`. */
  exchangeAnswer: { status: number; error?: string }
  /** The exchange's parameter carrying the bearer token for pings (callbacks). */
  notificationTokenParam: 'deferred_notification_token' | 'client_notification_token'
  /** A poll's `grant_type`. */
  pollGrant: string
  /** The parameter naming a process: the exchange's answer, polls, pings. */
  processParam: 'deferred_auth_id' | 'deferral_code'
}

export const PROFILES: Readonly<Record<Profile, ProfileNames>> = {
  openid: {
    responseTypes: ['deferred_code', 'deferred_code code'],
    acknowledgmentCode: 'deferred_code',
    exchangeGrant: DEFERRED_GRANT,
    exchangeAnswer: { status: 200 },
    notificationTokenParam: 'deferred_notification_token',
    pollGrant: DEFERRED_GRANT,
    processParam: 'deferred_auth_id',
  },
  ietf: {
    responseTypes: ['code'],
    completionMode: 'deferred',
    acknowledgmentCode: 'code',
    exchangeGrant: 'authorization_code',
    exchangeAnswer: { status: 400, error: 'authorization_pending' },
    notificationTokenParam: 'client_notification_token',
    pollGrant: DEFERRED_GRANT_IETF,
    processParam: 'deferral_code',
  },
}

function namesOf(profile: Profile | undefined): ProfileNames {
  const name = profile ?? 'openid'
  const names = Object.hasOwn(PROFILES, name) ? PROFILES[name] : undefined
  if (!names) throw new DtrError(`unknown DTR profile ${String(profile)}`, 'invalid_request')
  return names
}

/** An error of the deferred flow that is not an OAuth error answer of the OP. */
export class DtrError extends Error {
  constructor(
    message: string,
    readonly code: string,
    options?: { cause?: unknown },
  ) {
    super(message, options)
    this.name = 'DtrError'
  }
}

export interface DtrClientOptions {
  /** The OAuth client: at least `client_id`. */
  client: oauth.Client
  /** How the client authenticates: `oauth.ClientSecretBasic(secret)`, `oauth.PrivateKeyJwt(key)`, `oauth.None()`… Default `None()`. */
  clientAuth?: oauth.ClientAuth
  /** The registered redirect URI the acknowledgment comes back to. */
  redirectUri: string
  /** The DTR profile the client speaks: `openid` (default) or `ietf`. */
  profile?: Profile
  /**
   * Sender-constrain the process with DPoP. `true`: a fresh ES256 key pair for every
   * authorization (the draft asks for one key per process); or a key pair to use.
   * Public clients need it at dtr-proxy.
   */
  dpop?: boolean | oauth.CryptoKeyPair
  /** Allow `http:` URLs (local development and tests only). */
  allowInsecureRequests?: boolean
  /** Replaces `fetch` for every request (proxies, instrumentation). */
  fetch?: typeof fetch
}

/** What the RP keeps between sending the user away and receiving the acknowledgment. */
export interface PendingAuthorization {
  state: string
  nonce: string
  codeVerifier: string
  /** The DPoP key pair bound to this process, when DPoP is used. */
  dpopKeyPair?: oauth.CryptoKeyPair
}

export interface AuthorizationRequest {
  /** Where to send the user's browser. */
  url: URL
  /** Keep this (server side, e.g. in the session) until the acknowledgment arrives. */
  pending: PendingAuthorization
}

export interface AuthorizationOptions {
  /** Default `openid`. */
  scope?: string
  /** OpenID profile: `deferred_code` (default) or `deferred_code code`. IETF: `code` only. */
  responseType?: 'deferred_code' | 'deferred_code code' | 'code'
  /** `query` (default at the OP), `fragment` or `form_post`. */
  responseMode?: 'query' | 'fragment' | 'form_post'
  /** Push the request first (RFC 9126): the URL then carries only `client_id` and `request_uri`. */
  par?: boolean
  /** Further parameters: `acr_values`, `claims`, `login_hint`, `prompt`… */
  parameters?: Record<string, string>
}

/** A validated acknowledgment. */
export type Acknowledgment =
  /** `deferredCode`: the code to exchange, the `deferred_code` (OpenID) or the `code` (IETF). */
  | { type: 'deferred'; deferredCode: string; parameters: URLSearchParams }
  /** Only for the OpenID `deferred_code code`: the OP answered at once; continue with the code flow. */
  | { type: 'code'; parameters: URLSearchParams }

/** A running deferred process: what the RP keeps after the exchange. */
export interface DeferredProcess {
  /** The process's handle: the `deferred_auth_id` (OpenID), or the `deferral_code` (IETF). */
  deferredAuthId: string
  /** Epoch milliseconds after which the process is over (`expires_in`), if the OP said. */
  expiresAt?: number
  /** Seconds to wait between polls; grows by 5 on every `slow_down`. */
  interval: number
  /** The interim ID token, signature and claims checked. */
  interimIdToken?: string
  interimClaims?: oauth.IDToken
  /** The bearer token pings for this process must carry. */
  notificationToken?: string
  nonce: string
  dpopKeyPair?: oauth.CryptoKeyPair
  /** Epoch milliseconds of the last poll (the kit keeps the interval from it). */
  lastPollAt?: number
}

export interface FinalTokens {
  tokens: oauth.TokenEndpointResponse
  /** The final ID token's claims: signature, iss, aud, exp, nonce and sub checked. */
  claims: oauth.IDToken
}

export type PollResult =
  | { status: 'pending'; description?: string }
  /**
   * Still pending, and the verification waits for the end-user at `interactionUri`: send the
   * user there (a link or a redirect) and keep polling. IETF: `interaction_required` (§6.6);
   * OpenID: `authorization_pending` whose description ends in `; interaction_uri=<url>`
   * (dtr-proxy's convention, docs/profiles.md).
   */
  | { status: 'interaction_required'; interactionUri: string; description?: string }
  | { status: 'slow_down'; interval: number; description?: string }
  | ({ status: 'approved' } & FinalTokens)
  /**
   * The OP or its store is briefly unavailable (`temporarily_unavailable`, 5xx, 429): try again
   * after `retryAfter` seconds. An approved process stays approved meanwhile.
   */
  | { status: 'unavailable'; retryAfter: number; httpStatus: number; description?: string }
  /** `access_denied` (denied or cancelled), `expired_token`, or `invalid_grant` (spent or unknown id). */
  | { status: 'access_denied' | 'expired_token' | 'invalid_grant'; description?: string }

type Waiting = Extract<PollResult, { status: 'pending' | 'interaction_required' | 'slow_down' | 'unavailable' }>
export type FinalResult = Exclude<PollResult, Waiting>

export interface WaitOptions {
  /** Stops waiting (rejects with the signal's reason). */
  signal?: AbortSignal
  /** Gives up after this many milliseconds (`DtrError` `timeout`); default: the process's expiry. */
  maxWaitMs?: number
  /** Called after every pending poll (progress text from the verification service). */
  onPending?: (result: Waiting) => void
}

const FINAL_ERRORS = new Set(['access_denied', 'expired_token', 'invalid_grant'])

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason)
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    const onAbort = () => {
      clearTimeout(timer)
      reject(signal?.reason)
    }
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}

function unavailable(response: Response, interval: number, description?: string): PollResult {
  const header = Number(response.headers.get('retry-after'))
  const retryAfter = Number.isFinite(header) && header > 0 ? Math.min(header, 3600) : interval
  return { status: 'unavailable', retryAfter, httpStatus: response.status, ...(description ? { description } : {}) }
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a)
  const y = Buffer.from(b)
  return x.length === y.length && timingSafeEqual(x, y)
}

/** The deferred flow for one client at one OP. */
export class DtrClient {
  readonly as: oauth.AuthorizationServer
  readonly client: oauth.Client
  readonly redirectUri: string
  readonly profile: Profile
  readonly #names: ProfileNames
  readonly #auth: oauth.ClientAuth
  readonly #dpop: boolean | oauth.CryptoKeyPair
  readonly #options: { [oauth.allowInsecureRequests]?: boolean; [oauth.customFetch]?: typeof fetch }
  readonly #keys: KeySet

  constructor(as: oauth.AuthorizationServer, options: DtrClientOptions) {
    this.as = as
    this.client = options.client
    this.redirectUri = options.redirectUri
    this.#names = namesOf(options.profile)
    this.profile = options.profile ?? 'openid'
    this.#auth = options.clientAuth ?? oauth.None()
    this.#dpop = options.dpop ?? false
    this.#options = {}
    if (options.allowInsecureRequests) this.#options[oauth.allowInsecureRequests] = true
    if (options.fetch) this.#options[oauth.customFetch] = options.fetch
    this.#keys = new KeySet(as, options.fetch)
  }

  /**
   * Discovers the OP (its `/.well-known/openid-configuration`, which dtr-proxy augments) and
   * checks that it offers the client's profile: `deferred_code` among its response types
   * (OpenID), or `deferred_token_response_supported` (IETF).
   */
  static async discover(issuer: URL | string, options: DtrClientOptions): Promise<DtrClient> {
    const url = new URL(issuer)
    const requestOptions: oauth.DiscoveryRequestOptions = {}
    if (options.allowInsecureRequests) requestOptions[oauth.allowInsecureRequests] = true
    if (options.fetch) requestOptions[oauth.customFetch] = options.fetch
    const response = await oauth.discoveryRequest(url, { ...requestOptions, algorithm: 'oidc' })
    const as = await oauth.processDiscoveryResponse(url, response)
    if ((options.profile ?? 'openid') === 'ietf') {
      if (as[DEFERRED_TOKEN_RESPONSE_SUPPORTED] !== true) {
        throw new DtrError(`the OP does not announce ${DEFERRED_TOKEN_RESPONSE_SUPPORTED}`, 'unsupported')
      }
    } else {
      const types = as.response_types_supported
      if (Array.isArray(types) && !types.includes('deferred_code')) {
        throw new DtrError('the OP does not offer response_type deferred_code', 'unsupported')
      }
    }
    return new DtrClient(as, options)
  }

  /** The cancellation endpoint from discovery, if the OP has one. */
  get cancellationEndpoint(): string | undefined {
    const value = this.as[CANCELLATION_ENDPOINT]
    return typeof value === 'string' ? value : undefined
  }

  #dpopHandle(keyPair: oauth.CryptoKeyPair | undefined): oauth.DPoPHandle | undefined {
    return keyPair ? oauth.DPoP(this.client, keyPair) : undefined
  }

  /**
   * Builds the deferred authorization request (PKCE S256, state, nonce), pushed first if asked:
   * `response_type=deferred_code` (OpenID), or `response_type=code` with
   * `completion_mode=deferred` (IETF).
   */
  async authorizationUrl(options: AuthorizationOptions = {}): Promise<AuthorizationRequest> {
    if (typeof this.as.authorization_endpoint !== 'string') {
      throw new DtrError('the OP has no authorization_endpoint', 'unsupported')
    }
    const pending: PendingAuthorization = {
      state: oauth.generateRandomState(),
      nonce: oauth.generateRandomNonce(),
      codeVerifier: oauth.generateRandomCodeVerifier(),
    }
    if (this.#dpop === true) pending.dpopKeyPair = await oauth.generateKeyPair('ES256')
    else if (this.#dpop) pending.dpopKeyPair = this.#dpop
    const responseType = options.responseType ?? this.#names.responseTypes[0]
    if (!this.#names.responseTypes.includes(responseType as string)) {
      throw new DtrError(`response_type ${responseType} is not the ${this.profile} profile's`, 'unsupported')
    }
    const params = new URLSearchParams({
      client_id: this.client.client_id,
      redirect_uri: this.redirectUri,
      response_type: responseType as string,
      scope: options.scope ?? 'openid',
      state: pending.state,
      nonce: pending.nonce,
      code_challenge: await oauth.calculatePKCECodeChallenge(pending.codeVerifier),
      code_challenge_method: 'S256',
    })
    if (this.#names.completionMode) params.set('completion_mode', this.#names.completionMode)
    if (options.responseMode) params.set('response_mode', options.responseMode)
    for (const [name, value] of Object.entries(options.parameters ?? {})) params.set(name, value)

    const url = new URL(this.as.authorization_endpoint)
    if (options.par) {
      const dpop = this.#dpopHandle(pending.dpopKeyPair)
      const pushed = await this.#withDpopRetry(dpop, () =>
        oauth
          .pushedAuthorizationRequest(this.as, this.client, this.#auth, params, { ...this.#options, DPoP: dpop })
          .then((response) => oauth.processPushedAuthorizationResponse(this.as, this.client, response)),
      )
      url.searchParams.set('client_id', this.client.client_id)
      url.searchParams.set('request_uri', pushed.request_uri)
    } else {
      for (const [name, value] of params) url.searchParams.set(name, value)
    }
    return { url, pending }
  }

  /**
   * Reads and validates the acknowledgment: `iss` (RFC 9207) and `state` by oauth4webapi, then
   * the profile's code present: `deferred_code`, never together with `code` (OpenID), or
   * `code` (IETF). `input` is the URL the browser
   * came back to (query or fragment), the `form_post` request, or its parameters.
   * An error answer throws oauth4webapi's `AuthorizationResponseError`.
   */
  async acknowledgment(
    input: URL | string | Request | URLSearchParams,
    pending: Pick<PendingAuthorization, 'state'>,
  ): Promise<Acknowledgment> {
    let parameters: URLSearchParams
    if (input instanceof URLSearchParams) {
      parameters = input
    } else if (typeof input === 'string' || input instanceof URL) {
      const url = new URL(input)
      parameters = url.hash.length > 1 ? new URLSearchParams(url.hash.slice(1)) : url.searchParams
    } else {
      if (input.method !== 'POST') {
        parameters = new URL(input.url).searchParams
      } else {
        const type = input.headers.get('content-type') ?? ''
        if (!type.toLowerCase().startsWith('application/x-www-form-urlencoded')) {
          throw new DtrError('a form_post acknowledgment must be form-encoded', 'invalid_response')
        }
        parameters = new URLSearchParams(await input.text())
      }
    }
    const checked = oauth.validateAuthResponse(this.as, this.client, parameters, pending.state)
    const name = this.#names.acknowledgmentCode
    const deferredCode = checked.get(name)
    // In the OpenID profile a `code` is the OP's immediate answer; in the IETF one it is the
    // acknowledgment itself.
    const code = name === 'code' ? null : checked.get('code')
    if (deferredCode && code) {
      throw new DtrError(`the response carries both code and ${name}`, 'invalid_response')
    }
    if (code) return { type: 'code', parameters: checked }
    if (!deferredCode) throw new DtrError(`the acknowledgment has no ${name}`, 'invalid_response')
    return { type: 'deferred', deferredCode, parameters: checked }
  }

  async #withDpopRetry<T>(dpop: oauth.DPoPHandle | undefined, call: () => Promise<T>): Promise<T> {
    try {
      return await call()
    } catch (err) {
      // One retry with the nonce the server just issued (RFC 9449 §8).
      if (dpop && oauth.isDPoPNonceError(err)) return call()
      throw err
    }
  }

  /** The interim ID token never passes through oauth4webapi's processors: checked here. */
  async #verifyIdToken(idToken: string, nonce: string): Promise<oauth.IDToken> {
    const algs = this.client.id_token_signed_response_alg
      ? [this.client.id_token_signed_response_alg]
      : (this.as.id_token_signing_alg_values_supported as string[] | undefined)
    const { claims } = await this.#keys.verify(idToken, algs)
    if (claims.nonce !== nonce) throw new DtrError('the ID token does not carry the nonce of the request', 'invalid_id_token')
    return claims as oauth.IDToken
  }

  #checkInterimClaims(claims: oauth.IDToken): void {
    const now = Math.floor(Date.now() / 1000)
    if (claims.iss !== this.as.issuer) throw new DtrError('interim ID token: unexpected iss', 'invalid_id_token')
    const aud = Array.isArray(claims.aud) ? claims.aud : [claims.aud]
    if (!aud.includes(this.client.client_id)) throw new DtrError('interim ID token: unexpected aud', 'invalid_id_token')
    if (aud.length > 1 && claims.azp !== undefined && claims.azp !== this.client.client_id) {
      throw new DtrError('interim ID token: unexpected azp', 'invalid_id_token')
    }
    if (typeof claims.sub !== 'string' || claims.sub === '') throw new DtrError('interim ID token: no sub', 'invalid_id_token')
    if (typeof claims.exp !== 'number' || claims.exp + 30 < now) throw new DtrError('interim ID token: expired', 'invalid_id_token')
    if (typeof claims.iat !== 'number') throw new DtrError('interim ID token: no iat', 'invalid_id_token')
  }

  /**
   * Exchanges the acknowledgment's code for a process. OpenID: the deferred grant with
   * `deferred_code` and `deferred_notification_token`, answered `200` with `deferred_auth_id`.
   * IETF: the `authorization_code` grant with `completion_mode=deferred` and
   * `client_notification_token`, answered `400 authorization_pending` with `deferral_code`.
   * Neither answer has an access token, which oauth4webapi's token-response processors refuse;
   * the kit reads it itself and lets oauth4webapi read error answers (thrown as
   * `ResponseBodyError`, `WWWAuthenticateChallengeError`).
   * `notificationToken`: a bearer token for pings (default: a fresh random one; `false`: none).
   */
  async exchange(
    ack: Acknowledgment | string,
    pending: PendingAuthorization,
    options: { notificationToken?: string | false } = {},
  ): Promise<DeferredProcess> {
    const deferredCode = typeof ack === 'string' ? ack : ack.type === 'deferred' ? ack.deferredCode : undefined
    if (!deferredCode) throw new DtrError('not a deferred acknowledgment', 'invalid_request')
    const notificationToken =
      options.notificationToken === false ? undefined : (options.notificationToken ?? oauth.generateRandomState())
    const names = this.#names
    const params = new URLSearchParams({
      [names.acknowledgmentCode]: deferredCode,
      redirect_uri: this.redirectUri,
      code_verifier: pending.codeVerifier,
    })
    if (names.completionMode) params.set('completion_mode', names.completionMode)
    if (notificationToken) params.set(names.notificationTokenParam, notificationToken)
    const dpop = this.#dpopHandle(pending.dpopKeyPair)
    const expected = names.exchangeAnswer
    const body = await this.#withDpopRetry(dpop, async () => {
      const response = await oauth.genericTokenEndpointRequest(this.as, this.client, this.#auth, names.exchangeGrant, params, {
        ...this.#options,
        DPoP: dpop,
      })
      if (response.status === expected.status) {
        let body: Record<string, unknown>
        try {
          body = (await response.clone().json()) as Record<string, unknown>
        } catch (cause) {
          throw new DtrError('the deferred code exchange did not answer JSON', 'invalid_response', { cause })
        }
        if (expected.error === undefined || body.error === expected.error) return body
      }
      // Throws the OAuth error the OP answered.
      const tokens = await oauth.processGenericTokenEndpointResponse(this.as, this.client, response)
      if (tokens.access_token !== undefined) {
        throw new DtrError('the exchange answered tokens, not a deferred process', 'invalid_response')
      }
      throw new DtrError(`the deferred code exchange answered ${response.status}`, 'invalid_response')
    })
    const id = body[names.processParam]
    if (typeof id !== 'string' || id === '') {
      throw new DtrError(`no ${names.processParam} in the exchange answer`, 'invalid_response')
    }
    if (body.access_token !== undefined) {
      throw new DtrError('the exchange answered tokens, not a deferred process', 'invalid_response')
    }
    const positive = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) && v > 0 ? v : undefined)
    const process: DeferredProcess = {
      deferredAuthId: id,
      interval: positive(body.interval) ?? 5,
      nonce: pending.nonce,
    }
    const expiresIn = positive(body.expires_in)
    if (expiresIn !== undefined) process.expiresAt = Date.now() + expiresIn * 1000
    if (notificationToken) process.notificationToken = notificationToken
    if (pending.dpopKeyPair) process.dpopKeyPair = pending.dpopKeyPair
    if (typeof body.interim_id_token === 'string') {
      const claims = await this.#verifyIdToken(body.interim_id_token, pending.nonce)
      this.#checkInterimClaims(claims)
      process.interimIdToken = body.interim_id_token
      process.interimClaims = claims
    }
    return process
  }

  /**
   * Polls once. Waits first if the interval since the last poll has not passed (unless
   * `respectInterval: false`). Updates `process.interval` on `slow_down` (+5 s, RFC 8628).
   * Other errors (`invalid_client`, `invalid_dpop_proof`, `invalid_request`…) throw.
   */
  async poll(process: DeferredProcess, options: { respectInterval?: boolean; signal?: AbortSignal } = {}): Promise<PollResult> {
    if (options.respectInterval !== false && process.lastPollAt !== undefined) {
      const due = process.lastPollAt + process.interval * 1000 - Date.now()
      if (due > 0) await sleep(due, options.signal)
    }
    const dpop = this.#dpopHandle(process.dpopKeyPair)
    try {
      const tokens = await this.#withDpopRetry(dpop, async () => {
        process.lastPollAt = Date.now()
        const response = await oauth.genericTokenEndpointRequest(
          this.as,
          this.client,
          this.#auth,
          this.#names.pollGrant,
          { [this.#names.processParam]: process.deferredAuthId },
          { ...this.#options, DPoP: dpop },
        )
        const tokens = await oauth.processGenericTokenEndpointResponse(this.as, this.client, response)
        // The final ID token's signature, by oauth4webapi against the OP's JWKS.
        if (tokens.id_token !== undefined) await oauth.validateApplicationLevelSignature(this.as, response, this.#options)
        return tokens
      })
      return { status: 'approved', ...this.#finalClaims(process, tokens) }
    } catch (err) {
      if (err instanceof oauth.ResponseBodyError) {
        const description = err.error_description
        if (err.error === 'authorization_pending') {
          const interaction = description !== undefined ? interactionInDescription(description) : undefined
          if (interaction) return { status: 'interaction_required', ...interaction }
          return { status: 'pending', ...(description ? { description } : {}) }
        }
        if (err.error === 'interaction_required') {
          const interactionUri = (err.cause as Record<string, unknown> | undefined)?.interaction_uri
          if (typeof interactionUri !== 'string' || !isHttps(interactionUri)) {
            throw new DtrError('interaction_required without an https interaction_uri', 'invalid_response', { cause: err })
          }
          return { status: 'interaction_required', interactionUri, ...(description ? { description } : {}) }
        }
        if (err.error === 'slow_down') {
          process.interval += 5
          return { status: 'slow_down', interval: process.interval, ...(description ? { description } : {}) }
        }
        if (FINAL_ERRORS.has(err.error)) {
          return { status: err.error as 'access_denied', ...(description ? { description } : {}) }
        }
        if (err.error === 'temporarily_unavailable' || err.status >= 500 || err.status === 429) {
          return unavailable(err.response, process.interval, description)
        }
      }
      if (err instanceof oauth.OperationProcessingError && err.cause instanceof Response) {
        const response = err.cause
        if (response.status >= 500 || response.status === 429) return unavailable(response, process.interval)
        const body = await response.text().catch(() => '')
        throw new DtrError(`the token endpoint answered ${response.status}: ${body.slice(0, 200)}`, 'invalid_response', {
          cause: err,
        })
      }
      throw err
    }
  }

  #finalClaims(process: DeferredProcess, tokens: oauth.TokenEndpointResponse): FinalTokens {
    // iss, aud, azp, exp and iat were checked by oauth4webapi, the signature too (poll).
    const claims = oauth.getValidatedIdTokenClaims(tokens)
    if (!claims) throw new DtrError('the final answer has no ID token', 'invalid_response')
    if (claims.nonce !== process.nonce) throw new DtrError('the final ID token does not carry the nonce of the request', 'invalid_id_token')
    if (process.interimClaims && claims.sub !== process.interimClaims.sub) {
      throw new DtrError('the final ID token names another sub than the interim one', 'invalid_id_token')
    }
    if (process.dpopKeyPair && tokens.token_type !== 'dpop') {
      throw new DtrError('a DPoP process answered a token that is not DPoP-bound', 'invalid_response')
    }
    return { tokens, claims }
  }

  /**
   * Polls with the interval until the process ends: resolves to the tokens, `access_denied`,
   * `expired_token` or `invalid_grant`. Bounded by the process's expiry and `maxWaitMs`.
   */
  async waitForTokens(process: DeferredProcess, options: WaitOptions = {}): Promise<FinalResult> {
    const deadline = Math.min(
      process.expiresAt ?? Number.POSITIVE_INFINITY,
      options.maxWaitMs !== undefined ? Date.now() + options.maxWaitMs : Number.POSITIVE_INFINITY,
    )
    for (;;) {
      if (process.lastPollAt !== undefined && process.lastPollAt + process.interval * 1000 > deadline) {
        if (process.expiresAt !== undefined && deadline >= process.expiresAt) return { status: 'expired_token' }
        throw new DtrError('gave up waiting for the deferred process', 'timeout')
      }
      const result = await this.poll(process, { signal: options.signal })
      if (result.status === 'pending' || result.status === 'interaction_required' || result.status === 'slow_down') {
        options.onPending?.(result)
        continue
      }
      if (result.status === 'unavailable') {
        options.onPending?.(result)
        const extra = result.retryAfter * 1000 - process.interval * 1000
        if (extra > 0) await sleep(Math.min(extra, Math.max(0, deadline - Date.now())), options.signal)
        continue
      }
      return result
    }
  }

  /**
   * Cancels the process. OpenID: at the OP's cancellation endpoint (from discovery), with
   * `deferred_auth_id`. IETF (§8, RFC 7009): by revoking the deferral code at the revocation
   * endpoint, `token=<deferral_code>` with the deferral code's `token_type_hint` when the OP
   * lists it (`revocation_endpoint_token_type_values_supported`). Always 200 at the OP,
   * whatever the state; a later poll answers `access_denied`. The request is sent with the
   * client's authentication and DPoP proof through oauth4webapi's authenticated POST.
   */
  async cancel(process: DeferredProcess): Promise<void> {
    let endpoint: string | undefined
    const form = new URLSearchParams()
    if (this.profile === 'ietf') {
      endpoint = this.as.revocation_endpoint
      if (!endpoint) throw new DtrError('the OP publishes no revocation_endpoint', 'unsupported')
      form.set('token', process.deferredAuthId)
      const hints = this.as.revocation_endpoint_token_type_values_supported
      if (Array.isArray(hints) && hints.includes(DEFERRAL_CODE_TOKEN_TYPE)) form.set('token_type_hint', DEFERRAL_CODE_TOKEN_TYPE)
    } else {
      endpoint = this.cancellationEndpoint
      if (!endpoint) throw new DtrError(`the OP publishes no ${CANCELLATION_ENDPOINT}`, 'unsupported')
      form.set('deferred_auth_id', process.deferredAuthId)
    }
    // oauth4webapi's pushed-authorization call is its generic "authenticated form POST with
    // DPoP to an endpoint from metadata" (its revocation call takes no DPoP proof): pointed at
    // the cancellation or revocation endpoint it sends client_id, the form, the client
    // authentication and a proof for that URL.
    const target: oauth.AuthorizationServer = { ...this.as, pushed_authorization_request_endpoint: endpoint }
    const dpop = this.#dpopHandle(process.dpopKeyPair)
    await this.#withDpopRetry(dpop, async () => {
      const response = await oauth.pushedAuthorizationRequest(target, this.client, this.#auth, form, {
        ...this.#options,
        DPoP: dpop,
      })
      // 200 with an empty or JSON body; an OAuth error answer throws.
      return oauth.processRevocationResponse(response)
    })
  }
}

// ---------------------------------------------------------------------------------------------
// Pings

export type PingCheck =
  | { ok: true; deferredAuthId: string }
  | { ok: false; status: 400 | 401 | 405 | 415; error: string }

/**
 * Checks a ping: POST, JSON `{"deferred_auth_id": …}` (OpenID) or `{"deferral_code": …}` (the
 * IETF callback, `profile: 'ietf'`), and `Authorization: Bearer <token>` equal (constant time)
 * to the notification token (`deferred_notification_token`, `client_notification_token`) the
 * RP bound to that id. `tokenFor` looks that token up (both drafts: bind the token to the id
 * against mix-up). `deferredAuthId` in the answer is the id of either profile.
 */
export async function verifyPing(
  request: { method: string; headers: Headers | Record<string, string | string[] | undefined>; body: string },
  tokenFor: (deferredAuthId: string) => string | undefined | Promise<string | undefined>,
  options: { profile?: Profile } = {},
): Promise<PingCheck> {
  const name = namesOf(options.profile).processParam
  const header = (name: string): string | undefined => {
    const h = request.headers
    if (h instanceof Headers) return h.get(name) ?? undefined
    const v = h[name] ?? h[name.toLowerCase()]
    return Array.isArray(v) ? v[0] : v
  }
  if (request.method.toUpperCase() !== 'POST') return { ok: false, status: 405, error: 'method not allowed' }
  const type = header('content-type') ?? ''
  if (!type.toLowerCase().startsWith('application/json')) return { ok: false, status: 415, error: 'not JSON' }
  let body: unknown
  try {
    body = JSON.parse(request.body)
  } catch {
    return { ok: false, status: 400, error: 'invalid JSON' }
  }
  const id = (body as Record<string, unknown> | null)?.[name]
  if (typeof id !== 'string' || id === '') return { ok: false, status: 400, error: `no ${name}` }
  const auth = header('authorization') ?? ''
  const match = /^Bearer ([^\s]+)$/i.exec(auth.trim())
  const expected = await tokenFor(id)
  if (!match || expected === undefined || !safeEqual(match[1] as string, expected)) {
    return { ok: false, status: 401, error: 'invalid notification token' }
  }
  return { ok: true, deferredAuthId: id }
}

/**
 * A `node:http` request handler for the notification endpoint: answers 204 to a valid ping and
 * calls `onPing` (poll then), 401/400/405/415 otherwise. Bodies over 16 KiB are refused.
 * `profile: 'ietf'` reads the IETF callback (`deferral_code`).
 */
export function pingHandler(
  tokenFor: (deferredAuthId: string) => string | undefined | Promise<string | undefined>,
  onPing: (deferredAuthId: string) => void,
  options: { profile?: Profile } = {},
): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    const chunks: Buffer[] = []
    let size = 0
    req.on('data', (chunk: Buffer) => {
      size += chunk.length
      if (size > 16 * 1024) {
        res.writeHead(413).end()
        req.destroy()
      } else chunks.push(chunk)
    })
    req.on('end', () => {
      if (res.headersSent) return
      verifyPing(
        { method: req.method ?? '', headers: req.headers, body: Buffer.concat(chunks).toString('utf8') },
        tokenFor,
        options,
      ).then(
        (check) => {
          if (check.ok) {
            res.writeHead(204).end()
            onPing(check.deferredAuthId)
          } else {
            res.writeHead(check.status, check.status === 401 ? { 'www-authenticate': 'Bearer' } : {}).end()
          }
        },
        () => res.writeHead(500).end(),
      )
    })
  }
}

/** Decodes a JWT's claims without any check (for display and logs only). */
export function unverifiedClaims(jwt: string): Record<string, unknown> {
  return decodeJws(jwt).claims
}

const INTERACTION_JOIN = '; interaction_uri='

/** The OpenID profile's `<progress>; interaction_uri=<https URL>` at the end of a pending description. */
export function interactionInDescription(description: string): { interactionUri: string; description?: string } | undefined {
  const at = description.lastIndexOf(INTERACTION_JOIN)
  if (at < 0) return undefined
  const interactionUri = description.slice(at + INTERACTION_JOIN.length)
  if (!isHttps(interactionUri) || /\s/.test(interactionUri)) return undefined
  const progress = description.slice(0, at)
  return { interactionUri, ...(progress ? { description: progress } : {}) }
}

function isHttps(uri: string): boolean {
  return uri.length > 'https://'.length && uri.slice(0, 8).toLowerCase() === 'https://'
}
