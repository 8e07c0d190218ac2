// Verifying dtr-proxy's lifecycle events (`deferred.started`, `.cancelled`, `.expired`,
// `.delivered`) on the verification service's side. They are signed per Standard Webhooks:
// `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`, a space-separated
// list of `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` under the secret configured as
// `DTR_EVENTS_SECRET` (`whsec_<base64>`).

import { createHmac, timingSafeEqual } from 'node:crypto'

/** Standard Webhooks' recommended tolerance between the sender's clock and ours. */
export const DEFAULT_EVENT_TOLERANCE_SECONDS = 300

export type EventErrorCode = 'missing_header' | 'bad_timestamp' | 'stale' | 'bad_signature' | 'bad_body'

/** Why an event was refused: answer 400 or 401 (the proxy retries only 408, 429 and 5xx). */
export class EventVerificationError extends Error {
  constructor(
    message: string,
    readonly code: EventErrorCode,
  ) {
    super(message)
    this.name = 'EventVerificationError'
  }
}

export interface LifecycleEvent {
  /** `webhook-id`: the same for every delivery attempt of one event (deduplicate on it). */
  id: string
  /** `deferred.started`, `deferred.cancelled`, `deferred.expired` or `deferred.delivered`. */
  type: string
  /** When the event happened (Unix seconds). */
  timestamp: number
  /**
   * `process_id`, `client_id`, `realm`, `sub`, `sid`, `expires_at`; for `started` also the
   * requested `acr_values` and `claims`.
   */
  data: Record<string, unknown> & { process_id?: string }
}

export interface EventVerifierOptions {
  /** Seconds of accepted clock difference (default 300). */
  toleranceSeconds?: number
}

type HeaderSource = Headers | Record<string, string | string[] | undefined>

function headerOf(headers: HeaderSource, name: string): string | undefined {
  if (headers instanceof Headers) return headers.get(name) ?? undefined
  const value = headers[name] ?? headers[name.toLowerCase()]
  return Array.isArray(value) ? value[0] : value
}

/** Checks signed lifecycle events with one secret (several verifiers for a rotation). */
export class EventVerifier {
  readonly #key: Buffer
  readonly #tolerance: number

  /** `secret`: `whsec_<base64>` (the prefix is optional). */
  constructor(secret: string, options: EventVerifierOptions = {}) {
    const encoded = secret.trim().replace(/^whsec_/, '')
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(encoded)) throw new TypeError('an events secret is whsec_<base64>')
    this.#key = Buffer.from(encoded, 'base64')
    if (this.#key.length === 0) throw new TypeError('an empty events secret')
    this.#tolerance = options.toleranceSeconds ?? DEFAULT_EVENT_TOLERANCE_SECONDS
  }

  /**
   * Verifies one delivery: `headers` as received (a `Headers` or node's `req.headers`), `body`
   * the raw bytes or text exactly as received (not re-serialised JSON). Throws
   * `EventVerificationError`; `now` in Unix seconds.
   */
  verify(headers: HeaderSource, body: string | Uint8Array, now = Math.floor(Date.now() / 1000)): LifecycleEvent {
    const header = (name: string): string => {
      const value = headerOf(headers, name)
      if (!value) throw new EventVerificationError(`missing ${name} header`, 'missing_header')
      return value
    }
    const id = header('webhook-id')
    const timestampText = header('webhook-timestamp')
    // Only the canonical decimal form: the signature covers the text as the sender wrote it.
    if (!/^(0|[1-9][0-9]{0,15})$/.test(timestampText)) {
      throw new EventVerificationError('webhook-timestamp is not a Unix time in seconds', 'bad_timestamp')
    }
    const signatures = header('webhook-signature')
    if (Math.abs(Number(timestampText) - now) > this.#tolerance) {
      throw new EventVerificationError('webhook-timestamp is outside the tolerance', 'stale')
    }
    const bytes = typeof body === 'string' ? Buffer.from(body, 'utf8') : Buffer.from(body)
    const expected = createHmac('sha256', this.#key).update(`${id}.${timestampText}.`).update(bytes).digest()
    // Several signatures may be listed (the sender rotating its secret); other versions than
    // v1 are skipped.
    const valid = signatures
      .split(' ')
      .filter((s) => s.startsWith('v1,'))
      .map((s) => Buffer.from(s.slice(3), 'base64'))
      .some((tag) => tag.length === expected.length && timingSafeEqual(tag, expected))
    if (!valid) throw new EventVerificationError('no valid v1 signature', 'bad_signature')
    let event: unknown
    try {
      event = JSON.parse(bytes.toString('utf8'))
    } catch {
      throw new EventVerificationError('the signed body is not JSON', 'bad_body')
    }
    const { type, timestamp, data } = (event ?? {}) as Partial<LifecycleEvent>
    if (typeof type !== 'string' || typeof timestamp !== 'number' || typeof data !== 'object' || data === null) {
      throw new EventVerificationError('the signed body is not an event', 'bad_body')
    }
    return { id, type, timestamp, data }
  }
}
