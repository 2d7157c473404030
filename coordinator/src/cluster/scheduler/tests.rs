use super::*;

fn unit(id: u64) -> WorkUnit {
    WorkUnit {
        job_id: "j".into(),
        unit_id: id,
        ..Default::default()
    }
}

fn sched(units: u64) -> (Scheduler, Instant) {
    let mut s = Scheduler::new(SchedulerConfig::default());
    let status = JobStatus {
        job_id: "j".into(),
        ..Default::default()
    };
    s.add_job(
        status,
        (0..units).map(unit).collect(),
        vec![10; units as usize],
        HashMap::new(),
    );
    (s, Instant::now())
}

fn ok() -> Report {
    Report::Success { parts: vec![] }
}

#[test]
fn units_are_leased_once_and_the_job_becomes_ready_to_commit() {
    let (mut s, now) = sched(3);
    let w = s.register_worker(now);
    let leases = s.lease(&w, 2, now).unwrap();
    assert_eq!(leases.len(), 2);
    assert_eq!(s.lease(&w, 5, now).unwrap().len(), 1);
    assert!(s.lease(&w, 5, now).unwrap().is_empty());
    let mut events = Vec::new();
    for l in leases {
        events.extend(s.report(&w, &l.lease_id, ok(), 0, now));
    }
    assert!(!s.all_done("j"));
    assert!(!events.contains(&Event::ReadyToCommit("j".into())));
    let st = s.status("j").unwrap();
    assert_eq!((st.units_done, st.bytes_done), (2, 20));
}

#[test]
fn expired_leases_are_requeued_and_late_reports_ignored() {
    let (mut s, now) = sched(1);
    let w1 = s.register_worker(now);
    let l1 = s.lease(&w1, 1, now).unwrap().remove(0);
    let later = now + Duration::from_secs(11);
    let w2 = s.register_worker(later);
    s.tick(later);
    assert_eq!(s.status("j").unwrap().retries, 1);
    let l2 = s.lease(&w2, 1, later).unwrap().remove(0);
    assert_eq!(l2.unit.as_ref().unwrap().attempt, 2);
    assert!(
        s.report(&w1, &l1.lease_id, ok(), 0, later).is_empty(),
        "stale lease must be ignored"
    );
    let ev = s.report(&w2, &l2.lease_id, ok(), 0, later);
    assert!(ev.contains(&Event::ReadyToCommit("j".into())));
}

#[test]
fn heartbeats_keep_leases_alive_and_revoke_unknown_ones() {
    let (mut s, now) = sched(1);
    let w = s.register_worker(now);
    let l = s.lease(&w, 1, now).unwrap().remove(0);
    let t1 = now + Duration::from_secs(8);
    assert_eq!(
        s.heartbeat(&w, &[l.lease_id.clone(), "l-999".into()], t1).unwrap(),
        vec!["l-999".to_string()]
    );
    s.tick(now + Duration::from_secs(15));
    assert_eq!(s.status("j").unwrap().retries, 0, "heartbeat extended the lease");
    assert!(s.heartbeat("w-unknown", &[], t1).is_none());
}

#[test]
fn retryable_failures_retry_then_fail_with_the_task_error() {
    let (mut s, now) = sched(1);
    let w = s.register_worker(now);
    for attempt in 1..=4 {
        let l = s.lease(&w, 1, now).unwrap().remove(0);
        let ev = s.report(
            &w,
            &l.lease_id,
            Report::Failure {
                message: "read timed out".into(),
                retryable: true,
            },
            0,
            now,
        );
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
    let ev = s.report(
        &w,
        &l.lease_id,
        Report::Failure {
            message: "shape mismatch".into(),
            retryable: false,
        },
        0,
        now,
    );
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
    let mut s = Scheduler::new(SchedulerConfig::default());
    let now = Instant::now();
    let done = HashMap::from([(
        0u64,
        vec![PartResult {
            part_index: 0,
            etag: "e0".into(),
        }],
    )]);
    s.add_job(
        JobStatus {
            job_id: "j".into(),
            ..Default::default()
        },
        vec![unit(0), unit(1)],
        vec![5, 7],
        done,
    );
    let st = s.status("j").unwrap();
    assert_eq!((st.units_done, st.resumed_units, st.bytes_done), (1, 1, 5));
    let w = s.register_worker(now);
    let leases = s.lease(&w, 5, now).unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].unit.as_ref().unwrap().unit_id, 1);
    let ev = s.report(&w, &leases[0].lease_id, ok(), 0, now);
    assert!(ev.contains(&Event::ReadyToCommit("j".into())));
    assert_eq!(s.parts("j")[0].1[0].etag, "e0");
}

#[test]
fn cancel_stops_handing_out_work() {
    let (mut s, now) = sched(2);
    let w = s.register_worker(now);
    assert!(s.cancel("j"));
    assert!(!s.cancel("j"));
    assert!(s.lease(&w, 2, now).unwrap().is_empty());
    assert_eq!(s.status("j").unwrap().state, JobState::Cancelled as i32);
}
