//! Header-only (sparse) Llama-shaped model directories, Llama-3.1-405B's shape by default:
//! safetensors files `model-NNNNN-of-MMMMM.safetensors` (tensors assigned in state-dict order
//! by their cumulative byte offset, so every file holds about the same bytes), a
//! `model.safetensors.index.json` and a `config.json`. Every file is a valid safetensors file
//! whose data section is a hole (header written, file extended with `set_len`), so a 0.8 TB
//! model takes a few MB of disk; only header readers (`shardmerge plan`, a coordinator) can use
//! it. Written by `make_405b_headers` (for `scripts/bench-cluster.sh`) and `sim_405b`.

use shardmerge_worker::safetensors_io::{Dtype, build_header, pt_metadata};
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The shape of a Llama model (bf16, untied `lm_head`) and how many files it is split into.
#[derive(Debug, Clone, Copy)]
pub struct LlamaShape {
    /// Safetensors files per model.
    pub shards: u64,
    /// Hidden size.
    pub hidden: u64,
    /// Decoder layers.
    pub layers: u64,
    /// MLP intermediate size.
    pub intermediate: u64,
    /// Vocabulary size.
    pub vocab: u64,
    /// Attention heads.
    pub heads: u64,
    /// Key/value heads.
    pub kv_heads: u64,
}

impl LlamaShape {
    /// Llama-3.1-405B, in 191 files as the Hugging Face checkpoint.
    pub const LLAMA_405B: LlamaShape = LlamaShape {
        shards: 191,
        hidden: 16384,
        layers: 126,
        intermediate: 53248,
        vocab: 128256,
        heads: 128,
        kv_heads: 8,
    };

    fn head_dim(&self) -> u64 {
        self.hidden / self.heads
    }

    /// Tensor names and shapes in state-dict order.
    pub fn tensors(&self) -> Vec<(String, Vec<u64>)> {
        let (v, h, i, kv) = (
            self.vocab,
            self.hidden,
            self.intermediate,
            self.kv_heads * self.head_dim(),
        );
        let mut t = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        for l in 0..self.layers {
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
    pub fn parameters(&self) -> u64 {
        self.tensors().iter().map(|(_, s)| s.iter().product::<u64>()).sum()
    }

    /// The model's `config.json` (Llama-3.1's special tokens and RoPE base).
    pub fn config_json(&self) -> serde_json::Value {
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

    /// Writes one sharded model into `dir` (the index and `config.json` last); returns its
    /// total tensor bytes.
    pub fn write_model(&self, dir: &Path) -> io::Result<u64> {
        let at_path = |path: &Path, e: &dyn std::fmt::Display| io::Error::other(format!("{}: {e}", path.display()));
        std::fs::create_dir_all(dir).map_err(|e| at_path(dir, &e))?;
        let tensors = self.tensors();
        let sizes: Vec<u64> = tensors.iter().map(|(_, s)| s.iter().product::<u64>() * 2).collect();
        let total: u64 = sizes.iter().sum();
        // Shard of each tensor: by where its bytes start in the whole state dict.
        let mut shard_of = Vec::with_capacity(tensors.len());
        let mut at = 0u64;
        for s in &sizes {
            shard_of.push((u128::from(at) * u128::from(self.shards) / u128::from(total)) as u64);
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
            let path = dir.join(name(k));
            let header = build_header(&entries, &pt_metadata()).map_err(|e| at_path(&path, &e))?;
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| at_path(&path, &e))?;
            file.write_all_at(&header.bytes, 0).map_err(|e| at_path(&path, &e))?;
            file.set_len(header.file_len).map_err(|e| at_path(&path, &e))?;
            for (t, _, _) in entries {
                weight_map.insert(t, serde_json::Value::String(name(k)));
            }
        }
        weight_map.sort_keys();
        let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        for (file, value) in [
            ("model.safetensors.index.json", index),
            ("config.json", self.config_json()),
        ] {
            let path = dir.join(file);
            std::fs::write(&path, serde_json::to_string_pretty(&value)? + "\n").map_err(|e| at_path(&path, &e))?;
        }
        Ok(total)
    }
}
