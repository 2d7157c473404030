//! Parameter resolution for one output tensor, following mergekit's precedence: the sources of
//! the current slice that are this model, then the slice, then the top level, then the method
//! default. Shared parameters skip the source level and see the output tensor name; per-input
//! parameters see the input tensor name (which differs from the output name when slices are
//! offset).

use super::PlanError;
use super::sources::NSlice;
use crate::config::{self, MergeConfig, ParamMap, Scalar};
use shardmerge_proto::v1::{ParamValue, param_value};
use shardmerge_worker::methods::{MethodSpec, ParamDefault, ParamKind, ParamScope};
use std::collections::HashMap;

fn kind_of(k: ParamKind) -> config::ParamType {
    match k {
        ParamKind::Float => config::ParamType::Float,
        ParamKind::Bool => config::ParamType::Bool,
        ParamKind::Int => config::ParamType::Int,
    }
}

fn default_of(d: ParamDefault) -> (Option<Scalar>, bool) {
    match d {
        ParamDefault::Required => (None, true),
        ParamDefault::Float(f) => (Some(Scalar::Float(f)), false),
        ParamDefault::Bool(b) => (Some(Scalar::Bool(b)), false),
        ParamDefault::Int(i) => (Some(Scalar::Int(i)), false),
        ParamDefault::Absent => (None, false),
    }
}

fn to_wire(s: Scalar) -> ParamValue {
    let kind = match s {
        Scalar::Bool(b) => param_value::Kind::Bool(b),
        Scalar::Int(i) => param_value::Kind::Float(i as f64),
        Scalar::Float(f) => param_value::Kind::Float(f),
        Scalar::Str(s) => param_value::Kind::Text(s),
    };
    ParamValue { kind: Some(kind) }
}

/// `FILE:LINE` of an invalid value: the first line at or after the first `param:` key that
/// shows the value as written (else that key's line); just `FILE` when the key is not written.
fn value_line(config: &MergeConfig, param: &str, value: &str) -> String {
    let file = config.file.display();
    let lines: Vec<&str> = config.source_text.lines().collect();
    let key = format!("{param}:");
    let Some(start) = lines.iter().position(|l| l.contains(&key)) else {
        return format!("{file}");
    };
    let v = value.trim_matches('"');
    let at = lines[start..]
        .iter()
        .position(|l| l.contains(v))
        .map_or(start, |i| start + i);
    format!("{file}:{}", at + 1)
}

fn err(config: &MergeConfig, e: config::ParamError) -> PlanError {
    let place = match &e {
        config::ParamError::InvalidValue {
            param: Some(param),
            value,
            ..
        } => value_line(config, param, value),
        _ => config.file.display().to_string(),
    };
    PlanError::Invalid(format!("{place}: {e}"))
}

/// Resolves the shared parameters of `method` for output tensor `out_name`.
pub fn resolve_shared_params(
    config: &MergeConfig,
    method: &MethodSpec,
    slice: &NSlice,
    out_name: &str,
    t: f64,
) -> Result<HashMap<String, ParamValue>, PlanError> {
    let mut out = HashMap::new();
    for p in method.params.iter().filter(|p| p.scope == ParamScope::Shared) {
        let (default, required) = default_of(p.default);
        let v = config::resolve_parameter(
            p.name,
            kind_of(p.kind),
            config::ParamScope::Shared,
            default,
            required,
            &[],
            Some(&slice.params),
            &config.parameters,
            "",
            out_name,
            t,
        )
        .map_err(|e| err(config, e))?;
        if let Some(v) = v {
            out.insert(p.name.to_string(), to_wire(v));
        }
    }
    Ok(out)
}

/// Resolves the per-input parameters of `method` for one input; returns them and the density.
#[allow(clippy::too_many_arguments)]
pub fn resolve_input_params(
    config: &MergeConfig,
    method: &MethodSpec,
    slice: &NSlice,
    model: usize,
    model_name: &str,
    is_base: bool,
    in_name: &str,
    t: f64,
) -> Result<(HashMap<String, ParamValue>, Option<f64>), PlanError> {
    let levels: Vec<&ParamMap> = slice
        .sources
        .iter()
        .filter(|s| s.model == model)
        .map(|s| &s.params)
        .collect();
    let mut out = HashMap::new();
    let mut density = None;
    for p in &method.params {
        let scope = match p.scope {
            ParamScope::Shared => continue,
            ParamScope::NonBase if is_base => continue,
            ParamScope::NonBase => config::ParamScope::NonBase,
            ParamScope::Input => config::ParamScope::Input,
        };
        let (default, required) = default_of(p.default);
        let v = config::resolve_parameter(
            p.name,
            kind_of(p.kind),
            scope,
            default,
            required,
            &levels,
            Some(&slice.params),
            &config.parameters,
            model_name,
            in_name,
            t,
        )
        .map_err(|e| err(config, e))?;
        if let Some(v) = v {
            if p.name == "density" {
                density = match &v {
                    Scalar::Float(f) => Some(*f),
                    Scalar::Int(i) => Some(*i as f64),
                    _ => None,
                };
            }
            out.insert(p.name.to_string(), to_wire(v));
        }
    }
    Ok((out, density))
}
