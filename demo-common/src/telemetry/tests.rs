use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use opentelemetry::trace::{Tracer as _, TracerProvider as _};

use super::*;

fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned())
}

#[test]
fn the_environment_fills_what_the_configuration_leaves_out() {
    let vars = env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_SERVICE_NAME", "edge"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
    ]);
    let config = TelemetryConfig::default().with_env(&vars).unwrap();
    assert_eq!(config.otlp_endpoint.as_deref(), Some("http://collector:4318"));
    assert_eq!(config.otlp_protocol.as_deref(), Some("http/json"));
    assert_eq!(config.service_name.as_deref(), Some("edge"));
    assert_eq!(config.sampler_arg, Some(0.01));
    let file = TelemetryConfig { service_name: Some("gateway".into()), ..TelemetryConfig::default() };
    assert_eq!(file.with_env(&vars).unwrap().service_name.as_deref(), Some("gateway"), "the file wins");
    let disabled = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"), ("OTEL_SDK_DISABLED", "true")]);
    assert_eq!(TelemetryConfig::default().with_env(disabled).unwrap().otlp_endpoint, None);
}

#[test]
fn a_wrong_value_names_its_variable_or_field() {
    let field = |config: TelemetryConfig| config.with_env(|_| None).unwrap_err().variable;
    let base = TelemetryConfig::default;
    assert_eq!(field(TelemetryConfig { otlp_endpoint: Some("collector:4318".into()), ..base() }), "otlp_endpoint");
    assert_eq!(field(TelemetryConfig { otlp_protocol: Some("grpc".into()), ..base() }), "otlp_protocol");
    assert_eq!(field(TelemetryConfig { sampler: Some("sometimes".into()), ..base() }), "sampler");
    assert_eq!(field(TelemetryConfig { sampler_arg: Some(1.5), ..base() }), "sampler_arg");
    assert_eq!(field(TelemetryConfig { max_queued_spans: Some(0), ..base() }), "max_queued_spans");
    let bad_arg = TelemetryConfig::default().with_env(env(&[("OTEL_TRACES_SAMPLER_ARG", "half")])).unwrap_err();
    assert_eq!(bad_arg.variable, "OTEL_TRACES_SAMPLER_ARG");
}

/// An exporter that holds each batch until the test lets it go, then answers `ok`.
#[derive(Debug)]
struct Held {
    release: Mutex<mpsc::Receiver<()>>,
    ok: bool,
    seen: Arc<Mutex<usize>>,
}

impl SpanExporter for Held {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.release.lock().unwrap().recv().ok();
        *self.seen.lock().unwrap() += batch.len();
        if self.ok { Ok(()) } else { Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure("refused".into())) }
    }
}

fn provider_over(ok: bool, bound: usize) -> (SdkTracerProvider, SpanCounts, mpsc::Sender<()>, Arc<Mutex<usize>>) {
    let (release, held) = mpsc::channel();
    let seen = Arc::new(Mutex::new(0));
    let counts = SpanCounts::default();
    let exporter = Held { release: Mutex::new(held), ok, seen: seen.clone() };
    let provider = SdkTracerProvider::builder().with_span_processor(bounded(exporter, bound, &counts, false)).build();
    (provider, counts, release, seen)
}

#[test]
fn a_stuck_collector_fills_the_queue_and_every_span_past_it_is_dropped_and_counted() {
    let (provider, counts, release, seen) = provider_over(true, 100);
    let tracer = provider.tracer("test");
    for _ in 0..130 {
        tracer.in_span("request", |_| {});
    }
    // Nothing has been sent (the exporter holds), so exactly 100 wait.
    assert_eq!(counts.dropped.get(), 30);
    for _ in 0..10 {
        let _ = release.send(());
    }
    provider.force_flush().unwrap();
    assert_eq!(*seen.lock().unwrap(), 100);
    assert_eq!((counts.exported.get(), counts.failed.get()), (100, 0));
    // Room again once they are sent.
    tracer.in_span("request", |_| {});
    let _ = release.send(());
    provider.force_flush().unwrap();
    assert_eq!((counts.exported.get(), counts.dropped.get()), (101, 30));
}

#[test]
fn a_refusing_collector_counts_the_spans_as_failed() {
    let (provider, counts, release, _) = provider_over(false, 100);
    let tracer = provider.tracer("test");
    for _ in 0..5 {
        tracer.in_span("request", |_| {});
    }
    let _ = release.send(());
    let _ = provider.force_flush();
    assert_eq!((counts.exported.get(), counts.failed.get(), counts.dropped.get()), (0, 5, 0));
}

/// A span's name and its attributes' keys.
type Seen = (String, Vec<String>);

/// An exporter that keeps the names and attribute keys of what it is sent.
#[derive(Debug, Default, Clone)]
struct Recording(Arc<Mutex<Vec<Seen>>>);

impl SpanExporter for Recording {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut kept = self.0.lock().unwrap();
        for span in batch {
            kept.push((span.name.to_string(), span.attributes.iter().map(|kv| kv.key.to_string()).collect()));
        }
        Ok(())
    }
}

#[tokio::test]
async fn the_spans_of_a_part_go_through_its_own_exporter_untagged() {
    use tower_layer::Layer as _;
    use tower_service::Service as _;

    let (main, checkout) = (Recording::default(), Recording::default());
    let by_part = ByPart { main: main.clone(), parts: vec![("checkout-service", checkout.clone())] };
    let provider =
        SdkTracerProvider::builder().with_span_processor(bounded(by_part, 100, &SpanCounts::default(), true)).build();
    let tracer = provider.tracer("test");
    tracer.in_span("the gateway's", |_| {});
    let inside = tracer.clone();
    let mut svc = PartLayer("checkout-service").layer(tower::service_fn(move |()| {
        inside.in_span("made when called", |_| {});
        let inside = inside.clone();
        async move {
            tokio::task::yield_now().await;
            inside.in_span("made while polled", |_| {});
            Ok::<_, std::convert::Infallible>(())
        }
    }));
    svc.call(()).await.unwrap();
    tracer.in_span("the gateway's again", |_| {});
    provider.force_flush().unwrap();

    let names = |r: &Recording| r.0.lock().unwrap().iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&main), ["the gateway's", "the gateway's again"]);
    assert_eq!(names(&checkout), ["made when called", "made while polled"]);
    let leaked = checkout.0.lock().unwrap().iter().any(|(_, keys)| keys.iter().any(|k| k == PART_KEY));
    assert!(!leaked, "the part's tag is not exported");
}
