//! Model references: `PATH[@REVISION]` strings and mergekit's dict form
//! `{model: {path, revision}}` (semantics §2.2).
//!
//! LoRA adapters (`PATH+LORA`, or `lora:` in the dict form) and `override_architecture` are
//! rejected with a clear error: shardmerge does not implement them yet, and dropping them would
//! silently merge different weights.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

/// A reference to a model: a local path or a Hugging Face Hub repository, with an optional
/// revision (branch, tag or commit).
///
/// Displays back as `path[@revision]`. Two references are equal when path and revision are.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelRef {
    /// Local directory or Hub repository id, e.g. `mistralai/Mistral-7B-v0.1`.
    pub path: String,
    /// Revision to fetch, if any.
    pub revision: Option<String>,
}

/// Why a model reference string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelRefError {
    /// The reference or its path part is empty.
    #[error("invalid model reference `{0}`: empty model path")]
    EmptyPath(String),
    /// `PATH@` with nothing after the `@`.
    #[error("invalid model reference `{0}`: empty revision after `@`")]
    EmptyRevision(String),
    /// More than one `@` in one part.
    #[error("invalid model reference `{0}`: more than one `@`")]
    TooManyAt(String),
    /// More than one `+`.
    #[error("invalid model reference `{0}`: more than one `+`")]
    TooManyPlus(String),
    /// `PATH+LORA`: LoRA adapters are not implemented.
    #[error(
        "LoRA references are not supported yet: `{0}` (merge the adapter into its model first \
         and reference the merged model)"
    )]
    Lora(String),
}

impl ModelRef {
    /// A reference to `path` without a revision.
    pub fn new(path: impl Into<String>) -> Self {
        ModelRef {
            path: path.into(),
            revision: None,
        }
    }

    /// The same reference pinned to `revision`.
    pub fn with_revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = Some(revision.into());
        self
    }

    /// Parses the string form `PATH[@REVISION]`. `PATH+LORA` is rejected as unsupported.
    pub fn parse(text: &str) -> Result<Self, ModelRefError> {
        let mut plus_parts = text.split('+');
        let model_part = plus_parts.next().unwrap_or_default();
        match plus_parts.count() {
            0 => {}
            1 => return Err(ModelRefError::Lora(text.to_string())),
            _ => return Err(ModelRefError::TooManyPlus(text.to_string())),
        }
        let mut at_parts = model_part.split('@');
        let path = at_parts.next().unwrap_or_default();
        let revision = at_parts.next();
        if at_parts.next().is_some() {
            return Err(ModelRefError::TooManyAt(text.to_string()));
        }
        if path.is_empty() {
            return Err(ModelRefError::EmptyPath(text.to_string()));
        }
        match revision {
            Some("") => Err(ModelRefError::EmptyRevision(text.to_string())),
            Some(rev) => Ok(ModelRef::new(path).with_revision(rev)),
            None => Ok(ModelRef::new(path)),
        }
    }
}

impl FromStr for ModelRef {
    type Err = ModelRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ModelRef::parse(s)
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.revision {
            Some(rev) => write!(f, "{}@{rev}", self.path),
            None => f.write_str(&self.path),
        }
    }
}

const EXPECTING: &str = "a model reference (`path[@revision]` or {model: {path, revision}})";

impl<'de> Deserialize<'de> for ModelRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RefVisitor)
    }
}

/// Visits the string form or the `{model, lora, override_architecture}` dict form.
struct RefVisitor;

impl<'de> Visitor<'de> for RefVisitor {
    type Value = ModelRef;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTING)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ModelRef, E> {
        ModelRef::parse(v).map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ModelRef, A::Error> {
        let mut model = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "model" => model = Some(map.next_value::<ModelPath>()?.0),
                "lora" => map.next_value_seed(RejectUnlessNull(
                    "LoRA references are not supported yet (merge the adapter into its model \
                     first and reference the merged model)",
                ))?,
                "override_architecture" => {
                    map.next_value_seed(RejectUnlessNull("`override_architecture` is not supported yet"))?
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        model.ok_or_else(|| de::Error::custom("model reference is missing `model`"))
    }
}

/// The `model:` entry of the dict form: a `PATH[@REVISION]` string or `{path, revision}`.
struct ModelPath(ModelRef);

impl<'de> Deserialize<'de> for ModelPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PathVisitor).map(ModelPath)
    }
}

