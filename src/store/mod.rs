//! The store holds all DTR state, so replicas stay stateless. It offers a few atomic primitives
//! (single-use takes, compare-and-set, a lease-based due queue); the protocol logic above it is
//! written once and runs the same on Redis and on the embedded store.

mod memory;
mod redis;

use std::time::Duration;

pub use self::memory::MemoryStore;
pub use self::redis::{
    ClientCertificate, RedisOptions, RedisStore, RedisTlsFiles, SentinelTarget, TlsFiles, Topology, SENTINEL_PORT,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time: retryable, 503.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something this version cannot read.
    #[error("store returned unreadable data: {0}")]
    Corrupt(String),
    /// A record kept changing under concurrent writers, so a compare-and-set change of it
    /// did not land: retryable, 503, unless the caller has a better answer (a `slow_down`
    /// strike that did not land still answers `slow_down`).
    #[error("store contended: {0}")]
    Contended(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The configured store. An enum rather than a trait object: two implementations, no boxing of
/// every future on the hot path.
#[derive(Clone)]
pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

/// Dispatches one call to whichever store is configured.
macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Memory(s) => s.$method($($arg),*).await,
            Store::Redis(s) => s.$method($($arg),*).await,
        }
    };
}

impl Store {
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Memory(_) => "embedded",
            Store::Redis(s) => s.kind(),
        }
    }

    /// Prepends the configured namespace; `{…}` hash tags in `key` keep related keys in one
    /// Redis Cluster slot.
    pub fn key(&self, key: &str) -> String {
        match self {
            Store::Memory(_) => key.to_owned(),
            Store::Redis(s) => s.namespaced(key),
        }
    }

    pub async fn get(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        dispatch!(self.get(key))
    }

    pub async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> StoreResult<()> {
        dispatch!(self.put(key, value, ttl))
    }

    /// Stores only if the key does not exist; true when stored.
    pub async fn put_new(&self, key: &str, value: &[u8], ttl: Duration) -> StoreResult<bool> {
        dispatch!(self.put_new(key, value, ttl))
    }

    /// Reads and deletes atomically: of any number of concurrent takers exactly one gets it.
    pub async fn take(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        dispatch!(self.take(key))
    }

    pub async fn delete(&self, key: &str) -> StoreResult<()> {
        dispatch!(self.delete(key))
    }

    /// Replaces the value only if it still equals `expected`; keeps the key's TTL.
    pub async fn replace(&self, key: &str, expected: &[u8], new: &[u8]) -> StoreResult<bool> {
        dispatch!(self.replace(key, expected, new))
    }

    /// Reads `key` and, atomically, when `guard` is not empty and the value holds it right
    /// after its `patch.len()` bytes at `at`, overwrites those bytes with `patch` (its TTL
    /// kept). Returns the value as it was read and whether it was patched; one round trip on
    /// Redis.
    pub async fn get_patching(
        &self,
        key: &str,
        at: usize,
        patch: &[u8],
        guard: &[u8],
    ) -> StoreResult<Option<(Vec<u8>, bool)>> {
        dispatch!(self.get_patching(key, at, patch, guard))
    }

    /// Overwrites the bytes at `at` of an existing value (its TTL kept); a missing key stays
    /// missing.
    pub async fn patch(&self, key: &str, at: usize, bytes: &[u8]) -> StoreResult<()> {
        dispatch!(self.patch(key, at, bytes))
    }

    /// Reads two keys of the same hash slot in one round trip.
    pub async fn get_pair(&self, key: &str, other: &str) -> StoreResult<(Option<Vec<u8>>, Option<Vec<u8>>)> {
        dispatch!(self.get_pair(key, other))
    }

    /// Adds `member` to the set at `key`; the set lives at least `ttl` from now.
    pub async fn set_add(&self, key: &str, member: &str, ttl: Duration) -> StoreResult<()> {
        dispatch!(self.set_add(key, member, ttl))
    }

    /// Adds `member` to the index at `key` (a small hash on Redis, cheaper than a set); the
    /// index lives at least `ttl` from now.
    pub async fn index_add(&self, key: &str, member: &str, ttl: Duration) -> StoreResult<()> {
        dispatch!(self.index_add(key, member, ttl))
    }

    pub async fn index_members(&self, key: &str) -> StoreResult<Vec<String>> {
        dispatch!(self.index_members(key))
    }

    pub async fn index_remove(&self, key: &str, member: &str) -> StoreResult<()> {
        dispatch!(self.index_remove(key, member))
    }

    pub async fn set_members(&self, key: &str) -> StoreResult<Vec<String>> {
        dispatch!(self.set_members(key))
    }

    pub async fn set_remove(&self, key: &str, member: &str) -> StoreResult<()> {
        dispatch!(self.set_remove(key, member))
    }

    /// Puts `member` in the due queue at `queue`, due at `due_ms` (replacing an earlier due).
    pub async fn schedule(&self, queue: &str, member: &str, due_ms: u64) -> StoreResult<()> {
        dispatch!(self.schedule(queue, member, due_ms))
    }

    /// Claims up to `limit` members due at `now_ms`: each is pushed `lease` into the future
    /// before it is returned, so a replica that dies mid-work loses nothing (the member falls
    /// due again when the lease runs out) and two replicas never work the same member at once.
    pub async fn claim_due(&self, queue: &str, now_ms: u64, lease: Duration, limit: usize) -> StoreResult<Vec<String>> {
        dispatch!(self.claim_due(queue, now_ms, lease, limit))
    }

    pub async fn unschedule(&self, queue: &str, member: &str) -> StoreResult<()> {
        dispatch!(self.unschedule(queue, member))
    }

    /// Up to `limit` members of `queue` with their due times, in (due, member) order, strictly
    /// after the position `after` (from the start without it). A read only: nothing is leased.
    pub async fn due_page(
        &self,
        queue: &str,
        after: Option<(u64, &str)>,
        limit: usize,
    ) -> StoreResult<Vec<(String, u64)>> {
        let mut page = Vec::new();
        let (from, mut offset) = (after.map_or(0, |(due, _)| due), 0);
        // Members due at the cursor's own time and not after it in name order are skipped;
        // several members can share one due time, so the skip may take more than one batch.
        loop {
            let batch = dispatch!(self.due_from(queue, from, offset, limit))?;
            let full = batch.len() == limit;
            offset += batch.len();
            for (member, due) in batch {
                let past = after.is_some_and(|(d, m)| due < d || (due == d && member.as_str() <= m));
                if !past && page.len() < limit {
                    page.push((member, due));
                }
            }
            if page.len() == limit || !full {
                return Ok(page);
            }
        }
    }

    /// Sets the time to live of an existing key (value or set); false when there is none.
    pub async fn expire(&self, key: &str, ttl: Duration) -> StoreResult<bool> {
        dispatch!(self.expire(key, ttl))
    }

    /// How many members of `queue` fall due after `after_ms`.
    pub async fn count_due_after(&self, queue: &str, after_ms: u64) -> StoreResult<u64> {
        dispatch!(self.count_due_after(queue, after_ms))
    }

    /// A cheap liveness check of the store.
    pub async fn ping(&self) -> StoreResult<()> {
        dispatch!(self.ping())
    }
}

