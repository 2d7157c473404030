//! The YAML mergekit writes for a config it re-serializes (`mergekit_config.yml` and the model
//! card of every `mergekit-multi` stage): the normalized configuration, with `models:` and
//! `slices:` turned into `modules: {default: {slices: ...}}` and every model's full layer range,
//! dumped by PyYAML with sorted keys, block style, and lists of numbers in flow style.
//!
//! Covered: `base_model`, `chat_template`, `dtype`, `merge_method`, `modules`, `out_dtype`,
//! `parameters`, `tokenizer_source`; model references, scalar, gradient and conditional
//! parameters. Strings are written plain when PyYAML would, else single-quoted (multi-line
//! strings such as a Jinja chat template are not written as PyYAML would). The `tokenizer:`
//! mapping is not covered: [`super::parse`] refuses it in multi-stage configs.

use crate::config::{MergeConfig, ModelRef, ParamMap, Scalar, Setting, TokenizerSource};
use crate::plan::Plan;
use crate::pyjson::float_repr;

/// One node of the dumped document.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Map(Vec<(String, Node)>),
    Seq(Vec<Node>),
    Scalar(String),
}

/// The YAML mergekit 0.1.5 writes for `config` once planned as `plan` (for the layer counts).
pub fn mergekit_yaml(config: &MergeConfig, plan: &Plan) -> String {
    normalized_yaml(config, |m: &ModelRef| {
        plan.models
            .iter()
            .find(|p| &p.reference == m)
            .map_or(0, |p| p.num_layers)
    })
}

/// [`mergekit_yaml`] with each model's layer count from `layers`. shardmerge reads the result
/// back as the same merge (one `modules` entry reads as its slices).
pub fn normalized_yaml(config: &MergeConfig, layers: impl Fn(&ModelRef) -> u64) -> String {
    let mut slices = Vec::new();
    if config.slices.is_empty() {
        let sources = config
            .models
            .iter()
            .map(|m| source(&m.model, Some((0, layers(&m.model))), &m.parameters))
            .collect();
        slices.push(Node::Map(vec![("sources".into(), Node::Seq(sources))]));
    } else {
        for s in &config.slices {
            let sources = s
                .sources
                .iter()
                .map(|src| source(&src.model, src.layer_range, &src.parameters))
                .collect();
            let mut entries = vec![("sources".into(), Node::Seq(sources))];
            if let Some(b) = &s.base_model {
                entries.push(("base_model".into(), model_ref(b)));
            }
            if !s.parameters.is_empty() {
                entries.push(("parameters".into(), params(&s.parameters)));
            }
            slices.push(Node::Map(entries));
        }
    }
    let default = Node::Map(vec![("slices".into(), Node::Seq(slices))]);
    let mut top = vec![
        ("merge_method".into(), Node::Scalar(string(&config.merge_method))),
        ("modules".into(), Node::Map(vec![("default".into(), default)])),
    ];
    if let Some(b) = &config.base_model {
        top.push(("base_model".into(), model_ref(b)));
    }
    if let Some(d) = config.dtype {
        top.push(("dtype".into(), Node::Scalar(string(d.as_str()))));
    }
    if let Some(d) = config.out_dtype {
        top.push(("out_dtype".into(), Node::Scalar(string(d.as_str()))));
    }
    if !config.parameters.is_empty() {
        top.push(("parameters".into(), params(&config.parameters)));
    }
    if let Some(t) = config.chat_template.as_deref() {
        top.push(("chat_template".into(), Node::Scalar(string(t))));
    }
    if let Some(t) = config.tokenizer.as_ref().filter(|t| t.key == "tokenizer_source") {
        let source = match &t.source {
            TokenizerSource::Union => "union".to_string(),
            TokenizerSource::Base => "base".to_string(),
            TokenizerSource::Model(m) => m.to_string(),
        };
        top.push(("tokenizer_source".into(), Node::Scalar(string(&source))));
    }
    let mut out = String::new();
    emit_map(&mut out, Node::Map(top), 0);
    out.truncate(out.trim_end().len());
    out
}

