//! The output vocabulary and each model's permutation (semantics §5.1), planned from the
//! models' `tokenizer.json` with Hugging Face's `tokenizers` crate (the library mergekit's
//! tokenizers run on, so added-token ids are assigned by the same code).
//!
//! Where mergekit 0.1.5 is nondeterministic, shardmerge picks one order: a union appends each
//! model's new ordinary tokens in the order of their ids (mergekit: the iteration order of a
//! Rust hash map, different on every run), and visits the base model first, then the other
//! models in config order (mergekit: set order). A model without a readable `tokenizer.json`
//! is an error (mergekit logs it and assumes the base model's vocabulary).

use super::PlanError;
use super::sources::{Normalized, PlannedModel};
use crate::config::{TokenizerConfig, TokenizerSource};
use indexmap::{IndexMap, IndexSet};
use serde_json::Value;
use shardmerge_worker::safetensors_io::{SENTENCEPIECE_MODEL, TOKENIZER_JSON};
use std::collections::HashMap;
use tokenizers::{AddedToken, Tokenizer};

/// One model's own vocabulary, as the alignment reads it.
#[derive(Debug, Clone)]
pub struct ModelVocab {
    /// Token -> id (with added tokens). The base model's is stripped to its `vocab_size`.
    pub vocab: HashMap<String, u32>,
    /// Rows the model's embedding has per its config (`vocab_size`), or the vocabulary length.
    pub vocab_size: u64,
}

/// The output vocabulary and how every model's rows map onto it.
#[derive(Debug)]
pub struct Vocabulary {
    /// Output tokens by id (`|V|` of them).
    pub tokens: Vec<String>,
    /// Rows of the aligned tensors: `|V|` rounded up to `pad_to_multiple_of`.
    pub rows: u64,
    /// Per model (indexed like the plan's models): its vocabulary.
    pub models: Vec<ModelVocab>,
    /// Per model: output id -> the model's row, or -1 when the model lacks the token.
    pub perms: Vec<Vec<i64>>,
    /// The output tokenizer.
    pub tokenizer: Tokenizer,
    /// The config it was built from.
    pub config: TokenizerConfig,
    /// The model whose tokenizer (config, template) the output's is based on.
    pub source: usize,
}

impl Vocabulary {
    /// Output tokens model `m` lacks.
    pub fn missing(&self, m: usize) -> usize {
        self.perms[m].iter().filter(|&&p| p < 0).count()
    }
}

fn model_err(m: &PlannedModel, what: String) -> PlanError {
    PlanError::Model(format!("model `{}`: {what}", m.display))
}

/// A model's `tokenizer.json` as JSON text, as read when the model was opened (locally or
/// from S3: [`shardmerge_worker::safetensors_io::SideFiles`]).
pub(super) fn tokenizer_text(m: &PlannedModel) -> Result<String, PlanError> {
    let path = m.path.join(TOKENIZER_JSON);
    match m.dir.side.text(TOKENIZER_JSON) {
        Ok(Some(text)) => Ok(text.to_string()),
        Err(why) => Err(model_err(m, format!("cannot read {}: {why}", path.display()))),
        Ok(None) => {
            let why = if m.dir.side.get(SENTENCEPIECE_MODEL).is_some() {
                "has only a SentencePiece `tokenizer.model`; shardmerge aligns vocabularies from \
                 `tokenizer.json` (convert it with transformers: AutoTokenizer.from_pretrained(...)\
                 .save_pretrained(...))"
            } else {
                "has no `tokenizer.json`, which `tokenizer_source`/`tokenizer` needs to align its \
                 embedding rows"
            };
            Err(model_err(m, format!("{} {why}", m.path.display())))
        }
    }
}

pub(super) fn parse_tokenizer(m: &PlannedModel, text: &str) -> Result<Tokenizer, PlanError> {
    Tokenizer::from_bytes(text.as_bytes()).map_err(|e| {
        model_err(
            m,
            format!(
                "{} is not a valid tokenizer: {e}",
                m.path.join(TOKENIZER_JSON).display()
            ),
        )
    })
}

/// The model's `vocab_size` from its config (top level or `text_config`).
fn config_vocab_size(m: &PlannedModel) -> Option<u64> {
    let c = m.dir.config.as_ref()?;
    c.get("vocab_size")
        .or_else(|| c.get("text_config").and_then(|t| t.get("vocab_size")))
        .and_then(Value::as_u64)
}

/// The base tokenizer without entries whose id is at least the model's `vocab_size` (only
/// BPE tokenizers can be stripped, as in mergekit).
fn stripped(m: &PlannedModel, text: &str, vocab_size: Option<u64>) -> Result<Tokenizer, PlanError> {
    let tok = parse_tokenizer(m, text)?;
    let size = vocab_size.unwrap_or(tok.get_vocab_size(true) as u64);
    let unused: IndexSet<String> = tok
        .get_vocab(true)
        .into_iter()
        .filter(|(_, id)| u64::from(*id) >= size)
        .map(|(t, _)| t)
        .collect();
    if unused.is_empty() {
        return Ok(tok);
    }
    let mut json: Value = serde_json::from_str(text).map_err(|e| model_err(m, format!("tokenizer.json: {e}")))?;
    let kind = json
        .pointer("/model/type")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string();
    if kind != "BPE" {
        return Err(model_err(
            m,
            format!(
                "its tokenizer has {} entries past its vocab_size {size} and is of type {kind}; only BPE \
                 tokenizers can be stripped for a tokenizer merge (mergekit 0.1.5 refuses this too)",
                unused.len()
            ),
        ));
    }
    if let Some(Value::Array(added)) = json.get_mut("added_tokens") {
        added.retain(|e| e.get("id").and_then(Value::as_u64).is_some_and(|id| id < size));
    }
    if let Some(Value::Object(vocab)) = json.pointer_mut("/model/vocab") {
        vocab.retain(|t, _| !unused.contains(t));
    }
    if let Some(Value::Array(merges)) = json.pointer_mut("/model/merges") {
        let keep = |m: &Value| match m {
            Value::String(s) => s.split(' ').all(|t| !unused.contains(t)),
            Value::Array(parts) => parts.iter().all(|t| t.as_str().is_none_or(|t| !unused.contains(t))),
            _ => true,
        };
        merges.retain(keep);
    }
    parse_tokenizer(m, &json.to_string())
}

