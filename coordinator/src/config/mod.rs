//! mergekit 0.1.5 merge configs: parsing, validation and parameter evaluation.
//!
//! [`parse_config`] reads the YAML a user would give `mergekit-yaml` into a [`MergeConfig`];
//! [`Setting::evaluate`] and [`resolve_parameter`] compute a parameter's value for one model
//! and tensor exactly as mergekit does (semantics §2.1–2.5).
//!
//! Where shardmerge deliberately differs from mergekit 0.1.5:
//! * unknown keys are reported as warnings naming their path and line (mergekit drops them
//!   silently), never as errors;
//! * a top-level `random_seed` is honoured (mergekit ignores it; only its CLI flag counts);
//! * features that are not implemented yet are errors rather than silently ignored, because
//!   ignoring them would produce a different model: `modules`, LoRA references,
//!   `override_architecture`;
//! * a `chat_template` that names a built-in template (`chatml`, ...) gets shardmerge's own
//!   text of that template, which renders as mergekit's does (`plan::chat_templates`);
//! * `dtype`/`out_dtype: int64` is rejected at parse time (mergekit rejects it when used);
//! * a parameter set to `null` is an error; a duplicated key inside one mapping of the config
//!   schema is an error (PyYAML keeps the last; inside `parameters:` the last one wins too);
//! * YAML scalars are resolved by serde_norway (YAML 1.2 style), not PyYAML (YAML 1.1). For
//!   float, int and bool parameters the evaluated values agree, because values are coerced
//!   the pydantic way at evaluation; see [`Scalar`]. Only str-typed parameters (none in the
//!   built-in methods) can tell the difference: quote numeric-looking strings there.

mod coerce;
mod error;
mod locate;
mod model_ref;
mod parse;
mod resolve;
mod setting;
mod setting_de;
#[cfg(test)]
mod tests;
mod tokenizer;
mod warnings;

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

pub use error::{ConfigError, ConfigErrorKind, ParamError};
pub use model_ref::{ModelRef, ModelRefError};
pub use resolve::{layer_t, resolve_parameter};
pub use setting::{Condition, ParamMap, ParamScope, ParamType, Scalar, Setting};
pub use tokenizer::{TokenEmbedding, TokenEmbeddingSource, TokenizerConfig, TokenizerSource};

/// Largest config file accepted, in bytes (configs are untrusted input).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// A parsed and validated merge config.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeConfig {
    /// Merge method name as written, e.g. `slerp` (checked against the registry later).
    pub merge_method: String,
    /// Whole-model syntax (`models:`). Exactly one of `models` and `slices` is non-empty.
    pub models: Vec<InputModel>,
    /// Layer-slice syntax (`slices:`).
    pub slices: Vec<OutputSlice>,
    /// Global base model; a slice's own `base_model` overrides it for that slice.
    pub base_model: Option<ModelRef>,
    /// Top-level parameters (lowest configured precedence).
    pub parameters: ParamMap,
    /// Dtype inputs are cast to on load.
    pub dtype: Option<DTypeName>,
    /// Dtype outputs are cast to before writing.
    pub out_dtype: Option<DTypeName>,
    /// Seed for random sparsification. Unlike mergekit, honoured (shardmerge extension).
    pub random_seed: Option<u64>,
    /// The output tokenizer (`tokenizer_source:` or `tokenizer:`); `None`: the donor's is
    /// copied and vocabularies must agree.
    pub tokenizer: Option<TokenizerConfig>,
    /// `chat_template:`: `auto`, a built-in template's name or a Jinja template (checked by the
    /// rules of `config/tokenizer.rs`; names are resolved by the planner).
    pub chat_template: Option<String>,
    /// One message per unknown (ignored) key, naming the file, line and path, e.g.
    /// ``cfg.yml:6:9: unknown key `slices[0].sources[1].weigth` (ignored; ...)``.
    pub warnings: Vec<String>,
    /// The config text exactly as given.
    pub source_text: String,
    /// The config file, as given to [`parse_config`] (used in messages).
    pub file: PathBuf,
}

