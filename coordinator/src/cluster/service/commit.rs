//! Publishing a job's output, and removing it when the job fails.
//!
//! The commit is repeatable: it is journaled as started, each completed shard upload is
//! journaled, and a repeated commit skips those (an upload that vanished because its
//! completion landed just before a crash is accepted when the object has the planned size).
//! Every completed shard is checked against its planned size. A commit that fails removes
//! everything it wrote; a failed or cancelled job's uploads are aborted; both are journaled
//! (`cleaned`) when done and redone after a restart until then.

use super::{Coordinator, JobRuntime, ServiceError, journal_err};
use crate::cluster::journal::{Entry, JobRecord};
use crate::output::OutputOptions;
use crate::plan::layout::shard_file_name;
use crate::publish::{self, PublishError, Publisher, ShardBytes, ShardCommit};
use shardmerge_proto::v1::JobState;
use shardmerge_worker::storage::{Location, StorageError};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Attempts of a commit that keeps hitting transient storage errors.
const COMMIT_ATTEMPTS: u32 = 5;
fn publish_err(e: PublishError) -> ServiceError {
    if e.is_retryable() {
        ServiceError::Unavailable(e.to_string())
    } else {
        ServiceError::Internal(e.to_string())
    }
}

impl Coordinator {
    pub(super) fn spawn_commit(&self, job: String) {
        let c = self.clone();
        self.spawn_tracked(async move {
            let Some(rt) = c.runtime(&job) else { return };
            let mut attempt = 0;
            let result = loop {
                attempt += 1;
                match c.commit(&rt).await {
                    Err(ServiceError::Unavailable(e)) if attempt < COMMIT_ATTEMPTS && !c.is_shutting_down() => {
                        tracing::warn!(job_id = %job, attempt, error = %e, "commit hit a transient error; retrying");
                        tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                    }
                    other => break other,
                }
            };
            match result {
                Ok(()) => {
                    let finished = Entry::finished("succeeded", String::new());
                    if let Err(e) = c.inner.journal.append(&job, &finished).await {
                        // Not journaled: not succeeded. A restart redoes the commit.
                        tracing::error!(job_id = %job, error = %e, "journaling success failed; the commit is redone on restart");
                        return;
                    }
                    c.with_sched(|s| s.set_state(&job, JobState::Succeeded, None, Instant::now()));
                    c.release_output(&job);
                    c.inner.closed.lock().insert(job.clone());
                    tracing::info!(job_id = %job, "job committed");
                }
                Err(_) if c.is_shutting_down() => {
                    tracing::warn!(job_id = %job, "commit interrupted by shutdown; a restart redoes it");
                }
                Err(e) => {
                    let msg = format!("commit failed: {e}");
                    c.with_sched(|s| s.set_state(&job, JobState::Failed, Some(msg.clone()), Instant::now()));
                    c.spawn_finish(job.clone(), "failed", msg);
                }
            }
            c.notify();
        });
    }

    async fn commit(&self, rt: &JobRuntime) -> Result<(), ServiceError> {
        let job = &rt.record.job_id;
        let st = &self.inner.storage;
        let plan = &rt.plan;
        // Every shard's parts, complete and in planned order, before anything is published.
        let mut by_shard: Vec<Vec<(u32, String)>> = vec![Vec::new(); plan.proto.shards.len()];
        let mut expected: Vec<u32> = vec![0; plan.proto.shards.len()];
        for u in &rt.units {
            expected[u.shard] += u.part_starts.len() as u32;
        }
        for (unit, ps) in self.with_sched(|s| s.parts(job)) {
            let shard = rt.units[unit as usize].shard;
            by_shard[shard].extend(ps.into_iter().map(|p| (p.part_index, p.etag)));
        }
        for (si, ps) in by_shard.iter_mut().enumerate() {
            ps.sort_by_key(|p| p.0);
            let numbers: Vec<u32> = ps.iter().map(|p| p.0).collect();
            if numbers != (0..expected[si]).collect::<Vec<_>>() && !rt.committed.lock().contains(&(si as u32)) {
                return Err(ServiceError::Internal(format!(
                    "shard {} has parts {numbers:?}, planned 0..{}",
                    plan.proto.shards[si].file_name, expected[si]
                )));
            }
        }
        super::fingerprint::check_inputs(st, &rt.record.inputs).await?;
        if !rt.commit_started.load(Ordering::SeqCst) {
            self.inner
                .journal
                .append(job, &Entry::CommitStarted)
                .await
                .map_err(journal_err)?;
            rt.commit_started.store(true, Ordering::SeqCst);
        }
        let opts = OutputOptions {
            copy_tokenizer: rt.record.copy_tokenizer,
            write_model_card: rt.record.write_model_card,
        };
        let name = rt.output.file_name().to_string();
        let meta = publish::metadata(st, plan, &rt.config, opts, Path::new(&name))
            .await
            .map_err(publish_err)?;
        let shards: Vec<ShardCommit> = plan
            .proto
            .shards
            .iter()
            .enumerate()
            .map(|(si, s)| ShardCommit {
                name: s.file_name.clone(),
                size: s.total_bytes,
                bytes: ShardBytes::Upload {
                    id: rt.record.uploads[si].clone(),
                    etags: std::mem::take(&mut by_shard[si]).into_iter().map(|p| p.1).collect(),
                },
            })
            .collect();
        let publisher = Publisher::begin(st, &rt.output, &meta).await.map_err(publish_err)?;
        for (si, shard) in shards.into_iter().enumerate() {
            if rt.committed.lock().contains(&(si as u32)) {
                continue; // published by an earlier commit that was cut short
            }
            publisher.shard(shard).await.map_err(publish_err)?;
            let entry = Entry::ShardCommitted { shard: si as u32 };
            self.inner.journal.append(job, &entry).await.map_err(journal_err)?;
            rt.committed.lock().insert(si as u32);
        }
        publisher.finish(publish::index(plan)).await.map_err(publish_err)
    }

