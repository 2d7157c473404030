//! The cluster's server subcommands, `coordinator` and `worker`, and what the client commands
//! ([`crate::client_cli`]) share with them: tokens from files or the environment, TLS trust,
//! the tokio runtime.

use anyhow::Context;
use clap::Args;
use shardmerge_coordinator::cluster::allow::{AllowList, is_loopback_url};
use shardmerge_coordinator::cluster::auth::Credentials;
use shardmerge_coordinator::cluster::metrics::CoordinatorMetrics;
use shardmerge_coordinator::cluster::{scheduler::SchedulerConfig, server, service::CoordinatorOptions};
use shardmerge_worker::node::metrics::{MetricsSource, WorkerMetrics, serve_metrics};
use shardmerge_worker::node::{WorkerOptions, run_worker_with_metrics};
use shardmerge_worker::storage::Storage;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where the cluster (client) token comes from (never from argv), and TLS trust for clients.
#[derive(Debug, Args, Clone)]
pub struct TokenArgs {
    /// File holding the cluster token that clients present to the job API (else the
    /// SHARDMERGE_TOKEN environment variable).
    #[arg(long, env = "SHARDMERGE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate that signed the coordinator's TLS certificate (for https:// URLs).
    #[arg(long, env = "SHARDMERGE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl TokenArgs {
    /// The token, if configured.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        read_secret(self.token_file.as_deref(), "SHARDMERGE_TOKEN")
    }

    /// The CA certificate, if configured.
    pub fn ca(&self) -> anyhow::Result<Option<Vec<u8>>> {
        read_ca(self.tls_ca.as_deref())
    }
}

/// A secret from `file` (trimmed; an empty file is an error), else from the environment
/// variable `var` (unset or empty: none).
fn read_secret(file: Option<&Path>, var: &str) -> anyhow::Result<Option<String>> {
    if let Some(f) = file {
        let t = std::fs::read_to_string(f).with_context(|| format!("reading token file {}", f.display()))?;
        let t = t.trim();
        anyhow::ensure!(!t.is_empty(), "token file {} is empty", f.display());
        return Ok(Some(t.to_string()));
    }
    Ok(std::env::var(var).ok().filter(|t| !t.is_empty()))
}

fn read_ca(path: Option<&Path>) -> anyhow::Result<Option<Vec<u8>>> {
    path.map(|p| std::fs::read(p).with_context(|| format!("reading CA certificate {}", p.display())))
        .transpose()
}

