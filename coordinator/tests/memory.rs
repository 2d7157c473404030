//! A tensor larger than a worker's memory budget merges through the cluster on S3 (s3s-fs)
//! as chunk tasks, each worker's peak resident memory (VmHWM) stays within its
//! `--memory-limit`, and the bytes equal the embedded merge. Models are uploaded through the S3
//! API, so s3s-fs keeps their ETags instead of hashing whole files on every ranged GET.

mod support;

use shardmerge_worker::storage::test_server::TestS3;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

/// Peak resident set of a live process, from `/proc/PID/status`.
fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process alive");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Base and two fine-tunes whose embedding (and untied lm_head) is 32768 x 1024 bf16 = 64 MiB
/// each: 192 MiB of embedding input per merged tensor.
fn big_vocab_models(dir: &std::path::Path) {
    let st = Command::new(bin())
        .args(["synth"])
        .arg(dir)
        .args([
            "--hidden",
            "1024",
            "--layers",
            "1",
            "--intermediate",
            "1024",
            "--vocab",
            "32768",
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tensor_larger_than_the_worker_budget_merges_within_it_on_s3() {
    const LIMIT: u64 = 96 << 20;
    let started = std::time::Instant::now();
    let s3 = TestS3::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("synth");
    big_vocab_models(&local);
    for m in ["base", "finetune-a", "finetune-b"] {
        s3.put_dir(&local.join(m), "synth", m).await;
    }
    s3.create_bucket("out");
    let limit = LIMIT.to_string();
    let coord = coordinator(&s3, &tmp.path().join("state"), &["--worker-memory-limit", &limit], None);
    let spawn = || {
        let mut cmd = Command::new(bin());
        s3_env(&mut cmd, &s3);
        cmd.args([
            "worker",
            "--coordinator",
            &coord.url,
            "-j",
            "2",
            "--memory-limit",
            &limit,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        cmd.spawn().expect("start worker")
    };
    let workers = KillOnDrop(vec![spawn(), spawn()]);
    let cfg = synth_config(tmp.path(), "s3://synth");
    println!("models uploaded after {:.1} s", started.elapsed().as_secs_f64());
    let (ok, job, err) = tokio::task::block_in_place(|| {
        client(
            &s3,
            &[
                "submit",
                cfg.to_str().unwrap(),
                "s3://out/merged",
                "--coordinator",
                &coord.url,
                "--random-seed",
                "5",
            ],
            None,
        )
    });
    assert!(ok, "{err}");
    let status = tokio::task::block_in_place(|| wait_finished(&s3, &coord.url, job.trim(), Duration::from_secs(300)));
    assert!(status.is("succeeded"), "{status}");
    println!("cluster merge done after {:.1} s", started.elapsed().as_secs_f64());
    let peaks: Vec<u64> = workers.0.iter().map(|w| vm_hwm(w.id())).collect();
    // The reference: the same merge embedded, whole tensors, no budget.
    let reference = tmp.path().join("reference");
    let local_cfg = synth_config(tmp.path(), &local.display().to_string());
    let st = Command::new(bin())
        .args(["merge", local_cfg.to_str().unwrap(), reference.to_str().unwrap()])
        .args(["--random-seed", "5", "--quiet", "--chunk-size", "0"])
        .status()
        .unwrap();
    assert!(st.success());
    let got = model_files(&s3.create_bucket("out").join("merged"));
    assert_same_files(&got, &model_files(&reference), "the budgeted cluster merge");
    for (i, peak) in peaks.iter().enumerate() {
        println!(
            "worker {i}: peak RSS {:.1} MiB (limit {} MiB)",
            *peak as f64 / 1048576.0,
            LIMIT >> 20
        );
        assert!(
            *peak <= LIMIT,
            "worker {i} peaked at {peak} bytes, above its --memory-limit of {LIMIT}"
        );
    }
}
