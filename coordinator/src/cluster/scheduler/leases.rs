//! Leasing: pending units handed to workers (running jobs take turns, see `fair.rs`),
//! heartbeats that extend leases or name the revoked ones, and the periodic tick that expires
//! leases, forgets silent workers and fails jobs that lost their units or all their workers.

use super::{Event, LeaseInfo, MAX_LEASE_TASKS, Scheduler, UnitState, chunks};
use shardmerge_proto::v1::{JobState, Lease, WorkUnit};
use std::time::Instant;

impl Scheduler {
    /// Hands up to `max` pending units to `worker` (capped by `max_units_per_lease`).
    pub fn lease(&mut self, worker: &str, max: usize, now: Instant) -> Option<Vec<Lease>> {
        let max = max.min(self.cfg.max_units_per_lease);
        self.workers.get_mut(worker)?.last_seen = now;
        let mut grants = Vec::new();
        let mut granted_tasks = 0usize;
        // Running jobs take turns, one unit each per round (see `fair.rs`).
        let order = self.turn_order();
        let mut progress = true;
        while progress && grants.len() < max && granted_tasks < MAX_LEASE_TASKS {
            progress = false;
            for job_id in &order {
                if grants.len() >= max || granted_tasks >= MAX_LEASE_TASKS {
                    break;
                }
                let j = self.jobs.get_mut(job_id).expect("listed by turn_order");
                let Some(unit) = j.queue.pop_front() else { continue };
                granted_tasks += j.units[unit].tasks.len();
                j.attempts[unit] += 1;
                grants.push((job_id.clone(), unit, j.attempts[unit]));
                progress = true;
            }
        }
        let mut out = Vec::with_capacity(grants.len());
        for (job_id, unit, attempt) in grants {
            let lease_id = self.id("l");
            let j = self.jobs.get_mut(&job_id).expect("granted above");
            j.states[unit] = UnitState::Leased(lease_id.clone());
            let mut wu = j.units[unit].clone();
            wu.attempt = attempt;
            chunks::fill_stats(&j.book, &mut wu);
            self.leases.insert(
                lease_id.clone(),
                LeaseInfo {
                    job: job_id,
                    unit,
                    worker: worker.to_string(),
                    attempt,
                    expires: now + self.cfg.lease,
                    granted: now,
                },
            );
            out.push(Lease {
                lease_id,
                unit: Some(wu),
                expires_in_ms: self.cfg.lease.as_millis() as u64,
            });
        }
        Some(out)
    }

    /// Extends `worker`'s leases; returns the ones it no longer holds (the worker must stop
    /// working on them).
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

    /// Expires leases, forgets silent workers and fails jobs left without workers or with a
    /// unit whose lease was lost `max_attempts` times.
    pub fn tick(&mut self, now: Instant) -> Vec<Event> {
        let timeout = self.cfg.worker_timeout;
        self.workers.retain(|_, w| now.duration_since(w.last_seen) < timeout);
        let expired: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let mut failed = Vec::new();
        for id in expired {
            let l = self.leases.remove(&id).expect("listed");
            let Some(j) = self.jobs.get_mut(&l.job) else { continue };
            if j.states[l.unit] != UnitState::Leased(id.clone()) {
                continue;
            }
            self.lease_expiries += 1;
            if j.attempts[l.unit] >= self.cfg.max_attempts {
                failed.push((l.job.clone(), lost_unit_error(&j.units[l.unit], j.attempts[l.unit])));
                continue;
            }
            tracing::warn!(job_id = %l.job, unit = l.unit, worker_id = %l.worker, "lease expired; unit requeued");
            j.states[l.unit] = UnitState::Pending;
            j.queue.push_front(l.unit);
            j.status.retries += 1;
        }
        let no_workers = self.workers.is_empty();
        let grace = self.cfg.no_worker_grace;
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
        let mut events = Vec::new();
        for (job, error) in failed {
            if self.set_state(&job, JobState::Failed, Some(error.clone()), now) {
                events.push(Event::Failed { job, error });
            }
        }
        events
    }
}

/// The error of a job whose unit lost its worker on every attempt.
fn lost_unit_error(unit: &WorkUnit, attempts: u32) -> String {
    let mut names: Vec<&str> = unit.tasks.iter().map(|t| t.tensor.as_str()).take(4).collect();
    if unit.tasks.len() > 4 {
        names.push("...");
    }
    format!(
        "unit {} (tensors {}) failed {attempts} times: worker lost while running it (out of memory?)",
        unit.unit_id,
        names.join(", ")
    )
}
