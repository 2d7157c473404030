//! The `shardmerge` command line: `merge` (a drop-in for `mergekit-yaml`), `plan` (a dry run
//! from headers only) and `demo`.

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use shardmerge_coordinator::plan::layout::parse_size;
use shardmerge_coordinator::{MergeOptions, OutputOptions, RunOptions};
use std::io::IsTerminal;
use std::path::PathBuf;

/// Merge large language models, mergekit-compatible, bit-exact and fast.
#[derive(Debug, Parser)]
#[command(name = "shardmerge", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    /// Increase log verbosity (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log format for machines: `text` (default) or `json`.
    #[arg(long, global = true, default_value = "text", env = "SHARDMERGE_LOG_FORMAT")]
    pub log_format: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "Examples:
  shardmerge merge config.yml ./merged --random-seed 42     # like mergekit-yaml
  shardmerge plan config.yml                                  # what would happen, from headers only
  shardmerge demo                                             # tiny synthetic models, two AutoMerger recipes";

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Merge models as described by a mergekit YAML config (drop-in for `mergekit-yaml`).
    Merge(MergeArgs),
    /// Dry run: read only headers and print tasks, bytes, shard layout and peak memory.
    Plan(PlanArgs),
    /// Run a multi-document YAML of merges that feed each other (drop-in for `mergekit-multi`).
    Multi(crate::multi_cli::MultiArgs),
    /// AutoMerger's loop as a reproducible campaign of merges, recorded in PREFIX/campaign.jsonl.
    Automerge(crate::campaign_cli::AutomergeArgs),
    /// Work with a campaign's dataset (`report`).
    Campaign(crate::campaign_cli::CampaignArgs),
    /// Generate small synthetic Llama-shaped models and merge them with AutoMerger's recipes.
    Demo(DemoArgs),
    /// Write a synthetic Llama-shaped model family (base, finetune-a, finetune-b) for benchmarks.
    Synth(SynthArgs),
    /// Run a cluster coordinator (gRPC job and worker APIs, journal for resume).
    Coordinator(crate::cluster_cli::CoordinatorArgs),
    /// Run a cluster worker that leases work from a coordinator.
    Worker(crate::cluster_cli::WorkerArgs),
    /// Submit a merge to a coordinator (optionally wait for it).
    Submit(crate::client_cli::SubmitArgs),
    /// Show the status of one job or all jobs.
    Status(crate::client_cli::JobArgs),
    /// Cancel a job (its partial output is discarded).
    Cancel(crate::client_cli::JobArgs),
}

/// `shardmerge synth`.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output directory (gets base/, finetune-a/, finetune-b/).
    pub dir: PathBuf,
    /// Hidden size.
    #[arg(long, default_value_t = 2048)]
    pub hidden: u64,
    /// Decoder layers.
    #[arg(long, default_value_t = 8)]
    pub layers: u64,
    /// MLP intermediate size.
    #[arg(long, default_value_t = 5632)]
    pub intermediate: u64,
    /// Vocabulary size.
    #[arg(long, default_value_t = 32000)]
    pub vocab: u64,
}

/// Flags that shape any merge's output, shared by `merge`, `plan` and `submit`.
#[derive(Debug, Args, Clone)]
pub struct JobFlags {
    /// Seed for random methods (DARE). Wins over `random_seed:` in the YAML.
    #[arg(long, env = "SHARDMERGE_RANDOM_SEED")]
    pub random_seed: Option<u64>,
    /// Maximum bytes per output shard; accepts k/m/b suffixes (powers of 1000), like mergekit.
    #[arg(long, default_value = "5B", value_parser = parse_size, env = "SHARDMERGE_OUT_SHARD_SIZE")]
    pub out_shard_size: u64,
    /// Allow merging models whose architectures differ.
    #[arg(long)]
    pub allow_crimes: bool,
    /// Without `tokenizer_source`/`tokenizer`, merge embeddings and lm_head of models with
    /// different vocabulary sizes by keeping the first rows common to all (mergekit 0.1.5's
    /// flag; config.json and the tokenizer stay the donor's, so rows past the smallest
    /// vocabulary are dropped and ids may no longer match their tokens).
    #[arg(long)]
    pub unsafe_truncate_embeddings: bool,
}

