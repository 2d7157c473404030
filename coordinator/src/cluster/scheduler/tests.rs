use super::*;
use shardmerge_proto::v1::{Lease, MergeTask, UnitOutput};

/// Unit `id`: one part of 10 bytes (part number `id`), one task writing `t{id}`.
fn unit(id: u64) -> WorkUnit {
    WorkUnit {
        job_id: "j".into(),
        unit_id: id,
        tasks: vec![MergeTask {
            tensor: format!("t{id}"),
            ..Default::default()
        }],
        output: Some(UnitOutput {
            start: id * 10,
            end: id * 10 + 10,
            first_part: id as u32,
            part_starts: vec![id * 10],
            ..Default::default()
        }),
        attempt: 0,
    }
}

fn part(id: u64) -> PartResult {
    PartResult {
        part_index: id as u32,
        etag: format!("e{id}"),
        size: 10,
    }
}

fn sched_epoch(units: u64, epoch: u64) -> (Scheduler, Instant) {
    let mut s = Scheduler::new(SchedulerConfig::default(), epoch);
    let status = JobStatus {
        job_id: "j".into(),
        ..Default::default()
    };
    s.add_job(
        status,
        (0..units).map(unit).collect(),
        vec![10; units as usize],
        HashMap::new(),
        HashMap::new(),
    )
    .unwrap();
    (s, Instant::now())
}

fn sched(units: u64) -> (Scheduler, Instant) {
    sched_epoch(units, 1)
}

/// The fenced reference of `lease` as its holder `worker` reports it.
fn rref<'a>(worker: &'a str, lease: &'a Lease) -> ReportRef<'a> {
    let u = lease.unit.as_ref().unwrap();
    ReportRef {
        worker,
        lease: &lease.lease_id,
        job: &u.job_id,
        unit: u.unit_id,
        attempt: u.attempt,
    }
}

fn ok(lease: &Lease) -> Report {
    Report::Success {
        parts: vec![part(lease.unit.as_ref().unwrap().unit_id)],
        stats: vec![],
    }
}

/// Reports success and settles the unit (as the service does once it is journaled).
fn finish(s: &mut Scheduler, w: &str, l: &Lease, now: Instant) -> Vec<Event> {
    let mut ev = s.report(rref(w, l), ok(l), now).expect("accepted");
    let unit = l.unit.as_ref().unwrap().unit_id;
    assert!(matches!(&ev[0], Event::UnitDone { unit: u, .. } if *u == unit));
    ev.extend(s.settle("j", unit, now));
    ev
}

#[test]
fn units_are_leased_once_and_count_as_done_only_once_settled() {
    let (mut s, now) = sched(3);
    let w = s.register_worker(now);
    let leases = s.lease(&w, 2, now).unwrap();
    assert_eq!(leases.len(), 2);
    assert_eq!(s.lease(&w, 5, now).unwrap().len(), 1);
    assert!(s.lease(&w, 5, now).unwrap().is_empty());
    s.report(rref(&w, &leases[0]), ok(&leases[0]), now).unwrap();
    assert_eq!(s.status("j").unwrap().units_done, 0, "not journaled yet");
    s.settle("j", 0, now);
    finish(&mut s, &w, &leases[1], now);
    assert!(!s.all_done("j"));
    let st = s.status("j").unwrap();
    assert_eq!(
        (st.units_done, st.bytes_done, st.state),
        (2, 20, JobState::Running as i32)
    );
}

#[test]
fn ids_carry_the_epoch_so_a_lease_of_an_earlier_process_is_unknown() {
    // The same sequence of calls in two coordinator incarnations: the ids differ.
    let (mut old, now) = sched_epoch(2, 1);
    let w_old = old.register_worker(now);
    let l_old = old.lease(&w_old, 2, now).unwrap();
    let (mut new, _) = sched_epoch(2, 2);
    let w_new = new.register_worker(now);
    let l_new = new.lease(&w_new, 2, now).unwrap();
    assert_ne!(w_old, w_new);
    assert_ne!(l_old[0].lease_id, l_new[0].lease_id);
    // A zombie from the old process reports unit 1's parts on its old lease: refused.
    let err = new.report(rref(&w_old, &l_old[1]), ok(&l_old[1]), now).unwrap_err();
    assert_eq!(err.0, Rejection::UnknownLease);
    // Even naming the new worker, an old lease id is no lease here.
    assert_eq!(
        new.report(rref(&w_new, &l_old[0]), ok(&l_old[0]), now).unwrap_err().0,
        Rejection::UnknownLease
    );
    assert_eq!(new.rejected_reports(), vec![(Rejection::UnknownLease, 2)]);
    assert_eq!(new.status("j").unwrap().units_done, 0);
}

