//! Timeouts that re-arm a timer instead of creating one: every request on the hot paths has
//! a deadline (its head must arrive within the header read timeout, the OP must answer within
//! `DTR_UPSTREAM_TIMEOUT`), and almost every deadline passes unused.
//!
//! A new tokio timer costs an allocation and, once polled, a registration in the runtime's
//! timer wheel and a removal when dropped, each under the wheel's lock. A timer that is still
//! registered can be moved to a later deadline with one atomic update: the wheel is not
//! touched, and the entry is filed again only when its old deadline comes (as nginx keeps its
//! timers). So a [`TimerPool`] keeps the timers of finished requests and gives them to the
//! next ones with a later deadline. A pool serves one timeout, so the deadlines it hands out
//! only move forward.
//!
//! A pool must be used from the runtime it was first used in (a timer belongs to its
//! runtime's clock); each listener and each OP client makes its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// Timers kept beyond this are dropped: more requests than this are rarely in flight at once.
const MAX_IDLE: usize = 1024;

/// Idle timers of one timeout, most recently used last.
#[derive(Default)]
pub struct TimerPool {
    idle: Mutex<Vec<Pin<Box<Sleep>>>>,
}

impl TimerPool {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A timer that fires at `deadline`: an idle one re-armed, or a new one.
    pub fn sleep_until(self: &Arc<Self>, deadline: Instant) -> PooledSleep {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let sleep = match idle {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        PooledSleep {
            sleep: Some(sleep),
            pool: self.clone(),
        }
    }

    /// Runs `future` until `deadline`; `Err(Elapsed)` when the deadline came first.
    pub fn timeout<F: Future>(self: &Arc<Self>, deadline: Instant, future: F) -> Timeout<F> {
        Timeout {
            future,
            sleep: self.sleep_until(deadline),
        }
    }

    fn give_back(&self, sleep: Pin<Box<Sleep>>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(sleep);
        }
    }
}

/// A timer from a [`TimerPool`]; it goes back to the pool when dropped.
pub struct PooledSleep {
    sleep: Option<Pin<Box<Sleep>>>,
    pool: Arc<TimerPool>,
}

impl Future for PooledSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl Drop for PooledSleep {
    fn drop(&mut self) {
        if let Some(sleep) = self.sleep.take() {
            self.pool.give_back(sleep);
        }
    }
}

/// The deadline of a [`TimerPool::timeout`] came before the future's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

pin_project_lite::pin_project! {
    /// A future with a deadline from a [`TimerPool`]: the future is polled first, the timer
    /// only while the future is pending.
    pub struct Timeout<F> {
        #[pin]
        future: F,
        sleep: PooledSleep,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        Pin::new(this.sleep).poll(cx).map(|()| Err(Elapsed))
    }
}

/// hyper's timer for the header read timeout of HTTP/1 connections: a new sleep for every
/// request head is what the timer pool saves.
#[derive(Clone)]
pub struct HyperTimer {
    pool: Arc<TimerPool>,
}

impl HyperTimer {
    pub fn new() -> Self {
        Self { pool: TimerPool::new() }
    }
}

impl Default for HyperTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, duration: std::time::Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.pool.sleep_until(Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.pool.sleep_until(Instant::from_std(deadline)))
    }
}

impl hyper::rt::Sleep for PooledSleep {}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn a_timer_fires_at_its_deadline_and_is_re_armed_for_the_next() {
        let pool = TimerPool::new();
        let start = Instant::now();
        pool.sleep_until(start + 50 * MS).await;
        assert!(start.elapsed() >= 50 * MS);
        assert_eq!(pool.idle.lock().unwrap().len(), 1, "the timer is back in the pool");

        // Re-armed: the same timer, later.
        let again = Instant::now();
        pool.sleep_until(again + 30 * MS).await;
        assert!(again.elapsed() >= 30 * MS);
        assert_eq!(pool.idle.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_timer_pushed_forward_before_its_deadline_fires_only_at_the_new_one() {
        let pool = TimerPool::new();
        let start = Instant::now();
        // Armed, polled (so registered with the runtime) and given back unused: the usual
        // request.
        let mut first = Box::pin(pool.sleep_until(start + 100 * MS));
        assert!(futures_util::poll!(first.as_mut()).is_pending());
        drop(first);

        tokio::time::sleep(60 * MS).await;
        // The same timer, its deadline pushed from 100 ms to 160 ms: the old one must not
        // fire it.
        let slow = pool.timeout(start + 160 * MS, std::future::pending::<()>());
        assert_eq!(slow.await, Err(Elapsed));
        assert!(start.elapsed() >= 160 * MS, "fired after {:?}", start.elapsed());
        assert_eq!(pool.idle.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_future_wins_when_it_ends_first() {
        let pool = TimerPool::new();
        let deadline = Instant::now() + 100 * MS;
        let quick = pool.timeout(deadline, tokio::time::sleep(10 * MS));
        assert_eq!(quick.await, Ok(()));
        let late = pool.timeout(deadline, tokio::time::sleep(10_000 * MS));
        assert_eq!(late.await, Err(Elapsed));
        assert_eq!(pool.idle.lock().unwrap().len(), 1, "both timeouts used one timer");
    }
}
