//! The `shardmerge` binary: the command line (clap structs and their wiring: [`cli`],
//! [`cluster_cli`], [`client_cli`], ...) over the library's plain functions and option
//! structs; logging setup.

mod campaign_cli;
mod cli;
mod client_cli;
mod cluster_cli;
mod multi_cli;

use clap::Parser;
use cli::{Cli, run};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_env("SHARDMERGE_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        builder.json().init();
    } else {
        builder.without_time().init();
    }
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
