//! Logs and traces for each process of the demo: the log on stderr (text or
//! JSON, filtered by `RUST_LOG`), and, when an OTLP endpoint is configured, the
//! spans of tower-gateway and of the process exported over OTLP/HTTP.
//!
//! Configured the standard way — `OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf` or `http/json`),
//! `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`,
//! `OTEL_SDK_DISABLED`, the `OTEL_BSP_*` batch settings — or by a
//! [`TelemetryConfig`] (the gateway's `[telemetry]`), whose values win over
//! the environment's. With no endpoint nothing is exported and the spans are
//! never made (they are `DEBUG` spans only the exporter's layer asks for).
//!
//! Export never holds up a request: spans wait in a bounded queue
//! ([`TelemetryConfig::max_queued_spans`]) for a thread of their own that sends
//! them in batches; when the collector is slow or down the queue fills and
//! further spans are dropped. [`SpanCounts`] says how many were exported,
//! failed (the collector refused or could not be reached) and dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::EnvError;

/// How a process logs and where it sends its spans. Every field is optional:
/// what is left out comes from the `OTEL_*` variables, then the defaults.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318`; spans go to
    /// `{otlp_endpoint}/v1/traces` (`OTEL_EXPORTER_OTLP_ENDPOINT`). None: no export.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` (the default) or `http/json` (`OTEL_EXPORTER_OTLP_PROTOCOL`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_protocol: Option<String>,
    /// The `service.name` of the spans (`OTEL_SERVICE_NAME`; default: the process's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// `parentbased_always_on` (the default: a client's sampled flag is kept),
    /// `parentbased_traceidratio`, `parentbased_always_off`, `always_on`,
    /// `always_off` or `traceidratio` (`OTEL_TRACES_SAMPLER`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampler: Option<String>,
    /// The ratio of the `*traceidratio` samplers, 0 to 1 (`OTEL_TRACES_SAMPLER_ARG`; default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampler_arg: Option<f64>,
    /// Finished spans waiting for export at most; more are dropped and
    /// counted (`OTEL_BSP_MAX_QUEUE_SIZE`; default 2,048).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queued_spans: Option<usize>,
    /// `text` (the default) or `json`: one JSON object per line, an access
    /// log line with the `trace_id` and `span_id` of its request.
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `name=value` fields after the message (in colour on a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

const SAMPLERS: [&str; 6] = [
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
    "always_on",
    "always_off",
    "traceidratio",
];

impl TelemetryConfig {
    /// Fills what the configuration leaves out from the `OTEL_*` variables
    /// (`env`), and checks the result: a wrong value names its variable or field.
    pub fn with_env(mut self, env: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let var = |name: &str| env(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let wrong = |variable: &'static str, message: String| EnvError { variable, message };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            self.otlp_endpoint = None;
        } else if self.otlp_endpoint.is_none() {
            self.otlp_endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT");
        }
        self.otlp_protocol = self.otlp_protocol.or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
        self.service_name = self.service_name.or_else(|| var("OTEL_SERVICE_NAME"));
        self.sampler = self.sampler.or_else(|| var("OTEL_TRACES_SAMPLER"));
        if self.sampler_arg.is_none()
            && let Some(arg) = var("OTEL_TRACES_SAMPLER_ARG")
        {
            let ratio =
                arg.parse().map_err(|_| wrong("OTEL_TRACES_SAMPLER_ARG", format!("{arg:?} is not a number")))?;
            self.sampler_arg = Some(ratio);
        }
        if self.max_queued_spans.is_none()
            && let Some(size) = var("OTEL_BSP_MAX_QUEUE_SIZE")
        {
            let size =
                size.parse().map_err(|_| wrong("OTEL_BSP_MAX_QUEUE_SIZE", format!("{size:?} is not a count")))?;
            self.max_queued_spans = Some(size);
        }
        self.check()?;
        Ok(self)
    }

    /// Checks each value, naming the field at fault.
    pub fn check(&self) -> Result<(), EnvError> {
        let wrong = |variable: &'static str, message: String| Err(EnvError { variable, message });
        if let Some(endpoint) = &self.otlp_endpoint {
            let uri: http::Uri = match endpoint.parse() {
                Ok(uri) => uri,
                Err(e) => return wrong("otlp_endpoint", format!("{endpoint:?}: {e}")),
            };
            if uri.scheme_str() != Some("http") && uri.scheme_str() != Some("https") || uri.host().is_none() {
                return wrong("otlp_endpoint", format!("{endpoint:?} is not an http:// or https:// URL"));
            }
            if uri.scheme_str() == Some("https") {
                return wrong("otlp_endpoint", "https is not built in: send to a collector over http".into());
            }
        }
        match self.otlp_protocol.as_deref() {
            None | Some("http/protobuf" | "http/json") => {}
            Some("grpc") => return wrong("otlp_protocol", "grpc is not built in: use http/protobuf".into()),
            Some(other) => return wrong("otlp_protocol", format!("{other:?}: use http/protobuf or http/json")),
        }
        if let Some(sampler) = &self.sampler
            && !SAMPLERS.contains(&sampler.as_str())
        {
            return wrong("sampler", format!("{sampler:?}: one of {}", SAMPLERS.join(", ")));
        }
        if let Some(arg) = self.sampler_arg
            && !(0.0..=1.0).contains(&arg)
        {
            return wrong("sampler_arg", format!("{arg} is not between 0 and 1"));
        }
        if self.max_queued_spans == Some(0) {
            return wrong("max_queued_spans", "must be at least 1".into());
        }
        Ok(())
    }

    fn sampler(&self) -> Sampler {
        let ratio = || Sampler::TraceIdRatioBased(self.sampler_arg.unwrap_or(1.0));
        match self.sampler.as_deref().unwrap_or("parentbased_always_on") {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => ratio(),
            "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            "parentbased_traceidratio" => Sampler::ParentBased(Box::new(ratio())),
            _ => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        }
    }
}

/// What became of the spans a process finished, for its metrics: one counter
/// per outcome, and the family of the three to register.
#[derive(Debug, Clone)]
pub struct SpanCounts {
    /// Sent and accepted by the collector.
    pub exported: Counter,
    /// Sent, and refused by the collector or never delivered (down, slow past
    /// the export timeout).
    pub failed: Counter,
    /// Never sent: the queue was full.
    pub dropped: Counter,
    family: Family<SpanOutcome, Counter>,
}

/// The label of [`SpanCounts`]' family: `outcome` is `exported`, `failed` or `dropped`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SpanOutcome {
    outcome: &'static str,
}

