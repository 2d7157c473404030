//! The coordinator's job manager: turns submissions into planned, journaled jobs, feeds the
//! scheduler, and commits or cleans up finished jobs. The gRPC layer ([`super::grpc`]) is a
//! thin translation onto these methods.
//!
//! Output shards are multipart uploads (S3, or the local emulation for paths), created only
//! after the job record is journaled, filled by workers' parts, and completed at commit
//! (`service/commit.rs`); metadata is written first and the index last.

use super::journal::{Entry, FORMAT_VERSION, JobRecord, Journal};
use super::metrics::CoordinatorMetrics;
use super::scheduler::{CancelRefused, Event, Report, ReportRef, Scheduler, SchedulerConfig, is_final};
use super::units::UnitPlan;
use crate::config::MergeConfig;
use crate::plan::Plan;
use parking_lot::Mutex;
use shardmerge_proto::v1::{JobState, JobStatus};
use shardmerge_worker::storage::{Location, Storage, StorageError};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod commit;
mod create;
mod fingerprint;
mod lifecycle;
mod resume;

/// Coordinator settings.
#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    /// Where the journal lives.
    pub state_dir: PathBuf,
    /// Scheduler policy.
    pub scheduler: SchedulerConfig,
    /// Target bytes per work unit of new jobs (a resumed job keeps its journaled value).
    pub unit_target: u64,
    /// Output bytes above which tensors of new jobs are split into chunk tasks.
    pub chunk_size: u64,
    /// Workers' memory budget new jobs are planned for (`--worker-memory-limit`).
    pub memory_limit: Option<u64>,
    /// Directory relative model paths resolve against.
    pub model_root: PathBuf,
    /// Metrics to record into (e.g. served by `--metrics-listen`); `None` records into a
    /// private set nobody reads.
    pub metrics: Option<Arc<CoordinatorMetrics>>,
    /// Where submissions may read models and write outputs (`--allow-location`).
    pub allow: super::allow::AllowList,
    /// How long a finished job stays queryable (and its journal file kept).
    pub retention: Duration,
}

/// A job as a client submits it: the config and the options that shape its output.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The mergekit YAML, as text (the coordinator never reads the client's file).
    pub config_yaml: String,
    /// What errors and the model card call the config (usually its file name).
    pub config_name: String,
    /// Output directory: a path, `file://` or `s3://bucket/prefix`.
    pub output_uri: String,
    /// `--random-seed`: wins over `random_seed:` in the YAML; with neither, a random method
    /// gets a generated seed, journaled so that a resumed job keeps it.
    pub random_seed: Option<u64>,
    /// `--out-shard-size`: maximum bytes per output shard.
    pub out_shard_size: u64,
    /// Copy the donor's tokenizer files (`--copy-tokenizer`, the default).
    pub copy_tokenizer: bool,
    /// Write README.md and mergekit_config.yml (`--write-model-card`, the default).
    pub write_model_card: bool,
    /// `--allow-crimes`: merge models whose architectures differ.
    pub allow_crimes: bool,
    /// `--unsafe-truncate-embeddings`.
    pub unsafe_truncate_embeddings: bool,
}

/// Errors returned to clients, each with a gRPC code ([`ServiceError::code`]).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is wrong (bad config, bad URI, planning error).
    #[error("{0}")]
    Invalid(String),
    /// Unknown job.
    #[error("no job `{0}`")]
    NotFound(String),
    /// The request conflicts with the state of a job (output owned by a live job, cancel
    /// during commit).
    #[error("{0}")]
    Conflict(String),
    /// A transient failure (storage or journal); retrying may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    /// Maps a storage error: transient ones are `Unavailable`, the rest `Invalid`.
    pub fn storage(e: StorageError) -> ServiceError {
        if e.is_retryable() {
            ServiceError::Unavailable(e.to_string())
        } else {
            ServiceError::Invalid(e.to_string())
        }
    }

    /// The gRPC status code this error is reported with.
    pub fn code(&self) -> tonic::Code {
        match self {
            ServiceError::Invalid(_) => tonic::Code::InvalidArgument,
            ServiceError::NotFound(_) => tonic::Code::NotFound,
            ServiceError::Conflict(_) => tonic::Code::FailedPrecondition,
            ServiceError::Unavailable(_) => tonic::Code::Unavailable,
            ServiceError::Internal(_) => tonic::Code::Internal,
        }
    }
}