/// One entry of `models:`.
#[derive(Debug, Clone, PartialEq)]
pub struct InputModel {
    /// The model.
    pub model: ModelRef,
    /// Per-model parameters (the source level of the precedence).
    pub parameters: ParamMap,
}

/// One entry of `slices:`: a run of output layers.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSlice {
    /// The inputs merged into this slice; all contribute the same number of layers.
    pub sources: Vec<SliceSource>,
    /// This slice's base model, overriding the global one.
    pub base_model: Option<ModelRef>,
    /// Slice-level parameters.
    pub parameters: ParamMap,
}

impl OutputSlice {
    /// Parameter maps of the sources whose model is `model`, in listed order: the
    /// `source_levels` of [`resolve_parameter`].
    pub fn source_parameters(&self, model: &ModelRef) -> Vec<&ParamMap> {
        self.sources
            .iter()
            .filter(|s| &s.model == model)
            .map(|s| &s.parameters)
            .collect()
    }
}

/// One input of an output slice.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceSource {
    /// The model.
    pub model: ModelRef,
    /// Half-open input layer range `[start, end)`; `None` if the config omits it.
    pub layer_range: Option<(u64, u64)>,
    /// Per-source parameters (the source level of the precedence).
    pub parameters: ParamMap,
}

/// A dtype name as mergekit accepts it (`bfloat16`, `float16`, `float32`, `float64`, `int64`,
/// each optionally prefixed with `torch.`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DTypeName {
    /// bfloat16.
    BFloat16,
    /// float16.
    Float16,
    /// float32.
    Float32,
    /// float64.
    Float64,
    /// int64 (a valid name, but rejected for `dtype`/`out_dtype`).
    Int64,
}

impl DTypeName {
    /// Parses a name, with or without the `torch.` prefix.
    pub fn parse(name: &str) -> Option<Self> {
        match name.strip_prefix("torch.").unwrap_or(name) {
            "bfloat16" => Some(DTypeName::BFloat16),
            "float16" => Some(DTypeName::Float16),
            "float32" => Some(DTypeName::Float32),
            "float64" => Some(DTypeName::Float64),
            "int64" => Some(DTypeName::Int64),
            _ => None,
        }
    }

    /// The canonical name, without `torch.`.
    pub fn as_str(self) -> &'static str {
        match self {
            DTypeName::BFloat16 => "bfloat16",
            DTypeName::Float16 => "float16",
            DTypeName::Float32 => "float32",
            DTypeName::Float64 => "float64",
            DTypeName::Int64 => "int64",
        }
    }

    /// Whether this is a floating-point dtype.
    pub fn is_float(self) -> bool {
        self != DTypeName::Int64
    }
}

impl fmt::Display for DTypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses and validates mergekit YAML. `file` is used only in messages.
///
/// Syntax and type errors carry the line and column the YAML parser reports; rule violations
/// point at the offending key. Unknown keys become [`MergeConfig::warnings`].
pub fn parse_config(text: &str, file: &Path) -> Result<MergeConfig, ConfigError> {
    parse::parse(text, file)
}

/// Reads `path` (at most [`MAX_CONFIG_BYTES`]) and parses it with [`parse_config`].
pub fn load_config(path: &Path) -> Result<MergeConfig, ConfigError> {
    let fail = |kind| ConfigError::new(path, None, kind);
    let too_large = |size| {
        fail(ConfigErrorKind::TooLarge {
            size,
            max: MAX_CONFIG_BYTES,
        })
    };
    let file = std::fs::File::open(path).map_err(|e| fail(ConfigErrorKind::Read(e)))?;
    let declared = file.metadata().map_or(0, |m| m.len());
    if declared > MAX_CONFIG_BYTES {
        return Err(too_large(declared));
    }
    // The cap holds even if the file grows or is not a regular file.
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(ConfigErrorKind::Read(e)))?;
    let read = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if read > MAX_CONFIG_BYTES {
        return Err(too_large(read));
    }
    let text = String::from_utf8(bytes).map_err(|_| fail(ConfigErrorKind::NotUtf8))?;
    parse_config(&text, path)
}
