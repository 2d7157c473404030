//! The YAML schema (raw serde structs), the rules checked after parsing, and the mapping of
//! parser errors and ignored keys to located messages.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use super::error::{ConfigError, ConfigErrorKind};
use super::locate::{Seg, locate, segments, yaml_path};
use super::tokenizer::{RawTokenizer, TokenEmbeddingSource, TokenizerConfig, TokenizerSource};
use super::warnings;
use super::{DTypeName, InputModel, MAX_CONFIG_BYTES, MergeConfig, ModelRef, OutputSlice, ParamMap, SliceSource};

#[derive(Deserialize)]
#[serde(expecting = "a mergekit config mapping (merge_method, models or slices, parameters, ...)")]
struct RawConfig {
    merge_method: Option<String>,
    models: Option<Vec<RawModel>>,
    slices: Option<Vec<RawSlice>>,
    modules: Option<indexmap::IndexMap<String, RawModule>>,
    base_model: Option<ModelRef>,
    #[serde(default, deserialize_with = "null_as_default")]
    parameters: ParamMap,
    dtype: Option<DTypeName>,
    out_dtype: Option<DTypeName>,
    tokenizer_source: Option<TokenizerSource>,
    tokenizer: Option<RawTokenizer>,
    chat_template: Option<String>,
    random_seed: Option<u64>,
}

/// One entry of `modules:` (mergekit's normalized form writes a single `default` module).
#[derive(Deserialize)]
#[serde(expecting = "a module {slices or models}")]
struct RawModule {
    slices: Option<Vec<RawSlice>>,
    models: Option<Vec<RawModel>>,
    parameters: Option<serde_norway::Value>,
}

#[derive(Deserialize)]
#[serde(expecting = "a model entry {model, parameters}")]
struct RawModel {
    model: ModelRef,
    #[serde(default, deserialize_with = "null_as_default")]
    parameters: ParamMap,
}

#[derive(Deserialize)]
#[serde(expecting = "a slice {sources, base_model, parameters}")]
struct RawSlice {
    sources: Vec<RawSource>,
    base_model: Option<ModelRef>,
    #[serde(default, deserialize_with = "null_as_default")]
    parameters: ParamMap,
    /// Parsed and unused by mergekit; accepted silently.
    #[allow(dead_code)]
    residual_weight: Option<serde_norway::Value>,
}

#[derive(Deserialize)]
#[serde(expecting = "a slice source {model, layer_range, parameters}")]
struct RawSource {
    model: ModelRef,
    layer_range: Option<LayerRange>,
    #[serde(default, deserialize_with = "null_as_default")]
    parameters: ParamMap,
}

/// `null` (or an empty value) reads as the default, like an absent key.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `[start, end]` with `start <= end`; checked while parsing so errors carry its position.
struct LayerRange(u64, u64);

impl LayerRange {
    /// Number of layers (the range is half-open).
    fn len(&self) -> u64 {
        self.1.saturating_sub(self.0)
    }
}

impl<'de> Deserialize<'de> for LayerRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(LayerRangeVisitor)
    }
}

struct LayerRangeVisitor;

impl<'de> Visitor<'de> for LayerRangeVisitor {
    type Value = LayerRange;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a layer range [start, end] of two non-negative integers")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LayerRange, A::Error> {
        let start: u64 = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let end: u64 = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(1, &self))?;
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(3, &self));
        }
        if start > end {
            return Err(de::Error::custom(format!(
                "layer_range [{start}, {end}] is reversed: the start must not exceed the end \
                 (the range is half-open, [start, end))"
            )));
        }
        Ok(LayerRange(start, end))
    }
}

impl<'de> Deserialize<'de> for DTypeName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(DTypeVisitor)
    }
}

/// Fails inside the visit, so the error carries the value's position.
struct DTypeVisitor;

impl Visitor<'_> for DTypeVisitor {
    type Value = DTypeName;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a dtype name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<DTypeName, E> {
        DTypeName::parse(name).ok_or_else(|| {
            E::custom(format!(
                "unknown dtype `{name}`: expected bfloat16, float16, float32 or float64 \
                 (optionally prefixed with `torch.`)"
            ))
        })
    }
}

