//! Resuming from the journal: finished jobs stay queryable (and get an unfinished cleanup
//! done), damaged or unresumable ones are reported failed, the others are re-planned and
//! checked against their journaled fingerprint and pins before they run again.

use super::{Coordinator, ServiceError, parse_state};
use crate::cluster::journal::{Entry, FORMAT_VERSION, Replayed};
use shardmerge_proto::v1::{JobState, JobStatus};
use shardmerge_worker::storage::Location;
use std::time::{Duration, Instant};

impl Coordinator {
    /// Brings one replayed job back: finished ones stay queryable (and get their cleanup
    /// finished), damaged ones are reported failed without touching anything, the others
    /// resume.
    pub(super) async fn restore(&self, r: Replayed) {
        let job = r.record.job_id.clone();
        let now = Instant::now();
        // A finished job's units are not re-planned: its journaled units are what it did (all of
        // them, for a succeeded job).
        let journaled = r.done.len() as u64;
        let finished_status = |state: JobState, error: String| JobStatus {
            job_id: job.clone(),
            output_uri: r.record.output_uri.clone(),
            state: state as i32,
            error,
            units_done: journaled,
            units_total: if state == JobState::Succeeded { journaled } else { 0 },
            ..Default::default()
        };
        if let Some(why) = &r.damaged {
            tracing::error!(job_id = %job, error = %why, "journal damaged; job not resumed");
            self.inner
                .sched
                .lock()
                .add_finished(finished_status(JobState::Failed, why.clone()), now);
            return;
        }
        if let Some((state, error, at)) = r.finished.clone() {
            let state = parse_state(&state);
            let age = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .saturating_sub(at);
            let closed = state == JobState::Succeeded || r.cleaned;
            if closed && age >= self.inner.opts.retention.as_secs() {
                let _ = self.inner.journal.remove(&job);
                return;
            }
            self.inner.sched.lock().add_finished(finished_status(state, error), now);
            if closed {
                self.inner.closed.lock().insert(job);
            } else {
                // The output stays claimed until its cleanup is done.
                if let Ok(loc) = Location::parse(&r.record.output_uri) {
                    let _ = self.claim_output(&loc, &job);
                }
                self.spawn_cleanup_record(r.record.clone(), r.commit_started);
            }
            return;
        }
        if r.record.format != FORMAT_VERSION {
            let why = format!(
                "job journaled in format {} by another version of shardmerge (this one reads format {FORMAT_VERSION}); not resumed",
                r.record.format
            );
            self.fail_unresumable(r, why).await;
            return;
        }
        tracing::info!(job_id = %job, done = r.done.len(), "resuming job from the journal");
        let record = r.record.clone();
        match self.create(record, Some(&r)).await {
            Ok(_) => {}
            Err(ServiceError::Unavailable(e)) => {
                // Storage unreachable now: try again later rather than failing the job for good.
                tracing::warn!(job_id = %job, error = %e, "cannot resume job yet; retrying");
                self.spawn_resume_retry(r);
            }
            Err(e) => self.fail_unresumable(r, e.to_string()).await,
        }
    }

    /// Retries resuming a job whose storage was unreachable, until it resumes or fails for a
    /// reason that retrying cannot fix.
    fn spawn_resume_retry(&self, r: Replayed) {
        let c = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_secs(1);
            loop {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
                if c.is_shutting_down() {
                    return;
                }
                match c.create(r.record.clone(), Some(&r)).await {
                    Ok(_) => return,
                    Err(ServiceError::Unavailable(e)) => {
                        tracing::warn!(job_id = %r.record.job_id, error = %e, "cannot resume job yet; retrying");
                    }
                    Err(e) => {
                        c.fail_unresumable(r, e.to_string()).await;
                        return;
                    }
                }
            }
        });
    }

    /// A job that cannot be resumed: journaled failed, its uploads aborted.
    async fn fail_unresumable(&self, r: Replayed, why: String) {
        let job = r.record.job_id.clone();
        tracing::error!(job_id = %job, error = %why, "cannot resume job");
        let status = JobStatus {
            job_id: job.clone(),
            output_uri: r.record.output_uri.clone(),
            state: JobState::Failed as i32,
            error: why.clone(),
            ..Default::default()
        };
        self.inner.sched.lock().add_finished(status, Instant::now());
        if self
            .inner
            .journal
            .append(&job, &Entry::finished("failed", why))
            .await
            .is_ok()
        {
            self.spawn_cleanup_record(r.record, r.commit_started);
        }
    }
}
