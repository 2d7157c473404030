//! The output tokenizer's files (semantics §7.5), written when a tokenizer is built or a
//! `chat_template` is set: `tokenizer.json` as the `tokenizers` crate serializes the tokenizer
//! (the serializer transformers' `save_pretrained` uses), `tokenizer_config.json` from the
//! tokenizer's source model (the base model for `union` and `base`, the donor when only a chat
//! template is set) without `added_tokens_decoder` (ids live in `tokenizer.json`) and without
//! `chat_template`, and the template, if any, in `chat_template.jinja` (as transformers 5).
//!
//! transformers 5 rewrites the rest of `tokenizer_config.json` on save (`tokenizer_class:
//! TokenizersBackend`, `backend`, and the load options `is_local`/`local_files_only`); shardmerge
//! keeps the source's keys, which transformers 4 and 5 both load. transformers 5 writes no
//! `special_tokens_map.json`, and neither does shardmerge.

use super::PlanError;
use super::sources::PlannedModel;
use serde_json::Value;
use shardmerge_worker::safetensors_io::{CHAT_TEMPLATE, TOKENIZER_CONFIG};
use tokenizers::Tokenizer;

/// A model's side file `name` parsed as JSON (`None` when the model has none).
fn read_json(m: &PlannedModel, name: &str) -> Result<Option<Value>, PlanError> {
    let path = m.path.join(name);
    let text = m
        .dir
        .side
        .text(name)
        .map_err(|why| PlanError::Model(format!("model `{}`: cannot read {}: {why}", m.display, path.display())))?;
    let Some(text) = text else {
        return Ok(None);
    };
    serde_json::from_str(text).map(Some).map_err(|e| {
        PlanError::Model(format!(
            "model `{}`: {} is not valid JSON: {e}",
            m.display,
            path.display()
        ))
    })
}

/// A model's own chat template: `chat_template.jinja`, else `tokenizer_config.json`'s
/// `chat_template` (a string, or a list of named templates: the `default` one).
pub fn model_template(m: &PlannedModel) -> Result<Option<String>, PlanError> {
    if let Ok(Some(t)) = m.dir.side.text(CHAT_TEMPLATE) {
        return Ok(Some(t.to_string()));
    }
    let cfg = read_json(m, TOKENIZER_CONFIG)?;
    Ok(match cfg.as_ref().and_then(|c| c.get("chat_template")) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(named)) => named
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    })
}

/// `chat_template: auto`: the most frequent (stripped) template among `models`, the first
/// seen winning a tie; `None` when no model has one.
pub fn auto_template(models: &[PlannedModel]) -> Result<Option<String>, PlanError> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for m in models {
        if let Some(t) = model_template(m)?.filter(|t| !t.is_empty()) {
            let t = t.trim().to_string();
            match counts.iter_mut().find(|(x, _)| *x == t) {
                Some(c) => c.1 += 1,
                None => counts.push((t, 1)),
            }
        }
    }
    let best = counts.iter().map(|c| c.1).max();
    Ok(counts.into_iter().find(|c| Some(c.1) == best).map(|c| c.0))
}

/// `(file name, text)` of the output tokenizer: `out` with `source`'s config, and `template`
/// (or else the source's own template) as its chat template.
pub fn files(
    out: &Tokenizer,
    source: &PlannedModel,
    template: Option<String>,
) -> Result<Vec<(String, String)>, PlanError> {
    let json = out
        .to_string(true)
        .map_err(|e| PlanError::Invalid(format!("serializing the merged tokenizer: {e}")))?;
    let mut files = vec![("tokenizer.json".to_string(), json)];
    let template = match template {
        Some(t) => Some(t),
        None => model_template(source)?,
    };
    if let Some(mut cfg) = read_json(source, TOKENIZER_CONFIG)? {
        if let Some(obj) = cfg.as_object_mut() {
            obj.remove("added_tokens_decoder");
            obj.remove("chat_template");
        }
        files.push((
            "tokenizer_config.json".to_string(),
            crate::pyjson::to_string(&cfg, true) + "\n",
        ));
    }
    if let Some(t) = template {
        files.push(("chat_template.jinja".to_string(), t));
    }
    Ok(files)
}
