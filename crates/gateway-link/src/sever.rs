//! A byte stream the link can cut on purpose, so that a shutdown ends the `Connect` call the
//! way hoop's agent does: by closing the connection (the gateway sees the call cancelled and
//! logs a WARN), not by half-closing the request stream (the gateway logs an ERROR "err=EOF",
//! hoop-gateway-protocol.md §5.4).
//!
//! It also tells the closing link when everything written so far has been flushed, so the
//! cut does not lose the sessions' final `ClientSessionClose` packets.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The link's side of a [`Severable`] stream.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cut {
    token: CancellationToken,
    /// Bytes were written and not yet flushed.
    dirty: Arc<AtomicBool>,
    /// Completed flushes so far.
    flushes: Arc<AtomicU64>,
}

impl Cut {
    /// Makes every later read and write of the stream fail, which closes the connection.
    pub(crate) fn sever(&self) {
        self.token.cancel();
    }

    /// Whether everything written so far has been flushed to the socket.
    pub(crate) fn is_flushed(&self) -> bool {
        !self.dirty.load(Ordering::SeqCst)
    }

    /// How many flushes have completed.
    pub(crate) fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }
}

/// An I/O stream that fails once its [`Cut`] is severed.
pub(crate) struct Severable<T> {
    inner: T,
    cut: Cut,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<T> Severable<T> {
    pub(crate) fn new(inner: T, cut: Cut) -> Severable<T> {
        let cancelled = Box::pin(cut.token.clone().cancelled_owned());
        Severable {
            inner,
            cut,
            cancelled,
        }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.cancelled.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the agent closed its gateway connection",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Severable<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Severable<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        self.cut.dirty.store(true, Ordering::SeqCst);
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    // Forwarded, not left to the defaults: without them the stream reports no vectored
    // writes, and h2 then sends every DATA frame as two `send` calls (its header chunk, then
    // the payload) instead of one `writev` for everything buffered.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        self.cut.dirty.store(true, Ordering::SeqCst);
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = result {
            self.cut.dirty.store(false, Ordering::SeqCst);
            self.cut.flushes.fetch_add(1, Ordering::SeqCst);
        }
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (Severable<TcpStream>, TcpStream, Cut) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let cut = Cut::default();
        (
            Severable::new(client.unwrap(), cut.clone()),
            accepted.unwrap().0,
            cut,
        )
    }

    #[tokio::test]
    async fn writes_every_slice_of_a_vectored_write_in_one_call() {
        let (mut stream, mut peer, cut) = pair().await;
        assert!(stream.is_write_vectored());
        // An HTTP/2 DATA frame as h2 hands it over: its 9-byte header, then the payload.
        let head = [7u8; 9];
        let payload = vec![9u8; 16 * 1024];
        let bufs = [io::IoSlice::new(&head), io::IoSlice::new(&payload)];
        let n = stream.write_vectored(&bufs).await.unwrap();
        assert_eq!(n, head.len() + payload.len(), "one call, both slices");
        assert!(!cut.is_flushed());
        stream.flush().await.unwrap();
        assert!(cut.is_flushed());

        let mut got = vec![0u8; n];
        peer.read_exact(&mut got).await.unwrap();
        let (got_head, got_payload) = got.split_at(head.len());
        assert_eq!(got_head, &head);
        assert_eq!(got_payload, &payload[..]);
    }

    #[tokio::test]
    async fn a_severed_stream_refuses_vectored_writes() {
        let (mut stream, _peer, cut) = pair().await;
        cut.sever();
        let err = stream
            .write_vectored(&[io::IoSlice::new(b"late")])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    }
}
