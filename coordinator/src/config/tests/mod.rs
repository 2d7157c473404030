//! Parse-level tests: the AutoMerger recipes (semantics §10) and precedence in whole configs
//! (`recipes`), error positions and warnings (`errors`), and a no-panic fuzz (`fuzz`).

mod errors;
mod fuzz;
mod recipes;

use std::path::Path;

use super::*;

pub(super) const SLERP: &str = "\
slices:
  - sources:
      - model: A
        layer_range: [0, 32]
      - model: B
        layer_range: [0, 32]
merge_method: slerp
base_model: A
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
";

pub(super) const DARE_TIES: &str = "\
models:
  - model: A
    # no parameters necessary for base model
  - model: B
    parameters: {density: 0.53, weight: 0.6}
merge_method: dare_ties
base_model: A
parameters: {int8_mask: true}
dtype: bfloat16
random_seed: 42
";

pub(super) fn parse(text: &str) -> MergeConfig {
    parse_config(text, Path::new("cfg.yml")).unwrap_or_else(|e| panic!("{e}"))
}

pub(super) fn parse_err(text: &str) -> ConfigError {
    parse_config(text, Path::new("cfg.yml")).expect_err("config should be rejected")
}

/// `(line, column)` and message of a rejected config.
pub(super) fn err_at(text: &str) -> (Option<usize>, Option<usize>, String) {
    let e = parse_err(text);
    (e.line, e.column, e.to_string())
}

/// A method's parameter declaration, resolved through [`resolve_parameter`].
pub(super) struct Param {
    pub name: &'static str,
    pub ty: ParamType,
    pub scope: ParamScope,
    pub default: Option<Scalar>,
    pub required: bool,
}

impl Param {
    pub fn new(name: &'static str, ty: ParamType, scope: ParamScope) -> Self {
        Param {
            name,
            ty,
            scope,
            default: None,
            required: false,
        }
    }

    pub fn default(mut self, value: Scalar) -> Self {
        self.default = Some(value);
        self
    }

    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// Resolves for `model`/`tensor` at `t` from the three config levels.
    #[allow(clippy::too_many_arguments)]
    pub fn resolve(
        &self,
        sources: &[&ParamMap],
        slice: Option<&ParamMap>,
        top: &ParamMap,
        model: &str,
        tensor: &str,
        t: f64,
    ) -> Result<Option<Scalar>, ParamError> {
        let (d, r) = (self.default.clone(), self.required);
        resolve_parameter(
            self.name, self.ty, self.scope, d, r, sources, slice, top, model, tensor, t,
        )
    }
}
