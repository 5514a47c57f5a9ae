//! The tower layer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_gateway::ResponseBody;
use tower_layer::Layer;
use tower_service::Service;

use crate::authenticator::{Authenticator, Step};
use crate::claims::Verified;
use crate::error::Rejection;
use crate::store::BoxFuture;

/// What a route requires of a token beyond being valid: one of `roles`, and
/// every one of `scopes`.
#[derive(Debug, Clone, Default)]
struct Required {
    roles: Option<Arc<[String]>>,
    scopes: Option<Arc<[String]>>,
}

type Roles = Option<Arc<Required>>;

/// Requires a valid, unrevoked `Authorization: Bearer` JWT, and optionally a role.
/// See the [crate docs](crate).
#[derive(Debug, Clone)]
#[must_use]
pub struct JwtAuthLayer {
    auth: Authenticator,
    roles: Roles,
}

impl JwtAuthLayer {
    /// A layer authenticating with `auth`: any valid token is let through.
    pub fn new(auth: Authenticator) -> Self {
        Self { auth, roles: None }
    }

    /// Also requires the token's `roles` claim to hold at least one of `roles`;
    /// a valid token without one is answered `403` with
    /// `{"error":{"code":"forbidden",..}}` and never reaches the inner service.
    ///
    /// ```
    /// use axum::{Router, routing::{delete, get}};
    /// use tower_gateway_auth::{Authenticator, JwtAuthLayer, Key};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let auth = Authenticator::builder(Key::hs256(b"a shared secret of at least 32 bytes!")?).build()?;
    /// let app: Router = Router::new()
    ///     .route("/products/{id}", delete(|| async { "deleted" }))
    ///     .route_layer(JwtAuthLayer::new(auth.clone()).any_role(["admin"]))
    ///     .route("/orders", get(|| async { "your orders" }).route_layer(JwtAuthLayer::new(auth)));
    /// # let _ = app;
    /// # Ok(())
    /// # }
    /// ```
    pub fn any_role<I>(self, roles: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let roles = roles.into_iter().map(Into::into).collect();
        self.require(|required| required.roles = Some(roles))
    }

    /// Also requires the token to carry every one of `scopes` (read from `scope`
    /// or `scp`, or the issuer's [`scopes_claim`](crate::Issuer::scopes_claim));
    /// a valid token without them is answered `403` `insufficient_scope`.
    ///
    /// ```
    /// use axum::{Router, routing::post};
    /// use tower_gateway_auth::{Authenticator, JwtAuthLayer, Key};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let auth = Authenticator::builder(Key::hs256(b"a shared secret of at least 32 bytes!")?).build()?;
    /// let app: Router = Router::new()
    ///     .route("/orders", post(|| async { "ordered" }))
    ///     .route_layer(JwtAuthLayer::new(auth).all_scopes(["orders:write"]));
    /// # let _ = app;
    /// # Ok(())
    /// # }
    /// ```
    pub fn all_scopes<I>(self, scopes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let scopes = scopes.into_iter().map(Into::into).collect();
        self.require(|required| required.scopes = Some(scopes))
    }

    fn require(mut self, add: impl FnOnce(&mut Required)) -> Self {
        let mut required = self.roles.as_deref().cloned().unwrap_or_default();
        add(&mut required);
        self.roles = Some(Arc::new(required));
        self
    }
}

impl<S> Layer<S> for JwtAuthLayer {
    type Service = JwtAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        JwtAuth { inner, auth: self.auth.clone(), roles: self.roles.clone() }
    }
}

/// Requires a valid, unrevoked `Authorization: Bearer` JWT, and optionally a role.
/// See the [crate docs](crate).
#[derive(Debug, Clone)]
#[must_use]
pub struct JwtAuth<S> {
    inner: S,
    auth: Authenticator,
    roles: Roles,
}

impl<S> JwtAuth<S> {
    /// Wraps `inner`, authenticating with `auth`.
    pub fn new(inner: S, auth: Authenticator) -> Self {
        Self { inner, auth, roles: None }
    }

    /// A [`JwtAuthLayer`] authenticating with `auth`.
    pub fn layer(auth: Authenticator) -> JwtAuthLayer {
        JwtAuthLayer::new(auth)
    }

    tower_gateway::__inner_service_accessors!();
}

