//! The cluster subcommands of the CLI: `coordinator`, `worker`, `submit`, `status`, `cancel`.

use crate::cluster::metrics::CoordinatorMetrics;
use crate::cluster::{client, scheduler::SchedulerConfig, server, service::CoordinatorOptions};
use anyhow::Context;
use clap::Args;
use shardmerge_proto::v1::{JobState, MergeOptions};
use shardmerge_worker::node::metrics::{MetricsSource, WorkerMetrics, serve_metrics};
use shardmerge_worker::node::{WorkerOptions, run_worker_with_metrics};
use shardmerge_worker::storage::Storage;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where the token comes from (never from argv), and TLS trust for clients.
#[derive(Debug, Args, Clone)]
pub struct TokenArgs {
    /// File holding the shared cluster token (else the SHARDMERGE_TOKEN environment variable).
    #[arg(long, env = "SHARDMERGE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate that signed the coordinator's TLS certificate (for https:// URLs).
    #[arg(long, env = "SHARDMERGE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl TokenArgs {
    /// The token, if configured.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(f) = &self.token_file {
            let t = std::fs::read_to_string(f).with_context(|| format!("reading token file {}", f.display()))?;
            return Ok(Some(t.trim().to_string()));
        }
        Ok(std::env::var("SHARDMERGE_TOKEN").ok().filter(|t| !t.is_empty()))
    }

    /// The CA certificate, if configured.
    pub fn ca(&self) -> anyhow::Result<Option<Vec<u8>>> {
        self.tls_ca
            .as_ref()
            .map(|p| std::fs::read(p).with_context(|| format!("reading CA certificate {}", p.display())))
            .transpose()
    }
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
    /// Attempts per unit before a transient failure fails the job.
    #[arg(long, default_value_t = 4, env = "SHARDMERGE_MAX_ATTEMPTS")]
    pub max_attempts: u32,
    /// Target bytes of output per work unit (k/m/b suffixes).
    #[arg(long, default_value = "64m", value_parser = crate::plan::layout::parse_size, env = "SHARDMERGE_UNIT_SIZE")]
    pub unit_size: u64,
    /// PEM certificate chain: serve gRPC over TLS (with --tls-key).
    #[arg(long, env = "SHARDMERGE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "SHARDMERGE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9090); off by default.
    #[arg(long, env = "SHARDMERGE_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
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
    /// On SIGTERM, seconds to keep heartbeating while active units finish (keep it below the
    /// pod's termination grace period).
    #[arg(long, default_value_t = 25.0, env = "SHARDMERGE_DRAIN_SECS")]
    pub drain_secs: f64,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9090); off by default, so
    /// that several workers on one host do not clash over a port.
    #[arg(long, env = "SHARDMERGE_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub token: TokenArgs,
}

/// `shardmerge submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// mergekit YAML configuration.
    pub config: PathBuf,
    /// Output: a directory path, file://, or s3://bucket/prefix.
    pub out_uri: String,
    /// Coordinator URL.
    #[arg(long, default_value = "http://127.0.0.1:7070", env = "SHARDMERGE_COORDINATOR")]
    pub coordinator: String,
    /// Wait for the job to finish, with a progress bar on a terminal.
    #[arg(long)]
    pub wait: bool,
    /// Seed for random methods.
    #[arg(long, env = "SHARDMERGE_RANDOM_SEED")]
    pub random_seed: Option<u64>,
    /// Maximum bytes per output shard (k/m/b suffixes).
    #[arg(long, default_value = "5B", value_parser = crate::plan::layout::parse_size)]
    pub out_shard_size: u64,
    /// Do not copy tokenizer files.
    #[arg(long)]
    pub no_copy_tokenizer: bool,
    /// Do not write README.md and mergekit_config.yml.
    #[arg(long)]
    pub no_write_model_card: bool,
    /// Allow merging different architectures.
    #[arg(long)]
    pub allow_crimes: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub token: TokenArgs,
}

/// `shardmerge status` / `shardmerge cancel`.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// Job id (all jobs when omitted, for `status`).
    pub job: Option<String>,
    /// Coordinator URL.
    #[arg(long, default_value = "http://127.0.0.1:7070", env = "SHARDMERGE_COORDINATOR")]
    pub coordinator: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub token: TokenArgs,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
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
    let token = args.token.token()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some((
            std::fs::read(c).with_context(|| format!("reading {}", c.display()))?,
            std::fs::read(k).with_context(|| format!("reading {}", k.display()))?,
        )),
        _ => None,
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let (listener, addr) = server::bind(&args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
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
            },
            unit_target: args.unit_size,
            model_root: std::env::current_dir()?,
            metrics: Some(metrics),
        };
        eprintln!(
            "shardmerge coordinator listening on {addr} (state in {})",
            args.state_dir.display()
        );
        server::serve(opts, Storage::from_env(), token, tls, listener, shutdown_signal()).await?;
        Ok(())
    })
}

/// Runs `shardmerge worker`.
pub fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let token = args.token.token()?;
    let tls_ca = args.token.ca()?;
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
        };
        run_worker_with_metrics(opts, metrics, shutdown_signal()).await?;
        Ok(())
    })
}

/// Runs `shardmerge submit`.
pub fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let yaml = std::fs::read_to_string(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let token = args.token.token()?;
    let ca = args.token.ca()?;
    let rt = runtime()?;
    rt.block_on(async move {
        let mut c = client::connect(&args.coordinator, token, ca.as_deref()).await?;
        let options = MergeOptions {
            random_seed: args.random_seed,
            out_shard_size: args.out_shard_size,
            copy_tokenizer: !args.no_copy_tokenizer,
            write_model_card: !args.no_write_model_card,
            allow_crimes: args.allow_crimes,
        };
        let name = args.config.display().to_string();
        let (job, warnings) = client::submit(&mut c, yaml, name, args.out_uri.clone(), options).await?;
        for w in warnings {
            eprintln!("warning: {w}");
        }
        println!("{job}");
        if args.wait {
            let s = client::wait(&mut c, &job, std::io::stderr().is_terminal()).await?;
            eprintln!("{}", client::describe(&s));
            if s.state != JobState::Succeeded as i32 {
                anyhow::bail!("job {job} {}: {}", client::state_name(s.state), s.error);
            }
        }
        Ok(())
    })
}

/// Runs `shardmerge status`.
pub fn status(args: JobArgs) -> anyhow::Result<()> {
    let token = args.token.token()?;
    let ca = args.token.ca()?;
    runtime()?.block_on(async move {
        let mut c = client::connect(&args.coordinator, token, ca.as_deref()).await?;
        for s in client::status(&mut c, args.job).await? {
            println!("{}", client::describe(&s));
        }
        Ok(())
    })
}

/// Runs `shardmerge cancel`.
pub fn cancel(args: JobArgs) -> anyhow::Result<()> {
    let token = args.token.token()?;
    let ca = args.token.ca()?;
    let job = args.job.clone().context("which job? `shardmerge cancel JOB`")?;
    runtime()?.block_on(async move {
        let mut c = client::connect(&args.coordinator, token, ca.as_deref()).await?;
        println!("{}", client::describe(&client::cancel(&mut c, job).await?));
        Ok(())
    })
}