/// `shardmerge coordinator`.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// Address to listen on for gRPC (workers and clients).
    #[arg(long, default_value = "127.0.0.1:7070", env = "SHARDMERGE_LISTEN")]
    pub listen: String,
    /// Directory for the job journal (resume after a restart).
    #[arg(long, default_value = "shardmerge-state", env = "SHARDMERGE_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Lease length in seconds (workers heartbeat at a fifth of it).
    #[arg(long, default_value_t = 10.0, env = "SHARDMERGE_LEASE_SECS")]
    pub lease_secs: f64,
    /// A worker silent this long is considered gone.
    #[arg(long, default_value_t = 10.0, env = "SHARDMERGE_WORKER_TIMEOUT_SECS")]
    pub worker_timeout_secs: f64,
    /// A job with no live worker for this long fails.
    #[arg(long, default_value_t = 60.0, env = "SHARDMERGE_NO_WORKER_GRACE_SECS")]
    pub no_worker_grace_secs: f64,
    /// Attempts per unit before the job fails: transient failures, and leases lost with their
    /// worker (a unit that gets its worker OOM-killed fails the job instead of killing every
    /// worker in turn).
    #[arg(long, default_value_t = 4, env = "SHARDMERGE_MAX_ATTEMPTS")]
    pub max_attempts: u32,
    /// Jobs running at once; more wait as `queued` and start in submission order (also after
    /// a restart). Running jobs share the workers in turns. Default: no limit.
    #[arg(long, env = "SHARDMERGE_MAX_RUNNING_JOBS")]
    pub max_running_jobs: Option<usize>,
    /// How long a finished job stays queryable with `status`; then it is forgotten and its
    /// journal file removed.
    #[arg(long, default_value_t = 86400.0, env = "SHARDMERGE_JOB_RETENTION_SECS")]
    pub job_retention_secs: f64,
    /// Target bytes of output per work unit of new jobs (k/m/b suffixes). A job keeps the unit
    /// size it was submitted with across restarts, so changing this affects new jobs only.
    #[arg(long, default_value = "64m", value_parser = shardmerge_coordinator::plan::layout::parse_size, env = "SHARDMERGE_UNIT_SIZE")]
    pub unit_size: u64,
    /// Output bytes above which tensors of new jobs are split into chunk tasks that run on
    /// any worker (k/m/b suffixes; 0 never splits). Journaled with each job.
    #[arg(long, default_value = "128m", value_parser = shardmerge_coordinator::plan::layout::parse_size, env = "SHARDMERGE_CHUNK_SIZE")]
    pub chunk_size: u64,
    /// Memory budget of the workers that new jobs are planned for (k/m/b suffixes): larger
    /// tasks are split into chunks that fit, work units stay within a quarter of it, and a job
    /// that cannot fit is refused at submission naming the tensor. Journaled with each job.
    /// Default: no limit.
    #[arg(long, value_parser = shardmerge_coordinator::plan::layout::parse_size, env = "SHARDMERGE_WORKER_MEMORY_LIMIT")]
    pub worker_memory_limit: Option<u64>,
    /// PEM certificate chain: serve gRPC over TLS (with --tls-key).
    #[arg(long, env = "SHARDMERGE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "SHARDMERGE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9090); off by default.
    #[arg(long, env = "SHARDMERGE_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// File holding the worker token that workers present to the worker API (else the
    /// SHARDMERGE_WORKER_TOKEN environment variable); must differ from the cluster token.
    #[arg(long, env = "SHARDMERGE_WORKER_TOKEN_FILE")]
    pub worker_token_file: Option<PathBuf>,
    /// Serve an API whose token is not set even on a non-loopback address (trusted, isolated
    /// networks only); by default the coordinator then refuses to start.
    #[arg(long, env = "SHARDMERGE_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// Models and outputs of submissions must be under one of these: s3://bucket[/prefix] or a
    /// local directory (repeatable; the environment variable is comma-separated). Default: any
    /// S3 location, and local paths only when listening on a loopback address.
    #[arg(
        long = "allow-location",
        env = "SHARDMERGE_ALLOW_LOCATION",
        value_name = "LOC",
        value_delimiter = ','
    )]
    pub allow_location: Vec<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub token: TokenArgs,
}

/// `shardmerge worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Coordinator URL.
    #[arg(long, default_value = "http://127.0.0.1:7070", env = "SHARDMERGE_COORDINATOR")]
    pub coordinator: String,
    /// Units executed concurrently.
    #[arg(long, default_value_t = 1, env = "SHARDMERGE_SLOTS")]
    pub slots: usize,
    /// Threads for merge kernels (default: all cores).
    #[arg(short = 'j', long = "num-threads", env = "SHARDMERGE_NUM_THREADS")]
    pub num_threads: Option<usize>,
    /// Name shown in logs.
    #[arg(long, env = "SHARDMERGE_WORKER_NAME")]
    pub name: Option<String>,
    /// Memory budget (k/m/b suffixes): a leased unit starts only while its planned memory
    /// (output buffer, prefetch window, largest task) fits, and prefetching uses at most a
    /// quarter of it. Default: 80% of the container's cgroup memory limit, else of the
    /// machine's RAM. Plan jobs for it with the coordinator's --memory-limit.
    #[arg(long, value_parser = shardmerge_coordinator::plan::layout::parse_size, env = "SHARDMERGE_MEMORY_LIMIT")]
    pub memory_limit: Option<u64>,
    /// On SIGTERM, seconds to keep heartbeating while active units finish (keep it below the
    /// pod's termination grace period).
    #[arg(long, default_value_t = 25.0, env = "SHARDMERGE_DRAIN_SECS")]
    pub drain_secs: f64,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9090); off by default, so
    /// that several workers on one host do not clash over a port.
    #[arg(long, env = "SHARDMERGE_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// File holding the worker token (else the SHARDMERGE_WORKER_TOKEN environment variable).
    #[arg(long, env = "SHARDMERGE_WORKER_TOKEN_FILE")]
    pub worker_token_file: Option<PathBuf>,
    /// PEM CA certificate that signed the coordinator's TLS certificate (for https:// URLs).
    #[arg(long, env = "SHARDMERGE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Locations this worker reads and writes: s3://bucket[/prefix] or a local directory
    /// (repeatable; the environment variable is comma-separated); a unit naming anything else
    /// fails. Default: any S3 location, and local paths only with a loopback coordinator URL.
    #[arg(
        long = "allow-location",
        env = "SHARDMERGE_ALLOW_LOCATION",
        value_name = "LOC",
        value_delimiter = ','
    )]
    pub allow_location: Vec<String>,
}

