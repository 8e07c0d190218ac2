//! Polling (step 6): the RP asks with its `deferred_auth_id` whether the tokens are ready. A
//! pending poll costs one store round trip and no OP call; the first poll after approval
//! obtains the final tokens from the OP, fresh, and spends the id.
//!
//! [`decide`] is the endpoint's decision on plain data (the record, the last poll, the clock);
//! [`Poll::handle`] loads, checks, decides and applies.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::HeaderMap;
use http::{Response, StatusCode};

use super::back_channel::{forwarded_headers, id_token_claims, is_request_error, relay, reply_error};
use super::checks::{owner_check, Checks};
use super::events::{Event, Events};
use super::revoke::Revoker;
use crate::client_auth::{ClientCredentials, AUTH_PARAMS};
use crate::clock::now_ms;
use crate::http::Body;
use crate::metrics::Metrics;
use crate::protocol::errors::{ascii_description, OAuthError, MAX_DESCRIPTION};
use crate::protocol::params::{encode, Params};
use crate::protocol::routes::Endpoint;
use crate::protocol::wire::{error as code, Profile};
use crate::records::{AuthMethod, Change, HeldSecrets, ProcessRecord, Records, Status, StoredProcess};
use crate::store::StoreError;
use crate::tls::ClientCertificate;
use crate::upstream::{OpClient, UpstreamError};

/// `slow_down` adds this much to the interval (RFC 8628 §3.5, the draft: "at least 5 seconds").
pub const SLOW_DOWN_STEP: u64 = 5;
/// Consecutive too-fast polls after which the id is revoked (`invalid_request`).
pub const MAX_STRIKES: u32 = 10;
/// A too-fast poll within this long of the last strike is answered `slow_down` without
/// counting as another: a burst of concurrent polls is one strike on either store, and fast
/// polling sustained for [`MAX_STRIKES`] seconds still revokes the id.
pub const STRIKE_WINDOW_MS: u64 = 1000;
/// A delivery claimed this long ago by a replica that never finished is up for grabs again.
pub const STALE_DELIVERY_MS: u64 = 60_000;

/// What a poll by the process's owner gets once it passed [`owner_check`] (client, lifetime,
/// DPoP): the draft's step 6 (the process completed, not cancelled) with the polling rate
/// before it, and step 7 (no tokens issued yet) last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollDecision {
    /// Revoked for polling too fast: `invalid_request`.
    Revoked,
    /// Too soon after the last poll: `slow_down`, the interval grows.
    SlowDown,
    /// Verification still running: `authorization_pending`.
    Pending,
    /// Verification still running, waiting for the end-user to act at the process's
    /// `interaction_uri`: `interaction_required` (IETF §6.6), or `authorization_pending`
    /// naming the URL (OpenID profile); see [`interaction_answer`].
    Interaction,
    /// Another poll is obtaining the tokens right now: `authorization_pending`.
    InFlight,
    /// The verification failed: `access_denied`.
    Denied,
    /// The RP cancelled: `access_denied`.
    Cancelled,
    /// The held grant was lost to an OP failure: `invalid_grant`, start over.
    Failed,
    /// The tokens were delivered; the id is spent: `invalid_grant`.
    Spent,
    /// Approved (or a delivery abandoned by a dead replica): obtain the final tokens.
    Release,
}

/// The poll's decision for an owner whose request passed [`owner_check`].
pub fn decide(record: &ProcessRecord, last_poll: Option<u64>, now: u64) -> PollDecision {
    if record.status == Status::Revoked {
        return PollDecision::Revoked;
    }
    let interval_ms = record.interval * 1000;
    // Requests spaced exactly `interval` apart arrive with jitter; allow a little.
    let slack = (interval_ms / 5).min(1000);
    if last_poll.is_some_and(|last| now.saturating_sub(last) + slack < interval_ms) {
        return PollDecision::SlowDown;
    }
    match record.status {
        Status::Pending if record.interaction.is_some() => PollDecision::Interaction,
        Status::Pending => PollDecision::Pending,
        Status::Delivering if !is_stale_delivery(record, now) => PollDecision::InFlight,
        Status::Denied => PollDecision::Denied,
        Status::Cancelled => PollDecision::Cancelled,
        Status::Failed => PollDecision::Failed,
        Status::Delivered => PollDecision::Spent,
        Status::Approved | Status::Delivering => PollDecision::Release,
        Status::Revoked => PollDecision::Revoked,
    }
}

