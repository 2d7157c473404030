//! Fenced reports: a worker's report settles a unit only if it comes from the worker holding
//! the live lease, names the job, unit and attempt of that lease, and (on success) carries
//! exactly the unit's planned parts. Then [`Scheduler::settle`] or [`Scheduler::unsettle`]
//! once the service knows whether the unit's journal record reached the disk.

use super::{Event, JobState, LeaseInfo, Report, Scheduler, UnitState};
use shardmerge_proto::v1::{PartResult, WorkUnit};
use std::time::Instant;

/// What a report claims to be about.
#[derive(Debug, Clone, Copy)]
pub struct ReportRef<'a> {
    /// Reporting worker.
    pub worker: &'a str,
    /// Lease id.
    pub lease: &'a str,
    /// Job of the lease.
    pub job: &'a str,
    /// Unit of the lease.
    pub unit: u64,
    /// Attempt number the lease was granted with.
    pub attempt: u32,
}

/// Why a report was refused (a label of the `reports_rejected` metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rejection {
    /// No live lease with that id (expired, settled, revoked, or issued by another process).
    UnknownLease,
    /// The lease is held by another worker.
    NotHolder,
    /// The lease was granted for another job, unit or attempt.
    Mismatch,
    /// Parts that are not the unit's planned parts (numbers or sizes).
    BadParts,
}

impl Rejection {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::UnknownLease => "unknown_lease",
            Rejection::NotHolder => "not_holder",
            Rejection::Mismatch => "mismatch",
            Rejection::BadParts => "bad_parts",
        }
    }
}

/// The planned `(part number, size)` of every part of `unit`.
pub fn planned_parts(unit: &WorkUnit) -> Vec<(u32, u64)> {
    let Some(o) = unit.output.as_ref() else {
        return Vec::new();
    };
    o.part_starts
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let end = o.part_starts.get(i + 1).copied().unwrap_or(o.end);
            (o.first_part + i as u32, end.saturating_sub(s))
        })
        .collect()
}

/// Checks reported parts against the plan; `Err` says what differs.
fn check_parts(unit: &WorkUnit, parts: &[PartResult]) -> Result<(), String> {
    let want = planned_parts(unit);
    if parts.len() != want.len() {
        return Err(format!("{} parts reported, {} planned", parts.len(), want.len()));
    }
    for (p, (n, size)) in parts.iter().zip(want) {
        if p.part_index != n || p.size != size || p.etag.is_empty() {
            return Err(format!(
                "part {} of {} bytes (etag `{}`) reported where part {n} of {size} bytes is planned",
                p.part_index, p.size, p.etag
            ));
        }
    }
    Ok(())
}

impl Scheduler {
    /// Records a worker's report on a lease. `Err` rejects it: the service answers the worker
    /// with the reason and counts it. Accepted successes yield `UnitDone` (journal, then
    /// [`Scheduler::settle`]); failures may fail the job.
    pub fn report(
        &mut self,
        r: ReportRef<'_>,
        report: Report,
        now: Instant,
    ) -> Result<Vec<Event>, (Rejection, String)> {
        if let Some(w) = self.workers.get_mut(r.worker) {
            w.last_seen = now;
        }
        let verdict = self.fence(&r);
        if let Err((kind, _)) = &verdict {
            *self.rejected.entry(*kind).or_default() += 1;
        }
        verdict?;
        let lease = self.leases.remove(r.lease).expect("fenced");
        let j = self.jobs.get_mut(&lease.job).expect("a lease belongs to a known job");
        match report {
            Report::Success { parts, stats } => {
                let checked = check_parts(&j.units[lease.unit], &parts)
                    .and_then(|()| super::chunks::check_stats(&j.units[lease.unit], &stats));
                if let Err(why) = checked {
                    *self.rejected.entry(super::Rejection::BadParts).or_default() += 1;
                    let message = format!("worker {} reported wrong parts: {why}", r.worker);
                    tracing::warn!(job_id = %lease.job, unit = r.unit, "{message}");
                    let ev = self.failed_attempt(&lease, message, true, now);
                    return if ev.is_empty() {
                        Err((Rejection::BadParts, why))
                    } else {
                        Ok(ev)
                    };
                }
                j.states[lease.unit] = UnitState::Done {
                    parts: parts.clone(),
                    stats: stats.clone(),
                    durable: false,
                };
                Ok(vec![Event::UnitDone {
                    job: lease.job.clone(),
                    unit: r.unit,
                    parts,
                    stats,
                }])
            }
            Report::Failure { message, retryable } => Ok(self.failed_attempt(&lease, message, retryable, now)),
        }
    }

