//! The `demo-gateway` binary exporting its spans to an OTLP/HTTP receiver of
//! the test's own: one trace from the client through the retries to the
//! upstream, JSON log lines and exemplars that join it, and a collector down
//! or black-holed costing no request.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

mod otlp;

use otlp::{Span, receiver, trace_of};

const BIN: &str = env!("CARGO_BIN_EXE_demo-gateway");
const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The gateway process, and every line it wrote to stderr.
struct Running {
    child: Child,
    port: u16,
    stderr: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Runs the binary in front of `backend`, exporting to `collector`, until it
/// answers `/healthz`.
async fn start_gateway(backend: SocketAddr, collector: SocketAddr, env: &[(&str, &str)]) -> Running {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\n\
         [telemetry]\notlp_protocol = \"http/json\"\nlog_format = \"json\"\n\
         [upstreams.items]\nendpoints = [\"http://{backend}\"]\n\
         [[routes]]\nname = \"items\"\nprefix = \"/api/items\"\nupstream = \"items\"\naccess = \"public\"\n"
    );
    std::fs::write(&file, config).unwrap();
    let mut command = Command::new(BIN);
    command
        .args(["--config", file.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let lines = stderr.clone();
    let pipe = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });
    let running = Running { child, port, stderr, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&running.url("/healthz"), &[]).await.map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "the gateway never became healthy");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    running
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = client.request(req.body(Empty::new()).unwrap()).await.ok()?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// An upstream answering `503` to its first `failures` requests, then `200`,
/// keeping the `traceparent` of each.
async fn backend(failures: usize) -> (SocketAddr, Arc<Mutex<Vec<Option<String>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = Router::new().fallback(routing::any(move |headers: HeaderMap| {
        let log = log.clone();
        async move {
            let mut log = log.lock().unwrap();
            log.push(headers.get("traceparent").map(|v| v.to_str().unwrap().to_owned()));
            if log.len() <= failures { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK }
        }
    }));
    (serve(app).await, seen)
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn field(traceparent: &str, index: usize) -> &str {
    traceparent.split('-').nth(index).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_the_client_through_each_attempt_to_the_upstream_joined_by_logs_and_exemplars() {
    let (collector, spans) = receiver().await;
    let (backend_addr, upstream) = backend(1).await;
    let gateway = start_gateway(backend_addr, collector, &[]).await;

    let (status, _) = get(&gateway.url("/api/items/1"), &[("traceparent", CLIENT)]).await.unwrap();
    assert_eq!(status, 200);
    let trace = trace_of(&spans, field(CLIENT, 1), 2).await;
    let server = trace.iter().find(|s| s.kind() == 2).unwrap();
    assert_eq!(server.service, "gateway");
    assert_eq!(server.str("parentSpanId"), field(CLIENT, 2), "the client's span is the parent");
    assert_eq!(server.str("name"), "GET items");
    assert_eq!(server.attr("http.route").as_deref(), Some("items"));
    assert_eq!(server.attr("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(server.attr("client.address").as_deref(), Some("127.0.0.1"));
    let mut attempts: Vec<&Span> = trace.iter().filter(|s| s.kind() == 3).collect();
    assert_eq!(attempts.len(), 2, "a span per attempt: {trace:#?}");
    attempts.sort_by_key(|s| s.str("startTimeUnixNano").parse::<u128>().unwrap_or_default());
    assert_eq!(attempts[0].attr("error.type").as_deref(), Some("503"));
    assert_eq!(attempts[1].attr("http.response.status_code").as_deref(), Some("200"));
    let seen = upstream.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for (attempt, traceparent) in attempts.iter().zip(&seen) {
        assert_eq!(attempt.str("parentSpanId"), server.str("spanId"));
        let traceparent = traceparent.as_deref().expect("the attempt's context upstream");
        assert_eq!((field(traceparent, 1), field(traceparent, 2)), (field(CLIENT, 1), attempt.str("spanId")));
    }

    // The access log line is JSON, with the trace and the server span.
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let lines = gateway.stderr.lock().unwrap().clone();
        let found = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["message"] == "response" && l["trace_id"] == field(CLIENT, 1));
        if let Some(line) = found {
            break line;
        }
        assert!(Instant::now() < deadline, "no JSON access log line with the trace id: {lines:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(line["span_id"], server.str("spanId"));
    assert_eq!(line["route"], "items");
    assert_eq!(line["status"], 200);

    // The duration histogram carries the trace as an exemplar.
    let (_, metrics) =
        get(&gateway.url("/metrics"), &[("accept", "application/openmetrics-text; version=1.0.0")]).await.unwrap();
    let exemplar = format!("# {{trace_id=\"{}\"}}", field(CLIENT, 1));
    for (histogram, label) in [
        ("gateway_request_duration_seconds_bucket", "route=\"items\""),
        ("gateway_upstream_request_duration_seconds_bucket", "upstream=\"items\""),
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(histogram) && l.contains(label) && l.contains(&exemplar)),
            "no exemplar with the trace id on {histogram}:\n{metrics}"
        );
    }

    // No traceparent, or a malformed one: the gateway starts the trace, and
    // the upstream sees the gateway's context, never the malformed one.
    for incoming in [None, Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1")] {
        let headers: Vec<(&str, &str)> = incoming.map(|v| ("traceparent", v)).into_iter().collect();
        assert_eq!(get(&gateway.url("/api/items/2"), &headers).await.unwrap().0, 200);
        let traceparent = upstream.lock().unwrap().last().cloned().flatten().expect("the gateway's context");
        assert_ne!(field(&traceparent, 1), field(CLIENT, 1));
        let trace = trace_of(&spans, field(&traceparent, 1), 1).await;
        let server = trace.iter().find(|s| s.kind() == 2).unwrap();
        assert_eq!(server.str("parentSpanId"), "", "a root span: {incoming:?}");
        let attempt = trace.iter().find(|s| s.kind() == 3).unwrap();
        assert_eq!(attempt.str("spanId"), field(&traceparent, 2));
    }
}

/// The gateway's count of spans with `outcome`.
async fn spans_counted(gateway: &Running, outcome: &str) -> u64 {
    let (_, metrics) = get(&gateway.url("/metrics"), &[]).await.unwrap();
    let series = format!("gateway_trace_spans_total{{outcome=\"{outcome}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_down_or_black_holed_costs_no_request_and_every_lost_span_is_counted() {
    let (upstream, _) = backend(0).await;
    let requests = 100;

    // Down: nothing listens where the spans go.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let gateway = start_gateway(upstream, down, &[]).await;
    for _ in 0..requests {
        assert_eq!(get(&gateway.url("/api/items/1"), &[]).await.unwrap().0, 200);
    }
    // A server span and an attempt span per request, each failed to send.
    let deadline = Instant::now() + Duration::from_secs(30);
    while spans_counted(&gateway, "failed").await < 2 * requests {
        assert!(Instant::now() < deadline, "failed spans never counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(gateway);

    // Black-holed: the collector accepts and never answers; 20 spans may wait.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = hole.accept().await {
            held.push(stream);
        }
    });
    let gateway = start_gateway(upstream, hole_addr, &[("OTEL_BSP_MAX_QUEUE_SIZE", "20")]).await;
    for _ in 0..requests {
        assert_eq!(get(&gateway.url("/api/items/1"), &[]).await.unwrap().0, 200);
    }
    // Every span is accounted for: dropped at the full queue, or failed when
    // its export timed out (5 s each); none exported, none lost uncounted.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (dropped, failed) = (spans_counted(&gateway, "dropped").await, spans_counted(&gateway, "failed").await);
        if dropped + failed == 2 * requests {
            assert!(dropped > 0 && failed <= 20, "dropped {dropped}, failed {failed}");
            assert_eq!(spans_counted(&gateway, "exported").await, 0);
            break;
        }
        assert!(Instant::now() < deadline, "dropped {dropped} + failed {failed} != {}", 2 * requests);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