/// Whether a delivery may be claimed now: approved, or claimed by a replica that never
/// finished, and within the lifetime.
fn claimable(record: &ProcessRecord, now: u64) -> bool {
    let open =
        record.status == Status::Approved || (record.status == Status::Delivering && is_stale_delivery(record, now));
    open && now < record.expires_at
}

fn is_stale_delivery(record: &ProcessRecord, now: u64) -> bool {
    record
        .delivering_since
        .is_some_and(|t| now.saturating_sub(t) > STALE_DELIVERY_MS)
}

const LOST_GRANT: &str = "The OpenID Provider lost the held grant after a failed call; start a new authentication.";

fn expired() -> OAuthError {
    OAuthError::new(
        StatusCode::BAD_REQUEST,
        code::EXPIRED_TOKEN,
        "The deferred_auth_id has expired; start a new authentication.",
    )
}

fn revoked() -> OAuthError {
    OAuthError::invalid_request("This deferred_auth_id was revoked for polling too fast.")
}

/// `slow_down`, naming the interval to keep.
fn too_fast(interval: u64) -> OAuthError {
    OAuthError::new(
        StatusCode::BAD_REQUEST,
        code::SLOW_DOWN,
        format!("Polling too fast; wait at least {interval} seconds between requests."),
    )
}

/// The answer for a decision that hands out no tokens.
pub fn refusal(decision: PollDecision, record: &ProcessRecord) -> OAuthError {
    match decision {
        PollDecision::Revoked => revoked(),
        PollDecision::Spent | PollDecision::Release => OAuthError::unknown_deferred_auth_id(),
        PollDecision::SlowDown => too_fast(record.interval),
        // Without its URL (it could not be opened): plain pending.
        PollDecision::Pending | PollDecision::Interaction => OAuthError::new(
            StatusCode::BAD_REQUEST,
            code::AUTHORIZATION_PENDING,
            record.description.clone().map_or(
                Cow::Borrowed("The identity verification is still in progress."),
                Cow::Owned,
            ),
        ),
        PollDecision::InFlight => OAuthError::new(
            StatusCode::BAD_REQUEST,
            code::AUTHORIZATION_PENDING,
            "The tokens are being issued to a concurrent request for this deferred_auth_id.",
        ),
        PollDecision::Denied => OAuthError::new(
            StatusCode::BAD_REQUEST,
            code::ACCESS_DENIED,
            record
                .description
                .clone()
                .unwrap_or_else(|| "The identity could not be verified.".into()),
        ),
        PollDecision::Cancelled => OAuthError::new(
            StatusCode::BAD_REQUEST,
            code::ACCESS_DENIED,
            "The authentication process was cancelled.",
        ),
        PollDecision::Failed => OAuthError::invalid_grant(LOST_GRANT),
    }
}

/// What a pending process that waits for the end-user at `interaction_uri` answers, with the
/// verification service's progress text:
/// - IETF profile: `400 interaction_required` with `interaction_uri` (IETF §6.4, §6.6); like
///   every poll answer it repeats neither `deferral_code` nor `interval`.
/// - OpenID profile: `400 authorization_pending` (OID §10 has no other pending error), the URL
///   in `error_description` after the progress text, as `; interaction_uri=<url>`: OID §14.4
///   puts the process's progress there for the RP to pass on to the end-user, and §10 lists
///   no other member of the answer.
pub fn interaction_answer(interaction_uri: &str, progress: Option<&str>, profile: Profile) -> OAuthError {
    match profile {
        Profile::Ietf => OAuthError::interaction_required(
            interaction_uri,
            progress.map_or(Cow::Borrowed(WAITS_FOR_INTERACTION), |p| Cow::Owned(p.to_owned())),
        ),
        Profile::OpenId => {
            const JOIN: &str = "; interaction_uri=";
            let progress = ascii_description(progress.unwrap_or(WAITS_FOR_INTERACTION));
            let room = MAX_DESCRIPTION.saturating_sub(JOIN.len() + interaction_uri.len());
            let progress = progress.get(..room.min(progress.len())).unwrap_or_default();
            OAuthError::new(
                StatusCode::BAD_REQUEST,
                code::AUTHORIZATION_PENDING,
                format!("{progress}{JOIN}{interaction_uri}"),
            )
        }
    }
}

