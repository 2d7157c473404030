//! The scheduler: workers, leases and unit states of every job, as a pure state machine.
//!
//! Every method takes `now`, so the whole lifecycle (lease expiry, dead workers, the grace
//! period when no worker is left) is tested without sleeping. The gRPC service wraps one
//! `Scheduler` in a mutex and calls [`Scheduler::tick`] periodically.
//!
//! Invariants: a unit is `Pending`, `Leased` (to exactly one live lease) or `Done`; a lease
//! exists only for a `Leased` unit of a running job; a report for an unknown or expired lease is
//! ignored (the unit was already handed to someone else, and tasks are idempotent).

use shardmerge_proto::v1::{JobState, JobStatus, Lease, PartResult, WorkUnit};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Timing and retry policy.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// How long a lease lasts without a heartbeat.
    pub lease: Duration,
    /// Interval workers are told to heartbeat at.
    pub heartbeat: Duration,
    /// A worker silent for this long is considered gone.
    pub worker_timeout: Duration,
    /// A running job with pending work and no live worker for this long fails.
    pub no_worker_grace: Duration,
    /// Attempts per unit before a retryable failure fails the job.
    pub max_attempts: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(10),
            heartbeat: Duration::from_secs(2),
            worker_timeout: Duration::from_secs(10),
            no_worker_grace: Duration::from_secs(30),
            max_attempts: 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum UnitState {
    Pending,
    Leased(String),
    Done(Vec<PartResult>),
}

#[derive(Debug)]
struct Worker {
    last_seen: Instant,
}

#[derive(Debug)]
struct LeaseInfo {
    job: String,
    unit: usize,
    worker: String,
    expires: Instant,
    granted: Instant,
}

/// Per-job scheduling state.
#[derive(Debug)]
struct JobEntry {
    status: JobStatus,
    units: Vec<WorkUnit>,
    unit_bytes: Vec<u64>,
    states: Vec<UnitState>,
    attempts: Vec<u32>,
    queue: VecDeque<usize>,
    no_worker_since: Option<Instant>,
}

/// Something the service must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A unit finished: journal it.
    UnitDone {
        /// Job.
        job: String,
        /// Unit id.
        unit: u64,
        /// Uploaded parts (multipart outputs).
        parts: Vec<PartResult>,
    },
    /// Every unit of the job is done: commit it.
    ReadyToCommit(String),
    /// The job failed: clean up its output.
    Failed {
        /// Job.
        job: String,
        /// Why.
        error: String,
    },
}

/// Outcome reported by a worker for a lease.
#[derive(Debug, Clone)]
pub enum Report {
    /// The unit's output is written.
    Success {
        /// Parts uploaded.
        parts: Vec<PartResult>,
    },
    /// The unit failed.
    Failure {
        /// Message.
        message: String,
        /// Whether another attempt may succeed.
        retryable: bool,
    },
}