fn source(model: &ModelRef, range: Option<(u64, u64)>, parameters: &ParamMap) -> Node {
    let mut entries = vec![("model".into(), model_ref(model))];
    if let Some((a, b)) = range {
        entries.push((
            "layer_range".into(),
            Node::Seq(vec![Node::Scalar(a.to_string()), Node::Scalar(b.to_string())]),
        ));
    }
    if !parameters.is_empty() {
        entries.push(("parameters".into(), params(parameters)));
    }
    Node::Map(entries)
}

fn model_ref(m: &ModelRef) -> Node {
    Node::Scalar(string(&m.to_string()))
}

fn params(map: &ParamMap) -> Node {
    Node::Map(map.iter().map(|(k, v)| (k.clone(), setting(v))).collect())
}

fn setting(s: &Setting) -> Node {
    match s {
        Setting::Scalar(x) => Node::Scalar(scalar(x)),
        Setting::List(xs) => Node::Seq(xs.iter().map(|x| Node::Scalar(scalar(x))).collect()),
        Setting::Conditions(cs) => Node::Seq(
            cs.iter()
                .map(|c| {
                    let mut e = Vec::new();
                    if let Some(f) = &c.filter {
                        e.push(("filter".into(), Node::Scalar(string(f))));
                    }
                    e.push(("value".into(), setting(&c.value)));
                    Node::Map(e)
                })
                .collect(),
        ),
    }
}

fn scalar(x: &Scalar) -> String {
    match x {
        Scalar::Bool(b) => b.to_string(),
        Scalar::Int(i) => i.to_string(),
        Scalar::Float(f) => float(*f),
        Scalar::Str(s) => string(s),
    }
}

/// PyYAML's float: Python's `repr`, lower-cased, with `.0` added to a bare exponent form.
fn float(f: f64) -> String {
    if f.is_nan() {
        return ".nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { ".inf" } else { "-.inf" }.into();
    }
    let r = float_repr(f).to_lowercase();
    if !r.contains('.') && r.contains('e') {
        r.replacen('e', ".0e", 1)
    } else {
        r
    }
}

/// Whether a numeric-looking flow list: PyYAML's dumper here writes lists of numbers inline.
fn is_number(s: &str) -> bool {
    s.parse::<f64>().is_ok() || matches!(s, ".nan" | ".inf" | "-.inf")
}

/// A string as PyYAML writes it in block context: plain when that reads back as the same
/// string, else single-quoted.
fn string(s: &str) -> String {
    if plain_ok(s) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

fn plain_ok(s: &str) -> bool {
    const RESOLVED: &[&str] = &[
        "", "~", "null", "Null", "NULL", "yes", "Yes", "YES", "no", "No", "NO", "true", "True", "TRUE", "false",
        "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", "=", "<<",
    ];
    if RESOLVED.contains(&s) || looks_numeric(s) {
        return false;
    }
    let first = s.chars().next().unwrap_or(' ');
    let second = s.chars().nth(1);
    let followed_by_space = |c: Option<char>| c.is_none_or(|c| c == ' ');
    if "#,[]{}&*!|>'\"%@`".contains(first) || ("?:-".contains(first) && followed_by_space(second)) {
        return false;
    }
    if s.starts_with(' ') || s.ends_with(' ') || s.ends_with(':') {
        return false;
    }
    if s.contains(": ") || s.contains(" #") {
        return false;
    }
    s.chars().all(|c| (' '..='~').contains(&c))
}

/// Strings PyYAML's implicit resolvers would read as a number or timestamp (conservatively:
/// a digit, sign or dot start over number-like characters).
fn looks_numeric(s: &str) -> bool {
    let starts = s.starts_with(|c: char| c.is_ascii_digit() || "+-.".contains(c));
    starts
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() || "+-._:xXoOnNiIfFaA ".contains(c) || c == 'T' || c == 't')
}

