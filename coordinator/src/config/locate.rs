//! Positions and paths in the YAML text.
//!
//! [`locate`] finds the line and column of a key (or of a list element) from its path by
//! reading the text again with serde_norway and failing on purpose when it gets there: the
//! parser stamps that error with the exact position, which works for block and flow style,
//! quoting and anchors alike. It runs only on error paths and for warnings.

use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a path into the YAML document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

impl From<&str> for Seg {
    fn from(key: &str) -> Self {
        Seg::Key(key.to_string())
    }
}

impl From<usize> for Seg {
    fn from(index: usize) -> Self {
        Seg::Index(index)
    }
}

/// Builds a path from keys (`&str`) and indices (`usize`); needs `Seg` in scope.
macro_rules! yaml_path {
    ($($seg:expr),* $(,)?) => { vec![$(Seg::from($seg)),*] };
}
pub(crate) use yaml_path;

const SENTINEL: &str = "__shardmerge_locate__";

/// 1-based `(line, column)` of the last key of `path` (or of the element, when the path ends
/// with an index), or `None` if the path is not in the document.
pub(crate) fn locate(text: &str, path: &[Seg]) -> Option<(usize, usize)> {
    let deserializer = serde_norway::Deserializer::from_str(text);
    match Nav(path).deserialize(deserializer) {
        Err(e) if e.to_string().contains(SENTINEL) => e.location().map(|l| (l.line(), l.column())),
        _ => None,
    }
}

/// Walks to the rest of the path; at its end, fails on whatever value is there.
struct Nav<'p>(&'p [Seg]);

impl<'de> DeserializeSeed<'de> for Nav<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Nav<'_> {
    type Value = ();

    /// Every visit not overridden below fails with an "expected" message holding the sentinel,
    /// which is what makes the end of the path report its position.
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SENTINEL)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Seg::Key(key), rest)) = self.0.split_first() else {
            return Err(de::Error::invalid_type(de::Unexpected::Map, &self));
        };
        let seed = KeySeed {
            key,
            last: rest.is_empty(),
        };
        while let Some(found) = map.next_key_seed(seed)? {
            if found {
                return map.next_value_seed(Nav(rest));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Seg::Index(index), rest)) = self.0.split_first() else {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &self));
        };
        for _ in 0..*index {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Nav(rest)).map(|_| ())
    }
}

/// Reads one key; `Ok(true)` when it is the wanted one, and fails on it (stamping the key's
/// position) when it is the last step of the path.
#[derive(Clone, Copy)]
struct KeySeed<'k> {
    key: &'k str,
    last: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        match (v == self.key, self.last) {
            (true, true) => Err(E::custom(SENTINEL)),
            (found, _) => Ok(found),
        }
    }
}

/// Converts a path reported by serde_ignored.
pub(crate) fn segments(path: &serde_ignored::Path<'_>) -> Vec<Seg> {
    let mut out = Vec::new();
    let mut current = path;
    loop {
        current = match current {
            serde_ignored::Path::Root => break,
            serde_ignored::Path::Seq { parent, index } => {
                out.push(Seg::Index(*index));
                parent
            }
            serde_ignored::Path::Map { parent, key } => {
                out.push(Seg::Key(key.clone()));
                parent
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => parent,
        };
    }
    out.reverse();
    out
}

/// Parses a path rendered by [`render`] (`slices[0].sources[1].weight`); `None` if malformed.
pub(crate) fn parse_path(path: &str) -> Option<Vec<Seg>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !key.is_empty() {
            out.push(Seg::Key(key.to_string()));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let (index, after) = inner.split_once(']')?;
            out.push(Seg::Index(index.parse().ok()?));
            rest = after;
        }
        if !rest.is_empty() || (key.is_empty() && part.is_empty()) {
            return None;
        }
    }
    Some(out)
}

/// Renders a path as `slices[0].sources[1].weight`.
pub(crate) fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if out.is_empty() => out.push_str(k),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
    }
    out
}

const TOP_KEYS: &[&str] = &[
    "merge_method",
    "models",
    "slices",
    "modules",
    "base_model",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
    "random_seed",
];
const MODEL_KEYS: &[&str] = &["model", "parameters"];
const SLICE_KEYS: &[&str] = &["sources", "base_model", "parameters", "residual_weight"];
const SOURCE_KEYS: &[&str] = &["model", "layer_range", "parameters"];
const REF_KEYS: &[&str] = &["model", "lora", "override_architecture"];
const PATH_KEYS: &[&str] = &["path", "revision"];
const CONDITION_KEYS: &[&str] = &["filter", "value"];
/// Parameter names of mergekit 0.1.5's built-in methods, for the "put it under
/// `parameters:`" hint.
const PARAM_NAMES: &[&str] = &[
    "weight",
    "density",
    "t",
    "normalize",
    "int8_mask",
    "lambda",
    "epsilon",
    "gamma",
    "rescale",
    "select_topk",
    "filter_wise",
    "max_iter",
    "tol",
    "eps",
    "nuslerp_flatten",
    "nuslerp_row_wise",
    "normalize_weights",
    "scale",
    "alpha",
    "r",
];

