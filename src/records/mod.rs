//! What the proxy stores: the record types here, and in [`Records`] the one repository that
//! derives every key, seals every secret and (de)serialises every record. Codes, handles and
//! `deferred_auth_id`s appear only as keyed hashes in key names; the held upstream tokens are
//! sealed. All keys of one process share the hash tag `{p:<hash>}` so multi-key scripts work
//! on Redis Cluster.

use std::time::Duration;

use serde::{Deserialize, Serialize};

mod encoding;
mod repository;
mod sealed;

pub use repository::{Change, PolledProcess, Records, StoredProcess, TakenCode, UnsealError};
pub use sealed::Sealed;

/// Marks our `state` handles so an upstream redirect is recognised without a store lookup.
pub const HANDLE_PREFIX: &str = "dtr1.";
/// Records outlive their expiry this long, so a late poll hears `expired_token` rather than
/// `invalid_grant`.
pub const EXPIRED_GRACE: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseMode {
    Query,
    Fragment,
    FormPost,
}

/// An authorization request in flight at the OP, keyed by our `state` handle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthorizationRecord {
    pub realm: String,
    pub client_id: String,
    pub redirect_uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    pub response_mode: ResponseMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// What the RP asked to be verified (`acr_values`, `claims`), for the verification service.
    #[serde(default, skip_serializing_if = "Requested::is_empty")]
    pub requested: Requested,
    pub created_at: u64,
}

/// The parts of the authorization request that say what is to be verified.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Requested {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr_values: Option<String>,
    /// The `claims` request parameter (OIDC Core §5.5), as the RP sent it (JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<String>,
}

impl Requested {
    pub fn is_empty(&self) -> bool {
        self.acr_values.is_none() && self.claims.is_none()
    }
}

/// A `deferred_code` waiting for its exchange.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeRecord {
    pub realm: String,
    pub client_id: String,
    pub redirect_uri: String,
    /// The OP's authorization code: sealed to this record's key in the store, plain once
    /// taken ([`Records::take_code`]).
    pub upstream_code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Requested::is_empty")]
    pub requested: Requested,
    pub issued_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    /// `private_key_jwt` or `client_secret_jwt` (RFC 7523 assertion).
    JwtAssertion,
    /// A public client: no authentication, only its id.
    None,
}

impl AuthMethod {
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::JwtAssertion => "private_key_jwt",
            AuthMethod::None => "none",
        }
    }
}

/// What the exchange bound to a process about the client that performed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientBinding {
    pub method: AuthMethod,
    /// Keyed hash of client id and secret, for the secret-based methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for the verification service.
    Pending,
    /// Approved; the next valid poll obtains the final tokens.
    Approved,
    Denied,
    Cancelled,
    /// A poll is obtaining the final tokens right now.
    Delivering,
    /// Tokens were delivered; the id is spent.
    Delivered,
    /// Killed for sustained polling abuse; every further request is `invalid_request`.
    Revoked,
    /// The held grant was lost to an OP failure (the OP refused it after a call whose answer
    /// never arrived, which may have rotated it): not the verification's outcome, so not
    /// `access_denied`; the RP must start over.
    Failed,
}

impl Status {
    /// Every status, in the order records code them (format 2 and 3 store the index): never
    /// reordered, a new one goes last.
    pub const ALL: [Status; 8] = [
        Status::Pending,
        Status::Approved,
        Status::Denied,
        Status::Cancelled,
        Status::Delivering,
        Status::Delivered,
        Status::Revoked,
        Status::Failed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Cancelled => "cancelled",
            Status::Delivering => "delivering",
            Status::Delivered => "delivered",
            Status::Revoked => "revoked",
            Status::Failed => "failed",
        }
    }

    /// Whether the verification outcome is still open.
    pub fn is_open(self) -> bool {
        self == Status::Pending
    }
}

/// One deferred authentication process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessRecord {
    /// Public name for operators and webhooks; not a credential.
    pub process_id: String,
    pub realm: String,
    pub client_id: String,
    pub client: ClientBinding,
    /// RFC 7638 thumbprint of the DPoP key the exchange was bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
    /// RFC 8705 `x5t#S256` of the client certificate the exchange was bound to: every later
    /// poll and cancellation must come with the same certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x5t: Option<String>,
    pub status: Status,
    /// Progress text for pending polls, or the reason of a denial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where the end-user must act before the verification can go on (`interaction_uri`,
    /// set by a progress webhook), sealed ([`Records::seal_interaction`]); only while pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interaction: Option<String>,
    /// Current minimum seconds between polls (grows with every `slow_down`).
    pub interval: u64,
    /// Consecutive too-fast polls that counted (at most one per
    /// [`crate::endpoints::poll::STRIKE_WINDOW_MS`]).
    #[serde(default)]
    pub strikes: u32,
    /// When the last of them counted, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_strike: Option<u64>,
    pub created_at: u64,
    pub expires_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivering_since: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The nonce of the authorization request, to check the final ID token against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Requested::is_empty")]
    pub requested: Requested,
    #[serde(default)]
    pub ping_attempts: u32,
    /// A release reached the OP and its answer was lost: the OP may have rotated the held
    /// refresh token, so a refusal of the next attempt is no verdict on the user.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub release_in_doubt: bool,
    /// The W3C `traceparent` of the exchange that made the process, when traces are on: its
    /// ping and lifecycle events continue that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// `HeldSecrets`, sealed; emptied once tokens are delivered.
    pub sealed: Sealed,
}

#[cfg(test)]
impl ProcessRecord {
    /// A pending process of client `c` in realm `r`, created a minute before `now` and living
    /// a minute after it: what the decision tables vary.
    pub fn sample(now: u64) -> Self {
        Self {
            process_id: "p".into(),
            realm: "r".into(),
            client_id: "c".into(),
            client: ClientBinding {
                method: AuthMethod::ClientSecretBasic,
                fingerprint: None,
            },
            jkt: None,
            x5t: None,
            status: Status::Pending,
            description: None,
            interaction: None,
            interval: 5,
            strikes: 0,
            last_strike: None,
            created_at: now - 60_000,
            expires_at: now + 60_000,
            completed_at: None,
            delivering_since: None,
            sub: None,
            sid: None,
            nonce: None,
            requested: Requested::default(),
            ping_attempts: 0,
            release_in_doubt: false,
            trace: None,
            sealed: Sealed::default(),
        }
    }
}

/// Secrets a process must be able to read back. Sealed with short names (the long ones of earlier versions are still read).
#[derive(Serialize, Deserialize)]
pub struct HeldSecrets {
    #[serde(rename = "d", alias = "deferred_auth_id")]
    pub deferred_auth_id: String,
    #[serde(rename = "r", alias = "refresh_token")]
    pub refresh_token: String,
    #[serde(
        rename = "n",
        alias = "notification_token",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub notification_token: Option<String>,
}