/// Flags shared by `merge`, `multi` and `plan`: the job flags plus how the merge runs here.
#[derive(Debug, Args, Clone)]
pub struct CommonArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub job: JobFlags,
    /// Split every tensor with more output bytes than this into chunk tasks that run in
    /// parallel with bounded memory, with exactly the bytes of the whole-tensor merge (k/m/b
    /// suffixes; 0 never splits).
    #[arg(long, default_value = "128m", value_parser = parse_size, env = "SHARDMERGE_CHUNK_SIZE")]
    pub chunk_size: u64,
    /// Memory budget of the merge (k/m/b suffixes): tensors whose tasks would need more are
    /// split into smaller chunks, at most this much memory runs at once, and a merge that cannot
    /// fit fails at plan time naming the tensor. Default: no limit.
    #[arg(long, value_parser = parse_size, env = "SHARDMERGE_MEMORY_LIMIT")]
    pub memory_limit: Option<u64>,
    /// Number of in-process workers (concurrent tasks).
    #[arg(long, default_value_t = 2, env = "SHARDMERGE_WORKERS")]
    pub workers: usize,
}

/// What is written beside the shards, shared by `merge` and `submit`.
#[derive(Debug, Args, Clone)]
pub struct OutputFlags {
    /// Copy the donor model's tokenizer files (default).
    #[arg(long, overrides_with = "no_copy_tokenizer")]
    pub copy_tokenizer: bool,
    /// Do not copy tokenizer files.
    #[arg(long)]
    pub no_copy_tokenizer: bool,
    /// Write README.md and mergekit_config.yml (default).
    #[arg(long, overrides_with = "no_write_model_card")]
    pub write_model_card: bool,
    /// Do not write README.md and mergekit_config.yml.
    #[arg(long)]
    pub no_write_model_card: bool,
}

impl OutputFlags {
    /// The library's output switches.
    pub fn options(&self) -> OutputOptions {
        OutputOptions {
            copy_tokenizer: !self.no_copy_tokenizer,
            write_model_card: !self.no_write_model_card,
        }
    }
}

/// How `submit`, `status`, `cancel` and `multi` print their results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable lines (the default).
    Text,
    /// JSON on stdout for scripts: one object per job (an array for `status` without JOB), or
    /// one line per stage of a multi-stage config.
    Json,
}

/// `shardmerge merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// mergekit YAML configuration.
    pub config: PathBuf,
    /// Output directory.
    pub out_path: PathBuf,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub run: MergeRunArgs,
}

/// How an embedded merge runs and what it writes beside the shards: the flags `merge` and
/// `multi` share (mergekit-multi takes mergekit-yaml's merge options).
#[derive(Debug, Args)]
pub struct MergeRunArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub output: OutputFlags,
    /// Hide progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Threads for merge kernels (default: all cores).
    #[arg(short = 'j', long = "num-threads", env = "SHARDMERGE_NUM_THREADS")]
    pub num_threads: Option<usize>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub ignored: IgnoredMergekitFlags,
}

impl MergeRunArgs {
    /// Prints a note for each given mergekit flag that has no effect here, and refuses
    /// `--no-safe-serialization` (shardmerge writes nothing but safetensors).
    pub fn check(&self) -> anyhow::Result<()> {
        for note in self.ignored.notes() {
            eprintln!("{note}");
        }
        if self.ignored.no_safe_serialization {
            anyhow::bail!("--no-safe-serialization is not supported: shardmerge writes safetensors only");
        }
        Ok(())
    }

    /// The library's options for an embedded merge (a progress bar only on a terminal).
    pub fn options(&self) -> MergeOptions {
        let common = &self.common;
        MergeOptions {
            random_seed: common.job.random_seed,
            out_shard_size: common.job.out_shard_size,
            chunk_size: common.chunk_size,
            memory_limit: common.memory_limit,
            output: self.output.options(),
            allow_crimes: common.job.allow_crimes,
            unsafe_truncate_embeddings: common.job.unsafe_truncate_embeddings,
            run: RunOptions {
                workers: common.workers,
                threads: self.num_threads,
                progress: !self.quiet && std::io::stderr().is_terminal(),
                shuffle: None,
            },
            model_root: None,
        }
    }
}