fn emit_map(out: &mut String, node: Node, indent: usize) {
    let Node::Map(mut entries) = node else { return };
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let pad = " ".repeat(indent);
    for (i, (k, v)) in entries.into_iter().enumerate() {
        // The first entry of a mapping inside a sequence item follows the `- `.
        if i > 0 || !out.ends_with("- ") {
            out.push_str(&pad);
        }
        out.push_str(&string(&k));
        out.push(':');
        emit_value(out, v, indent);
    }
}

/// Writes `v` after a `key:` (in a mapping at `indent`).
fn emit_value(out: &mut String, v: Node, indent: usize) {
    match v {
        Node::Scalar(s) => {
            out.push(' ');
            out.push_str(&s);
            out.push('\n');
        }
        Node::Seq(items) if items.iter().all(|n| matches!(n, Node::Scalar(s) if is_number(s))) => {
            let inner: Vec<String> = items
                .into_iter()
                .map(|n| match n {
                    Node::Scalar(s) => s,
                    _ => unreachable!(),
                })
                .collect();
            out.push_str(&format!(" [{}]\n", inner.join(", ")));
        }
        Node::Seq(items) => {
            out.push('\n');
            // PyYAML indents a sequence under a mapping key at the key's own column.
            emit_seq(out, items, indent);
        }
        Node::Map(entries) => {
            out.push('\n');
            emit_map(out, Node::Map(entries), indent + 2);
        }
    }
}

fn emit_seq(out: &mut String, items: Vec<Node>, indent: usize) {
    let pad = " ".repeat(indent);
    for item in items {
        out.push_str(&pad);
        out.push_str("- ");
        match item {
            Node::Scalar(s) => {
                out.push_str(&s);
                out.push('\n');
            }
            Node::Map(entries) => emit_map(out, Node::Map(entries), indent + 2),
            Node::Seq(inner) => {
                let Some(Node::Scalar(_)) = inner.first() else {
                    out.push('\n');
                    emit_seq(out, inner, indent + 2);
                    continue;
                };
                let flat: Vec<String> = inner
                    .into_iter()
                    .filter_map(|n| match n {
                        Node::Scalar(s) => Some(s),
                        _ => None,
                    })
                    .collect();
                out.push_str(&format!("[{}]\n", flat.join(", ")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_are_written_as_pyyaml_writes_them() {
        assert_eq!(float(0.5), "0.5");
        assert_eq!(float(1.0), "1.0");
        assert_eq!(float(1e-5), "1.0e-05");
        assert_eq!(float(2.5e-7), "2.5e-07");
        assert_eq!(float(1e20), "1.0e+20");
        assert_eq!(string("./models/base_bf16"), "./models/base_bf16");
        assert_eq!(string("self_attn"), "self_attn");
        assert_eq!(string("true"), "'true'");
        assert_eq!(string("1.5"), "'1.5'");
        assert_eq!(string("- x"), "'- x'");
        assert_eq!(string("it's: here"), "'it''s: here'");
        assert_eq!(string("s3://bucket/model"), "s3://bucket/model");
    }

    #[test]
    fn nested_blocks_follow_pyyaml_indentation() {
        let doc = Node::Map(vec![
            ("b".into(), Node::Scalar("x".into())),
            (
                "a".into(),
                Node::Seq(vec![Node::Map(vec![
                    (
                        "value".into(),
                        Node::Seq(vec![Node::Scalar("0".into()), Node::Scalar("0.5".into())]),
                    ),
                    ("filter".into(), Node::Scalar("mlp".into())),
                ])]),
            ),
        ]);
        let mut out = String::new();
        emit_map(&mut out, doc, 0);
        assert_eq!(out, "a:\n- filter: mlp\n  value: [0, 0.5]\nb: x\n");
    }
}
