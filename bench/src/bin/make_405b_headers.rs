//! Writes header-only Llama-3.1-405B-shaped model directories for planning benchmarks.
//!
//! Each model is sharded like the Hugging Face checkpoint into `--shards` files whose data
//! sections are holes, with an index and a `config.json`
//! ([`shardmerge_bench::llama_headers`]); only header readers (`shardmerge plan`, a
//! coordinator) can use them.
//!
//! Usage: `make_405b_headers DIR [--models 4] [--shards 191]` writes `DIR/base` and
//! `DIR/finetune-1..` and prints each model directory.

use anyhow::{Context, Result};
use clap::Parser;
use shardmerge_bench::llama_headers::LlamaShape;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(about = "Header-only (sparse) Llama-3.1-405B-shaped model directories")]
struct Args {
    /// Output directory.
    dir: PathBuf,
    /// Models to write: `base`, then `finetune-1`, `finetune-2`, ...
    #[arg(long, default_value_t = 4)]
    models: usize,
    /// Safetensors files per model (the Hugging Face checkpoint has 191).
    #[arg(long, default_value_t = LlamaShape::LLAMA_405B.shards)]
    shards: u64,
    /// Hidden size.
    #[arg(long, default_value_t = LlamaShape::LLAMA_405B.hidden)]
    hidden: u64,
    /// Decoder layers.
    #[arg(long, default_value_t = LlamaShape::LLAMA_405B.layers)]
    layers: u64,
    /// MLP intermediate size.
    #[arg(long, default_value_t = LlamaShape::LLAMA_405B.intermediate)]
    intermediate: u64,
    /// Vocabulary size.
    #[arg(long, default_value_t = LlamaShape::LLAMA_405B.vocab)]
    vocab: u64,
    /// Attention heads.
    #[arg(long, default_value_t = LlamaShape::LLAMA_405B.heads)]
    heads: u64,
    /// Key/value heads.
    #[arg(long, default_value_t = LlamaShape::LLAMA_405B.kv_heads)]
    kv_heads: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let shape = LlamaShape {
        shards: args.shards,
        hidden: args.hidden,
        layers: args.layers,
        intermediate: args.intermediate,
        vocab: args.vocab,
        heads: args.heads,
        kv_heads: args.kv_heads,
    };
    let params = shape.parameters();
    for m in 0..args.models {
        let dir = if m == 0 {
            args.dir.join("base")
        } else {
            args.dir.join(format!("finetune-{m}"))
        };
        let bytes = shape
            .write_model(&dir)
            .with_context(|| format!("writing {}", dir.display()))?;
        eprintln!(
            "{}: {:.1} B parameters, {:.1} GB (sparse)",
            dir.display(),
            params as f64 / 1e9,
            bytes as f64 / 1e9
        );
        println!("{}", dir.display());
    }
    Ok(())
}
