//! `shardmerge multi`: the command line of [`shardmerge_coordinator::multi`].

use crate::cli::{CommonArgs, IgnoredMergekitFlags, OutputFlags, merge_options};
use clap::Args;
use shardmerge_coordinator::multi::{self, MultiOptions, Outcome};
use std::path::PathBuf;

/// `shardmerge multi`: runs every document of a multi-document YAML, each after the merges it
/// reads. Documents with `name: NAME` are written to `INTERMEDIATE_DIR/NAME` and can be used as
/// a model by that name in other documents; the one document without a name is the final
/// merge, written to `--out-path`.
///
/// Example: `shardmerge multi recipe.yml -I ./intermediate --out-path ./final`
#[derive(Debug, Args)]
pub struct MultiArgs {
    /// Multi-document mergekit YAML (documents separated by `---`).
    pub config: PathBuf,
    /// Where the unnamed final merge is written (required when there is one).
    #[arg(long)]
    pub out_path: Option<PathBuf>,
    /// Directory for the named (intermediate) merges.
    #[arg(short = 'I', long)]
    pub intermediate_dir: String,
    /// Skip merges whose output already exists (`config.json` and a model file) (default).
    #[arg(long, overrides_with = "no_lazy")]
    pub lazy: bool,
    /// Run every merge even if its output exists.
    #[arg(long)]
    pub no_lazy: bool,
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

/// Runs `shardmerge multi`.
pub fn run(args: MultiArgs) -> anyhow::Result<()> {
    for note in args.ignored.notes() {
        eprintln!("{note}");
    }
    let opts = merge_options(&args.common, &args.output, args.quiet, args.num_threads);
    let multi_opts = MultiOptions {
        intermediate_dir: args.intermediate_dir.clone(),
        out_path: args.out_path.clone(),
        lazy: !args.no_lazy,
    };
    let quiet = args.quiet;
    let done = multi::run(&args.config, &multi_opts, &opts, |stage, out| {
        for w in &stage.config.warnings {
            eprintln!("warning: {w}");
        }
        if !quiet {
            eprintln!("merging {} into {}", stage.label(), out.display());
        }
    })?;
    if !quiet {
        for (stage, outcome) in &done {
            match outcome {
                Outcome::Merged(p) => eprintln!("{}: merged into {}", stage.label(), p.display()),
                Outcome::Skipped(p) => eprintln!(
                    "{}: {} exists, skipped (--no-lazy reruns it)",
                    stage.label(),
                    p.display()
                ),
            }
        }
    }
    Ok(())
}
