//! A local cluster for process-level tests: an in-process s3s-fs server over real HTTP, and
//! real `shardmerge coordinator` / `shardmerge worker` processes talking gRPC on loopback.

#![allow(dead_code)]

pub mod chaos;
pub mod chaos_output;
pub mod chaos_plan;
/// The golden suite's tokenizer comparison (`tests/src/compare.rs`, shared as source: this
/// crate cannot depend on the tests crate).
#[path = "../../../tests/src/compare.rs"]
pub mod golden_compare;

use shardmerge_worker::storage::test_server::{ACCESS_KEY, SECRET_KEY, TestS3};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_shardmerge")
}

pub fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden")
}

/// Environment pointing a process at the test S3 server.
pub fn s3_env(cmd: &mut Command, s3: &TestS3) {
    cmd.env("AWS_ENDPOINT", &s3.endpoint)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true")
        .env_remove("SHARDMERGE_TOKEN")
        .env_remove("SHARDMERGE_WORKER_TOKEN")
        .env_remove("SHARDMERGE_ALLOW_LOCATION");
}

/// A running coordinator process.
pub struct Coord {
    pub child: Child,
    pub url: String,
    pub state: PathBuf,
    /// `http://ADDR/metrics` when started with `--metrics-listen`.
    pub metrics: Option<String>,
}