/// Builds the output vocabulary and permutations for `config` (semantics §5.1).
pub fn build(config: &TokenizerConfig, norm: &Normalized) -> Result<Vocabulary, PlanError> {
    let base = norm.base.unwrap_or(norm.donor);
    let mut toks: Vec<Tokenizer> = Vec::with_capacity(norm.models.len());
    for (i, m) in norm.models.iter().enumerate() {
        let text = tokenizer_text(m)?;
        toks.push(if i == base {
            stripped(m, &text, config_vocab_size(m))?
        } else {
            parse_tokenizer(m, &text)?
        });
    }
    let models: Vec<ModelVocab> = norm
        .models
        .iter()
        .zip(&toks)
        .map(|(m, t)| {
            let vocab = t.get_vocab(true);
            let vocab_size = config_vocab_size(m).unwrap_or(vocab.len() as u64);
            ModelVocab { vocab, vocab_size }
        })
        .collect();

    let mut source = base;
    let mut out = match &config.source {
        TokenizerSource::Base => toks[base].clone(),
        TokenizerSource::Model(r) => {
            let i =
                norm.models.iter().position(|m| &m.reference == r).ok_or_else(|| {
                    PlanError::Invalid(format!("tokenizer source `{r}` is not one of the merged models"))
                })?;
            // As it is: unstripped.
            source = i;
            parse_tokenizer(&norm.models[i], &tokenizer_text(&norm.models[i])?)?
        }
        TokenizerSource::Union => union(base, &toks, norm)?,
    };
    for (token, _) in &config.tokens {
        if out.token_to_id(token).is_none() {
            add(&mut out, AddedToken::from(token.clone(), false))?;
        }
    }
    let vocab = out.get_vocab(true);
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, id) in &vocab {
        match tokens.get_mut(*id as usize) {
            Some(slot) => *slot = t.clone(),
            None => {
                return Err(PlanError::Invalid(format!(
                    "the output tokenizer has {} tokens but uses id {id} (`{t}`): its ids have gaps, \
                     which the vocabulary alignment cannot lay out as rows",
                    vocab.len()
                )));
            }
        }
    }
    let len = tokens.len() as u64;
    let rows = match config.pad_to_multiple_of {
        Some(p) if !len.is_multiple_of(p) => (len / p + 1) * p,
        _ => len,
    };
    let mut perms = Vec::with_capacity(models.len());
    for (i, mv) in models.iter().enumerate() {
        let mut p = Vec::with_capacity(tokens.len());
        for t in &tokens {
            match mv.vocab.get(t) {
                None => p.push(-1),
                Some(&id) if u64::from(id) >= mv.vocab_size => {
                    return Err(model_err(
                        &norm.models[i],
                        format!(
                            "its tokenizer gives `{t}` id {id}, past its vocab_size {}; mergekit \
                             0.1.5 fails on such a token (KeyError) too",
                            mv.vocab_size
                        ),
                    ));
                }
                Some(&id) => p.push(i64::from(id)),
            }
        }
        perms.push(p);
    }
    Ok(Vocabulary {
        tokens,
        rows,
        models,
        perms,
        tokenizer: out,
        config: config.clone(),
        source,
    })
}

fn add(tok: &mut Tokenizer, token: AddedToken) -> Result<(), PlanError> {
    tok.add_tokens([token])
        .map(|_| ())
        .map_err(|e| PlanError::Invalid(format!("adding a token to the output tokenizer: {e}")))
}

/// `source: union`: the stripped base tokenizer, then every other token below its model's
/// vocab_size (ordinary tokens first, then added tokens with their first-seen settings).
fn union(base: usize, toks: &[Tokenizer], norm: &Normalized) -> Result<Tokenizer, PlanError> {
    let order = std::iter::once(base).chain((0..toks.len()).filter(|&i| i != base));
    let mut ordinary: IndexSet<String> = IndexSet::new();
    let mut added: IndexMap<String, AddedToken> = IndexMap::new();
    for i in order {
        let t = &toks[i];
        let size = config_vocab_size(&norm.models[i]).unwrap_or(t.get_vocab_size(false) as u64);
        let mut vocab: Vec<(String, u32)> = t.get_vocab(true).into_iter().collect();
        vocab.sort_by_key(|(_, id)| *id);
        ordinary.extend(
            vocab
                .into_iter()
                .filter(|(_, id)| u64::from(*id) < size)
                .map(|(t, _)| t),
        );
        let mut decoder: Vec<(u32, AddedToken)> = t.get_added_tokens_decoder().into_iter().collect();
        decoder.sort_by_key(|(id, _)| *id);
        for (id, info) in decoder {
            if u64::from(id) < size {
                added.entry(info.content.clone()).or_insert(info);
            }
        }
    }
    let mut out = toks[base].clone();
    let base_vocab = toks[base].get_vocab(true);
    for t in ordinary {
        if !added.contains_key(&t) && !base_vocab.contains_key(&t) {
            add(&mut out, AddedToken::from(t, false))?;
        }
    }
    for info in added.into_values() {
        add(&mut out, info)?;
    }
    Ok(out)
}
