//! [`Records`]: where each record lives in the store, sealed and serialised.

use std::time::Duration;

use serde::Serialize;

use super::encoding::{self, STAMP_AT};
use super::{AuthorizationRecord, CodeRecord, HeldSecrets, ProcessRecord, Sealed, EXPIRED_GRACE};
use crate::crypto::{HashKey, Sealer};
use crate::store::{Store, StoreError, StoreResult};

/// Lifecycle events to send to the verification service.
const EVENT_QUEUE: &str = "{q}:events";
/// Every live process, due at its expiry: the pending gauge and expiry events.
const ACTIVE_QUEUE: &str = "{q}:active";
/// The due queue of pings to send.
const PING_QUEUE: &str = "{q}:pings";
// Key names. Hashes are base64url, which never contains `{`, `}` or `:`; only `Records` builds
// them, so a key's derivation is written once.
fn authorization_key(hash: &str) -> String {
    format!("auth:{hash}")
}

fn code_key(hash: &str) -> String {
    format!("code:{hash}")
}

fn process_key(process_hash: &str) -> String {
    ["{p:", process_hash, "}:rec"].concat()
}

/// The sealing context of a process's `interaction_uri` (not a key: nothing is stored there).
fn interaction_context(process_hash: &str) -> String {
    ["{p:", process_hash, "}:interaction"].concat()
}

fn poll_key(process_hash: &str) -> String {
    ["{p:", process_hash, "}:poll"].concat()
}

fn process_id_key(process_id: &str) -> String {
    format!("pid:{process_id}")
}

// The `sub` and `sid` indexes: small hashes (`subh:`, `sidh:`); earlier versions wrote sets
// (`sub:`, `sid:`), still read until their processes are gone.
fn subject_key(hash: &str) -> String {
    format!("subh:{hash}")
}

fn session_key(hash: &str) -> String {
    format!("sidh:{hash}")
}

fn legacy_subject_key(hash: &str) -> String {
    format!("sub:{hash}")
}

fn legacy_session_key(hash: &str) -> String {
    format!("sid:{hash}")
}

fn event_key(event_id: &str) -> String {
    format!("evt:{event_id}")
}

fn held_key(hash: &str) -> String {
    format!("hold:{hash}")
}

fn webhook_key(hash: &str) -> String {
    format!("wh:{hash}")
}

/// Result of a change function given to [`Records::modify`].
pub enum Change<T> {
    /// Write the modified record, then return the value.
    Write(T),
    /// Leave the record as it was.
    Keep(T),
}

/// A process record as loaded, with the bytes it was loaded from (for compare-and-set).
pub struct StoredProcess {
    pub process_hash: String,
    pub record: ProcessRecord,
    raw: Vec<u8>,
}

impl StoredProcess {
    /// A record not tied to stored bytes (for reading its sealed secrets).
    pub fn detached(process_hash: &str, record: ProcessRecord) -> Self {
        Self {
            process_hash: process_hash.to_owned(),
            record,
            raw: Vec::new(),
        }
    }
}

/// A `deferred_code` taken from the store, with what it takes to put it back.
pub struct TakenCode {
    /// The record, its `upstream_code` opened.
    pub record: CodeRecord,
    key: String,
    raw: Vec<u8>,
}

/// Why held secrets could not be read back (a sealing key rotated away, or corruption).
#[derive(Debug, thiserror::Error)]
#[error("cannot open sealed secrets: {0}")]
pub struct UnsealError(String);

/// A process as a poll reads it.
pub struct PolledProcess {
    pub process: Option<StoredProcess>,
    /// When its owner last polled it (before this poll).
    pub last_poll: Option<u64>,
    /// Whether the read already moved the poll clock to this poll (the caller presented the
    /// secret bound to the process); otherwise [`Records::stamp_poll`] does, after the checks.
    pub stamped: bool,
}

/// The repository of everything the proxy stores.
#[derive(Clone)]
pub struct Records {
    store: Store,
    hash_key: HashKey,
    sealer: Sealer,
}

fn decode(raw: &[u8]) -> StoreResult<ProcessRecord> {
    decode_polled(raw).map(|(record, _)| record)
}

/// A process record and, for the current format, its poll clock.
fn decode_polled(raw: &[u8]) -> StoreResult<(ProcessRecord, Option<u64>)> {
    encoding::decode(raw).map_err(|e| StoreError::Corrupt(format!("process record: {e}")))
}