/// mergekit flags that mean nothing here; accepted so existing command lines keep working.
#[derive(Debug, Args, Default)]
pub struct IgnoredMergekitFlags {
    /// (mergekit) ignored: shardmerge runs on CPU.
    #[arg(long, hide = true)]
    pub cuda: bool,
    /// (mergekit) ignored.
    #[arg(long, hide = true)]
    pub lazy_unpickle: bool,
    /// (mergekit) ignored: memory is bounded by design.
    #[arg(long, hide = true)]
    pub low_cpu_memory: bool,
    /// (mergekit) ignored.
    #[arg(long, hide = true)]
    pub read_to_gpu: bool,
    /// (mergekit) ignored.
    #[arg(long, hide = true)]
    pub multi_gpu: bool,
    /// (mergekit) ignored.
    #[arg(long, hide = true)]
    pub gpu_rich: bool,
    /// (mergekit) ignored: writes are always concurrent.
    #[arg(long, hide = true)]
    pub async_write: bool,
    /// (mergekit) ignored.
    #[arg(long, hide = true)]
    pub write_threads: Option<usize>,
    /// (mergekit) ignored.
    #[arg(long, hide = true)]
    pub clone_tensors: bool,
    /// (mergekit) ignored.
    #[arg(long, hide = true)]
    pub trust_remote_code: bool,
    /// (mergekit) ignored.
    #[arg(long, hide = true)]
    pub transformers_cache: Option<String>,
    /// (mergekit) ignored.
    #[arg(long, hide = true)]
    pub lora_merge_cache: Option<String>,
    /// (mergekit) ignored.
    #[arg(long, hide = true)]
    pub lora_merge_dtype: Option<String>,
    /// (mergekit) ignored: shardmerge runs on CPU.
    #[arg(long, hide = true)]
    pub device: Option<String>,
    /// (mergekit) safetensors output is the only format.
    #[arg(long, hide = true)]
    pub safe_serialization: bool,
    /// (mergekit) not supported: shardmerge only writes safetensors.
    #[arg(long, hide = true)]
    pub no_safe_serialization: bool,
}

impl IgnoredMergekitFlags {
    /// One note per given flag that has no effect here.
    pub fn notes(&self) -> Vec<String> {
        let mut v = Vec::new();
        let flags = [
            ("--cuda", self.cuda),
            ("--lazy-unpickle", self.lazy_unpickle),
            ("--low-cpu-memory", self.low_cpu_memory),
            ("--read-to-gpu", self.read_to_gpu),
            ("--multi-gpu", self.multi_gpu),
            ("--gpu-rich", self.gpu_rich),
            ("--async-write", self.async_write),
            ("--write-threads", self.write_threads.is_some()),
            ("--clone-tensors", self.clone_tensors),
            ("--trust-remote-code", self.trust_remote_code),
            ("--transformers-cache", self.transformers_cache.is_some()),
            ("--lora-merge-cache", self.lora_merge_cache.is_some()),
            ("--lora-merge-dtype", self.lora_merge_dtype.is_some()),
            ("--device", self.device.is_some()),
            ("--safe-serialization", self.safe_serialization),
        ];
        for (name, set) in flags {
            if set {
                v.push(format!("note: {name} is a mergekit flag with no effect in shardmerge (CPU, bounded memory, safetensors output); ignored"));
            }
        }
        v
    }
}

/// `shardmerge plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// mergekit YAML configuration.
    pub config: PathBuf,
    /// Output directory the plan is made for (only names are used).
    #[arg(default_value = "./merged")]
    pub out_path: PathBuf,
    /// `json`: one JSON object on stdout (method, models, seed, task counts, bytes to read and
    /// write, shards, planned memory, warnings) instead of the summary.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
}

/// `shardmerge demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to put the synthetic models and the merged outputs.
    #[arg(long, default_value = "demo-output")]
    pub dir: PathBuf,
    /// Number of in-process workers.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Hide progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs the CLI with already-parsed arguments.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Merge(args) => run_merge(args),
        Command::Plan(args) => run_plan(args),
        Command::Multi(args) => crate::multi_cli::run(args),
        Command::Automerge(args) => crate::campaign_cli::automerge(args),
        Command::Campaign(args) => crate::campaign_cli::campaign(args),
        Command::Demo(args) => Ok(shardmerge_coordinator::demo::run(
            &args.dir,
            args.workers,
            !args.quiet && std::io::stderr().is_terminal(),
        )?),
        Command::Coordinator(args) => crate::cluster_cli::coordinator(args),
        Command::Worker(args) => crate::cluster_cli::worker(args),
        Command::Submit(args) => crate::client_cli::submit(args),
        Command::Status(args) => crate::client_cli::status(args),
        Command::Cancel(args) => crate::client_cli::cancel(args),
        Command::Synth(args) => {
            let spec = shardmerge_coordinator::demo::SynthSpec {
                vocab: args.vocab,
                hidden: args.hidden,
                intermediate: args.intermediate,
                layers: args.layers,
                dtype: shardmerge_worker::safetensors_io::Dtype::BF16,
            };
            for p in shardmerge_coordinator::demo::write_family(&spec, &args.dir)? {
                println!("{}", p.display());
            }
            Ok(())
        }
    }
}

fn run_merge(args: MergeArgs) -> anyhow::Result<()> {
    args.run.check()?;
    let opts = args.run.options();
    let config = shardmerge_coordinator::load_config(&args.config)?;
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    let report = shardmerge_coordinator::merge_config(&config, &args.out_path, &opts)
        .with_context(|| format!("merging {} into {}", args.config.display(), args.out_path.display()))?;
    if !args.run.quiet {
        let s = &report.stats;
        eprintln!(
            "merged {} tensors into {} ({} shard{}, {:.1} MB written, {:.1} MB read) in {:.2}s",
            s.tasks,
            args.out_path.display(),
            report.plan.proto.shards.len(),
            if report.plan.proto.shards.len() == 1 { "" } else { "s" },
            s.bytes_written as f64 / 1e6,
            s.bytes_read as f64 / 1e6,
            s.elapsed.as_secs_f64()
        );
    }
    Ok(())
}

