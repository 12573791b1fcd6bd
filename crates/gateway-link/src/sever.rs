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
