//! The job client subcommands of the CLI: `submit` (one job, or a multi-stage config as a
//! pipeline of jobs), `status` and `cancel`.

use crate::cli::OutputFormat;
use crate::cluster_cli::{TokenArgs, runtime};
use anyhow::Context;
use clap::Args;
use shardmerge_coordinator::cluster::client;
use shardmerge_proto::v1::{JobState, MergeOptions};
use std::io::IsTerminal;
use std::path::PathBuf;

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
    #[command(flatten)]
    #[allow(missing_docs)]
    pub job: crate::cli::JobFlags,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub output_files: crate::cli::OutputFlags,
    /// `json`: print the job id (or with --wait, the final status plus `rewatched`: how many
    /// times the coordinator went away and the job was watched again) as JSON on stdout; for
    /// a multi-stage config, one line per stage as `multi --output json` prints them.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub token: TokenArgs,
    /// For a multi-stage config (several `---` documents, stages named with `name:`, as
    /// `mergekit-multi` takes): where the named stages are written (a directory or an s3://
    /// prefix). Each stage runs as a job once the stages it reads are committed; OUT_URI
    /// receives the unnamed final merge.
    #[arg(short = 'I', long)]
    pub intermediate_dir: Option<String>,
    /// With a multi-stage config: skip stages whose output is already committed, as
    /// `mergekit-multi --lazy` (the default).
    #[arg(long, overrides_with = "no_lazy")]
    pub lazy: bool,
    /// With a multi-stage config: rerun stages whose output is already committed.
    #[arg(long)]
    pub no_lazy: bool,
}

/// `shardmerge status` / `shardmerge cancel`.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// Job id (all jobs when omitted, for `status`).
    pub job: Option<String>,
    /// Coordinator URL.
    #[arg(long, default_value = "http://127.0.0.1:7070", env = "SHARDMERGE_COORDINATOR")]
    pub coordinator: String,
    /// `json`: print the status(es) as JSON on stdout.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub token: TokenArgs,
}

/// Prints `value` as one line of JSON on stdout.
fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

/// Runs `shardmerge submit`.
pub fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let yaml = std::fs::read_to_string(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let token = args.token.token()?;
    let ca = args.token.ca()?;
    let rt = runtime()?;
    rt.block_on(async move {
        let mut c = client::connect(&args.coordinator, token, ca.as_deref()).await?;
        let files = args.output_files.options();
        let options = MergeOptions {
            random_seed: args.job.random_seed,
            out_shard_size: args.job.out_shard_size,
            copy_tokenizer: files.copy_tokenizer,
            write_model_card: files.write_model_card,
            allow_crimes: args.job.allow_crimes,
            unsafe_truncate_embeddings: args.job.unsafe_truncate_embeddings,
        };
        if shardmerge_coordinator::multi::is_multi(&yaml) {
            return submit_pipeline(&args, &yaml, &mut c, options).await;
        }
        let name = args.config.display().to_string();
        let (job, warnings) = client::submit(&mut c, yaml, name, args.out_uri.clone(), options).await?;
        for w in warnings {
            eprintln!("warning: {w}");
        }
        let json = args.output == OutputFormat::Json;
        if json && !args.wait {
            print_json(&serde_json::json!({ "job_id": job }));
        } else if !json {
            println!("{job}");
        }
        if args.wait {
            let followed = client::follow(&mut c, &job, std::io::stderr().is_terminal()).await?;
            let s = followed.status;
            eprintln!("{}", client::describe(&s));
            if json {
                let mut fin = client::status_json(&s);
                fin["rewatched"] = followed.rewatched.into();
                print_json(&fin);
            }
            if s.state != JobState::Succeeded as i32 {
                anyhow::bail!("job {job} {}: {}", client::state_name(s.state), s.error);
            }
        }
        Ok(())
    })
}

/// `shardmerge submit` of a multi-stage config: its stages as jobs, in dependency order.
async fn submit_pipeline(
    args: &SubmitArgs,
    yaml: &str,
    c: &mut client::Client,
    options: MergeOptions,
) -> anyhow::Result<()> {
    use shardmerge_coordinator::multi;
    let Some(inter) = args.intermediate_dir.as_deref() else {
        anyhow::bail!(
            "{} is a multi-stage config: give --intermediate-dir (-I) for its named stages",
            args.config.display()
        );
    };
    let stages = multi::parse(yaml, &args.config, inter)?;
    let order = multi::order(&stages, &args.config)?;
    let st = shardmerge_worker::storage::Storage::from_env();
    let done = multi::cluster::run(
        &st,
        c,
        &stages,
        &order,
        inter,
        &args.out_uri,
        !args.no_lazy,
        options,
        |s, what| eprintln!("{}: {what}", s.label()),
    )
    .await?;
    if args.output == OutputFormat::Json {
        for (stage, run) in &done {
            print_json(&run.json(stage));
        }
    }
    Ok(())
}

/// Runs `shardmerge status`.
pub fn status(args: JobArgs) -> anyhow::Result<()> {
    let token = args.token.token()?;
    let ca = args.token.ca()?;
    runtime()?.block_on(async move {
        let mut c = client::connect(&args.coordinator, token, ca.as_deref()).await?;
        let one = args.job.is_some();
        let statuses = client::status(&mut c, args.job).await?;
        match args.output {
            OutputFormat::Json if one => print_json(&client::status_json(&statuses[0])),
            OutputFormat::Json => print_json(&statuses.iter().map(client::status_json).collect()),
            OutputFormat::Text => {
                for s in &statuses {
                    println!("{}", client::describe(s));
                }
            }
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
        let s = client::cancel(&mut c, job).await?;
        match args.output {
            OutputFormat::Json => print_json(&client::status_json(&s)),
            OutputFormat::Text => println!("{}", client::describe(&s)),
        }
        Ok(())
    })
}