const WAITS_FOR_INTERACTION: &str = "The identity verification waits for the end-user at interaction_uri.";

/// Whether a too-fast poll at `now` counts as a strike: not within [`STRIKE_WINDOW_MS`] of
/// the last one (a clock behind that strike's is within it).
pub fn counts_as_strike(record: &ProcessRecord, now: u64) -> bool {
    record
        .last_strike
        .is_none_or(|last| now.saturating_sub(last) >= STRIKE_WINDOW_MS)
}

/// A `slow_down` strike on the record, if it [`counts_as_strike`]: the interval grows, or after
/// [`MAX_STRIKES`] in a row the id is revoked. Whether it counted.
pub fn strike(record: &mut ProcessRecord, now: u64) -> bool {
    if !counts_as_strike(record, now) {
        return false;
    }
    record.strikes += 1;
    record.last_strike = Some(now);
    if record.strikes >= MAX_STRIKES && record.status.is_open() {
        record.status = Status::Revoked;
        record.completed_at = Some(now);
    } else {
        record.interval += SLOW_DOWN_STEP;
    }
    true
}

/// What the OP's answer to the final refresh means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// The OP failed: give the claim back, let a later poll retry.
    OpFailed(StatusCode),
    /// The request was refused for the client's credentials or proof: the grant is intact.
    RequestRefused,
    /// The OP no longer honours the held grant (revoked, expired, user disabled).
    GrantRefused,
    Tokens,
}

pub fn refresh_outcome(status: StatusCode, error: Option<&str>) -> Refresh {
    if status.is_server_error() {
        Refresh::OpFailed(status)
    } else if status.is_success() {
        Refresh::Tokens
    } else if is_request_error(error) {
        Refresh::RequestRefused
    } else {
        Refresh::GrantRefused
    }
}

/// Whether the OP's final answer carries an ID token without the authentication request's
/// nonce.
fn lacks_nonce(record: &ProcessRecord, reply: &crate::upstream::BufferedReply) -> bool {
    let Some(expected) = &record.nonce else {
        return false;
    };
    let tokens = reply.json();
    match tokens.as_ref().and_then(|t| t.get("id_token")?.as_str()) {
        Some(id_token) => id_token_claims(Some(id_token)).nonce.as_deref() != Some(expected),
        None => false,
    }
}

pub struct Poll {
    pub checks: Checks,
    pub records: Records,
    pub op: Arc<dyn OpClient>,
    pub metrics: Metrics,
    pub revoker: Arc<Revoker>,
    pub events: Events,
    /// The poll interval of a client that names none.
    pub default_interval: u64,
}

impl Poll {
    #[allow(clippy::too_many_arguments)]
    pub async fn handle(
        &self,
        realm: &str,
        headers: &HeaderMap,
        params: &Params,
        deferred_auth_id: &str,
        profile: Profile,
        peer: IpAddr,
        certificate: Option<&ClientCertificate>,
    ) -> Result<Response<Body>, OAuthError> {
        // A poll answered 503 or 502 may still have moved the poll clock (the store stamped it
        // and then failed, or the OP failed after it), so its `Retry-After` is never shorter
        // than the interval: an RP that waits as told is not answered `slow_down` for it.
        let mut interval = 0;
        self.answer(
            realm,
            headers,
            params,
            deferred_auth_id,
            profile,
            peer,
            certificate,
            &mut interval,
        )
        .await
        .map_err(|e| e.retry_no_sooner_than(interval).named_for(profile))
    }

