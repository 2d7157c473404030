//! Many jobs on one cluster: admission (at most `max_running_jobs` running, the rest queued
//! in submission order) and fair leasing (running jobs take turns, one unit each per round,
//! so a small job is not starved behind a large one).

use super::{JobEntry, JobState, Scheduler};

/// Submission order of a job id `job-EPOCH-N` (ids of other shapes sort last, by name).
pub fn submission_key(job: &str) -> (u64, u64, String) {
    let mut parts = job.rsplitn(3, '-');
    let n = parts.next().and_then(|p| p.parse().ok());
    let epoch = parts.next().and_then(|p| p.parse().ok());
    match (epoch, n) {
        (Some(e), Some(n)) => (e, n, String::new()),
        _ => (u64::MAX, u64::MAX, job.to_string()),
    }
}

fn occupies(j: &JobEntry) -> bool {
    matches!(
        JobState::try_from(j.status.state),
        Ok(JobState::Running | JobState::Committing)
    )
}

impl Scheduler {
    /// Starts queued jobs, oldest submission first, while fewer than `max_running_jobs` run.
    pub(super) fn admit(&mut self) {
        let limit = self.cfg.max_running_jobs.unwrap_or(usize::MAX);
        let mut running = self.jobs.values().filter(|j| occupies(j)).count();
        let mut queued: Vec<&String> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.status.state == JobState::Queued as i32)
            .map(|(id, _)| id)
            .collect();
        queued.sort_by_key(|id| submission_key(id));
        let start: Vec<String> = queued
            .into_iter()
            .take_while(|_| {
                let ok = running < limit;
                running += usize::from(ok);
                ok
            })
            .cloned()
            .collect();
        for id in start {
            if let Some(j) = self.jobs.get_mut(&id) {
                j.status.state = JobState::Running as i32;
                tracing::info!(job_id = %id, "job started");
            }
        }
    }

    /// Running jobs in the order they take turns this lease: by submission, rotated to start
    /// after the job served first last time.
    pub(super) fn turn_order(&mut self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.status.state == JobState::Running as i32 && !j.queue.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort_by_key(|id| submission_key(id));
        if let Some(last) = &self.last_served {
            let key = submission_key(last);
            let at = ids.iter().position(|id| submission_key(id) > key).unwrap_or(0);
            ids.rotate_left(at);
        }
        if let Some(first) = ids.first() {
            self.last_served = Some(first.clone());
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::super::{SchedulerConfig, is_final};
    use super::*;
    use shardmerge_proto::v1::{JobStatus, MergeTask, WorkUnit};
    use std::collections::HashMap;
    use std::time::Instant;

    fn add(s: &mut Scheduler, job: &str, units: u64) {
        let wus = (0..units)
            .map(|id| WorkUnit {
                job_id: job.into(),
                unit_id: id,
                tasks: vec![MergeTask::default()],
                ..Default::default()
            })
            .collect();
        let status = JobStatus {
            job_id: job.into(),
            ..Default::default()
        };
        s.add_job(status, wus, vec![1; units as usize], HashMap::new(), HashMap::new())
            .unwrap();
    }

    fn state(s: &Scheduler, job: &str) -> JobState {
        s.state(job).unwrap()
    }

    #[test]
    fn submission_order_is_numeric() {
        let mut ids = vec!["job-2-1", "job-1-10", "job-1-2", "other"];
        ids.sort_by_key(|id| submission_key(id));
        assert_eq!(ids, vec!["job-1-2", "job-1-10", "job-2-1", "other"]);
    }

    #[test]
    fn running_jobs_take_turns_unit_by_unit() {
        let mut s = Scheduler::new(SchedulerConfig::default(), 1);
        let now = Instant::now();
        let w = s.register_worker(now);
        add(&mut s, "job-1-1", 100);
        add(&mut s, "job-1-2", 3);
        let jobs = |l: &[shardmerge_proto::v1::Lease]| -> Vec<String> {
            l.iter().map(|l| l.unit.as_ref().unwrap().job_id.clone()).collect()
        };
        // One lease of 4: the small job gets a unit in every round, not after the large one.
        let first = jobs(&s.lease(&w, 4, now).unwrap());
        assert_eq!(first, ["job-1-1", "job-1-2", "job-1-1", "job-1-2"]);
        // Leases of one unit alternate, starting after the job served first last time.
        let next: Vec<String> = (0..3).flat_map(|_| jobs(&s.lease(&w, 1, now).unwrap())).collect();
        assert_eq!(
            next,
            ["job-1-2", "job-1-1", "job-1-1"],
            "the small job has no units left"
        );
    }

    #[test]
    fn jobs_beyond_the_limit_queue_and_start_in_submission_order() {
        let cfg = SchedulerConfig {
            max_running_jobs: Some(1),
            ..SchedulerConfig::default()
        };
        let mut s = Scheduler::new(cfg, 1);
        let now = Instant::now();
        let w = s.register_worker(now);
        add(&mut s, "job-1-10", 1);
        add(&mut s, "job-1-9", 1);
        add(&mut s, "job-1-2", 1);
        // The first added runs; the others wait, and start oldest submission first.
        assert_eq!(state(&s, "job-1-10"), JobState::Running);
        assert_eq!(state(&s, "job-1-2"), JobState::Queued);
        assert_eq!(state(&s, "job-1-9"), JobState::Queued);
        let leased = s.lease(&w, 8, now).unwrap();
        assert_eq!(leased.len(), 1, "queued jobs lease nothing");
        assert!(s.cancel("job-1-9", now).is_ok(), "a queued job can be cancelled");
        assert!(is_final(state(&s, "job-1-9")));
        s.set_state("job-1-10", JobState::Succeeded, None, now);
        assert_eq!(state(&s, "job-1-2"), JobState::Running);
        assert_eq!(s.lease(&w, 8, now).unwrap().len(), 1);
    }
}
