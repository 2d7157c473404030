//! The chaos suite's cluster: real coordinator and worker processes that it kills (`kill -9`),
//! restarts on the same state dir and port, freezes (SIGSTOP) and thaws (SIGCONT); all of
//! them talk to the fault-injecting S3 endpoint. Job status and cancel go through the typed
//! gRPC client, riding out a coordinator that is down.

use super::bin;
use shardmerge_proto::v1::job_service_client::JobServiceClient;
use shardmerge_proto::v1::{CancelJobRequest, GetJobRequest, JobState, JobStatus};
use shardmerge_worker::storage::test_server::{ACCESS_KEY, SECRET_KEY};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lease length given to the coordinator, in seconds.
pub const LEASE_SECS: u64 = 2;
/// Lines of each process's stderr kept for failure reports.
const LOG_TAIL: usize = 40;

/// Environment pointing a process at the S3 endpoint `endpoint`.
pub fn s3_env(cmd: &mut Command, endpoint: &str) {
    cmd.env("AWS_ENDPOINT", endpoint)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true")
        .env("NO_COLOR", "1")
        .env_remove("SHARDMERGE_TOKEN")
        .env_remove("RUST_LOG");
}

/// A child process whose stderr is drained into a ring buffer; SIGCONTed and killed on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    log: Arc<Mutex<VecDeque<String>>>,
    listening: Arc<Mutex<Option<String>>>,
    pub stopped: bool,
}

