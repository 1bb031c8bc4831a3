//! Logs, traces and metrics: JSON logs carrying trace ids, OpenTelemetry
//! spans for every RPC on both sides, W3C trace context in gRPC metadata, an
//! `rpc.server.duration` histogram per method and status, the services' own
//! metrics, and OTLP export of spans and metrics when an endpoint is
//! configured.
//!
//! Span fields are chosen here, never by handlers: method names, peer
//! identities and status codes, nothing from a request body.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Telemetry settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/gRPC endpoint of an OpenTelemetry collector, e.g.
    /// `http://otel-collector:4317`, or `https://…` with `otlp_ca_file`.
    /// No export when unset.
    pub otlp_endpoint: Option<String>,
    /// For an `https://` endpoint: the CA bundle the collector's
    /// certificate must chain to (TLS 1.3).
    pub otlp_ca_file: Option<std::path::PathBuf>,
    /// For a collector that asks for a client certificate: its certificate
    /// (chain) and key files. Read at each connection, so a renewal is used
    /// from the next one on.
    pub otlp_cert_file: Option<std::path::PathBuf>,
    /// See `otlp_cert_file`.
    pub otlp_key_file: Option<std::path::PathBuf>,
    /// Fraction of new traces sampled (0.0 to 1.0); a request that arrives
    /// with a sampled parent is always sampled.
    pub sampling_ratio: f64,
    /// `json` (default) or `text`.
    pub log_format: LogFormat,
    /// Log filter in `RUST_LOG` syntax, e.g. `info,confidant_vault=debug`.
    pub log_level: String,
    /// How often metrics are exported over OTLP, in seconds.
    pub metrics_interval_seconds: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_ca_file: None,
            otlp_cert_file: None,
            otlp_key_file: None,
            sampling_ratio: 1.0,
            log_format: LogFormat::Json,
            log_level: "info".to_owned(),
            metrics_interval_seconds: 60,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, with the span fields (including `trace_id`).
    Json,
    /// Human-readable lines.
    Text,
}

/// Errors of telemetry setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An OTLP exporter could not be built.
    #[error("otlp exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// The TLS channel to the collector could not be built.
    #[error("telemetry.otlp_endpoint: {0}")]
    Channel(#[from] crate::client::Error),
    /// The log filter does not parse.
    #[error("telemetry.log_level: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// A global subscriber was already installed.
    #[error("telemetry already initialised: {0}")]
    AlreadyInitialised(#[from] tracing_subscriber::util::TryInitError),
}

/// Flushes and stops span and metric export when dropped or shut down.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    meters: SdkMeterProvider,
}

impl TelemetryGuard {
    /// Exports every finished span, then stops the exporter.
    pub fn shutdown(self) {
        // Drop does the work.
    }

    /// Exports every finished span and the current metrics now.
    pub fn flush(&self) {
        if let Err(err) = self.provider.force_flush() {
            tracing::warn!(error = %err, "telemetry flush failed");
        }
        if let Err(err) = self.meters.force_flush() {
            tracing::warn!(error = %err, "metrics flush failed");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(err) = self.provider.shutdown() {
            // Already shut down, or the collector is gone: nothing more to do.
            eprintln!("telemetry shutdown: {err}");
        }
        if let Err(err) = self.meters.shutdown() {
            eprintln!("metrics shutdown: {err}");
        }
    }
}

/// How long one export to the collector may take.
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where spans and metrics go: a plaintext endpoint, or a TLS channel
/// (shared by both exporters: one connection).
enum Collector {
    Plain(String),
    Tls(tonic::transport::Channel),
}

impl Collector {
    fn apply<B>(&self, builder: B) -> B
    where
        B: opentelemetry_otlp::WithExportConfig + opentelemetry_otlp::WithTonicConfig,
    {
        match self {
            Self::Plain(endpoint) => builder.with_endpoint(endpoint.clone()),
            Self::Tls(channel) => builder
                .with_channel(channel.clone())
                .with_timeout(EXPORT_TIMEOUT),
        }
    }
}

fn collector(config: &TelemetryConfig) -> Result<Option<Collector>, Error> {
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(None);
    };
    Ok(Some(match config.collector_tls() {
        Some(tls) => Collector::Tls(crate::client::external_channel_lazy(
            endpoint,
            tls,
            EXPORT_TIMEOUT,
        )?),
        None => Collector::Plain(endpoint.clone()),
    }))
}

impl TelemetryConfig {
    /// The TLS files of an `https://` collector that names its CA bundle.
    pub fn collector_tls(&self) -> Option<crate::client::ExternalTls> {
        let https = self
            .otlp_endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("https://"));
        Some(crate::client::ExternalTls {
            ca_file: self.otlp_ca_file.clone().filter(|_| https)?,
            identity: self.otlp_cert_file.clone().zip(self.otlp_key_file.clone()),
        })
    }
}

