//! The operator API on the internal port (`/operator/v1/…`, described in
//! `docs/openapi/admin.json`): list and search processes, inspect one, cancel or deny one,
//! extend its lifetime. Every request carries one of the configured bearer tokens
//! (`DTR_OPERATOR_TOKEN`, `DTR_OPERATOR_TOKEN_FILE`); without any the API does not exist.
//!
//! No answer shows a secret of a process: the `deferred_auth_id`, the held grant and the RP's
//! notification token stay sealed in the record. A denial has every effect of a denying
//! completion webhook ([`Verdicts::apply`]); a cancellation every effect of the RP's own,
//! the held grant given back with the operator's Keycloak account where one is configured.
//!
//! Listing reads the active queue the flow already keeps (every process not yet finished, and
//! denied ones their RP has not heard of yet), in the order they fall due, a bounded number of
//! entries per request; by `sub` it reads that subject's index, which also holds finished
//! processes until their records go. No other key is kept for it.

use aws_lc_rs::digest::{digest, SHA256};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::cancel::cancel_record;
use super::completion::{problem, store_problem, Verdict, Verdicts};
use super::events::{Event, Events};
use crate::clock::now_ms;
use crate::config::OperatorTokens;
use crate::http::{json_no_store, Body};
use crate::records::{Change, ProcessRecord, Status, StoredProcess};
use crate::store::StoreError;

/// Where the operator API lives on the internal port.
pub const PREFIX: &str = "/operator/v1";
/// The OpenAPI 3.1 document of the internal port, served at `/operator/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../docs/openapi/admin.json");
/// Page size when none is asked for, and the largest one allowed.
pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 100;
/// Active-queue entries one list request examines at most (with filters, a page may then
/// hold fewer than `limit` processes and still have a `next_cursor`).
pub const SCAN_BUDGET: usize = 1000;
/// Entries read from the queue (and records loaded in parallel) per round trip.
const SCAN_BATCH: usize = 100;
/// Longest `error_description` a denial may carry.
const MAX_DESCRIPTION: usize = 500;
const WWW_AUTHENTICATE: &str = r#"Bearer realm="dtr-operator""#;

pub struct OperatorApi {
    pub verdicts: Verdicts,
    pub events: Events,
    /// SHA-256 of each accepted token: compared in constant time, whatever their lengths.
    token_digests: Vec<Vec<u8>>,
    /// `DTR_OPERATOR_MAX_LIFETIME`, in milliseconds.
    max_lifetime_ms: u64,
}

/// What an operator may see of a process: no secret.
pub fn view(record: &ProcessRecord) -> Value {
    json!({
        "process_id": record.process_id,
        "realm": record.realm,
        "client_id": record.client_id,
        "status": record.status.name(),
        "description": record.description,
        // Whether the verification waits on the end-user; the URL itself stays sealed.
        "interaction_required": record.status.is_open() && record.interaction.is_some(),
        "sub": record.sub,
        "created_at": record.created_at / 1000,
        "expires_at": record.expires_at / 1000,
        "completed_at": record.completed_at.map(|t| t / 1000),
        "interval": record.interval,
        "dpop_bound": record.jkt.is_some(),
        "client_auth_method": record.client.method.name(),
        "ping_attempts": record.ping_attempts,
        "acr_values": record.requested.acr_values,
    })
}

/// The filters and page of a list request.
#[derive(Debug, Default, PartialEq)]
pub struct ListQuery {
    pub realm: Option<String>,
    pub client_id: Option<String>,
    pub sub: Option<String>,
    pub status: Option<Status>,
    pub limit: usize,
    /// `(due, process_hash)` of the last entry of the previous page.
    pub after: Option<(u64, String)>,
}

