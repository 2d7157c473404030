//! What a merged model holds besides its shards: `config.json`, the index text, the tokenizer
//! files copied from the donor; and the removal of a failed embedded merge's staging data.
//! The commit itself, for every runtime, is [`crate::publish`].

use crate::config::MergeConfig;
use crate::plan::{Plan, STAGING_DIR};
use crate::pyjson;
use serde_json::Value;
use std::fs;
use std::path::Path;

/// Files copied verbatim from the donor when present (mergekit's tokenizer copy list).
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "added_tokens.json",
    "merges.txt",
    "chat_template.jinja",
    "generation_config.json",
    "chat_template.json",
    "video_preprocessor_config.json",
];

/// Output switches.
#[derive(Debug, Clone, Copy)]
pub struct OutputOptions {
    /// Copy the donor's tokenizer files.
    pub copy_tokenizer: bool,
    /// Write README.md and mergekit_config.yml.
    pub write_model_card: bool,
}

/// The output `config.json`: the donor's config with dtype and layer count updated.
pub fn output_config(plan: &Plan, config: &MergeConfig) -> Option<Value> {
    let mut cfg = plan.models[plan.donor].dir.config.clone()?;
    if let Some(obj) = cfg.as_object_mut() {
        // transformers >= 4.56 writes the dtype under `dtype` (older configs say `torch_dtype`).
        if let Some(old) = obj.remove("torch_dtype") {
            obj.entry("dtype").or_insert(old);
        }
        if let Some(d) = config.out_dtype.as_ref().or(config.dtype.as_ref()) {
            obj.insert("dtype".into(), Value::String(d.as_str().to_string()));
        }
    }
    // A built tokenizer sets the vocabulary size (|V| rounded up to pad_to_multiple_of).
    if let (Some(v), Some(obj)) = (&plan.vocab, cfg.as_object_mut()) {
        obj.insert("vocab_size".into(), Value::from(v.rows));
    }
    if let Some(n) = plan.num_layers {
        let key = crate::arch::num_layers(&cfg)
            .map(|(k, _)| k)
            .unwrap_or_else(|| "num_hidden_layers".into());
        let mut target = &mut cfg;
        let parts: Vec<&str> = key.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            target = target.get_mut(*p)?;
        }
        target
            .as_object_mut()?
            .insert(parts[parts.len() - 1].into(), Value::from(n));
    }
    Some(cfg)
}

/// The `model.safetensors.index.json` text: tensors in save order, mergekit's metadata.
pub fn index_json(plan: &Plan) -> String {
    let mut weight_map = serde_json::Map::new();
    for t in &plan.proto.tasks {
        let shard = t.output.as_ref().map(|o| o.shard_index as usize).unwrap_or(0);
        weight_map.insert(
            t.tensor.clone(),
            Value::String(plan.proto.shards[shard].file_name.clone()),
        );
    }
    let index = serde_json::json!({
        "metadata": {"total_size": plan.proto.total_size, "mergekit_version": "0.1.5"},
        "weight_map": Value::Object(weight_map),
    });
    pyjson::to_string(&index, false)
}

/// Removes the staging directory (with any staged data): after a failed merge, or once the
/// staged shards were published.
pub fn abort(out_dir: &Path) {
    let _ = fs::remove_dir_all(out_dir.join(STAGING_DIR));
}
