//! The discrete-event simulation: simulated workers against the real [`Scheduler`] and the
//! real [`Journal`], in simulated time (nothing sleeps).
//!
//! Each worker behaves like `worker/src/node`: it registers, leases one unit when its slot is
//! free, polls again after `idle_poll` when it got nothing, heartbeats its leases every
//! `heartbeat`, and "runs" a unit for (input bytes + output bytes) / bandwidth. Its report is
//! fenced by the scheduler, journaled (a real line, a real fsync), and acknowledged `ack`
//! later: every report arriving in that window shares one group commit (all tickets are
//! submitted, then waited for), after which each unit is settled and its worker leases again.
//! The coordinator's 250 ms housekeeping `tick` runs too. The scheduler's `now` is the
//! simulation's start `Instant` plus the simulated time.
//!
//! A statistics unit (no output) is answered with well-formed statistics of every task
//! ([`super::stats`]), which the scheduler combines when the pass is complete; every leased
//! unit after a statistics pass is checked to carry the combined statistics.
//!
//! Only the coordinator's own calls are timed; the simulation's bookkeeping (and the simulated
//! workers' statistics, timed apart) is not (it still counts in the process CPU time the caller
//! measures around [`run`]).

use super::stats;
use anyhow::{Context, Result, bail};
use prost::Message;
use shardmerge_coordinator::cluster::journal::{Durable, Entry, Journal, encode_stats};
use shardmerge_coordinator::cluster::scheduler::{Event, Report, ReportRef, Scheduler, planned_parts};
use shardmerge_proto::v1::{LeaseUnitsResponse, PartResult, WorkUnit};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// How the simulated cluster behaves.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Simulated workers (one unit at a time each).
    pub workers: usize,
    /// Bytes per second one worker reads plus writes.
    pub bandwidth: f64,
    /// Simulated time from a report to its acknowledgement (one group commit).
    pub ack: Duration,
    /// A worker that leased nothing asks again after this long (the worker's 100 ms).
    pub idle_poll: Duration,
    /// Heartbeat interval of a worker (the scheduler's `heartbeat`).
    pub heartbeat: Duration,
    /// The coordinator's housekeeping interval (the service's 250 ms).
    pub tick: Duration,
}

/// The job as the scheduler holds it.
pub struct SimJob<'a> {
    /// Job id.
    pub id: &'a str,
    /// Every unit, indexed by unit id (wire form, as leased).
    pub units: &'a [WorkUnit],
    /// Bytes a worker moves for each unit: inputs read plus output written.
    pub moved: &'a [u64],
}

/// Scheduler calls made, by kind.
#[derive(Debug, Default, Clone)]
pub struct Calls {
    /// `lease` calls that granted a unit.
    pub lease: u64,
    /// `lease` calls that found nothing pending (idle polls).
    pub lease_empty: u64,
    /// `heartbeat` calls.
    pub heartbeat: u64,
    /// `report` calls.
    pub report: u64,
    /// `settle` calls.
    pub settle: u64,
    /// `tick` calls.
    pub tick: u64,
}

impl Calls {
    /// Every scheduler call.
    pub fn total(&self) -> u64 {
        self.lease + self.lease_empty + self.heartbeat + self.report + self.settle + self.tick
    }
}

/// Real time inside scheduler calls, by purpose (single-threaded, so about their CPU time;
/// each includes ~40 ns of clock reads).
#[derive(Debug, Default, Clone)]
pub struct SchedTime {
    /// Registering the workers.
    pub register: Duration,
    /// Leases that granted a unit, reports and settles: the per-unit work.
    pub work: Duration,
    /// Leases that found nothing (idle workers polling).
    pub idle: Duration,
    /// Heartbeats.
    pub heartbeat: Duration,
    /// Housekeeping ticks.
    pub tick: Duration,
}

impl SchedTime {
    /// All of it.
    pub fn total(&self) -> Duration {
        self.register + self.work + self.idle + self.heartbeat + self.tick
    }
}

