//! Errors of the config module: [`ConfigError`] for problems in a config file (always naming
//! the file, and the line and column when known) and [`ParamError`] for problems found while
//! evaluating a parameter for one tensor.

use std::path::{Path, PathBuf};

/// A problem with a config file: which file, where in it, and what is wrong.
///
/// Displays as `FILE:LINE:COLUMN: message`, or `FILE: message` when no position is known.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", origin(.file, .line, .column))]
pub struct ConfigError {
    /// The config file, as given to [`parse_config`](super::parse_config).
    pub file: PathBuf,
    /// 1-based line of the offending text, when known.
    pub line: Option<usize>,
    /// 1-based column of the offending text, when known.
    pub column: Option<usize>,
    /// What is wrong.
    pub kind: ConfigErrorKind,
}

impl ConfigError {
    /// An error at an optional `(line, column)` position of `file`.
    pub(crate) fn new(file: &Path, position: Option<(usize, usize)>, kind: ConfigErrorKind) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: position.map(|p| p.0),
            column: position.map(|p| p.1),
            kind,
        }
    }
}

/// Renders `file[:line[:column]]`.
fn origin(file: &Path, line: &Option<usize>, column: &Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("{}:{l}:{c}", file.display()),
        (Some(l), None) => format!("{}:{l}", file.display()),
        _ => file.display().to_string(),
    }
}

/// The kinds of [`ConfigError`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigErrorKind {
    /// The file could not be read.
    #[error("cannot read the config file: {0}")]
    Read(std::io::Error),
    /// The file is larger than the size cap for untrusted YAML.
    #[error("the config file is {size} bytes, more than the {max}-byte limit")]
    TooLarge {
        /// Size of the file in bytes.
        size: u64,
        /// The limit in bytes.
        max: u64,
    },
    /// The file is not UTF-8 text.
    #[error("the config file is not valid UTF-8")]
    NotUtf8,
    /// The file holds no YAML document (only whitespace or comments).
    #[error("the config file is empty")]
    Empty,
    /// YAML syntax error, or a value of the wrong shape or type, as reported while parsing.
    /// The message starts with the YAML path of the value when it is not the root.
    #[error("{0}")]
    Parse(String),
    /// The YAML is well formed but the config breaks a rule (for example both `models` and
    /// `slices`, or sources of one slice with different layer counts).
    #[error("{0}")]
    Invalid(String),
    /// A mergekit feature that shardmerge does not implement yet; ignoring it would silently
    /// produce a different model, so it is an error.
    #[error("`{key}` is not supported yet: {reason}")]
    Unsupported {
        /// The config key, e.g. `tokenizer_source`.
        key: String,
        /// Why it matters and what to do instead.
        reason: &'static str,
    },
}

/// A problem found while evaluating a parameter for one tensor.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    /// A configured value does not validate against the parameter's declared type.
    #[error("invalid value {value}{} ({}tensor `{tensor}`): {reason}", for_param(.param), model_prefix(.model))]
    InvalidValue {
        /// Parameter name (set by [`resolve_parameter`](super::resolve_parameter)).
        param: Option<String>,
        /// Model whose parameter was evaluated (set by `resolve_parameter`).
        model: Option<String>,
        /// Tensor name the setting was evaluated against.
        tensor: String,
        /// The offending value as written (strings quoted).
        value: String,
        /// What was expected.
        reason: String,
    },
    /// The merge method's default value does not validate (a bug in the method definition).
    #[error("invalid default {value} for parameter `{param}`: {reason}")]
    InvalidDefault {
        /// Parameter name.
        param: String,
        /// The default value.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A required parameter has no value at any level and no default.
    #[error("missing required parameter `{param}` for {}tensor `{tensor}`", model_prefix_for(.model))]
    Missing {
        /// Parameter name.
        param: String,
        /// Model the parameter was resolved for (empty for shared parameters).
        model: String,
        /// Tensor name the parameter was resolved for.
        tensor: String,
    },
}

impl ParamError {
    /// Names the parameter and model in a [`ParamError::InvalidValue`] (an empty model name
    /// is left out).
    pub(crate) fn in_context(mut self, param_name: &str, model_name: &str) -> Self {
        if let ParamError::InvalidValue { param, model, .. } = &mut self {
            param.get_or_insert_with(|| param_name.to_string());
            if model.is_none() && !model_name.is_empty() {
                *model = Some(model_name.to_string());
            }
        }
        self
    }
}

fn for_param(param: &Option<String>) -> String {
    param
        .as_ref()
        .map(|p| format!(" for parameter `{p}`"))
        .unwrap_or_default()
}

fn model_prefix(model: &Option<String>) -> String {
    model.as_ref().map(|m| format!("model `{m}`, ")).unwrap_or_default()
}

fn model_prefix_for(model: &str) -> String {
    if model.is_empty() {
        String::new()
    } else {
        format!("model `{model}` ")
    }
}
