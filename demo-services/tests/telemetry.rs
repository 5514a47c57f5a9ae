//! One checkout is one trace: the gateway (in this process, exporting as
//! `gateway`), checkout-service and product-service (each its own process,
//! exporting under its own name) send their spans to an OTLP/HTTP receiver of
//! the test's own, and the spans hang together — gateway server span, an
//! attempt span per try, checkout-service's server span beneath the attempt
//! that reached it, its call to product-service, product-service beneath that,
//! and the SQLite calls of each.

mod common;
#[path = "../../demo-gateway/tests/otlp/mod.rs"]
#[allow(dead_code, reason = "shared with demo-gateway's tests, which use all of it")]
mod otlp;

use common::Process;
use demo_common::telemetry::{TelemetryConfig, init};
use http::{Method, StatusCode};
use otlp::{Span, receiver};
use serde_json::json;

const PRODUCT_SERVICE: &str = env!("CARGO_BIN_EXE_product-service");
const CHECKOUT_SERVICE: &str = env!("CARGO_BIN_EXE_checkout-service");
const SECRET: &str = "a telemetry test secret of 32+ bytes";
const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The spans of the trace whose gateway server span carries `request_id`.
async fn trace_by_request_id(spans: &std::sync::Mutex<Vec<Span>>, request_id: &str) -> (String, Vec<Span>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let all = spans.lock().unwrap().clone();
        let root = all
            .iter()
            .find(|s| s.kind() == 2 && s.attr("http.request.header.x-request-id").as_deref() == Some(request_id));
        if let Some(root) = root {
            let trace = root.str("traceId").to_owned();
            let found: Vec<Span> = all.iter().filter(|s| s.str("traceId") == trace).cloned().collect();
            // Whole once product-service's query has arrived (it ends first, but
            // each process sends on its own).
            let services = |name: &str| found.iter().any(|s| s.service == name && s.kind() == 2);
            if services("gateway")
                && services("checkout-service")
                && services("product-service")
                && found.iter().any(|s| s.service == "checkout-service" && s.str("name") == "INSERT orders")
            {
                return (trace, found);
            }
        }
        assert!(std::time::Instant::now() < deadline, "the trace of {request_id} never arrived whole");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn children<'a>(spans: &'a [Span], parent: &Span) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.str("parentSpanId") == parent.str("spanId")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_checkout_is_one_trace_from_the_gateway_through_checkout_to_product() {
    let (collector, spans) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let otel = |service: &str| {
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
            ("OTEL_SERVICE_NAME", service.to_owned()),
            ("JWT_ALGORITHM", "HS256".to_owned()),
            ("JWT_SECRET_FILE", secret.display().to_string()),
        ]
    };
    let product_env: Vec<(&str, String)> = otel("product-service")
        .into_iter()
        .chain([("DATABASE_URL", format!("sqlite://{}", dir.path().join("products.db").display()))])
        .collect();
    let product = Process::start(PRODUCT_SERVICE, &product_env).await;
    let checkout_env: Vec<(&str, String)> = otel("checkout-service")
        .into_iter()
        .chain([
            ("DATABASE_URL", format!("sqlite://{}", dir.path().join("orders.db").display())),
            ("PRODUCT_SERVICE_URLS", product.url()),
        ])
        .collect();
    let checkout = Process::start(CHECKOUT_SERVICE, &checkout_env).await;

    // The gateway, in this process, exporting as "gateway"; its first endpoint
    // for checkout refuses connections, so some checkout is retried.
    let config = TelemetryConfig {
        otlp_endpoint: Some(format!("http://{collector}")),
        otlp_protocol: Some("http/json".into()),
        ..TelemetryConfig::default()
    };
    let telemetry = init("gateway", &config).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let toml = format!(
        "[jwt]\nalgorithm = \"HS256\"\nsecret_file = \"{}\"\n\
         [limits.per-address]\nrate = 100\nper = \"second\"\nkey = \"client_ip\"\n\
         [upstreams.checkout]\nendpoints = [\"http://{closed}\", \"{}\"]\n\
         [[routes]]\nname = \"checkout\"\nprefix = \"/api/checkout\"\nupstream = \"checkout\"\naccess = \"token\"\n\
         limits = [\"per-address\"]\n",
        secret.display(),
        checkout.url()
    );
    let gateway_config = demo_gateway::Config::from_toml(&toml, "test", |_| None).unwrap();
    let plan = demo_gateway::Plan::compile(gateway_config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = listener.local_addr().unwrap();
    tokio::spawn(demo_gateway::serve(plan, listener, std::future::pending()));

    let token = tower_gateway_auth::TokenIssuer::hmac(tower_gateway_auth::Algorithm::HS256, SECRET.as_bytes())
        .unwrap()
        .issuer("user-service")
        .audience("tower-gateway")
        .issue("7", None, &[])
        .unwrap();
    let client = common::HttpClient::new().bearer(&token);
    let malformed = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1";
    let mut retried = 0;
    for (n, incoming) in [Some(CLIENT), None, Some(malformed), None].into_iter().enumerate() {
        let mut headers = vec![("idempotency-key", format!("order-{n}"))];
        if let Some(traceparent) = incoming {
            headers.push(("traceparent", traceparent.to_owned()));
        }
        let (status, order, response) = client
            .send_with(
                Method::POST,
                &format!("http://{gateway}/api/checkout"),
                Some(json!({"product_id": 1, "quantity": 2})),
                &headers,
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::CREATED, "{order}");
        telemetry.flush();
        // The gateway's request id, on its span and sent back.
        let request_id = response["x-request-id"].to_str().unwrap();

        let (trace_id, trace) = trace_by_request_id(&spans, request_id).await;
        if incoming == Some(CLIENT) {
            assert_eq!(trace_id, CLIENT.split('-').nth(1).unwrap(), "the client's trace continues");
        } else {
            assert_ne!(trace_id, CLIENT.split('-').nth(1).unwrap(), "{incoming:?}: the gateway starts the trace");
        }
        let by = |service: &str, kind: i64| -> Vec<&Span> {
            trace.iter().filter(|s| s.service == service && s.kind() == kind).collect()
        };
        let [gateway_server] = by("gateway", 2)[..] else { panic!("one gateway server span: {trace:#?}") };
        if incoming != Some(CLIENT) {
            assert_eq!(gateway_server.str("parentSpanId"), "", "{incoming:?}: a root span");
        }
        // Beneath it: the token check, the rate-limit decision, and the attempts.
        let below = children(&trace, gateway_server);
        let check = |name: &str, key: &str| below.iter().find(|s| s.str("name") == name).and_then(|s| s.attr(key));
        assert_eq!(check("auth", "auth.outcome").as_deref(), Some("allowed"), "{below:#?}");
        assert!(matches!(check("auth", "auth.cache").as_deref(), Some("hit" | "lookup")));
        assert_eq!(check("rate limit", "ratelimit.outcome").as_deref(), Some("allowed"));
        let attempts: Vec<&Span> = below.into_iter().filter(|s| s.kind() == 3).collect();
        if attempts.len() == 2 {
            retried += 1;
            assert!(attempts.iter().any(|a| a.attr("error.type").as_deref() == Some("upstream_connect_failed")));
        }
        // checkout-service's server span is the child of the attempt that reached it.
        let [checkout_server] = by("checkout-service", 2)[..] else { panic!("one checkout server span: {trace:#?}") };
        let reached = attempts.iter().find(|a| a.attr("http.response.status_code").as_deref() == Some("201")).unwrap();
        assert_eq!(checkout_server.str("parentSpanId"), reached.str("spanId"));
        assert_eq!(checkout_server.str("name"), "POST /");
        let below_checkout = children(&trace, checkout_server);
        let names: Vec<&str> = below_checkout.iter().map(|s| s.str("name")).collect();
        for name in ["SELECT idempotency_keys", "INSERT idempotency_keys", "INSERT orders"] {
            assert!(names.contains(&name), "{name} not beneath checkout's span: {names:?}");
        }
        // Its call for the price, and product-service beneath that call.
        let call = below_checkout
            .iter()
            .find(|s| s.kind() == 3 && s.attr("server.port") == Some(product.addr.port().to_string()))
            .expect("checkout's call to product-service");
        let [product_server] = by("product-service", 2)[..] else { panic!("one product server span: {trace:#?}") };
        assert_eq!(product_server.str("parentSpanId"), call.str("spanId"));
        assert_eq!(product_server.str("name"), "GET /{id}");
        let queries: Vec<&str> = children(&trace, product_server).iter().map(|s| s.str("name")).collect();
        assert_eq!(queries, ["SELECT products"]);
    }
    // Round robin over a refusing endpoint and a live one: some checkout was retried.
    assert!(retried > 0, "no checkout was retried");
}
