//! The merged tokenizer's files (semantics §7.5): `tokenizer.json` as the `tokenizers` crate
//! serializes the output tokenizer (the serializer transformers' `save_pretrained` uses), and
//! `tokenizer_config.json` from the tokenizer's source model (the base model for `union` and
//! `base`) without its `added_tokens_decoder` (ids live in `tokenizer.json`).
//!
//! transformers 5 rewrites the rest of `tokenizer_config.json` on save (`tokenizer_class:
//! TokenizersBackend`, `backend`, and the load options `is_local`/`local_files_only`); shardmerge
//! keeps the source's keys, which transformers 4 and 5 both load. transformers 5 writes no
//! `special_tokens_map.json`, and neither does shardmerge.

use super::PlanError;
use super::sources::PlannedModel;
use serde_json::Value;
use tokenizers::Tokenizer;

/// `(file name, text)` of the output tokenizer's files.
pub fn files(out: &Tokenizer, source: &PlannedModel) -> Result<Vec<(String, String)>, PlanError> {
    let json = out
        .to_string(true)
        .map_err(|e| PlanError::Invalid(format!("serializing the merged tokenizer: {e}")))?;
    let mut files = vec![("tokenizer.json".to_string(), json)];
    let path = source.path.join("tokenizer_config.json");
    if path.is_file() {
        let text = std::fs::read_to_string(&path).map_err(|e| {
            PlanError::Model(format!(
                "model `{}`: cannot read {}: {e}",
                source.display,
                path.display()
            ))
        })?;
        let mut cfg: Value = serde_json::from_str(&text).map_err(|e| {
            PlanError::Model(format!(
                "model `{}`: {} is not valid JSON: {e}",
                source.display,
                path.display()
            ))
        })?;
        if let Some(obj) = cfg.as_object_mut() {
            obj.remove("added_tokens_decoder");
        }
        files.push((
            "tokenizer_config.json".to_string(),
            crate::pyjson::to_string(&cfg, true) + "\n",
        ));
    }
    Ok(files)
}
