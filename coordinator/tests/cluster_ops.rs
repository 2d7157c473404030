//! Process-level tests of what operators rely on: the Prometheus endpoints report what really
//! happened, and a SIGTERM'd coordinator stops cleanly and resumes to identical bytes.

mod support;

use shardmerge_worker::storage::test_server::TestS3;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

/// Runs `shardmerge plan --output json` on a golden case and returns its bytes to read.
fn planned_bytes_read(case: &str, shard: &str) -> f64 {
    let cfg = golden().join("cases").join(case).join("config.yml");
    let out = Command::new(bin())
        .args([
            "plan",
            cfg.to_str().unwrap(),
            "--out-shard-size",
            shard,
            "--output",
            "json",
        ])
        .current_dir(golden())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    plan["bytes_to_read"]
        .as_u64()
        .unwrap_or_else(|| panic!("no bytes_to_read in {plan}")) as f64
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_endpoints_report_the_units_and_bytes_of_a_real_merge() {
    let s3 = TestS3::start().await;
    for m in ["base_bf16", "ft1_bf16", "ft2_bf16"] {
        s3.upload_dir(&golden().join("models").join(m), "models", m);
    }
    let out_bucket = s3.create_bucket("out");
    let tmp = tempfile::tempdir().unwrap();
    let coord = coordinator(
        &s3,
        &tmp.path().join("state"),
        &["--metrics-listen", "127.0.0.1:0"],
        None,
    );
    let cm = coord.metrics.clone().expect("coordinator metrics address");
    let (w, wm) = worker_with_metrics(&s3, &coord.url);
    let _worker = KillOnDrop(vec![w]);
    // The worker shows up in the coordinator's gauge once registered.
    let start = Instant::now();
    // (The gauges appear once the coordinator has opened its journal.)
    while !scrape(&cm).contains("shardmerge_workers 1\n") {
        assert!(start.elapsed() < Duration::from_secs(20), "worker never registered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (case, shard) = ("multishard_bf16", "20k");
    let cfg = s3_config(case, tmp.path());
    let (ok, job, err) = tokio::task::block_in_place(|| {
        client(
            &s3,
            &[
                "submit",
                cfg.to_str().unwrap(),
                "s3://out/metrics",
                "--coordinator",
                &coord.url,
                "--wait",
                "--out-shard-size",
                shard,
            ],
            None,
        )
    });
    assert!(ok, "{err}");
    let status = tokio::task::block_in_place(|| {
        wait_status(&s3, &coord.url, job.trim(), Duration::from_secs(30), |s| {
            s.is("succeeded")
        })
    });
    let units_total = status.units_total as f64;
    let files = model_files(&out_bucket.join("metrics"));
    let written: usize = files
        .iter()
        .filter(|f| f.0.ends_with(".safetensors"))
        .map(|f| f.1.len())
        .sum();
    assert!(units_total >= 2.0 && files.len() >= 3, "{status} {files:?}");
    let read = planned_bytes_read(case, shard);

    let c = scrape(&cm);
    eprintln!("coordinator metrics:\n{c}");
    assert_eq!(metric(&c, "shardmerge_units{state=\"done\"}"), units_total);
    for s in ["pending", "leased", "failed"] {
        assert_eq!(metric(&c, &format!("shardmerge_units{{state=\"{s}\"}}")), 0.0, "{s}");
    }
    assert_eq!(metric(&c, "shardmerge_jobs{state=\"succeeded\"}"), 1.0);
    assert_eq!(metric(&c, "shardmerge_jobs{state=\"running\"}"), 0.0);
    assert_eq!(metric(&c, "shardmerge_queue_depth"), 0.0);
    assert_eq!(metric(&c, "shardmerge_lease_expiries_total"), 0.0);
    assert_eq!(metric(&c, "shardmerge_unit_retries_total"), 0.0);
    assert_eq!(
        metric(&c, "shardmerge_unit_reports_total{outcome=\"succeeded\"}"),
        units_total
    );
    assert_eq!(metric(&c, "shardmerge_unit_duration_seconds_count"), units_total);
    assert!(metric(&c, "shardmerge_unit_duration_seconds_sum") > 0.0);
    assert_eq!(metric(&c, "shardmerge_bytes_written_total"), written as f64);
    assert_eq!(metric(&c, "shardmerge_bytes_read_total"), read);

    let wt = scrape(&wm);
    eprintln!("worker metrics:\n{wt}");
    assert_eq!(
        metric(&wt, "shardmerge_worker_units_total{outcome=\"succeeded\"}"),
        units_total
    );
    assert_eq!(metric(&wt, "shardmerge_worker_units_in_flight"), 0.0);
    assert_eq!(metric(&wt, "shardmerge_worker_bytes_written_total"), written as f64);
    assert_eq!(metric(&wt, "shardmerge_worker_bytes_read_total"), read);
    assert_eq!(
        metric(
            &wt,
            "shardmerge_worker_unit_duration_seconds_count{outcome=\"succeeded\"}"
        ),
        units_total
    );
}

/// Sends SIGTERM and waits up to 30 s for the process to exit; returns its status and the wait.
fn sigterm(child: &mut std::process::Child) -> (Option<std::process::ExitStatus>, Duration) {
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let sent = Instant::now();
    loop {
        if let Some(code) = child.try_wait().unwrap() {
            return (Some(code), sent.elapsed());
        }
        if sent.elapsed() > Duration::from_secs(30) {
            return (None, sent.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every line of every journal file is complete JSON.
fn assert_journal_intact(state: &std::path::Path) -> usize {
    let mut lines = 0;
    for e in std::fs::read_dir(state.join("jobs")).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap();
        assert!(text.ends_with('\n'), "{}: torn last line", e.path().display());
        for l in text.lines() {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|err| panic!("{}: bad line {l:?}: {err}", e.path().display()));
            lines += 1;
        }
    }
    lines
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_coordinator_cleanly_and_a_restart_finishes_identically() {
    let s3 = TestS3::start().await;
    let tmp = tempfile::tempdir().unwrap();
    synth_models(&tmp.path().join("synth"));
    for m in ["base", "finetune-a", "finetune-b"] {
        s3.upload_dir(&tmp.path().join("synth").join(m), "synth", m);
    }
    s3.create_bucket("out");
    // The embedded merge of the same config is the reference.
    let local = synth_config(tmp.path(), &tmp.path().join("synth").display().to_string());
    let reference_dir = tmp.path().join("reference");
    let st = Command::new(bin())
        .args(["merge", local.to_str().unwrap(), reference_dir.to_str().unwrap()])
        .args(["--random-seed", "5", "--quiet"])
        .status()
        .unwrap();
    assert!(st.success());
    let reference = model_files(&reference_dir);

    let state = tmp.path().join("state");
    let mut coord = coordinator(&s3, &state, &[], None);
    let listen = coord.url.trim_start_matches("http://").to_string();
    // The workers outlive the coordinator and find the restarted one on the same address.
    let _workers = KillOnDrop((0..2).map(|_| worker(&s3, &coord.url, None)).collect());
    // A `submit --wait` client rides out the restart: it watches again and exits 0 at the end,
    // printing the final status (and how often it watched again) as JSON.
    let cfg = synth_config(tmp.path(), "s3://synth");
    let mut cmd = Command::new(bin());
    s3_env(&mut cmd, &s3);
    let waiter = cmd
        .args([
            "submit",
            cfg.to_str().unwrap(),
            "s3://out/sigterm",
            "--coordinator",
            &coord.url,
        ])
        .args(["--random-seed", "5", "--wait", "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The only job on this coordinator is the waiter's.
    let job = tokio::task::block_in_place(|| {
        let start = Instant::now();
        loop {
            if let Some([only]) = all_statuses(&s3, &coord.url).as_deref() {
                break only.job_id.clone();
            }
            assert!(start.elapsed() < Duration::from_secs(60), "the job was never submitted");
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert!(job.starts_with("job-"), "{job:?}");
    let before = tokio::task::block_in_place(|| {
        wait_status(&s3, &coord.url, &job, Duration::from_secs(120), |s| {
            s.units_done >= 2 || s.is("succeeded")
        })
    });
    assert!(
        !before.is("succeeded"),
        "the coordinator must be stopped mid-merge: {before}"
    );
    let (exited, took) = tokio::task::block_in_place(|| sigterm(&mut coord.child));
    assert!(
        exited.is_some_and(|c| c.success()),
        "SIGTERM'd coordinator must exit 0 within 30 s: {exited:?}"
    );
    eprintln!("coordinator exited {took:?} after SIGTERM");
    let journaled = assert_journal_intact(&state);
    assert!(journaled >= 3, "the job record and at least two units are journaled");
    let done_before = before.units_done;

    coord = coordinator_at(&s3, &state, &listen, &["--metrics-listen", "127.0.0.1:0"], None);
    let fin = tokio::task::block_in_place(|| wait_finished(&s3, &coord.url, &job, Duration::from_secs(240)));
    eprintln!("before SIGTERM: {before}\nafter the restart: {fin}");
    let waited = tokio::task::block_in_place(|| waiter.wait_with_output().unwrap());
    let waiter_log = String::from_utf8_lossy(&waited.stderr);
    let waiter_out = String::from_utf8_lossy(&waited.stdout);
    let seen: serde_json::Value = serde_json::from_str(waiter_out.trim())
        .unwrap_or_else(|e| panic!("{e}: stdout {waiter_out:?}, stderr {waiter_log}"));
    assert!(
        waited.status.success() && seen["job_id"] == job.as_str() && seen["state"] == "succeeded",
        "submit --wait must follow the job across the restart: {seen}\n{waiter_log}"
    );
    assert!(
        seen["rewatched"].as_u64().is_some_and(|n| n >= 1),
        "it watched again after the restart: {seen}\n{waiter_log}"
    );
    assert!(fin.is("succeeded"), "{fin}");
    assert!(
        fin.resumed >= done_before,
        "finished units must not be redone: before {before}, after {fin}"
    );
    // The restarted coordinator's gauges count the resumed units as done.
    let c = scrape(coord.metrics.as_ref().unwrap());
    assert_eq!(metric(&c, "shardmerge_units{state=\"done\"}"), fin.units_done as f64);
    let got = model_files(&s3.create_bucket("out").join("sigterm"));
    assert_same_files(&got, &reference, "differs from the embedded merge");
    assert_journal_intact(&state);

    // A commit cut short after it completed the uploads (a coordinator stopped mid-commit):
    // without the journal's last line the restarted coordinator commits again, skipping the
    // uploads it journaled as completed (completing one twice fails), and succeeds again.
    let (exited, _) = tokio::task::block_in_place(|| sigterm(&mut coord.child));
    assert!(exited.is_some_and(|c| c.success()), "{exited:?}");
    let file = state.join("jobs").join(format!("{job}.jsonl"));
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.last().unwrap().contains("\"finished\""), "{text}");
    assert!(text.contains("\"shard_committed\""), "{text}");
    std::fs::write(&file, lines[..lines.len() - 1].join("\n") + "\n").unwrap();
    coord = coordinator_at(&s3, &state, &listen, &[], None);
    let again = tokio::task::block_in_place(|| wait_finished(&s3, &coord.url, &job, Duration::from_secs(60)));
    assert!(again.is("succeeded"), "a repeated commit must succeed: {again}");
    let got = model_files(&s3.create_bucket("out").join("sigterm"));
    assert_same_files(&got, &reference, "changed after the repeated commit");
}
