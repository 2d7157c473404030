//! Writes header-only Llama-3.1-405B-shaped model directories for planning benchmarks.
//!
//! Each model is sharded like the Hugging Face checkpoint: `--shards` files
//! `model-NNNNN-of-MMMMM.safetensors` (tensors assigned in state-dict order by their cumulative
//! byte offset, so every file holds about the same bytes), a `model.safetensors.index.json` and
//! a `config.json`. Every file is a valid safetensors file whose data section is a hole: the
//! header is written and the file extended with `set_len`, so a 0.8 TB model takes a few MB of
//! disk. Only header readers (`shardmerge plan`, a coordinator) can use them.
//!
//! Usage: `make_405b_headers DIR [--models 4] [--shards 191]` writes `DIR/base` and
//! `DIR/finetune-1..` and prints each model directory.

use anyhow::{Context, Result};
use clap::Parser;
use shardmerge_worker::safetensors_io::{Dtype, build_header, pt_metadata};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Parser)]
#[command(about = "Header-only (sparse) Llama-3.1-405B-shaped model directories")]
struct Args {
    /// Output directory.
    dir: PathBuf,
    /// Models to write: `base`, then `finetune-1`, `finetune-2`, ...
    #[arg(long, default_value_t = 4)]
    models: usize,
    /// Safetensors files per model (the Hugging Face checkpoint has 191).
    #[arg(long, default_value_t = 191)]
    shards: u64,
    /// Hidden size.
    #[arg(long, default_value_t = 16384)]
    hidden: u64,
    /// Decoder layers.
    #[arg(long, default_value_t = 126)]
    layers: u64,
    /// MLP intermediate size.
    #[arg(long, default_value_t = 53248)]
    intermediate: u64,
    /// Vocabulary size.
    #[arg(long, default_value_t = 128256)]
    vocab: u64,
    /// Attention heads.
    #[arg(long, default_value_t = 128)]
    heads: u64,
    /// Key/value heads.
    #[arg(long, default_value_t = 8)]
    kv_heads: u64,
}

impl Args {
    fn head_dim(&self) -> u64 {
        self.hidden / self.heads
    }

    /// Tensors in state-dict order, Llama layout, untied `lm_head`.
    fn tensors(&self) -> Vec<(String, Vec<u64>)> {
        let (v, h, i, kv) = (
            self.vocab,
            self.hidden,
            self.intermediate,
            self.kv_heads * self.head_dim(),
        );
        let mut t = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            t.push((format!("{p}.self_attn.q_proj.weight"), vec![h, h]));
            t.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            t.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            t.push((format!("{p}.self_attn.o_proj.weight"), vec![h, h]));
            t.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            t.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            t.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
            t.push((format!("{p}.input_layernorm.weight"), vec![h]));
            t.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        }
        t.push(("model.norm.weight".to_string(), vec![h]));
        t.push(("lm_head.weight".to_string(), vec![v, h]));
        t
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": false,
            "bos_token_id": 128000,
            "eos_token_id": [128001, 128008, 128009],
            "head_dim": self.head_dim(),
            "hidden_act": "silu",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "max_position_embeddings": 131072,
            "model_type": "llama",
            "num_attention_heads": self.heads,
            "num_hidden_layers": self.layers,
            "num_key_value_heads": self.kv_heads,
            "rms_norm_eps": 1e-05,
            "rope_theta": 500000.0,
            "tie_word_embeddings": false,
            "torch_dtype": "bfloat16",
            "vocab_size": self.vocab,
        })
    }
}

/// Writes one sharded model; returns its total tensor bytes.
fn write_model(args: &Args, dir: &Path) -> Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tensors = args.tensors();
    let sizes: Vec<u64> = tensors.iter().map(|(_, s)| s.iter().product::<u64>() * 2).collect();
    let total: u64 = sizes.iter().sum();
    // Shard of each tensor: by where its bytes start in the whole state dict.
    let mut shard_of = Vec::with_capacity(tensors.len());
    let mut at = 0u64;
    for s in &sizes {
        shard_of.push((u128::from(at) * u128::from(args.shards) / u128::from(total)) as u64);
        at += s;
    }
    let n = shard_of.last().map_or(0, |s| s + 1);
    let name = |k: u64| format!("model-{:05}-of-{n:05}.safetensors", k + 1);
    let mut weight_map: Vec<(String, String)> = Vec::with_capacity(tensors.len());
    for k in 0..n {
        let entries: Vec<(String, Dtype, Vec<u64>)> = tensors
            .iter()
            .zip(&shard_of)
            .filter(|(_, s)| **s == k)
            .map(|((t, shape), _)| (t.clone(), Dtype::BF16, shape.clone()))
            .collect();
        let header = build_header(&entries, &pt_metadata())?;
        let path = dir.join(name(k));
        let file = OpenOptions::new().create(true).write(true).truncate(true).open(&path)?;
        file.write_all_at(&header.bytes, 0)?;
        file.set_len(header.file_len)
            .with_context(|| format!("extending {}", path.display()))?;
        weight_map.extend(entries.into_iter().map(|(t, _, _)| (t, name(k))));
    }
    weight_map.sort();
    let index = serde_json::json!({
        "metadata": { "total_size": total },
        "weight_map": weight_map
            .into_iter()
            .map(|(t, f)| (t, serde_json::Value::String(f)))
            .collect::<serde_json::Map<_, _>>(),
    });
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index)? + "\n",
    )?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&args.config_json())? + "\n",
    )?;
    Ok(total)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let params: u64 = args.tensors().iter().map(|(_, s)| s.iter().product::<u64>()).sum();
    for m in 0..args.models {
        let dir = if m == 0 {
            args.dir.join("base")
        } else {
            args.dir.join(format!("finetune-{m}"))
        };
        let bytes = write_model(&args, &dir)?;
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