impl Drop for Coord {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Child processes killed when dropped, also when a test panics (no stray workers).
pub struct KillOnDrop(pub Vec<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts a coordinator with fast timeouts; `extra` adds flags, `token` sets SHARDMERGE_TOKEN.
pub fn coordinator(s3: &TestS3, state: &Path, extra: &[&str], token: Option<&str>) -> Coord {
    coordinator_at(s3, state, "127.0.0.1:0", extra, token)
}

/// [`coordinator`] listening on `listen` (to restart one on the same port).
pub fn coordinator_at(s3: &TestS3, state: &Path, listen: &str, extra: &[&str], token: Option<&str>) -> Coord {
    let mut cmd = Command::new(bin());
    s3_env(&mut cmd, s3);
    cmd.args(["coordinator", "--listen", listen, "--state-dir"])
        .arg(state)
        .args([
            "--lease-secs",
            "2",
            "--worker-timeout-secs",
            "2",
            "--no-worker-grace-secs",
            "4",
            "--unit-size",
            "5m",
        ])
        .args(extra)
        .current_dir(golden())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(t) = token {
        cmd.env("SHARDMERGE_TOKEN", t);
    }
    let mut child = cmd.spawn().expect("start coordinator");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut metrics = None;
    let url = loop {
        let line = lines
            .next()
            .expect("coordinator exited before listening")
            .expect("read stderr");
        if let Some(rest) = line.split("metrics on ").nth(1) {
            metrics = Some(rest.trim().to_string());
        }
        if let Some(rest) = line.split("listening on ").nth(1) {
            break format!("http://{}", rest.split_whitespace().next().expect("address"));
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Coord {
        child,
        url,
        state: state.to_path_buf(),
        metrics,
    }
}

/// Starts a worker process serving metrics on a free loopback port; returns it and its
/// `http://ADDR/metrics`.
pub fn worker_with_metrics(s3: &TestS3, url: &str) -> (Child, String) {
    let mut cmd = Command::new(bin());
    s3_env(&mut cmd, s3);
    cmd.args([
        "worker",
        "--coordinator",
        url,
        "-j",
        "1",
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start worker");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let metrics = loop {
        let line = lines
            .next()
            .expect("worker exited before serving metrics")
            .expect("read stderr");
        if let Some(rest) = line.split("metrics on ").nth(1) {
            break rest.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, metrics)
}

/// GETs `url` (`http://HOST:PORT/PATH`) over plain HTTP/1.1 and returns the body; panics unless
/// the answer is 200.
pub fn scrape(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http:// URL");
    let (host, path) = rest.split_once('/').expect("a path");
    let mut s = std::net::TcpStream::connect(host).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read the response");
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The value of one series (`name` or `name{labels}`) in a Prometheus/OpenMetrics text.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{series}: {e}"))
}

/// Starts a worker process; `token` sets SHARDMERGE_WORKER_TOKEN.
pub fn worker(s3: &TestS3, url: &str, token: Option<&str>) -> Child {
    let mut cmd = Command::new(bin());
    s3_env(&mut cmd, s3);
    cmd.args(["worker", "--coordinator", url, "-j", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(t) = token {
        cmd.env("SHARDMERGE_WORKER_TOKEN", t);
    }
    cmd.spawn().expect("start worker")
}

/// Runs a CLI client command (submit/status/cancel) and returns (success, stdout, stderr).
pub fn client(s3: &TestS3, args: &[&str], token: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(bin());
    s3_env(&mut cmd, s3);
    cmd.args(args).current_dir(golden());
    if let Some(t) = token {
        cmd.env("SHARDMERGE_TOKEN", t);
    }
    let out = cmd.output().expect("run client");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A job's status as `shardmerge status JOB --output json` prints it.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// The job's id.
    pub job_id: String,
    /// `running`, `committing`, `succeeded`, `failed`, `cancelled`, ...
    pub state: String,
    /// Units settled.
    pub units_done: u64,
    /// Units planned.
    pub units_total: u64,
    /// Units taken over from the journal by a resumed coordinator.
    pub resumed: u64,
    /// Why the job failed, if it did.
    pub error: String,
    /// The JSON object, for failure messages.
    pub json: String,
}

impl Status {
    /// Parses one JSON status object; `None` if `text` is not one.
    pub fn parse(text: &str) -> Option<Status> {
        Status::from_value(&serde_json::from_str(text.trim()).ok()?)
    }

    fn from_value(v: &serde_json::Value) -> Option<Status> {
        Some(Status {
            job_id: v["job_id"].as_str()?.to_string(),
            state: v["state"].as_str()?.to_string(),
            units_done: v["units_done"].as_u64()?,
            units_total: v["units_total"].as_u64()?,
            resumed: v["resumed_units"].as_u64()?,
            error: v["error"].as_str()?.to_string(),
            json: v.to_string(),
        })
    }

    /// Whether the job is in `state`.
    pub fn is(&self, state: &str) -> bool {
        self.state == state
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.json)
    }
}

/// Every job's status from one `shardmerge status --output json` call: one `ListJobs` answer,
/// taken under one scheduler lock, so the states are a consistent snapshot (unlike one call per
/// job, between which a job can finish and the next start). `None` if the coordinator did not
/// answer.
pub fn all_statuses(s3: &TestS3, url: &str) -> Option<Vec<Status>> {
    let (ok, out, _) = client(s3, &["status", "--coordinator", url, "--output", "json"], None);
    let v: serde_json::Value = serde_json::from_str(out.trim()).ok().filter(|_| ok)?;
    v.as_array()?.iter().map(Status::from_value).collect()
}

/// Polls `shardmerge status JOB --output json` until `pred` holds on the status, up to
/// `timeout` (an unreachable coordinator is polled again).
pub fn wait_status(s3: &TestS3, url: &str, job: &str, timeout: Duration, pred: impl Fn(&Status) -> bool) -> Status {
    let start = Instant::now();
    loop {
        let (_, out, err) = client(s3, &["status", job, "--coordinator", url, "--output", "json"], None);
        if let Some(status) = Status::parse(&out)
            && pred(&status)
        {
            return status;
        }
        assert!(start.elapsed() < timeout, "timed out waiting; last status: {out}{err}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `job` has finished (succeeded, failed or cancelled), returning its last status.
pub fn wait_finished(s3: &TestS3, url: &str, job: &str, timeout: Duration) -> Status {
    wait_status(s3, url, job, timeout, |s| {
        s.is("succeeded") || s.is("failed") || s.is("cancelled")
    })
}

/// Asserts that `got` holds the same files, with the same bytes, as `reference`; a mismatch
/// names the file, followed by `what` (e.g. "differs from the embedded merge").
pub fn assert_same_files(got: &[(String, Vec<u8>)], reference: &[(String, Vec<u8>)], what: &str) {
    assert_eq!(got.len(), reference.len());
    for (g, r) in got.iter().zip(reference) {
        assert_eq!(g.0, r.0);
        assert!(g.1 == r.1, "{} {what}", g.0);
    }
}

/// Writes a config that reads models from `s3://models/` instead of `./models/`.
pub fn s3_config(case: &str, dir: &Path) -> PathBuf {
    let yaml = std::fs::read_to_string(golden().join("cases").join(case).join("config.yml")).unwrap();
    let p = dir.join(format!("{case}.yml"));
    std::fs::write(&p, yaml.replace("./models/", "s3://models/")).unwrap();
    p
}

/// Safetensors and index files of an output directory, by name.
pub fn model_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.ends_with(".safetensors") || n.ends_with(".index.json")
                })
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read(e.path()).unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Synthetic model family big enough that a merge takes a while (for kill tests).
pub fn synth_models(dir: &Path) {
    let st = Command::new(bin())
        .args(["synth"])
        .arg(dir)
        .args([
            "--hidden",
            "768",
            "--layers",
            "4",
            "--intermediate",
            "2048",
            "--vocab",
            "6000",
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
}

/// DARE-TIES over the synthetic family, reading from `prefix` (`s3://synth` or a local dir).
pub fn synth_config(dir: &Path, prefix: &str) -> PathBuf {
    let yaml = format!(
        "models:\n  - model: {prefix}/base\n  - model: {prefix}/finetune-a\n    parameters:\n      density: 0.53\n      weight: 0.6\n  - model: {prefix}/finetune-b\n    parameters:\n      density: 0.4\n      weight: 0.3\nmerge_method: dare_ties\nbase_model: {prefix}/base\nparameters:\n  int8_mask: true\ndtype: bfloat16\n"
    );
    let p = dir.join(format!(
        "synth-{}.yml",
        if prefix.starts_with("s3") { "s3" } else { "local" }
    ));
    std::fs::write(&p, yaml).unwrap();
    p
}
