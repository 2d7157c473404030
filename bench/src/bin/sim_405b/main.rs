//! 405B-scale simulation of the coordinator: plans a 4-model DARE-TIES merge of a
//! Llama-3.1-405B-shaped model from headers alone, then drives the real scheduler and journal
//! with many simulated workers in simulated time.
//!
//! 1. Inputs: base plus three fine-tunes as sparse safetensors files (headers only; generated
//!    under `--dir`, or a temporary directory, and reused when already there).
//! 2. Submit, as `Coordinator::submit` does: the real planner (`plan_config`, headers only;
//!    tensors above `--chunk-size` split into chunk tasks, DARE's with a statistics pass), the
//!    real unit splitter (`plan_units` at `--unit-size`: statistics units and units with
//!    output) and the units' wire form (`work_unit`), every input pinned (stat) and the job
//!    record journaled (fsync).
//! 3. Dispatch ([`sim`]): `--workers` simulated workers lease, heartbeat, "run" each unit for
//!    the bytes it reads and writes / `--bandwidth`, and report (statistics units with
//!    well-formed statistics, [`stats`]); reports are fenced by the real `Scheduler`, journaled
//!    with real fsyncs (group commit) and settled, and each complete statistics pass is
//!    combined by the scheduler before the units that need it are leased.
//!
//! Reports tasks and units by kind, coordinator CPU (getrusage) of submit and dispatch, peak
//! RSS (VmHWM, reset after the inputs are written), the dispatch rate, and the simulated
//! makespan against the ideal (every byte moved, statistics reads included, / (workers x
//! bandwidth)) and the critical path. A benchmark: it asserts no timing.

mod headers;
mod report;
mod shape;
mod sim;
mod stats;
mod usage;

use anyhow::{Context, Result};
use clap::Parser;
use shardmerge_coordinator::cluster::journal::{Entry, FORMAT_VERSION, JobRecord, Journal, PinnedInput};
use shardmerge_coordinator::cluster::scheduler::{Scheduler, SchedulerConfig};
use shardmerge_coordinator::cluster::units::{UnitPlan, plan_units, work_unit};
use shardmerge_coordinator::plan::layout::parse_size;
use shardmerge_coordinator::{MergeOptions, config::parse_config, plan_config};
use shardmerge_proto::v1::{JobStatus, WorkUnit};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(about = "Plan a 405B-shaped DARE-TIES merge and dispatch it to simulated workers")]
// scripts/sim-405b.sh passes its defaults first; a later flag wins.
#[command(args_override_self = true)]
struct Args {
    /// Simulated workers (one unit at a time each).
    #[arg(long, default_value_t = 1000)]
    workers: usize,
    /// Bytes per second one worker reads plus writes (k/m/b suffixes: 200m = 200 MB/s).
    #[arg(long, default_value = "200m", value_parser = parse_size)]
    bandwidth: u64,
    /// Target output bytes per work unit (the coordinator's --unit-size).
    #[arg(long, default_value = "64m", value_parser = parse_size)]
    unit_size: u64,
    /// Output bytes above which a tensor is split into chunk tasks (the coordinator's
    /// --chunk-size; 0: never split, every tensor one task).
    #[arg(long, default_value = "128m", value_parser = parse_size)]
    chunk_size: u64,
    /// Maximum bytes per output shard (--out-shard-size).
    #[arg(long, default_value = "5B", value_parser = parse_size)]
    out_shard_size: u64,
    /// Work directory: inputs under DIR/models (reused), the journal under DIR/state (fresh
    /// every run). Default: a temporary directory, removed at the end unless --keep.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the temporary directory (and print where it is).
    #[arg(long)]
    keep: bool,
    /// Simulated time from a report to its acknowledgement (one journal group commit), ms.
    #[arg(long, default_value_t = 5.0)]
    ack_ms: f64,
    /// A worker that leased nothing asks again after this many ms (the worker's default).
    #[arg(long, default_value_t = 100.0)]
    idle_poll_ms: f64,
    /// Print the report as one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

const JOB: &str = "job-sim-1";
const SEED: u64 = 42;
const GB: f64 = 1e9;

/// Process CPU and wall time of one phase.
#[derive(Debug, Clone, Copy, Default)]
struct Phase {
    cpu: Duration,
    wall: Duration,
}

fn measure<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Phase)> {
    let (c0, w0) = (usage::process_cpu(), Instant::now());
    let r = f()?;
    let phase = Phase {
        cpu: usage::process_cpu().saturating_sub(c0),
        wall: w0.elapsed(),
    };
    Ok((r, phase))
}