#[test]
fn a_report_from_a_worker_that_does_not_hold_the_lease_is_rejected() {
    let (mut s, now) = sched(1);
    let w1 = s.register_worker(now);
    let w2 = s.register_worker(now);
    let l = s.lease(&w1, 1, now).unwrap().remove(0);
    let err = s.report(rref(&w2, &l), ok(&l), now).unwrap_err();
    assert_eq!(err.0, Rejection::NotHolder);
    assert!(err.1.contains(&w1), "{}", err.1);
    // The lease is still live for its holder.
    finish(&mut s, &w1, &l, now);
    assert!(s.all_done("j"));
}

#[test]
fn a_report_naming_another_unit_job_or_attempt_is_rejected() {
    let (mut s, now) = sched(2);
    let w = s.register_worker(now);
    let ls = s.lease(&w, 2, now).unwrap();
    let mut r = rref(&w, &ls[0]);
    r.unit = 1;
    assert_eq!(s.report(r, ok(&ls[1]), now).unwrap_err().0, Rejection::Mismatch);
    let mut r = rref(&w, &ls[0]);
    r.attempt = 7;
    assert_eq!(s.report(r, ok(&ls[0]), now).unwrap_err().0, Rejection::Mismatch);
    let mut r = rref(&w, &ls[0]);
    r.job = "other";
    assert_eq!(s.report(r, ok(&ls[0]), now).unwrap_err().0, Rejection::Mismatch);
    assert_eq!(s.status("j").unwrap().units_done, 0);
}

#[test]
fn parts_that_do_not_match_the_unit_are_rejected_and_the_unit_reruns() {
    let (mut s, now) = sched(2);
    let w = s.register_worker(now);
    let ls = s.lease(&w, 2, now).unwrap();
    // Unit 0 reports unit 1's part; then a part of the wrong size; then no parts.
    let wrong = [vec![part(1)], vec![PartResult { size: 9, ..part(0) }], vec![]];
    let mut lease = ls[0].clone();
    for parts in wrong {
        let err = s
            .report(rref(&w, &lease), Report::Success { parts, stats: vec![] }, now)
            .unwrap_err();
        assert_eq!(err.0, Rejection::BadParts);
        let again = s.lease(&w, 1, now).unwrap().remove(0);
        assert_eq!(again.unit.as_ref().unwrap().unit_id, 0, "the unit is requeued first");
        lease = again;
    }
    assert_eq!(s.status("j").unwrap().units_done, 0);
    // The fourth attempt is the last: a bad report now fails the job.
    let ev = s
        .report(
            rref(&w, &lease),
            Report::Success {
                parts: vec![],
                stats: vec![],
            },
            now,
        )
        .unwrap();
    assert!(matches!(&ev[0], Event::Failed { error, .. } if error.contains("wrong parts")));
}

#[test]
fn expired_leases_are_requeued_and_late_reports_rejected() {
    let (mut s, now) = sched(1);
    let w1 = s.register_worker(now);
    let l1 = s.lease(&w1, 1, now).unwrap().remove(0);
    let later = now + Duration::from_secs(11);
    let w2 = s.register_worker(later);
    s.tick(later);
    assert_eq!(s.status("j").unwrap().retries, 1);
    let l2 = s.lease(&w2, 1, later).unwrap().remove(0);
    assert_eq!(l2.unit.as_ref().unwrap().attempt, 2);
    assert_eq!(
        s.report(rref(&w1, &l1), ok(&l1), later).unwrap_err().0,
        Rejection::UnknownLease
    );
    let ev = finish(&mut s, &w2, &l2, later);
    assert!(ev.contains(&Event::ReadyToCommit("j".into())));
    assert_eq!(s.status("j").unwrap().state, JobState::Committing as i32);
}