impl ListQuery {
    /// Parses the query string; unknown or repeated parameters and bad values are refused.
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut parsed = ListQuery {
            limit: DEFAULT_LIMIT,
            ..Default::default()
        };
        let mut seen = Vec::new();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if seen.contains(&name) {
                return Err(format!("{name} is repeated."));
            }
            seen.push(name.clone());
            let text = || {
                if value.is_empty() || value.len() > 1024 {
                    Err(format!("{name} must be 1 to 1024 characters."))
                } else {
                    Ok(value.to_string())
                }
            };
            match &*name {
                "realm" => parsed.realm = Some(text()?),
                "client_id" => parsed.client_id = Some(text()?),
                "sub" => parsed.sub = Some(text()?),
                "status" => {
                    parsed.status = Some(
                        Status::ALL
                            .into_iter()
                            .find(|s| s.name() == value)
                            .ok_or_else(|| "status is not a known status.".to_owned())?,
                    )
                }
                "limit" => {
                    parsed.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| format!("limit must be an integer from 1 to {MAX_LIMIT}."))?
                }
                "cursor" => parsed.after = Some(decode_cursor(&value).ok_or("cursor is not one this API gave.")?),
                other => return Err(format!("Unknown parameter {other}.")),
            }
        }
        Ok(parsed)
    }

    fn matches(&self, record: &ProcessRecord) -> bool {
        self.realm.as_ref().is_none_or(|r| *r == record.realm)
            && self.client_id.as_ref().is_none_or(|c| *c == record.client_id)
            && self.sub.as_ref().is_none_or(|s| record.sub.as_ref() == Some(s))
            && self.status.is_none_or(|s| s == record.status)
    }
}

/// The cursor: a position `(due, process_hash)` in the listing order, `<due ms>.<hash>`.
/// Opaque to clients; any well-formed one is a position to continue from.
pub fn encode_cursor(due: u64, process_hash: &str) -> String {
    format!("{due}.{process_hash}")
}

fn decode_cursor(cursor: &str) -> Option<(u64, String)> {
    let (due, hash) = cursor.split_once('.')?;
    let valid = (1..=19).contains(&due.len())
        && due.bytes().all(|b| b.is_ascii_digit())
        && (1..=128).contains(&hash.len())
        && hash
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then(|| Some((due.parse().ok()?, hash.to_owned())))?
}

/// A `process_id` as the proxy makes them (base64url); anything else names no process.
fn plausible_process_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The body of `POST …/deny`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Denial {
    #[serde(default)]
    error_description: Option<String>,
}

/// The body of `POST …/extend`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Extension {
    /// Seconds added to the process's expiry: a JSON integer (`60`, or `60.0`).
    extend_by: serde_json::Number,
}

/// The most any one extension may ask for, whatever `DTR_OPERATOR_MAX_LIFETIME` allows.
pub const MAX_EXTENSION: u64 = 366 * 86_400;

impl Extension {
    fn seconds(&self) -> Option<u64> {
        let n = &self.extend_by;
        let seconds = n.as_u64().or_else(|| {
            let f = n.as_f64()?;
            (f.fract() == 0.0 && f >= 0.0 && f <= MAX_EXTENSION as f64).then_some(f as u64)
        })?;
        (1..=MAX_EXTENSION).contains(&seconds).then_some(seconds)
    }
}

/// A JSON body, or what is wrong with it; an empty body is `empty` where one is allowed.
fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8], empty: Option<T>) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        if let Some(value) = empty {
            return Ok(value);
        }
    }
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

fn bad_request(description: &str) -> Response<Body> {
    problem(StatusCode::BAD_REQUEST, "invalid_request", description)
}

/// Why a request is not the operator's.
enum Unauthenticated {
    /// No bearer token.
    Missing,
    /// A token that is none of the configured ones.
    Invalid,
}

fn not_found() -> Response<Body> {
    problem(StatusCode::NOT_FOUND, "not_found", "No such process.")
}

