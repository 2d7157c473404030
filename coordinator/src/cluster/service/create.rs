//! Creating a job (new or resumed): plan, fingerprint and pin, journal the record, then create
//! the uploads and hand the units to the scheduler.

use super::{Coordinator, JobRuntime, ServiceError, fingerprint, journal_err};
use crate::cluster::journal::{Entry, JobRecord, PinnedInput, Replayed};
use crate::cluster::scheduler::planned_parts;
use crate::cluster::units::{UnitPlan, plan_units, work_unit};
use crate::config::{MergeConfig, parse_config};
use crate::plan::{ModelOpener, Plan, PlanOptions};
use parking_lot::Mutex;
use shardmerge_proto::v1::{JobState, JobStatus, PartResult, WorkUnit};
use shardmerge_worker::storage::{Location, open_model_dir};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

impl Coordinator {
    /// Plans a job (new, or resumed from `replayed`), journals what is missing, creates its
    /// uploads and hands its units to the scheduler.
    pub(super) async fn create(
        &self,
        mut record: JobRecord,
        replayed: Option<&Replayed>,
    ) -> Result<Vec<String>, ServiceError> {
        let config = parse_config(&record.config_yaml, Path::new(&record.config_name))
            .map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let output = Location::parse(&record.output_uri).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        self.claim_output(&output, &record.job_id)?;
        let result = self.create_claimed(&mut record, replayed, config, output).await;
        if result.is_err() {
            self.release_output(&record.job_id);
        }
        result
    }

    async fn create_claimed(
        &self,
        record: &mut JobRecord,
        replayed: Option<&Replayed>,
        config: MergeConfig,
        output: Location,
    ) -> Result<Vec<String>, ServiceError> {
        let st = &self.inner.storage;
        if replayed.is_some() {
            // The pins first: a changed input (a tokenizer file too) is named as such, rather
            // than failing the re-plan or showing as a changed plan.
            fingerprint::check_inputs(st, &record.inputs).await?;
        }
        let plan = self.plan(record, &config).await?;
        record.seed = plan.seed.map(|(s, _)| s);
        // A unit's output buffer stays within a quarter of the workers' budget.
        let target = record
            .memory_limit
            .map_or(record.unit_target, |l| record.unit_target.min(l / 4));
        let units = plan_units(&plan, target);
        let fp = fingerprint::fingerprint(&plan, &units);
        match replayed {
            Some(_) => {
                if record.fingerprint != fp {
                    return Err(ServiceError::Invalid(fingerprint::mismatch(&record.fingerprint, &fp)));
                }
            }
            None => {
                record.fingerprint = fp;
                record.inputs = fingerprint::pin_inputs(st, &plan).await?;
                // The record first: uploads exist only for journaled jobs, so a crash never
                // leaves an upload nobody knows about.
                self.inner
                    .journal
                    .append(&record.job_id, &Entry::Job(record.clone()))
                    .await
                    .map_err(journal_err)?;
            }
        }
        if !replayed.is_some_and(|r| r.uploads_created) {
            if replayed.is_some() {
                // A crash between creating the uploads and journaling their ids: drop the
                // ones nobody knows about before creating new ones.
                for shard in &plan.proto.shards {
                    let loc = output.join(&shard.file_name);
                    st.abort_unrecorded_uploads(&loc).await.map_err(ServiceError::storage)?;
                }
            }
            record.uploads = self.create_uploads(record, &plan, &output).await?;
        }
        if record.uploads.len() != plan.proto.shards.len() {
            return Err(ServiceError::Invalid(format!(
                "the journal holds {} upload ids for {} output shards; the job cannot be resumed",
                record.uploads.len(),
                plan.proto.shards.len()
            )));
        }
        let warnings = plan.warnings.clone();
        let pins: HashMap<&str, &PinnedInput> = record.inputs.iter().map(|p| (p.uri.as_str(), p)).collect();
        let wire: Vec<_> = units
            .iter()
            .map(|u| {
                let loc = output.join(&plan.proto.shards[u.shard].file_name);
                let mut wu = work_unit(&plan, &record.job_id, u, &loc.to_uri(), &record.uploads[u.shard], 0);
                // Workers refuse an input that changed since the job was planned.
                for src in wu
                    .tasks
                    .iter_mut()
                    .flat_map(|t| t.inputs.iter_mut())
                    .filter_map(|i| i.source.as_mut())
                {
                    if let Some(p) = pins.get(src.uri.as_str()) {
                        src.file_size = p.size;
                        src.file_version = p.version.clone();
                    }
                }
                wu
            })
            .collect();
        let bytes = units.iter().map(UnitPlan::bytes).collect();
        let done: HashMap<u64, Vec<PartResult>> = replayed
            .map(|r| {
                r.done
                    .iter()
                    .map(|(u, p)| (*u, journaled_parts(&wire, *u, p)))
                    .collect()
            })
            .unwrap_or_default();
        let mut done_stats = HashMap::new();
        for (u, s) in replayed.map(|r| r.stats.iter()).into_iter().flatten() {
            let decoded = crate::cluster::journal::decode_stats(s)
                .map_err(|e| ServiceError::Invalid(format!("journal of {}: unit {u}: {e}", record.job_id)))?;
            done_stats.insert(*u, decoded);
        }
        let job_id = record.job_id.clone();
        let status = JobStatus {
            job_id: job_id.clone(),
            output_uri: record.output_uri.clone(),
            ..Default::default()
        };
        let rt = Arc::new(JobRuntime {
            record: record.clone(),
            committed: Mutex::new(
                replayed
                    .map(|r| r.committed.iter().copied().collect())
                    .unwrap_or_default(),
            ),
            commit_started: AtomicBool::new(replayed.is_some_and(|r| r.commit_started)),
            plan,
            config,
            units,
            output,
        });
        self.inner.jobs.lock().insert(job_id.clone(), rt);
        let now = Instant::now();
        let ready = self.with_sched(|s| {
            s.add_job(status, wire, bytes, done, done_stats)
                .map(|()| s.all_done(&job_id) && s.set_state(&job_id, JobState::Committing, None, now))
        });
        let ready = match ready {
            Ok(r) => r,
            Err(e) => {
                self.inner.jobs.lock().remove(&job_id);
                return Err(ServiceError::Invalid(format!("job {job_id}: chunk statistics: {e}")));
            }
        };
        if ready {
            self.spawn_commit(job_id);
        }
        self.notify();
        Ok(warnings)
    }

