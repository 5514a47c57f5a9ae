//! A service of any type behind one name, shared rather than copied.
//!
//! tower's `BoxCloneSyncService` is what a route piece and a whole app were: a
//! boxed service that must be cloned for each request (its `call` takes
//! `&mut self`, and many requests run at once), and each clone is a new box. An
//! [`ArcService`] keeps the service once, in an `Arc`; each request clones the
//! service inside (reference counts, no allocation) and runs it in the one box
//! its future needs. Its services are asked to be ready for every request, as a
//! fresh clone is: all of the gateway's are.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tower::{Service, ServiceExt};

/// A service answering `Req` with `Res`, never failing, whatever its type.
pub(crate) struct ArcService<Req, Res> {
    inner: Arc<dyn Run<Req, Res>>,
}

impl<Req, Res> ArcService<Req, Res> {
    pub(crate) fn new<S>(svc: S) -> Self
    where
        S: Service<Req, Response = Res, Error = Infallible> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        Req: Send + 'static,
    {
        Self { inner: Arc::new(svc) }
    }
}

impl<Req, Res> Clone for ArcService<Req, Res> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

/// What [`ArcService`] asks of the service it holds: a request run by a clone.
trait Run<Req, Res>: Send + Sync {
    fn run(&self, req: Req) -> BoxFuture<'static, Result<Res, Infallible>>;
}

impl<S, Req, Res> Run<Req, Res> for S
where
    S: Service<Req, Response = Res, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    Req: Send + 'static,
{
    fn run(&self, req: Req) -> BoxFuture<'static, Result<Res, Infallible>> {
        // The clone, made ready and called, lives in the future's own box.
        Box::pin(self.clone().oneshot(req))
    }
}

impl<Req, Res> Service<Req> for ArcService<Req, Res> {
    type Response = Res;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Res, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness is the clone's, driven inside each request's future.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.inner.run(req)
    }
}

impl<Req, Res> ArcService<Req, Res> {
    /// Runs `req` without a `&mut` (the service is shared, not changed).
    pub(crate) fn run(&self, req: Req) -> BoxFuture<'static, Result<Res, Infallible>> {
        self.inner.run(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service that is ready only on its second poll.
    #[derive(Clone)]
    struct Slow {
        polled: bool,
    }

    impl Service<u32> for Slow {
        type Response = u32;
        type Error = Infallible;
        type Future = std::future::Ready<Result<u32, Infallible>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            if std::mem::replace(&mut self.polled, true) {
                Poll::Ready(Ok(()))
            } else {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }

        fn call(&mut self, req: u32) -> Self::Future {
            assert!(self.polled, "called before it was ready");
            std::future::ready(Ok(req * 2))
        }
    }

    #[tokio::test]
    async fn each_request_is_run_by_a_clone_made_ready_first() {
        let svc = ArcService::new(Slow { polled: false });
        let mut copy = svc.clone();
        assert_eq!(copy.ready().await.unwrap().call(21).await.unwrap(), 42);
        // The held service was never polled: each request's clone starts unready.
        assert_eq!(svc.run(4).await.unwrap(), 8);
    }
}
