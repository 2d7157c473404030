//! `shardmerge multi`: the command line of [`shardmerge_coordinator::multi`].

use crate::cli::{MergeRunArgs, OutputFormat};
use clap::Args;
use shardmerge_coordinator::multi::{self, MultiOptions, Outcome};
use std::path::PathBuf;

/// `shardmerge multi`: runs every document of a multi-document YAML, each after the merges it
/// reads. Documents with `name: NAME` are written to `INTERMEDIATE_DIR/NAME` and can be used as
/// a model by that name in other documents; the one document without a name is the final
/// merge, written to `--out-path`.
///
/// Example: `shardmerge multi recipe.yml -I ./intermediate --out-path ./final`; add
/// `--output json` for one JSON line per stage on stdout.
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
    /// `json`: when every stage is done, print one JSON object per stage on stdout, in the
    /// order they ran (JSON lines), e.g. `{"stage":"mid","outcome":"merged",
    /// "output":"./intermediate/mid"}`; `stage` is null for the final merge, `outcome` is
    /// `skipped` for an output that already existed (--lazy). Progress stays on stderr.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub run: MergeRunArgs,
}

/// Runs `shardmerge multi`.
pub fn run(args: MultiArgs) -> anyhow::Result<()> {
    args.run.check()?;
    let opts = args.run.options();
    let multi_opts = MultiOptions {
        intermediate_dir: args.intermediate_dir.clone(),
        out_path: args.out_path.clone(),
        lazy: !args.no_lazy,
    };
    let quiet = args.run.quiet;
    let done = multi::run(&args.config, &multi_opts, &opts, |stage, out| {
        for w in &stage.config.warnings {
            eprintln!("warning: {w}");
        }
        if !quiet {
            eprintln!("merging {} into {}", stage.label(), out.display());
        }
    })?;
    if args.output == OutputFormat::Json {
        for (stage, outcome) in &done {
            println!("{}", outcome.json(stage));
        }
    } else if !quiet {
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
