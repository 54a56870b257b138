//! The connection cap: an acceptor that wraps another (TLS) and closes a connection over the cap
//! before doing any work for it, not even the TLS handshake. It also gives the first request its
//! deadline: hyper-util's protocol detection (HTTP/1 or HTTP/2) waits for the first bytes without
//! one, so a client that completes TLS and then says nothing would otherwise stay forever.

use super::episode::Episode;
use axum_server::accept::Accept;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Policy when full: the new connection is closed at once (the kernel's listen backlog is not
/// used as a queue: a client that waits there holds a descriptor and learns nothing).
#[derive(Clone)]
pub struct Capped<A> {
    inner: A,
    slots: Arc<Semaphore>,
    episode: Arc<Episode>,
    /// How long after the handshake the client may take to send its first byte.
    first_byte: Duration,
}

impl<A> Capped<A> {
    pub fn new(inner: A, max: usize, first_byte: Duration) -> Capped<A> {
        Capped {
            inner,
            slots: Arc::new(Semaphore::new(max)),
            episode: Arc::new(Episode::new("connection cap")),
            first_byte,
        }
    }
}

impl<A, I, S> Accept<I, S> for Capped<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
    I: Send + 'static,
{
    type Stream = Held<A::Stream>;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => {
                self.episode.clear();
                let accepting = self.inner.accept(stream, service);
                let first_byte = self.first_byte;
                Box::pin(async move {
                    let (stream, service) = accepting.await?;
                    let silence = Some(Box::pin(tokio::time::sleep(first_byte)));
                    Ok((Held { stream, silence, _slot: slot }, service))
                })
            }
            Err(_) => {
                self.episode.hit();
                drop(stream);
                Box::pin(std::future::ready(Err(io::Error::other("connection cap reached"))))
            }
        }
    }
}

/// A connection holding its slot; the slot is free again when the connection is dropped.
pub struct Held<T> {
    stream: T,
    /// Runs until the first byte arrives; if it fires first, the connection is dropped.
    silence: Option<Pin<Box<Sleep>>>,
    _slot: OwnedSemaphorePermit,
}

impl<T: AsyncRead + Unpin> AsyncRead for Held<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Some(silence) = self.silence.as_mut() {
            match &read {
                Poll::Ready(Ok(())) if buf.filled().len() > before => self.silence = None,
                Poll::Pending if silence.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within the header-read timeout",
                    )))
                }
                _ => {}
            }
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Held<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