/// Installs the global subscriber (logs, spans to OpenTelemetry) and the W3C
/// trace-context propagator. Must run inside a Tokio runtime.
pub fn init(service_name: &str, config: &TelemetryConfig) -> Result<TelemetryGuard, Error> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
        config.sampling_ratio.clamp(0.0, 1.0),
    )));
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_resource(resource.clone());
    let collector = collector(config)?;
    if let Some(collector) = &collector {
        let exporter = collector
            .apply(opentelemetry_otlp::SpanExporter::builder().with_tonic())
            .build()?;
        // The async-runtime processor exports on Tokio, which tonic needs.
        let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
        builder = builder.with_span_processor(processor);
    }
    let provider = builder.build();
    let tracer = provider.tracer("confidant");
    opentelemetry::global::set_tracer_provider(provider.clone());

    let mut meters = SdkMeterProvider::builder().with_resource(resource);
    if let Some(collector) = &collector {
        let exporter = collector
            .apply(opentelemetry_otlp::MetricExporter::builder().with_tonic())
            .build()?;
        let reader = opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .with_interval(std::time::Duration::from_secs(
            config.metrics_interval_seconds.max(1),
        ))
        .build();
        meters = meters.with_reader(reader);
    }
    let meters = meters.build();
    opentelemetry::global::set_meter_provider(meters.clone());

    let filter = EnvFilter::builder().parse(&config.log_level)?;
    let fmt = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(TraceIdField)
            .event_format(JsonLines)
            .boxed(),
        // Colours only for a person at a terminal: a log file, a pipe or a
        // container's log stream gets plain text, not escape codes.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .boxed(),
    };
    tracing_subscriber::registry()
        // Library internals (h2, hyper) open TRACE and DEBUG spans; only our
        // INFO spans become OpenTelemetry spans.
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                // Busy and idle time per span would cost a clock read and a
                // span look-up on every poll of every instrumented future;
                // the span's own start and end times remain.
                .with_tracked_inactivity(false)
                // Entering a span would also make its context the current
                // OpenTelemetry context, on every poll; nothing here reads
                // that context (trace ids and `traceparent` come from the
                // span itself).
                .with_context_activation(false)
                // The source location and worker thread of a span say
                // nothing here: every RPC span opens in the same middleware
                // and a request moves between worker threads.
                .with_location(false)
                .with_threads(false)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        )
        .with(fmt.with_filter(filter))
        .try_init()?;
    Ok(TelemetryGuard { provider, meters })
}

/// What the JSON log format keeps of a span's fields: its `trace_id` and
/// nothing else, since that is all a JSON line shows of its spans. Every
/// span (one or more per request) is kept this way; keeping all of its
/// fields as JSON would mean serializing them when the span opens and
/// parsing and rewriting them at every `record`, for lines that mostly
/// never come.
struct TraceIdField;

/// Finds the `trace_id` among a span's fields.
struct FindTraceId<'a>(&'a mut Option<String>);

impl tracing::field::Visit for FindTraceId<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "trace_id" {
            *self.0 = Some(value.to_owned());
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "trace_id" {
            *self.0 = Some(format!("{value:?}"));
        }
    }
}

impl<'writer> tracing_subscriber::fmt::FormatFields<'writer> for TraceIdField {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: tracing_subscriber::fmt::format::Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut found = None;
        fields.record(&mut FindTraceId(&mut found));
        match found {
            Some(trace_id) => writer.write_str(&trace_id),
            None => Ok(()),
        }
    }

    fn add_fields(
        &self,
        current: &'writer mut tracing_subscriber::fmt::FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let mut found = None;
        fields.record(&mut FindTraceId(&mut found));
        if let Some(trace_id) = found {
            current.fields = trace_id;
        }
        Ok(())
    }
}

/// One JSON object per log line: time, level, target, the event's fields,
/// the innermost span's name, and the W3C trace id of the request the line
/// belongs to (from the nearest span that recorded `trace_id`), so that a
/// log search joins with the trace backend.
struct JsonLines;

struct JsonVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
}

impl<S> tracing_subscriber::fmt::FormatEvent<S, TraceIdField> for JsonLines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, TraceIdField>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut map = serde_json::Map::new();
        map.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        map.insert("level".into(), meta.level().as_str().into());
        map.insert("target".into(), meta.target().into());
        event.record(&mut JsonVisitor(&mut map));
        if let Some(scope) = ctx.event_scope() {
            let mut innermost = true;
            for span in scope {
                if innermost {
                    map.insert("span".into(), span.name().into());
                    innermost = false;
                }
                let ext = span.extensions();
                if let Some(fields) =
                    ext.get::<tracing_subscriber::fmt::FormattedFields<TraceIdField>>()
                    && !fields.is_empty()
                {
                    map.insert("trace_id".into(), fields.as_str().into());
                    break;
                }
            }
        }
        let line = serde_json::to_string(&map).map_err(|_| std::fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// `(service, method)` of a gRPC path `/pkg.Service/Method`.
fn rpc_names(path: &str) -> (&str, &str) {
    let trimmed = path.trim_start_matches('/');
    trimmed.split_once('/').unwrap_or((trimmed, ""))
}

fn trace_id_of(span: &tracing::Span) -> String {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        sc.trace_id().to_string()
    } else {
        String::new()
    }
}

