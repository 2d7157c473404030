//! Header-only Llama-3.1-405B-shaped model directories (the shapes of
//! `make_405b_headers`): 191 safetensors files per model whose data sections are holes
//! (header written, file extended with `set_len`), an index and a `config.json`. A 0.8 TB
//! model takes a few MB of disk; only header readers (the planner) can use it.

use anyhow::{Context, Result};
use shardmerge_worker::safetensors_io::{Dtype, build_header, pt_metadata};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Safetensors files per model (as the Hugging Face checkpoint).
const SHARDS: u64 = 191;
const HIDDEN: u64 = 16384;
const LAYERS: u64 = 126;
const INTERMEDIATE: u64 = 53248;
const VOCAB: u64 = 128256;
const HEADS: u64 = 128;
const KV_HEADS: u64 = 8;

/// Tensors in state-dict order: Llama layout, untied `lm_head`, bf16.
fn tensors() -> Vec<(String, Vec<u64>)> {
    let (v, h, i, kv) = (VOCAB, HIDDEN, INTERMEDIATE, KV_HEADS * (HIDDEN / HEADS));
    let mut t = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("self_attn.q_proj", [h, h]),
            ("self_attn.k_proj", [kv, h]),
            ("self_attn.v_proj", [kv, h]),
            ("self_attn.o_proj", [h, h]),
            ("mlp.gate_proj", [i, h]),
            ("mlp.up_proj", [i, h]),
            ("mlp.down_proj", [h, i]),
        ] {
            t.push((format!("{p}.{name}.weight"), shape.to_vec()));
        }
        t.push((format!("{p}.input_layernorm.weight"), vec![h]));
        t.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
    }
    t.push(("model.norm.weight".to_string(), vec![h]));
    t.push(("lm_head.weight".to_string(), vec![v, h]));
    t
}

/// Parameters of one model.
pub fn parameters() -> u64 {
    tensors().iter().map(|(_, s)| s.iter().product::<u64>()).sum()
}

fn config_json() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": false,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
        "head_dim": HIDDEN / HEADS,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": 131072,
        "model_type": "llama",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0,
        "tie_word_embeddings": false,
        "torch_dtype": "bfloat16",
        "vocab_size": VOCAB,
    })
}

/// Writes one sharded model into `dir`.
fn write_model(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tensors = tensors();
    let sizes: Vec<u64> = tensors.iter().map(|(_, s)| s.iter().product::<u64>() * 2).collect();
    let total: u64 = sizes.iter().sum();
    // Shard of each tensor: by where its bytes start in the whole state dict.
    let mut shard_of = Vec::with_capacity(tensors.len());
    let mut at = 0u64;
    for s in &sizes {
        shard_of.push((u128::from(at) * u128::from(SHARDS) / u128::from(total)) as u64);
        at += s;
    }
    let n = shard_of.last().map_or(0, |s| s + 1);
    let name = |k: u64| format!("model-{:05}-of-{n:05}.safetensors", k + 1);
    let mut weight_map = serde_json::Map::new();
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
        for (t, _, _) in entries {
            weight_map.insert(t, serde_json::Value::String(name(k)));
        }
    }
    weight_map.sort_keys();
    let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index)? + "\n",
    )?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config_json())? + "\n",
    )?;
    Ok(())
}

/// The model directories under `root` (`base`, `finetune-1..=3`), written unless a complete
/// set is already there (the index is written last, so its presence means complete). Returns
/// them and whether they were generated now.
pub fn models(root: &Path) -> Result<([PathBuf; 4], bool)> {
    let dirs = ["base", "finetune-1", "finetune-2", "finetune-3"].map(|m| root.join(m));
    let complete = |d: &PathBuf| d.join("model.safetensors.index.json").is_file() && d.join("config.json").is_file();
    if dirs.iter().all(complete) {
        return Ok((dirs, false));
    }
    for d in &dirs {
        write_model(d)?;
    }
    Ok((dirs, true))
}

/// The DARE-TIES recipe of `scripts/bench-cluster.sh` over `models` (base first).
pub fn dare_ties_yaml(models: &[PathBuf; 4]) -> String {
    let [base, f1, f2, f3] = models;
    format!(
        "models:
  - model: {base}
  - model: {f1}
    parameters:
      density: 0.53
      weight: 0.6
  - model: {f2}
    parameters:
      density: 0.4
      weight: 0.3
  - model: {f3}
    parameters:
      density: 0.6
      weight: 0.2
merge_method: dare_ties
base_model: {base}
parameters:
  int8_mask: true
dtype: bfloat16
",
        base = base.display(),
        f1 = f1.display(),
        f2 = f2.display(),
        f3 = f3.display()
    )
}