/// Parses, validates and collects warnings (see [`super::parse_config`]).
pub(crate) fn parse(text: &str, file: &Path) -> Result<MergeConfig, ConfigError> {
    let size = u64::try_from(text.len()).unwrap_or(u64::MAX);
    if size > MAX_CONFIG_BYTES {
        let kind = ConfigErrorKind::TooLarge {
            size,
            max: MAX_CONFIG_BYTES,
        };
        return Err(ConfigError::new(file, None, kind));
    }
    if is_blank(text) {
        return Err(ConfigError::new(file, None, ConfigErrorKind::Empty));
    }
    check_flow_depth(text, file)?;
    let mut ignored: Vec<Vec<Seg>> = Vec::new();
    let on_ignored = |path: serde_ignored::Path<'_>| ignored.push(segments(&path));
    let raw: RawConfig = if text.contains("<<") {
        // YAML merge keys (`<<: *anchor`, which PyYAML applies) are only resolved on a
        // `Value`, which carries no positions: errors past this point are file-level.
        let mut value: serde_norway::Value = serde_norway::from_str(text).map_err(|e| parser_error(file, &e))?;
        value.apply_merge().map_err(|e| parser_error(file, &e))?;
        serde_ignored::deserialize(value, on_ignored).map_err(|e| parser_error(file, &e))?
    } else {
        let deserializer = serde_norway::Deserializer::from_str(text);
        serde_ignored::deserialize(deserializer, on_ignored).map_err(|e| parser_error(file, &e))?
    };
    let mut config = validate(raw, text, file)?;
    config.warnings = warnings::unknown_keys(&ignored, text, file);
    Ok(config)
}

/// Deepest nesting of flow collections (`[...]`, `{...}`) accepted. The YAML scanner is
/// quadratic in this depth; real configs need a handful of levels.
const MAX_FLOW_DEPTH: usize = 64;

