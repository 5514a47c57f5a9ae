//! The gateway's own routes: `/healthz`, `/readyz` and `/metrics` (on the admin
//! listener when there is one), and the redirect listener's `308` to HTTPS.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use tower_gateway::Body;
use tower_gateway::error::json_error;

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
pub(super) fn admin_router(plan: &Plan) -> Router {
    let (table, metrics_table) = (plan.table.clone(), plan.table.clone());
    Router::new().route("/readyz", get(move || readyz(table.clone()))).route(
        "/metrics",
        get(move || std::future::ready(([(header::CONTENT_TYPE, OPENMETRICS)], metrics_table.metrics_text()))),
    )
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