fn journal_err(e: super::journal::JournalError) -> ServiceError {
    ServiceError::Unavailable(e.to_string())
}

/// How a worker's report was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportReply {
    /// Recorded (and, for a success, journaled).
    Accepted,
    /// Refused by the fencing rules: the worker must drop the unit.
    Rejected(String),
}

struct JobRuntime {
    record: JobRecord,
    /// Shards whose upload a commit completed (journaled), skipped by a repeated commit.
    committed: Mutex<HashSet<u32>>,
    /// The commit journaled that it started writing at the output.
    commit_started: AtomicBool,
    plan: Plan,
    config: MergeConfig,
    units: Vec<UnitPlan>,
    output: Location,
}

/// The job manager, shared by the gRPC services and the background ticker.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

struct Inner {
    sched: Mutex<Scheduler>,
    jobs: Mutex<HashMap<String, Arc<JobRuntime>>>,
    /// Output URI -> the live job writing it (a second job to it is refused).
    outputs: Mutex<HashMap<String, String>>,
    /// Finished jobs whose journal file is closed (cleanup done), forgotten after retention.
    closed: Mutex<HashSet<String>>,
    storage: Storage,
    journal: Journal,
    changes: watch::Sender<u64>,
    next_job: AtomicU64,
    opts: CoordinatorOptions,
    metrics: Arc<CoordinatorMetrics>,
    /// Commit and cleanup tasks (graceful shutdown closes it and waits for them).
    background: TaskTracker,
    /// Cancelled when a graceful shutdown begins.
    shutting_down: CancellationToken,
}

fn output_key(loc: &Location) -> String {
    loc.to_uri().trim_end_matches('/').to_string()
}

fn parse_state(s: &str) -> JobState {
    match s {
        "succeeded" => JobState::Succeeded,
        "cancelled" => JobState::Cancelled,
        _ => JobState::Failed,
    }
}

impl Coordinator {
    /// Locks the state directory, opens the journal and resumes every unfinished job in it.
    pub async fn start(opts: CoordinatorOptions, storage: Storage) -> Result<Coordinator, ServiceError> {
        let journal = Journal::open(&opts.state_dir).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let (changes, _) = watch::channel(0);
        let metrics = opts.metrics.clone().unwrap_or_else(CoordinatorMetrics::new);
        let c = Coordinator {
            inner: Arc::new(Inner {
                sched: Mutex::new(Scheduler::new(opts.scheduler.clone(), journal.epoch())),
                jobs: Mutex::new(HashMap::new()),
                outputs: Mutex::new(HashMap::new()),
                closed: Mutex::new(HashSet::new()),
                storage,
                journal,
                changes,
                next_job: AtomicU64::new(1),
                opts,
                metrics: metrics.clone(),
                background: TaskTracker::new(),
                shutting_down: CancellationToken::new(),
            }),
        };
        let weak = Arc::downgrade(&c.inner);
        metrics.attach(move || {
            let inner = weak.upgrade()?;
            Some(inner.sched.lock().metrics_snapshot())
        });
        let replayed = c
            .inner
            .journal
            .replay()
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        // In submission order, so queued jobs start again in the order they were submitted.
        let mut replayed = replayed;
        replayed.sort_by_key(|r| crate::cluster::scheduler::submission_key(&r.record.job_id));
        for r in replayed {
            c.restore(r).await;
        }
        Ok(c)
    }

    /// The scheduler (for the worker API).
    pub fn with_sched<R>(&self, f: impl FnOnce(&mut Scheduler) -> R) -> R {
        f(&mut self.inner.sched.lock())
    }

