//! Tokenizer files of a merged model against mergekit's: copied files byte for byte; a merged
//! tokenizer (`tokenizer_source`/`tokenizer`) or one re-saved for a chat template equal in
//! content. Used by tests in this crate and, through a `#[path]` module, by the coordinator's
//! process-cluster tests (which cannot depend on this crate), so there is one comparison.

use serde_json::Value;
use std::path::Path;

/// Keys transformers 5 rewrites or adds when it saves a loaded tokenizer's config (its class
/// name, backend and load options) and the added-token table it moves to `tokenizer.json`.
pub const TOKENIZER_CONFIG_REWRITTEN: [&str; 5] = [
    "tokenizer_class",
    "backend",
    "is_local",
    "local_files_only",
    "added_tokens_decoder",
];

/// The tokenizer files a merge writes or copies.
pub const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
];

/// Compares the tokenizer files of `ours` with mergekit's in `expected`: each present in both
/// or neither; equal bytes, or, when `rebuilt` (the tokenizer was merged or re-saved), JSON
/// files equal in content ([`tokenizer_content_equal`]).
pub fn tokenizer_files_equal(expected: &Path, ours: &Path, rebuilt: bool) -> Result<(), String> {
    tokenizer_files_equal_with(expected, ours, rebuilt, None)
}

/// Compares the chat templates `(mergekit's, ours)` some other way than byte for byte.
pub type TemplateCheck<'a> = &'a dyn Fn(&str, &str) -> Result<(), String>;

/// [`tokenizer_files_equal`], with `chat_template.jinja` compared by `template` when given
/// (for a built-in template a config names, shardmerge writes its own text of it: golden.rs
/// compares what the two render).
pub fn tokenizer_files_equal_with(
    expected: &Path,
    ours: &Path,
    rebuilt: bool,
    template: Option<TemplateCheck<'_>>,
) -> Result<(), String> {
    for tok in TOKENIZER_FILES {
        let (a, b) = (
            std::fs::read(expected.join(tok)).ok(),
            std::fs::read(ours.join(tok)).ok(),
        );
        if let (Some(check), Some(a), Some(b)) = (template.filter(|_| tok == "chat_template.jinja"), &a, &b) {
            let text = |x: &[u8]| String::from_utf8(x.to_vec()).map_err(|e| format!("{tok}: {e}"));
            check(&text(a)?, &text(b)?).map_err(|e| format!("{tok}: {e}"))?;
            continue;
        }
        match (a, b) {
            (a, b) if a == b => {}
            (Some(a), Some(b)) if rebuilt && tok.ends_with(".json") => tokenizer_content_equal(tok, &a, &b)?,
            (a, b) => {
                return Err(format!(
                    "{tok}: mergekit {}, shardmerge {}",
                    a.map_or("absent".into(), |a| format!("{} bytes", a.len())),
                    b.map_or("absent".into(), |b| format!("{} bytes", b.len()))
                ));
            }
        }
    }
    Ok(())
}

/// A merged tokenizer's files: `tokenizer.json` equal as JSON (vocabulary, ids, merges, added
/// and special tokens, pipeline), `tokenizer_config.json` equal past the keys transformers
/// rewrites (special tokens, chat template, lengths).
pub fn tokenizer_content_equal(file: &str, a: &[u8], b: &[u8]) -> Result<(), String> {
    let parse = |x: &[u8]| serde_json::from_slice::<Value>(x).map_err(|e| format!("{file}: {e}"));
    let (mut ja, mut jb) = (parse(a)?, parse(b)?);
    if file == "tokenizer_config.json" {
        for j in [&mut ja, &mut jb] {
            if let Some(o) = j.as_object_mut() {
                o.retain(|k, _| !TOKENIZER_CONFIG_REWRITTEN.contains(&k.as_str()));
            }
        }
    }
    for j in [&mut ja, &mut jb] {
        if let Some(p) = j.get_mut("post_processor")
            && is_plain_template(p)
        {
            *p = Value::Null;
        }
    }
    if ja != jb {
        let keys: Vec<String> = ja
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| jb.get(k.as_str()) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        return Err(format!("{file}: content differs in {keys:?}"));
    }
    Ok(())
}

/// transformers 5 gives a loaded tokenizer without a post-processor a `TemplateProcessing` that
/// adds no tokens (`$A`, `$A $B:1`); it encodes as no post-processor does.
fn is_plain_template(p: &Value) -> bool {
    let only_sequences = |k: &str| {
        p.get(k)
            .and_then(|v| v.as_array())
            .is_some_and(|a| a.iter().all(|e| e.get("Sequence").is_some()))
    };
    p.get("type").and_then(|t| t.as_str()) == Some("TemplateProcessing")
        && p.get("special_tokens")
            .and_then(|s| s.as_object())
            .is_some_and(|s| s.is_empty())
        && only_sequences("single")
        && only_sequences("pair")
}