/// Removes client-sent identity headers, and their names from `Connection`, so that
/// no hop further on can be told to drop the ones the layer sets.
fn scrub(headers: &mut HeaderMap, names: &[HeaderName]) {
    for name in names {
        headers.remove(name);
    }
    if !headers.contains_key(header::CONNECTION) {
        return;
    }
    let mut kept = Vec::new();
    let mut changed = false;
    for value in headers.get_all(header::CONNECTION) {
        for token in value.to_str().unwrap_or_default().split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if names.iter().any(|n| n.as_str().eq_ignore_ascii_case(token)) {
                changed = true;
            } else {
                kept.push(token);
            }
        }
    }
    if changed {
        let kept = kept.join(", ");
        headers.remove(header::CONNECTION);
        if let Ok(value) = HeaderValue::from_str(&kept)
            && !kept.is_empty()
        {
            headers.insert(header::CONNECTION, value);
        }
    }
}

/// Lets the request in with the verified identity, if it carries a required role.
fn admit<B>(req: &mut Request<B>, verified: &Verified, roles: &Roles) -> Result<(), Rejection> {
    if let Some(required) = roles {
        if let Some(roles) = &required.roles
            && !roles.iter().any(|role| verified.who.has_role(role))
        {
            return Err(Rejection::Forbidden);
        }
        if let Some(scopes) = &required.scopes
            && !scopes.iter().all(|scope| verified.who.has_scope(scope))
        {
            return Err(Rejection::Forbidden);
        }
    }
    for (name, value) in &verified.headers {
        req.headers_mut().insert(name.clone(), value.clone());
    }
    req.extensions_mut().insert(verified.who.clone());
    Ok(())
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for JwtAuth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, Request<ReqBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        scrub(req.headers_mut(), self.auth.identity_header_names());
        // The check's span (OpenTelemetry, with tower-gateway's `TraceContextLayer`
        // above): `hit` when the token cache answered, `lookup` when the store or
        // the issuer's keys were asked; it ends before the request goes on.
        let span = tracing::debug_span!(
            target: "tower_gateway_auth::layer",
            "auth",
            otel.name = "auth",
            otel.kind = "internal",
            auth.cache = tracing::field::Empty,
            auth.outcome = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let step = span.in_scope(|| self.auth.begin(req.headers()));
        let state = match step {
            Step::Allow(verified) => {
                span.record("auth.cache", "hit");
                match admitted(&span, admit(&mut req, &verified, &self.roles)) {
                    Ok(()) => State::Calling { future: self.inner.call(req) },
                    Err(rejection) => State::Refused { rejection },
                }
            }
            Step::Reject(rejection) => {
                tracing::debug!(reason = rejection.code(), "request refused");
                refusal(&span, &rejection);
                State::Refused { rejection }
            }
            Step::Pending(check) => {
                span.record("auth.cache", "lookup");
                // The ready service goes into the future; a fresh clone stays behind.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                State::Checking { check, request: Some(req), inner: Some(inner), roles: self.roles.clone(), span }
            }
        };
        ResponseFuture { state }
    }
}

/// Records the check's outcome on its span.
fn admitted(span: &tracing::Span, result: Result<(), Rejection>) -> Result<(), Rejection> {
    match &result {
        Ok(()) => {
            span.record("auth.outcome", "allowed");
        }
        Err(rejection) => refusal(span, rejection),
    }
    result
}

fn refusal(span: &tracing::Span, rejection: &Rejection) {
    span.record("auth.outcome", "refused").record("error.type", rejection.code());
}

pin_project! {
    /// The response future of [`JwtAuth`].
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        Checking {
            check: BoxFuture<'static, Result<Arc<Verified>, Rejection>>,
            request: Option<Req>,
            inner: Option<S>,
            roles: Roles,
            span: tracing::Span,
        },
        Calling { #[pin] future: S::Future },
        Refused { rejection: Rejection },
    }
}

impl<S: Service<Req>, Req> std::fmt::Debug for ResponseFuture<S, Req> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, Request<ReqBody>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Checking { check, request, inner, roles, span } => {
                    let verified = match ready!(span.in_scope(|| check.as_mut().poll(cx))) {
                        Ok(verified) => verified,
                        Err(rejection) => {
                            tracing::debug!(reason = rejection.code(), "request refused");
                            refusal(span, &rejection);
                            this.state.set(State::Refused { rejection });
                            continue;
                        }
                    };
                    let mut req = request.take().expect("request taken once");
                    if let Err(rejection) = admitted(span, admit(&mut req, &verified, roles)) {
                        this.state.set(State::Refused { rejection });
                        continue;
                    }
                    let future = inner.as_mut().expect("service taken once").call(req);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    return future.poll(cx).map(|result| result.map(|response| response.map(ResponseBody::new)));
                }
                StateProj::Refused { rejection } => return Poll::Ready(Ok(rejection.into_response())),
            }
        }
    }
}

#[cfg(test)]
mod tests;