/// Rejects deeply nested flow collections before the YAML scanner sees them. Brackets are
/// counted without regard to quoting, which can only over-count, and only for absurd text.
fn check_flow_depth(text: &str, file: &Path) -> Result<(), ConfigError> {
    let mut depth = 0usize;
    for (line_index, line) in text.lines().enumerate() {
        for (column, c) in line.chars().enumerate() {
            match c {
                '[' | '{' => depth += 1,
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            if depth > MAX_FLOW_DEPTH {
                let message = format!("`[`/`{{` nested more than {MAX_FLOW_DEPTH} levels deep");
                let position = Some((line_index + 1, column + 1));
                return Err(ConfigError::new(file, position, ConfigErrorKind::Parse(message)));
            }
        }
    }
    Ok(())
}

/// Only whitespace, comments and document markers.
fn is_blank(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---" || l == "...")
}

/// Moves the parser's position out of its message and into the error's line and column.
fn parser_error(file: &Path, error: &serde_norway::Error) -> ConfigError {
    let location = error.location().map(|l| (l.line(), l.column()));
    let mut message = error.to_string();
    if let Some((line, column)) = location {
        let suffix = format!(" at line {line} column {column}");
        if let Some(at) = message.find(&suffix) {
            message.replace_range(at..at + suffix.len(), "");
        }
    }
    ConfigError::new(file, location, ConfigErrorKind::Parse(message))
}

fn validate(mut raw: RawConfig, text: &str, file: &Path) -> Result<MergeConfig, ConfigError> {
    let fail = |path: Vec<Seg>, kind| ConfigError::new(file, locate(text, &path), kind);
    let invalid = |message: String| ConfigErrorKind::Invalid(message);

    if let Some(modules) = raw.modules.take() {
        let unsupported = |reason: &'static str| {
            fail(
                yaml_path!["modules"],
                ConfigErrorKind::Unsupported {
                    key: "modules".to_string(),
                    reason,
                },
            )
        };
        if raw.models.is_some() || raw.slices.is_some() {
            let message = "`modules` and `models`/`slices` are both given; use exactly one of them";
            return Err(fail(yaml_path!["modules"], invalid(message.into())));
        }
        if modules.len() != 1 {
            return Err(unsupported(
                "multi-module configs (more than one module) are not supported yet; use one module, \
                 `models:` or `slices:`",
            ));
        }
        let (_, module) = modules.into_iter().next().expect("one module");
        if module.parameters.is_some() {
            return Err(unsupported(
                "module-level `parameters` are not supported yet; put them at the top level",
            ));
        }
        // One module is a whole-model config: its `models`/`slices` are the config's.
        raw.models = module.models;
        raw.slices = module.slices;
    }

    let merge_method = match raw.merge_method {
        None => {
            let kind = invalid("missing required key `merge_method`".into());
            return Err(ConfigError::new(file, None, kind));
        }
        Some(m) if m.trim().is_empty() => {
            return Err(fail(
                yaml_path!["merge_method"],
                invalid("`merge_method` is empty".into()),
            ));
        }
        Some(m) => m,
    };

    let (models_given, slices_given) = (raw.models.is_some(), raw.slices.is_some());
    let models = raw.models.unwrap_or_default();
    let slices = raw.slices.unwrap_or_default();
    match (models.is_empty(), slices.is_empty()) {
        (false, false) => {
            let message = "`models` and `slices` are both given; use exactly one of them";
            return Err(fail(yaml_path!["slices"], invalid(message.into())));
        }
        (true, true) => {
            let message = "nothing to merge: give a non-empty `models` or `slices` list";
            let key = if slices_given || !models_given {
                "slices"
            } else {
                "models"
            };
            return Err(fail(yaml_path![key], invalid(message.into())));
        }
        _ => {}
    }
    for (i, slice) in slices.iter().enumerate() {
        check_slice(i, slice).map_err(|(path, message)| fail(path, invalid(message)))?;
    }

    for (key, dtype) in [("dtype", raw.dtype), ("out_dtype", raw.out_dtype)] {
        if let Some(d) = dtype
            && !d.is_float()
        {
            let message = format!(
                "`{key}: {d}` is not a floating-point dtype (mergekit 0.1.5 rejects it too); use \
                 bfloat16, float16, float32 or float64"
            );
            return Err(fail(yaml_path![key], invalid(message)));
        }
    }

    let tokenizer = match (raw.tokenizer_source, raw.tokenizer) {
        (Some(_), Some(_)) => {
            let message = "`tokenizer_source` and `tokenizer` are both given; mergekit 0.1.5 refuses \
                           this too (\"Cannot specify both tokenizer_source and tokenizer\"): keep one";
            return Err(fail(yaml_path!["tokenizer"], invalid(message.into())));
        }
        (Some(source), None) => Some(TokenizerConfig {
            source,
            tokens: Vec::new(),
            pad_to_multiple_of: None,
            key: "tokenizer_source",
        }),
        (None, Some(t)) => Some(t.into_config()),
        (None, None) => None,
    };
    if let Some(t) = &tokenizer {
        let in_merge = |m: &ModelRef| {
            raw.base_model.as_ref() == Some(m)
                || models.iter().any(|x| &x.model == m)
                || slices.iter().any(|s| s.sources.iter().any(|x| &x.model == m))
        };
        if let TokenizerSource::Model(m) = &t.source
            && !in_merge(m)
        {
            let message = format!(
                "the tokenizer source `{m}` is not one of the merged models; shardmerge takes the \
                 output tokenizer from a merged model only (mergekit 0.1.5 would load any model's)"
            );
            let path = if t.key == "tokenizer" {
                yaml_path!["tokenizer", "source"]
            } else {
                yaml_path!["tokenizer_source"]
            };
            return Err(fail(path, invalid(message)));
        }
        for (token, setting) in &t.tokens {
            let model = match &setting.source {
                Some(TokenEmbeddingSource::Model(m)) | Some(TokenEmbeddingSource::ModelToken { model: m, .. }) => m,
                _ => continue,
            };
            if !in_merge(model) {
                let message = format!(
                    "token `{token}` takes its embedding from model `{model}`, which is not one of \
                     the merged models (mergekit 0.1.5 fails mid-merge: the vocabulary weight of \
                     that model is missing); use one of the models listed under `models`/`slices`"
                );
                return Err(fail(
                    yaml_path!["tokenizer", "tokens", token.as_str(), "source"],
                    invalid(message),
                ));
            }
        }
    }

    if let Some(t) = &raw.chat_template {
        super::tokenizer::check_chat_template(t).map_err(|m| fail(yaml_path!["chat_template"], invalid(m)))?;
    }

    Ok(MergeConfig {
        merge_method,
        models: models
            .into_iter()
            .map(|m| InputModel {
                model: m.model,
                parameters: m.parameters,
            })
            .collect(),
        slices: slices
            .into_iter()
            .map(|s| OutputSlice {
                sources: s
                    .sources
                    .into_iter()
                    .map(|src| SliceSource {
                        model: src.model,
                        layer_range: src.layer_range.map(|r| (r.0, r.1)),
                        parameters: src.parameters,
                    })
                    .collect(),
                base_model: s.base_model,
                parameters: s.parameters,
            })
            .collect(),
        base_model: raw.base_model,
        parameters: raw.parameters,
        dtype: raw.dtype,
        out_dtype: raw.out_dtype,
        random_seed: raw.random_seed,
        tokenizer,
        chat_template: raw.chat_template,
        warnings: Vec::new(),
        source_text: text.to_string(),
        file: file.to_path_buf(),
    })
}

/// A slice needs sources, and all its layer ranges must have the same length.
fn check_slice(i: usize, slice: &RawSlice) -> Result<(), (Vec<Seg>, String)> {
    if slice.sources.is_empty() {
        return Err((
            yaml_path!["slices", i, "sources"],
            format!("`slices[{i}].sources` is empty"),
        ));
    }
    let mut ranges = slice
        .sources
        .iter()
        .enumerate()
        .filter_map(|(j, s)| s.layer_range.as_ref().map(|r| (j, r)));
    let Some((first_j, first)) = ranges.next() else {
        return Ok(());
    };
    for (j, r) in ranges {
        if r.len() != first.len() {
            let message = format!(
                "the sources of `slices[{i}]` have different layer counts: `sources[{first_j}]` \
                 takes [{}, {}] ({} layers) but `sources[{j}]` takes [{}, {}] ({} layers)",
                first.0,
                first.1,
                first.len(),
                r.0,
                r.1,
                r.len(),
            );
            return Err((yaml_path!["slices", i, "sources", j, "layer_range"], message));
        }
    }
    Ok(())
}
