//! Response bodies.
//!
//! - [`Body`]: what [`Proxy`](crate::Proxy) answers: an upstream's streamed
//!   body, or a small body the gateway made itself (an error, for instance).
//! - [`ResponseBody`]: what every layer of this crate answers over an inner
//!   service's body `B`: `B` itself, or the layer's own JSON refusal. The inner
//!   service may answer with any body (`axum::body::Body`, `Full<Bytes>`,
//!   `BoxBody`, `String`, ...); nothing is asked of it but to be a body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

pin_project! {
    /// A response body: streamed from an upstream, or held in full.
    ///
    /// It converts from [`Bytes`], `String` and `&'static str`, which is what the
    /// layers need to answer with their own JSON errors.
    #[derive(Debug)]
    pub struct Body {
        #[pin]
        kind: Kind,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind {
        Streamed { #[pin] body: Incoming },
        Full { data: Option<Bytes> },
    }
}

impl Body {
    /// An empty body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// A body holding `data`.
    pub fn full(data: Bytes) -> Self {
        let data = (!data.is_empty()).then_some(data);
        Self { kind: Kind::Full { data } }
    }

    pub(crate) fn streamed(body: Incoming) -> Self {
        Self { kind: Kind::Streamed { body } }
    }
}

impl Default for Body {
    fn default() -> Self {
        Self::empty()
    }
}

impl From<Bytes> for Body {
    fn from(data: Bytes) -> Self {
        Self::full(data)
    }
}

impl From<String> for Body {
    fn from(data: String) -> Self {
        Self::full(data.into())
    }
}

impl From<&'static str> for Body {
    fn from(data: &'static str) -> Self {
        Self::full(Bytes::from_static(data.as_bytes()))
    }
}

/// The error of a [`Body`]: the upstream's body broke off.
#[derive(Debug)]
pub struct BodyError(hyper::Error);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the upstream's body failed: {}", self.0)
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project().kind.project() {
            KindProj::Streamed { body } => body.poll_frame(cx).map_err(BodyError),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Streamed { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Streamed { body } => body.size_hint(),
            Kind::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

pin_project! {
    /// The response body of this crate's layers: the inner service's body, or
    /// the JSON the layer answered with itself (a refusal). See the [module docs](self).
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: ResponseKind<B>,
    }
}

pin_project! {
    #[project = ResponseKindProj]
    #[derive(Debug)]
    enum ResponseKind<B> {
        Inner { #[pin] body: B },
        Answer { data: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    /// The inner service's body, passed through.
    pub fn new(body: B) -> Self {
        Self { kind: ResponseKind::Inner { body } }
    }

    /// A body the layer wrote itself.
    pub fn answer(data: Bytes) -> Self {
        let data = (!data.is_empty()).then_some(data);
        Self { kind: ResponseKind::Answer { data } }
    }

    /// The inner service's body, or the bytes the layer answered with.
    pub fn into_inner(self) -> Result<B, Bytes> {
        match self.kind {
            ResponseKind::Inner { body } => Ok(body),
            ResponseKind::Answer { data } => Err(data.unwrap_or_default()),
        }
    }
}

#[cfg(test)]
impl ResponseBody<Bytes> {
    /// The bytes, answered or passed through: for tests whose inner services
    /// answer with plain `Bytes`.
    pub(crate) fn flat(self) -> Bytes {
        self.into_inner().unwrap_or_else(|answered| answered)
    }
}

impl<B> From<Bytes> for ResponseBody<B> {
    fn from(data: Bytes) -> Self {
        Self::answer(data)
    }
}

/// Layers of this crate over [`Proxy`](crate::Proxy) answer one [`Body`] again,
/// however many wrap it: no allocation, no extra poll.
impl<B: Into<Body>> From<ResponseBody<B>> for Body {
    fn from(body: ResponseBody<B>) -> Self {
        match body.into_inner() {
            Ok(inner) => inner.into(),
            Err(data) => Body::full(data),
        }
    }
}

impl<B> http_body::Body for ResponseBody<B>
where
    B: http_body::Body,
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        match self.project().kind.project() {
            ResponseKindProj::Inner { body } => body.poll_frame(cx),
            ResponseKindProj::Answer { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d.into())))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Inner { body } => body.is_end_stream(),
            ResponseKind::Answer { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Inner { body } => body.size_hint(),
            ResponseKind::Answer { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