struct PathVisitor;

impl<'de> Visitor<'de> for PathVisitor {
    type Value = ModelRef;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a model path (`path[@revision]` or {path, revision})")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ModelRef, E> {
        ModelRef::parse(v).map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ModelRef, A::Error> {
        let mut path: Option<String> = None;
        let mut revision: Option<String> = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "path" => path = Some(map.next_value()?),
                "revision" => revision = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        match path {
            Some(p) if !p.is_empty() => Ok(ModelRef { path: p, revision }),
            _ => Err(de::Error::custom("model path is missing `path`")),
        }
    }
}

/// Accepts an absent value (`null`) and fails with its message on anything else, so the error
/// points at the offending value.
struct RejectUnlessNull(&'static str);

impl<'de> de::DeserializeSeed<'de> for RejectUnlessNull {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RejectUnlessNull {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(self.0))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_path() {
        let r = ModelRef::parse("mistralai/Mistral-7B-v0.1").unwrap();
        assert_eq!(r, ModelRef::new("mistralai/Mistral-7B-v0.1"));
        assert_eq!(r.to_string(), "mistralai/Mistral-7B-v0.1");
    }

    #[test]
    fn revision_round_trips() {
        let r: ModelRef = "org/model@v1.2".parse().unwrap();
        assert_eq!(r.path, "org/model");
        assert_eq!(r.revision.as_deref(), Some("v1.2"));
        assert_eq!(r.to_string(), "org/model@v1.2");
        assert_ne!(r, ModelRef::new("org/model"));
    }

    #[test]
    fn lora_is_unsupported() {
        let err = ModelRef::parse("org/model+org/adapter").unwrap_err();
        assert_eq!(err, ModelRefError::Lora("org/model+org/adapter".into()));
        assert!(err.to_string().starts_with("LoRA references are not supported yet"));
    }

    #[test]
    fn malformed_references() {
        assert!(matches!(ModelRef::parse("a@b@c"), Err(ModelRefError::TooManyAt(_))));
        assert!(matches!(ModelRef::parse("a+b+c"), Err(ModelRefError::TooManyPlus(_))));
        assert!(matches!(ModelRef::parse(""), Err(ModelRefError::EmptyPath(_))));
        assert!(matches!(ModelRef::parse("@main"), Err(ModelRefError::EmptyPath(_))));
        assert!(matches!(ModelRef::parse("a@"), Err(ModelRefError::EmptyRevision(_))));
        assert_eq!(
            ModelRef::parse("a@b@c").unwrap_err().to_string(),
            "invalid model reference `a@b@c`: more than one `@`"
        );
    }

    #[test]
    fn dict_form() {
        let r: ModelRef = serde_norway::from_str("model: {path: org/m, revision: main}").unwrap();
        assert_eq!(r, ModelRef::new("org/m").with_revision("main"));
        let r: ModelRef = serde_norway::from_str("model: org/m@dev\nlora: null").unwrap();
        assert_eq!(r, ModelRef::new("org/m").with_revision("dev"));
    }

    #[test]
    fn dict_form_rejects_lora_and_overrides() {
        let err = serde_norway::from_str::<ModelRef>("model: {path: m}\nlora: {path: l}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("LoRA references are not supported yet"), "{err}");
        let err = serde_norway::from_str::<ModelRef>("model: {path: m}\noverride_architecture: LlamaForCausalLM")
            .unwrap_err()
            .to_string();
        assert!(err.contains("override_architecture"), "{err}");
        let err = serde_norway::from_str::<ModelRef>("lora: ~").unwrap_err().to_string();
        assert!(err.contains("missing `model`"), "{err}");
    }
}
