//! Lingering close, as nginx's `lingering_close`: when a connection ends while the client is
//! still sending — hyper answered 431 to headers past its buffer, or 400 to a malformed
//! request, before reading what followed — closing the socket at once makes the kernel answer
//! the unread bytes with a reset, and a reset can destroy the answer before the client reads
//! it. So such a socket is kept for a bounded time: its write side is shut (the client sees
//! the end of the answer), and what still arrives is read and dropped until the client
//! closes, goes quiet, or a time or size bound is reached.
//!
//! A connection whose client closed first (the usual keep-alive end) is closed at once, and
//! at most [`MAX_LINGERING`] sockets linger at a time.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// How long a lingering socket waits for more bytes before it closes.
const QUIET: Duration = Duration::from_secs(2);
/// How long a socket lingers at most.
const TOTAL: Duration = Duration::from_secs(10);
/// How much a lingering socket reads and drops at most.
const MAX_BYTES: usize = 8 * 1024 * 1024;
/// Sockets lingering at once; beyond this they are closed at once.
const MAX_LINGERING: usize = 1024;

static LINGERING: AtomicUsize = AtomicUsize::new(0);

/// A client connection that lingers when dropped before its client finished sending.
pub struct Linger {
    stream: Option<TcpStream>,
    /// The client closed its side (a read returned end of stream).
    client_done: bool,
}

impl Linger {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream: Some(stream),
            client_done: false,
        }
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.stream.as_mut().expect("stream taken only on drop"))
    }
}

impl AsyncRead for Linger {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = self.stream().poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if buf.filled().len() == before && buf.remaining() > 0 {
                self.client_done = true;
            }
        }
        polled
    }
}

impl AsyncWrite for Linger {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}

impl Drop for Linger {
    fn drop(&mut self) {
        if self.client_done {
            return;
        }
        let Some(stream) = self.stream.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if LINGERING.fetch_add(1, Ordering::Relaxed) >= MAX_LINGERING {
            LINGERING.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        runtime.spawn(async move {
            drain(stream).await;
            LINGERING.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Shuts the write side, then reads and drops until the client closes or a bound is hit.
async fn drain(mut stream: TcpStream) {
    let _ = tokio::time::timeout(QUIET, stream.shutdown()).await;
    let mut buf = [0u8; 16 * 1024];
    let mut read = 0;
    let _ = tokio::time::timeout(TOTAL, async {
        while read < MAX_BYTES {
            match tokio::time::timeout(QUIET, stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => read += n,
                _ => break,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// The server drops the connection before reading what the client sent: the client still
    /// reads the answer and sees an orderly end, never a reset.
    #[tokio::test]
    async fn a_dropped_connection_with_unread_bytes_ends_without_a_reset() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut conn = Linger::new(stream);
            let mut head = [0u8; 16];
            conn.read_exact(&mut head).await.unwrap();
            conn.write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n")
                .await
                .unwrap();
            conn.flush().await.unwrap();
            drop(conn);
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        // Far more than the server reads; written whole before the client reads.
        let payload = vec![b'a'; 4 * 1024 * 1024];
        client.write_all(&payload).await.unwrap();
        server.await.unwrap();
        let mut answer = Vec::new();
        client
            .read_to_end(&mut answer)
            .await
            .expect("an orderly end, not a reset");
        assert!(
            answer.starts_with(b"HTTP/1.1 431"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }

    /// A client that closed first is not waited for.
    #[tokio::test]
    async fn a_client_that_closed_first_is_not_lingered_on() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        drop(client);
        let mut conn = Linger::new(stream);
        let mut buf = [0u8; 8];
        assert_eq!(conn.read(&mut buf).await.unwrap(), 0);
        assert!(conn.client_done, "the end of stream was seen");
    }
}
