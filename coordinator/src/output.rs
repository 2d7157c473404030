//! Finishing a merge: `config.json`, model card, config copy and tokenizer files, then the
//! commit (rename staged shards into place, write the index last).
//!
//! Invariant: until [`commit`] returns, the output directory never holds a set of files that
//! looks like a complete model. Shards are written under [`STAGING_DIR`]; a single-shard model
//! appears with the final rename, a multi-shard model with its index, written last.

use crate::card;
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

/// Errors while finishing the output.
#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {source}")]
pub struct OutputError {
    /// File concerned.
    pub path: String,
    /// Cause.
    #[source]
    pub source: std::io::Error,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError {
        path: path.display().to_string(),
        source,
    }
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

/// Writes `config.json`, the model card, `mergekit_config.yml` and tokenizer files.
pub fn write_metadata(
    plan: &Plan,
    config: &MergeConfig,
    out_dir: &Path,
    opts: OutputOptions,
) -> Result<(), OutputError> {
    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    if let Some(cfg) = output_config(plan, config) {
        let path = out_dir.join("config.json");
        fs::write(&path, pyjson::to_string(&cfg, true) + "\n").map_err(io_err(&path))?;
    }
    if opts.write_model_card {
        let path = out_dir.join("README.md");
        fs::write(&path, card::model_card(plan, config, out_dir)).map_err(io_err(&path))?;
        let path = out_dir.join("mergekit_config.yml");
        fs::write(&path, config.source_text.as_bytes()).map_err(io_err(&path))?;
    }
    if opts.copy_tokenizer {
        let donor = &plan.models[plan.donor].path;
        let has_tokenizer = donor.join("tokenizer_config.json").is_file()
            && (donor.join("tokenizer.json").is_file() || donor.join("tokenizer.model").is_file());
        if has_tokenizer {
            for f in TOKENIZER_FILES {
                let src = donor.join(f);
                if src.is_file() {
                    let dst = out_dir.join(f);
                    fs::copy(&src, &dst).map_err(io_err(&dst))?;
                }
            }
        }
    }
    Ok(())
}

/// Moves staged shards into place and writes the index last.
pub fn commit(plan: &Plan, out_dir: &Path) -> Result<(), OutputError> {
    let index_path = out_dir.join("model.safetensors.index.json");
    if index_path.exists() {
        fs::remove_file(&index_path).map_err(io_err(&index_path))?;
    }
    for shard in &plan.proto.shards {
        let staged = Path::new(&shard.staging_uri);
        let f = fs::File::open(staged).map_err(io_err(staged))?;
        f.sync_all().map_err(io_err(staged))?;
    }
    for shard in &plan.proto.shards {
        let staged = Path::new(&shard.staging_uri);
        let dst = out_dir.join(&shard.file_name);
        fs::rename(staged, &dst).map_err(io_err(&dst))?;
    }
    if plan.proto.shards.len() > 1 {
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
        let tmp = out_dir.join(".model.safetensors.index.json.tmp");
        fs::write(&tmp, pyjson::to_string(&index, false)).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &index_path).map_err(io_err(&index_path))?;
    }
    let staging = out_dir.join(STAGING_DIR);
    let _ = fs::remove_dir_all(&staging);
    Ok(())
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

/// Removes staged data after a failed merge.
pub fn abort(out_dir: &Path) {
    let _ = fs::remove_dir_all(out_dir.join(STAGING_DIR));
}
