//! Many jobs on one cluster (real coordinator and worker processes): running jobs share the
//! workers in turns, so a small job submitted behind a large one finishes first; with
//! `--max-running-jobs` the rest wait as `queued` and start in submission order, also after the
//! coordinator is killed and restarted.

mod support;

use shardmerge_worker::storage::test_server::TestS3;
use std::path::Path;
use std::time::Duration;
use support::*;

fn submit(s3: &TestS3, url: &str, cfg: &Path, out: &Path, seed: &str) -> String {
    let (ok, job, err) = tokio::task::block_in_place(|| {
        client(
            s3,
            &[
                "submit",
                cfg.to_str().unwrap(),
                out.to_str().unwrap(),
                "--coordinator",
                url,
                "--random-seed",
                seed,
            ],
            None,
        )
    });
    assert!(ok, "{err}");
    job.trim().to_string()
}

fn status(s3: &TestS3, url: &str, job: &str) -> Status {
    tokio::task::block_in_place(|| wait_status(s3, url, job, Duration::from_secs(30), |_| true))
}

fn golden_case(case: &str) -> std::path::PathBuf {
    golden().join("cases").join(case).join("config.yml")
}

/// The expected safetensors of a golden case (mergekit's own output).
fn expected(case: &str) -> Vec<(String, Vec<u8>)> {
    model_files(&golden().join("cases").join(case).join("expected"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_job_submitted_behind_a_large_one_finishes_first() {
    let s3 = TestS3::start().await;
    let tmp = tempfile::tempdir().unwrap();
    synth_models(&tmp.path().join("synth"));
    let large = synth_config(tmp.path(), &tmp.path().join("synth").display().to_string());
    let coord = coordinator(&s3, &tmp.path().join("state"), &[], None);
    let _w = KillOnDrop(vec![worker(&s3, &coord.url, None)]);
    let big = submit(&s3, &coord.url, &large, &tmp.path().join("large"), "5");
    let started = tokio::task::block_in_place(|| {
        wait_status(&s3, &coord.url, &big, Duration::from_secs(120), |s| {
            s.units_done >= 1 || s.is("succeeded")
        })
    });
    assert!(
        started.units_total >= started.units_done + 5,
        "the large job must have work left: {started}"
    );
    let small = submit(
        &s3,
        &coord.url,
        &golden_case("ties_f32"),
        &tmp.path().join("small"),
        "1",
    );
    let done = tokio::task::block_in_place(|| wait_finished(&s3, &coord.url, &small, Duration::from_secs(120)));
    assert!(done.is("succeeded"), "{done}");
    let big_now = status(&s3, &coord.url, &big);
    assert!(
        !big_now.is("succeeded"),
        "the small job finished only after the large one: {big_now}"
    );
    assert_eq!(model_files(&tmp.path().join("small")), expected("ties_f32"));
    let fin = tokio::task::block_in_place(|| wait_finished(&s3, &coord.url, &big, Duration::from_secs(240)));
    assert!(fin.is("succeeded"), "{fin}");
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_jobs_start_in_submission_order_also_after_a_coordinator_restart() {
    let s3 = TestS3::start().await;
    let tmp = tempfile::tempdir().unwrap();
    synth_models(&tmp.path().join("synth"));
    let large = synth_config(tmp.path(), &tmp.path().join("synth").display().to_string());
    let state = tmp.path().join("state");
    let limit = ["--max-running-jobs", "1"];
    let mut coord = coordinator(&s3, &state, &limit, None);
    let listen = coord.url.trim_start_matches("http://").to_string();
    let _w = KillOnDrop(vec![worker(&s3, &coord.url, None)]);
    let big = submit(&s3, &coord.url, &large, &tmp.path().join("large"), "5");
    let cases = ["ties_f32", "linear_f32", "slerp_f32"];
    let small: Vec<String> = cases
        .iter()
        .map(|c| submit(&s3, &coord.url, &golden_case(c), &tmp.path().join(c), "1"))
        .collect();
    for job in &small {
        let s = status(&s3, &coord.url, job);
        assert!(s.is("queued"), "{job} waits behind {big}: {s}");
    }

    // kill -9 and restart: the queue is rebuilt from the journal, in submission order.
    coord.child.kill().unwrap();
    coord.child.wait().unwrap();
    coord = coordinator_at(&s3, &state, &listen, &limit, None);
    let mut order = Vec::new();
    let jobs: Vec<&String> = std::iter::once(&big).chain(&small).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while order.len() < jobs.len() {
        // One snapshot per poll: polling the jobs one by one would see a job still running and,
        // a moment later, the next one already started.
        let Some(all) = tokio::task::block_in_place(|| all_statuses(&s3, &coord.url)) else {
            assert!(std::time::Instant::now() < deadline, "the coordinator did not answer");
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let mut running = Vec::new();
        for job in &jobs {
            let s = all
                .iter()
                .find(|s| &&s.job_id == job)
                .unwrap_or_else(|| panic!("{job} is not listed"));
            assert!(!s.is("failed") && !s.is("cancelled"), "{job}: {s}");
            if s.is("running") || s.is("committing") {
                running.push(s.to_string());
            }
            if s.is("succeeded") && !order.contains(job) {
                order.push(*job);
            }
        }
        assert!(running.len() <= 1, "at most one job runs at a time: {running:?}");
        assert!(std::time::Instant::now() < deadline, "jobs did not finish: {order:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(order, jobs, "jobs finish in submission order");
    for c in cases {
        assert_eq!(model_files(&tmp.path().join(c)), expected(c), "{c}");
    }
}