#[test]
fn a_unit_whose_lease_is_lost_max_attempts_times_fails_the_job_naming_it() {
    let (mut s, mut now) = sched(2);
    for attempt in 1..=4 {
        let w = s.register_worker(now);
        let l = s.lease(&w, 1, now).unwrap().remove(0);
        assert_eq!(l.unit.as_ref().unwrap().unit_id, 0);
        assert_eq!(l.unit.as_ref().unwrap().attempt, attempt);
        now += Duration::from_secs(11); // the worker died with the unit (OOM-killed)
        let ev = s.tick(now);
        if attempt < 4 {
            assert!(ev.is_empty(), "{ev:?}");
        } else {
            let Event::Failed { error, .. } = &ev[0] else {
                panic!("{ev:?}")
            };
            assert!(error.contains("unit 0 (tensors t0)"), "{error}");
            assert!(
                error.contains("worker lost while running it (out of memory?)"),
                "{error}"
            );
        }
    }
    assert_eq!(s.status("j").unwrap().state, JobState::Failed as i32);
}

#[test]
fn heartbeats_keep_leases_alive_and_revoke_unknown_ones() {
    let (mut s, now) = sched(1);
    let w = s.register_worker(now);
    let l = s.lease(&w, 1, now).unwrap().remove(0);
    let t1 = now + Duration::from_secs(8);
    assert_eq!(
        s.heartbeat(&w, &[l.lease_id.clone(), "l-0-999".into()], t1).unwrap(),
        vec!["l-0-999".to_string()]
    );
    s.tick(now + Duration::from_secs(15));
    assert_eq!(s.status("j").unwrap().retries, 0, "heartbeat extended the lease");
    assert!(s.heartbeat("w-unknown", &[], t1).is_none());
    // A cancelled job's leases are revoked.
    s.cancel("j", t1).unwrap();
    assert_eq!(
        s.heartbeat(&w, std::slice::from_ref(&l.lease_id), t1).unwrap(),
        vec![l.lease_id]
    );
}

#[test]
fn retryable_failures_retry_then_fail_with_the_task_error() {
    let (mut s, now) = sched(1);
    let w = s.register_worker(now);
    for attempt in 1..=4 {
        let l = s.lease(&w, 1, now).unwrap().remove(0);
        let failure = Report::Failure {
            message: "read timed out".into(),
            retryable: true,
        };
        let ev = s.report(rref(&w, &l), failure, now).unwrap();
        if attempt < 4 {
            assert!(ev.is_empty());
        } else {
            assert!(matches!(&ev[0], Event::Failed { error, .. } if error.contains("read timed out")));
        }
    }
    assert_eq!(s.status("j").unwrap().state, JobState::Failed as i32);
    assert_eq!(s.live_workers(), 1, "a failing task does not blame the worker");
}

#[test]
fn deterministic_failure_fails_the_job_at_once() {
    let (mut s, now) = sched(2);
    let w = s.register_worker(now);
    let l = s.lease(&w, 1, now).unwrap().remove(0);
    let failure = Report::Failure {
        message: "shape mismatch".into(),
        retryable: false,
    };
    let ev = s.report(rref(&w, &l), failure, now).unwrap();
    assert!(matches!(&ev[0], Event::Failed { error, .. } if error == "shape mismatch"));
    assert!(
        s.lease(&w, 1, now).unwrap().is_empty(),
        "a failed job hands out no more work"
    );
}

#[test]
fn a_job_without_workers_fails_after_the_grace_period() {
    let (mut s, now) = sched(1);
    let w = s.register_worker(now);
    let _l = s.lease(&w, 1, now).unwrap();
    assert!(
        s.tick(now + Duration::from_secs(11)).is_empty(),
        "worker timed out, grace starts"
    );
    assert_eq!(s.live_workers(), 0);
    assert!(s.tick(now + Duration::from_secs(30)).is_empty());
    let ev = s.tick(now + Duration::from_secs(42));
    assert!(matches!(&ev[0], Event::Failed { error, .. } if error.contains("no live worker")));
}

#[test]
fn resumed_jobs_skip_done_units() {
    let mut s = Scheduler::new(SchedulerConfig::default(), 3);
    let now = Instant::now();
    let done = HashMap::from([(0u64, vec![part(0)])]);
    let status = JobStatus {
        job_id: "j".into(),
        ..Default::default()
    };
    s.add_job(status, vec![unit(0), unit(1)], vec![5, 7], done, HashMap::new())
        .unwrap();
    let st = s.status("j").unwrap();
    assert_eq!((st.units_done, st.resumed_units, st.bytes_done), (1, 1, 5));
    let w = s.register_worker(now);
    let leases = s.lease(&w, 5, now).unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].unit.as_ref().unwrap().unit_id, 1);
    let ev = finish(&mut s, &w, &leases[0], now);
    assert!(ev.contains(&Event::ReadyToCommit("j".into())));
    assert_eq!(s.parts("j")[0].1[0].etag, "e0");
}

