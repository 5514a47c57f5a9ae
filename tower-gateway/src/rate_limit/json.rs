//! Reading a few fields of a small JSON body before the request goes on, so a
//! limit can count by what the body names (the account of a login, say).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, Limited};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::error::{BoxError, json_error};

/// The fields [`ReadJsonLayer`] found, in the request's extensions; read them
/// with [`key::JsonField`](super::key::JsonField).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonFields(Vec<(Arc<str>, String)>);

impl JsonFields {
    /// The string value of the top-level field `name`, if the body had one.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| &**n == name).map(|(_, v)| v.as_str())
    }
}

/// Buffers JSON request bodies of at most `max_bytes` and puts the named
/// top-level string fields in the request's extensions as [`JsonFields`]; the
/// request goes on with the same bytes. A body that is not JSON (by its
/// `Content-Type`) passes untouched with no fields; a larger one is answered
/// `413`, and one that fails to arrive `400`, each with a JSON error.
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_gateway::rate_limit::key::JsonField;
/// use tower_gateway::rate_limit::{Limiter, Quota, RateLimitLayer, ReadJsonLayer};
///
/// let per_account = ServiceBuilder::new()
///     .layer(ReadJsonLayer::new(["email"]))
///     .layer(RateLimitLayer::new(Limiter::new("login-account", Quota::per_minute(5)), JsonField::new("email")));
/// # let _ = per_account;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ReadJsonLayer {
    fields: Arc<[Arc<str>]>,
    max_bytes: usize,
}

impl ReadJsonLayer {
    /// Reads these fields from bodies of at most 16 KiB.
    pub fn new<I>(fields: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Self { fields: fields.into_iter().map(|f| Arc::from(f.as_ref())).collect(), max_bytes: 16 * 1024 }
    }

    /// The largest body read (default 16 KiB).
    pub fn max_bytes(mut self, max: usize) -> Self {
        self.max_bytes = max;
        self
    }
}

impl<S> Layer<S> for ReadJsonLayer {
    type Service = ReadJson<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadJson { inner, layer: self.clone() }
    }
}

/// Reads JSON fields into the request's extensions. See [`ReadJsonLayer`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ReadJson<S> {
    inner: S,
    layer: ReadJsonLayer,
}

impl<S> ReadJson<S> {
    crate::inner_service_accessors!();
}

fn is_json(content_type: Option<&http::HeaderValue>) -> bool {
    let Some(essence) = content_type.and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next()) else {
        return false;
    };
    let essence = essence.trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn fields_of(body: &[u8], wanted: &[Arc<str>]) -> JsonFields {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body) else {
        return JsonFields::default();
    };
    JsonFields(wanted.iter().filter_map(|name| Some((name.clone(), map.get(&**name)?.as_str()?.to_owned()))).collect())
}

/// The response future of [`ReadJson`].
pub struct ResponseFuture<R, E>(Pin<Box<dyn Future<Output = Result<R, E>> + Send>>);

impl<R, E> std::fmt::Debug for ResponseFuture<R, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<R, E> Future for ResponseFuture<R, E> {
    type Output = Result<R, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl<S, B, ResBody> Service<Request<B>> for ReadJson<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    B: HttpBody + From<Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            let future = inner.call(req);
            return ResponseFuture(Box::pin(async move { Ok(future.await?.map(ResponseBody::new)) }));
        }
        let layer = self.layer.clone();
        ResponseFuture(Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = match Limited::new(body, layer.max_bytes).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(err) if err.is::<http_body_util::LengthLimitError>() => {
                    let message = format!("a JSON body here may be at most {} bytes", layer.max_bytes);
                    return Ok(json_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", &message));
                }
                Err(_) => {
                    return Ok(json_error(
                        StatusCode::BAD_REQUEST,
                        "body_incomplete",
                        "the request body did not arrive",
                    ));
                }
            };
            let mut req = Request::from_parts(parts, B::from(bytes.clone()));
            req.extensions_mut().insert(fields_of(&bytes, &layer.fields));
            Ok(inner.call(req).await?.map(ResponseBody::new))
        }))
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    use super::*;

    async fn read(content_type: &str, body: &'static str) -> (StatusCode, Option<JsonFields>, Bytes) {
        let svc = ServiceBuilder::new().layer(ReadJsonLayer::new(["email", "n"]).max_bytes(64)).service(service_fn(
            |req: Request<Full<Bytes>>| async move {
                let fields = req.extensions().get::<JsonFields>().cloned();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let mut res = Response::new(Full::new(body));
                res.extensions_mut().insert(fields);
                Ok::<_, std::convert::Infallible>(res)
            },
        ));
        let req = Request::post("/").header("content-type", content_type).body(Full::new(Bytes::from(body))).unwrap();
        let res = svc.oneshot(req).await.unwrap();
        let status = res.status();
        let fields = res.extensions().get::<Option<JsonFields>>().cloned().flatten();
        (status, fields, res.into_body().collect().await.unwrap().to_bytes())
    }

    #[tokio::test]
    async fn fields_are_read_and_the_body_goes_on() {
        let body = r#"{"email":"Ann@Example.com","n":3,"password":"x"}"#;
        let (status, fields, seen) = read("application/json; charset=utf-8", body).await;
        assert_eq!(status, StatusCode::OK);
        let fields = fields.unwrap();
        assert_eq!(fields.get("email"), Some("Ann@Example.com"));
        assert_eq!(fields.get("n"), None, "only strings");
        assert_eq!(fields.get("password"), None, "only the fields asked for");
        assert_eq!(seen, body.as_bytes(), "the same bytes reach the service");
    }

    #[tokio::test]
    async fn other_bodies_pass_and_big_ones_are_refused() {
        let (status, fields, seen) = read("text/plain", "email=x").await;
        assert_eq!((status, fields, &seen[..]), (StatusCode::OK, None, &b"email=x"[..]));
        let (status, fields, _) = read("application/json", "[1,2]").await;
        assert_eq!((status, fields), (StatusCode::OK, Some(JsonFields::default())));
        let big = r#"{"email":"a@example.com","padding":"0123456789012345678901234567890123456789"}"#;
        let (status, _, body) = read("application/json", big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(String::from_utf8_lossy(&body).contains("body_too_large"));
    }
}
