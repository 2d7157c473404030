//! The simulation's report: a table on stdout, or one JSON object (`--json`).

use super::shape::Shape;
use super::{Args, GB, Phase, quantile, sim::Outcome};
use shardmerge_coordinator::Plan;
use shardmerge_coordinator::cluster::units::UnitPlan;
use std::time::Duration;

/// Everything measured, with what it was measured on.
pub struct Report<'a> {
    pub args: &'a Args,
    pub plan: &'a Plan,
    pub units: &'a [UnitPlan],
    /// Bytes moved per unit (inputs + output).
    pub moved: &'a [u64],
    /// `plan_config`: headers to `MergePlan`.
    pub plan_phase: Phase,
    /// Units, wire form, pins, journaled job record, `add_job`.
    pub units_phase: Phase,
    /// The simulation run (scheduler, journal, and the simulator's own bookkeeping).
    pub dispatch_phase: Phase,
    pub outcome: &'a Outcome,
    /// CPU of the journal's writer thread during dispatch.
    pub writer_cpu: Option<Duration>,
    pub rss_start: u64,
    pub rss_plan: u64,
    pub rss_peak: u64,
    /// Whether VmHWM could be reset after the inputs were written.
    pub hwm_reset: bool,
    /// Parameters of one input model.
    pub params: u64,
}

/// Derived numbers shared by the table and the JSON.
struct Derived {
    shape: Shape,
    total_moved: u64,
    ideal: f64,
    bound: f64,
    makespan: f64,
    coordinator_cpu: f64,
    dispatch_rate: f64,
    /// Units per second of per-unit coordinator work alone.
    unit_rate: f64,
    utilization: f64,
    /// Bytes moved by the unit that moves most, and its tensors.
    largest: (u64, String),
    settled: [f64; 3],
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Report<'_> {
    fn derived(&self) -> Derived {
        let o = self.outcome;
        let shape = Shape::of(self.plan, self.units, self.moved, self.args.bandwidth as f64);
        let total_moved: u64 = self.moved.iter().sum();
        let capacity = self.args.workers as f64 * self.args.bandwidth as f64;
        let ideal = total_moved as f64 / capacity;
        let makespan = secs(o.makespan);
        let largest = self
            .units
            .iter()
            .zip(self.moved)
            .max_by_key(|(_, m)| **m)
            .map(|(u, m)| {
                let mut names: Vec<&str> = u
                    .tasks
                    .iter()
                    .map(|&t| self.plan.proto.tasks[t].tensor.as_str())
                    .collect();
                names.dedup();
                let what = if u.stats { "statistics of " } else { "" };
                (*m, format!("{what}{}", names.join(" + ")))
            })
            .unwrap_or_default();
        let mut settled = o.settled_at.clone();
        settled.sort_unstable();
        Derived {
            bound: ideal.max(secs(o.longest_unit)).max(shape.critical),
            shape,
            total_moved,
            ideal,
            makespan,
            coordinator_cpu: secs(
                (self.plan_phase.cpu + self.units_phase.cpu + self.dispatch_phase.cpu).saturating_sub(o.stats_build),
            ),
            dispatch_rate: self.units.len() as f64
                / secs(self.dispatch_phase.cpu.saturating_sub(o.stats_build)).max(1e-9),
            unit_rate: self.units.len() as f64
                / secs(
                    o.sched.work + o.encode + o.stats_encode + o.journal_submit + self.writer_cpu.unwrap_or_default(),
                )
                .max(1e-9),
            utilization: secs(o.busy) / (self.args.workers as f64 * makespan).max(1e-9),
            largest,
            settled: [0.5, 0.9, 0.99].map(|p| secs(quantile(&settled, p))),
        }
    }