/// What a run measured.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Simulated time until the last unit was journaled and settled.
    pub makespan: Duration,
    /// Simulated time each unit was settled at, in settle order.
    pub settled_at: Vec<Duration>,
    /// Sum of every worker's busy (running) time.
    pub busy: Duration,
    /// Longest single unit.
    pub longest_unit: Duration,
    /// Scheduler calls made.
    pub calls: Calls,
    /// Real time inside scheduler calls.
    pub sched: SchedTime,
    /// Real time encoding the `LeaseUnitsResponse` protobufs the service would send.
    pub encode: Duration,
    /// Their encoded bytes.
    pub wire_bytes: u64,
    /// CPU time serialising and queueing journal lines (`Journal::submit`).
    pub journal_submit: Duration,
    /// CPU time encoding reported statistics for the journal (`journal::encode_stats`).
    pub stats_encode: Duration,
    /// Real time waiting for group commits to reach the disk.
    pub journal_wait: Duration,
    /// Group commits waited for (one simulated acknowledgement window each).
    pub commits: u64,
    /// Statistics units run (reports carrying statistics).
    pub stats_units: u64,
    /// Protobuf bytes of the statistics those reports carried.
    pub stats_bytes: u64,
    /// CPU time the simulated workers spent building statistics (worker work, not the
    /// coordinator's; part of the dispatch phase's process CPU).
    pub stats_build: Duration,
    /// Leased chunk tasks that carried combined statistics (checked present).
    pub received: u64,
    /// Simulated time the last statistics unit settled at.
    pub last_stats_settled: Duration,
    /// Simulated time of the last lease granted (from then on only the tail runs).
    pub last_lease: Duration,
    /// Empty polls (about `idle_poll` of an idle worker each) before the last lease: workers
    /// starved while units waited for a statistics pass.
    pub starved_polls: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Tick,
    Flush,
    Lease(usize),
    Finish(usize),
    Heartbeat(usize),
}

struct Running {
    lease: String,
    unit: usize,
    attempt: u32,
}

/// Simulated nanoseconds of `d`.
fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

/// The parts a worker reports for `u`: its planned part numbers and sizes.
fn parts_of(u: &WorkUnit) -> Vec<PartResult> {
    planned_parts(u)
        .into_iter()
        .map(|(n, size)| PartResult {
            part_index: n,
            etag: format!("\"sim-{}-{n}\"", u.unit_id),
            size,
        })
        .collect()
}

/// Runs `f`, adding its real duration to `acc`.
fn timed<T>(acc: &mut Duration, f: impl FnOnce() -> T) -> T {
    let s = Instant::now();
    let r = f();
    *acc += s.elapsed();
    r
}

/// Runs `f`, adding the CPU time it took this thread to `acc` (for long calls: unlike
/// [`timed`], not inflated when other processes compete for the cores).
fn cpu_timed<T>(acc: &mut Duration, f: impl FnOnce() -> T) -> T {
    let s = super::usage::current_thread_cpu();
    let r = f();
    *acc += super::usage::current_thread_cpu().saturating_sub(s);
    r
}

/// The event queue: earliest simulated time first, then insertion order.
#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
}

impl Queue {
    fn push(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((t, self.seq, ev)));
    }

    fn pop(&mut self) -> Option<(u64, Ev)> {
        self.heap.pop().map(|Reverse((t, _, ev))| (t, ev))
    }
}

