//! The scheduler: workers, leases and unit states of every job, as a pure state machine.
//!
//! Every method takes `now`, so the whole lifecycle (lease expiry, dead workers, the grace
//! period when no worker is left) is tested without sleeping. The gRPC service wraps one
//! `Scheduler` in a mutex and calls [`Scheduler::tick`] periodically.
//!
//! Invariants:
//! - Ids are unique across coordinator restarts: worker and lease ids carry the coordinator's
//!   persisted epoch (`w-EPOCH-N`, `l-EPOCH-N`), so an id issued by an earlier process never
//!   names a lease of this one.
//! - A unit is `Pending`, `Leased` (to exactly one live lease) or `Done`; a lease exists only
//!   for a `Leased` unit of a running job.
//! - A report is fenced (`scheduler/report.rs`): accepted only from the worker holding the live lease,
//!   for the job, unit and attempt that lease was granted for, with exactly the unit's planned
//!   parts. Everything else is rejected and counted.
//! - A `Done` unit counts as done for the job (status, commit) only once the service has made
//!   its journal record durable ([`Scheduler::settle`]); the job becomes `Committing` only
//!   when every unit is settled.
//! - Terminal states (`Succeeded`, `Failed`, `Cancelled`) are absorbing; `Committing` can
//!   only end in `Succeeded` or `Failed`.

use crate::chunk_book::ChunkBook;
use shardmerge_proto::v1::{JobState, JobStatus, PartResult, TaskStats, WorkUnit};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

mod chunks;
mod leases;
mod report;
pub use report::{Rejection, ReportRef, planned_parts};

/// Tasks one lease response carries at most (beyond its first unit), so that it stays far below
/// the gRPC message limit ([`shardmerge_proto::MAX_MESSAGE_BYTES`]) with small chunk tasks.
const MAX_LEASE_TASKS: usize = 16384;

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
    /// Attempts per unit (retryable failures and lost leases) before the job fails.
    pub max_attempts: u32,
    /// Units handed out by one lease request at most.
    pub max_units_per_lease: usize,
    /// Jobs running at once; more wait in a FIFO queue (`None`: no limit).
    pub max_running_jobs: Option<usize>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(10),
            heartbeat: Duration::from_secs(2),
            worker_timeout: Duration::from_secs(10),
            no_worker_grace: Duration::from_secs(30),
            max_attempts: 4,
            max_units_per_lease: 64,
            max_running_jobs: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum UnitState {
    Pending,
    Leased(String),
    /// Reported; `durable` once its journal record is on disk.
    Done {
        parts: Vec<PartResult>,
        stats: Vec<TaskStats>,
        durable: bool,
    },
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
    attempt: u32,
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
    /// Pending units whose chunk tasks wait for an earlier statistics pass.
    waiting: Vec<usize>,
    /// Chunk pipelines: readiness and the statistics dispatched units receive.
    book: ChunkBook,
    /// Index of each unit id in `units`.
    by_id: HashMap<u64, usize>,
    no_worker_since: Option<Instant>,
    /// When the job reached a terminal state (for retention).
    finished_at: Option<Instant>,
}

/// Something the service must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A unit finished: journal it, then [`Scheduler::settle`] (or [`Scheduler::unsettle`]).
    UnitDone {
        /// Job.
        job: String,
        /// Unit id.
        unit: u64,
        /// Uploaded parts (multipart outputs).
        parts: Vec<PartResult>,
        /// Statistics of a statistics unit's chunk tasks.
        stats: Vec<TaskStats>,
    },
    /// Every unit of the job is done and journaled: commit it.
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
        /// Statistics of a statistics unit's chunk tasks, in task order.
        stats: Vec<TaskStats>,
    },
    /// The unit failed.
    Failure {
        /// Message.
        message: String,
        /// Whether another attempt may succeed.
        retryable: bool,
    },
}

/// Why a cancel was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CancelRefused {
    /// No such job.
    #[error("no job `{0}`")]
    NotFound(String),
    /// The job is committing: its output is being published and can no longer be withdrawn.
    #[error("job `{0}` is committing its output and can no longer be cancelled")]
    Committing(String),
    /// The job already ended.
    #[error("job `{0}` already finished ({1})")]
    Finished(String, String),
}

/// The scheduler state machine.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    epoch: u64,
    workers: HashMap<String, Worker>,
    jobs: BTreeMap<String, JobEntry>,
    leases: HashMap<String, LeaseInfo>,
    next_id: u64,
    lease_expiries: u64,
    rejected: BTreeMap<Rejection, u64>,
    /// The job served first by the last lease (fair turns start after it).
    last_served: Option<String>,
}

impl Scheduler {
    /// An empty scheduler whose ids carry `epoch` (the coordinator's persisted incarnation
    /// number, so ids never repeat across restarts).
    pub fn new(cfg: SchedulerConfig, epoch: u64) -> Self {
        Self {
            cfg,
            epoch,
            workers: HashMap::new(),
            jobs: BTreeMap::new(),
            leases: HashMap::new(),
            next_id: 1,
            lease_expiries: 0,
            rejected: BTreeMap::new(),
            last_served: None,
        }
    }