fn encode(record: &impl Serialize) -> Vec<u8> {
    // Serialising plain data with string keys cannot fail.
    serde_json::to_vec(record).unwrap_or_default()
}

impl Records {
    pub fn new(store: Store, hash_key: HashKey, sealer: Sealer) -> Self {
        Self {
            store,
            hash_key,
            sealer,
        }
    }

    /// The store underneath, for health checks and housekeeping.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A short keyed tag of a secret for log lines.
    pub fn log_tag(&self, secret: &str) -> String {
        self.hash_key.log_tag(secret)
    }

    // --- authorization requests in flight (step 1 → step 2) ---

    pub async fn put_authorization(
        &self,
        handle: &str,
        record: &AuthorizationRecord,
        ttl: Duration,
    ) -> StoreResult<()> {
        let key = self
            .store
            .key(&authorization_key(&self.hash_key.hash("handle", handle)));
        self.store.put(&key, &encode(record), ttl).await
    }

    /// Takes (consumes) the authorization request behind a handle.
    pub async fn take_authorization(&self, handle: &str) -> StoreResult<Option<AuthorizationRecord>> {
        let key = self
            .store
            .key(&authorization_key(&self.hash_key.hash("handle", handle)));
        match self.store.take(&key).await? {
            Some(raw) => serde_json::from_slice(&raw)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("authorization record: {e}"))),
            None => Ok(None),
        }
    }

    // --- deferred codes (step 2 → step 3) ---

    /// Stores a `deferred_code`; the OP's code in `record.upstream_code` is sealed to the key.
    pub async fn put_code(&self, deferred_code: &str, mut record: CodeRecord, ttl: Duration) -> StoreResult<()> {
        let key = self.code_key(deferred_code);
        record.upstream_code = self.sealer.seal(record.upstream_code.as_bytes(), &key);
        self.store.put(&key, &encode(&record), ttl).await
    }

    /// Takes a `deferred_code` (single use), its `upstream_code` opened.
    pub async fn take_code(&self, deferred_code: &str) -> StoreResult<Option<TakenCode>> {
        let key = self.code_key(deferred_code);
        let Some(raw) = self.store.take(&key).await? else {
            return Ok(None);
        };
        let mut record: CodeRecord =
            serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt(format!("deferred code record: {e}")))?;
        let upstream_code = self
            .sealer
            .open(&record.upstream_code, &key)
            .map_err(|e| StoreError::Corrupt(format!("deferred code record: {e}")))?;
        record.upstream_code =
            String::from_utf8(upstream_code).map_err(|_| StoreError::Corrupt("deferred code record".into()))?;
        Ok(Some(TakenCode { record, key, raw }))
    }

    /// Puts a taken code back for the rest of its lifetime, so a retry can succeed.
    pub async fn restore_code(&self, taken: &TakenCode, left: Duration) -> StoreResult<()> {
        if !left.is_zero() {
            self.store.put_new(&taken.key, &taken.raw, left).await?;
        }
        Ok(())
    }

    fn code_key(&self, deferred_code: &str) -> String {
        self.store
            .key(&code_key(&self.hash_key.hash("deferred_code", deferred_code)))
    }

    // --- processes (step 3 onwards) ---

    pub fn process_hash(&self, deferred_auth_id: &str) -> String {
        self.hash_key.hash("deferred_auth_id", deferred_auth_id)
    }

    // Indexed without the realm: the verification service may not know it; callers filter.
    fn subject_hash(&self, sub: &str) -> String {
        self.hash_key.hash("sub", sub)
    }

    fn session_hash(&self, sid: &str) -> String {
        self.hash_key.hash("sid", sid)
    }

    pub fn seal(&self, secrets: &HeldSecrets, process_hash: &str) -> Sealed {
        let (kid, raw) = self.sealer.seal_binary(&encode(secrets), &process_key(process_hash));
        Sealed::binary(kid, &raw)
    }

    pub fn open(&self, process: &StoredProcess) -> Result<HeldSecrets, UnsealError> {
        let plain = process
            .record
            .sealed
            .open(&self.sealer, &process_key(&process.process_hash))
            .map_err(|e| UnsealError(e.to_string()))?;
        serde_json::from_slice(&plain).map_err(|e| UnsealError(e.to_string()))
    }

    /// Seals an `interaction_uri` for a process's record. The URL may carry the end-user's
    /// session at the verification service, so it is kept like the held secrets, under its own
    /// context (it cannot stand in for them, nor move to another process).
    pub fn seal_interaction(&self, interaction_uri: &str, process_hash: &str) -> String {
        self.sealer
            .seal(interaction_uri.as_bytes(), &interaction_context(process_hash))
    }

    /// The process's `interaction_uri`, if one is set.
    pub fn open_interaction(&self, process: &StoredProcess) -> Result<Option<String>, UnsealError> {
        let Some(sealed) = &process.record.interaction else {
            return Ok(None);
        };
        let plain = self
            .sealer
            .open(sealed, &interaction_context(&process.process_hash))
            .map_err(|e| UnsealError(e.to_string()))?;
        String::from_utf8(plain)
            .map(Some)
            .map_err(|e| UnsealError(e.to_string()))
    }

    /// Stores a new process and its lookup entries; returns it as stored.
    pub async fn create(&self, process_hash: &str, record: &ProcessRecord) -> StoreResult<StoredProcess> {
        let store = &self.store;
        let ttl = Duration::from_millis(record.expires_at.saturating_sub(record.created_at)) + EXPIRED_GRACE;
        let raw = encoding::encode(record, None);
        store.put(&store.key(&process_key(process_hash)), &raw, ttl).await?;
        store
            .put(
                &store.key(&process_id_key(&record.process_id)),
                process_hash.as_bytes(),
                ttl,
            )
            .await?;
        if let Some(sub) = &record.sub {
            let key = store.key(&subject_key(&self.subject_hash(sub)));
            store.index_add(&key, process_hash, ttl).await?;
        }
        if let Some(sid) = &record.sid {
            let key = store.key(&session_key(&self.session_hash(sid)));
            store.index_add(&key, process_hash, ttl).await?;
        }
        store
            .schedule(&store.key(ACTIVE_QUEUE), process_hash, record.expires_at)
            .await?;
        Ok(StoredProcess {
            process_hash: process_hash.to_owned(),
            record: record.clone(),
            raw,
        })
    }

    /// A process and when it was last polled by its owner, in one store round trip. Only an
    /// authenticated poll may move the poll clock, so someone holding a stolen id cannot make
    /// its owner's polls look too fast: the read moves it to `now_ms` only when `fingerprint`
    /// (of the secret the poll presents) is the one bound to the process, `certificate` (the
    /// thumbprint of the poll's client certificate) the one it is bound to, if any, and the
    /// process is bound to no DPoP key; otherwise [`Self::stamp_poll`] does once the checks
    /// passed. A record of the earlier format costs a second read (its clock is a key of its
    /// own).
    pub async fn load_for_poll(
        &self,
        process_hash: &str,
        fingerprint: Option<&str>,
        certificate: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<PolledProcess> {
        let store = &self.store;
        let guard = fingerprint
            .map(|fingerprint| encoding::guard(fingerprint, certificate))
            .unwrap_or_default();
        let stamp_ms = encoding::poll_stamp(now_ms);
        let stamp = encoding::stamp(stamp_ms);
        let read = store
            .get_patching(&store.key(&process_key(process_hash)), STAMP_AT, &stamp, &guard)
            .await?;
        let Some((mut raw, stamped)) = read else {
            return Ok(PolledProcess {
                process: None,
                last_poll: None,
                stamped: false,
            });
        };
        let (record, mut last_poll) = decode_polled(&raw)?;
        if encoding::is_format_1(&raw) {
            let clock = store.get(&store.key(&poll_key(process_hash))).await?;
            last_poll = clock.and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok());
        }
        if stamped && last_poll == Some(stamp_ms) {
            // This read was sent twice and the first run's stamp is what the second read: the
            // clock before this poll is lost, so it does not count as too fast.
            last_poll = None;
        }
        if stamped {
            // The stored bytes now carry this poll: keep them for a compare-and-set.
            raw[STAMP_AT..STAMP_AT + stamp.len()].copy_from_slice(&stamp);
        }
        Ok(PolledProcess {
            process: Some(StoredProcess {
                process_hash: process_hash.to_owned(),
                record,
                raw,
            }),
            last_poll,
            stamped,
        })
    }

    /// Notes an authenticated poll at `now_ms`. The reply is not waited for (the answer does
    /// not depend on it), but the write is handed to the store before this returns — polled
    /// once, which queues it on the connection — so the same RP's next poll, on any replica
    /// sharing the connection's order, finds it. In memory it is simply done.
    pub async fn stamp_poll(&self, process: &mut StoredProcess, now_ms: u64) {
        let store = self.store.clone();
        let stamp_ms = encoding::poll_stamp(now_ms);
        let stamp = encoding::stamp(stamp_ms);
        let legacy = encoding::is_format_1(&process.raw);
        if !legacy && process.raw.len() >= STAMP_AT + stamp.len() {
            process.raw[STAMP_AT..STAMP_AT + stamp.len()].copy_from_slice(&stamp);
        }
        let process_hash = process.process_hash.clone();
        let mut write = Box::pin(async move {
            let written = if legacy {
                let key = store.key(&poll_key(&process_hash));
                store.put(&key, now_ms.to_string().as_bytes(), EXPIRED_GRACE).await
            } else {
                let key = store.key(&process_key(&process_hash));
                store.patch(&key, STAMP_AT, &stamp).await
            };
            if let Err(e) = written {
                tracing::debug!(error = %e, "could not note a poll");
            }
        });
        let first =
            std::future::poll_fn(|cx| std::task::Poll::Ready(std::future::Future::poll(write.as_mut(), cx))).await;
        if first.is_pending() {
            tokio::spawn(write);
        }
    }

    pub async fn load(&self, process_hash: &str) -> StoreResult<Option<StoredProcess>> {
        let store = &self.store;
        match store.get(&store.key(&process_key(process_hash))).await? {
            Some(raw) => Ok(Some(StoredProcess {
                process_hash: process_hash.to_owned(),
                record: decode(&raw)?,
                raw,
            })),
            None => Ok(None),
        }
    }

    /// Applies `change` atomically (compare-and-set, retried on a concurrent write). Starts
    /// from `loaded` when given, saving a read. `None` when the record is gone.
    pub async fn modify<T>(
        &self,
        process_hash: &str,
        mut loaded: Option<StoredProcess>,
        mut change: impl FnMut(&mut ProcessRecord) -> Change<T>,
    ) -> StoreResult<Option<(T, ProcessRecord)>> {
        let key = self.store.key(&process_key(process_hash));
        for _ in 0..8 {
            let current = match loaded.take() {
                Some(current) => current,
                None => match self.load(process_hash).await? {
                    Some(current) => current,
                    None => return Ok(None),
                },
            };
            let mut record = current.record.clone();
            match change(&mut record) {
                Change::Keep(value) => return Ok(Some((value, current.record))),
                Change::Write(value) => {
                    // The poll clock stays as it is (a format 1 record's is a key of its own).
                    let last_poll = encoding::clock(&current.raw);
                    if self
                        .store
                        .replace(&key, &current.raw, &encoding::encode(&record, last_poll))
                        .await?
                    {
                        return Ok(Some((value, record)));
                    }
                }
            }
        }
        Err(StoreError::Contended(
            "process record kept changing under concurrent writers".into(),
        ))
    }

    pub async fn find_by_process_id(&self, process_id: &str) -> StoreResult<Option<StoredProcess>> {
        let store = &self.store;
        let Some(hash) = store.get(&store.key(&process_id_key(process_id))).await? else {
            return Ok(None);
        };
        let hash = String::from_utf8(hash).map_err(|_| StoreError::Corrupt("process index".into()))?;
        self.load(&hash).await
    }

    pub async fn find_by_subject(&self, sub: &str) -> StoreResult<Vec<StoredProcess>> {
        let hash = self.subject_hash(sub);
        self.load_members(&subject_key(&hash), &legacy_subject_key(&hash)).await
    }

    pub async fn find_by_session(&self, sid: &str) -> StoreResult<Vec<StoredProcess>> {
        let hash = self.session_hash(sid);
        self.load_members(&session_key(&hash), &legacy_session_key(&hash)).await
    }

    /// The processes of an index, and of the set an earlier version kept for it.
    async fn load_members(&self, index: &str, legacy: &str) -> StoreResult<Vec<StoredProcess>> {
        let (index, legacy) = (self.store.key(index), self.store.key(legacy));
        let (members, legacy_members) = tokio::join!(self.store.index_members(&index), self.store.set_members(&legacy));
        let mut found = Vec::new();
        for (hash, in_legacy) in members?
            .into_iter()
            .map(|h| (h, false))
            .chain(legacy_members?.into_iter().map(|h| (h, true)))
        {
            match self.load(&hash).await? {
                Some(process) if !found.iter().any(|p: &StoredProcess| p.process_hash == hash) => found.push(process),
                Some(_) => {}
                // The process expired; keep the index tidy.
                None if in_legacy => self.store.set_remove(&legacy, &hash).await?,
                None => self.store.index_remove(&index, &hash).await?,
            }
        }
        Ok(found)
    }

    // --- the due queues: pings to send, processes to expire ---

    pub async fn schedule_ping(&self, process_hash: &str, due_ms: u64) -> StoreResult<()> {
        self.store
            .schedule(&self.store.key(PING_QUEUE), process_hash, due_ms)
            .await
    }

    pub async fn unschedule_ping(&self, process_hash: &str) -> StoreResult<()> {
        self.store.unschedule(&self.store.key(PING_QUEUE), process_hash).await
    }

    /// Pings due at `now_ms`, leased to this replica for `lease`.
    pub async fn claim_due_pings(&self, now_ms: u64, lease: Duration, limit: usize) -> StoreResult<Vec<String>> {
        self.store
            .claim_due(&self.store.key(PING_QUEUE), now_ms, lease, limit)
            .await
    }

    /// Processes whose lifetime is over at `now_ms`, leased to this replica for `lease`.
    pub async fn claim_expired(&self, now_ms: u64, lease: Duration, limit: usize) -> StoreResult<Vec<String>> {
        self.store
            .claim_due(&self.store.key(ACTIVE_QUEUE), now_ms, lease, limit)
            .await
    }

    /// Puts a process back on the active queue, due at its (new) expiry.
    pub async fn keep_active(&self, process_hash: &str, expires_at: u64) -> StoreResult<()> {
        self.store
            .schedule(&self.store.key(ACTIVE_QUEUE), process_hash, expires_at)
            .await
    }

    /// Takes a finished process off the active queue (the pending gauge and expiry events).
    pub async fn retire(&self, process_hash: &str) -> StoreResult<()> {
        self.store.unschedule(&self.store.key(ACTIVE_QUEUE), process_hash).await
    }

    /// A page of the active queue (every process not yet finished, and denied ones their RP
    /// has not heard of yet), in the order they fall due, after the position `after`:
    /// `(process_hash, due)`. Nothing is leased or changed.
    pub async fn active_page(&self, after: Option<(u64, &str)>, limit: usize) -> StoreResult<Vec<(String, u64)>> {
        self.store.due_page(&self.store.key(ACTIVE_QUEUE), after, limit).await
    }

    /// Several processes at once (in parallel; each lives in its own slot on Cluster), in the
    /// order given; `None` for those gone.
    pub async fn load_many(&self, process_hashes: &[String]) -> StoreResult<Vec<Option<StoredProcess>>> {
        futures_util::future::join_all(process_hashes.iter().map(|hash| self.load(hash)))
            .await
            .into_iter()
            .collect()
    }

    /// Moves an open process's expiry to `expires_at` (later only): its record, its lookup
    /// entries and its place on the active queue live on accordingly. `None` when the
    /// process is gone; `Some(false)` when it is no longer open or already lives that long.
    pub async fn extend(
        &self,
        process_hash: &str,
        loaded: Option<StoredProcess>,
        expires_at: u64,
        now_ms: u64,
    ) -> StoreResult<Option<(bool, ProcessRecord)>> {
        let changed = self
            .modify(process_hash, loaded, |r| {
                let open = matches!(r.status, super::Status::Pending | super::Status::Approved);
                if !open || now_ms >= r.expires_at || expires_at <= r.expires_at {
                    return Change::Keep(false);
                }
                r.expires_at = expires_at;
                Change::Write(true)
            })
            .await?;
        let Some((true, record)) = changed else {
            return Ok(changed);
        };
        let store = &self.store;
        let ttl = Duration::from_millis(expires_at.saturating_sub(now_ms)) + EXPIRED_GRACE;
        store.expire(&store.key(&process_key(process_hash)), ttl).await?;
        store
            .expire(&store.key(&process_id_key(&record.process_id)), ttl)
            .await?;
        if let Some(sub) = &record.sub {
            let key = store.key(&subject_key(&self.subject_hash(sub)));
            store.index_add(&key, process_hash, ttl).await?;
        }
        if let Some(sid) = &record.sid {
            let key = store.key(&session_key(&self.session_hash(sid)));
            store.index_add(&key, process_hash, ttl).await?;
        }
        self.keep_active(process_hash, expires_at).await?;
        Ok(Some((true, record)))
    }

    /// Live processes at `now_ms`.
    pub async fn count_active(&self, now_ms: u64) -> StoreResult<u64> {
        self.store.count_due_after(&self.store.key(ACTIVE_QUEUE), now_ms).await
    }

    // --- lifecycle events on their way to the verification service ---

    /// Stores an event and puts it on the due queue, due at once.
    pub async fn enqueue_event(&self, event_id: &str, event: &[u8], keep: Duration, now_ms: u64) -> StoreResult<()> {
        self.store
            .put(&self.store.key(&event_key(event_id)), event, keep)
            .await?;
        self.schedule_event(event_id, now_ms).await
    }

    pub async fn schedule_event(&self, event_id: &str, due_ms: u64) -> StoreResult<()> {
        self.store
            .schedule(&self.store.key(EVENT_QUEUE), event_id, due_ms)
            .await
    }

    /// Events due at `now_ms`, leased to this replica for `lease`.
    pub async fn claim_due_events(&self, now_ms: u64, lease: Duration, limit: usize) -> StoreResult<Vec<String>> {
        self.store
            .claim_due(&self.store.key(EVENT_QUEUE), now_ms, lease, limit)
            .await
    }

    pub async fn load_event(&self, event_id: &str) -> StoreResult<Option<Vec<u8>>> {
        self.store.get(&self.store.key(&event_key(event_id))).await
    }

    pub async fn replace_event(&self, event_id: &str, event: &[u8], keep: Duration) -> StoreResult<()> {
        self.store.put(&self.store.key(&event_key(event_id)), event, keep).await
    }

    /// Done with an event (delivered or dead-lettered).
    pub async fn drop_event(&self, event_id: &str) -> StoreResult<()> {
        self.store.unschedule(&self.store.key(EVENT_QUEUE), event_id).await?;
        self.store.delete(&self.store.key(&event_key(event_id))).await
    }

    // --- outcomes that arrived before their process ---

    fn held_outcome_key(&self, kind: &str, value: &str, client_id: Option<&str>) -> String {
        let selector = format!("{kind}\0{value}\0{}", client_id.unwrap_or("\0any"));
        self.store
            .key(&held_key(&self.hash_key.hash("held-outcome", &selector)))
    }

    /// Keeps an outcome for the process of `kind` (`sub` or `sid`) = `value` of `client_id`
    /// (`None`: any client) that the RP has not created yet; a later outcome replaces it.
    pub async fn hold_outcome(
        &self,
        kind: &str,
        value: &str,
        client_id: Option<&str>,
        outcome: &[u8],
        ttl: Duration,
    ) -> StoreResult<()> {
        self.store
            .put(&self.held_outcome_key(kind, value, client_id), outcome, ttl)
            .await
    }

    /// Takes (consumes) a held outcome.
    pub async fn take_held_outcome(
        &self,
        kind: &str,
        value: &str,
        client_id: Option<&str>,
    ) -> StoreResult<Option<Vec<u8>>> {
        self.store.take(&self.held_outcome_key(kind, value, client_id)).await
    }

    // --- completion webhook ids (idempotency) ---

    /// The answer given to an earlier delivery of this webhook id, if any.
    pub async fn webhook_answer(&self, webhook_id: &str) -> StoreResult<Option<Vec<u8>>> {
        self.store.get(&self.webhook_key(webhook_id)).await
    }

    pub async fn remember_webhook(&self, webhook_id: &str, answer: &[u8], ttl: Duration) -> StoreResult<()> {
        self.store.put(&self.webhook_key(webhook_id), answer, ttl).await
    }

    fn webhook_key(&self, webhook_id: &str) -> String {
        self.store
            .key(&webhook_key(&self.hash_key.hash("webhook-id", webhook_id)))
    }
}
