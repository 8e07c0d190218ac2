//! Graceful shutdown of a listener's connections, at the price of one atomic load per wake-up.
//!
//! hyper-util's `GracefulShutdown` polls a watch channel's `changed()` future beside the
//! connection at every wake-up: two wake-ups per request, each a lock-free version check and a
//! re-registration with the channel's `Notify`, about 300 instructions per pass-through request.
//! Here a connection registers with the [`Drain`] once, at its first poll; after that a
//! wake-up costs one load of the draining flag, and the shutdown wakes every registered
//! connection through tokio's `Notify::notify_waiters`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

/// The connections of one listener, and the switch that drains them.
pub struct Drain {
    shared: Arc<Shared>,
}

struct Shared {
    draining: AtomicBool,
    /// Woken, all at once, when draining starts.
    start: Arc<Notify>,
    /// Connections not yet ended (a TLS handshake in progress included).
    live: AtomicUsize,
    /// Woken when the last connection ends while draining.
    ended: Notify,
}

/// A connection that can be asked to finish its requests in flight and close: hyper's
/// connections (through hyper-util's sealed trait), and fakes in tests.
pub trait Graceful: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<C: GracefulConnection> Graceful for C {
    fn graceful_shutdown(self: Pin<&mut Self>) {
        GracefulConnection::graceful_shutdown(self);
    }
}

/// A connection's place in a [`Drain`]: held from accept to the connection's end.
pub struct Member {
    shared: Arc<Shared>,
}

impl Drain {
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                draining: AtomicBool::new(false),
                start: Arc::new(Notify::new()),
                live: AtomicUsize::new(0),
                ended: Notify::new(),
            }),
        }
    }

    /// A new connection's membership.
    pub fn member(&self) -> Member {
        self.shared.live.fetch_add(1, Ordering::AcqRel);
        Member {
            shared: self.shared.clone(),
        }
    }

    /// Connections not yet ended.
    pub fn live(&self) -> usize {
        self.shared.live.load(Ordering::Acquire)
    }

    /// Asks every connection to finish its requests in flight and close, and waits until all
    /// have ended.
    pub async fn shutdown(self) {
        self.shared.draining.store(true, Ordering::SeqCst);
        self.shared.start.notify_waiters();
        loop {
            let ended = self.shared.ended.notified();
            tokio::pin!(ended);
            // Registered before the count is read: an end between the two still wakes us.
            ended.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            ended.await;
        }
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Member {
    /// Runs `connection` to its end, shut down gracefully once draining starts.
    pub fn watch<C: Graceful>(self, connection: C) -> Watched<C> {
        Watched {
            connection,
            start: self.shared.start.clone().notified_owned(),
            state: Start::Unregistered,
            member: self,
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.shared.live.fetch_sub(1, Ordering::AcqRel) == 1 && self.shared.draining.load(Ordering::SeqCst) {
            self.shared.ended.notify_waiters();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Not polled yet.
    Unregistered,
    /// Registered with the `Notify`, with the task's waker (valid for the task's life): a
    /// wake-up only loads the draining flag.
    Registered,
    /// The connection was asked to shut down.
    Asked,
}

pin_project_lite::pin_project! {
    /// A connection under a [`Drain`].
    pub struct Watched<C> {
        #[pin]
        connection: C,
        #[pin]
        start: OwnedNotified,
        state: Start,
        member: Member,
    }
}

impl<C: Graceful> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        let started = match *this.state {
            Start::Asked => false,
            Start::Registered => this.member.shared.draining.load(Ordering::Acquire),
            Start::Unregistered => {
                *this.state = Start::Registered;
                // Registers (or finds draining begun since the membership was taken).
                this.start.poll(cx).is_ready() || this.member.shared.draining.load(Ordering::Acquire)
            }
        };
        if started {
            *this.state = Start::Asked;
            this.connection.as_mut().graceful_shutdown();
        }
        this.connection.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A connection that ends only when asked to shut down.
    struct Connection {
        asked: bool,
    }

    impl Connection {
        fn new() -> Self {
            Self { asked: false }
        }
    }

    impl Graceful for Connection {
        fn graceful_shutdown(mut self: Pin<&mut Self>) {
            self.asked = true;
        }
    }

    impl Future for Connection {
        type Output = Result<(), std::convert::Infallible>;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
            if self.asked {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
    }

    #[tokio::test]
    async fn shutdown_asks_every_connection_and_waits_for_their_ends() {
        let drain = Drain::new();
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let connection = drain.member().watch(Connection::new());
            tasks.push(tokio::spawn(connection));
        }
        // A connection whose first poll comes after draining started is asked too.
        let late = drain.member().watch(Connection::new());
        tokio::task::yield_now().await;
        assert_eq!(drain.live(), 4);
        let shutdown = tokio::spawn(drain.shutdown());
        tokio::time::sleep(Duration::from_millis(20)).await;
        tasks.push(tokio::spawn(late));
        tokio::time::timeout(Duration::from_secs(5), shutdown)
            .await
            .expect("drained")
            .unwrap();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn shutdown_with_no_connections_returns_at_once() {
        tokio::time::timeout(Duration::from_secs(5), Drain::new().shutdown())
            .await
            .expect("nothing to wait for");
    }
}
