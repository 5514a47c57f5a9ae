//! `X-Request-Id`: the gateway's own, a new UUID v4 for every request, sent
//! upstream with the request and back to the client with the response (unless
//! the upstream answered with its own). A client's id is not taken for the
//! gateway's (a client could otherwise make its requests share an id with
//! someone else's in every log): a sane one (the entry drops any other) goes
//! upstream beside it as `X-Client-Request-Id`.
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
static X_CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-client-request-id");

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
    // Sent both ways: cut from the shared slab, its clone for the response costs no allocation.
    tower_gateway::header::shared_value(text.as_bytes()).expect("a UUID is a valid header value")
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
        let headers = req.headers_mut();
        let client = headers.remove(&X_REQUEST_ID);
        // Only this layer writes it: a client's own copy never passes.
        headers.remove(&X_CLIENT_REQUEST_ID);
        if let Some(client) = client {
            headers.insert(X_CLIENT_REQUEST_ID.clone(), client);
        }
        let id = new_id();
        headers.insert(X_REQUEST_ID.clone(), id.clone());
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

    /// Answers with the id it was sent (and the client's, after a space), and
    /// with `answer` as its own when given.
    async fn through(sent: Option<&str>, answer: Option<&'static str>) -> (String, Option<String>) {
        let svc = RequestIdLayer.layer(tower::service_fn(move |req: Request<()>| async move {
            let mut seen = req.headers()[&X_REQUEST_ID].to_str().unwrap().to_owned();
            if let Some(client) = req.headers().get(&X_CLIENT_REQUEST_ID) {
                seen = format!("{seen} {}", client.to_str().unwrap());
            }
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
    async fn a_clients_id_goes_beside_the_gateways_own_and_an_upstreams_own_wins_on_the_way_back() {
        let (upstream_saw, client_got) = through(Some("trace-1"), None).await;
        let (own, client) = upstream_saw.split_once(' ').expect("both ids");
        assert!(uuid::Uuid::parse_str(own).is_ok(), "the gateway's own id: {own}");
        assert_eq!(client, "trace-1");
        assert_eq!(client_got.as_deref(), Some(own), "the client is told the gateway's id");
        let (upstream_saw, client_got) = through(Some("trace-1"), Some("up-9")).await;
        assert!(upstream_saw.ends_with(" trace-1"));
        assert_eq!(client_got.as_deref(), Some("up-9"));
    }
}
