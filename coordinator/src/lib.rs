//! shardmerge coordinator: reads mergekit YAML configs, plans merges from safetensors headers,
//! and runs them, on in-process workers or on a gRPC cluster of worker processes.
//!
//! The entry points are [`merge_file`] (what `shardmerge merge` does), [`plan::plan`] (what
//! `shardmerge plan` prints), [`cluster::server::serve`] (a coordinator) and the worker
//! library's `node` module. The command line is the binary's (`src/bin/shardmerge/`).
#![warn(missing_docs)]

pub mod arch;
pub mod campaign;
pub mod card;
pub mod chunk_book;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod embedded;
pub mod multi;
pub mod output;
pub mod plan;
pub mod publish;
pub mod pyjson;

use shardmerge_worker::storage::{Location, Storage, StorageError};
use std::path::{Path, PathBuf};

pub use embedded::{RunOptions, RunStats};
pub use output::OutputOptions;
pub use plan::{Plan, PlanOptions};

/// Everything `shardmerge merge` can be told.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    /// Seed for random methods (wins over the YAML's `random_seed`).
    pub random_seed: Option<u64>,
    /// Maximum data bytes per output shard.
    pub out_shard_size: u64,
    /// Output bytes above which a tensor is split into chunk tasks (0: never).
    pub chunk_size: u64,
    /// Memory budget of the merge (`--memory-limit`); `None`: no limit.
    pub memory_limit: Option<u64>,
    /// Output switches.
    pub output: OutputOptions,
    /// Allow different architectures.
    pub allow_crimes: bool,
    /// `--unsafe-truncate-embeddings` (see [`plan::PlanOptions`]).
    pub unsafe_truncate_embeddings: bool,
    /// Runtime settings.
    pub run: RunOptions,
    /// Directory relative model paths resolve against (default: the working directory).
    pub model_root: Option<PathBuf>,
}

/// Default `--chunk-size`: tensors with more output bytes than this are split into chunk tasks.
pub const DEFAULT_CHUNK_SIZE: u64 = 128_000_000;

impl Default for MergeOptions {
    fn default() -> Self {
        Self {
            random_seed: None,
            out_shard_size: 5_000_000_000,
            chunk_size: DEFAULT_CHUNK_SIZE,
            memory_limit: None,
            output: OutputOptions {
                copy_tokenizer: true,
                write_model_card: true,
            },
            allow_crimes: false,
            unsafe_truncate_embeddings: false,
            run: RunOptions::default(),
            model_root: None,
        }
    }
}

/// Errors of a whole merge.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// The config could not be read or parsed.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Reading the config file failed.
    #[error("reading config {path}: {source}")]
    ReadConfig {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Planning failed.
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    /// Running tasks failed.
    #[error(transparent)]
    Run(#[from] embedded::RunError),
    /// Writing the output failed.
    #[error(transparent)]
    Publish(#[from] publish::PublishError),
}

/// Result of a finished merge.
#[derive(Debug)]
pub struct MergeReport {
    /// The plan that was executed.
    pub plan: Plan,
    /// Runtime statistics.
    pub stats: RunStats,
}

/// Reads and parses a config file.
pub fn load_config(path: &Path) -> Result<config::MergeConfig, MergeError> {
    if !path.is_file() {
        return Err(MergeError::ReadConfig {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such config file"),
        });
    }
    Ok(config::load_config(path)?)
}

/// Plans a parsed config for output directory `out_dir`.
pub fn plan_config(config: &config::MergeConfig, out_dir: &Path, opts: &MergeOptions) -> Result<Plan, MergeError> {
    let model_root = match &opts.model_root {
        Some(r) => r.clone(),
        None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
    };
    let popts = PlanOptions {
        out_dir: out_dir.to_path_buf(),
        out_shard_size: opts.out_shard_size,
        random_seed: opts.random_seed,
        allow_crimes: opts.allow_crimes,
        model_root,
        opener: None,
        chunk_size: opts.chunk_size,
        memory_limit: opts.memory_limit,
        unsafe_truncate_embeddings: opts.unsafe_truncate_embeddings,
    };
    Ok(plan::plan(config, &popts)?)
}

/// Merges `config` into `out_dir` on in-process workers.
pub fn merge_config(
    config: &config::MergeConfig,
    out_dir: &Path,
    opts: &MergeOptions,
) -> Result<MergeReport, MergeError> {
    let plan = plan_config(config, out_dir, opts)?;
    execute_plan(plan, config, out_dir, opts)
}

/// Runs a plan made by [`plan_config`]: prepares the staged shards, runs every task, writes
/// metadata and commits. On failure the staged data is removed and nothing that looks like a
/// complete model is left behind.
pub fn execute_plan(
    plan: Plan,
    config: &config::MergeConfig,
    out_dir: &Path,
    opts: &MergeOptions,
) -> Result<MergeReport, MergeError> {
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    let mut publishing = false;
    let result = (|| {
        embedded::prepare_output(&plan)?;
        let stats = embedded::run_tasks(&plan, &opts.run)?;
        publishing = true;
        block_on(publish_local(&plan, config, out_dir, opts.output))?;
        // The staged shards are in place: the (now empty) staging directory goes.
        output::abort(out_dir);
        Ok::<_, MergeError>(stats)
    })();
    match result {
        Ok(stats) => Ok(MergeReport { plan, stats }),
        Err(e) => {
            if publishing {
                let names: Vec<String> = plan.proto.shards.iter().map(|s| s.file_name.clone()).collect();
                let out = Location::Local(out_dir.to_path_buf());
                if let Err(u) = block_on(publish::unpublish(&Storage::from_env(), &out, &names)) {
                    tracing::warn!(error = %u, "removing a failed merge's output");
                }
            }
            output::abort(out_dir);
            Err(e)
        }
    }
}

/// Publishes the embedded runtime's staged shards and metadata at `out_dir`, through the same
/// commit path as the cluster ([`publish::publish`]).
async fn publish_local(
    plan: &Plan,
    config: &config::MergeConfig,
    out_dir: &Path,
    opts: output::OutputOptions,
) -> Result<(), publish::PublishError> {
    let st = Storage::from_env();
    let out = Location::Local(out_dir.to_path_buf());
    std::fs::create_dir_all(out_dir).map_err(|error| StorageError::Io {
        op: "create",
        uri: out_dir.display().to_string(),
        error,
    })?;
    let meta = publish::metadata(&st, plan, config, opts, out_dir).await?;
    let shards = plan
        .proto
        .shards
        .iter()
        .map(|s| publish::ShardCommit {
            name: s.file_name.clone(),
            size: s.total_bytes,
            bytes: publish::ShardBytes::Staged(PathBuf::from(&s.staging_uri)),
        })
        .collect();
    publish::publish(&st, &out, &meta, shards, publish::index(plan)).await
}

/// Runs `f` to completion on a private single-threaded runtime (the embedded runtime is
/// synchronous; storage is async). Not for use inside an async context.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a single-threaded tokio runtime")
        .block_on(f)
}

/// Reads `config_path` and merges it into `out_dir`.
pub fn merge_file(config_path: &Path, out_dir: &Path, opts: &MergeOptions) -> Result<MergeReport, MergeError> {
    let config = load_config(config_path)?;
    merge_config(&config, out_dir, opts)
}
