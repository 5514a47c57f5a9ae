//! [`ReserveUpgradeLayer`]: a WebSocket upgrade's place among [`Tunnels`],
//! taken in front of retries and balancing.

use std::task::{Context, Poll};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::{TunnelGroup, Tunnels};
use crate::body::ResponseBody;
use crate::future::AnswerOrCall;
pub use crate::future::ResponseFuture;

/// Takes a place among [`Tunnels`] for each WebSocket upgrade before the inner
/// service sees it; every place taken, the upgrade is answered `503`
/// (`too_many_upgrades`) at once: put it in front of a retry layer and a
/// balancer, so that a full set is neither retried nor counted against an
/// endpoint. Other requests pass untouched.
///
/// ```
/// use std::time::Duration;
/// use tower::ServiceBuilder;
/// use tower_gateway::upgrade::{ReserveUpgradeLayer, TunnelGroup, Tunnels};
/// use tower_gateway::retry::ReplayBody;
/// use tower_gateway::{Body, Proxy, RetryLayer, RetryPolicy};
///
/// let tunnels = Tunnels::new(500, Duration::from_secs(300));
/// let chat = TunnelGroup::new(); // closed, say, when the route is removed
/// let svc = ServiceBuilder::new()
///     .layer(ReserveUpgradeLayer::new(tunnels.clone()).group(chat.clone()))
///     .layer(RetryLayer::new(RetryPolicy::new()))
///     .service(Proxy::builder().tunnels(tunnels).build::<ReplayBody<Body>>());
/// # let _ = svc;
/// ```
#[derive(Debug, Clone)]
pub struct ReserveUpgradeLayer {
    tunnels: Tunnels,
    group: Option<TunnelGroup>,
}

impl ReserveUpgradeLayer {
    /// Places among `tunnels`: the set the proxy behind was given.
    pub fn new(tunnels: Tunnels) -> Self {
        Self { tunnels, group: None }
    }

    /// Puts every tunnel these requests open in `group`.
    #[must_use]
    pub fn group(mut self, group: TunnelGroup) -> Self {
        self.group = Some(group);
        self
    }
}

impl<S> Layer<S> for ReserveUpgradeLayer {
    type Service = ReserveUpgrade<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReserveUpgrade { inner, tunnels: self.tunnels.clone(), group: self.group.clone() }
    }
}

/// The service of [`ReserveUpgradeLayer`].
#[derive(Debug, Clone)]
pub struct ReserveUpgrade<S> {
    inner: S,
    tunnels: Tunnels,
    group: Option<TunnelGroup>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ReserveUpgrade<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        if let Some(group) = &self.group {
            req.extensions_mut().insert(group.clone());
        }
        let inner = match self.tunnels.reserve(&mut req) {
            Ok(()) => AnswerOrCall::call(self.inner.call(req)),
            Err(refused) => AnswerOrCall::answer(refused.answer()),
        };
        ResponseFuture { inner }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use tower::ServiceExt;

    use super::*;

    /// A WebSocket upgrade as hyper's server hands it over.
    fn upgrade() -> Request<()> {
        let mut req = Request::get("/chat")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap();
        req.extensions_mut().insert(hyper::upgrade::on(Request::new(())));
        req
    }

    #[tokio::test]
    async fn a_full_set_is_answered_503_before_the_inner_service_and_others_pass() {
        let tunnels = Tunnels::new(1, Duration::from_secs(60));
        let group = TunnelGroup::new();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        let inner = tower::service_fn(move |req: Request<()>| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let grouped = req.extensions().get::<TunnelGroup>().is_some();
            async move { Ok::<_, Infallible>(Response::new(if grouped { "grouped" } else { "plain" })) }
        });
        let svc = ReserveUpgradeLayer::new(tunnels.clone()).group(group).layer(inner);

        let first = upgrade();
        let held = svc.clone().oneshot(first).await.unwrap();
        assert_eq!(held.status(), 200);
        assert_eq!(held.into_body().into_inner().unwrap(), "grouped", "the request carries the group");
        // The reservation went with the request into the inner service, and
        // came back when that request ended without a tunnel.
        assert_eq!(tunnels.active(), 0);

        let mut waiting = upgrade();
        tunnels.reserve(&mut waiting).unwrap();
        let refused = svc.clone().oneshot(upgrade()).await.unwrap();
        assert_eq!(refused.status(), 503);
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1, "the refused upgrade went no further");
        let plain = svc.oneshot(Request::get("/chat").body(()).unwrap()).await.unwrap();
        assert_eq!(plain.status(), 200, "not an upgrade: no place needed");
    }
}
