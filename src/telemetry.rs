//! Logging and tracing. Every log line carries an `event` field naming what
//! happened (`submission_accepted`, `delivered`, `parked`, ...) and ids —
//! never form data. `RUST_LOG` filters, `AMTSBOTE_LOG_FORMAT=json` switches
//! to JSON. Logs go to stderr, so that the output of commands such as
//! `amtsbote parked list --json` can be piped. A thread of their own writes
//! them, several lines per system call when they come fast; a caller waits
//! only when 128,000 lines are waiting (no line is dropped), and the lines
//! still waiting are written when the [`Telemetry`] guard is dropped.
//!
//! With the `otel` feature (on by default), setting
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! also exports amtsbote's spans over OTLP/HTTP: one trace per submission,
//! from intake (`submission`) through every delivery attempt (`delivery`,
//! with `mapping` and `connector` inside), carried across the broker in a
//! W3C `traceparent` message header. Spans hold the same ids and
//! outcomes as the logs, nothing else: spans of other crates (HTTP
//! clients, the broker client) are not exported, because their fields are
//! not ours to vouch for.

use std::collections::HashMap;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Bytes gathered into one write when lines come faster than the log
/// thread writes them.
const LOG_BUFFER: usize = 64 * 1024;

/// Lines that may wait for the log thread before a caller waits too.
const LOG_LINES_WAITING: usize = 128_000;

type BoxedLayer = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

/// Keeps the trace exporter alive; dropping it sends the spans still
/// buffered (at most the export timeout), so hold it until the process
/// ends.
#[must_use = "dropping the guard stops the trace export and the log writer"]
pub struct Telemetry {
    /// Dropped after [`Drop::drop`] has shut the trace export down, so that
    /// what that logged is written out too.
    _log_writer: tracing_appender::non_blocking::WorkerGuard,
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("amtsbote: sending the last spans failed: {e}");
        }
    }
}

/// `RUST_LOG` (default `info`), with the AMQP client silenced unless it is
/// named or everything is asked for (`debug`, `trace`): lapin logs a
/// broker's planned restart (`CONNECTION_FORCED`) as an ERROR, while
/// amtsbote logs the loss and the recovery itself, as warnings and events
/// of its own (`worker_disconnected`, `worker_reconnected`,
/// `broker_unreachable`, `broker_connected`).
fn log_filter(rust_log: Option<&str>) -> EnvFilter {
    let directives = rust_log.filter(|d| !d.trim().is_empty()).unwrap_or("info");
    let everything =
        directives.split(',').any(|d| !d.contains('=') && matches!(d.trim().to_ascii_lowercase().as_str(), "debug" | "trace"));
    let directives = if directives.contains("lapin") || everything { directives.to_owned() } else { format!("{directives},lapin=off") };
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info,lapin=off"))
}

/// Sets up logging, and trace export if it is configured. Call once, before
/// the runtime starts (the exporter's HTTP client runs on its own thread);
/// a second call (tests) keeps the first subscriber.
pub fn init() -> Telemetry {
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let json = std::env::var("AMTSBOTE_LOG_FORMAT").as_deref() == Ok("json");
    let (writer, log_writer) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_LINES_WAITING)
        .thread_name("amtsbote-log")
        .finish(std::io::BufWriter::with_capacity(LOG_BUFFER, std::io::stderr()));
    let fmt = tracing_subscriber::fmt::layer().with_target(false).with_writer(writer);
    let fmt = if json { fmt.json().with_filter(filter).boxed() } else { fmt.with_filter(filter).boxed() };
    #[cfg_attr(not(feature = "otel"), allow(unused_mut))] // the export layer joins it
    let mut layers: Vec<BoxedLayer> = vec![fmt];

    #[cfg(feature = "otel")]
    {
        let (provider, problem) = match otel::exporting() {
            Ok(Some((layer, provider))) => {
                layers.push(layer);
                (Some(provider), None)
            }
            Ok(None) => (None, None),
            Err(problem) => (None, Some(problem)),
        };
        let _ = tracing_subscriber::registry().with(layers).try_init();
        if let Some(problem) = problem {
            tracing::warn!(event = "trace_export_off", error = %problem, "OpenTelemetry export is configured but could not start");
        }
        Telemetry { _log_writer: log_writer, provider }
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = tracing_subscriber::registry().with(layers).try_init();
        if otel_configured() {
            tracing::warn!(event = "trace_export_off", "OTEL_EXPORTER_OTLP_ENDPOINT is set, but this amtsbote was built without the `otel` feature");
        }
        Telemetry { _log_writer: log_writer }
    }
}

