//! The gateway's own routes: `/healthz`, `/readyz` and `/metrics` (on the admin
//! listener when there is one), and the redirect listener's `308` to HTTPS.

use std::sync::Arc;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};
use tower_gateway::Body;
use tower_gateway::error::{BoxError, json_error};
use tower_http::body::UnsyncBoxBody;

use super::app::ResponseBody;
use super::live::{App, Gateway, ReloadError};
use crate::config::{Config, ConfigError};
use crate::plan::Plan;
use crate::routes::{Routes, Table};

async fn readyz(table: Arc<Table>) -> (StatusCode, axum::Json<serde_json::Value>) {
    match table.ready().await {
        Ok(()) => (StatusCode::OK, axum::Json(serde_json::json!({ "status": "ready" }))),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "status": "not ready", "reason": reason })),
        ),
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The paths the gateway answers itself; every other goes through the route table.
pub(super) const OPS_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The gateway's own routes, `/healthz`, and `/readyz` and `/metrics` unless
/// an admin listener serves those.
pub(super) fn ops_router(plan: &Plan) -> Router {
    let router = Router::new().route("/healthz", get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }));
    // With an admin listener, readiness and metrics live there only.
    let router = if plan.settings.admin_listen.is_some() { router } else { router.merge(admin_router(plan)) };
    let routes = Routes { table: plan.table.clone() };
    router
        .method_not_allowed_fallback(|| async {
            json_error::<Body>(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this path takes GET")
        })
        .fallback_service(routes)
}

/// `GET /readyz` (every upstream has an endpoint; the token store answers) and
/// `GET /metrics`: internal addresses and a Redis round trip each, so served on
/// the admin listener when there is one.
fn admin_router(plan: &Plan) -> Router {
    let (table, metrics_table) = (plan.table.clone(), plan.table.clone());
    Router::new().route("/readyz", get(move || readyz(table.clone()))).route(
        "/metrics",
        get(move || std::future::ready(([(header::CONTENT_TYPE, OPENMETRICS)], metrics_table.metrics_text()))),
    )
}

/// What finds the gateway a generation is served by, for a reload.
pub(super) type Reloader = Arc<dyn Fn() -> Option<Gateway> + Send + Sync>;

/// The admin listener's app: `/readyz` and `/metrics`, and with an admin token
/// `GET /config` (the configuration served, secrets masked) and `POST
/// /config/reload` (the config file read again or, with a body, that TOML
/// applied), each refused `401` without the token.
pub(super) fn admin_app(plan: &Plan, reloader: Reloader) -> App {
    let mut router = admin_router(plan);
    if let Some(token) = &plan.settings.admin_token {
        let (token, masked) = (token.clone(), plan.to_masked_toml());
        let show = move |headers: HeaderMap| {
            let response = if is_authorized(&headers, &token) {
                ([(header::CONTENT_TYPE, "application/toml")], masked.clone()).into_response()
            } else {
                unauthorized()
            };
            std::future::ready(response)
        };
        let token = plan.settings.admin_token.clone().expect("checked above");
        let reload = move |headers: HeaderMap, body: Bytes| {
            let (token, reloader) = (token.clone(), reloader.clone());
            async move {
                if !is_authorized(&headers, &token) {
                    return unauthorized();
                }
                let Some(gateway) = reloader() else {
                    return json_error::<Body>(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "shutting_down",
                        "the gateway is stopping",
                    )
                    .into_response();
                };
                let outcome = if body.is_empty() {
                    gateway.reload().await
                } else {
                    match std::str::from_utf8(&body)
                        .map_err(|e| ConfigError::new("body", e))
                        .and_then(|text| Config::from_toml(text, "body", |name| std::env::var(name).ok()))
                    {
                        Ok(config) => gateway.apply(config).await,
                        Err(err) => Err(ReloadError { errors: vec![err] }),
                    }
                };
                match outcome {
                    Ok(reloaded) => axum::Json(serde_json::json!({
                        "status": "applied",
                        "generation": reloaded.generation,
                        "hash": reloaded.hash,
                        "summary": reloaded.summary,
                    }))
                    .into_response(),
                    Err(refused) => refused_response(&refused).into_response(),
                }
            }
        };
        router = router.route("/config", get(show)).route("/config/reload", post(reload));
    }
    let router = router.method_not_allowed_fallback(|| async {
        json_error::<Body>(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this path takes another method")
    });
    let router = router.fallback(|| async { json_error::<Body>(StatusCode::NOT_FOUND, "not_found", "no such path") });
    side_app(router)
}

/// `422` with every refused field, the configuration before kept.
fn refused_response(refused: &ReloadError) -> (StatusCode, axum::Json<serde_json::Value>) {
    let fields: Vec<serde_json::Value> =
        refused.errors.iter().map(|e| serde_json::json!({ "field": e.field, "message": e.message })).collect();
    let body = serde_json::json!({ "error": {
        "code": "config_refused",
        "message": format!("the configuration was refused, and the one before is still served: {refused}"),
        "fields": fields,
    }});
    (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body))
}

/// Whether `headers` carry `Authorization: Bearer TOKEN`, compared in constant time.
fn is_authorized(headers: &HeaderMap, token: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0, |d, (a, b)| d | (a ^ b)) == 0
}

/// The `401` for a request without the admin token.
fn unauthorized() -> axum::response::Response {
    let mut refused =
        json_error::<Body>(StatusCode::UNAUTHORIZED, "unauthorized", "the admin token is missing or wrong");
    refused.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    refused.into_response()
}

/// An axum router as a listener's app.
pub(super) fn side_app(router: Router) -> App {
    use http_body_util::BodyExt;
    let to_body = |response: Response<axum::body::Body>| -> Response<ResponseBody> {
        response.map(|body| Either::Left(UnsyncBoxBody::new(body.map_err(BoxError::from))))
    };
    App::new(tower::util::MapResponse::new(router, to_body))
}

/// A `308` to the same URL over HTTPS on `https_port`; `400` without a usable `Host`.
pub(super) fn to_https(headers: &http::HeaderMap, uri: &http::Uri, https_port: u16) -> Response<Full<Bytes>> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
        .filter(|a| !a.as_str().contains('@'));
    let Some(host) = host else {
        return json_error(StatusCode::BAD_REQUEST, "bad_host", "a valid Host header is required");
    };
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = match https_port {
        443 => format!("https://{}{path}", host.host()),
        port => format!("https://{}:{port}{path}", host.host()),
    };
    let mut response = json_error(StatusCode::PERMANENT_REDIRECT, "use_https", "this service is served over HTTPS");
    if let Ok(location) = HeaderValue::try_from(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}
