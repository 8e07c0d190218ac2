//! The embedded store: everything in one process's memory. For a single replica (local
//! development, small installations); state dies with the process.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::StoreResult;

#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    values: HashMap<String, Entry<Vec<u8>>>,
    sets: HashMap<String, Entry<HashSet<String>>>,
    queues: HashMap<String, Queue>,
}

struct Entry<T> {
    value: T,
    expires_at: Instant,
}

#[derive(Default)]
struct Queue {
    by_due: BTreeSet<(u64, String)>,
    due_of: HashMap<String, u64>,
}

impl Queue {
    fn schedule(&mut self, member: &str, due_ms: u64) {
        if let Some(old) = self.due_of.insert(member.to_owned(), due_ms) {
            self.by_due.remove(&(old, member.to_owned()));
        }
        self.by_due.insert((due_ms, member.to_owned()));
    }

    fn remove(&mut self, member: &str) {
        if let Some(old) = self.due_of.remove(member) {
            self.by_due.remove(&(old, member.to_owned()));
        }
    }
}

fn live<'a, T>(map: &'a mut HashMap<String, Entry<T>>, key: &str, now: Instant) -> Option<&'a mut Entry<T>> {
    if map.get(key).is_some_and(|e| e.expires_at <= now) {
        map.remove(key);
    }
    map.get_mut(key)
}

