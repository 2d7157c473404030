//! Process-level cluster tests: real coordinator and worker processes over gRPC, a real
//! S3-compatible server (s3s-fs) over HTTP, real `kill -9`.

mod support;

use shardmerge_worker::storage::test_server::TestS3;
use std::time::Duration;
use support::*;

fn models_bucket(s3: &TestS3) {
    for m in ["base_bf16", "ft1_bf16", "ft2_bf16", "ft1_bf16_sharded"] {
        s3.upload_dir(&golden().join("models").join(m), "models", m);
    }
    s3.create_bucket("out");
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_to_s3_merge_with_three_workers_matches_mergekit() {
    let s3 = TestS3::start().await;
    models_bucket(&s3);
    let tmp = tempfile::tempdir().unwrap();
    let coord = coordinator(&s3, &tmp.path().join("state"), &[], None);
    let mut workers: Vec<_> = (0..3).map(|_| worker(&s3, &coord.url, None)).collect();
    for (case, seed, shard) in [
        ("dare_ties_bf16_automerger", "42", "5B"),
        ("multishard_bf16", "1", "20k"),
        ("sharded_input_bf16", "1", "5B"),
    ] {
        let cfg = s3_config(case, tmp.path());
        let out = format!("s3://out/{case}");
        let (ok, _, err) = tokio::task::block_in_place(|| {
            client(
                &s3,
                &[
                    "submit",
                    cfg.to_str().unwrap(),
                    &out,
                    "--coordinator",
                    &coord.url,
                    "--wait",
                    "--random-seed",
                    seed,
                    "--out-shard-size",
                    shard,
                ],
                None,
            )
        });
        assert!(ok, "{case}: {err}");
        let got = model_files(&s3.create_bucket("out").join(case));
        let want = model_files(&golden().join("cases").join(case).join("expected"));
        assert!(!want.is_empty());
        assert_eq!(
            got.iter().map(|f| &f.0).collect::<Vec<_>>(),
            want.iter().map(|f| &f.0).collect::<Vec<_>>(),
            "{case}"
        );
        for (g, w) in got.iter().zip(&want) {
            assert!(g.1 == w.1, "{case}: {} differs from mergekit's", g.0);
        }
        assert!(s3.create_bucket("out").join(case).join("config.json").exists());
    }
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn token_is_required_and_checked() {
    let s3 = TestS3::start().await;
    models_bucket(&s3);
    let tmp = tempfile::tempdir().unwrap();
    let coord = coordinator(&s3, &tmp.path().join("state"), &[], Some("sesame"));
    let cfg = s3_config("linear_bf16", tmp.path());
    let args = [
        "submit",
        cfg.to_str().unwrap(),
        "s3://out/x",
        "--coordinator",
        &coord.url,
    ];
    let (ok, _, err) = tokio::task::block_in_place(|| client(&s3, &args, None));
    assert!(!ok && err.contains("missing cluster token"), "{err}");
    let (ok, _, err) = tokio::task::block_in_place(|| client(&s3, &args, Some("wrong")));
    assert!(!ok && err.contains("invalid cluster token"), "{err}");
    let (ok, out, err) = tokio::task::block_in_place(|| client(&s3, &args, Some("sesame")));
    assert!(ok, "{err}");
    assert!(out.starts_with("job-"));
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_bucket_missing_object_and_corrupt_header_are_clear_errors() {
    let s3 = TestS3::start().await;
    models_bucket(&s3);
    let tmp = tempfile::tempdir().unwrap();
    let coord = coordinator(&s3, &tmp.path().join("state"), &[], None);
    let cfg = s3_config("linear_bf16", tmp.path());
    let submit = |cfg: &std::path::Path| {
        tokio::task::block_in_place(|| {
            client(
                &s3,
                &[
                    "submit",
                    cfg.to_str().unwrap(),
                    "s3://out/x",
                    "--coordinator",
                    &coord.url,
                ],
                None,
            )
        })
    };
    let text = std::fs::read_to_string(&cfg).unwrap();
    let p = tmp.path().join("nobucket.yml");
    std::fs::write(&p, text.replace("s3://models/ft1_bf16", "s3://no-such-bucket/ft1_bf16")).unwrap();
    let (ok, _, err) = submit(&p);
    assert!(!ok && err.contains("no-such-bucket"), "{err}");
    let p = tmp.path().join("noobject.yml");
    std::fs::write(&p, text.replace("s3://models/ft1_bf16", "s3://models/not-there")).unwrap();
    let (ok, _, err) = submit(&p);
    assert!(!ok && err.contains("s3://models/not-there"), "{err}");
    let bucket = s3.create_bucket("models");
    let f = bucket.join("ft2_bf16/model.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[8..24].fill(b'!');
    std::fs::write(&f, bytes).unwrap();
    let (ok, _, err) = submit(&cfg);
    assert!(
        !ok && err.contains("s3://models/ft2_bf16") && err.contains("header"),
        "{err}"
    );
}

/// Reference output of the synthetic DARE-TIES merge, from the embedded runtime.
fn embedded_reference(tmp: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let local = synth_config(tmp, &tmp.join("synth").display().to_string());
    let out = tmp.join("reference");
    let st = std::process::Command::new(bin())
        .args([
            "merge",
            local.to_str().unwrap(),
            out.to_str().unwrap(),
            "--random-seed",
            "5",
            "--quiet",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    model_files(&out)
}

fn submit_synth(s3: &TestS3, url: &str, tmp: &std::path::Path, out: &str) -> String {
    let cfg = synth_config(tmp, "s3://synth");
    let (ok, job, err) = tokio::task::block_in_place(|| {
        client(
            s3,
            &[
                "submit",
                cfg.to_str().unwrap(),
                out,
                "--coordinator",
                url,
                "--random-seed",
                "5",
            ],
            None,
        )
    });
    assert!(ok, "{err}");
    job.trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_worker_and_killed_coordinator_still_give_identical_bytes() {
    let s3 = TestS3::start().await;
    let tmp = tempfile::tempdir().unwrap();
    synth_models(&tmp.path().join("synth"));
    for m in ["base", "finetune-a", "finetune-b"] {
        s3.upload_dir(&tmp.path().join("synth").join(m), "synth", m);
    }
    s3.create_bucket("out");
    let reference = embedded_reference(tmp.path());
    let state = tmp.path().join("state");
    let mut coord = coordinator(&s3, &state, &[], None);
    let mut workers: Vec<_> = (0..3).map(|_| worker(&s3, &coord.url, None)).collect();
    let job = submit_synth(&s3, &coord.url, tmp.path(), "s3://out/killed");
    // kill -9 one worker once work has started.
    tokio::task::block_in_place(|| {
        wait_status(&s3, &coord.url, &job, Duration::from_secs(120), |s| {
            s.units_done >= 1 || s.is("succeeded")
        })
    });
    workers[0].kill().unwrap();
    let _ = workers[0].wait();
    // kill -9 the coordinator mid-merge, then restart it on the same state dir.
    let before = tokio::task::block_in_place(|| {
        wait_status(&s3, &coord.url, &job, Duration::from_secs(120), |s| {
            s.units_done >= 2 || s.is("succeeded")
        })
    });
    coord.child.kill().unwrap();
    let _ = coord.child.wait();
    let done_before = before.units_done;
    coord = coordinator(&s3, &state, &[], None);
    let mut more: Vec<_> = (0..2).map(|_| worker(&s3, &coord.url, None)).collect();
    let fin = tokio::task::block_in_place(|| wait_finished(&s3, &coord.url, &job, Duration::from_secs(240)));
    assert!(fin.is("succeeded"), "{fin}");
    eprintln!("before the coordinator kill: {before}\nafter the restart: {fin}");
    assert!(
        !before.is("succeeded"),
        "the coordinator must be killed mid-merge: {before}"
    );
    assert!(
        done_before >= 2 && fin.resumed >= done_before,
        "finished units must not be redone: before {before}, after {fin}"
    );
    let got = model_files(&s3.create_bucket("out").join("killed"));
    assert_same_files(&got, &reference, "differs from the embedded merge");
    for w in workers.iter_mut().chain(more.iter_mut()) {
        let _ = w.kill();
        let _ = w.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn all_workers_gone_fails_the_job_and_cancel_leaves_no_output() {
    let s3 = TestS3::start().await;
    let tmp = tempfile::tempdir().unwrap();
    synth_models(&tmp.path().join("synth"));
    for m in ["base", "finetune-a", "finetune-b"] {
        s3.upload_dir(&tmp.path().join("synth").join(m), "synth", m);
    }
    s3.create_bucket("out");
    let coord = coordinator(&s3, &tmp.path().join("state"), &[], None);
    // No worker at all: the job fails after the grace period (4 s), never hangs.
    let job = submit_synth(&s3, &coord.url, tmp.path(), "s3://out/orphan");
    let st =
        tokio::task::block_in_place(|| wait_status(&s3, &coord.url, &job, Duration::from_secs(30), |s| s.is("failed")));
    assert!(st.error.contains("no live worker"), "{st}");
    // Cancel a running job: no visible output.
    let mut w = worker(&s3, &coord.url, None);
    let job = submit_synth(&s3, &coord.url, tmp.path(), "s3://out/cancelled");
    let (ok, out, err) = tokio::task::block_in_place(|| {
        client(
            &s3,
            &["cancel", &job, "--coordinator", &coord.url, "--output", "json"],
            None,
        )
    });
    let cancelled = Status::parse(&out).is_some_and(|s| s.is("cancelled"));
    assert!(ok && cancelled, "{out}{err}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dir = s3.create_bucket("out").join("cancelled");
    assert!(
        model_files(&dir).is_empty(),
        "cancelled job left {:?}",
        model_files(&dir).iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let _ = w.kill();
    let _ = w.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_a_worker_and_the_job_still_completes_identically() {
    let s3 = TestS3::start().await;
    let tmp = tempfile::tempdir().unwrap();
    synth_models(&tmp.path().join("synth"));
    for m in ["base", "finetune-a", "finetune-b"] {
        s3.upload_dir(&tmp.path().join("synth").join(m), "synth", m);
    }
    s3.create_bucket("out");
    let reference = embedded_reference(tmp.path());
    let coord = coordinator(&s3, &tmp.path().join("state"), &[], None);
    let mut first = worker(&s3, &coord.url, None);
    let job = submit_synth(&s3, &coord.url, tmp.path(), "s3://out/drained");
    tokio::task::block_in_place(|| {
        wait_status(&s3, &coord.url, &job, Duration::from_secs(120), |s| {
            s.units_done >= 1 || s.is("succeeded")
        })
    });
    let mut second = worker(&s3, &coord.url, None);
    let st = std::process::Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    // The worker finishes its unit and exits on its own, cleanly.
    let exited = tokio::task::block_in_place(|| {
        let start = std::time::Instant::now();
        loop {
            if let Some(code) = first.try_wait().unwrap() {
                return Some(code);
            }
            if start.elapsed() > Duration::from_secs(60) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    assert!(
        exited.is_some_and(|c| c.success()),
        "SIGTERM'd worker must drain and exit 0: {exited:?}"
    );
    let fin = tokio::task::block_in_place(|| wait_finished(&s3, &coord.url, &job, Duration::from_secs(240)));
    assert!(fin.is("succeeded"), "{fin}");
    let got = model_files(&s3.create_bucket("out").join("drained"));
    assert_same_files(&got, &reference, "differs from the embedded merge");
    let _ = second.kill();
    let _ = second.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn separate_tokens_location_allowlist_and_json_output() {
    let s3 = TestS3::start().await;
    models_bucket(&s3);
    let tmp = tempfile::tempdir().unwrap();
    let worker_token = tmp.path().join("worker-token");
    std::fs::write(&worker_token, "worker-sesame\n").unwrap();
    let coord = coordinator(
        &s3,
        &tmp.path().join("state"),
        &[
            "--worker-token-file",
            worker_token.to_str().unwrap(),
            "--allow-location",
            "s3://models",
            "--allow-location",
            "s3://out/allowed",
        ],
        Some("client-sesame"),
    );
    let mut w = worker(&s3, &coord.url, Some("worker-sesame"));
    let cfg = s3_config("linear_bf16", tmp.path());
    let cfg = cfg.to_str().unwrap();
    let url = coord.url.as_str();
    let run = |args: &[&str], token: &str| tokio::task::block_in_place(|| client(&s3, args, Some(token)));

    // An output outside the allowlist is refused by name, before anything is written.
    let (ok, _, err) = run(
        &["submit", cfg, "s3://out/elsewhere", "--coordinator", url],
        "client-sesame",
    );
    assert!(
        !ok && err.contains("location `s3://out/elsewhere` is not allowed"),
        "{err}"
    );
    assert!(!s3.create_bucket("out").join("elsewhere").exists());
    // The worker token does not open the job API.
    let (ok, _, err) = run(&["status", "--coordinator", url], "worker-sesame");
    assert!(!ok && err.contains("needs the cluster token"), "{err}");

    // `submit --wait --output json`: stdout is one JSON object, the final status.
    let out_uri = "s3://out/allowed/linear";
    let args = [
        "submit",
        cfg,
        out_uri,
        "--coordinator",
        url,
        "--wait",
        "--output",
        "json",
    ];
    let (ok, out, err) = run(&args, "client-sesame");
    assert!(ok, "{err}");
    let fin: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let fields = [
        "job_id",
        "state",
        "units_total",
        "units_done",
        "bytes_total",
        "bytes_done",
        "error",
        "output_uri",
        "live_workers",
        "retries",
        "resumed_units",
    ];
    for f in fields {
        assert!(fin.get(f).is_some(), "no `{f}` in {fin}");
    }
    assert_eq!(fin["state"], "succeeded", "{fin}");
    assert_eq!(fin["output_uri"], out_uri);
    assert_eq!(fin["error"], "");
    assert!(
        fin["units_total"].as_u64().unwrap() >= 1 && fin["units_done"] == fin["units_total"],
        "{fin}"
    );
    assert!(
        fin["bytes_total"].as_u64().unwrap() > 0 && fin["bytes_done"] == fin["bytes_total"],
        "{fin}"
    );
    let job = fin["job_id"].as_str().unwrap();

    // `status JOB --output json` and `status --output json` (an array).
    let (ok, out, err) = run(
        &["status", job, "--coordinator", url, "--output", "json"],
        "client-sesame",
    );
    assert!(ok, "{err}");
    let one: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for f in [
        "job_id",
        "state",
        "units_done",
        "units_total",
        "bytes_done",
        "output_uri",
    ] {
        assert_eq!(one[f], fin[f], "{f}: {one} vs {fin}");
    }
    let (ok, out, err) = run(&["status", "--coordinator", url, "--output", "json"], "client-sesame");
    assert!(ok, "{err}");
    let all: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let jobs = all.as_array().unwrap_or_else(|| panic!("not an array: {all}"));
    assert_eq!(jobs.len(), 1, "the refused submission made no job: {all}");
    assert_eq!(jobs[0]["job_id"], job);

    // The merge itself is exact.
    let got = model_files(&s3.create_bucket("out").join("allowed/linear"));
    let want = model_files(&golden().join("cases/linear_bf16/expected"));
    assert!(!want.is_empty());
    assert_same_files(&got, &want, "differs from mergekit's");
    let _ = w.kill();
    let _ = w.wait();
}