/// Size and modification time of every input file the plan reads (the journal's pins).
fn pin_inputs(units: &[WorkUnit]) -> Result<Vec<PinnedInput>> {
    let uris: BTreeSet<&str> = units
        .iter()
        .flat_map(|u| &u.tasks)
        .flat_map(|t| &t.inputs)
        .filter_map(|i| i.source.as_ref().map(|s| s.uri.as_str()))
        .collect();
    uris.into_iter()
        .map(|uri| {
            let path = Path::new(uri.strip_prefix("file://").unwrap_or(uri));
            let meta = std::fs::metadata(path).with_context(|| format!("stat {uri}"))?;
            let mtime = meta.modified()?.duration_since(std::time::UNIX_EPOCH)?.as_nanos();
            Ok(PinnedInput {
                uri: uri.to_string(),
                size: meta.len(),
                version: mtime.to_string(),
            })
        })
        .collect()
}

/// Bytes a worker moves for a unit: what every task reads of its inputs (the whole tensor, or a
/// chunk task's elements; statistics units included) plus the output range.
fn moved(u: &WorkUnit) -> u64 {
    let read: u64 = u
        .tasks
        .iter()
        .flat_map(|t| t.inputs.iter().filter_map(move |i| i.source.as_ref().map(|s| (t, s))))
        .map(|(t, s)| shardmerge_worker::chunk::input_range(t, s).1)
        .sum();
    read + u.output.as_ref().map_or(0, |o| o.end - o.start)
}

/// The settle time below which a fraction `p` of the units finished.
fn quantile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).copied().unwrap_or_default()
}

