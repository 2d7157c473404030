//! Per-tensor checks of resolved parameters that mergekit 0.1.5 only makes while merging (so a
//! bad value fails there after other tensors were written): shardmerge refuses them at plan
//! time, naming the config line, the model and the tensor.

use super::PlanError;
use super::sources::{Normalized, at_line};
use super::tensors::PlannedTensor;
use crate::config::MergeConfig;
use shardmerge_proto::v1::{ParamValue, param_value};
use shardmerge_worker::kernels::della;
use shardmerge_worker::kernels::gta::GtaVariant;
use shardmerge_worker::kernels::sparsify::Sparsifier;
use shardmerge_worker::methods::{MethodKind, MethodSpec};
use std::collections::HashMap;

/// A numeric parameter as f64 (floats and integers), `None` when absent or not a number.
pub(super) fn number(params: &HashMap<String, ParamValue>, name: &str) -> Option<f64> {
    match params.get(name)?.kind.as_ref()? {
        param_value::Kind::Float(f) => Some(*f),
        param_value::Kind::Int(i) => Some(*i as f64),
        _ => None,
    }
}

/// `FILE:LINE` of the first line naming `param`, else of `merge_method`.
fn line_of(config: &MergeConfig, param: &str) -> String {
    if config.source_text.contains(param) {
        at_line(config, param)
    } else {
        at_line(config, "merge_method")
    }
}

/// Checks the resolved parameters of one output tensor.
pub(super) fn check_tensor(
    config: &MergeConfig,
    method: &MethodSpec,
    norm: &Normalized,
    t: &PlannedTensor,
) -> Result<(), PlanError> {
    if t.passthrough {
        return Ok(());
    }
    if let MethodKind::Gta(GtaVariant {
        sparsifier: Some(Sparsifier::DellaMagprune),
        ..
    }) = method.kind
    {
        for input in t.inputs.iter().filter(|i| !i.is_base) {
            let density = number(&input.params, "density").unwrap_or(1.0);
            let epsilon = number(&input.params, "epsilon").unwrap_or(0.15);
            if della::draws(density) && !della::epsilon_ok(density, epsilon) {
                let param = if config.source_text.contains("epsilon") {
                    "epsilon"
                } else {
                    "density"
                };
                return Err(PlanError::Invalid(format!(
                    "{}: merge method `{}`: model `{}`, tensor `{}`: density {density} and epsilon {epsilon} must satisfy 0 < density - epsilon and density + epsilon < 1",
                    line_of(config, param),
                    method.name,
                    norm.models[input.model].display,
                    input.info.name,
                )));
            }
        }
    }
    Ok(())
}