fn not_open(record: &ProcessRecord, now: u64) -> Response<Body> {
    let state = if now >= record.expires_at {
        "expired"
    } else {
        record.status.name()
    };
    json_no_store(
        StatusCode::CONFLICT,
        &json!({
            "error": "conflict",
            "error_description": format!("The process cannot be changed now: it is {state}."),
            "process": view(record),
        }),
    )
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "This method is not allowed here.",
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

impl OperatorApi {
    /// The API with these tokens; `None` (the API is off) without any.
    pub fn new(tokens: &OperatorTokens, max_lifetime_ms: u64, verdicts: Verdicts, events: Events) -> Option<Self> {
        if tokens.0.is_empty() {
            return None;
        }
        Some(Self {
            verdicts,
            events,
            token_digests: tokens
                .0
                .iter()
                .map(|t| digest(&SHA256, t.as_bytes()).as_ref().to_vec())
                .collect(),
            max_lifetime_ms,
        })
    }

    /// Which configured token the request carries (its position, for the audit log). Every
    /// token is compared, in constant time.
    fn authenticate(&self, headers: &HeaderMap) -> Result<usize, Unauthenticated> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or(Unauthenticated::Missing)?;
        let presented = digest(&SHA256, presented.as_bytes());
        let mut found = None;
        for (i, expected) in self.token_digests.iter().enumerate() {
            let equal = aws_lc_rs::constant_time::verify_slices_are_equal(presented.as_ref(), expected).is_ok();
            if equal && found.is_none() {
                found = Some(i);
            }
        }
        found.ok_or(Unauthenticated::Invalid)
    }

    /// `401` with the RFC 6750 challenge.
    fn refuse(&self, why: Unauthenticated) -> Response<Body> {
        self.verdicts.metrics.request("operator", "unauthorized");
        let (challenge, description) = match why {
            Unauthenticated::Missing => (WWW_AUTHENTICATE.to_owned(), "A bearer token is required."),
            Unauthenticated::Invalid => {
                tracing::warn!(target: "dtr::operator", "operator API request with an unknown token");
                (
                    format!(r#"{WWW_AUTHENTICATE}, error="invalid_token""#),
                    "The bearer token is not valid.",
                )
            }
        };
        let mut response = problem(StatusCode::UNAUTHORIZED, "unauthorized", description);
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }

    /// Any request under [`PREFIX`]; `body` is read whole by the caller (empty for a GET).
    pub async fn handle(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Response<Body> {
        let token = match self.authenticate(headers) {
            Ok(token) => token,
            Err(why) => return self.refuse(why),
        };
        let rest = path.strip_prefix(PREFIX).unwrap_or_default();
        let segments: Vec<&str> = rest.split('/').skip(1).collect();
        let response = match (segments.as_slice(), method) {
            (["openapi.json"], &Method::GET) => {
                let mut response = crate::http::plain(StatusCode::OK, "");
                *response.body_mut() = crate::http::full(OPENAPI);
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, crate::http::APPLICATION_JSON);
                return response;
            }
            (["openapi.json"], _) => return method_not_allowed("GET"),
            (["processes"], &Method::GET) => self.list(query.unwrap_or_default()).await,
            (["processes"], _) => return method_not_allowed("GET"),
            (["processes", id], &Method::GET) => self.inspect(id).await,
            (["processes", _], _) => return method_not_allowed("GET"),
            (["processes", id, action @ ("cancel" | "deny" | "extend")], &Method::POST) => {
                let id = *id;
                let outcome = match *action {
                    "cancel" => self.cancel(id).await,
                    "deny" => self.deny(id, body).await,
                    _ => self.extend(id, body).await,
                };
                if outcome.status() == StatusCode::OK {
                    tracing::info!(target: "dtr::operator", action, process_id = id, token, "operator action");
                }
                outcome
            }
            (["processes", _, "cancel" | "deny" | "extend"], _) => return method_not_allowed("POST"),
            _ => problem(StatusCode::NOT_FOUND, "not_found", "No such operator API resource."),
        };
        let outcome = match response.status().as_u16() {
            200 => "ok",
            400 => "bad_request",
            404 => "not_found",
            409 => "conflict",
            503 => "store_unavailable",
            _ => "other",
        };
        self.verdicts.metrics.request("operator", outcome);
        response
    }

    async fn find(&self, process_id: &str) -> Result<StoredProcess, Response<Body>> {
        if !plausible_process_id(process_id) {
            return Err(not_found());
        }
        match self.verdicts.records.find_by_process_id(process_id).await {
            Ok(Some(process)) => Ok(process),
            Ok(None) => Err(not_found()),
            Err(e) => Err(store_problem(e)),
        }
    }

    /// `GET /operator/v1/processes/{process_id}`.
    async fn inspect(&self, process_id: &str) -> Response<Body> {
        match self.find(process_id).await {
            Ok(process) => json_no_store(StatusCode::OK, &view(&process.record)),
            Err(response) => response,
        }
    }

    /// `GET /operator/v1/processes?realm&client_id&sub&status&limit&cursor`.
    async fn list(&self, query: &str) -> Response<Body> {
        let query = match ListQuery::parse(query) {
            Ok(query) => query,
            Err(description) => return bad_request(&description),
        };
        let page = if query.sub.is_some() {
            self.list_by_subject(&query).await
        } else {
            self.list_active(&query).await
        };
        match page {
            Ok((processes, next)) => json_no_store(
                StatusCode::OK,
                &json!({
                    "processes": processes,
                    "next_cursor": next.map(|(due, hash)| encode_cursor(due, &hash)),
                }),
            ),
            Err(e) => store_problem(e),
        }
    }

    /// A page of the active queue: at most [`SCAN_BUDGET`] entries examined.
    async fn list_active(&self, query: &ListQuery) -> Result<(Vec<Value>, Option<(u64, String)>), StoreError> {
        let records = &self.verdicts.records;
        let mut found = Vec::new();
        let mut position = query.after.clone();
        let mut examined = 0;
        loop {
            let want = (SCAN_BUDGET - examined).min(SCAN_BATCH);
            let after = position.as_ref().map(|(due, hash)| (*due, hash.as_str()));
            let page = records.active_page(after, want).await?;
            let exhausted = page.len() < want;
            examined += page.len();
            let hashes: Vec<String> = page.iter().map(|(hash, _)| hash.clone()).collect();
            let loaded = records.load_many(&hashes).await?;
            let last = page.len();
            for (i, ((hash, due), process)) in page.into_iter().zip(loaded).enumerate() {
                position = Some((due, hash));
                if let Some(process) = process.filter(|p| query.matches(&p.record)) {
                    found.push(view(&process.record));
                }
                if found.len() == query.limit {
                    let more = if i + 1 < last {
                        true
                    } else if exhausted {
                        false
                    } else {
                        // The page ends with the batch: a cursor only if the queue goes on.
                        let after = position.as_ref().map(|(due, hash)| (*due, hash.as_str()));
                        !records.active_page(after, 1).await?.is_empty()
                    };
                    return Ok((found, position.filter(|_| more)));
                }
            }
            if exhausted {
                return Ok((found, None));
            }
            if examined >= SCAN_BUDGET {
                return Ok((found, position));
            }
        }
    }

    /// A page of one subject's processes, finished ones included, in the order they expire.
    async fn list_by_subject(&self, query: &ListQuery) -> Result<(Vec<Value>, Option<(u64, String)>), StoreError> {
        let sub = query.sub.as_deref().unwrap_or_default();
        let mut found: Vec<StoredProcess> = self.verdicts.records.find_by_subject(sub).await?;
        found.retain(|p| query.matches(&p.record));
        let mut found: Vec<((u64, String), ProcessRecord)> = found
            .into_iter()
            .map(|p| ((p.record.expires_at, p.process_hash.clone()), p.record))
            .filter(|(position, _)| query.after.as_ref().is_none_or(|after| position > after))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let more = found.len() > query.limit;
        found.truncate(query.limit);
        let next = found.last().map(|(position, _)| position.clone()).filter(|_| more);
        Ok((found.iter().map(|(_, record)| view(record)).collect(), next))
    }

    /// `POST /operator/v1/processes/{process_id}/cancel`: as if the RP had cancelled.
    async fn cancel(&self, process_id: &str) -> Response<Body> {
        let process = match self.find(process_id).await {
            Ok(process) => process,
            Err(response) => return response,
        };
        let records = &self.verdicts.records;
        let process_hash = process.process_hash.clone();
        let now = now_ms();
        let changed = records
            .modify(&process_hash, Some(process), |r| {
                if cancel_record(r, now) {
                    Change::Write(true)
                } else {
                    Change::Keep(false)
                }
            })
            .await;
        let record = match changed {
            Ok(Some((true, record))) => record,
            Ok(Some((false, record))) => return not_open(&record, now),
            Ok(None) => return not_found(),
            Err(e) => return store_problem(e),
        };
        let cleanup = async {
            records.unschedule_ping(&process_hash).await?;
            records.retire(&process_hash).await
        };
        if let Err(e) = cleanup.await {
            // The record says cancelled: no ping goes out for it and its expiry emits nothing.
            tracing::warn!(error = %e, "could not take a cancelled process off the queues");
        }
        self.events.emit(Event::Cancelled, &record).await;
        if self.verdicts.revoker.has_operator() {
            let (revoker, ended) = (self.verdicts.revoker.clone(), record.clone());
            tokio::spawn(async move {
                revoker.as_operator(&ended).await;
            });
        }
        json_no_store(StatusCode::OK, &view(&record))
    }

    /// `POST /operator/v1/processes/{process_id}/deny`: as a denying completion webhook.
    async fn deny(&self, process_id: &str, body: &[u8]) -> Response<Body> {
        let denial: Denial = match parse_body(body, Some(Denial::default())) {
            Ok(denial) => denial,
            Err(description) => return bad_request(&description),
        };
        if denial
            .error_description
            .as_ref()
            .is_some_and(|d| d.is_empty() || d.chars().count() > MAX_DESCRIPTION || d.chars().any(char::is_control))
        {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("error_description must be 1 to {MAX_DESCRIPTION} printable characters."),
            );
        }
        let process = match self.find(process_id).await {
            Ok(process) => process,
            Err(response) => return response,
        };
        let now = now_ms();
        match self
            .verdicts
            .apply(Verdict::Denied, denial.error_description.as_deref(), None, process)
            .await
        {
            Ok((true, record)) => json_no_store(StatusCode::OK, &view(&record)),
            Ok((false, record)) => not_open(&record, now),
            Err(e) => store_problem(e),
        }
    }

    /// `POST /operator/v1/processes/{process_id}/extend`: a later expiry, within
    /// `DTR_OPERATOR_MAX_LIFETIME` of the process's start.
    async fn extend(&self, process_id: &str, body: &[u8]) -> Response<Body> {
        let extension: Extension = match parse_body(body, None) {
            Ok(extension) => extension,
            Err(description) => return bad_request(&description),
        };
        let Some(extend_by) = extension.seconds() else {
            return bad_request(&format!("extend_by must be an integer from 1 to {MAX_EXTENSION}."));
        };
        let process = match self.find(process_id).await {
            Ok(process) => process,
            Err(response) => return response,
        };
        let record = &process.record;
        let expires_at = record.expires_at + extend_by * 1000;
        let limit = record.created_at + self.max_lifetime_ms;
        if expires_at > limit {
            let left = limit.saturating_sub(record.expires_at) / 1000;
            return json_no_store(
                StatusCode::CONFLICT,
                &json!({
                    "error": "conflict",
                    "error_description": format!(
                        "A process lives at most {} s from its start (DTR_OPERATOR_MAX_LIFETIME); this one may be extended by {left} s more.",
                        self.max_lifetime_ms / 1000
                    ),
                    "process": view(record),
                }),
            );
        }
        let now = now_ms();
        let process_hash = process.process_hash.clone();
        match self
            .verdicts
            .records
            .extend(&process_hash, Some(process), expires_at, now)
            .await
        {
            Ok(Some((true, record))) => json_no_store(StatusCode::OK, &view(&record)),
            Ok(Some((false, record))) => not_open(&record, now),
            Ok(None) => not_found(),
            Err(e) => store_problem(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries_are_parsed_strictly() {
        let query = ListQuery::parse("realm=r&client_id=c&sub=u%201&status=pending&limit=5").unwrap();
        assert_eq!(query.realm.as_deref(), Some("r"));
        assert_eq!(query.sub.as_deref(), Some("u 1"));
        assert_eq!(query.status, Some(Status::Pending));
        assert_eq!(query.limit, 5);
        assert_eq!(ListQuery::parse("").unwrap().limit, DEFAULT_LIMIT);
        let cursor = encode_cursor(1_700_000_000_000, "abc_-1");
        let query = ListQuery::parse(&format!("cursor={cursor}")).unwrap();
        assert_eq!(query.after, Some((1_700_000_000_000, "abc_-1".to_owned())));
        for bad in [
            "limit=0",
            "limit=101",
            "limit=x",
            "status=open",
            "realm=",
            "realm=a&realm=b",
            "page=2",
            "cursor=%%%",
            "cursor=12345",
            "cursor=.abc",
            "cursor=12a.abc",
            "cursor=1.a%2Fb",
            "cursor=99999999999999999999.abc",
        ] {
            assert!(ListQuery::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn filters_match_every_named_field() {
        let now = 10_000_000;
        let mut record = ProcessRecord::sample(now);
        record.sub = Some("u".into());
        let query = |q: &str| ListQuery::parse(q).unwrap();
        assert!(query("").matches(&record));
        assert!(query("realm=r&client_id=c&sub=u&status=pending").matches(&record));
        for other in ["realm=x", "client_id=x", "sub=x", "status=denied"] {
            assert!(!query(other).matches(&record), "{other}");
        }
    }

    #[test]
    fn a_view_shows_no_secret() {
        let mut record = ProcessRecord::sample(10_000_000);
        record.sealed = "SEALED-GRANT".into();
        record.sid = Some("session-id".into());
        record.client.fingerprint = Some("FINGERPRINT".into());
        let text = view(&record).to_string();
        for secret in [
            "SEALED-GRANT",
            "session-id",
            "FINGERPRINT",
            "deferred_auth_id",
            "refresh",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }

    #[test]
    fn process_ids_outside_the_alphabet_name_nothing() {
        assert!(plausible_process_id("AbC-_09"));
        for bad in ["", "a/b", "a b", "é", &"a".repeat(65)] {
            assert!(!plausible_process_id(bad), "{bad}");
        }
    }
}