    /// The report as a table (Markdown), targets of issue 9 beside the numbers.
    pub fn print(&self) {
        let d = self.derived();
        let o = self.outcome;
        let a = self.args;
        let mb = |b: u64| format!("{:.0} MB", b as f64 / 1e6);
        let gb = |b: u64| format!("{:.2} GB", b as f64 / GB);
        let s = |x: f64| format!("{x:.3} s");
        let sh = &d.shape;
        let mut sizes: Vec<u64> = self.units.iter().filter(|u| !u.stats).map(UnitPlan::bytes).collect();
        sizes.sort_unstable();
        let median = sizes.get(sizes.len() / 2).copied().unwrap_or(0);
        let writer = self.writer_cpu.map_or("n/a".into(), |c| s(secs(c)));
        let rows: Vec<(String, String, &str)> = vec![
            (
                "inputs".into(),
                format!(
                    "4 models x {:.1} B params, {} each (sparse, headers only)",
                    self.params as f64 / 1e9,
                    gb(self.params * 2)
                ),
                "",
            ),
            ("output tensors".into(), sh.tensors.to_string(), ""),
            (
                match a.chunk_size {
                    0 => "tasks (--chunk-size 0: never split)".into(),
                    c => format!("tasks (--chunk-size {})", mb(c)),
                },
                format!(
                    "{}: {} whole-tensor, {} chunk tasks of {} tensors ({} statistics, {} apply)",
                    sh.tasks,
                    sh.tasks - sh.stats_tasks - sh.apply_chunks,
                    sh.stats_tasks + sh.apply_chunks,
                    sh.chunked,
                    sh.stats_tasks,
                    sh.apply_chunks
                ),
                "",
            ),
            ("output shards".into(), self.plan.proto.shards.len().to_string(), ""),
            (
                format!("work units (--unit-size {})", mb(a.unit_size)),
                format!(
                    "{}: {} statistics units, {} apply units (output bytes: min {}, median {}, max {})",
                    self.units.len(),
                    sh.stats_units,
                    sh.apply_units,
                    mb(sizes.first().copied().unwrap_or(0)),
                    mb(median),
                    mb(sizes.last().copied().unwrap_or(0))
                ),
                "",
            ),
            (
                "unit moving the most bytes".into(),
                format!("{} ({})", gb(d.largest.0), d.largest.1),
                "",
            ),
            (
                "plan (headers -> MergePlan)".into(),
                format!(
                    "{} CPU, {} wall",
                    s(secs(self.plan_phase.cpu)),
                    s(secs(self.plan_phase.wall))
                ),
                "",
            ),
            (
                "submit rest (units, wire, pins, journal, add_job)".into(),
                format!(
                    "{} CPU, {} wall",
                    s(secs(self.units_phase.cpu)),
                    s(secs(self.units_phase.wall))
                ),
                "",
            ),
            (
                "dispatch (whole simulation run)".into(),
                format!(
                    "{} CPU, {} wall",
                    s(secs(self.dispatch_phase.cpu)),
                    s(secs(self.dispatch_phase.wall))
                ),
                "",
            ),
            (
                "  of which scheduler calls".into(),
                format!("{} ({} calls)", s(secs(o.sched.total())), o.calls.total()),
                "",
            ),
            (
                "    lease+report+settle / idle polls / heartbeats / ticks".into(),
                format!(
                    "{} / {} / {} / {}",
                    s(secs(o.sched.work)),
                    s(secs(o.sched.idle)),
                    s(secs(o.sched.heartbeat)),
                    s(secs(o.sched.tick))
                ),
                "",
            ),
            (
                "  of which lease encoding (prost)".into(),
                format!("{} ({})", s(secs(o.encode)), mb(o.wire_bytes)),
                "",
            ),
            (
                "  of which journal CPU (statistics hex encoding / submit / writer thread)".into(),
                format!("{} / {} / {writer}", s(secs(o.stats_encode)), s(secs(o.journal_submit))),
                "",
            ),
            (
                "  of which simulated workers building statistics (not coordinator)".into(),
                format!(
                    "{} ({} statistics reports, {} of statistics)",
                    s(secs(o.stats_build)),
                    o.stats_units,
                    mb(o.stats_bytes)
                ),
                "",
            ),
            (
                "  remainder: the simulator's own event queue".into(),
                s(secs(self.dispatch_phase.cpu.saturating_sub(
                    o.sched.total()
                        + o.encode
                        + o.stats_encode
                        + o.journal_submit
                        + o.stats_build
                        + self.writer_cpu.unwrap_or_default(),
                ))),
                "",
            ),
            (
                "  journal fsync wait (wall)".into(),
                format!("{} over {} group commits", s(secs(o.journal_wait)), o.commits),
                "",
            ),
            (
                "coordinator CPU, plan + submit + dispatch (less workers' statistics)".into(),
                s(d.coordinator_cpu),
                "< 10 s",
            ),
            (
                "dispatch rate".into(),
                format!(
                    "{:.0} units/s of dispatch CPU; {:.0} units/s of per-unit work (lease+report+settle, \
                     encoding, journal)",
                    d.dispatch_rate, d.unit_rate
                ),
                "",
            ),
            (
                "coordinator peak RSS (VmHWM)".into(),
                format!(
                    "{} (after plan {}, at start {}{})",
                    mb(self.rss_peak),
                    mb(self.rss_plan),
                    mb(self.rss_start),
                    if self.hwm_reset {
                        ""
                    } else {
                        "; VmHWM not reset: includes input generation"
                    }
                ),
                "< 1 GB",
            ),
            (
                "scheduler calls".into(),
                format!(
                    "lease {} (+{} empty polls), heartbeat {}, report {}, settle {}, tick {}",
                    o.calls.lease, o.calls.lease_empty, o.calls.heartbeat, o.calls.report, o.calls.settle, o.calls.tick
                ),
                "",
            ),
            (
                "simulated cluster".into(),
                format!(
                    "{} workers x {} MB/s; {} moved = {} read by apply units + {} read by statistics \
                     units + {} written",
                    a.workers,
                    a.bandwidth / 1_000_000,
                    gb(d.total_moved),
                    gb(d.total_moved - sh.stats_read - sh.written),
                    gb(sh.stats_read),
                    gb(sh.written)
                ),
                "",
            ),
            (
                "ideal makespan (all bytes moved, statistics reads included, / total bandwidth)".into(),
                s(d.ideal),
                "",
            ),
            (
                "critical path (longest unit; statistics then apply of one tensor)".into(),
                format!(
                    "{} / {} -> bound max(ideal, critical path) {}",
                    s(secs(o.longest_unit)),
                    s(sh.critical),
                    s(d.bound)
                ),
                "",
            ),
            (
                "statistics".into(),
                format!(
                    "last statistics unit settled at {}; {} leased chunk tasks carried combined statistics",
                    s(secs(o.last_stats_settled)),
                    o.received
                ),
                "",
            ),
            (
                "idle workers: starved before the last lease / tail after it".into(),
                format!(
                    "{} empty polls ({:.0} worker-s) / last lease at {}, tail {}",
                    o.starved_polls,
                    o.starved_polls as f64 * a.idle_poll_ms / 1e3,
                    s(secs(o.last_lease)),
                    s(d.makespan - secs(o.last_lease))
                ),
                "",
            ),
            ("simulated makespan".into(), s(d.makespan), ""),
            (
                "makespan / ideal".into(),
                format!(
                    "{:.2}x (makespan / bound {:.2}x)",
                    d.makespan / d.ideal,
                    d.makespan / d.bound
                ),
                "<= 1.10x",
            ),
            (
                "units settled by (50% / 90% / 99%)".into(),
                format!("{} / {} / {}", s(d.settled[0]), s(d.settled[1]), s(d.settled[2])),
                "",
            ),
            (
                "worker utilization".into(),
                format!("{:.1}%", d.utilization * 100.0),
                "",
            ),
        ];
        println!("| measure | value | target |");
        println!("|---|---|---|");
        for (k, v, t) in rows {
            println!("| {k} | {v} | {t} |");
        }
    }

