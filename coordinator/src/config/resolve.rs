//! Parameter precedence (semantics §2.4) and the layer position `t` (semantics §2.5).
//!
//! For one model and one tensor, the first level that yields a value wins:
//! 1. the parameter maps of every source of the current output slice whose model is this
//!    model, in listed order (with `models:` syntax, the model's own `parameters`) — skipped
//!    for [`ParamScope::Shared`] parameters;
//! 2. the output slice's `parameters`;
//! 3. the top-level `parameters`;
//! 4. the method's default, validated like a configured value.
//!
//! mergekit also has a module level between 2 and 3; `modules:` configs are rejected at
//! parse time, so it is always empty here.

use std::iter;

use super::coerce;
use super::error::ParamError;
use super::setting::{ParamMap, ParamScope, ParamType, Scalar};

/// Resolves parameter `name` of declared type `ty` for `model` and `tensor_name` at layer
/// position `t`.
///
/// * `source_levels`: parameter maps of the current output slice's sources whose model is
///   `model`, in listed order (see [`OutputSlice::source_parameters`](super::OutputSlice::source_parameters));
///   ignored for [`ParamScope::Shared`].
/// * `slice`: the output slice's parameters (`None` with `models:` syntax).
/// * `top`: the top-level parameters.
/// * `tensor_name`: the *output* tensor name for shared parameters, the model's *input*
///   tensor name otherwise (filters are matched against it). For [`ParamScope::NonBase`]
///   parameters, do not call this for the base model.
/// * `model`: used in messages only (may be empty for shared parameters).
///
/// Returns the first value found, else the validated `default`, else `Ok(None)` when not
/// `required`, else [`ParamError::Missing`].
#[allow(clippy::too_many_arguments)]
pub fn resolve_parameter(
    name: &str,
    ty: ParamType,
    scope: ParamScope,
    default: Option<Scalar>,
    required: bool,
    source_levels: &[&ParamMap],
    slice: Option<&ParamMap>,
    top: &ParamMap,
    model: &str,
    tensor_name: &str,
    t: f64,
) -> Result<Option<Scalar>, ParamError> {
    let sources: &[&ParamMap] = match scope {
        ParamScope::Shared => &[],
        ParamScope::Input | ParamScope::NonBase => source_levels,
    };
    let maps = sources.iter().copied().chain(slice).chain(iter::once(top));
    for map in maps {
        if let Some(setting) = map.get(name) {
            let value = setting
                .evaluate(ty, tensor_name, t)
                .map_err(|e| e.in_context(name, model))?;
            if value.is_some() {
                return Ok(value);
            }
        }
    }
    if let Some(default) = default {
        return coerce::validate(ty, &default)
            .map(Some)
            .map_err(|reason| ParamError::InvalidDefault {
                param: name.to_string(),
                value: default.to_string(),
                reason,
            });
    }
    if required {
        return Err(ParamError::Missing {
            param: name.to_string(),
            model: model.to_string(),
            tensor: tensor_name.to_string(),
        });
    }
    Ok(None)
}

