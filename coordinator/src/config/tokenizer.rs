//! `tokenizer_source:`, `tokenizer:` and `chat_template:` (semantics §2.1, §5, §7.5).
//!
//! The legacy `tokenizer_source: union | base | MODEL` and the newer
//! `tokenizer: {source, tokens: {TOKEN: {source, force}}, pad_to_multiple_of}` both become one
//! [`TokenizerConfig`]; mergekit 0.1.5 refuses a config that gives both.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::ModelRef;

/// Which tokenizer the merged model gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerSource {
    /// The base tokenizer plus every token any model adds (mergekit's default).
    Union,
    /// The base model's tokenizer, without entries past its `vocab_size`.
    Base,
    /// That model's tokenizer, as it is.
    Model(ModelRef),
}

impl fmt::Display for TokenizerSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenizerSource::Union => f.write_str("union"),
            TokenizerSource::Base => f.write_str("base"),
            TokenizerSource::Model(m) => write!(f, "{m}"),
        }
    }
}

impl<'de> Deserialize<'de> for TokenizerSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SourceVisitor)
    }
}

struct SourceVisitor;

impl<'de> Visitor<'de> for SourceVisitor {
    type Value = TokenizerSource;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`union`, `base` or a model reference")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<TokenizerSource, E> {
        Ok(match v {
            "union" => TokenizerSource::Union,
            "base" => TokenizerSource::Base,
            _ => TokenizerSource::Model(ModelRef::parse(v).map_err(E::custom)?),
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TokenizerSource, A::Error> {
        ModelRef::deserialize(de::value::MapAccessDeserializer::new(map)).map(TokenizerSource::Model)
    }
}

/// Where a token's default embedding comes from (`tokens: {TOKEN: {source: ...}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenEmbeddingSource {
    /// That model's row for the same token.
    Model(ModelRef),
    /// A raw row of a model, by id or by that model's token (`kind: model_token`).
    ModelToken {
        /// The model.
        model: ModelRef,
        /// Row index in the model's own tensor.
        token_id: Option<i64>,
        /// A token of the model's own vocabulary.
        token: Option<String>,
    },
    /// Zeros (`kind: zero`).
    Zero,
}

impl<'de> Deserialize<'de> for TokenEmbeddingSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EmbeddingSourceVisitor)
    }
}

struct EmbeddingSourceVisitor;

impl<'de> Visitor<'de> for EmbeddingSourceVisitor {
    type Value = TokenEmbeddingSource;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a model reference, {kind: model_token, model, token_id | token} or {kind: zero}")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<TokenEmbeddingSource, E> {
        ModelRef::parse(v).map(TokenEmbeddingSource::Model).map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TokenEmbeddingSource, A::Error> {
        let value = serde_norway::Mapping::deserialize(de::value::MapAccessDeserializer::new(map))?;
        let get = |k: &str| value.get(k).filter(|v| !v.is_null());
        let kind = match get("kind") {
            None => {
                let r =
                    ModelRef::deserialize(serde_norway::Value::Mapping(value.clone())).map_err(de::Error::custom)?;
                return Ok(TokenEmbeddingSource::Model(r));
            }
            Some(k) => k.as_str().unwrap_or_default().to_string(),
        };
        let allowed: &[&str] = match kind.as_str() {
            "zero" => &["kind"],
            "model_token" => &["kind", "model", "token_id", "token"],
            other => {
                return Err(de::Error::custom(format!(
                    "unknown token source kind `{other}`: expected `model_token` or `zero`"
                )));
            }
        };
        if let Some(k) = value.keys().find(|k| !k.as_str().is_some_and(|k| allowed.contains(&k))) {
            let k = k.as_str().unwrap_or("?");
            return Err(de::Error::custom(format!(
                "unexpected key `{k}` in a `kind: {kind}` token source"
            )));
        }
        if kind == "zero" {
            return Ok(TokenEmbeddingSource::Zero);
        }
        let model = get("model").ok_or_else(|| de::Error::custom("`kind: model_token` needs `model`"))?;
        let model = ModelRef::deserialize(model.clone()).map_err(de::Error::custom)?;
        let token_id = match get("token_id") {
            None => None,
            Some(v) => Some(
                v.as_i64()
                    .ok_or_else(|| de::Error::custom("`token_id` must be an integer"))?,
            ),
        };
        let token = match get("token") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .ok_or_else(|| de::Error::custom("`token` must be a string"))?
                    .to_string(),
            ),
        };
        match (&token_id, &token) {
            (None, None) => Err(de::Error::custom("`kind: model_token` needs `token_id` or `token`")),
            (Some(_), Some(_)) => Err(de::Error::custom(
                "`kind: model_token` takes only one of `token_id` and `token`",
            )),
            _ => Ok(TokenEmbeddingSource::ModelToken { model, token_id, token }),
        }
    }
}

