//! The coordinator's Prometheus metrics (names prefixed `shardmerge_`).
//!
//! Gauges of units, jobs, workers and the queue are computed from a scheduler snapshot at scrape
//! time ([`Scheduler::metrics_snapshot`](super::scheduler::Scheduler::metrics_snapshot)); only
//! what a snapshot cannot know is recorded as it happens: the workers' reports (outcomes, unit
//! durations from lease to report, bytes read and written). Served over HTTP by
//! [`shardmerge_worker::node::metrics::serve_metrics`].

use super::scheduler::SchedulerSnapshot;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use shardmerge_worker::node::metrics::{Label, MetricsSource, duration_buckets, render_registry};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

type SnapshotFn = Box<dyn Fn() -> Option<SchedulerSnapshot> + Send + Sync>;

/// Where scrape-time snapshots come from (set once the coordinator has started).
#[derive(Default)]
struct SnapshotSource(OnceLock<SnapshotFn>);

impl std::fmt::Debug for SnapshotSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotSource")
    }
}

#[derive(Debug)]
struct SnapshotCollector(Arc<SnapshotSource>);

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v as i64);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

/// One metric family labelled `key`, a value per label; `metric` builds the gauge or counter.
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    key: &'static str,
    values: &[(&'static str, u64)],
    metric: impl Fn(u64) -> M,
) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(name, help, None, metric(0).metric_type())?;
    for &(label, v) in values {
        metric(v).encode(family.encode_family(&[(key, label)])?)?;
    }
    Ok(())
}

fn gauge_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    key: &'static str,
    values: &[(&'static str, u64)],
) -> Result<(), std::fmt::Error> {
    family(enc, name, help, key, values, |v| ConstGauge::new(v as i64))
}

fn counter_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    key: &'static str,
    values: &[(&'static str, u64)],
) -> Result<(), std::fmt::Error> {
    family(enc, name, help, key, values, ConstCounter::new)
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = self.0.0.get().and_then(|f| f()) else {
            return Ok(());
        };
        gauge_family(
            &mut enc,
            "units",
            "Work units by state: pending, leased, done, failed (not done when their job failed or was cancelled)",
            "state",
            &[
                ("pending", s.units_pending),
                ("leased", s.units_leased),
                ("done", s.units_done),
                ("failed", s.units_failed),
            ],
        )?;
        gauge_family(&mut enc, "jobs", "Jobs by state", "state", &s.jobs)?;
        gauge(
            &mut enc,
            "queue_depth",
            "Units of running jobs waiting for a worker",
            s.queue_depth,
        )?;
        gauge(&mut enc, "workers", "Live workers", s.live_workers)?;
        counter(
            &mut enc,
            "lease_expiries",
            "Leases that expired before their unit finished (the unit was requeued)",
            s.lease_expiries,
        )?;
        counter_family(
            &mut enc,
            "reports_rejected",
            "Worker reports refused by fencing: unknown_lease, not_holder, mismatch (job/unit/attempt), bad_parts",
            "reason",
            &s.reports_rejected,
        )?;
        counter(
            &mut enc,
            "unit_retries",
            "Units requeued after a lease expiry or a retryable failure",
            s.retries,
        )
    }
}

/// The coordinator's metrics. Create one, hand it to the coordinator in
/// [`CoordinatorOptions::metrics`](super::service::CoordinatorOptions::metrics), and serve it.
#[derive(Debug)]
pub struct CoordinatorMetrics {
    registry: Registry,
    source: Arc<SnapshotSource>,
    reports: Family<Label, Counter>,
    bytes_read: Counter,
    bytes_written: Counter,
    duration: Histogram,
}

impl CoordinatorMetrics {
    /// Fresh metrics; gauges stay absent until a coordinator is attached.
    pub fn new() -> Arc<CoordinatorMetrics> {
        let mut registry = Registry::with_prefix("shardmerge");
        let source = Arc::new(SnapshotSource::default());
        let reports = Family::<Label, Counter>::default();
        let bytes_read = Counter::default();
        let bytes_written = Counter::default();
        let duration = Histogram::new(duration_buckets());
        registry.register(
            "unit_reports",
            "Unit reports from workers on live leases, by outcome (succeeded, failed)",
            reports.clone(),
        );
        registry.register(
            "bytes_read",
            "Input bytes read by succeeded units, as reported by workers",
            bytes_read.clone(),
        );
        registry.register(
            "bytes_written",
            "Output bytes uploaded by succeeded units, as reported by workers",
            bytes_written.clone(),
        );
        registry.register(
            "unit_duration_seconds",
            "Time from lease to successful report of a unit",
            duration.clone(),
        );
        registry.register_collector(Box::new(SnapshotCollector(source.clone())));
        Arc::new(CoordinatorMetrics {
            registry,
            source,
            reports,
            bytes_read,
            bytes_written,
            duration,
        })
    }

    /// Sets where scrape-time snapshots come from (once; later calls are ignored).
    pub fn attach(&self, snapshot: impl Fn() -> Option<SchedulerSnapshot> + Send + Sync + 'static) {
        let _ = self.source.0.set(Box::new(snapshot));
    }

    /// A worker reported on a live lease granted `age` ago; `io` is `Some((read, written))`
    /// for a success.
    pub fn unit_reported(&self, age: Duration, io: Option<(u64, u64)>) {
        let outcome = if io.is_some() { "succeeded" } else { "failed" };
        self.reports.get_or_create(&[("outcome", outcome)]).inc();
        if let Some((read, written)) = io {
            self.duration.observe(age.as_secs_f64());
            self.bytes_read.inc_by(read);
            self.bytes_written.inc_by(written);
        }
    }
}

impl MetricsSource for CoordinatorMetrics {
    fn render(&self) -> String {
        render_registry(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_recorded_values_and_the_snapshot() {
        let m = CoordinatorMetrics::new();
        m.unit_reported(Duration::from_millis(300), Some((100, 40)));
        m.unit_reported(Duration::from_millis(10), None);
        let before = m.render();
        assert!(!before.contains("shardmerge_units{"), "{before}");
        m.attach(|| {
            Some(SchedulerSnapshot {
                units_pending: 3,
                units_done: 7,
                queue_depth: 3,
                jobs: [
                    ("running", 1),
                    ("committing", 0),
                    ("succeeded", 2),
                    ("failed", 0),
                    ("cancelled", 0),
                    ("queued", 0),
                ],
                live_workers: 2,
                lease_expiries: 5,
                retries: 6,
                reports_rejected: vec![("not_holder", 2)],
                ..Default::default()
            })
        });
        let text = m.render();
        for line in [
            "shardmerge_unit_reports_total{outcome=\"succeeded\"} 1\n",
            "shardmerge_unit_reports_total{outcome=\"failed\"} 1\n",
            "shardmerge_bytes_read_total 100\n",
            "shardmerge_bytes_written_total 40\n",
            "shardmerge_unit_duration_seconds_count 1\n",
            "shardmerge_unit_duration_seconds_sum 0.3\n",
            "shardmerge_units{state=\"pending\"} 3\n",
            "shardmerge_units{state=\"done\"} 7\n",
            "shardmerge_units{state=\"failed\"} 0\n",
            "shardmerge_jobs{state=\"succeeded\"} 2\n",
            "shardmerge_queue_depth 3\n",
            "shardmerge_workers 2\n",
            "shardmerge_lease_expiries_total 5\n",
            "shardmerge_unit_retries_total 6\n",
            "shardmerge_reports_rejected_total{reason=\"not_holder\"} 2\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
