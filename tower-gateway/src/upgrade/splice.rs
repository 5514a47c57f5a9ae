//! The bytes of a spliced tunnel, both ways, until it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::{OnUpgrade, Place};

/// Waits for both sides to switch protocols, then copies bytes both ways until
/// either closes, the tunnel idles out, its deadline or its group's close
/// comes, or [`Tunnels::close_all`] is called.
pub(crate) async fn splice(mut place: Place, client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(err) => {
            tracing::debug!(%err, "an upgrade did not complete");
            return;
        }
    };
    let shared = place.tunnels.shared.clone();
    let close_at = place.close_at;
    let last = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let (mut client_rx, mut client_tx) =
        tokio::io::split(Watched { io: TokioIo::new(client), last: last.clone(), epoch });
    let (mut upstream_rx, mut upstream_tx) =
        tokio::io::split(Watched { io: TokioIo::new(upstream), last: last.clone(), epoch });
    // Each direction ends at its reader's end of stream, passed on as a shutdown
    // of the writer (a FIN, after every byte before it).
    let up = std::pin::pin!(async {
        let copied = tokio::io::copy(&mut client_rx, &mut upstream_tx).await;
        let _ = upstream_tx.shutdown().await;
        copied
    });
    let down = std::pin::pin!(async {
        let copied = tokio::io::copy(&mut upstream_rx, &mut client_tx).await;
        let _ = client_tx.shutdown().await;
        copied
    });
    let mut close = shared.close.subscribe();
    let mut group = place.group.take();
    tokio::select! {
        () = both_ways(up, down) => tracing::debug!("tunnel closed"),
        () = idle(&last, epoch, shared.idle_timeout) => {
            shared.closed_idle.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(idle_timeout = ?shared.idle_timeout, "tunnel closed: idle");
        }
        () = async {
            match close_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        } => {
            shared.closed_at_deadline.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("tunnel closed: its lifetime or its token ended");
        }
        () = async { drop(close.wait_for(|close| *close).await) } => {
            tracing::debug!("tunnel closed: shutting down");
        }
        () = async {
            match &mut group {
                // A group dropped unclosed closes nothing.
                Some(group) => {
                    if group.wait_for(|close| *close).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        } => {
            shared.closed_by_group.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("tunnel closed: its group was closed");
        }
    }
    drop(place);
}

/// How long the other direction may go on once one has ended: a WebSocket's
/// closing handshake has one side close right after the other.
const LINGER: Duration = Duration::from_secs(2);

/// Runs both directions until one ends, then the other for up to [`LINGER`].
async fn both_ways<U, D>(mut up: Pin<&mut U>, mut down: Pin<&mut D>)
where
    U: Future<Output = std::io::Result<u64>>,
    D: Future<Output = std::io::Result<u64>>,
{
    let first = tokio::select! {
        copied = &mut up => {
            let _ = tokio::time::timeout(LINGER, &mut down).await;
            copied
        }
        copied = &mut down => {
            let _ = tokio::time::timeout(LINGER, &mut up).await;
            copied
        }
    };
    if let Err(err) = first {
        tracing::debug!(%err, "tunnel ended with an error");
    }
}

/// Resolves once no byte has moved for `timeout`.
pub(super) async fn idle(last: &AtomicU64, epoch: Instant, timeout: Duration) {
    loop {
        let deadline = epoch + Duration::from_millis(last.load(Ordering::Relaxed)) + timeout;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// An upgraded connection that records when it last read a byte.
struct Watched<I> {
    io: I,
    /// Milliseconds since `epoch` of the last read, shared by both sides.
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last.store(now, Ordering::Relaxed);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
