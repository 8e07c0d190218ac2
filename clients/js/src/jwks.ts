// Signatures of the interim ID token, checked against the OP's published keys (jwks_uri) with
// WebCrypto. The final ID token comes in a token response, whose signature oauth4webapi checks
// (validateApplicationLevelSignature); the interim one comes in the exchange answer, which no
// oauth4webapi processor reads, and is kept for as long as the process runs.

import type { AuthorizationServer, JWK } from 'oauth4webapi'

type Algorithm = RsaHashedImportParams | EcKeyImportParams | { name: string }

function importParams(alg: string): { params: Algorithm; verify: AlgorithmIdentifier | EcdsaParams | RsaPssParams; kty: string } {
  switch (alg) {
    case 'RS256':
    case 'RS384':
    case 'RS512': {
      const hash = `SHA-${alg.slice(2)}`
      return { params: { name: 'RSASSA-PKCS1-v1_5', hash }, verify: { name: 'RSASSA-PKCS1-v1_5' }, kty: 'RSA' }
    }
    case 'PS256':
    case 'PS384':
    case 'PS512': {
      const bits = Number(alg.slice(2))
      return { params: { name: 'RSA-PSS', hash: `SHA-${bits}` }, verify: { name: 'RSA-PSS', saltLength: bits / 8 }, kty: 'RSA' }
    }
    case 'ES256':
    case 'ES384':
    case 'ES512': {
      const bits = alg.slice(2)
      const namedCurve = bits === '512' ? 'P-521' : `P-${bits}`
      return { params: { name: 'ECDSA', namedCurve }, verify: { name: 'ECDSA', hash: `SHA-${bits}` }, kty: 'EC' }
    }
    case 'EdDSA':
    case 'Ed25519':
      return { params: { name: 'Ed25519' }, verify: { name: 'Ed25519' }, kty: 'OKP' }
    default:
      throw new Error(`unsupported JWS algorithm ${alg}`)
  }
}

function b64u(part: string): Uint8Array<ArrayBuffer> {
  return new Uint8Array(Buffer.from(part, 'base64url'))
}

export interface JwsParts {
  header: Record<string, unknown>
  claims: Record<string, unknown>
}

/** Splits a compact JWS and decodes its header and payload (no check). */
export function decodeJws(jws: string): JwsParts & { signingInput: Uint8Array<ArrayBuffer>; signature: Uint8Array<ArrayBuffer> } {
  const parts = jws.split('.')
  if (parts.length !== 3) throw new Error('not a compact JWS')
  const [h, p, s] = parts as [string, string, string]
  const header = JSON.parse(Buffer.from(h, 'base64url').toString('utf8'))
  const claims = JSON.parse(Buffer.from(p, 'base64url').toString('utf8'))
  if (typeof header !== 'object' || header === null || typeof claims !== 'object' || claims === null) {
    throw new Error('JWS header and payload must be JSON objects')
  }
  return { header, claims, signingInput: new Uint8Array(Buffer.from(`${h}.${p}`, 'ascii')), signature: b64u(s) }
}

/** The OP's key set, fetched once and refetched (at most every 30 s) for an unknown `kid`. */
export class KeySet {
  #keys: JWK[] | undefined
  #fetchedAt = 0
  readonly #uri: URL
  readonly #fetch: typeof fetch

  constructor(as: AuthorizationServer, fetchImpl: typeof fetch = (input, init) => fetch(input, init)) {
    if (typeof as.jwks_uri !== 'string') throw new Error('the OP publishes no jwks_uri')
    this.#uri = new URL(as.jwks_uri)
    this.#fetch = fetchImpl
  }

  async #load(): Promise<JWK[]> {
    const response = await this.#fetch(this.#uri, { headers: { accept: 'application/json' }, redirect: 'manual' })
    if (response.status !== 200) throw new Error(`jwks_uri answered ${response.status}`)
    const body = (await response.json()) as { keys?: unknown }
    if (!Array.isArray(body.keys)) throw new Error('jwks_uri did not answer a JWK Set')
    this.#keys = body.keys as JWK[]
    this.#fetchedAt = Date.now()
    return this.#keys
  }

  async #candidates(kid: unknown, kty: string, alg: string): Promise<JWK[]> {
    const pick = (keys: JWK[]) =>
      keys.filter(
        (k) =>
          k.kty === kty &&
          (kid === undefined || k.kid === kid) &&
          (k.alg === undefined || k.alg === alg) &&
          (k.use === undefined || k.use === 'sig'),
      )
    let found = pick(this.#keys ?? (await this.#load()))
    if (found.length === 0 && Date.now() - this.#fetchedAt > 30_000) found = pick(await this.#load())
    return found
  }

  /** Verifies a compact JWS by the OP's keys; returns its decoded header and claims. */
  async verify(jws: string, allowedAlgs?: readonly string[]): Promise<JwsParts> {
    const { header, claims, signingInput, signature } = decodeJws(jws)
    const alg = header.alg
    if (typeof alg !== 'string' || alg === 'none') throw new Error('JWS without a usable alg')
    if (allowedAlgs && !allowedAlgs.includes(alg)) throw new Error(`JWS alg ${alg} not allowed`)
    const { params, verify, kty } = importParams(alg)
    const keys = await this.#candidates(header.kid, kty, alg)
    if (keys.length === 0) throw new Error(`no key of the OP matches kid ${String(header.kid)} (${alg})`)
    for (const jwk of keys) {
      const { d: _d, ...pub } = jwk as JWK & { d?: string }
      let key: CryptoKey
      try {
        key = await crypto.subtle.importKey('jwk', pub as JsonWebKey, params, false, ['verify'])
      } catch {
        continue
      }
      if (await crypto.subtle.verify(verify, key, signature, signingInput)) return { header, claims }
    }
    throw new Error('the JWS signature does not verify with the OP\'s keys')
  }
}