#[test]
fn a_unit_whose_journal_write_failed_runs_again() {
    let (mut s, now) = sched(1);
    let w = s.register_worker(now);
    let l = s.lease(&w, 1, now).unwrap().remove(0);
    s.report(rref(&w, &l), ok(&l), now).unwrap();
    s.unsettle("j", 0);
    assert!(!s.all_done("j"));
    assert!(s.settle("j", 0, now).is_empty(), "an unsettled unit cannot be settled");
    let again = s.lease(&w, 1, now).unwrap().remove(0);
    let ev = finish(&mut s, &w, &again, now);
    assert!(ev.contains(&Event::ReadyToCommit("j".into())));
}

#[test]
fn cancel_stops_work_and_is_refused_during_commit_and_after_the_end() {
    let (mut s, now) = sched(2);
    let w = s.register_worker(now);
    s.cancel("j", now).unwrap();
    assert_eq!(
        s.cancel("j", now),
        Err(CancelRefused::Finished("j".into(), "cancelled".into()))
    );
    assert!(s.lease(&w, 2, now).unwrap().is_empty());
    assert_eq!(s.status("j").unwrap().state, JobState::Cancelled as i32);
    assert_eq!(s.cancel("nope", now), Err(CancelRefused::NotFound("nope".into())));

    let (mut s, now) = sched(1);
    let w = s.register_worker(now);
    let l = s.lease(&w, 1, now).unwrap().remove(0);
    finish(&mut s, &w, &l, now);
    assert_eq!(s.state("j"), Some(JobState::Committing));
    assert_eq!(s.cancel("j", now), Err(CancelRefused::Committing("j".into())));
    assert_eq!(s.state("j"), Some(JobState::Committing));
}

#[test]
fn terminal_states_are_absorbing() {
    let (mut s, now) = sched(1);
    assert!(s.set_state("j", JobState::Cancelled, None, now));
    for to in [
        JobState::Succeeded,
        JobState::Failed,
        JobState::Running,
        JobState::Committing,
    ] {
        assert!(!s.set_state("j", to, None, now), "cancelled -> {to:?}");
    }
    assert_eq!(s.state("j"), Some(JobState::Cancelled));
    let (mut s, now) = sched(1);
    assert!(s.set_state("j", JobState::Committing, None, now));
    assert!(!s.set_state("j", JobState::Cancelled, None, now));
    assert!(!s.set_state("j", JobState::Running, None, now));
    assert!(s.set_state("j", JobState::Succeeded, None, now));
    assert!(!s.set_state("j", JobState::Failed, None, now));
    // Forgotten after retention, once closed.
    assert!(s.forget_finished(Duration::from_secs(60), now, |_| true).is_empty());
    let later = now + Duration::from_secs(61);
    assert!(s.forget_finished(Duration::from_secs(60), later, |_| false).is_empty());
    assert_eq!(
        s.forget_finished(Duration::from_secs(60), later, |_| true),
        vec!["j".to_string()]
    );
    assert!(s.status("j").is_none());
}

#[test]
fn one_lease_request_hands_out_at_most_the_cap() {
    let (mut s, now) = sched(100);
    let w = s.register_worker(now);
    assert_eq!(s.lease(&w, 10_000, now).unwrap().len(), 64);
}

#[test]
fn a_lease_response_stops_adding_units_past_its_task_budget() {
    let mut s = Scheduler::new(SchedulerConfig::default(), 1);
    let status = JobStatus {
        job_id: "j".into(),
        ..Default::default()
    };
    // Units of 10000 small chunk tasks each: one response carries two (16384 tasks reached
    // after the second), not the 64 a worker may ask for.
    let big = |id| WorkUnit {
        tasks: vec![MergeTask::default(); 10_000],
        ..unit(id)
    };
    s.add_job(
        status,
        (0..5).map(big).collect(),
        vec![10; 5],
        HashMap::new(),
        HashMap::new(),
    )
    .unwrap();
    let now = Instant::now();
    let w = s.register_worker(now);
    assert_eq!(s.lease(&w, 64, now).unwrap().len(), 2);
    assert_eq!(s.lease(&w, 64, now).unwrap().len(), 2);
    assert_eq!(s.lease(&w, 64, now).unwrap().len(), 1);
}
