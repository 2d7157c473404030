//! Architecture knowledge: how tensor names split into pre-weights, per-layer templates and
//! post-weights, which weights are optional and which names they may be tied to.
//!
//! shardmerge infers the layout from the checkpoints themselves (the first `.<digits>.` in a
//! name is the layer index), which covers Llama, Mistral, Qwen2/3, Gemma, Phi and GPT-2 style
//! decoders without a per-architecture table.

use serde_json::Value;

/// Output weights that may be absent from some or all inputs, and the names they are tied to.
/// A model lacking the weight loads the first tied name it has instead.
pub const TIED_WEIGHTS: &[(&str, &[&str])] = &[(
    "lm_head.weight",
    &[
        "model.embed_tokens.weight",
        "transformer.wte.weight",
        "model.embed.weight",
    ],
)];

/// Splits a tensor name at its first `.<digits>.` component: `(prefix, layer, rest)`.
pub fn split_layer_name(name: &str) -> Option<(&str, u64, &str)> {
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'.' {
            let start = i + 1;
            let mut j = start;
            while j < bytes.len() && bytes[j].is_ascii_digit() {
                j += 1;
            }
            if j > start && j < bytes.len() && bytes[j] == b'.' {
                let idx = name[start..j].parse().ok()?;
                return Some((&name[..i], idx, &name[j + 1..]));
            }
        }
        i += 1;
    }
    None
}

/// Builds the name of layer `layer` of template `(prefix, rest)`.
pub fn layer_name(prefix: &str, layer: u64, rest: &str) -> String {
    format!("{prefix}.{layer}.{rest}")
}

/// True for non-layer weights that come before the layers (embeddings).
pub fn is_pre_weight(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("embed") || n.contains(".wte.") || n.contains(".wpe.") || n.starts_with("wte.") || n.starts_with("wpe.")
}

/// Weights indexed by token along dim 0 (mergekit's `vocabulary_axis: 0`): input embeddings
/// and the output projection.
pub const VOCABULARY_WEIGHTS: &[&str] = &[
    "model.embed_tokens.weight",
    "lm_head.weight",
    "transformer.wte.weight",
    "model.embed.weight",
];

/// True for a weight whose dim 0 is the vocabulary.
pub fn has_vocabulary_axis(name: &str) -> bool {
    VOCABULARY_WEIGHTS.contains(&name)
}

/// Tied alternatives of an optional weight, if it is one.
pub fn tied_names(name: &str) -> Option<&'static [&'static str]> {
    TIED_WEIGHTS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Config keys that hold the layer count, in lookup order.
pub const NUM_LAYERS_KEYS: &[&str] = &["num_hidden_layers", "n_layer", "num_layers", "n_layers"];

/// Finds the layer-count key and value in a model config (top level or `text_config`).
pub fn num_layers(config: &Value) -> Option<(String, u64)> {
    for key in NUM_LAYERS_KEYS {
        if let Some(v) = config.get(*key).and_then(Value::as_u64) {
            return Some((key.to_string(), v));
        }
    }
    let text = config.get("text_config")?;
    for key in NUM_LAYERS_KEYS {
        if let Some(v) = text.get(*key).and_then(Value::as_u64) {
            return Some((format!("text_config.{key}"), v));
        }
    }
    None
}

/// The single architecture name of a config (`architectures[0]`), if any.
pub fn architecture(config: &Value) -> Option<String> {
    let list = config.get("architectures")?.as_array()?;
    if list.len() == 1 {
        list[0].as_str().map(str::to_string)
    } else {
        None
    }
}

/// The layer count in the `config.json` of the model at `model` (a path or an `s3://` URI),
/// read through `st`; the message says which model and why when there is none.
pub async fn model_num_layers(st: &shardmerge_worker::storage::Storage, model: &str) -> Result<u64, String> {
    let loc = shardmerge_worker::storage::Location::parse(model).map_err(|e| e.to_string())?;
    let dir = shardmerge_worker::storage::open_model_dir(st, &loc)
        .await
        .map_err(|e| format!("cannot open {model}: {e}"))?;
    dir.config
        .as_ref()
        .and_then(num_layers)
        .map(|(_, n)| n)
        .ok_or_else(|| format!("{model}: config.json has no layer count"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_first_numeric_component() {
        assert_eq!(
            split_layer_name("model.layers.12.self_attn.q_proj.weight"),
            Some(("model.layers", 12, "self_attn.q_proj.weight"))
        );
        assert_eq!(
            split_layer_name("transformer.h.0.attn.c_attn.weight"),
            Some(("transformer.h", 0, "attn.c_attn.weight"))
        );
        assert_eq!(split_layer_name("model.embed_tokens.weight"), None);
        assert_eq!(split_layer_name("model.norm.weight"), None);
        assert_eq!(split_layer_name("a.1"), None);
        assert_eq!(
            layer_name("model.layers", 3, "mlp.up_proj.weight"),
            "model.layers.3.mlp.up_proj.weight"
        );
    }

    #[test]
    fn classifies_pre_and_post_weights() {
        assert!(is_pre_weight("model.embed_tokens.weight"));
        assert!(is_pre_weight("transformer.wte.weight"));
        assert!(!is_pre_weight("model.norm.weight"));
        assert!(!is_pre_weight("lm_head.weight"));
        assert!(tied_names("lm_head.weight").is_some());
        assert!(tied_names("model.norm.weight").is_none());
    }

    #[test]
    fn finds_layer_count() {
        let c: Value = serde_json::json!({"num_hidden_layers": 6});
        assert_eq!(num_layers(&c), Some(("num_hidden_layers".into(), 6)));
        let c: Value = serde_json::json!({"text_config": {"num_hidden_layers": 4}});
        assert_eq!(num_layers(&c), Some(("text_config.num_hidden_layers".into(), 4)));
        assert_eq!(num_layers(&serde_json::json!({})), None);
    }
}