impl Proc {
    fn spawn(mut cmd: Command, name: String) -> Proc {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let listening = Arc::new(Mutex::new(None));
        let (l, addr) = (log.clone(), listening.clone());
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let a = rest.split_whitespace().next().unwrap_or_default().to_string();
                    *addr.lock().unwrap() = Some(a);
                }
                let mut l = l.lock().unwrap();
                if l.len() == LOG_TAIL {
                    l.pop_front();
                }
                l.push_back(line);
            }
        });
        Proc {
            name,
            child,
            log,
            listening,
            stopped: false,
        }
    }

    /// Whether the process is still running (a stopped process is running).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `kill -9`, and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stopped = false;
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`).
    pub fn freeze(&mut self, stop: bool) {
        let sig = if stop { "-STOP" } else { "-CONT" };
        let _ = Command::new("kill").args([sig, &self.child.id().to_string()]).status();
        self.stopped = stop;
    }

    /// The last lines of its stderr.
    pub fn tail(&self) -> String {
        let l = self.log.lock().unwrap();
        format!(
            "--- {} (last {} lines) ---\n{}",
            self.name,
            l.len(),
            Vec::from(l.clone()).join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.stopped {
            self.freeze(false);
        }
        self.kill9();
    }
}

/// A coordinator and its workers, restartable on one state dir and port.
pub struct Cluster {
    endpoint: String,
    state: PathBuf,
    pub listen: String,
    pub url: String,
    pub coordinator: Option<Proc>,
    pub workers: Vec<Proc>,
    /// Coordinators that exited (killed or crashed), for failure reports.
    pub dead: Vec<Proc>,
    starts: usize,
    /// `--chunk-size` of each coordinator start in turn (the last repeats; `None`: default).
    chunk_sizes: Vec<Option<u64>>,
    /// Coordinators started so far (that came up).
    started: usize,
    rt: tokio::runtime::Handle,
}

impl Cluster {
    /// Starts a coordinator on a free port; its processes use the S3 endpoint `endpoint`, and
    /// start `i` gets `--chunk-size` `chunk_sizes[i]` (the last repeats; `None`: the default).
    pub fn start(
        endpoint: &str,
        state: &Path,
        chunk_sizes: Vec<Option<u64>>,
        rt: tokio::runtime::Handle,
    ) -> Result<Cluster, String> {
        let mut c = Cluster {
            endpoint: endpoint.to_string(),
            state: state.to_path_buf(),
            listen: "127.0.0.1:0".into(),
            url: String::new(),
            coordinator: None,
            workers: Vec::new(),
            dead: Vec::new(),
            starts: 0,
            chunk_sizes,
            started: 0,
            rt,
        };
        c.start_coordinator()?;
        c.listen = c.url.trim_start_matches("http://").to_string();
        Ok(c)
    }

    /// Starts the coordinator on `self.listen` (retrying while the port is still taken) and
    /// waits until it listens; an error carries its log. Nothing to do if one is running.
    pub fn start_coordinator(&mut self) -> Result<(), String> {
        self.check_coordinator()?;
        if self.coordinator.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let chunk_size = self.chunk_size_of_next_start();
        loop {
            self.starts += 1;
            let mut cmd = Command::new(bin());
            s3_env(&mut cmd, &self.endpoint);
            cmd.args(["coordinator", "--listen", &self.listen, "--state-dir"])
                .arg(&self.state)
                .args(["--lease-secs", &LEASE_SECS.to_string()])
                .args(["--worker-timeout-secs", "3", "--no-worker-grace-secs", "20"])
                .args(["--unit-size", "5m"]);
            if let Some(size) = chunk_size {
                cmd.args(["--chunk-size", &size.to_string()]);
            }
            let mut p = Proc::spawn(cmd, format!("coordinator #{}", self.starts));
            loop {
                let listening = p.listening.lock().unwrap().clone();
                if let Some(addr) = listening {
                    self.url = format!("http://{addr}");
                    self.coordinator = Some(p);
                    self.started += 1;
                    return Ok(());
                }
                if !p.alive() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(100)); // let the log reader catch up
            let tail = p.tail();
            let in_use = tail.contains("in use");
            p.kill9();
            self.dead.push(p);
            if !in_use || Instant::now() > deadline {
                return Err(format!("the coordinator did not come up on {}:\n{tail}", self.listen));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The `--chunk-size` the next coordinator start gets (`None`: the default).
    pub fn chunk_size_of_next_start(&self) -> Option<u64> {
        let i = self.started.min(self.chunk_sizes.len().saturating_sub(1));
        self.chunk_sizes.get(i).copied().flatten()
    }

    /// `kill -9` of the coordinator; false if none was running.
    pub fn kill_coordinator(&mut self) -> bool {
        let Some(mut p) = self.coordinator.take() else {
            return false;
        };
        p.kill9();
        self.dead.push(p);
        true
    }

    /// An error if the coordinator exited without being killed (a crash).
    pub fn check_coordinator(&mut self) -> Result<(), String> {
        if self.coordinator.as_mut().is_none_or(|p| p.alive()) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100)); // let the log reader catch up
        let p = self.coordinator.take().expect("checked above");
        let tail = p.tail();
        self.dead.push(p);
        Err(format!("the coordinator exited by itself:\n{tail}"))
    }

    /// Starts one more worker.
    pub fn add_worker(&mut self) {
        let mut cmd = Command::new(bin());
        s3_env(&mut cmd, &self.endpoint);
        cmd.args(["worker", "--coordinator", &self.url, "-j", "1"]);
        let n = self.workers.len() + 1;
        self.workers.push(Proc::spawn(cmd, format!("worker #{n}")));
    }

    /// Indices of workers that are running, and not frozen unless `frozen_too`.
    pub fn live_workers(&mut self, frozen_too: bool) -> Vec<usize> {
        (0..self.workers.len())
            .filter(|&i| self.workers[i].alive() && (frozen_too || !self.workers[i].stopped))
            .collect()
    }

    /// Thaws every frozen worker.
    pub fn thaw_all(&mut self) {
        for w in &mut self.workers {
            if w.stopped {
                w.freeze(false);
            }
        }
    }

    /// Kills every process.
    pub fn stop_all(&mut self) {
        self.thaw_all();
        for w in &mut self.workers {
            w.kill9();
        }
        self.kill_coordinator();
    }

    /// The logs of the coordinators (current and dead) and workers, for a failure report.
    pub fn logs(&self) -> String {
        let mut out: Vec<String> = self.dead.iter().map(Proc::tail).collect();
        out.extend(self.coordinator.iter().map(Proc::tail));
        out.extend(self.workers.iter().map(Proc::tail));
        out.join("\n")
    }

    /// The job's status from the coordinator, or why it could not be had.
    pub fn job(&self, job: &str) -> Result<JobStatus, String> {
        let (url, job_id) = (self.url.clone(), job.to_string());
        self.rt.block_on(async move {
            let call = async {
                let mut c = JobServiceClient::connect(url).await.map_err(|e| e.to_string())?;
                let r = c.get_job(GetJobRequest { job_id }).await;
                r.map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            };
            match tokio::time::timeout(Duration::from_secs(3), call).await {
                Ok(r) => r?
                    .into_inner()
                    .status
                    .ok_or_else(|| "no status in the reply".to_string()),
                Err(_) => Err("timed out".to_string()),
            }
        })
    }

    /// Cancels the job (one attempt); returns the status in the reply, or the error.
    pub fn cancel(&self, job: &str) -> Result<JobStatus, String> {
        let (url, job_id) = (self.url.clone(), job.to_string());
        self.rt.block_on(async move {
            let call = async {
                let mut c = JobServiceClient::connect(url).await.map_err(|e| e.to_string())?;
                let r = c.cancel_job(CancelJobRequest { job_id }).await;
                r.map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            };
            match tokio::time::timeout(Duration::from_secs(3), call).await {
                Ok(r) => r?
                    .into_inner()
                    .status
                    .ok_or_else(|| "no status in the reply".to_string()),
                Err(_) => Err("timed out".to_string()),
            }
        })
    }

    /// Polls until the job is final, up to `timeout`; returns the final status or a
    /// description of the last one seen. An error if the coordinator crashes meanwhile.
    pub fn wait_final(&mut self, job: &str, timeout: Duration) -> Result<JobStatus, String> {
        let start = Instant::now();
        let mut last = String::from("no answer");
        while start.elapsed() < timeout {
            self.check_coordinator()?;
            match self.job(job) {
                Ok(s) if is_final(&s) => return Ok(s),
                Ok(s) => last = describe(&s),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("not final after {} s; last: {last}", timeout.as_secs()))
    }

    /// Submits `config` with the CLI (`shardmerge submit`); returns the job id.
    pub fn submit(&self, config: &Path, out: &str, random_seed: u64, shard_size: &str) -> Result<String, String> {
        let o = Command::new(bin())
            .arg("submit")
            .arg(config)
            .args([
                out,
                "--coordinator",
                &self.url,
                "--random-seed",
                &random_seed.to_string(),
            ])
            .args(["--out-shard-size", shard_size])
            .env_remove("SHARDMERGE_TOKEN")
            .output()
            .map_err(|e| e.to_string())?;
        let job = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if o.status.success() && job.starts_with("job-") {
            Ok(job)
        } else {
            Err(format!("submit failed: {}{job}", String::from_utf8_lossy(&o.stderr)))
        }
    }
}

/// Whether a job API error may go away by itself (the coordinator is down or restarting).
pub fn retryable(e: &str) -> bool {
    !(e.starts_with("NotFound") || e.starts_with("InvalidArgument") || e.starts_with("FailedPrecondition"))
}

/// The job state of a status.
pub fn state(s: &JobStatus) -> JobState {
    JobState::try_from(s.state).unwrap_or(JobState::Unspecified)
}

/// Whether the job is succeeded, failed or cancelled.
pub fn is_final(s: &JobStatus) -> bool {
    matches!(state(s), JobState::Succeeded | JobState::Failed | JobState::Cancelled)
}

/// One line for a status.
pub fn describe(s: &JobStatus) -> String {
    let mut d = format!(
        "{:?} units {}/{} retries {} resumed {} workers {}",
        state(s),
        s.units_done,
        s.units_total,
        s.retries,
        s.resumed_units,
        s.live_workers
    );
    if !s.error.is_empty() {
        d.push_str(&format!(" error: {}", s.error));
    }
    d
}