/// Layer position of layer `k` (0-based) of an output slice with `len` layers: `k/(len−1)`,
/// or 1 when the slice has a single layer. It restarts at 0 in every output slice.
///
/// Tensors outside the layers use `t = 0` in mergekit 0.1.5: embeddings take their models and
/// parameters from the first output slice, the final norm and `lm_head` from the last.
pub fn layer_t(k: u64, len: u64) -> f64 {
    if len > 1 { k as f64 / (len - 1) as f64 } else { 1.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(yaml: &str) -> ParamMap {
        serde_norway::from_str(yaml).unwrap()
    }

    const TENSOR: &str = "model.layers.0.mlp.up_proj.weight";

    /// A parameter declaration, for brevity.
    struct P {
        name: &'static str,
        ty: ParamType,
        scope: ParamScope,
        default: Option<Scalar>,
        required: bool,
    }

    impl P {
        fn new(name: &'static str, ty: ParamType, scope: ParamScope) -> Self {
            P {
                name,
                ty,
                scope,
                default: None,
                required: false,
            }
        }

        fn at(
            &self,
            sources: &[&ParamMap],
            slice: Option<&ParamMap>,
            top: &ParamMap,
            tensor: &str,
        ) -> Result<Option<Scalar>, ParamError> {
            let d = self.default.clone();
            resolve_parameter(
                self.name,
                self.ty,
                self.scope,
                d,
                self.required,
                sources,
                slice,
                top,
                "X",
                tensor,
                0.0,
            )
        }
    }

    #[test]
    fn precedence_source_slice_top_default() {
        let (src, slice, top) = (map("weight: 1"), map("weight: 2"), map("weight: 3"));
        let empty = ParamMap::new();
        let mut p = P::new("weight", ParamType::Float, ParamScope::Input);
        p.default = Some(Scalar::Int(4));
        let f = |sources: &[&ParamMap], slice, top| p.at(sources, slice, top, TENSOR).unwrap();
        assert_eq!(f(&[&src], Some(&slice), &top), Some(Scalar::Float(1.0)));
        assert_eq!(f(&[&empty, &src], Some(&slice), &top), Some(Scalar::Float(1.0)));
        assert_eq!(f(&[&empty], Some(&slice), &top), Some(Scalar::Float(2.0)));
        assert_eq!(f(&[], None, &top), Some(Scalar::Float(3.0)));
        assert_eq!(f(&[], None, &empty), Some(Scalar::Float(4.0)));
    }

    #[test]
    fn shared_ignores_source_level() {
        let (src, top) = (map("t: 0.9"), map("t: 0.1"));
        let shared = P::new("t", ParamType::Float, ParamScope::Shared);
        assert_eq!(
            shared.at(&[&src], None, &top, TENSOR).unwrap(),
            Some(Scalar::Float(0.1))
        );
        let non_base = P::new("t", ParamType::Float, ParamScope::NonBase);
        assert_eq!(
            non_base.at(&[&src], None, &top, TENSOR).unwrap(),
            Some(Scalar::Float(0.9))
        );
    }

    #[test]
    fn empty_values_fall_through() {
        let src = map("weight: []");
        let slice = map("weight: {filter: self_attn, value: 7}");
        let top = map("weight: [{filter: mlp, value: 5}]");
        let p = P::new("weight", ParamType::Float, ParamScope::Input);
        assert_eq!(
            p.at(&[&src], Some(&slice), &top, TENSOR).unwrap(),
            Some(Scalar::Float(5.0))
        );
        assert_eq!(p.at(&[&src], Some(&slice), &top, "lm_head.weight").unwrap(), None);
    }

    #[test]
    fn single_condition_falls_back_to_default() {
        let top = map("normalize: {filter: self_attn, value: false}");
        let mut p = P::new("normalize", ParamType::Bool, ParamScope::Shared);
        p.default = Some(Scalar::Bool(true));
        assert_eq!(p.at(&[], None, &top, TENSOR).unwrap(), Some(Scalar::Bool(true)));
        assert_eq!(
            p.at(&[], None, &top, "x.self_attn.q").unwrap(),
            Some(Scalar::Bool(false))
        );
    }

    #[test]
    fn missing_required_message() {
        let mut p = P::new("weight", ParamType::Float, ParamScope::Input);
        p.required = true;
        let err = p.at(&[], None, &ParamMap::new(), TENSOR).unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing required parameter `weight` for model `X` tensor `model.layers.0.mlp.up_proj.weight`"
        );
        let shared = ParamError::Missing {
            param: "t".into(),
            model: String::new(),
            tensor: "x".into(),
        };
        assert_eq!(shared.to_string(), "missing required parameter `t` for tensor `x`");
    }

    #[test]
    fn invalid_values_and_defaults() {
        let top = map("density: abc\nweight: [0.1, true]");
        let density = P::new("density", ParamType::Float, ParamScope::NonBase);
        assert_eq!(
            density.at(&[], None, &top, TENSOR).unwrap_err().to_string(),
            "invalid value \"abc\" for parameter `density` (model `X`, tensor \
             `model.layers.0.mlp.up_proj.weight`): expected a float"
        );
        let weight = P::new("weight", ParamType::Int, ParamScope::Input);
        assert!(matches!(
            weight.at(&[], None, &top, TENSOR),
            Err(ParamError::InvalidValue { .. })
        ));
        let mut bad_default = P::new("k", ParamType::Int, ParamScope::Shared);
        bad_default.default = Some(Scalar::Float(0.5));
        assert!(matches!(
            bad_default.at(&[], None, &top, TENSOR),
            Err(ParamError::InvalidDefault { .. })
        ));
        let optional = P::new("k", ParamType::Int, ParamScope::Shared);
        assert_eq!(optional.at(&[], None, &top, TENSOR).unwrap(), None);
    }

    #[test]
    fn layer_positions() {
        assert_eq!(layer_t(0, 32), 0.0);
        assert_eq!(layer_t(31, 32), 1.0);
        assert_eq!(layer_t(1, 32), 1.0 / 31.0);
        assert_eq!(layer_t(0, 1), 1.0);
        assert_eq!(layer_t(0, 0), 1.0);
    }

    #[test]
    fn filters_see_the_name_given() {
        // Per-model parameters are matched against the input name, which differs from the
        // output name when slices are offset.
        let (src, top) = (map("weight: {filter: layers.3., value: 1}"), map("weight: 0"));
        let p = P::new("weight", ParamType::Float, ParamScope::Input);
        let input = p.at(&[&src], None, &top, "model.layers.3.mlp.w").unwrap();
        let output = p.at(&[&src], None, &top, "model.layers.0.mlp.w").unwrap();
        assert_eq!((input, output), (Some(Scalar::Float(1.0)), Some(Scalar::Float(0.0))));
    }
}