    /// Subscribes to state changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn notify(&self) {
        self.inner.changes.send_modify(|v| *v += 1);
    }

    /// Plans, journals and schedules a new job. The work runs as a tracked task of its own, so
    /// a caller that goes away mid-call (a client killed while its submit RPC is in flight,
    /// which drops the RPC's future) cannot leave a half-created job holding its output: the
    /// job is created or refused whole, and a rerun finds it.
    pub async fn submit(&self, s: Submission) -> Result<(String, Vec<String>), ServiceError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let c = self.clone();
        self.spawn_tracked(async move {
            let _ = tx.send(c.submit_now(s).await);
        });
        rx.await
            .map_err(|_| ServiceError::Unavailable("the coordinator is shutting down".into()))?
    }

    async fn submit_now(&self, s: Submission) -> Result<(String, Vec<String>), ServiceError> {
        super::allow::check_submission(&self.inner.opts, &s)?;
        if self.is_shutting_down() {
            return Err(ServiceError::Unavailable("the coordinator is shutting down".into()));
        }
        let job_id = format!(
            "job-{}-{}",
            self.inner.journal.epoch(),
            self.inner.next_job.fetch_add(1, Ordering::SeqCst)
        );
        let record = JobRecord {
            format: FORMAT_VERSION,
            job_id: job_id.clone(),
            config_yaml: s.config_yaml,
            config_name: s.config_name,
            output_uri: s.output_uri,
            seed: s.random_seed,
            out_shard_size: s.out_shard_size,
            unit_target: self.inner.opts.unit_target,
            chunk_size: self.inner.opts.chunk_size,
            memory_limit: self.inner.opts.memory_limit,
            copy_tokenizer: s.copy_tokenizer,
            write_model_card: s.write_model_card,
            allow_crimes: s.allow_crimes,
            unsafe_truncate_embeddings: s.unsafe_truncate_embeddings,
            fingerprint: String::new(),
            inputs: Vec::new(),
            uploads: Vec::new(),
            shard_files: Vec::new(),
        };
        let warnings = self.create(record, None).await?;
        Ok((job_id, warnings))
    }

    /// Claims `output` for `job`; refused while another live job writes there.
    fn claim_output(&self, output: &Location, job: &str) -> Result<(), ServiceError> {
        let key = output_key(output);
        let mut outputs = self.inner.outputs.lock();
        match outputs.get(&key) {
            Some(owner) if owner != job => Err(ServiceError::Conflict(format!(
                "output {key} is being written by job {owner}; wait for it to finish or cancel it"
            ))),
            _ => {
                outputs.insert(key, job.to_string());
                Ok(())
            }
        }
    }

    fn release_output(&self, job: &str) {
        self.inner.outputs.lock().retain(|_, owner| owner != job);
    }

    /// Records a worker report, fenced to the live lease it names. A success is acknowledged
    /// only once its journal record is on disk; if that write fails the unit runs again and
    /// the report fails with `Unavailable`.
    pub async fn report(&self, r: ReportRef<'_>, report: Report, io: (u64, u64)) -> Result<ReportReply, ServiceError> {
        let now = Instant::now();
        let success = matches!(report, Report::Success { .. });
        let (age, verdict) = self.with_sched(|s| (s.lease_age(r.lease, now), s.report(r, report, now)));
        let events = match verdict {
            Ok(events) => events,
            Err((kind, why)) => {
                tracing::warn!(worker_id = %r.worker, lease = %r.lease, reason = kind.label(), "report rejected: {why}");
                return Ok(ReportReply::Rejected(why));
            }
        };
        if let Some(age) = age {
            self.inner.metrics.unit_reported(age, success.then_some(io));
        }
        let mut pending = Vec::new();
        let mut rest = Vec::new();
        for ev in events {
            match ev {
                Event::UnitDone {
                    job,
                    unit,
                    parts,
                    stats,
                } => {
                    let parts = parts.into_iter().map(|p| (p.part_index, p.etag)).collect();
                    let stats = super::journal::encode_stats(&stats);
                    pending.push((
                        job.clone(),
                        unit,
                        self.inner.journal.submit(&job, &Entry::UnitDone { unit, parts, stats }),
                    ));
                }
                other => rest.push(other),
            }
        }
        self.handle(rest);
        for (job, unit, ticket) in pending {
            match ticket.wait().await {
                Ok(()) => {
                    let events = self.with_sched(|s| s.settle(&job, unit, Instant::now()));
                    self.handle(events);
                }
                Err(e) => {
                    tracing::error!(job_id = %job, unit, error = %e, "journal append failed; unit will run again");
                    self.with_sched(|s| s.unsettle(&job, unit));
                    self.notify();
                    return Err(journal_err(e));
                }
            }
        }
        self.notify();
        Ok(ReportReply::Accepted)
    }

    /// Acts on scheduler events: commits and cleans up jobs.
    fn handle(&self, events: Vec<Event>) {
        for ev in events {
            match ev {
                Event::UnitDone { job, unit, .. } => {
                    tracing::error!(job_id = %job, unit, "unit event outside a report; ignored");
                }
                Event::ReadyToCommit(job) => self.spawn_commit(job),
                Event::Failed { job, error } => self.spawn_finish(job, "failed", error),
            }
        }
        self.notify();
    }

    /// Periodic housekeeping: lease expiry, worker loss, retention.
    pub fn tick(&self) {
        let now = Instant::now();
        let events = self.with_sched(|s| s.tick(now));
        if !events.is_empty() {
            self.handle(events);
        }
        let retention = self.inner.opts.retention;
        // Lock order: scheduler, then `closed` (nothing takes them the other way round).
        let forgotten = self.with_sched(|s| {
            let mut closed = self.inner.closed.lock();
            let gone = s.forget_finished(retention, now, |j| closed.contains(j));
            for job in &gone {
                closed.remove(job);
            }
            gone
        });
        for job in forgotten {
            self.inner.jobs.lock().remove(&job);
            if let Err(e) = self.inner.journal.remove(&job) {
                tracing::warn!(job_id = %job, error = %e, "removing the journal of a finished job failed");
            }
        }
    }

    /// Status of one job.
    pub fn status(&self, job: &str) -> Result<JobStatus, ServiceError> {
        self.with_sched(|s| s.status(job))
            .ok_or_else(|| ServiceError::NotFound(job.to_string()))
    }

    /// Statuses of all jobs.
    pub fn list(&self) -> Vec<JobStatus> {
        self.with_sched(|s| s.list())
    }

    /// Cancels a running job: journaled before it is acknowledged, then its uploads are
    /// aborted. Refused once the job is committing or finished. Like [`Coordinator::submit`],
    /// it runs as a tracked task of its own, so a caller that goes away cannot leave the job
    /// cancelled in memory but neither journaled nor cleaned up.
    pub async fn cancel(&self, job: &str) -> Result<JobStatus, ServiceError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (c, job) = (self.clone(), job.to_string());
        self.spawn_tracked(async move {
            let _ = tx.send(c.cancel_now(&job).await);
        });
        rx.await
            .map_err(|_| ServiceError::Unavailable("the coordinator is shutting down".into()))?
    }

    async fn cancel_now(&self, job: &str) -> Result<JobStatus, ServiceError> {
        self.with_sched(|s| s.cancel(job, Instant::now()))
            .map_err(|e| match e {
                CancelRefused::NotFound(j) => ServiceError::NotFound(j),
                other => ServiceError::Conflict(other.to_string()),
            })?;
        self.notify();
        let entry = Entry::finished("cancelled", "cancelled by user".into());
        self.inner.journal.append(job, &entry).await.map_err(journal_err)?;
        self.spawn_cleanup(job.to_string());
        self.status(job)
    }

    fn runtime(&self, job: &str) -> Option<Arc<JobRuntime>> {
        self.inner.jobs.lock().get(job).cloned()
    }

    /// Whether a job reached a final state.
    pub fn is_finished(&self, job: &str) -> bool {
        self.with_sched(|s| s.state(job)).is_some_and(is_final)
    }
}
