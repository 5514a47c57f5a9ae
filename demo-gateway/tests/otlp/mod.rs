//! An OTLP/HTTP receiver (JSON) for tests: it keeps every span it is sent,
//! with the `service.name` of its resource. Shared with demo-services' tests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing;
use bytes::Bytes;
use serde_json::Value;

/// A span as the receiver keeps it: its service and the OTLP/JSON span.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    pub(crate) service: String,
    pub(crate) json: Value,
}

impl Span {
    pub(crate) fn str(&self, key: &str) -> &str {
        self.json[key].as_str().unwrap_or_default()
    }

    /// `2` server, `3` client.
    pub(crate) fn kind(&self) -> i64 {
        self.json["kind"].as_i64().unwrap_or_default()
    }

    pub(crate) fn attr(&self, key: &str) -> Option<String> {
        let attrs = self.json["attributes"].as_array()?;
        let value = &attrs.iter().find(|a| a["key"] == key)?["value"];
        let value = value.as_object()?.values().next()?;
        Some(value.as_str().map_or_else(|| value.to_string(), str::to_owned))
    }
}

/// An OTLP/HTTP receiver (JSON) keeping every span it is sent.
pub(crate) async fn receiver() -> (SocketAddr, Arc<Mutex<Vec<Span>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = spans.clone();
    let app = Router::new().route(
        "/v1/traces",
        routing::post(move |body: Bytes| {
            let kept = kept.clone();
            async move {
                let request: Value = serde_json::from_slice(&body).unwrap();
                for resource in request["resourceSpans"].as_array().unwrap() {
                    let service = resource["resource"]["attributes"]
                        .as_array()
                        .and_then(|a| a.iter().find(|a| a["key"] == "service.name"))
                        .map(|a| a["value"]["stringValue"].as_str().unwrap().to_owned())
                        .unwrap_or_default();
                    for scope in resource["scopeSpans"].as_array().unwrap() {
                        for span in scope["spans"].as_array().unwrap() {
                            kept.lock().unwrap().push(Span { service: service.clone(), json: span.clone() });
                        }
                    }
                }
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, spans)
}

/// The spans of `trace` once its server span and `attempts` attempt spans have arrived.
pub(crate) async fn trace_of(spans: &Mutex<Vec<Span>>, trace: &str, attempts: usize) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found: Vec<Span> = spans.lock().unwrap().iter().filter(|s| s.str("traceId") == trace).cloned().collect();
        if found.iter().filter(|s| s.kind() == 3).count() >= attempts && found.iter().any(|s| s.kind() == 2) {
            return found;
        }
        assert!(Instant::now() < deadline, "trace {trace} never arrived whole: {found:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