/// Runs the job to the end (every unit settled: the job is ready to commit).
pub fn run(sched: &mut Scheduler, journal: &Journal, job: &SimJob<'_>, opts: &SimOptions) -> Result<Outcome> {
    let t0 = Instant::now();
    let at = |t: u64| t0 + Duration::from_nanos(t);
    let mut out = Outcome::default();
    let mut q = Queue::default();
    let ids: Vec<String> = timed(&mut out.sched.register, || {
        (0..opts.workers).map(|_| sched.register_worker(at(0))).collect()
    });
    let mut running: Vec<Option<Running>> = (0..opts.workers).map(|_| None).collect();
    for w in 0..opts.workers {
        q.push(0, Ev::Lease(w));
        // Heartbeats spread over the first interval, as workers started at random times do.
        q.push(
            ns(opts.heartbeat) * (w as u64 + 1) / opts.workers as u64,
            Ev::Heartbeat(w),
        );
    }
    q.push(ns(opts.tick), Ev::Tick);
    // Reports journaled but not yet acknowledged: (worker, unit, ticket).
    let mut pending: Vec<(usize, u64, Durable)> = Vec::new();
    let mut flush_due = false;

    while let Some((now, ev)) = q.pop() {
        match ev {
            Ev::Lease(w) => {
                let s = Instant::now();
                let leases = sched.lease(&ids[w], 1, at(now));
                let spent = s.elapsed();
                let leases = leases.context("a simulated worker was forgotten (lease)")?;
                if leases.is_empty() {
                    out.sched.idle += spent;
                    out.calls.lease_empty += 1;
                    q.push(now + ns(opts.idle_poll), Ev::Lease(w));
                    continue;
                }
                out.sched.work += spent;
                out.calls.lease += 1;
                out.last_lease = Duration::from_nanos(now);
                out.starved_polls = out.calls.lease_empty;
                // What the service sends back (gRPC framing and HTTP/2 not included).
                let resp = LeaseUnitsResponse {
                    leases,
                    unknown_worker: false,
                };
                out.wire_bytes += timed(&mut out.encode, || resp.encode_to_vec().len()) as u64;
                let lease = resp.leases.into_iter().next().context("one lease")?;
                let unit = lease.unit.context("lease without a unit")?;
                out.received += stats::check_received(&unit)?;
                let i = unit.unit_id as usize;
                let d = Duration::from_secs_f64(job.moved[i] as f64 / opts.bandwidth);
                out.busy += d;
                out.longest_unit = out.longest_unit.max(d);
                running[w] = Some(Running {
                    lease: lease.lease_id,
                    unit: i,
                    attempt: unit.attempt,
                });
                q.push(now + ns(d), Ev::Finish(w));
            }
            Ev::Finish(w) => {
                let r = running[w].as_ref().context("finish without a unit")?;
                let unit = &job.units[r.unit];
                let fenced = ReportRef {
                    worker: &ids[w],
                    lease: &r.lease,
                    job: job.id,
                    unit: unit.unit_id,
                    attempt: r.attempt,
                };
                let stats = if unit.output.is_none() {
                    out.stats_units += 1;
                    let s = cpu_timed(&mut out.stats_build, || stats::unit_stats(unit))?;
                    out.stats_bytes += s.iter().map(|t| t.encoded_len() as u64).sum::<u64>();
                    s
                } else {
                    Vec::new()
                };
                let report = Report::Success {
                    parts: parts_of(unit),
                    stats,
                };
                let res = timed(&mut out.sched.work, || sched.report(fenced, report, at(now)));
                out.calls.report += 1;
                for e in res.map_err(|(_, why)| anyhow::anyhow!("report rejected: {why}"))? {
                    let Event::UnitDone {
                        job: j,
                        unit,
                        parts,
                        stats,
                    } = e
                    else {
                        bail!("unexpected scheduler event on a report: {e:?}");
                    };
                    // As the service does: statistics journaled as hex protobufs with the unit.
                    let stats = cpu_timed(&mut out.stats_encode, || encode_stats(&stats));
                    let entry = Entry::UnitDone {
                        unit,
                        parts: parts.into_iter().map(|p| (p.part_index, p.etag)).collect(),
                        stats,
                    };
                    let ticket = cpu_timed(&mut out.journal_submit, || journal.submit(&j, &entry));
                    pending.push((w, unit, ticket));
                }
                if !flush_due {
                    flush_due = true;
                    q.push(now + ns(opts.ack), Ev::Flush);
                }
            }
            Ev::Flush => {
                flush_due = false;
                out.commits += 1;
                let mut acked = Vec::with_capacity(pending.len());
                let s = Instant::now();
                for (w, unit, ticket) in pending.drain(..) {
                    ticket
                        .wait_blocking()
                        .with_context(|| format!("journaling unit {unit}"))?;
                    acked.push((w, unit));
                }
                out.journal_wait += s.elapsed();
                let mut done = false;
                for (w, unit) in acked {
                    let events = timed(&mut out.sched.work, || sched.settle(job.id, unit, at(now)));
                    out.calls.settle += 1;
                    out.settled_at.push(Duration::from_nanos(now));
                    if job.units[unit as usize].output.is_none() {
                        out.last_stats_settled = Duration::from_nanos(now);
                    }
                    for e in &events {
                        match e {
                            Event::ReadyToCommit(_) => done = true,
                            Event::Failed { error, .. } => bail!("the job failed settling unit {unit}: {error}"),
                            Event::UnitDone { .. } => bail!("unexpected scheduler event on a settle: {e:?}"),
                        }
                    }
                    running[w] = None;
                    q.push(now, Ev::Lease(w));
                }
                if done {
                    out.makespan = Duration::from_nanos(now);
                    return Ok(out);
                }
            }
            Ev::Heartbeat(w) => {
                let leases: Vec<String> = running[w].iter().map(|r| r.lease.clone()).collect();
                let revoked = timed(&mut out.sched.heartbeat, || sched.heartbeat(&ids[w], &leases, at(now)));
                out.calls.heartbeat += 1;
                revoked.context("a simulated worker was forgotten (heartbeat)")?;
                q.push(now + ns(opts.heartbeat), Ev::Heartbeat(w));
            }
            Ev::Tick => {
                let events = timed(&mut out.sched.tick, || sched.tick(at(now)));
                out.calls.tick += 1;
                if let Some(e) = events.first() {
                    bail!("the scheduler gave up on the job: {e:?}");
                }
                q.push(now + ns(opts.tick), Ev::Tick);
            }
        }
    }
    bail!("the simulation ran out of events before the job was done")
}
