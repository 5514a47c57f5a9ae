//! The request body a [`Retry`](super::Retry) hands to its inner service.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::error::BoxError;

pin_project! {
    /// A request body that can be sent again when it was small enough to buffer,
    /// or streamed once when it was not.
    #[derive(Debug)]
    pub struct ReplayBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Buffered { data: Option<Bytes> },
        Streamed { #[pin] body: B },
    }
}

impl<B> ReplayBody<B> {
    /// A replayable body holding `data`.
    pub fn buffered(data: Bytes) -> Self {
        let data = (!data.is_empty()).then_some(data);
        Self { kind: Kind::Buffered { data } }
    }

    /// A body streamed once from `body`; requests carrying it are never retried.
    pub fn streamed(body: B) -> Self {
        Self { kind: Kind::Streamed { body } }
    }

    /// A copy to send again, if the body was buffered.
    pub fn try_clone(&self) -> Option<Self> {
        match &self.kind {
            Kind::Buffered { data } => Some(Self { kind: Kind::Buffered { data: data.clone() } }),
            Kind::Streamed { .. } => None,
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Buffered { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Streamed { body } => body.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Buffered { data } => data.is_none(),
            Kind::Streamed { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Buffered { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Streamed { body } => body.size_hint(),
        }
    }
}
