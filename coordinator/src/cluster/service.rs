//! The coordinator's job manager: turns submissions into planned, journaled jobs, feeds the
//! scheduler, and commits or cleans up finished jobs. The gRPC layer ([`super::grpc`]) is a
//! thin translation onto these methods.
//!
//! Output shards are multipart uploads (S3, or the local emulation for paths) created here, filled
//! by workers' parts, and completed at commit; metadata is written first and the index last.

use super::journal::{Durable, Entry, JobRecord, Journal};
use super::metrics::CoordinatorMetrics;
use super::scheduler::{Event, Report, Scheduler, SchedulerConfig, is_final};
use super::units::{UnitPlan, plan_units, work_unit};
use crate::config::{MergeConfig, parse_config};
use crate::output::{TOKENIZER_FILES, output_config};
use crate::plan::{ModelOpener, Plan, PlanOptions};
use crate::{card, pyjson};
use bytes::Bytes;
use shardmerge_proto::v1::{JobState, JobStatus, PartResult};
use shardmerge_worker::storage::{Location, Storage, open_model_dir};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

mod lifecycle;

/// Coordinator settings.
#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    /// Where the journal lives.
    pub state_dir: PathBuf,
    /// Scheduler policy.
    pub scheduler: SchedulerConfig,
    /// Target bytes per work unit.
    pub unit_target: u64,
    /// Directory relative model paths resolve against.
    pub model_root: PathBuf,
    /// Metrics to record into (e.g. served by `--metrics-listen`); `None` records into a
    /// private set nobody reads.
    pub metrics: Option<Arc<CoordinatorMetrics>>,
}

/// A submission.
#[derive(Debug, Clone)]
pub struct Submission {
    /// YAML text.
    pub config_yaml: String,
    /// Config name for messages.
    pub config_name: String,
    /// Output URI.
    pub output_uri: String,
    /// Seed.
    pub random_seed: Option<u64>,
    /// Shard size.
    pub out_shard_size: u64,
    /// Copy tokenizer.
    pub copy_tokenizer: bool,
    /// Model card.
    pub write_model_card: bool,
    /// Mixed architectures.
    pub allow_crimes: bool,
}

/// Errors returned to clients.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is wrong (bad config, bad URI, planning error).
    #[error("{0}")]
    Invalid(String),
    /// Unknown job.
    #[error("no job `{0}`")]
    NotFound(String),
    /// Storage or journal failure.
    #[error("{0}")]
    Internal(String),
}

struct JobRuntime {
    record: JobRecord,
    /// Shards whose upload a commit completed (journaled), skipped by a repeated commit.
    committed: Mutex<std::collections::HashSet<u32>>,
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
    storage: Storage,
    journal: Journal,
    changes: watch::Sender<u64>,
    next_job: AtomicU64,
    opts: CoordinatorOptions,
    metrics: Arc<CoordinatorMetrics>,
    /// Commit and cleanup tasks still running (graceful shutdown waits for them).
    background: watch::Sender<usize>,
    shutting_down: AtomicBool,
}

impl Coordinator {
    /// Opens the journal and resumes every unfinished job in it.
    pub async fn start(opts: CoordinatorOptions, storage: Storage) -> Result<Coordinator, ServiceError> {
        let journal = Journal::open(&opts.state_dir).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let next = journal.max_job_number() + 1;
        let (changes, _) = watch::channel(0);
        let metrics = opts.metrics.clone().unwrap_or_else(CoordinatorMetrics::new);
        let c = Coordinator {
            inner: Arc::new(Inner {
                sched: Mutex::new(Scheduler::new(opts.scheduler.clone())),
                jobs: Mutex::new(HashMap::new()),
                storage,
                journal,
                changes,
                next_job: AtomicU64::new(next),
                opts,
                metrics: metrics.clone(),
                background: watch::channel(0).0,
                shutting_down: AtomicBool::new(false),
            }),
        };
        let weak = Arc::downgrade(&c.inner);
        metrics.attach(move || {
            let inner = weak.upgrade()?;
            let snapshot = inner.sched.lock().unwrap_or_else(|e| e.into_inner()).metrics_snapshot();
            Some(snapshot)
        });
        let replayed = c
            .inner
            .journal
            .replay()
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        for r in replayed {
            if r.finished.is_some() {
                continue;
            }
            let job = r.record.job_id.clone();
            tracing::info!(job_id = %job, done = r.done.len(), "resuming job from the journal");
            if let Err(e) = c.create(r.record, r.done, r.committed).await {
                tracing::error!(job_id = %job, error = %e, "cannot resume job");
                let _ = c
                    .inner
                    .journal
                    .append(
                        &job,
                        &Entry::Finished {
                            state: "failed".into(),
                            error: e.to_string(),
                        },
                    )
                    .await;
            }
        }
        Ok(c)
    }

