//! Prometheus metrics: the worker process's own metrics, and the small HTTP endpoint that both
//! the worker and the coordinator serve their metrics on (`--metrics-listen`).
//!
//! The endpoint answers `GET /metrics` (and `HEAD`) with the OpenMetrics text format, which
//! Prometheus scrapes natively; every other path is a 404. It carries no secrets (counts, bytes
//! and durations only), so it needs no token, like the gRPC health service.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;

/// Content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Anything that renders metrics in the OpenMetrics text format.
pub trait MetricsSource: Send + Sync + 'static {
    /// The current metrics, ending with `# EOF`.
    fn render(&self) -> String;
}

/// Renders a registry in the OpenMetrics text format.
pub fn render_registry(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; a collector that fails leaves a truncated text.
    if let Err(e) = encode(&mut out, registry) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    out
}

/// Histogram buckets for unit durations in seconds: 50 ms to about 27 minutes.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.05, 2.0, 16)
}

/// A one-label set such as `outcome="succeeded"`.
pub type Label = [(&'static str, &'static str); 1];

/// Metrics of a worker process (names prefixed `shardmerge_worker_`).
#[derive(Debug)]
pub struct WorkerMetrics {
    registry: Registry,
    units: Family<Label, Counter>,
    bytes_read: Counter,
    bytes_written: Counter,
    duration: Family<Label, Histogram>,
    in_flight: Gauge,
}

impl WorkerMetrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Arc<WorkerMetrics> {
        let mut registry = Registry::with_prefix("shardmerge_worker");
        let units = Family::<Label, Counter>::default();
        let bytes_read = Counter::default();
        let bytes_written = Counter::default();
        let duration = Family::<Label, Histogram>::new_with_constructor(|| Histogram::new(duration_buckets()));
        let in_flight = Gauge::default();
        registry.register(
            "units",
            "Work units this worker finished, by outcome (succeeded, failed)",
            units.clone(),
        );
        registry.register(
            "bytes_read",
            "Input tensor bytes read by finished units",
            bytes_read.clone(),
        );
        registry.register(
            "bytes_written",
            "Output bytes uploaded by succeeded units (their byte ranges of the shards)",
            bytes_written.clone(),
        );
        registry.register(
            "unit_duration_seconds",
            "Wall time of a unit on this worker (execute and upload), by outcome",
            duration.clone(),
        );
        registry.register("units_in_flight", "Units executing now", in_flight.clone());
        Arc::new(WorkerMetrics {
            registry,
            units,
            bytes_read,
            bytes_written,
            duration,
            in_flight,
        })
    }

    /// A unit starts; returns when it started.
    pub fn unit_started(&self) -> Instant {
        self.in_flight.inc();
        Instant::now()
    }

    /// A unit that started at `started` ended; `io` is `Some((bytes read, bytes written))` when
    /// it succeeded, `None` when it failed.
    pub fn unit_finished(&self, started: Instant, io: Option<(u64, u64)>) {
        self.in_flight.dec();
        let outcome = if io.is_some() { "succeeded" } else { "failed" };
        let label = [("outcome", outcome)];
        self.units.get_or_create(&label).inc();
        self.duration
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
        if let Some((read, written)) = io {
            self.bytes_read.inc_by(read);
            self.bytes_written.inc_by(written);
        }
    }
}

impl MetricsSource for WorkerMetrics {
    fn render(&self) -> String {
        render_registry(&self.registry)
    }
}

async fn metrics(State(source): State<Arc<dyn MetricsSource>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], source.render())
}

/// Serves `GET /metrics` (and `HEAD`) from `source` on `listener` until `shutdown` resolves;
/// other paths answer 404, other methods 405.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    source: Arc<dyn MetricsSource>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found: metrics are at /metrics\n") })
        .with_state(source);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        tracing::warn!(error = %e, "metrics endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_worker_metrics_over_http() {
        let m = WorkerMetrics::new();
        let t = m.unit_started();
        m.unit_finished(t, Some((1000, 300)));
        let t = m.unit_started();
        m.unit_finished(t, None);
        let _running = m.unit_started();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_metrics(listener, m.clone(), async {
            let _ = stopped.await;
        }));
        let resp = get(addr, "GET", "/metrics").await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.contains(CONTENT_TYPE), "{resp}");
        for line in [
            "shardmerge_worker_units_total{outcome=\"succeeded\"} 1\n",
            "shardmerge_worker_units_total{outcome=\"failed\"} 1\n",
            "shardmerge_worker_bytes_read_total 1000\n",
            "shardmerge_worker_bytes_written_total 300\n",
            "shardmerge_worker_units_in_flight 1\n",
            "shardmerge_worker_unit_duration_seconds_count{outcome=\"succeeded\"} 1\n",
        ] {
            assert!(resp.contains(line), "missing {line:?} in\n{resp}");
        }
        assert!(resp.trim_end().ends_with("# EOF"), "{resp}");
        assert!(get(addr, "GET", "/").await.starts_with("HTTP/1.1 404"));
        assert!(get(addr, "POST", "/metrics").await.starts_with("HTTP/1.1 405"));
        let head = get(addr, "HEAD", "/metrics").await;
        assert!(head.starts_with("HTTP/1.1 200") && !head.contains("# EOF"), "{head}");
        stop.send(()).unwrap();
        server.await.unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