#[doc(hidden)]
pub mod contract {
    //! The behaviour both stores must share; run against the embedded store here and against
    //! a real redis-server in `tests/`.
    use super::*;

    pub async fn exercise(store: &Store, ns: &str) {
        let k = |s: &str| store.key(&format!("{ns}:{s}"));
        let ttl = Duration::from_secs(30);

        assert_eq!(store.get(&k("missing")).await.unwrap(), None);
        store.put(&k("a"), b"1", ttl).await.unwrap();
        assert_eq!(store.get(&k("a")).await.unwrap().as_deref(), Some(&b"1"[..]));
        assert!(!store.put_new(&k("a"), b"2", ttl).await.unwrap());
        assert!(store.put_new(&k("b"), b"2", ttl).await.unwrap());

        assert_eq!(store.take(&k("a")).await.unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(store.take(&k("a")).await.unwrap(), None);

        assert!(store.replace(&k("b"), b"2", b"3").await.unwrap());
        assert!(!store.replace(&k("b"), b"2", b"4").await.unwrap());
        assert!(!store.replace(&k("none"), b"", b"4").await.unwrap());
        assert_eq!(store.get(&k("b")).await.unwrap().as_deref(), Some(&b"3"[..]));
        store.delete(&k("b")).await.unwrap();
        assert_eq!(store.get(&k("b")).await.unwrap(), None);

        store.put(&k("rec"), b"r", ttl).await.unwrap();
        let (rec, other) = store.get_pair(&k("rec"), &k("touch")).await.unwrap();
        assert_eq!((rec.as_deref(), other), (Some(&b"r"[..]), None));
        store.put(&k("touch"), b"1000", ttl).await.unwrap();
        let (_, other) = store.get_pair(&k("rec"), &k("touch")).await.unwrap();
        assert_eq!(other.as_deref(), Some(&b"1000"[..]));
        let (rec, _) = store.get_pair(&k("gone"), &k("touch")).await.unwrap();
        assert_eq!(rec, None);

        store.put(&k("patched"), b"v0000xy", ttl).await.unwrap();
        let read = store.get_patching(&k("patched"), 1, b"1234", b"xz").await.unwrap();
        assert_eq!(read, Some((b"v0000xy".to_vec(), false)), "a guard that does not match");
        let read = store.get_patching(&k("patched"), 1, b"1234", b"").await.unwrap();
        assert_eq!(read, Some((b"v0000xy".to_vec(), false)), "an empty guard never matches");
        let read = store.get_patching(&k("patched"), 1, b"1234", b"xy").await.unwrap();
        assert_eq!(read, Some((b"v0000xy".to_vec(), true)), "read as it was before");
        assert_eq!(
            store.get(&k("patched")).await.unwrap().as_deref(),
            Some(&b"v1234xy"[..])
        );
        let read = store.get_patching(&k("patched"), 1, b"123", b"4x").await.unwrap();
        assert_eq!(
            read,
            Some((b"v1234xy".to_vec(), true)),
            "the guard right after the patch"
        );
        let read = store.get_patching(&k("patched"), 1, b"1234", b"xyz").await.unwrap();
        assert_eq!(read, Some((b"v1234xy".to_vec(), false)), "a guard past the end");
        let read = store.get_patching(&k("patched"), 90, b"9", b"x").await.unwrap();
        assert_eq!(read, Some((b"v1234xy".to_vec(), false)), "a patch past the end");
        assert_eq!(
            store.get(&k("patched")).await.unwrap().as_deref(),
            Some(&b"v1234xy"[..])
        );
        assert_eq!(store.get_patching(&k("unpatched"), 1, b"1", b"v").await.unwrap(), None);
        store.patch(&k("patched"), 2, b"77").await.unwrap();
        assert_eq!(
            store.get(&k("patched")).await.unwrap().as_deref(),
            Some(&b"v1774xy"[..])
        );
        store.patch(&k("unpatched"), 0, b"x").await.unwrap();
        assert_eq!(
            store.get(&k("unpatched")).await.unwrap(),
            None,
            "a patch creates nothing"
        );

        store.set_add(&k("set"), "x", ttl).await.unwrap();
        store.set_add(&k("set"), "y", ttl).await.unwrap();
        let mut members = store.set_members(&k("set")).await.unwrap();
        members.sort();
        assert_eq!(members, vec!["x", "y"]);
        store.set_remove(&k("set"), "x").await.unwrap();
        assert_eq!(store.set_members(&k("set")).await.unwrap(), vec!["y"]);

        store.index_add(&k("index"), "x", ttl).await.unwrap();
        store.index_add(&k("index"), "y", ttl).await.unwrap();
        store.index_add(&k("index"), "x", ttl).await.unwrap();
        let mut members = store.index_members(&k("index")).await.unwrap();
        members.sort();
        assert_eq!(members, vec!["x", "y"]);
        store.index_remove(&k("index"), "x").await.unwrap();
        assert_eq!(store.index_members(&k("index")).await.unwrap(), vec!["y"]);
        assert!(store.index_members(&k("no-index")).await.unwrap().is_empty());

        let q = k("queue");
        store.schedule(&q, "m1", 100).await.unwrap();
        store.schedule(&q, "m2", 200).await.unwrap();
        store.schedule(&q, "m3", 10_000).await.unwrap();
        assert_eq!(store.count_due_after(&q, 150).await.unwrap(), 2);
        let mut due = store.claim_due(&q, 250, Duration::from_secs(5), 10).await.unwrap();
        due.sort();
        assert_eq!(due, vec!["m1", "m2"]);
        // Leased: not due again until the lease runs out.
        assert!(store
            .claim_due(&q, 300, Duration::from_secs(5), 10)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            store
                .claim_due(&q, 5_300, Duration::from_secs(5), 1)
                .await
                .unwrap()
                .len(),
            1
        );
        let page = store.due_page(&q, None, 2).await.unwrap();
        assert_eq!(page.len(), 2);
        let (last, due) = page[1].clone();
        let rest = store.due_page(&q, Some((due, &last)), 10).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert!(!page.iter().any(|(m, _)| *m == rest[0].0));
        store.schedule(&k("ties"), "b", 7).await.unwrap();
        store.schedule(&k("ties"), "a", 7).await.unwrap();
        store.schedule(&k("ties"), "c", 7).await.unwrap();
        let tied = store.due_page(&k("ties"), Some((7, "a")), 1).await.unwrap();
        assert_eq!(tied, vec![("b".to_owned(), 7)]);
        let tied = store.due_page(&k("ties"), Some((7, "b")), 5).await.unwrap();
        assert_eq!(tied, vec![("c".to_owned(), 7)]);
        store.unschedule(&q, "m1").await.unwrap();
        store.unschedule(&q, "m2").await.unwrap();
        assert_eq!(
            store
                .claim_due(&q, 9_999, Duration::from_secs(5), 10)
                .await
                .unwrap()
                .len(),
            0
        );

        store.put(&k("short"), b"x", Duration::from_millis(50)).await.unwrap();
        store.put(&k("longer"), b"x", Duration::from_millis(50)).await.unwrap();
        assert!(store.expire(&k("longer"), ttl).await.unwrap());
        assert!(!store.expire(&k("absent"), ttl).await.unwrap());
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(store.get(&k("short")).await.unwrap(), None);
        assert!(store.get(&k("longer")).await.unwrap().is_some());
        store.ping().await.unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn embedded_store_keeps_the_contract() {
        let store = Store::Memory(MemoryStore::new());
        contract::exercise(&store, "t").await;
    }
}