fn main() -> Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.workers > 0 && args.bandwidth > 0,
        "--workers and --bandwidth must be positive"
    );
    let tmp = match &args.dir {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("sim-405b-").tempdir()?),
    };
    let root = match (&args.dir, &tmp) {
        (Some(d), _) => d.clone(),
        (None, Some(t)) => t.path().to_path_buf(),
        (None, None) => unreachable!("a temporary directory is made when --dir is absent"),
    };
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let t = Instant::now();
    let (models, generated) = headers::models(&root.join("models"))?;
    eprintln!(
        "inputs: 4 models under {} ({}, {:.1} s)",
        root.join("models").display(),
        if generated { "generated" } else { "reused" },
        t.elapsed().as_secs_f64()
    );
    let state = root.join("state");
    if state.exists() {
        std::fs::remove_dir_all(&state).with_context(|| format!("removing {}", state.display()))?;
    }
    let yaml = headers::dare_ties_yaml(&models);
    let config_path = root.join("dare-ties-405b.yml");
    std::fs::write(&config_path, &yaml)?;
    let hwm_reset = usage::reset_peak_rss();
    let rss_start = usage::rss().unwrap_or(0);

    // Coordinator start: lock the state directory, start the journal writer.
    let journal = Journal::open(&state)?;
    let mut sched = Scheduler::new(SchedulerConfig::default(), journal.epoch());

    // Submit: plan from headers, split into units, wire form, pins, job record, schedule.
    let out_dir = root.join("out");
    let (plan, plan_phase) = measure(|| {
        let config = parse_config(&yaml, &config_path)?;
        let opts = MergeOptions {
            random_seed: Some(SEED),
            out_shard_size: args.out_shard_size,
            chunk_size: args.chunk_size,
            memory_limit: None,
            model_root: Some(root.clone()),
            ..MergeOptions::default()
        };
        Ok(plan_config(&config, &out_dir, &opts)?)
    })?;
    let rss_plan = usage::peak_rss().unwrap_or(0);
    let ((units, wire), units_phase) = measure(|| {
        let units = plan_units(&plan, args.unit_size);
        let wire: Vec<WorkUnit> = units
            .iter()
            .map(|u| {
                let shard = &plan.proto.shards[u.shard];
                let uri = out_dir.join(&shard.file_name).display().to_string();
                work_unit(&plan, JOB, u, &uri, &format!("sim-upload-{}", u.shard), 0)
            })
            .collect();
        let record = JobRecord {
            format: FORMAT_VERSION,
            job_id: JOB.into(),
            config_yaml: yaml.clone(),
            config_name: "dare-ties-405b.yml".into(),
            output_uri: out_dir.display().to_string(),
            seed: Some(SEED),
            out_shard_size: args.out_shard_size,
            unit_target: args.unit_size,
            chunk_size: args.chunk_size,
            memory_limit: None,
            copy_tokenizer: true,
            write_model_card: true,
            allow_crimes: false,
            unsafe_truncate_embeddings: false,
            fingerprint: String::new(),
            inputs: pin_inputs(&wire)?,
            uploads: Vec::new(),
            shard_files: Vec::new(),
        };
        journal.submit(JOB, &Entry::Job(record)).wait_blocking()?;
        let uploads = Entry::Uploads {
            ids: (0..plan.proto.shards.len())
                .map(|s| format!("sim-upload-{s}"))
                .collect(),
            files: plan.proto.shards.iter().map(|s| s.file_name.clone()).collect(),
        };
        journal.submit(JOB, &uploads).wait_blocking()?;
        let status = JobStatus {
            job_id: JOB.into(),
            output_uri: out_dir.display().to_string(),
            ..Default::default()
        };
        sched
            .add_job(
                status,
                wire.clone(),
                units.iter().map(UnitPlan::bytes).collect(),
                HashMap::new(),
                HashMap::new(),
            )
            .map_err(anyhow::Error::msg)?;
        Ok((units, wire))
    })?;
    anyhow::ensure!(
        wire.iter().enumerate().all(|(i, u)| u.unit_id == i as u64),
        "unit ids are not their indices"
    );

    // Dispatch.
    let moved: Vec<u64> = wire.iter().map(moved).collect();
    let opts = sim::SimOptions {
        workers: args.workers,
        bandwidth: args.bandwidth as f64,
        ack: Duration::from_secs_f64(args.ack_ms / 1e3),
        idle_poll: Duration::from_secs_f64(args.idle_poll_ms / 1e3),
        heartbeat: sched.config().heartbeat,
        tick: Duration::from_millis(250),
    };
    let job = sim::SimJob {
        id: JOB,
        units: &wire,
        moved: &moved,
    };
    let writer0 = usage::thread_cpu("shardmerge-jour");
    let (outcome, dispatch_phase) = measure(|| sim::run(&mut sched, &journal, &job, &opts))?;
    let writer_cpu = usage::thread_cpu("shardmerge-jour")
        .zip(writer0)
        .map(|(b, a)| b.saturating_sub(a));
    let rss_peak = usage::peak_rss().unwrap_or(0);
    journal.close()?;

    let report = report::Report {
        args: &args,
        plan: &plan,
        units: &units,
        moved: &moved,
        plan_phase,
        units_phase,
        dispatch_phase,
        outcome: &outcome,
        writer_cpu,
        rss_start,
        rss_plan,
        rss_peak,
        hwm_reset,
        params: headers::parameters(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        report.print();
    }
    if let Some(t) = tmp.filter(|_| args.keep) {
        eprintln!("kept {}", t.keep().display());
    }
    Ok(())
}