impl Default for SpanCounts {
    fn default() -> Self {
        let family = Family::<SpanOutcome, Counter>::default();
        let counter = |outcome| family.get_or_create(&SpanOutcome { outcome }).clone();
        Self { exported: counter("exported"), failed: counter("failed"), dropped: counter("dropped"), family }
    }
}

impl SpanCounts {
    /// The three counters as one family labelled by `outcome`, to register.
    pub fn family(&self) -> Family<SpanOutcome, Counter> {
        self.family.clone()
    }
}

/// The process's span counts: those [`init`] counts into.
pub fn span_counts() -> SpanCounts {
    static COUNTS: std::sync::LazyLock<SpanCounts> = std::sync::LazyLock::new(SpanCounts::default);
    COUNTS.clone()
}

/// A process's logging and tracing, until it is shut down.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// What became of the spans (all zero with no export).
    pub spans: SpanCounts,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends what is queued now, waiting for it (at most the export timeout).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
        }
    }

    /// Sends what is queued (waiting at most the export timeout) and stops exporting.
    pub fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown_with_timeout(Duration::from_secs(5));
        }
    }
}

/// Starts logging, and exporting spans when `config` has an endpoint, for the
/// process named `service` (unless the configuration names it). A second call
/// in one process changes nothing and exports nothing.
pub fn init(service: &str, config: &TelemetryConfig) -> Result<Telemetry, String> {
    init_parts(service, config, &[])
}

