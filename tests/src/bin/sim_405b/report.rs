//! The simulation's report: a table on stdout, or one JSON object (`--json`).

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
    total_moved: u64,
    ideal: f64,
    bound: f64,
    makespan: f64,
    coordinator_cpu: f64,
    dispatch_rate: f64,
    /// Units per second of per-unit coordinator work alone.
    unit_rate: f64,
    utilization: f64,
    largest: (u64, String),
    settled: [f64; 3],
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Report<'_> {
    fn derived(&self) -> Derived {
        let o = self.outcome;
        let total_moved: u64 = self.moved.iter().sum();
        let capacity = self.args.workers as f64 * self.args.bandwidth as f64;
        let ideal = total_moved as f64 / capacity;
        let makespan = secs(o.makespan);
        let largest = self
            .units
            .iter()
            .max_by_key(|u| u.bytes())
            .map(|u| {
                let names: Vec<&str> = u
                    .tasks
                    .iter()
                    .map(|&t| self.plan.proto.tasks[t].tensor.as_str())
                    .collect();
                (u.bytes(), names.join(" + "))
            })
            .unwrap_or_default();
        let mut settled = o.settled_at.clone();
        settled.sort_unstable();
        Derived {
            total_moved,
            ideal,
            bound: ideal.max(secs(o.longest_unit)),
            makespan,
            coordinator_cpu: secs(self.plan_phase.cpu + self.units_phase.cpu + self.dispatch_phase.cpu),
            dispatch_rate: self.units.len() as f64 / secs(self.dispatch_phase.cpu).max(1e-9),
            unit_rate: self.units.len() as f64
                / secs(o.sched.work + o.encode + o.journal_submit + self.writer_cpu.unwrap_or_default()).max(1e-9),
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
        let mut sizes: Vec<u64> = self.units.iter().map(UnitPlan::bytes).collect();
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
            (
                "output tensors = tasks".into(),
                self.plan.proto.tasks.len().to_string(),
                "",
            ),
            (
                "chunk tasks".into(),
                "0 (not implemented yet: issue 9 item 1)".into(),
                "",
            ),
            ("output shards".into(), self.plan.proto.shards.len().to_string(), ""),
            (
                format!("work units (--unit-size {})", mb(a.unit_size)),
                format!(
                    "{} (output bytes: min {}, median {}, max {})",
                    self.units.len(),
                    mb(sizes.first().copied().unwrap_or(0)),
                    mb(median),
                    mb(sizes.last().copied().unwrap_or(0))
                ),
                "",
            ),
            (
                "largest unit".into(),
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
                "  of which journal (submit / writer thread)".into(),
                format!("{} / {writer}", s(secs(o.journal_submit))),
                "",
            ),
            (
                "  remainder: the simulator's own event queue".into(),
                s(secs(self.dispatch_phase.cpu.saturating_sub(
                    o.sched.total() + o.encode + o.journal_submit + self.writer_cpu.unwrap_or_default(),
                ))),
                "",
            ),
            (
                "  journal fsync wait (wall)".into(),
                format!("{} over {} group commits", s(secs(o.journal_wait)), o.commits),
                "",
            ),
            (
                "coordinator CPU, plan + submit + dispatch".into(),
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
                    "{} workers x {} MB/s, {} moved (inputs read + output written)",
                    a.workers,
                    a.bandwidth / 1_000_000,
                    gb(d.total_moved)
                ),
                "",
            ),
            ("ideal makespan (bytes / total bandwidth)".into(), s(d.ideal), ""),
            (
                "longest unit alone (critical path)".into(),
                format!(
                    "{} -> bound max(ideal, longest) {}",
                    s(secs(o.longest_unit)),
                    s(d.bound)
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
        let inputs = serde_json::json!({
            "models": 4,
            "params_per_model": self.params,
            "tasks": self.plan.proto.tasks.len(),
            "chunk_tasks": 0,
            "chunk_tasks_note": "not implemented yet (issue 9 item 1)",
            "shards": self.plan.proto.shards.len(),
            "unit_size": a.unit_size,
            "units": self.units.len(),
            "largest_unit_bytes": d.largest.0,
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
            "ideal_s": d.ideal,
            "longest_unit_s": secs(o.longest_unit),
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