    /// The policy.
    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    fn id(&mut self, prefix: &str) -> String {
        let id = format!("{prefix}-{}-{}", self.epoch, self.next_id);
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

    /// Adds a job whose units `done` are already finished and journaled (resume), with the
    /// statistics of its done statistics units. `Err` when those statistics cannot be
    /// combined (the job cannot resume).
    pub fn add_job(
        &mut self,
        mut status: JobStatus,
        units: Vec<WorkUnit>,
        unit_bytes: Vec<u64>,
        done: HashMap<u64, Vec<PartResult>>,
        mut done_stats: HashMap<u64, Vec<TaskStats>>,
    ) -> Result<(), String> {
        let mut states: Vec<UnitState> = units
            .iter()
            .map(|u| match done.get(&u.unit_id) {
                Some(p) => UnitState::Done {
                    parts: p.clone(),
                    stats: done_stats.remove(&u.unit_id).unwrap_or_default(),
                    durable: true,
                },
                None => UnitState::Pending,
            })
            .collect();
        let (book, queue, waiting) = chunks::resume_book(&units, &mut states)?;
        status.units_total = units.len() as u64;
        status.units_done = states.iter().filter(|s| **s != UnitState::Pending).count() as u64;
        status.resumed_units = status.units_done;
        status.bytes_total = unit_bytes.iter().sum();
        status.bytes_done = states
            .iter()
            .zip(&unit_bytes)
            .filter(|(s, _)| **s != UnitState::Pending)
            .map(|(_, b)| b)
            .sum();
        // Queued until admitted (at once unless `max_running_jobs` jobs already run).
        status.state = JobState::Queued as i32;
        let n = units.len();
        let by_id = units.iter().enumerate().map(|(i, u)| (u.unit_id, i)).collect();
        self.jobs.insert(
            status.job_id.clone(),
            JobEntry {
                status,
                units,
                unit_bytes,
                states,
                attempts: vec![0; n],
                queue,
                waiting,
                book,
                by_id,
                no_worker_since: None,
                finished_at: None,
            },
        );
        self.admit();
        Ok(())
    }

    /// Adds a job that already ended (known from the journal), so its status stays queryable.
    pub fn add_finished(&mut self, status: JobStatus, now: Instant) {
        let id = status.job_id.clone();
        self.jobs.insert(
            id,
            JobEntry {
                status,
                units: Vec::new(),
                unit_bytes: Vec::new(),
                states: Vec::new(),
                attempts: Vec::new(),
                queue: VecDeque::new(),
                waiting: Vec::new(),
                book: ChunkBook::default(),
                by_id: HashMap::new(),
                no_worker_since: None,
                finished_at: Some(now),
            },
        );
    }

    /// True when every unit of `job` is done and journaled.
    pub fn all_done(&self, job: &str) -> bool {
        self.jobs.get(job).is_some_and(|j| {
            j.states
                .iter()
                .all(|s| matches!(s, UnitState::Done { durable: true, .. }))
        })
    }

    /// Parts of every journaled unit of `job` (in unit order), for completing uploads.
    pub fn parts(&self, job: &str) -> Vec<(u64, Vec<PartResult>)> {
        let Some(j) = self.jobs.get(job) else { return Vec::new() };
        j.units
            .iter()
            .zip(&j.states)
            .filter_map(|(u, s)| match s {
                UnitState::Done {
                    parts, durable: true, ..
                } => Some((u.unit_id, parts.clone())),
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

    /// The state of `job`, if known.
    pub fn state(&self, job: &str) -> Option<JobState> {
        self.jobs
            .get(job)
            .map(|j| JobState::try_from(j.status.state).unwrap_or(JobState::Unspecified))
    }

    /// Moves a job to `state`. Refused (returns false) out of a terminal state, and out of
    /// `Committing` into anything but `Succeeded` or `Failed`: terminal states are absorbing.
    pub fn set_state(&mut self, job: &str, state: JobState, error: Option<String>, now: Instant) -> bool {
        let Some(j) = self.jobs.get_mut(job) else { return false };
        let cur = JobState::try_from(j.status.state).unwrap_or(JobState::Unspecified);
        let allowed =
            !is_final(cur) && (cur != JobState::Committing || matches!(state, JobState::Succeeded | JobState::Failed));
        if !allowed {
            return false;
        }
        j.status.state = state as i32;
        if let Some(e) = error {
            j.status.error = e;
        }
        if is_final(state) {
            j.queue.clear();
            j.finished_at = Some(now);
            self.leases.retain(|_, l| l.job != job);
            self.admit();
        }
        true
    }

    /// Cancels a running job. Refused once it is committing or finished.
    pub fn cancel(&mut self, job: &str, now: Instant) -> Result<(), CancelRefused> {
        match self.state(job) {
            None => Err(CancelRefused::NotFound(job.to_string())),
            Some(JobState::Committing) => Err(CancelRefused::Committing(job.to_string())),
            Some(s) if is_final(s) => Err(CancelRefused::Finished(job.to_string(), state_name(s).into())),
            Some(_) => {
                self.set_state(job, JobState::Cancelled, Some("cancelled by user".into()), now);
                Ok(())
            }
        }
    }

    /// Forgets jobs that ended more than `retention` ago and for which `closed` holds (their
    /// cleanup is done); returns their ids.
    pub fn forget_finished(&mut self, retention: Duration, now: Instant, closed: impl Fn(&str) -> bool) -> Vec<String> {
        let old: Vec<String> = self
            .jobs
            .iter()
            .filter(|(k, j)| j.finished_at.is_some_and(|t| now.duration_since(t) >= retention) && closed(k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &old {
            self.jobs.remove(k);
        }
        old
    }
}

/// True for terminal states.
pub fn is_final(s: JobState) -> bool {
    matches!(s, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
}

/// Lowercase name of a state, as the CLI and the journal write it.
pub fn state_name(s: JobState) -> &'static str {
    match s {
        JobState::Unspecified => "unknown",
        JobState::Planning => "planning",
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Committing => "committing",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

mod fair;
pub use fair::submission_key;
mod snapshot;
pub use snapshot::SchedulerSnapshot;

#[cfg(test)]
mod tests;