    async fn plan(&self, record: &JobRecord, config: &MergeConfig) -> Result<Plan, ServiceError> {
        let storage = self.inner.storage.clone();
        let handle = tokio::runtime::Handle::current();
        // A header read that failed transiently makes the planning error `Unavailable`: retried
        // (a resume is attempted again), never reported as a bad request or failed for good.
        let transient = Arc::new(AtomicBool::new(false));
        let saw_transient = transient.clone();
        let opener: ModelOpener = Arc::new(move |uri: &str| {
            let loc = Location::parse(uri).map_err(|e| e.to_string())?;
            let dir = handle.block_on(open_model_dir(&storage, &loc)).map_err(|e| {
                if e.is_retryable() {
                    saw_transient.store(true, Ordering::SeqCst);
                }
                e.to_string()
            })?;
            Ok((PathBuf::from(uri), dir))
        });
        let popts = PlanOptions {
            out_dir: PathBuf::from(&record.output_uri),
            out_shard_size: record.out_shard_size,
            random_seed: record.seed,
            allow_crimes: record.allow_crimes,
            model_root: self.inner.opts.model_root.clone(),
            opener: Some(opener),
            chunk_size: record.chunk_size,
            // Tasks get half the workers' budget; the rest covers the prefetch window ahead of
            // them and the process itself.
            memory_limit: record.memory_limit.map(|l| l / 2),
            unsafe_truncate_embeddings: record.unsafe_truncate_embeddings,
        };
        let cfg = config.clone();
        tokio::task::spawn_blocking(move || crate::plan::plan(&cfg, &popts))
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?
            .map_err(|e| {
                if transient.load(Ordering::SeqCst) {
                    ServiceError::Unavailable(e.to_string())
                } else {
                    ServiceError::Invalid(e.to_string())
                }
            })
    }

    /// Creates one upload per shard and journals their ids; on any failure aborts the ones
    /// created and fails the (already journaled) job.
    async fn create_uploads(
        &self,
        record: &JobRecord,
        plan: &Plan,
        output: &Location,
    ) -> Result<Vec<String>, ServiceError> {
        let st = &self.inner.storage;
        let mut ids = Vec::new();
        let mut failure = None;
        for shard in &plan.proto.shards {
            match st
                .create_multipart(&output.join(&shard.file_name), shard.total_bytes)
                .await
            {
                Ok(id) => ids.push(id),
                Err(e) => {
                    failure = Some(ServiceError::storage(e));
                    break;
                }
            }
        }
        if failure.is_none() {
            let files = plan.proto.shards.iter().map(|s| s.file_name.clone()).collect();
            let entry = Entry::Uploads {
                ids: ids.clone(),
                files,
            };
            match self.inner.journal.append(&record.job_id, &entry).await {
                Ok(()) => return Ok(ids),
                Err(e) => failure = Some(journal_err(e)),
            }
        }
        for (shard, id) in plan.proto.shards.iter().zip(&ids) {
            let _ = st.abort_multipart(&output.join(&shard.file_name), id).await;
        }
        let e = failure.expect("set above");
        let finished = Entry::finished("failed", format!("creating the output uploads failed: {e}"));
        if self.inner.journal.append(&record.job_id, &finished).await.is_ok() {
            let _ = self.inner.journal.append(&record.job_id, &Entry::Cleaned).await;
        }
        Err(e)
    }
}

/// The journaled parts of `unit` with their planned sizes (the journal keeps numbers and
/// etags; sizes follow from the plan). Unit ids are indices into `wire`.
fn journaled_parts(wire: &[WorkUnit], unit: u64, parts: &[(u32, String)]) -> Vec<PartResult> {
    let sizes: HashMap<u32, u64> = wire
        .get(unit as usize)
        .map(planned_parts)
        .unwrap_or_default()
        .into_iter()
        .collect();
    parts
        .iter()
        .map(|(n, etag)| PartResult {
            part_index: *n,
            etag: etag.clone(),
            size: sizes.get(n).copied().unwrap_or(0),
        })
        .collect()
}