/// Redis's SETRANGE: writes `bytes` at `at`, padding with zero bytes when the value is shorter.
fn overwrite(value: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    if value.len() < at + bytes.len() {
        value.resize(at + bytes.len(), 0);
    }
    value[at..at + bytes.len()].copy_from_slice(bytes);
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way later
        // calls would misread (every update is a single insert/remove), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Drops expired entries; run periodically so abandoned flows do not accumulate.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.values.retain(|_, e| e.expires_at > now);
        inner.sets.retain(|_, e| e.expires_at > now);
    }

    pub(super) async fn get(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        let mut inner = self.lock();
        Ok(live(&mut inner.values, key, Instant::now()).map(|e| e.value.clone()))
    }

    pub(super) async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> StoreResult<()> {
        let expires_at = Instant::now() + ttl;
        self.lock().values.insert(
            key.to_owned(),
            Entry {
                value: value.to_vec(),
                expires_at,
            },
        );
        Ok(())
    }

    pub(super) async fn put_new(&self, key: &str, value: &[u8], ttl: Duration) -> StoreResult<bool> {
        let now = Instant::now();
        let mut inner = self.lock();
        if live(&mut inner.values, key, now).is_some() {
            return Ok(false);
        }
        inner.values.insert(
            key.to_owned(),
            Entry {
                value: value.to_vec(),
                expires_at: now + ttl,
            },
        );
        Ok(true)
    }

    pub(super) async fn take(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        let now = Instant::now();
        let mut inner = self.lock();
        Ok(inner.values.remove(key).filter(|e| e.expires_at > now).map(|e| e.value))
    }

    pub(super) async fn delete(&self, key: &str) -> StoreResult<()> {
        let mut inner = self.lock();
        inner.values.remove(key);
        inner.sets.remove(key);
        Ok(())
    }

    pub(super) async fn replace(&self, key: &str, expected: &[u8], new: &[u8]) -> StoreResult<bool> {
        let mut inner = self.lock();
        match live(&mut inner.values, key, Instant::now()) {
            Some(entry) if entry.value == expected => {
                entry.value = new.to_vec();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    pub(super) async fn get_patching(
        &self,
        key: &str,
        at: usize,
        patch: &[u8],
        guard: &[u8],
    ) -> StoreResult<Option<(Vec<u8>, bool)>> {
        let guard_at = at + patch.len();
        let mut inner = self.lock();
        let Some(entry) = live(&mut inner.values, key, Instant::now()) else {
            return Ok(None);
        };
        let read = entry.value.clone();
        let holds = !guard.is_empty() && read.get(guard_at..guard_at + guard.len()) == Some(guard);
        if holds {
            overwrite(&mut entry.value, at, patch);
        }
        Ok(Some((read, holds)))
    }

    pub(super) async fn patch(&self, key: &str, at: usize, bytes: &[u8]) -> StoreResult<()> {
        if let Some(entry) = live(&mut self.lock().values, key, Instant::now()) {
            overwrite(&mut entry.value, at, bytes);
        }
        Ok(())
    }

    pub(super) async fn get_pair(&self, key: &str, other: &str) -> StoreResult<(Option<Vec<u8>>, Option<Vec<u8>>)> {
        let now = Instant::now();
        let mut inner = self.lock();
        let first = live(&mut inner.values, key, now).map(|e| e.value.clone());
        let second = live(&mut inner.values, other, now).map(|e| e.value.clone());
        Ok((first, second))
    }

    pub(super) async fn set_add(&self, key: &str, member: &str, ttl: Duration) -> StoreResult<()> {
        let now = Instant::now();
        let mut inner = self.lock();
        let expires_at = now + ttl;
        match live(&mut inner.sets, key, now) {
            Some(entry) => {
                entry.value.insert(member.to_owned());
                entry.expires_at = entry.expires_at.max(expires_at);
            }
            None => {
                let value = HashSet::from([member.to_owned()]);
                inner.sets.insert(key.to_owned(), Entry { value, expires_at });
            }
        }
        Ok(())
    }

    // In memory an index is a set (its keys are named apart from the sets').
    pub(super) async fn index_add(&self, key: &str, member: &str, ttl: Duration) -> StoreResult<()> {
        self.set_add(key, member, ttl).await
    }

    pub(super) async fn index_members(&self, key: &str) -> StoreResult<Vec<String>> {
        self.set_members(key).await
    }

    pub(super) async fn index_remove(&self, key: &str, member: &str) -> StoreResult<()> {
        self.set_remove(key, member).await
    }

    pub(super) async fn set_members(&self, key: &str) -> StoreResult<Vec<String>> {
        let mut inner = self.lock();
        Ok(live(&mut inner.sets, key, Instant::now())
            .map(|e| e.value.iter().cloned().collect())
            .unwrap_or_default())
    }

    pub(super) async fn set_remove(&self, key: &str, member: &str) -> StoreResult<()> {
        let mut inner = self.lock();
        if let Some(entry) = live(&mut inner.sets, key, Instant::now()) {
            entry.value.remove(member);
            if entry.value.is_empty() {
                inner.sets.remove(key);
            }
        }
        Ok(())
    }

    pub(super) async fn schedule(&self, queue: &str, member: &str, due_ms: u64) -> StoreResult<()> {
        self.lock()
            .queues
            .entry(queue.to_owned())
            .or_default()
            .schedule(member, due_ms);
        Ok(())
    }

    pub(super) async fn claim_due(
        &self,
        queue: &str,
        now_ms: u64,
        lease: Duration,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let mut inner = self.lock();
        let Some(q) = inner.queues.get_mut(queue) else {
            return Ok(Vec::new());
        };
        let due: Vec<String> = q
            .by_due
            .iter()
            .take_while(|(due, _)| *due <= now_ms)
            .take(limit)
            .map(|(_, member)| member.clone())
            .collect();
        let until = now_ms.saturating_add(lease.as_millis() as u64);
        for member in &due {
            q.schedule(member, until);
        }
        Ok(due)
    }

    pub(super) async fn unschedule(&self, queue: &str, member: &str) -> StoreResult<()> {
        if let Some(q) = self.lock().queues.get_mut(queue) {
            q.remove(member);
        }
        Ok(())
    }

    pub(super) async fn due_from(
        &self,
        queue: &str,
        from_ms: u64,
        offset: usize,
        limit: usize,
    ) -> StoreResult<Vec<(String, u64)>> {
        let inner = self.lock();
        Ok(inner
            .queues
            .get(queue)
            .map(|q| {
                q.by_due
                    .range((from_ms, String::new())..)
                    .skip(offset)
                    .take(limit)
                    .map(|(due, member)| (member.clone(), *due))
                    .collect()
            })
            .unwrap_or_default())
    }

    pub(super) async fn expire(&self, key: &str, ttl: Duration) -> StoreResult<bool> {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(entry) = live(&mut inner.values, key, now) {
            entry.expires_at = now + ttl;
            return Ok(true);
        }
        if let Some(entry) = live(&mut inner.sets, key, now) {
            entry.expires_at = now + ttl;
            return Ok(true);
        }
        Ok(false)
    }

    pub(super) async fn count_due_after(&self, queue: &str, after_ms: u64) -> StoreResult<u64> {
        let inner = self.lock();
        Ok(inner
            .queues
            .get(queue)
            .map(|q| q.by_due.iter().filter(|(due, _)| *due > after_ms).count() as u64)
            .unwrap_or(0))
    }

    pub(super) async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}