/// Whether the environment asks for trace export.
fn otel_configured() -> bool {
    let set = |name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The current span's trace context (`traceparent`, `tracestate`), for
/// the message's headers, so the deliveries of a submission join its
/// trace. Empty while no trace is exported.
pub fn trace_context() -> HashMap<String, String> {
    #[cfg(feature = "otel")]
    return otel::inject(&tracing::Span::current());
    #[cfg(not(feature = "otel"))]
    HashMap::new()
}

/// Makes `span` continue the trace of `context` (see [`trace_context`]).
pub fn continue_trace(span: &tracing::Span, context: &HashMap<String, String>) {
    #[cfg(feature = "otel")]
    otel::adopt(span, context);
    #[cfg(not(feature = "otel"))]
    let _ = (span, context);
}

#[cfg(feature = "otel")]
mod otel {
    use std::collections::HashMap;
    use std::io::Read;
    use std::time::Duration;

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TracerProvider;
    use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
    use opentelemetry_otlp::WithHttpConfig;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::Targets;

    use super::BoxedLayer;

    /// The answer of a collector is read up to this size (it is a status,
    /// maybe with a partial-success note).
    const MAX_ANSWER_BYTES: u64 = 64 * 1024;

    /// The export layer and its provider, if the environment asks for
    /// export. Endpoint, headers and protocol come from the standard
    /// `OTEL_EXPORTER_OTLP_*` variables, read by the exporter itself.
    pub(super) fn exporting() -> Result<Option<(BoxedLayer, SdkTracerProvider)>, String> {
        if !super::otel_configured() {
            return Ok(None);
        }
        let client = collector_client()?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .build()
            .map_err(|e| e.to_string())?;
        let service = std::env::var("OTEL_SERVICE_NAME").ok().filter(|s| !s.trim().is_empty());
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service.unwrap_or_else(|| "amtsbote".to_owned()))
            .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        let tracer = provider.tracer("amtsbote");
        // Only amtsbote's own spans and events: their fields are ids and
        // outcomes by construction.
        let ours = Targets::new().with_target("amtsbote", tracing::Level::INFO);
        // `target` is our field (the target back office), not the Rust
        // module path tracing-opentelemetry would put there.
        let layer = tracing_opentelemetry::layer().with_tracer(tracer).with_target(false).with_filter(ours).boxed();
        Ok(Some((layer, provider)))
    }

    /// A blocking client: the batch exporter sends from its own thread,
    /// outside the runtime. Honours the standard timeout and CA-file
    /// variables.
    fn collector_client() -> Result<Collector, String> {
        let var = |signal: &str, all: &str| std::env::var(signal).or_else(|_| std::env::var(all)).ok();
        let timeout = var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
            .map(|ms| ms.trim().parse::<u64>().map_err(|_| format!("OTEL_EXPORTER_OTLP_TIMEOUT is not milliseconds: {ms:?}")))
            .transpose()?
            .map_or(Duration::from_secs(10), Duration::from_millis);
        let mut builder = reqwest::blocking::Client::builder().timeout(timeout).redirect(reqwest::redirect::Policy::none());
        if let Some(path) = var("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE") {
            let pem = std::fs::read(&path).map_err(|e| format!("reading the collector's CA certificate {path}: {e}"))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("the collector's CA certificate {path} is not PEM: {e}"))?;
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        // Built on a thread of its own: the blocking client may not be made
        // (or dropped) inside an async context.
        std::thread::spawn(move || builder.build())
            .join()
            .map_err(|_| "building the collector client panicked".to_owned())?
            .map(Collector)
            .map_err(|e| format!("building the collector client: {e}"))
    }

    #[derive(Debug)]
    struct Collector(reqwest::blocking::Client);

    #[async_trait::async_trait]
    impl HttpClient for Collector {
        async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
            let (parts, body) = request.into_parts();
            let mut sent = self.0.request(parts.method, parts.uri.to_string()).headers(parts.headers).body(body.to_vec()).send()?;
            let mut answer = Response::builder().status(sent.status());
            if let Some(headers) = answer.headers_mut() {
                *headers = std::mem::take(sent.headers_mut());
            }
            let mut body = Vec::new();
            sent.take(MAX_ANSWER_BYTES).read_to_end(&mut body)?;
            Ok(answer.body(Bytes::from(body))?)
        }
    }

    pub(super) fn inject(span: &tracing::Span) -> HashMap<String, String> {
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
        carrier
    }

    pub(super) fn adopt(span: &tracing::Span, carrier: &HashMap<String, String>) {
        if !carrier.is_empty() {
            // A span that already started cannot change its trace; ours are
            // fresh, so this only fails on a malformed header, which leaves
            // the span a trace of its own.
            let _ = span.set_parent(TraceContextPropagator::new().extract(carrier));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn the_amqp_client_is_silent_unless_named() {
        assert_eq!(log_filter(None).to_string(), "lapin=off,info");
        assert!(log_filter(Some("warn")).to_string().contains("lapin=off"));
        assert!(log_filter(Some("warn,lapin=debug")).to_string().contains("lapin=debug"));
        assert!(!log_filter(Some("warn,lapin=debug")).to_string().contains("lapin=off"));
        assert!(!log_filter(Some("trace")).to_string().contains("lapin=off"), "trace means every crate");
    }
}