    /// The scheduler (for the worker API).
    pub fn with_sched<R>(&self, f: impl FnOnce(&mut Scheduler) -> R) -> R {
        f(&mut self.inner.sched.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Subscribes to state changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn notify(&self) {
        self.inner.changes.send_modify(|v| *v += 1);
    }

    /// Plans, journals and schedules a new job.
    pub async fn submit(&self, s: Submission) -> Result<(String, Vec<String>), ServiceError> {
        let job_id = format!("job-{}", self.inner.next_job.fetch_add(1, Ordering::SeqCst));
        let record = JobRecord {
            job_id: job_id.clone(),
            config_yaml: s.config_yaml,
            config_name: s.config_name,
            output_uri: s.output_uri,
            seed: s.random_seed,
            out_shard_size: s.out_shard_size,
            copy_tokenizer: s.copy_tokenizer,
            write_model_card: s.write_model_card,
            allow_crimes: s.allow_crimes,
            uploads: Vec::new(),
        };
        let warnings = self.create(record, HashMap::new(), Vec::new()).await?;
        Ok((job_id, warnings))
    }

    async fn create(
        &self,
        mut record: JobRecord,
        done: HashMap<u64, Vec<(u32, String)>>,
        committed: Vec<u32>,
    ) -> Result<Vec<String>, ServiceError> {
        let config = parse_config(&record.config_yaml, Path::new(&record.config_name))
            .map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let output = Location::parse(&record.output_uri).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let storage = self.inner.storage.clone();
        let handle = tokio::runtime::Handle::current();
        let opener: ModelOpener = Arc::new(move |uri: &str| {
            let loc = Location::parse(uri).map_err(|e| e.to_string())?;
            let dir = handle
                .block_on(open_model_dir(&storage, &loc))
                .map_err(|e| e.to_string())?;
            Ok((PathBuf::from(uri), dir))
        });
        let popts = PlanOptions {
            out_dir: PathBuf::from(&record.output_uri),
            out_shard_size: record.out_shard_size,
            random_seed: record.seed,
            allow_crimes: record.allow_crimes,
            model_root: self.inner.opts.model_root.clone(),
            opener: Some(opener),
        };
        let cfg = config.clone();
        let plan = tokio::task::spawn_blocking(move || crate::plan::plan(&cfg, &popts))
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?
            .map_err(|e| ServiceError::Invalid(e.to_string()))?;
        record.seed = plan.seed.map(|(s, _)| s);
        let warnings = plan.warnings.clone();
        if record.uploads.is_empty() {
            for shard in &plan.proto.shards {
                let loc = output.join(&shard.file_name);
                let id = self
                    .inner
                    .storage
                    .create_multipart(&loc)
                    .await
                    .map_err(|e| ServiceError::Internal(e.to_string()))?;
                record.uploads.push(id);
            }
            self.inner
                .journal
                .append(&record.job_id, &Entry::Job(record.clone()))
                .await
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
        }
        let units = plan_units(&plan, self.inner.opts.unit_target);
        let wire: Vec<_> = units
            .iter()
            .map(|u| {
                let loc = output.join(&plan.proto.shards[u.shard].file_name);
                work_unit(&plan, &record.job_id, u, &loc.to_uri(), &record.uploads[u.shard], 0)
            })
            .collect();
        let bytes = units.iter().map(UnitPlan::bytes).collect();
        let done: HashMap<u64, Vec<PartResult>> = done
            .into_iter()
            .map(|(u, p)| {
                (
                    u,
                    p.into_iter()
                        .map(|(part_index, etag)| PartResult { part_index, etag })
                        .collect(),
                )
            })
            .collect();
        let job_id = record.job_id.clone();
        let status = JobStatus {
            job_id: job_id.clone(),
            output_uri: record.output_uri.clone(),
            ..Default::default()
        };
        let rt = Arc::new(JobRuntime {
            record,
            committed: Mutex::new(committed.into_iter().collect()),
            plan,
            config,
            units,
            output,
        });
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job_id.clone(), rt);
        let ready = self.with_sched(|s| {
            s.add_job(status, wire, bytes, done);
            s.all_done(&job_id)
        });
        if ready {
            self.with_sched(|s| s.set_state(&job_id, JobState::Committing, None));
            self.spawn_commit(job_id);
        }
        self.notify();
        Ok(warnings)
    }

    /// Handles scheduler events: journals finished units (without waiting for the disk; see
    /// [`Coordinator::report`] for the acknowledged path), commits and cleans up jobs.
    pub fn handle(&self, events: Vec<Event>) {
        let (tickets, rest) = self.journal_units(events);
        for (job, t) in tickets {
            tokio::spawn(async move {
                if let Err(e) = t.wait().await {
                    tracing::error!(job_id = %job, error = %e, "journal append failed");
                }
            });
        }
        for ev in rest {
            match ev {
                Event::UnitDone { .. } => unreachable!("journaled above"),
                Event::ReadyToCommit(job) => self.spawn_commit(job),
                Event::Failed { job, error } => self.spawn_cleanup(job, "failed", error),
            }
        }
        self.notify();
    }

    /// Queues the journal records of the `UnitDone` events; returns their tickets and the
    /// other events.
    fn journal_units(&self, events: Vec<Event>) -> (Vec<(String, Durable)>, Vec<Event>) {
        let mut tickets = Vec::new();
        let mut rest = Vec::new();
        for ev in events {
            match ev {
                Event::UnitDone { job, unit, parts } => {
                    let parts = parts.into_iter().map(|p| (p.part_index, p.etag)).collect();
                    let t = self.inner.journal.submit(&job, &Entry::UnitDone { unit, parts });
                    tickets.push((job, t));
                }
                other => rest.push(other),
            }
        }
        (tickets, rest)
    }

    /// Records a worker report (`bytes_read`/`bytes_written` of a success, for metrics);
    /// returns once the unit's journal record is on disk, so a worker is acknowledged only for
    /// units that will not be redone after a restart.
    ///
    /// The record is queued while the scheduler lock is held, so a unit is never counted as
    /// done before its record is queued, and [`Coordinator::status`] does not count the queued
    /// records that are not on disk yet: `units_done` counts journaled units only.
    pub async fn report(&self, worker: &str, lease: &str, report: Report, bytes_read: u64, bytes_written: u64) {
        let now = Instant::now();
        let io = matches!(report, Report::Success { .. }).then_some((bytes_read, bytes_written));
        let (age, (tickets, rest)) = self.with_sched(|s| {
            let age = s.lease_age(lease, now);
            (
                age,
                self.journal_units(s.report(worker, lease, report, bytes_written, now)),
            )
        });
        if let Some(age) = age {
            self.inner.metrics.unit_reported(age, io);
        }
        self.handle(rest);
        for (job, t) in tickets {
            if let Err(e) = t.wait().await {
                tracing::error!(job_id = %job, error = %e, "journal append failed");
            }
        }
    }

    /// Periodic housekeeping: lease expiry and worker loss.
    pub fn tick(&self) {
        let events = self.with_sched(|s| s.tick(Instant::now()));
        if !events.is_empty() {
            self.handle(events);
        }
    }

    /// Status of one job; `units_done` counts journaled units only.
    pub fn status(&self, job: &str) -> Result<JobStatus, ServiceError> {
        self.with_sched(|s| s.status(job).map(|st| self.journaled(st)))
            .ok_or_else(|| ServiceError::NotFound(job.to_string()))
    }

    /// Statuses of all jobs.
    pub fn list(&self) -> Vec<JobStatus> {
        self.with_sched(|s| s.list().into_iter().map(|st| self.journaled(st)).collect())
    }

    /// `st` with the units whose journal record is not yet on disk not counted as done. Called
    /// with the scheduler lock held: records are queued under it, so none is missed.
    fn journaled(&self, mut st: JobStatus) -> JobStatus {
        st.units_done = st.units_done.saturating_sub(self.inner.journal.unsynced(&st.job_id));
        st
    }

    /// Cancels a job and aborts its uploads.
    pub fn cancel(&self, job: &str) -> Result<JobStatus, ServiceError> {
        let cancelled = self.with_sched(|s| s.cancel(job));
        if cancelled {
            self.spawn_cleanup(job.to_string(), "cancelled", "cancelled by user".into());
        }
        self.notify();
        self.status(job)
    }

    fn runtime(&self, job: &str) -> Option<Arc<JobRuntime>> {
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(job)
            .cloned()
    }

    fn spawn_cleanup(&self, job: String, state: &'static str, error: String) {
        let c = self.clone();
        self.spawn_tracked(async move {
            if let Some(rt) = c.runtime(&job) {
                for (shard, id) in rt.plan.proto.shards.iter().zip(&rt.record.uploads) {
                    if let Err(e) = c
                        .inner
                        .storage
                        .abort_multipart(&rt.output.join(&shard.file_name), id)
                        .await
                    {
                        tracing::warn!(job_id = %job, error = %e, "aborting upload failed");
                    }
                }
            }
            let finished = Entry::Finished {
                state: state.into(),
                error,
            };
            if let Err(e) = c.inner.journal.append(&job, &finished).await {
                tracing::error!(job_id = %job, error = %e, "journal append failed");
            }
            c.notify();
        });
    }

    fn spawn_commit(&self, job: String) {
        let c = self.clone();
        self.spawn_tracked(async move {
            let result = match c.runtime(&job) {
                Some(rt) => c.commit(&rt).await,
                None => Err(ServiceError::NotFound(job.clone())),
            };
            match result {
                Ok(()) => {
                    let finished = Entry::Finished {
                        state: "succeeded".into(),
                        error: String::new(),
                    };
                    if let Err(e) = c.inner.journal.append(&job, &finished).await {
                        tracing::error!(job_id = %job, error = %e, "journal append failed");
                    }
                    c.with_sched(|s| s.set_state(&job, JobState::Succeeded, None));
                    tracing::info!(job_id = %job, "job committed");
                }
                Err(e) => {
                    let msg = format!("commit failed: {e}");
                    c.with_sched(|s| s.set_state(&job, JobState::Failed, Some(msg.clone())));
                    c.spawn_cleanup(job.clone(), "failed", msg);
                }
            }
            c.notify();
        });
    }

    async fn commit(&self, rt: &JobRuntime) -> Result<(), ServiceError> {
        // Every unit's record on disk before any upload completes: a restart after this point
        // must not re-run units whose uploads are gone.
        self.inner
            .journal
            .flush(&rt.record.job_id)
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let st = &self.inner.storage;
        let internal = |e: shardmerge_worker::storage::StorageError| ServiceError::Internal(e.to_string());
        let plan = &rt.plan;
        let index_loc = rt.output.join("model.safetensors.index.json");
        st.delete(&index_loc).await.map_err(internal)?;
        // Metadata first.
        if let Some(cfg) = output_config(plan, &rt.config) {
            let text = pyjson::to_string(&cfg, true) + "\n";
            st.put(&rt.output.join("config.json"), Bytes::from(text))
                .await
                .map_err(internal)?;
        }
        if rt.record.write_model_card {
            let name = rt.output.file_name().to_string();
            let card = card::model_card(plan, &rt.config, Path::new(&name));
            st.put(&rt.output.join("README.md"), Bytes::from(card))
                .await
                .map_err(internal)?;
            st.put(
                &rt.output.join("mergekit_config.yml"),
                Bytes::from(rt.config.source_text.clone()),
            )
            .await
            .map_err(internal)?;
        }
        if rt.record.copy_tokenizer {
            let donor = Location::parse(&plan.models[plan.donor].path.to_string_lossy()).map_err(internal)?;
            let has = st.exists(&donor.join("tokenizer_config.json")).await.unwrap_or(false)
                && (st.exists(&donor.join("tokenizer.json")).await.unwrap_or(false)
                    || st.exists(&donor.join("tokenizer.model")).await.unwrap_or(false));
            if has {
                for f in TOKENIZER_FILES {
                    let src = donor.join(f);
                    if st.exists(&src).await.unwrap_or(false) {
                        let bytes = st.read_all_small(&src, 1 << 30).await.map_err(internal)?;
                        st.put(&rt.output.join(f), bytes).await.map_err(internal)?;
                    }
                }
            }
        }
        // Then the shards: complete every upload with its parts in order.
        let parts = self.with_sched(|s| s.parts(&rt.record.job_id));
        let mut by_shard: Vec<Vec<(u32, String)>> = vec![Vec::new(); plan.proto.shards.len()];
        for (unit, ps) in parts {
            let shard = rt.units[unit as usize].shard;
            by_shard[shard].extend(ps.into_iter().map(|p| (p.part_index, p.etag)));
        }
        for (si, shard) in plan.proto.shards.iter().enumerate() {
            let committed = rt
                .committed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&(si as u32));
            if committed {
                continue; // completed by an earlier commit that was cut short
            }
            let mut ps = std::mem::take(&mut by_shard[si]);
            ps.sort_by_key(|p| p.0);
            let etags = ps.into_iter().map(|p| p.1).collect();
            st.complete_multipart(&rt.output.join(&shard.file_name), &rt.record.uploads[si], etags)
                .await
                .map_err(internal)?;
            let entry = Entry::ShardCommitted { shard: si as u32 };
            self.inner
                .journal
                .append(&rt.record.job_id, &entry)
                .await
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
            rt.committed.lock().unwrap_or_else(|e| e.into_inner()).insert(si as u32);
        }
        // The index last: it is the commit point of a multi-shard model.
        if plan.proto.shards.len() > 1 {
            let text = crate::output::index_json(plan);
            st.put(&index_loc, Bytes::from(text)).await.map_err(internal)?;
        }
        Ok(())
    }

    /// Whether a job reached a final state.
    pub fn is_finished(&self, job: &str) -> bool {
        self.status(job)
            .is_ok_and(|s| is_final(JobState::try_from(s.state).unwrap_or(JobState::Unspecified)))
    }
}