/// The W3C trace id (32 hex digits) of the current span, empty when none.
pub fn current_trace_id() -> String {
    trace_id_of(&tracing::Span::current())
}

fn record_status<B>(span: &tracing::Span, response: &http::Response<B>) {
    if let Some(code) = grpc_status(response) {
        span.record("rpc.grpc.status_code", code);
        if code != 0 {
            span.record("otel.status_code", "ERROR");
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The histogram of server call durations, from the global meter provider
/// (made on the first call, after [`init`]).
fn rpc_duration() -> &'static opentelemetry::metrics::Histogram<f64> {
    static HISTOGRAM: std::sync::OnceLock<opentelemetry::metrics::Histogram<f64>> =
        std::sync::OnceLock::new();
    HISTOGRAM.get_or_init(|| {
        opentelemetry::global::meter("confidant")
            .f64_histogram("rpc.server.duration")
            .with_unit("ms")
            .with_description("Duration of gRPC calls handled, by method and status")
            .build()
    })
}

/// Records one handled call. Method names come from the request path, so a
/// call to a method the server does not have (UNIMPLEMENTED) is recorded
/// under `unknown`: callers cannot mint label values.
fn record_duration(service: &str, method: &str, status: Option<i32>, started: std::time::Instant) {
    use opentelemetry::KeyValue;
    let (service, method) = match status {
        Some(12) | None => ("unknown".to_owned(), "unknown".to_owned()),
        _ => (service.to_owned(), method.to_owned()),
    };
    rpc_duration().record(
        started.elapsed().as_secs_f64() * 1000.0,
        &[
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service),
            KeyValue::new("rpc.method", method),
            KeyValue::new("rpc.grpc.status_code", i64::from(status.unwrap_or(2))),
        ],
    );
}

fn grpc_status<B>(response: &http::Response<B>) -> Option<i32> {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
}

/// Server side: a span per RPC, child of the caller's span when the request
/// carries a `traceparent`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerTraceLayer;

impl<S> tower::Layer<S> for ServerTraceLayer {
    type Service = ServerTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTrace { inner }
    }
}

/// See [`ServerTraceLayer`].
#[derive(Debug, Clone)]
pub struct ServerTrace<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for ServerTrace<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&HeaderExtractor(req.headers()))
        });
        let started = std::time::Instant::now();
        let path = req.uri().path();
        let (service, method) = rpc_names(path);
        let names = (service.to_owned(), method.to_owned());
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            peer.identity = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        let _ = span.set_parent(parent);
        span.record("trace_id", trace_id_of(&span));
        // Parsed once here; the peer check and handlers read it from the
        // extensions.
        if let Some(peer) = crate::peer::identity_from_extensions(req.extensions()) {
            span.record("peer.identity", peer.as_str());
            req.extensions_mut().insert(peer);
        }
        let fut = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        Box::pin(
            async move {
                let result = fut.await;
                let mut status = None;
                if let Ok(response) = &result {
                    record_status(&tracing::Span::current(), response);
                    // A response whose status comes in trailers (streams,
                    // most successes) has none in its headers: OK so far.
                    status = Some(grpc_status(response).unwrap_or(0));
                }
                record_duration(&names.0, &names.1, status, started);
                result
            }
            .instrument(span),
        )
    }
}

/// Client side: a span per outgoing RPC whose context travels in the
/// request's `traceparent`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTraceLayer;

impl<S> tower::Layer<S> for ClientTraceLayer {
    type Service = ClientTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientTrace { inner }
    }
}

/// See [`ClientTraceLayer`].
#[derive(Debug, Clone)]
pub struct ClientTrace<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for ClientTrace<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let (service, method) = rpc_names(path);
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        span.record("trace_id", trace_id_of(&span));
        let cx = span.context();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut HeaderInjector(req.headers_mut()));
        });
        let fut = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        Box::pin(
            async move {
                let result = fut.await;
                match &result {
                    Ok(response) => record_status(&tracing::Span::current(), response),
                    Err(_) => {
                        tracing::Span::current().record("otel.status_code", "ERROR");
                    }
                }
                result
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_split_into_service_and_method() {
        assert_eq!(
            rpc_names("/confidant.audit.v1.AuditService/AppendEvents"),
            ("confidant.audit.v1.AuditService", "AppendEvents")
        );
        assert_eq!(rpc_names("/odd"), ("odd", ""));
    }
}