/// [`init`] for a process that runs several services (the one-process demo):
/// the spans of requests served under a [`PartLayer`] naming one of `parts`
/// are exported with that name as their `service.name`, the rest as the
/// process's.
pub fn init_parts(service: &str, config: &TelemetryConfig, parts: &[&'static str]) -> Result<Telemetry, String> {
    let spans = span_counts();
    let provider = match &config.otlp_endpoint {
        Some(endpoint) => Some(provider(service, endpoint, config, parts, &spans)?),
        None => None,
    };
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let log = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
        LogFormat::Text if std::io::IsTerminal::is_terminal(&std::io::stderr()) => {
            tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter()).boxed()
        }
        LogFormat::Text => {
            use tracing_subscriber::field::MakeExt as _;
            let fields = tracing_subscriber::fmt::format::debug_fn(|writer, field, value| match field.name() {
                "message" => write!(writer, "{value:?}"),
                name => write!(writer, "{name}={value:?}"),
            })
            .delimited(" ");
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .fmt_fields(fields)
                .with_filter(filter())
                .boxed()
        }
    };
    let traces = provider.as_ref().map(|provider| {
        let name = config.service_name.clone().unwrap_or_else(|| service.to_owned());
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(name))
            // Only the spans made for it (those naming their `otel.kind`:
            // tower-gateway's and the demo's request spans), no log events.
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.is_span() && meta.fields().field("otel.kind").is_some()
            }))
    });
    let installed = tracing_subscriber::registry().with(log).with(traces).try_init().is_ok();
    Ok(Telemetry { provider: provider.filter(|_| installed), spans })
}

fn provider(
    service: &str,
    endpoint: &str,
    config: &TelemetryConfig,
    parts: &[&'static str],
    counts: &SpanCounts,
) -> Result<SdkTracerProvider, String> {
    let protocol = match config.otlp_protocol.as_deref() {
        Some("http/json") => Protocol::HttpJson,
        _ => Protocol::HttpBinary,
    };
    let exporter = || {
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("the OTLP exporter: {e}"))
    };
    let resource = |name: &str| opentelemetry_sdk::Resource::builder().with_service_name(name.to_owned()).build();
    let mut by_part = ByPart { main: exporter()?, parts: Vec::new() };
    for &part in parts {
        let mut part_exporter = exporter()?;
        part_exporter.set_resource(&resource(part));
        by_part.parts.push((part, part_exporter));
    }
    let processor = bounded(by_part, config.max_queued_spans.unwrap_or(2048), counts, !parts.is_empty());
    let name = config.service_name.as_deref().unwrap_or(service);
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(config.sampler())
        .with_resource(resource(name))
        .build())
}

thread_local! {
    /// The part of the process whose request this thread is serving, if any.
    static PART: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// The attribute a span of a part carries from its start to its export.
const PART_KEY: &str = "demo.part";

/// Serves each request of the service it wraps as `.0`, one of the `parts`
/// given to [`init_parts`]: the spans made while the request is called and
/// polled are exported under that `service.name`.
#[derive(Debug, Clone, Copy)]
pub struct PartLayer(pub &'static str);

impl<S> tower_layer::Layer<S> for PartLayer {
    type Service = InPart<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InPart { inner, part: self.0 }
    }
}

/// The service of [`PartLayer`].
#[derive(Debug, Clone)]
pub struct InPart<S> {
    inner: S,
    part: &'static str,
}

/// Runs `f` with this thread serving `part`, as it was after.
fn as_part<R>(part: &'static str, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<&'static str>);
    impl Drop for Restore {
        fn drop(&mut self) {
            PART.set(self.0);
        }
    }
    let _restore = Restore(PART.replace(Some(part)));
    f()
}