/// One entry of `tokens:`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a token setting {source, force}")]
pub struct TokenEmbedding {
    /// Where the token's default row comes from; `None` = the usual rule.
    #[serde(default)]
    pub source: Option<TokenEmbeddingSource>,
    /// Use the default row even for models that have the token.
    #[serde(default)]
    pub force: bool,
}

/// The output tokenizer: from `tokenizer_source:` or `tokenizer:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizerConfig {
    /// Which vocabulary the output gets.
    pub source: TokenizerSource,
    /// Per-token settings, in config order.
    pub tokens: Vec<(String, TokenEmbedding)>,
    /// Round the output vocabulary up to a multiple of this (0 or absent: no rounding).
    pub pad_to_multiple_of: Option<u64>,
    /// The config key it came from (`tokenizer` or `tokenizer_source`), for messages.
    pub key: &'static str,
}

/// The raw `tokenizer:` mapping.
#[derive(Deserialize)]
#[serde(expecting = "a tokenizer mapping {source, tokens, pad_to_multiple_of}")]
pub(crate) struct RawTokenizer {
    #[serde(default)]
    source: Option<TokenizerSource>,
    #[serde(default)]
    tokens: Option<TokenMap>,
    #[serde(default)]
    pad_to_multiple_of: Option<u64>,
}

impl RawTokenizer {
    pub(crate) fn into_config(self) -> TokenizerConfig {
        TokenizerConfig {
            source: self.source.unwrap_or(TokenizerSource::Union),
            tokens: self.tokens.map(|t| t.0).unwrap_or_default(),
            pad_to_multiple_of: self.pad_to_multiple_of.filter(|&p| p > 0),
            key: "tokenizer",
        }
    }
}

/// `tokens:` in config order; a repeated token is an error.
struct TokenMap(Vec<(String, TokenEmbedding)>);

impl<'de> Deserialize<'de> for TokenMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(TokenMapVisitor)
    }
}

struct TokenMapVisitor;

impl<'de> Visitor<'de> for TokenMapVisitor {
    type Value = TokenMap;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping from tokens to {source, force}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TokenMap, A::Error> {
        let mut out: Vec<(String, TokenEmbedding)> = Vec::new();
        while let Some(token) = map.next_key::<String>()? {
            let setting = map.next_value::<Option<TokenEmbedding>>()?.unwrap_or_default();
            if out.iter().any(|(t, _)| *t == token) {
                return Err(de::Error::custom(format!("token `{token}` is listed twice")));
            }
            out.push((token, setting));
        }
        Ok(TokenMap(out))
    }
}

/// `chat_template:` as mergekit 0.1.5 accepts it: `auto`, a built-in name (see
/// [`crate::plan::chat_templates`]), or a Jinja template of at least 20 characters with a `{`.
pub(crate) fn check_chat_template(t: &str) -> Result<(), String> {
    use crate::plan::chat_templates::{BUILTIN_NAMES, builtin};
    if t == "auto" || builtin(t).is_some() {
        return Ok(());
    }
    let names = BUILTIN_NAMES.join(", ");
    if !t.contains('{') && !t.contains('\n') && t.len() < 256 {
        // Meant as a name, not as a template.
        return Err(format!(
            "unknown chat template name {t:?}: the built-in names are {names} (case-sensitive), or `auto` for \
             the input models' most common template; a template given as text must be Jinja (mergekit 0.1.5 \
             refuses this value too: \"Invalid chat template\")"
        ));
    }
    if t.len() < 20 || !t.contains('{') {
        return Err(format!(
            "invalid chat template {t:?}: expected `auto`, a built-in name ({names}) or a Jinja template of at \
             least 20 characters (mergekit 0.1.5 refuses it too: \"Invalid chat template\")"
        ));
    }
    Ok(())
}
