//! The clock of every stored timestamp. Only the async shells read it; the decisions they
//! make take `now` as an argument, so tests choose the time.

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