/// A multi-threaded tokio runtime for one command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Binds `addr` and serves `source` there until the process exits; prints the address.
async fn start_metrics(who: &str, addr: &str, source: Arc<dyn MetricsSource>) -> anyhow::Result<()> {
    let (listener, bound) = server::bind(addr)
        .await
        .with_context(|| format!("metrics endpoint: listening on {addr}"))?;
    eprintln!("shardmerge {who} metrics on http://{bound}/metrics");
    tokio::spawn(serve_metrics(listener, source, std::future::pending()));
    Ok(())
}

/// Runs `shardmerge coordinator`.
pub fn coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    let credentials = Credentials {
        client: args.token.token()?,
        worker: read_secret(args.worker_token_file.as_deref(), "SHARDMERGE_WORKER_TOKEN")?,
        allow_unauthenticated: args.allow_unauthenticated,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(server::TlsIdentity {
            cert_chain: std::fs::read(c).with_context(|| format!("reading {}", c.display()))?,
            key: std::fs::read(k).with_context(|| format!("reading {}", k.display()))?,
        }),
        _ => None,
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let (listener, addr) = server::bind(&args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        credentials.validate(addr)?;
        let allow = AllowList::new(&args.allow_location, addr.ip().is_loopback())?;
        let metrics = CoordinatorMetrics::new();
        if let Some(addr) = &args.metrics_listen {
            start_metrics("coordinator", addr, metrics.clone()).await?;
        }
        let secs = Duration::from_secs_f64;
        let opts = CoordinatorOptions {
            state_dir: args.state_dir.clone(),
            scheduler: SchedulerConfig {
                lease: secs(args.lease_secs),
                heartbeat: secs(args.lease_secs / 5.0),
                worker_timeout: secs(args.worker_timeout_secs),
                no_worker_grace: secs(args.no_worker_grace_secs),
                max_attempts: args.max_attempts,
                max_running_jobs: args.max_running_jobs.filter(|&n| n > 0),
                ..SchedulerConfig::default()
            },
            unit_target: args.unit_size,
            chunk_size: args.chunk_size,
            memory_limit: args.worker_memory_limit,
            retention: secs(args.job_retention_secs),
            model_root: std::env::current_dir()?,
            metrics: Some(metrics),
            allow,
        };
        eprintln!(
            "shardmerge coordinator listening on {addr} (state in {})",
            args.state_dir.display()
        );
        let options = server::ServeOptions {
            coordinator: opts,
            storage: Storage::from_env(),
            credentials,
            tls,
        };
        server::serve(options, listener, shutdown_signal()).await?;
        Ok(())
    })
}

/// 80% of the cgroup (v2) memory limit, else of `MemTotal`; `None` if neither is readable.
fn default_memory_limit() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let ram = || {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    cgroup.or_else(ram).map(|b| b / 5 * 4)
}

/// Runs `shardmerge worker`.
pub fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let token = read_secret(args.worker_token_file.as_deref(), "SHARDMERGE_WORKER_TOKEN")?;
    let tls_ca = read_ca(args.tls_ca.as_deref())?;
    let allow = AllowList::new(&args.allow_location, is_loopback_url(&args.coordinator))?;
    let rt = runtime()?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("worker-{}", std::process::id()));
    rt.block_on(async move {
        let metrics = WorkerMetrics::new();
        if let Some(addr) = &args.metrics_listen {
            start_metrics("worker", addr, metrics.clone()).await?;
        }
        let opts = WorkerOptions {
            coordinator: args.coordinator,
            token,
            slots: args.slots.max(1),
            threads: args.num_threads,
            name,
            tls_ca,
            drain: Duration::from_secs_f64(args.drain_secs),
            allow,
            memory_limit: args.memory_limit.or_else(default_memory_limit),
        };
        run_worker_with_metrics(opts, metrics, shutdown_signal()).await?;
        Ok(())
    })
}
