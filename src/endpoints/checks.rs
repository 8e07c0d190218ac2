//! The checks every request to the deferred token and cancellation endpoints passes: which
//! client it is, whether it may use DTR, its DPoP proof, and — for a request naming a process —
//! whether the process is this client's and bound to this key.

use http::header::HeaderMap;
use http::StatusCode;

use crate::client_auth::{ClientCredentials, ClientVerifier};
use crate::clients::Clients;
use crate::config::ClientSettings;
use crate::crypto::equal_constant_time;
use crate::dpop::{DpopVerifier, ValidProof};
use crate::protocol::errors::OAuthError;
use crate::protocol::routes::{Endpoint, PublicUrls};
use crate::protocol::wire::{error as code, Profile, DPOP};
use crate::records::{AuthMethod, ProcessRecord};

#[derive(Clone)]
pub struct Checks {
    pub clients: Clients,
    pub verifier: ClientVerifier,
    pub dpop: DpopVerifier,
    pub urls: PublicUrls,
}

pub fn dpop_error(description: impl Into<std::borrow::Cow<'static, str>>) -> OAuthError {
    OAuthError::new(StatusCode::BAD_REQUEST, code::INVALID_DPOP_PROOF, description)
}

/// What the shell learnt about a request naming a process, before deciding.
pub struct OwnerFacts<'a> {
    pub realm: &'a str,
    pub client_id: &'a str,
    /// The client's authentication against what the exchange bound to the process.
    pub authenticated: Result<(), OAuthError>,
    /// The `x5t#S256` of the request's client certificate, if it came with one.
    pub certificate: Option<&'a str>,
    /// The request's DPoP proof, validated (RFC 9449 §4.3); `Ok(None)` without one.
    pub proof: Result<Option<ValidProof>, OAuthError>,
    pub requires_dpop: bool,
    /// The profile the request speaks: its names in the answers, and its binding rule.
    pub profile: Profile,
    /// For polls: the clock, to check the lifetime (cancels of an expired process are no-ops).
    pub now: Option<u64>,
}

/// Whether a request may act on a process, in the draft's order (§ Token Request Validation,
/// § Authentication Cancellation Request Validation):
/// 2. the `deferred_auth_id` was issued to this client (`invalid_grant`) — before 1, because the
///    proxy holds no client secrets: a secret is checked against the fingerprint the exchange
///    bound to the process, so for someone else's id the answer must not tell whether the id
///    exists;
/// 1. the client is authenticated (`invalid_client`);
///    then, for a process bound to a client certificate at the exchange (RFC 8705), the
///    request comes with that certificate (`invalid_grant`, as for a refresh token bound to
///    a certificate: the id is no grant for another certificate, or none);
/// 3. (polls) the lifetime has not elapsed (`expired_token`);
/// 4. a process bound at the exchange gets a proof, by the bound key for public clients (and
///    wherever DPoP is required) (`invalid_dpop_proof`). In the IETF profile the bound key
///    signs every later request whatever the client (IETF §11.1: "MUST carry a DPoP proof
///    signed by the same key"); the OpenID profile binds public clients only (OID §5.3, §8.2);
/// 5. the proof is valid.
pub fn owner_check(record: &ProcessRecord, facts: OwnerFacts<'_>) -> Result<Option<ValidProof>, OAuthError> {
    let name = facts.profile.process_param();
    if record.client_id != facts.client_id || record.realm != facts.realm {
        return Err(OAuthError::unknown_process(facts.profile));
    }
    facts.authenticated?;
    if let Some(bound) = &record.x5t {
        if !facts
            .certificate
            .is_some_and(|presented| equal_constant_time(bound, presented))
        {
            return Err(OAuthError::invalid_grant(format!(
                "This {name} is bound to a TLS client certificate; present the same certificate."
            )));
        }
    }
    if facts.now.is_some_and(|now| now >= record.expires_at) {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            code::EXPIRED_TOKEN,
            format!("The {name} has expired; start again."),
        ));
    }
    // An invalid proof is a present one: step 4 (a proof is there) holds, step 5 fails.
    let proof = facts.proof?;
    let same_key = record.client.method == AuthMethod::None || facts.requires_dpop || facts.profile == Profile::Ietf;
    match (&record.jkt, &proof) {
        (Some(_), None) => Err(dpop_error(format!(
            "This {name} is bound to a DPoP key; send a DPoP proof."
        ))),
        (Some(bound), Some(proof)) if same_key && !equal_constant_time(bound, &proof.jkt) => Err(dpop_error(format!(
            "The DPoP proof is not signed by the key this {name} is bound to."
        ))),
        (None, None) if facts.requires_dpop => Err(dpop_error("This server requires a DPoP proof.")),
        _ => Ok(proof),
    }
}