    /// Journals a job's end (`failed`) and then cleans up its output.
    pub(super) fn spawn_finish(&self, job: String, state: &'static str, error: String) {
        let c = self.clone();
        self.spawn_tracked(async move {
            if let Err(e) = c.inner.journal.append(&job, &Entry::finished(state, error)).await {
                tracing::error!(job_id = %job, error = %e, "journaling the job's end failed; a restart resumes it");
                return;
            }
            c.cleanup_now(&job).await;
        });
    }

    /// Cleans up a job whose end is journaled.
    pub(super) fn spawn_cleanup(&self, job: String) {
        let c = self.clone();
        self.spawn_tracked(async move { c.cleanup_now(&job).await });
    }

    async fn cleanup_now(&self, job: &str) {
        let Some(rt) = self.runtime(job) else { return };
        let started = rt.commit_started.load(Ordering::SeqCst);
        let names = rt.plan.proto.shards.iter().map(|s| s.file_name.clone()).collect();
        self.cleanup(&rt.record, names, started).await;
    }

    /// Cleans up a finished job known only from its journal record (after a restart).
    pub(super) fn spawn_cleanup_record(&self, record: JobRecord, commit_started: bool) {
        let c = self.clone();
        self.spawn_tracked(async move {
            let names = if record.shard_files.is_empty() {
                // Journals written before the `uploads` entry named its files.
                let k = record.uploads.len().max(1);
                (0..k).map(|si| shard_file_name(si, k)).collect()
            } else {
                record.shard_files.clone()
            };
            c.cleanup(&record, names, commit_started).await;
        });
    }

    /// Aborts the uploads and, if the commit had started, deletes every file it may have
    /// written; retried until it succeeds (or shutdown), then journaled as `cleaned`.
    async fn cleanup(&self, record: &JobRecord, shards: Vec<String>, commit_started: bool) {
        let job = &record.job_id;
        let Ok(output) = Location::parse(&record.output_uri) else {
            return;
        };
        let st = &self.inner.storage;
        let mut delay = Duration::from_millis(200);
        loop {
            let mut result: Result<(), StorageError> = Ok(());
            for (name, id) in shards.iter().zip(&record.uploads) {
                result = result.and(st.abort_multipart(&output.join(name), id).await);
            }
            if commit_started {
                result = result.and(publish::unpublish(st, &output, &shards).await);
            } else {
                for name in &shards {
                    result = result.and(st.remove_leftovers(&output.join(name)).await);
                }
            }
            match result {
                Ok(()) => break,
                Err(e) if self.is_shutting_down() => {
                    tracing::warn!(job_id = %job, error = %e, "cleanup interrupted by shutdown; a restart redoes it");
                    return;
                }
                Err(e) => {
                    tracing::warn!(job_id = %job, error = %e, "cleaning up the output failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        if let Err(e) = self.inner.journal.append(job, &Entry::Cleaned).await {
            tracing::error!(job_id = %job, error = %e, "journaling the cleanup failed; a restart redoes it");
            return;
        }
        self.release_output(job);
        self.inner.closed.lock().insert(job.clone());
        self.notify();
    }
}