    /// Checks that `r` names a live lease held by its worker, for its job, unit and attempt.
    fn fence(&self, r: &ReportRef<'_>) -> Result<(), (Rejection, String)> {
        let Some(l) = self.leases.get(r.lease) else {
            return Err((
                Rejection::UnknownLease,
                format!("lease {} is not live (expired, settled or revoked)", r.lease),
            ));
        };
        if l.worker != r.worker {
            return Err((
                Rejection::NotHolder,
                format!("lease {} is held by {}, not {}", r.lease, l.worker, r.worker),
            ));
        }
        let unit_id = self.jobs.get(&l.job).map(|j| j.units[l.unit].unit_id);
        if l.job != r.job || unit_id != Some(r.unit) || l.attempt != r.attempt {
            return Err((
                Rejection::Mismatch,
                format!(
                    "lease {} is for job {} unit {:?} attempt {}, not job {} unit {} attempt {}",
                    r.lease, l.job, unit_id, l.attempt, r.job, r.unit, r.attempt
                ),
            ));
        }
        Ok(())
    }

    /// A failed attempt: requeue the unit, or fail the job when the failure is deterministic
    /// or the unit is out of attempts.
    fn failed_attempt(&mut self, lease: &LeaseInfo, message: String, retryable: bool, now: Instant) -> Vec<Event> {
        let j = self.jobs.get_mut(&lease.job).expect("a lease belongs to a known job");
        if retryable && j.attempts[lease.unit] < self.cfg.max_attempts {
            j.states[lease.unit] = UnitState::Pending;
            j.queue.push_front(lease.unit);
            j.status.retries += 1;
            return Vec::new();
        }
        let why = if retryable {
            format!("{message} (after {} attempts)", j.attempts[lease.unit])
        } else {
            message
        };
        let job = lease.job.clone();
        if self.set_state(&job, JobState::Failed, Some(why.clone()), now) {
            vec![Event::Failed { job, error: why }]
        } else {
            Vec::new()
        }
    }

    /// The journal record of `unit` is on disk: count it done. Returns `ReadyToCommit` when it
    /// was the last one (the job moves to `Committing`).
    pub fn settle(&mut self, job: &str, unit: u64, now: Instant) -> Vec<Event> {
        let Some(j) = self.jobs.get_mut(job) else {
            return Vec::new();
        };
        let Some(&i) = j.by_id.get(&unit) else {
            return Vec::new();
        };
        let UnitState::Done { durable, .. } = &mut j.states[i] else {
            return Vec::new();
        };
        if *durable {
            return Vec::new();
        }
        *durable = true;
        j.status.units_done += 1;
        j.status.bytes_done += j.unit_bytes[i];
        if let Err(e) = super::chunks::settle_stats(j, i) {
            let error = format!("combining chunk statistics: {e}");
            let job = job.to_string();
            return if self.set_state(&job, JobState::Failed, Some(error.clone()), now) {
                vec![Event::Failed { job, error }]
            } else {
                Vec::new()
            };
        }
        if j.status.units_done == j.status.units_total
            && self.all_done(job)
            && self.set_state(job, JobState::Committing, None, now)
        {
            return vec![Event::ReadyToCommit(job.to_string())];
        }
        Vec::new()
    }

    /// The journal record of `unit` could not be written: the unit is not done after all and
    /// runs again.
    pub fn unsettle(&mut self, job: &str, unit: u64) {
        let Some(j) = self.jobs.get_mut(job) else { return };
        let Some(&i) = j.by_id.get(&unit) else { return };
        if matches!(j.states[i], UnitState::Done { durable: false, .. }) {
            j.states[i] = UnitState::Pending;
            if j.status.state == JobState::Running as i32 {
                j.queue.push_front(i);
            }
            j.status.retries += 1;
        }
    }

    /// Reports rejected so far, by reason.
    pub fn rejected_reports(&self) -> Vec<(Rejection, u64)> {
        self.rejected.iter().map(|(k, v)| (*k, *v)).collect()
    }
}