    #[allow(clippy::too_many_arguments)]
    async fn answer(
        &self,
        realm: &str,
        headers: &HeaderMap,
        params: &Params,
        deferred_auth_id: &str,
        profile: Profile,
        peer: IpAddr,
        certificate: Option<&ClientCertificate>,
        interval: &mut u64,
    ) -> Result<Response<Body>, OAuthError> {
        let certificate = certificate.map(|c| c.thumbprint.as_str());
        let now = now_ms();
        let credentials = ClientCredentials::extract(headers, params)?;
        let client = &*self.checks.client_speaking(realm, &credentials, profile)?;
        *interval = client.poll_interval(self.default_interval);
        let process_hash = self.records.process_hash(deferred_auth_id);
        // A poll with a secret and no DPoP in play presents its fingerprint, so the read can
        // stamp the poll clock when the secret is the one bound to the process: one store
        // command. With a proof (or DPoP required) the clock waits until the proof is checked.
        // A process bound to a client certificate is stamped on read only for a poll with it.
        let dpop_in_play =
            headers.contains_key(&crate::protocol::wire::DPOP) || self.checks.clients.requires_dpop(client);
        let fingerprint = match credentials.method {
            AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost if !dpop_in_play => {
                self.checks.verifier.fingerprint(&credentials)
            }
            _ => None,
        };
        let polled = self
            .records
            .load_for_poll(&process_hash, fingerprint, certificate, now)
            .await?;
        let (last_poll, stamped) = (polled.last_poll, polled.stamped);
        let mut process = polled.process.ok_or_else(OAuthError::unknown_deferred_auth_id)?;
        let record = &process.record;
        let facts = self
            .checks
            .owner_facts(
                realm,
                client,
                &credentials,
                record,
                headers,
                certificate,
                Endpoint::Token,
                profile,
                now,
                true,
            )
            .await;
        owner_check(record, facts)?;
        // The process's own, perhaps grown by `slow_down`: told to its owner only.
        *interval = record.interval;
        // Only the authenticated owner moves the poll clock.
        if !stamped {
            self.records.stamp_poll(&mut process, now).await;
        }
        let record = &process.record;
        let decision = decide(record, last_poll, now);
        if decision == PollDecision::SlowDown {
            // Boxed, as are the other rare turns below: a pending poll's future stays small.
            return Err(Box::pin(self.slow_down(process, now)).await?);
        }
        if record.strikes > 0 {
            let reset = Box::pin(self.records.modify(&process.process_hash, None, |r| {
                r.strikes = 0;
                Change::Write(())
            }))
            .await;
            match reset {
                // Concurrent polls of the same id changed the record first: the next poll
                // that keeps the interval resets the strikes.
                Ok(_) | Err(StoreError::Contended(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match decision {
            // Once per process against many pending polls, and the largest future here (the
            // OP's refresh): boxed, so a pending poll's future stays small.
            PollDecision::Release => Box::pin(self.release(realm, headers, params, process, peer, now)).await,
            PollDecision::Denied if !record.sealed.is_empty() => {
                let error = refusal(decision, record);
                Box::pin(self.give_back(realm, headers, params, process, peer)).await;
                Err(error)
            }
            // IETF §6.6: the client the code was issued to learns it was redeemed (the
            // OpenID profile keeps one answer for spent and unknown ids).
            PollDecision::Spent if profile == Profile::Ietf => Err(OAuthError::redeemed_deferral_code()),
            // The URL is in the record just read: still one store round trip.
            PollDecision::Interaction => Err(match self.records.open_interaction(&process) {
                Ok(Some(uri)) => interaction_answer(&uri, record.description.as_deref(), profile),
                Ok(None) => refusal(PollDecision::Pending, record),
                Err(e) => {
                    tracing::warn!(process_id = %record.process_id, error = %e, "cannot open the interaction_uri (key rotated away?); answering without it");
                    refusal(PollDecision::Pending, record)
                }
            }),
            decision => Err(refusal(decision, record)),
        }
    }

    async fn slow_down(&self, process: StoredProcess, now: u64) -> Result<OAuthError, OAuthError> {
        // Within a second of the last strike: told so, with nothing to write.
        if !counts_as_strike(&process.record, now) {
            return Ok(refusal(PollDecision::SlowDown, &process.record));
        }
        // A burst of concurrent polls of one id all read the record before any strike lands.
        // One lands; the others find the record changed, read it again and see that strike
        // (against Redis each write is a compare-and-set a round trip after its read). Should
        // the record keep changing under other writers, the poll is still too fast, and told
        // so with the interval as read.
        let interval_as_read = process.record.interval;
        let outcome = match self
            .records
            .modify(&process.process_hash.clone(), Some(process), |r| {
                if strike(r, now) {
                    Change::Write(())
                } else {
                    Change::Keep(())
                }
            })
            .await
        {
            Ok(outcome) => outcome,
            Err(StoreError::Contended(_)) => return Ok(too_fast(interval_as_read)),
            Err(e) => return Err(e.into()),
        };
        Ok(match outcome {
            Some((_, record)) if record.status == Status::Revoked => {
                tracing::warn!(process_id = %record.process_id, client_id = %record.client_id, "deferred_auth_id revoked after sustained fast polling");
                revoked()
            }
            Some((_, record)) => refusal(PollDecision::SlowDown, &record),
            None => OAuthError::unknown_deferred_auth_id(),
        })
    }

    /// Obtains the final tokens for an approved process. Exactly one concurrent poll wins the
    /// claim; the OP is asked by refresh at this moment, so the tokens are fresh and carry the
    /// claims of the finished verification.
    async fn release(
        &self,
        realm: &str,
        headers: &HeaderMap,
        params: &Params,
        process: StoredProcess,
        peer: IpAddr,
        now: u64,
    ) -> Result<Response<Body>, OAuthError> {
        let process_hash = process.process_hash.clone();
        let claimed = self
            .records
            .modify(&process_hash, Some(process), |r| {
                if claimable(r, now) {
                    r.status = Status::Delivering;
                    r.delivering_since = Some(now);
                    Change::Write(true)
                } else {
                    Change::Keep(false)
                }
            })
            .await?;
        let record = match claimed {
            Some((true, record)) => record,
            Some((false, record)) if now >= record.expires_at => return Err(expired()),
            Some((false, record)) => return Err(refusal(decide(&record, None, now), &record)),
            None => return Err(OAuthError::unknown_deferred_auth_id()),
        };
        let secrets = match self
            .records
            .open(&StoredProcess::detached(&process_hash, record.clone()))
        {
            Ok(secrets) => secrets,
            Err(e) => {
                tracing::error!(process_id = %record.process_id, error = %e, "cannot open held tokens (key rotated away?)");
                self.unclaim(&process_hash, false).await;
                return Err(OAuthError::internal("The held grant cannot be read.").caused_by(e));
            }
        };

        let auth = params.iter().filter(|(name, _)| AUTH_PARAMS.contains(name));
        let form = encode(
            [
                ("grant_type", "refresh_token"),
                ("refresh_token", secrets.refresh_token.as_str()),
            ]
            .into_iter()
            .chain(auth),
        );
        let token_path = self.checks.urls.routes().path(Endpoint::Token, realm);
        let reply = match self
            .op
            .post_form(&token_path, form, &forwarded_headers(headers), peer, "refresh")
            .await
        {
            Ok(reply) => reply,
            Err(e) => {
                // The OP may have acted on a call whose answer is lost; the next attempt knows.
                self.unclaim(&process_hash, e.may_have_reached_op()).await;
                return Err(OAuthError::upstream(e));
            }
        };
        let error = reply_error(&reply);
        match refresh_outcome(reply.status, error.as_deref()) {
            Refresh::OpFailed(status) => {
                self.unclaim(&process_hash, true).await;
                Err(OAuthError::upstream(UpstreamError::Status(status)))
            }
            Refresh::RequestRefused => {
                // The client's fault (credentials, DPoP): the grant is intact, let it retry.
                self.unclaim(&process_hash, false).await;
                Ok(relay(&reply))
            }
            Refresh::GrantRefused if record.release_in_doubt => {
                // Not a verdict on the user: an earlier attempt may have rotated the grant
                // (Keycloak with "Revoke Refresh Token"), and its answer was lost.
                self.finish(&process_hash, Status::Failed, None).await?;
                tracing::error!(process_id = %record.process_id, error = error.as_deref().unwrap_or(""), "OP refused the held grant after a lost answer; the process failed");
                Err(OAuthError::invalid_grant(LOST_GRANT))
            }
            Refresh::GrantRefused => {
                let description = "The OpenID Provider no longer honours this authentication; start a new one.";
                let finished = self.finish(&process_hash, Status::Denied, Some(description)).await?;
                tracing::warn!(process_id = %record.process_id, error = error.as_deref().unwrap_or(""), "OP refused the held grant");
                if let Some(record) = finished {
                    self.events.emit(Event::Denied, &record).await;
                }
                Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    code::ACCESS_DENIED,
                    description,
                ))
            }
            Refresh::Tokens if lacks_nonce(&record, &reply) => {
                // Never hand out a final ID token without the RP's nonce: an RP that follows
                // OIDC Core rejects it. Keycloak ≥ 25 drops it on refresh unless the client
                // has the "Nonce backwards compatible" mapper. Keep the (possibly rotated)
                // grant so that a poll after the fix succeeds.
                tracing::error!(process_id = %record.process_id, client_id = %record.client_id, "final ID token lacks the requested nonce; enable Keycloak's \"Nonce backwards compatible\" mapper (oidc-nonce-backwards-compatible-mapper) for this client");
                let rotated = reply
                    .json()
                    .and_then(|t| t.get("refresh_token")?.as_str().map(str::to_owned));
                if let Some(refresh_token) = rotated {
                    let sealed = self.records.seal(
                        &HeldSecrets {
                            refresh_token,
                            ..secrets
                        },
                        &process_hash,
                    );
                    let kept = self
                        .records
                        .modify(&process_hash, None, |r| {
                            r.sealed = sealed.clone();
                            Change::Write(())
                        })
                        .await;
                    if let Err(e) = kept {
                        tracing::warn!(error = %e, "could not keep the rotated refresh token");
                    }
                }
                self.unclaim(&process_hash, false).await;
                Err(OAuthError::new(
                    StatusCode::BAD_GATEWAY,
                    code::SERVER_ERROR,
                    "The OpenID Provider's final ID token lacks the authentication request's nonce; the tokens are held until its configuration is fixed. Retry later.",
                ))
            }
            Refresh::Tokens => {
                let delivered = self
                    .records
                    .modify(&process_hash, None, |r| {
                        r.status = Status::Delivered;
                        r.completed_at = Some(now_ms());
                        r.delivering_since = None;
                        r.sealed.clear();
                        Change::Write(())
                    })
                    .await;
                match delivered {
                    Ok(Some((_, record))) => self.events.emit(Event::Delivered, &record).await,
                    Ok(None) => {}
                    // The tokens are issued and the OP has rotated the refresh token: hand them
                    // over even if we cannot note it; a retry would fail at the OP anyway.
                    Err(e) => tracing::warn!(error = %e, "could not mark the process delivered"),
                }
                let _ = self.records.retire(&process_hash).await;
                let _ = self.records.unschedule_ping(&process_hash).await;
                Ok(relay(&reply))
            }
        }
    }

    /// A denied process still holds its grant: the RP's poll is at hand to give it back with
    /// the RP's own authentication. Not waited for; the grant is dropped from the record.
    async fn give_back(&self, realm: &str, headers: &HeaderMap, params: &Params, process: StoredProcess, peer: IpAddr) {
        let Ok(held) = self.records.open(&process) else {
            return;
        };
        let dropped = self
            .records
            .modify(&process.process_hash.clone(), Some(process), |r| {
                r.sealed.clear();
                Change::Write(())
            })
            .await;
        if !matches!(dropped, Ok(Some(_))) {
            return;
        }
        let revoker = self.revoker.clone();
        let (realm, headers, params) = (realm.to_owned(), headers.clone(), params.clone());
        tokio::spawn(async move {
            revoker
                .with_client(&realm, &held.refresh_token, &headers, &params, peer)
                .await;
        });
    }

    /// Ends a process without delivery; its held grant is dropped.
    async fn finish(
        &self,
        process_hash: &str,
        status: Status,
        description: Option<&str>,
    ) -> Result<Option<ProcessRecord>, OAuthError> {
        let finished = self
            .records
            .modify(process_hash, None, |r| {
                r.status = status;
                r.description = description.map(str::to_owned);
                r.completed_at = Some(now_ms());
                r.delivering_since = None;
                r.sealed.clear();
                Change::Write(())
            })
            .await?;
        let _ = self.records.retire(process_hash).await;
        Ok(finished.map(|(_, record)| record))
    }

    /// Gives a claimed delivery back (the OP failed): the next poll may try again. `in_doubt`
    /// when the OP may have acted on the failed call.
    async fn unclaim(&self, process_hash: &str, in_doubt: bool) {
        let released = self
            .records
            .modify(process_hash, None, |r| {
                if r.status == Status::Delivering {
                    r.status = Status::Approved;
                    r.delivering_since = None;
                    r.release_in_doubt |= in_doubt;
                    Change::Write(())
                } else {
                    Change::Keep(())
                }
            })
            .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "could not release a delivery claim; it frees itself after a minute");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000_000;

    fn record(status: Status) -> ProcessRecord {
        ProcessRecord {
            status,
            ..ProcessRecord::sample(NOW)
        }
    }

    /// After the owner checks: a revoked id first, then the polling rate, then the status,
    /// a spent id last.
    #[test]
    fn a_poll_is_decided_in_the_documented_order() {
        use PollDecision::*;
        let fast = Some(NOW - 1_000);
        let on_time = Some(NOW - 5_000);
        let interaction = || {
            let mut r = record(Status::Pending);
            r.interaction = Some("sealed".into());
            r
        };
        let delivering_since = |since: u64| {
            let mut r = record(Status::Delivering);
            r.delivering_since = Some(since);
            r
        };
        let cases: Vec<(&str, ProcessRecord, Option<u64>, PollDecision)> = vec![
            ("revoked beats the rate", record(Status::Revoked), fast, Revoked),
            ("slow_down beats approval", record(Status::Approved), fast, SlowDown),
            ("slow_down beats denial", record(Status::Denied), fast, SlowDown),
            ("slow_down beats a spent id", record(Status::Delivered), fast, SlowDown),
            ("first poll is pending", record(Status::Pending), None, Pending),
            ("an interaction need is pending's", interaction(), on_time, Interaction),
            ("slow_down beats an interaction need", interaction(), fast, SlowDown),
            ("on-time poll is pending", record(Status::Pending), on_time, Pending),
            ("approved releases", record(Status::Approved), on_time, Release),
            ("denied", record(Status::Denied), None, Denied),
            ("cancelled", record(Status::Cancelled), None, Cancelled),
            ("spent", record(Status::Delivered), on_time, Spent),
            ("delivery in flight", delivering_since(NOW - 1_000), None, InFlight),
            (
                "abandoned delivery is taken over",
                delivering_since(NOW - STALE_DELIVERY_MS - 1),
                None,
                Release,
            ),
        ];
        for (name, record, last_poll, expected) in cases {
            assert_eq!(decide(&record, last_poll, NOW), expected, "{name}");
        }
    }

    #[test]
    fn an_expired_approval_cannot_be_claimed() {
        let mut r = record(Status::Approved);
        assert!(claimable(&r, NOW));
        r.expires_at = NOW;
        assert!(!claimable(&r, NOW));
    }

    #[test]
    fn a_poll_within_the_jitter_allowance_is_on_time() {
        let r = record(Status::Pending);
        // 5 s interval: up to 1 s early is jitter, more is too fast.
        assert_eq!(decide(&r, Some(NOW - 4_000), NOW), PollDecision::Pending);
        assert_eq!(decide(&r, Some(NOW - 3_999), NOW), PollDecision::SlowDown);
    }

    #[test]
    fn refusals_carry_the_draft_error_codes() {
        let r = record(Status::Pending);
        let codes = [
            (PollDecision::Revoked, code::INVALID_REQUEST),
            (PollDecision::Spent, code::INVALID_GRANT),
            (PollDecision::SlowDown, code::SLOW_DOWN),
            (PollDecision::Pending, code::AUTHORIZATION_PENDING),
            (PollDecision::InFlight, code::AUTHORIZATION_PENDING),
            (PollDecision::Interaction, code::AUTHORIZATION_PENDING),
            (PollDecision::Denied, code::ACCESS_DENIED),
            (PollDecision::Cancelled, code::ACCESS_DENIED),
        ];
        for (decision, expected) in codes {
            let error = refusal(decision, &r);
            assert_eq!(error.error, expected, "{decision:?}");
            assert_eq!(error.status, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn an_interaction_need_is_answered_in_each_profiles_terms() {
        let uri = "https://idv.example/slot/abc?x=1";
        let ietf = interaction_answer(uri, Some("step=video_ident"), Profile::Ietf);
        assert_eq!(
            (ietf.status, ietf.error),
            (StatusCode::BAD_REQUEST, code::INTERACTION_REQUIRED)
        );
        assert_eq!(ietf.interaction_uri(), Some(uri));
        assert_eq!(ietf.description, "step=video_ident");
        let openid = interaction_answer(uri, Some("step=video_ident"), Profile::OpenId);
        assert_eq!(
            (openid.error, openid.interaction_uri()),
            (code::AUTHORIZATION_PENDING, None)
        );
        assert_eq!(openid.description, format!("step=video_ident; interaction_uri={uri}"));
        let bare = interaction_answer(uri, None, Profile::OpenId);
        assert!(bare.description.ends_with(&format!("; interaction_uri={uri}")));
        // A long progress text gives way: the URL always arrives whole, within the limit.
        let long = "x".repeat(480);
        let openid = interaction_answer(&long, Some(&"\u{e4}".repeat(400)), Profile::OpenId);
        assert!(openid.description.len() <= MAX_DESCRIPTION);
        assert!(openid.description.ends_with(&format!("interaction_uri={long}")));
    }

    #[test]
    fn strikes_grow_the_interval_then_revoke() {
        let mut r = record(Status::Pending);
        let mut now = NOW;
        for n in 1..MAX_STRIKES {
            assert!(strike(&mut r, now));
            assert_eq!(r.interval, 5 + SLOW_DOWN_STEP * u64::from(n));
            now += STRIKE_WINDOW_MS;
        }
        assert!(strike(&mut r, now));
        assert_eq!(r.status, Status::Revoked);
    }

    #[test]
    fn polls_within_a_second_of_a_strike_are_no_strike_of_their_own() {
        let mut r = record(Status::Pending);
        assert!(strike(&mut r, NOW));
        let struck = r.clone();
        // The rest of a burst, and a replica whose clock is behind.
        for now in [NOW, NOW + 1, NOW + STRIKE_WINDOW_MS - 1, NOW - 5_000] {
            assert!(!strike(&mut r, now));
            assert_eq!(r, struck);
        }
        assert!(strike(&mut r, NOW + STRIKE_WINDOW_MS));
        assert_eq!((r.strikes, r.interval), (2, 5 + 2 * SLOW_DOWN_STEP));
    }

    #[test]
    fn the_ops_refresh_answer_decides_the_release() {
        assert_eq!(refresh_outcome(StatusCode::OK, None), Refresh::Tokens);
        assert_eq!(
            refresh_outcome(StatusCode::BAD_GATEWAY, None),
            Refresh::OpFailed(StatusCode::BAD_GATEWAY)
        );
        assert_eq!(
            refresh_outcome(StatusCode::UNAUTHORIZED, Some("invalid_client")),
            Refresh::RequestRefused
        );
        assert_eq!(
            refresh_outcome(StatusCode::BAD_REQUEST, Some("invalid_grant")),
            Refresh::GrantRefused
        );
    }
}