/// The scheduler state machine.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    workers: HashMap<String, Worker>,
    jobs: BTreeMap<String, JobEntry>,
    leases: HashMap<String, LeaseInfo>,
    next_id: u64,
    lease_expiries: u64,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new(cfg: SchedulerConfig) -> Self {
        Self {
            cfg,
            workers: HashMap::new(),
            jobs: BTreeMap::new(),
            leases: HashMap::new(),
            next_id: 1,
            lease_expiries: 0,
        }
    }

    /// The policy.
    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    fn id(&mut self, prefix: &str) -> String {
        let id = format!("{prefix}-{}", self.next_id);
        self.next_id += 1;
        id
    }

    /// Registers a worker and returns its id.
    pub fn register_worker(&mut self, now: Instant) -> String {
        let id = self.id("w");
        self.workers.insert(id.clone(), Worker { last_seen: now });
        id
    }

    /// Live workers.
    pub fn live_workers(&self) -> usize {
        self.workers.len()
    }

    /// Adds a job whose units `done` are already finished (resume).
    pub fn add_job(
        &mut self,
        mut status: JobStatus,
        units: Vec<WorkUnit>,
        unit_bytes: Vec<u64>,
        done: HashMap<u64, Vec<PartResult>>,
    ) {
        let states: Vec<UnitState> = units
            .iter()
            .map(|u| match done.get(&u.unit_id) {
                Some(p) => UnitState::Done(p.clone()),
                None => UnitState::Pending,
            })
            .collect();
        let queue = states
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == UnitState::Pending)
            .map(|(i, _)| i)
            .collect();
        status.units_total = units.len() as u64;
        status.units_done = (units.len() - states.iter().filter(|s| **s == UnitState::Pending).count()) as u64;
        status.resumed_units = status.units_done;
        status.bytes_total = unit_bytes.iter().sum();
        status.bytes_done = states
            .iter()
            .zip(&unit_bytes)
            .filter(|(s, _)| matches!(s, UnitState::Done(_)))
            .map(|(_, b)| b)
            .sum();
        status.state = JobState::Running as i32;
        let n = units.len();
        self.jobs.insert(
            status.job_id.clone(),
            JobEntry {
                status,
                units,
                unit_bytes,
                states,
                attempts: vec![0; n],
                queue,
                no_worker_since: None,
            },
        );
    }

    /// True when every unit of `job` is done.
    pub fn all_done(&self, job: &str) -> bool {
        self.jobs
            .get(job)
            .is_some_and(|j| j.states.iter().all(|s| matches!(s, UnitState::Done(_))))
    }

    /// Parts of every unit of `job` (in unit order), for completing uploads.
    pub fn parts(&self, job: &str) -> Vec<(u64, Vec<PartResult>)> {
        let Some(j) = self.jobs.get(job) else { return Vec::new() };
        j.units
            .iter()
            .zip(&j.states)
            .filter_map(|(u, s)| match s {
                UnitState::Done(p) => Some((u.unit_id, p.clone())),
                _ => None,
            })
            .collect()
    }

    /// Status of a job.
    pub fn status(&self, job: &str) -> Option<JobStatus> {
        self.jobs.get(job).map(|j| {
            let mut s = j.status.clone();
            s.live_workers = self.workers.len() as u32;
            s
        })
    }

    /// Statuses of all jobs.
    pub fn list(&self) -> Vec<JobStatus> {
        self.jobs.keys().filter_map(|k| self.status(k)).collect()
    }

    /// Sets a job's state (commit progress, final states).
    pub fn set_state(&mut self, job: &str, state: JobState, error: Option<String>) {
        if let Some(j) = self.jobs.get_mut(job) {
            j.status.state = state as i32;
            if let Some(e) = error {
                j.status.error = e;
            }
            if is_final(state) {
                j.queue.clear();
                self.leases.retain(|_, l| l.job != job);
            }
        }
    }

    /// Hands up to `max` pending units to `worker`.
    pub fn lease(&mut self, worker: &str, max: usize, now: Instant) -> Option<Vec<Lease>> {
        let Scheduler {
            cfg,
            workers,
            jobs,
            leases,
            next_id,
            ..
        } = self;
        workers.get_mut(worker)?.last_seen = now;
        let mut out = Vec::new();
        for (job_id, j) in jobs.iter_mut() {
            if out.len() >= max {
                break;
            }
            if j.status.state != JobState::Running as i32 {
                continue;
            }
            while out.len() < max {
                let Some(unit) = j.queue.pop_front() else { break };
                let lease_id = format!("l-{next_id}");
                *next_id += 1;
                j.states[unit] = UnitState::Leased(lease_id.clone());
                j.attempts[unit] += 1;
                let mut wu = j.units[unit].clone();
                wu.attempt = j.attempts[unit];
                leases.insert(
                    lease_id.clone(),
                    LeaseInfo {
                        job: job_id.clone(),
                        unit,
                        worker: worker.to_string(),
                        expires: now + cfg.lease,
                        granted: now,
                    },
                );
                out.push(Lease {
                    lease_id,
                    unit: Some(wu),
                    expires_in_ms: cfg.lease.as_millis() as u64,
                });
            }
        }
        Some(out)
    }

    /// Extends `worker`'s leases; returns the ones it no longer holds.
    pub fn heartbeat(&mut self, worker: &str, lease_ids: &[String], now: Instant) -> Option<Vec<String>> {
        self.workers.get_mut(worker)?.last_seen = now;
        let mut revoked = Vec::new();
        for id in lease_ids {
            match self.leases.get_mut(id) {
                Some(l) if l.worker == worker => l.expires = now + self.cfg.lease,
                _ => revoked.push(id.clone()),
            }
        }
        Some(revoked)
    }

    /// Records a worker's report on a lease.
    pub fn report(&mut self, worker: &str, lease_id: &str, report: Report, bytes: u64, now: Instant) -> Vec<Event> {
        if let Some(w) = self.workers.get_mut(worker) {
            w.last_seen = now;
        }
        let Some(lease) = self.leases.remove(lease_id) else {
            return Vec::new();
        };
        let Some(j) = self.jobs.get_mut(&lease.job) else {
            return Vec::new();
        };
        if j.status.state != JobState::Running as i32 {
            return Vec::new();
        }
        let _ = bytes;
        match report {
            Report::Success { parts } => {
                j.states[lease.unit] = UnitState::Done(parts.clone());
                j.status.units_done += 1;
                j.status.bytes_done += j.unit_bytes[lease.unit];
                let mut ev = vec![Event::UnitDone {
                    job: lease.job.clone(),
                    unit: j.units[lease.unit].unit_id,
                    parts,
                }];
                // Counted, not scanned: a lease exists only for a `Leased` unit, so each unit
                // is counted once, and `units_done` started at the resumed units.
                if j.status.units_done == j.status.units_total {
                    j.status.state = JobState::Committing as i32;
                    ev.push(Event::ReadyToCommit(lease.job.clone()));
                }
                ev
            }
            Report::Failure { message, retryable } => {
                if retryable && j.attempts[lease.unit] < self.cfg.max_attempts {
                    j.states[lease.unit] = UnitState::Pending;
                    j.queue.push_front(lease.unit);
                    j.status.retries += 1;
                    Vec::new()
                } else {
                    let job = lease.job.clone();
                    let why = if retryable {
                        format!("{message} (after {} attempts)", j.attempts[lease.unit])
                    } else {
                        message
                    };
                    self.set_state(&job, JobState::Failed, Some(why.clone()));
                    vec![Event::Failed { job, error: why }]
                }
            }
        }
    }

    /// Expires leases, forgets silent workers and fails jobs left without workers.
    pub fn tick(&mut self, now: Instant) -> Vec<Event> {
        let timeout = self.cfg.worker_timeout;
        self.workers.retain(|_, w| now.duration_since(w.last_seen) < timeout);
        let expired: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for id in expired {
            let l = self.leases.remove(&id).expect("listed");
            if let Some(j) = self.jobs.get_mut(&l.job)
                && j.states[l.unit] == UnitState::Leased(id.clone())
            {
                tracing::warn!(job_id = %l.job, unit = l.unit, worker_id = %l.worker, "lease expired; unit requeued");
                j.states[l.unit] = UnitState::Pending;
                j.queue.push_front(l.unit);
                j.status.retries += 1;
                self.lease_expiries += 1;
            }
        }
        let mut events = Vec::new();
        let no_workers = self.workers.is_empty();
        let grace = self.cfg.no_worker_grace;
        let mut failed = Vec::new();
        for (id, j) in self.jobs.iter_mut() {
            if j.status.state != JobState::Running as i32 {
                continue;
            }
            if no_workers {
                let since = *j.no_worker_since.get_or_insert(now);
                if now.duration_since(since) >= grace {
                    failed.push((
                        id.clone(),
                        format!(
                            "no live worker for {}s: every worker is gone; start workers and resubmit",
                            grace.as_secs()
                        ),
                    ));
                }
            } else {
                j.no_worker_since = None;
            }
        }
        for (job, error) in failed {
            self.set_state(&job, JobState::Failed, Some(error.clone()));
            events.push(Event::Failed { job, error });
        }
        events
    }

    /// Cancels a job; returns false if unknown or already finished.
    pub fn cancel(&mut self, job: &str) -> bool {
        match self.jobs.get(job) {
            Some(j) if !is_final(JobState::try_from(j.status.state).unwrap_or(JobState::Unspecified)) => {
                self.set_state(job, JobState::Cancelled, Some("cancelled by user".into()));
                true
            }
            _ => false,
        }
    }
}

/// True for terminal states.
pub fn is_final(s: JobState) -> bool {
    matches!(s, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
}

mod snapshot;
pub use snapshot::SchedulerSnapshot;

#[cfg(test)]
mod tests;
