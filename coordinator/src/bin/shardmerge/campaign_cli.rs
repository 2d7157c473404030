//! `shardmerge automerge` and `shardmerge campaign report`: the command line of
//! [`shardmerge_coordinator::campaign`].

use crate::cluster_cli::{TokenArgs, runtime};
use anyhow::Context;
use clap::{Args, Subcommand};
use shardmerge_coordinator::campaign::record::{self, State};
use shardmerge_coordinator::campaign::run::{Backend, CampaignOptions};
use shardmerge_coordinator::campaign::{self, DEFAULT_SLERP_PROBABILITY, report};
use shardmerge_coordinator::{MergeOptions, RunOptions};
use shardmerge_worker::storage::{Location, Storage};
use std::path::PathBuf;

/// `shardmerge automerge`: AutoMerger's loop as a campaign. Draws `--count` merges (two
/// distinct models from the pool, SLERP with `--slerp-probability`, else DARE-TIES, each with
/// AutoMerger's recipe and its own seed), runs them, and records each in
/// `PREFIX/campaign.jsonl` (models, method, full YAML, seed, output, state, error, time,
/// bytes, scores). The same `--seed` gives the same campaign; rerunning an interrupted one
/// skips merges already committed. Pairs that cannot merge are recorded as skipped.
///
/// Example: `shardmerge automerge --pool top20.txt --count 8 --seed 1 --out ./campaign \
///   --then './eval.sh "$SHARDMERGE_MERGE_OUTPUT"'`
#[derive(Debug, Args)]
pub struct AutomergeArgs {
    /// Text file of model references (paths or s3:// URIs), one a line (`#` comments).
    #[arg(long)]
    pub pool: PathBuf,
    /// Number of merges.
    #[arg(long)]
    pub count: usize,
    /// Seed of the draws (pairs, methods, merge seeds).
    #[arg(long)]
    pub seed: u64,
    /// Where the merges (PREFIX/NNNN-METHOD) and campaign.jsonl go: a directory, or an
    /// s3:// prefix with --coordinator.
    #[arg(long)]
    pub out: String,
    /// Run the merges on this coordinator (default: embedded, one after another).
    #[arg(long, env = "SHARDMERGE_COORDINATOR")]
    pub coordinator: Option<String>,
    /// Probability of SLERP (else DARE-TIES).
    #[arg(long, default_value_t = DEFAULT_SLERP_PROBABILITY)]
    pub slerp_probability: f64,
    /// Merges in flight at once on the cluster.
    #[arg(long, default_value_t = 4)]
    pub max_running: usize,
    /// Command run (with `sh -c`) after each committed merge, with SHARDMERGE_MERGE_OUTPUT,
    /// _NAME, _METHOD, _INDEX and _MODELS in its environment; the last JSON object it prints
    /// on stdout is stored as the merge's `scores`. A failing command is recorded, not fatal.
    #[arg(long)]
    pub then: Option<String>,
    /// In-process workers of embedded merges.
    #[arg(long, default_value_t = 2, env = "SHARDMERGE_WORKERS")]
    pub workers: usize,
    /// Hide per-merge lines.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub token: TokenArgs,
}

/// `shardmerge campaign`.
#[derive(Debug, Args)]
pub struct CampaignArgs {
    #[command(subcommand)]
    #[allow(missing_docs)]
    pub command: CampaignCommand,
}

/// Subcommands of `shardmerge campaign`.
#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Summarize PREFIX/campaign.jsonl per method (count, outcomes, time, score quartiles) and
    /// plot each score's distribution per method (SVG).
    Report(ReportArgs),
}

/// `shardmerge campaign report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The campaign's --out prefix (directory or s3:// prefix).
    pub prefix: String,
    /// Where the plot goes (default: scores.svg in the current directory).
    #[arg(long, default_value = "scores.svg")]
    pub plot: PathBuf,
}

/// Runs `shardmerge automerge`.
pub fn automerge(args: AutomergeArgs) -> anyhow::Result<()> {
    let pool = campaign::read_pool(&args.pool)?;
    let opts = CampaignOptions {
        pool,
        count: args.count,
        seed: args.seed,
        out: args.out.clone(),
        slerp_probability: args.slerp_probability,
        max_running: args.max_running,
        then: args.then.clone(),
    };
    let backend = match &args.coordinator {
        Some(url) => Backend::Cluster {
            url: url.clone(),
            token: args.token.token()?,
            tls_ca: args.token.ca()?,
        },
        None => Backend::Embedded(MergeOptions {
            run: RunOptions {
                workers: args.workers,
                progress: false,
                ..RunOptions::default()
            },
            ..MergeOptions::default()
        }),
    };
    let quiet = args.quiet;
    let st = Storage::from_env();
    let records = runtime()?.block_on(campaign::run::run(&st, &opts, backend, |r| {
        if !quiet {
            let what = match r.state {
                State::Committed => format!("committed in {:.1}s", r.seconds.unwrap_or(0.0)),
                _ => format!("{:?}: {}", r.state, r.error.as_deref().unwrap_or("")).to_lowercase(),
            };
            eprintln!("{} {} + {}: {what}", r.name, r.models[0], r.models[1]);
            if let Some(e) = &r.hook_error {
                eprintln!("{}: --then failed: {e}", r.name);
            }
        }
    }))?;
    let count = |s: State| records.iter().filter(|r| r.state == s).count();
    eprintln!(
        "campaign {}: {} committed, {} failed, {} skipped (dataset {}/campaign.jsonl)",
        args.out,
        count(State::Committed),
        count(State::Failed),
        count(State::Skipped),
        args.out.trim_end_matches('/')
    );
    Ok(())
}

/// Runs `shardmerge campaign ...`.
pub fn campaign(args: CampaignArgs) -> anyhow::Result<()> {
    match args.command {
        CampaignCommand::Report(a) => {
            let prefix = Location::parse(&a.prefix)?;
            let loc = record::location(&prefix);
            let st = Storage::from_env();
            let records = runtime()?.block_on(record::load(&st, &loc))?;
            if records.is_empty() {
                anyhow::bail!("no campaign at {}", loc.to_uri());
            }
            let rows = report::summarize(&records);
            print!("{}", report::table(&rows));
            let drawn = report::plot(&rows, &a.plot).with_context(|| "writing the score plot")?;
            if drawn > 0 {
                eprintln!("plot of {drawn} score(s) per method: {}", a.plot.display());
            } else {
                eprintln!("no scores recorded (run the campaign with --then), so no plot");
            }
            Ok(())
        }
    }
}