/// A suggestion for an unknown key at `path` (its last step), if one is likely.
pub(crate) fn unknown_key_hint(path: &[Seg]) -> Option<String> {
    let (Seg::Key(key), parent) = path.split_last()? else {
        return None;
    };
    let is_key = |s: &Seg, names: &[&str]| matches!(s, Seg::Key(k) if names.contains(&k.as_str()));
    let in_parameters = parent.iter().any(|s| is_key(s, &["parameters"]));
    let (known, struct_level): (&[&str], bool) = match parent {
        _ if in_parameters => (CONDITION_KEYS, false),
        [] => (TOP_KEYS, true),
        [Seg::Key(m), Seg::Index(_)] if m == "models" => (MODEL_KEYS, true),
        [Seg::Key(s), Seg::Index(_)] if s == "slices" => (SLICE_KEYS, true),
        [Seg::Key(s), Seg::Index(_), Seg::Key(r), Seg::Index(_)] if s == "slices" && r == "sources" => {
            (SOURCE_KEYS, true)
        }
        [.., a, b] if is_key(a, &["model", "base_model"]) && is_key(b, &["model"]) => (PATH_KEYS, false),
        [.., a] if is_key(a, &["model", "base_model"]) => (REF_KEYS, false),
        _ => return None,
    };
    if let Some(best) = closest(key, known) {
        return Some(format!("did you mean `{best}`?"));
    }
    if struct_level && let Some(param) = closest(key, PARAM_NAMES) {
        return Some(format!("parameters such as `{param}` go under `parameters:`"));
    }
    None
}

/// The candidate within edit distance 2 of `word` (1 for short words), if any.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = if word.chars().count() <= 3 { 1 } else { 2 };
    candidates
        .iter()
        .map(|c| (edit_distance(&word.to_ascii_lowercase(), c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
merge_method: slerp
slices:
  - sources:
      - model: a
        layer_range: [0, 32]
      - {model: b, layer_range: [0, 32], weigth: 1}
parameters:
  t: 0.5
";

    fn at(doc: &str, path: Vec<Seg>) -> Option<(usize, usize)> {
        locate(doc, &path)
    }

    #[test]
    fn locates_keys_and_elements() {
        assert_eq!(at(DOC, yaml_path!["merge_method"]), Some((1, 1)));
        assert_eq!(at(DOC, yaml_path!["parameters", "t"]), Some((8, 3)));
        assert_eq!(
            at(DOC, yaml_path!["slices", 0, "sources", 0, "layer_range"]),
            Some((5, 9))
        );
        assert_eq!(at(DOC, yaml_path!["slices", 0, "sources", 1, "weigth"]), Some((6, 42)));
        assert_eq!(at(DOC, yaml_path!["slices", 0, "sources", 1]), Some((6, 9)));
        assert_eq!(at(DOC, yaml_path!["slices", 1]), None);
        assert_eq!(at(DOC, yaml_path!["nope"]), None);
        assert_eq!(at("a: [\nb: 1\n", yaml_path!["b"]), None);
        assert_eq!(at("a: [\nb: 1\n", yaml_path!["a"]), Some((1, 1)));
    }

    #[test]
    fn parses_rendered_paths() {
        let path = yaml_path!["slices", 0, "sources", 12, "layer_range"];
        assert_eq!(parse_path(&render(&path)), Some(path));
        assert_eq!(parse_path("models[0][1]"), Some(yaml_path!["models", 0, 1]));
        for bad in ["", "a..b", "a[", "a[x]", "a[1]b"] {
            assert_eq!(parse_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn renders_paths() {
        let path = yaml_path!["slices", 0, "sources", 1, "weigth"];
        assert_eq!(render(&path), "slices[0].sources[1].weigth");
    }

    #[test]
    fn hints() {
        let hint = |p: Vec<Seg>| unknown_key_hint(&p);
        assert_eq!(
            hint(yaml_path!["merge_methd"]).as_deref(),
            Some("did you mean `merge_method`?")
        );
        assert_eq!(
            hint(yaml_path!["slices", 0, "sources", 1, "weigth"]).as_deref(),
            Some("parameters such as `weight` go under `parameters:`")
        );
        assert_eq!(
            hint(yaml_path!["parameters", "t", "fliter"]).as_deref(),
            Some("did you mean `filter`?")
        );
        assert_eq!(
            hint(yaml_path!["models", 0, "model", "model", "revison"]).as_deref(),
            Some("did you mean `revision`?")
        );
        assert_eq!(hint(yaml_path!["comment"]), None);
    }
}
