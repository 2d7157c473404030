//! Read-only views of the scheduler for the metrics endpoint: unit, job and worker counts
//! computed at scrape time, so nothing has to keep gauges in step with the state machine.

use super::{Scheduler, UnitState, is_final};
use shardmerge_proto::v1::JobState;
use std::time::{Duration, Instant};

/// Counts over every job the scheduler knows (since the coordinator started, resumed jobs
/// included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerSnapshot {
    /// Units waiting for a worker (of running jobs).
    pub units_pending: u64,
    /// Units held by a live lease.
    pub units_leased: u64,
    /// Units finished.
    pub units_done: u64,
    /// Units that will never finish: not done when their job failed or was cancelled.
    pub units_failed: u64,
    /// Queued units of running jobs (what the next leases hand out).
    pub queue_depth: u64,
    /// Jobs by state: running, committing, succeeded, failed, cancelled, queued.
    pub jobs: [(&'static str, u64); 6],
    /// Live workers.
    pub live_workers: u64,
    /// Units requeued after a lease expiry or a retryable failure.
    pub retries: u64,
    /// Leases that expired with their unit unfinished.
    pub lease_expiries: u64,
    /// Worker reports refused by the fencing rules, by reason.
    pub reports_rejected: Vec<(&'static str, u64)>,
}

impl Scheduler {
    /// The counts behind the coordinator's gauges, computed now.
    pub fn metrics_snapshot(&self) -> SchedulerSnapshot {
        let mut s = SchedulerSnapshot {
            jobs: [
                ("running", 0),
                ("committing", 0),
                ("succeeded", 0),
                ("failed", 0),
                ("cancelled", 0),
                ("queued", 0),
            ],
            live_workers: self.workers.len() as u64,
            lease_expiries: self.lease_expiries,
            reports_rejected: self
                .rejected_reports()
                .into_iter()
                .map(|(k, n)| (k.label(), n))
                .collect(),
            ..Default::default()
        };
        for j in self.jobs.values() {
            let state = JobState::try_from(j.status.state).unwrap_or(JobState::Unspecified);
            let name = match state {
                JobState::Committing => "committing",
                JobState::Succeeded => "succeeded",
                JobState::Failed => "failed",
                JobState::Cancelled => "cancelled",
                JobState::Queued => "queued",
                _ => "running",
            };
            if let Some(slot) = s.jobs.iter_mut().find(|(n, _)| *n == name) {
                slot.1 += 1;
            }
            s.retries += j.status.retries;
            let ended = is_final(state) && state != JobState::Succeeded;
            if state == JobState::Running {
                s.queue_depth += j.queue.len() as u64;
            }
            for u in &j.states {
                match u {
                    UnitState::Done { .. } => s.units_done += 1,
                    _ if ended => s.units_failed += 1,
                    UnitState::Pending => s.units_pending += 1,
                    UnitState::Leased(_) => s.units_leased += 1,
                }
            }
        }
        s
    }

    /// How long ago `lease_id` was granted, if it is a live lease.
    pub fn lease_age(&self, lease_id: &str, now: Instant) -> Option<Duration> {
        self.leases
            .get(lease_id)
            .map(|l| now.saturating_duration_since(l.granted))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Report, SchedulerConfig};
    use super::*;
    use shardmerge_proto::v1::{JobStatus, WorkUnit};
    use std::collections::HashMap;

    fn add(s: &mut Scheduler, job: &str, units: u64) {
        let status = JobStatus {
            job_id: job.into(),
            ..Default::default()
        };
        let wus = (0..units)
            .map(|id| WorkUnit {
                job_id: job.into(),
                unit_id: id,
                ..Default::default()
            })
            .collect();
        s.add_job(status, wus, vec![10; units as usize], HashMap::new(), HashMap::new())
            .unwrap();
    }

    #[test]
    fn snapshot_counts_units_jobs_expiries_and_lease_ages() {
        let cfg = SchedulerConfig::default();
        let lease = cfg.lease;
        let mut s = Scheduler::new(cfg, 1);
        let t0 = Instant::now();
        add(&mut s, "a", 4);
        add(&mut s, "b", 2);
        let w = s.register_worker(t0);
        // Job a: 3 leased, then one done, one expired (requeued), one still leased.
        let leases = s.lease(&w, 3, t0).unwrap();
        assert_eq!(
            s.lease_age(&leases[0].lease_id, t0 + Duration::from_secs(3)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(s.lease_age("l-nope", t0), None);
        let r = super::super::ReportRef {
            worker: &w,
            lease: &leases[0].lease_id,
            job: "a",
            unit: 0,
            attempt: 1,
        };
        s.report(
            r,
            Report::Success {
                parts: vec![],
                stats: vec![],
            },
            t0,
        )
        .unwrap();
        let t1 = t0 + lease / 2;
        s.heartbeat(&w, &[leases[2].lease_id.clone()], t1).unwrap();
        s.tick(t0 + lease);
        let snap = s.metrics_snapshot();
        assert_eq!(snap.lease_expiries, 1);
        assert_eq!(snap.retries, 1);
        assert_eq!((snap.units_done, snap.units_leased), (1, 1));
        // a: the expired unit and the never-leased one; b: both units.
        assert_eq!((snap.units_pending, snap.queue_depth, snap.units_failed), (4, 4, 0));
        assert_eq!(snap.jobs[0], ("running", 2));
        assert_eq!(snap.live_workers, 1);
        // Job b is cancelled: its units count as failed (never to finish), not pending.
        s.cancel("b", t0).unwrap();
        let snap = s.metrics_snapshot();
        assert_eq!((snap.units_pending, snap.queue_depth, snap.units_failed), (2, 2, 2));
        assert_eq!((snap.jobs[0], snap.jobs[4]), (("running", 1), ("cancelled", 1)));
    }
}
