//! `X-Request-Id`: kept when the client sent a sane one (the entry drops any
//! other), else a new UUID v4; sent upstream with the request and back to the
//! client with the response (unless the upstream answered with its own).
//!
//! tower-http's `SetRequestId` and `PropagateRequestId` do the same in two
//! layers, with the id in the request's and the response's extensions and the
//! UUID formatted through `Display`; this is one layer, two header inserts.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Sets and returns `X-Request-Id` (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestId { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RequestId<S> {
    inner: S,
}

/// A new id: a UUID v4 in its hyphenated form.
fn new_id() -> HeaderValue {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(text).expect("a UUID is a valid header value")
}

impl<S, B, RB> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = match req.headers().get(&X_REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = new_id();
                req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
                id
            }
        };
        ResponseFuture { future: self.inner.call(req), id: Some(id) }
    }
}

pin_project! {
    pub(crate) struct ResponseFuture<F> {
        #[pin]
        future: F,
        id: Option<HeaderValue>,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = std::task::ready!(this.future.poll(cx));
        if let (Ok(response), Some(id)) = (&mut result, this.id.take()) {
            response.headers_mut().entry(&X_REQUEST_ID).or_insert(id);
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;

    /// Answers with the id it was sent, and with `answer` as its own when given.
    async fn through(sent: Option<&str>, answer: Option<&'static str>) -> (String, Option<String>) {
        let svc = RequestIdLayer.layer(tower::service_fn(move |req: Request<()>| async move {
            let seen = req.headers()[&X_REQUEST_ID].to_str().unwrap().to_owned();
            let mut response = Response::new(seen);
            if let Some(own) = answer {
                response.headers_mut().insert(X_REQUEST_ID.clone(), HeaderValue::from_static(own));
            }
            Ok::<_, std::convert::Infallible>(response)
        }));
        let mut req = Request::new(());
        if let Some(id) = sent {
            req.headers_mut().insert(X_REQUEST_ID.clone(), HeaderValue::from_str(id).unwrap());
        }
        let response = svc.oneshot(req).await.unwrap();
        let returned = response.headers().get(&X_REQUEST_ID).map(|v| v.to_str().unwrap().to_owned());
        (response.into_body(), returned)
    }

    #[tokio::test]
    async fn a_request_without_an_id_gets_a_new_uuid_both_ways() {
        let (upstream_saw, client_got) = through(None, None).await;
        let parsed = uuid::Uuid::parse_str(&upstream_saw).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(upstream_saw, parsed.hyphenated().to_string(), "lower-case, hyphenated");
        assert_eq!(client_got.as_deref(), Some(upstream_saw.as_str()));
        let (other, _) = through(None, None).await;
        assert_ne!(other, upstream_saw, "each request its own");
    }

    #[tokio::test]
    async fn a_clients_id_is_kept_and_an_upstreams_own_wins_on_the_way_back() {
        assert_eq!(through(Some("trace-1"), None).await, ("trace-1".to_owned(), Some("trace-1".to_owned())));
        assert_eq!(through(Some("trace-1"), Some("up-9")).await, ("trace-1".to_owned(), Some("up-9".to_owned())));
    }
}
