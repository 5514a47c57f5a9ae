//! A piece of a route's stack: any layer's service, boxed, answering one body.

use std::convert::Infallible;

use http::{Request, Response};
use tower::{Service, ServiceExt};
use tower_gateway::Body;

use crate::routes::{RouteBody, Stack};

/// A layer's service as a piece of a route: boxed, its answers one [`Body`]
/// again (the layers' `ResponseBody` flattens with no allocation).
pub(super) fn stacked<S, B>(svc: S) -> Stack
where
    S: Service<Request<RouteBody>, Response = Response<B>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    B: Into<Body> + 'static,
{
    Stack::new(svc.map_response(|response: Response<B>| response.map(Into::into)))
}