impl Checks {
    /// The client's DTR settings; a client without them is `unauthorized_client`.
    pub fn client(
        &self,
        realm: &str,
        credentials: &ClientCredentials,
    ) -> Result<std::sync::Arc<ClientSettings>, OAuthError> {
        self.clients.deferred(realm, &credentials.client_id)
    }

    /// [`Self::client`], for a request in one profile's wire names: the client must speak it.
    pub fn client_speaking(
        &self,
        realm: &str,
        credentials: &ClientCredentials,
        spoken: Profile,
    ) -> Result<std::sync::Arc<ClientSettings>, OAuthError> {
        self.clients.speaking(realm, &credentials.client_id, spoken)
    }

    /// The request's DPoP proof for this endpoint, validated; `None` when it carries none.
    pub async fn proof(
        &self,
        headers: &HeaderMap,
        endpoint: Endpoint,
        realm: &str,
        now_ms: u64,
    ) -> Result<Option<ValidProof>, OAuthError> {
        // Without a proof there is nothing to check it against: no URL to build.
        if !headers.contains_key(&DPOP) {
            return Ok(None);
        }
        let url = self.urls.endpoint(endpoint, realm);
        self.dpop.verify(headers, &url, now_ms / 1000).await
    }

    /// The facts about a request that names `record`: its client authentication and its DPoP
    /// proof, each checked (the order of the answers is [`owner_check`]'s).
    #[allow(clippy::too_many_arguments)]
    pub async fn owner_facts<'a>(
        &self,
        realm: &'a str,
        client: &ClientSettings,
        credentials: &'a ClientCredentials,
        record: &ProcessRecord,
        headers: &HeaderMap,
        certificate: Option<&'a str>,
        endpoint: Endpoint,
        profile: Profile,
        now: u64,
        check_expiry: bool,
    ) -> OwnerFacts<'a> {
        // Someone else's id: nothing more to learn, and no proof or assertion to spend on it.
        let foreign = record.client_id != credentials.client_id || record.realm != realm;
        let (authenticated, proof) = if foreign {
            (Ok(()), Ok(None))
        } else {
            (
                self.authenticate(realm, client, credentials, Some(record)).await,
                self.proof(headers, endpoint, realm, now).await,
            )
        };
        OwnerFacts {
            realm,
            client_id: &credentials.client_id,
            authenticated,
            certificate,
            proof,
            requires_dpop: self.clients.requires_dpop(client),
            profile,
            now: check_expiry.then_some(now),
        }
    }

    /// Authenticates the client locally: against what the exchange bound to the process
    /// (`record`), and an assertion in full, addressed to the issuer or a DTR endpoint.
    pub async fn authenticate(
        &self,
        realm: &str,
        client: &ClientSettings,
        credentials: &ClientCredentials,
        record: Option<&ProcessRecord>,
    ) -> Result<(), OAuthError> {
        // Only an assertion is checked against them: a poll with a secret or none (the most
        // frequent request of all) builds no URL.
        let audiences = if credentials.method == AuthMethod::JwtAssertion {
            vec![
                self.urls.issuer(realm),
                self.urls.endpoint(Endpoint::Token, realm),
                self.urls.endpoint(Endpoint::Cancellation, realm),
                self.urls.endpoint(Endpoint::Revocation, realm),
            ]
        } else {
            Vec::new()
        };
        self.verifier
            .authenticate(credentials, client, &audiences, record.map(|r| &r.client))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000_000;

    fn record(method: AuthMethod, jkt: Option<&str>) -> ProcessRecord {
        let mut record = ProcessRecord::sample(NOW);
        record.client.method = method;
        record.jkt = jkt.map(str::to_owned);
        record
    }

    fn bad_client() -> Result<(), OAuthError> {
        Err(OAuthError::invalid_client("Client authentication failed.", None))
    }

    fn bad_proof() -> Result<Option<ValidProof>, OAuthError> {
        Err(dpop_error("the DPoP proof's signature is invalid."))
    }

    fn proof(jkt: &str) -> Result<Option<ValidProof>, OAuthError> {
        Ok(Some(ValidProof { jkt: jkt.into() }))
    }

    struct Case {
        name: &'static str,
        record: ProcessRecord,
        client_id: &'static str,
        authenticated: Result<(), OAuthError>,
        proof: Result<Option<ValidProof>, OAuthError>,
        requires_dpop: bool,
        expired: bool,
        expected: Result<(), &'static str>,
    }

    /// The draft's validation order for polls (§ Token Request Validation), one row per rule,
    /// each row failing every later rule too, so the row proves which rule comes first.
    #[test]
    fn requests_naming_a_process_are_checked_in_the_drafts_order() {
        use AuthMethod::{ClientSecretBasic as Secret, None as Public};
        let cases = vec![
            Case {
                name: "2 (before 1): someone else's id, with bad credentials, expired, no proof",
                record: record(Secret, Some("k1")),
                client_id: "other",
                authenticated: bad_client(),
                proof: Ok(None),
                requires_dpop: true,
                expired: true,
                expected: Err(code::INVALID_GRANT),
            },
            Case {
                name: "1: bad credentials, expired, no proof for a bound process",
                record: record(Secret, Some("k1")),
                client_id: "c",
                authenticated: bad_client(),
                proof: Ok(None),
                requires_dpop: true,
                expired: true,
                expected: Err(code::INVALID_CLIENT),
            },
            Case {
                name: "3: expired, no proof for a bound process",
                record: record(Secret, Some("k1")),
                client_id: "c",
                authenticated: Ok(()),
                proof: Ok(None),
                requires_dpop: false,
                expired: true,
                expected: Err(code::EXPIRED_TOKEN),
            },
            Case {
                name: "4.1: a bound process without a proof",
                record: record(Public, Some("k1")),
                client_id: "c",
                authenticated: Ok(()),
                proof: Ok(None),
                requires_dpop: false,
                expired: false,
                expected: Err(code::INVALID_DPOP_PROOF),
            },
            Case {
                name: "5: an invalid proof",
                record: record(Public, Some("k1")),
                client_id: "c",
                authenticated: Ok(()),
                proof: bad_proof(),
                requires_dpop: false,
                expired: false,
                expected: Err(code::INVALID_DPOP_PROOF),
            },
            Case {
                name: "4.2: a public client's proof by another key",
                record: record(Public, Some("k1")),
                client_id: "c",
                authenticated: Ok(()),
                proof: proof("k2"),
                requires_dpop: false,
                expired: false,
                expected: Err(code::INVALID_DPOP_PROOF),
            },
            Case {
                name: "a confidential client may prove with another key of its own",
                record: record(Secret, Some("k1")),
                client_id: "c",
                authenticated: Ok(()),
                proof: proof("k2"),
                requires_dpop: false,
                expired: false,
                expected: Ok(()),
            },
            Case {
                name: "unless DPoP is required",
                record: record(Secret, Some("k1")),
                client_id: "c",
                authenticated: Ok(()),
                proof: proof("k2"),
                requires_dpop: true,
                expired: false,
                expected: Err(code::INVALID_DPOP_PROOF),
            },
            Case {
                name: "required DPoP on an unbound process",
                record: record(Secret, None),
                client_id: "c",
                authenticated: Ok(()),
                proof: Ok(None),
                requires_dpop: true,
                expired: false,
                expected: Err(code::INVALID_DPOP_PROOF),
            },
            Case {
                name: "the owner with the bound key",
                record: record(Public, Some("k1")),
                client_id: "c",
                authenticated: Ok(()),
                proof: proof("k1"),
                requires_dpop: false,
                expired: false,
                expected: Ok(()),
            },
        ];
        for case in cases {
            let now = if case.expired { NOW + 60_000 } else { NOW };
            let facts = OwnerFacts {
                realm: "r",
                client_id: case.client_id,
                authenticated: case.authenticated,
                certificate: None,
                proof: case.proof,
                requires_dpop: case.requires_dpop,
                profile: Profile::OpenId,
                now: Some(now),
            };
            let result = owner_check(&case.record, facts).map(|_| ()).map_err(|e| e.error);
            assert_eq!(result, case.expected, "{}", case.name);
        }
    }

    #[test]
    fn a_cancel_of_an_expired_process_is_not_refused_for_its_age() {
        let facts = OwnerFacts {
            realm: "r",
            client_id: "c",
            authenticated: Ok(()),
            certificate: None,
            proof: Ok(None),
            requires_dpop: false,
            profile: Profile::OpenId,
            now: None,
        };
        let mut expired = record(AuthMethod::ClientSecretBasic, None);
        expired.expires_at = 0;
        assert!(owner_check(&expired, facts).is_ok());
    }

    /// IETF §11.1: once a deferral code is bound to a DPoP key, every poll and revocation is
    /// signed by that key, a confidential client's too; its answers name the `deferral_code`.
    #[test]
    fn the_ietf_profile_holds_every_client_to_the_bound_key() {
        let facts = |proof| OwnerFacts {
            realm: "r",
            client_id: "c",
            authenticated: Ok(()),
            certificate: None,
            proof,
            requires_dpop: false,
            profile: Profile::Ietf,
            now: Some(NOW),
        };
        let confidential = record(AuthMethod::ClientSecretBasic, Some("k1"));
        let refused = owner_check(&confidential, facts(proof("k2"))).map(|_| ()).unwrap_err();
        assert_eq!(refused.error, code::INVALID_DPOP_PROOF);
        assert!(refused.description.contains("deferral_code"), "{}", refused.description);
        assert!(owner_check(&confidential, facts(proof("k1"))).is_ok());
        let mut foreign = confidential.clone();
        foreign.client_id = "other".into();
        let unknown = owner_check(&foreign, facts(proof("k1"))).map(|_| ()).unwrap_err();
        assert_eq!(unknown.error, code::INVALID_GRANT);
        assert!(unknown.description.contains("deferral_code"), "{}", unknown.description);
    }

    /// RFC 8705: a process bound to a client certificate answers only requests with that
    /// certificate, in both profiles, after the client's authentication and before its age.
    #[test]
    fn a_certificate_bound_process_answers_only_its_certificate() {
        for profile in Profile::ALL {
            let facts = |certificate, authenticated, now| OwnerFacts {
                realm: "r",
                client_id: "c",
                authenticated,
                certificate,
                proof: Ok(None),
                requires_dpop: false,
                profile,
                now: Some(now),
            };
            let mut bound = record(AuthMethod::ClientSecretBasic, None);
            bound.x5t = Some("cert-1".into());
            let refused = |certificate, authenticated, now| {
                owner_check(&bound, facts(certificate, authenticated, now))
                    .map(|_| ())
                    .map_err(|e| e.error)
            };
            assert_eq!(refused(Some("cert-1"), Ok(()), NOW), Ok(()), "{profile:?}");
            assert_eq!(refused(Some("cert-2"), Ok(()), NOW), Err(code::INVALID_GRANT));
            assert_eq!(refused(None, Ok(()), NOW), Err(code::INVALID_GRANT));
            // Authentication first; the lifetime only for the certificate's holder.
            assert_eq!(refused(None, bad_client(), NOW), Err(code::INVALID_CLIENT));
            assert_eq!(refused(None, Ok(()), NOW + 60_000), Err(code::INVALID_GRANT));
            assert_eq!(refused(Some("cert-1"), Ok(()), NOW + 60_000), Err(code::EXPIRED_TOKEN));
            // An unbound process does not care about a certificate it was not bound to.
            let unbound = record(AuthMethod::ClientSecretBasic, None);
            assert!(owner_check(&unbound, facts(Some("cert-1"), Ok(()), NOW)).is_ok());
        }
    }
}