    /// The report as one JSON object (seconds, bytes).
    pub fn json(&self) -> serde_json::Value {
        let d = self.derived();
        let o = self.outcome;
        let a = self.args;
        let sh = &d.shape;
        let inputs = serde_json::json!({
            "models": 4,
            "params_per_model": self.params,
            "tensors": sh.tensors,
            "chunk_size": a.chunk_size,
            "tasks": sh.tasks,
            "whole_tasks": sh.tasks - sh.stats_tasks - sh.apply_chunks,
            "chunked_tensors": sh.chunked,
            "chunk_tasks": sh.stats_tasks + sh.apply_chunks,
            "statistics_chunk_tasks": sh.stats_tasks,
            "apply_chunk_tasks": sh.apply_chunks,
            "shards": self.plan.proto.shards.len(),
            "unit_size": a.unit_size,
            "units": self.units.len(),
            "statistics_units": sh.stats_units,
            "apply_units": sh.apply_units,
            "largest_unit_moved_bytes": d.largest.0,
            "largest_unit_tensors": d.largest.1,
        });
        let cpu = serde_json::json!({
            "plan_cpu_s": secs(self.plan_phase.cpu),
            "plan_wall_s": secs(self.plan_phase.wall),
            "submit_rest_cpu_s": secs(self.units_phase.cpu),
            "submit_rest_wall_s": secs(self.units_phase.wall),
            "dispatch_cpu_s": secs(self.dispatch_phase.cpu),
            "dispatch_wall_s": secs(self.dispatch_phase.wall),
            "dispatch_scheduler_s": secs(o.sched.total()),
            "dispatch_scheduler_unit_work_s": secs(o.sched.work),
            "dispatch_scheduler_idle_polls_s": secs(o.sched.idle),
            "dispatch_scheduler_heartbeats_s": secs(o.sched.heartbeat),
            "dispatch_scheduler_ticks_s": secs(o.sched.tick),
            "dispatch_encode_s": secs(o.encode),
            "dispatch_wire_bytes": o.wire_bytes,
            "dispatch_journal_submit_s": secs(o.journal_submit),
            "dispatch_journal_statistics_encode_s": secs(o.stats_encode),
            "dispatch_worker_statistics_s": secs(o.stats_build),
            "statistics_reports": o.stats_units,
            "statistics_report_bytes": o.stats_bytes,
            "dispatch_journal_writer_cpu_s": self.writer_cpu.map(secs),
            "dispatch_journal_wait_s": secs(o.journal_wait),
            "journal_group_commits": o.commits,
            "coordinator_cpu_s": d.coordinator_cpu,
            "dispatch_units_per_cpu_s": d.dispatch_rate,
            "dispatch_units_per_unit_work_s": d.unit_rate,
        });
        let memory = serde_json::json!({
            "rss_start_bytes": self.rss_start,
            "rss_after_plan_bytes": self.rss_plan,
            "rss_peak_bytes": self.rss_peak,
            "rss_peak_reset": self.hwm_reset,
        });
        let calls = serde_json::json!({
            "lease": o.calls.lease,
            "lease_empty": o.calls.lease_empty,
            "heartbeat": o.calls.heartbeat,
            "report": o.calls.report,
            "settle": o.calls.settle,
            "tick": o.calls.tick,
        });
        let makespan = serde_json::json!({
            "workers": a.workers,
            "bandwidth_bytes_per_s": a.bandwidth,
            "bytes_moved": d.total_moved,
            "bytes_read_by_statistics_units": sh.stats_read,
            "bytes_written": sh.written,
            "ideal_s": d.ideal,
            "ideal_note": "all bytes moved (apply and statistics reads, output writes) / (workers x bandwidth)",
            "longest_unit_s": secs(o.longest_unit),
            "critical_path_s": sh.critical,
            "last_statistics_settled_s": secs(o.last_stats_settled),
            "last_lease_s": secs(o.last_lease),
            "starved_empty_polls": o.starved_polls,
            "chunk_tasks_leased_with_statistics": o.received,
            "bound_s": d.bound,
            "makespan_s": d.makespan,
            "over_ideal": d.makespan / d.ideal,
            "over_bound": d.makespan / d.bound,
            "settled_p50_s": d.settled[0],
            "settled_p90_s": d.settled[1],
            "settled_p99_s": d.settled[2],
            "worker_utilization": d.utilization,
        });
        serde_json::json!({
            "inputs": inputs,
            "cpu": cpu,
            "memory": memory,
            "scheduler_calls": calls,
            "makespan": makespan,
        })
    }
}