fn run_plan(args: PlanArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let config = shardmerge_coordinator::load_config(&args.config)?;
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    let opts = MergeOptions {
        random_seed: args.common.job.random_seed,
        out_shard_size: args.common.job.out_shard_size,
        chunk_size: args.common.chunk_size,
        memory_limit: args.common.memory_limit,
        allow_crimes: args.common.job.allow_crimes,
        unsafe_truncate_embeddings: args.common.job.unsafe_truncate_embeddings,
        ..MergeOptions::default()
    };
    let plan = shardmerge_coordinator::plan_config(&config, &args.out_path, &opts)?;
    if args.output == OutputFormat::Json {
        println!("{}", plan_json(&plan, args.common.workers));
        return Ok(());
    }
    print!("{}", describe_plan(&plan, args.common.workers));
    println!("planned in {:.3}s from headers only", started.elapsed().as_secs_f64());
    Ok(())
}

/// A plan for scripts: the numbers of [`describe_plan`] as one JSON object.
pub fn plan_json(plan: &shardmerge_coordinator::Plan, workers: usize) -> serde_json::Value {
    let p = &plan.proto;
    let chunk_tasks = p.tasks.iter().filter(|t| t.chunk.is_some()).count();
    let shards: Vec<serde_json::Value> = p
        .shards
        .iter()
        .map(|sh| {
            serde_json::json!({
                "file_name": sh.file_name,
                "tensors": sh.tensors.len(),
                "bytes": sh.total_bytes,
                "header_bytes": sh.header.len(),
            })
        })
        .collect();
    serde_json::json!({
        "method": plan.method.name,
        "models": plan.models.iter().map(|m| m.display.as_str()).collect::<Vec<_>>(),
        "random_seed": plan.seed.map(|(seed, _)| seed),
        "tasks": p.tasks.len(),
        "chunk_tasks": chunk_tasks,
        "bytes_to_read": p.bytes_to_read,
        "bytes_to_write": p.total_size,
        "shards": shards,
        "workers": workers,
        "peak_memory_bytes": plan.memory_budget(),
        "largest_task_bytes": plan.task_memory.iter().copied().max().unwrap_or(0),
        "warnings": plan.warnings,
    })
}

/// Human summary of a plan.
pub fn describe_plan(plan: &shardmerge_coordinator::Plan, workers: usize) -> String {
    let mut s = String::new();
    let p = &plan.proto;
    s.push_str(&format!("method:        {}\n", plan.method.name));
    s.push_str(&format!(
        "models:        {}\n",
        plan.models
            .iter()
            .map(|m| m.display.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if let Some((seed, _)) = plan.seed {
        s.push_str(&format!("random seed:   {seed}\n"));
    }
    s.push_str(&format!("tasks:         {}\n", p.tasks.len()));
    s.push_str(&format!(
        "bytes to read: {} ({:.2} GB)\n",
        p.bytes_to_read,
        p.bytes_to_read as f64 / 1e9
    ));
    s.push_str(&format!(
        "bytes to write:{} ({:.2} GB)\n",
        p.total_size,
        p.total_size as f64 / 1e9
    ));
    if let Some(v) = &plan.vocab {
        let names: Vec<String> = plan.models.iter().map(|m| m.display.clone()).collect();
        let refs: Vec<_> = plan.models.iter().map(|m| m.reference.clone()).collect();
        for line in shardmerge_coordinator::plan::vocab_rows::describe(v, &names, &refs, plan.base) {
            s.push_str(&line);
            s.push('\n');
        }
    }
    s.push_str(&format!("output shards: {}\n", p.shards.len()));
    for sh in &p.shards {
        s.push_str(&format!(
            "  {:<40} {:>6} tensors {:>14} bytes\n",
            sh.file_name,
            sh.tensors.len(),
            sh.total_bytes
        ));
    }
    let largest = plan.task_memory.iter().copied().max().unwrap_or(0);
    s.push_str(&format!(
        "peak memory:   ~{:.2} GB for kernels ({} workers; largest task {:.2} GB; budget keeps the two largest apart)\n",
        plan.memory_budget() as f64 / 1e9,
        workers,
        largest as f64 / 1e9
    ));
    for w in &plan.warnings {
        s.push_str(&format!("warning: {w}\n"));
    }
    s
}