impl<S: tower_service::Service<R>, R> tower_service::Service<R> for InPart<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = PartFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let future = as_part(self.part, || self.inner.call(req));
        PartFuture { future, part: self.part }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`InPart`].
    #[derive(Debug)]
    pub struct PartFuture<F> {
        #[pin]
        future: F,
        part: &'static str,
    }
}

impl<F: std::future::Future> std::future::Future for PartFuture<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let this = self.project();
        as_part(this.part, || this.future.poll(cx))
    }
}

/// Sends each part's spans through an exporter of its own (whose resource
/// names the part), the rest through `main`.
#[derive(Debug)]
struct ByPart<E> {
    main: E,
    parts: Vec<(&'static str, E)>,
}

impl<E: SpanExporter> SpanExporter for ByPart<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if self.parts.is_empty() {
            return self.main.export(batch).await;
        }
        let mut groups: Vec<Vec<SpanData>> = (0..=self.parts.len()).map(|_| Vec::new()).collect();
        for mut span in batch {
            let tag = span.attributes.iter().position(|kv| kv.key.as_str() == PART_KEY);
            let part = tag.map(|at| span.attributes.swap_remove(at).value.to_string());
            let group =
                part.and_then(|part| self.parts.iter().position(|(name, _)| *name == part)).map_or(0, |i| i + 1);
            groups[group].push(span);
        }
        let mut result = Ok(());
        let exporters = std::iter::once(&self.main).chain(self.parts.iter().map(|(_, e)| e));
        for (exporter, group) in exporters.zip(groups) {
            if !group.is_empty()
                && let Err(err) = exporter.export(group).await
            {
                result = Err(err);
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.parts
            .iter()
            .map(|(_, e)| e.shutdown_with_timeout(timeout))
            .fold(self.main.shutdown_with_timeout(timeout), Result::and)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.parts.iter().map(|(_, e)| e.force_flush()).fold(self.main.force_flush(), Result::and)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        // The parts keep the resource naming them.
        self.main.set_resource(resource);
    }
}

/// A batch processor sending through `exporter`, with at most `bound` spans
/// waiting or being sent, counted in `counts`.
fn bounded<E: SpanExporter + 'static>(
    exporter: E,
    bound: usize,
    counts: &SpanCounts,
    tag_parts: bool,
) -> Bounded<BatchSpanProcessor> {
    let pending = Arc::new(AtomicUsize::new(0));
    let exporter = Counted { inner: exporter, pending: pending.clone(), counts: counts.clone() };
    // The batch queue has room for every span `Bounded` lets in, so it never
    // drops one uncounted.
    let batch = BatchConfigBuilder::default().with_max_queue_size(bound + 512).with_max_export_batch_size(512).build();
    let batches = BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();
    Bounded { inner: batches, pending, bound, dropped: counts.dropped.clone(), tag_parts }
}

/// Lets a span into the batch queue only while fewer than `bound` are waiting
/// or being sent; counts the rest as dropped. With `tag_parts`, marks each span
/// started while a [`PartLayer`] serves a request with that part.
#[derive(Debug)]
struct Bounded<P> {
    inner: P,
    pending: Arc<AtomicUsize>,
    bound: usize,
    dropped: Counter,
    tag_parts: bool,
}

impl<P: SpanProcessor> SpanProcessor for Bounded<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        if self.tag_parts
            && let Some(part) = PART.get()
        {
            use opentelemetry::trace::Span as _;
            span.set_attribute(opentelemetry::KeyValue::new(PART_KEY, part));
        }
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.bound {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.dropped.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts what the exporter sent and what failed, and lets [`Bounded`] know
/// the spans are no longer waiting.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
    counts: SpanCounts,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let count = batch.len();
        let result = self.inner.export(batch).await;
        self.pending.fetch_sub(count, Ordering::AcqRel);
        match &result {
            Ok(()) => {
                self.counts.exported.inc_by(count as u64);
            }
            Err(err) => {
                self.counts.failed.inc_by(count as u64);
                tracing::debug!(%err, spans = count, "spans not exported");
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests;
