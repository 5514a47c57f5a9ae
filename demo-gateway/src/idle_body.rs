//! A body that fails when it goes too long without a frame: the slow-body bound,
//! both ways. (tower-http's `TimeoutBody` does the same but hides the inner
//! body's size hint and end, which would turn every `GET` into a chunked,
//! unreplayable request and every response into a chunked one.)

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Sleep, sleep};
use tower_gateway::error::BoxError;

pin_project! {
    /// `body`, failing with [`IdleTimeout`] if `timeout` passes between the
    /// moment a frame is asked for and the moment it comes.
    pub(crate) struct IdleBody<B> {
        timeout: Duration,
        #[pin]
        sleep: Option<Sleep>,
        #[pin]
        body: B,
    }
}

impl<B> IdleBody<B> {
    pub(crate) fn new(timeout: Duration, body: B) -> Self {
        Self { timeout, sleep: None, body }
    }
}

impl<B: Default> Default for IdleBody<B> {
    /// `B`'s default (an answer tower-http's layers make themselves, such as a
    /// CORS preflight's empty body), with no idle bound: it is the gateway's own.
    fn default() -> Self {
        Self::new(Duration::MAX, B::default())
    }
}

/// A body went longer than its idle timeout without a frame.
#[derive(Debug)]
pub(crate) struct IdleTimeout;

impl std::fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no body data within the idle timeout")
    }
}

impl std::error::Error for IdleTimeout {}

impl<B> Body for IdleBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let mut this = self.project();
        if this.sleep.is_none() {
            this.sleep.set(Some(sleep(*this.timeout)));
        }
        if let Some(sleep) = this.sleep.as_mut().as_pin_mut()
            && sleep.poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err(Box::new(IdleTimeout))));
        }
        let frame = ready!(this.body.poll_frame(cx));
        this.sleep.set(None);
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn hints_pass_through_and_silence_times_out() {
        let full = IdleBody::new(Duration::from_secs(1), Full::new(Bytes::from_static(b"abc")));
        assert_eq!(full.size_hint().exact(), Some(3));
        let empty = IdleBody::new(Duration::from_secs(1), Full::new(Bytes::new()));
        assert!(empty.is_end_stream());

        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut body = Box::pin(IdleBody::new(Duration::from_secs(1), StreamBody::new(stream)));
        tx.send(Ok(Frame::data(Bytes::from_static(b"a")))).await.unwrap();
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "a");
        let waiting = tokio::spawn(async move { body.frame().await.map(|f| f.is_err()) });
        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert_eq!(waiting.await.unwrap(), Some(true), "timed out");
        drop(tx);
    }
}
