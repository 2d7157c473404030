//! Parameter settings (semantics §2.4): the value forms a config can give a parameter and
//! their evaluation for one tensor at layer position `t` (YAML shapes: `setting_de`).
//!
//! A setting is a scalar, a list of scalars (a "gradient"), one `{filter, value}` mapping, or
//! a list of such mappings whose values are scalars or gradients. Values are kept as written
//! and typed only at evaluation, against the [`ParamType`] the merge method declares.

use std::fmt;

use indexmap::IndexMap;

use super::coerce;
use super::error::ParamError;

/// Parameter name → setting, in config order.
pub type ParamMap = IndexMap<String, Setting>;

/// One configured value, as YAML typed it (validated against the declared type later).
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float. YAML `1e-5` is read as a float here (PyYAML reads it as a string; the
    /// evaluated result for float parameters is the same).
    Float(f64),
    /// A string.
    Str(String),
}

impl Scalar {
    /// The value as f64 if it is an int or a float (not a bool).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Scalar::Int(i) => Some(*i as f64),
            Scalar::Float(f) => Some(*f),
            Scalar::Bool(_) | Scalar::Str(_) => None,
        }
    }

    /// The value if it is an int.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Scalar::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The value if it is a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Scalar::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The value if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for Scalar {
    /// Bools and numbers as YAML would show them, strings quoted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x:?}"),
            Scalar::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// A parameter's configured value.
#[derive(Debug, Clone, PartialEq)]
pub enum Setting {
    /// One value.
    Scalar(Scalar),
    /// A gradient: interpolated over the layer position for numbers, picked from otherwise.
    /// Empty means "no value here".
    List(Vec<Scalar>),
    /// Conditions tried in order; a single `{filter, value}` mapping is a list of one.
    Conditions(Vec<Condition>),
}

/// One `{filter, value}` entry of a conditional setting.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// Plain substring of the tensor name; absent or `*` matches every tensor.
    pub filter: Option<String>,
    /// A [`Setting::Scalar`] or [`Setting::List`] (never nested conditions).
    pub value: Setting,
}

impl Condition {
    /// Whether this condition applies to `tensor_name` (absent filter, `*`, or substring).
    pub fn matches(&self, tensor_name: &str) -> bool {
        match self.filter.as_deref() {
            None | Some("*") => true,
            Some(filter) => tensor_name.contains(filter),
        }
    }
}

/// The declared type of a merge-method parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamType {
    /// Float (f64).
    Float,
    /// Integer.
    Int,
    /// Boolean.
    Bool,
    /// String.
    Str,
}

/// Which config levels a parameter is read from (mergekit 0.1.5 `ParameterScope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamScope {
    /// One value per output tensor ("global" in mergekit's docs): skips the per-source level,
    /// and is evaluated against the *output* tensor name.
    Shared,
    /// One value per input model, base included: evaluated against that model's *input*
    /// tensor name.
    Input,
    /// Like [`ParamScope::Input`] but never resolved for the base model, which therefore needs
    /// no value (and may even hold an invalid one). Callers simply do not ask for the base.
    NonBase,
}

impl Setting {
    /// Evaluates this setting for `tensor_name` at layer position `t` (semantics §2.4).
    ///
    /// `Ok(None)` means "no value at this level": an empty list, or conditions none of which
    /// match. Every value used is validated against `ty` the pydantic way (see [`Scalar`]). A
    /// gradient whose validated elements are all numbers is interpolated linearly in f64;
    /// otherwise element `⌊t·(N−1)⌋` is picked. `t` outside `[0, 1]` is clamped and NaN counts
    /// as 0. Errors name the value and tensor; [`resolve_parameter`](super::resolve_parameter)
    /// adds the parameter and model.
    pub fn evaluate(&self, ty: ParamType, tensor_name: &str, t: f64) -> Result<Option<Scalar>, ParamError> {
        let invalid = |value: String, reason: String| ParamError::InvalidValue {
            param: None,
            model: None,
            tensor: tensor_name.to_string(),
            value,
            reason,
        };
        match self {
            Setting::Scalar(v) => coerce::validate(ty, v)
                .map(Some)
                .map_err(|reason| invalid(v.to_string(), reason)),
            Setting::List(items) => {
                let validated = items
                    .iter()
                    .map(|v| coerce::validate(ty, v).map_err(|r| invalid(v.to_string(), r)))
                    .collect::<Result<Vec<_>, _>>()?;
                let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
                interpolate_or_pick(ty, validated, t).map_err(|(value, reason)| {
                    let list: Vec<String> = items.iter().map(Scalar::to_string).collect();
                    invalid(
                        value,
                        format!("{reason} (interpolated from [{}] at t = {t})", list.join(", ")),
                    )
                })
            }
            Setting::Conditions(conditions) => match conditions.iter().find(|c| c.matches(tensor_name)) {
                Some(condition) => condition.value.evaluate(ty, tensor_name, t),
                None => Ok(None),
            },
        }
    }
}

/// The gradient rule on already-validated elements. Errors carry the interpolated value.
fn interpolate_or_pick(ty: ParamType, validated: Vec<Scalar>, t: f64) -> Result<Option<Scalar>, (String, String)> {
    let Some(last) = validated.len().checked_sub(1) else {
        return Ok(None);
    };
    let numbers: Option<Vec<f64>> = validated.iter().map(Scalar::as_f64).collect();
    let Some(numbers) = numbers else {
        // Discrete: truncation of a non-negative float; the cast saturates.
        let index = ((t * last as f64) as usize).min(last);
        return Ok(validated.into_iter().nth(index));
    };
    let s = t * last as f64;
    let i0 = (s.floor() as usize).min(last);
    let i1 = (i0 + 1).min(last);
    let f = s - i0 as f64;
    let v = (1.0 - f) * numbers[i0] + f * numbers[i1];
    let result = Scalar::Float(v);
    coerce::validate(ty, &result)
        .map(Some)
        .map_err(|reason| (result.to_string(), reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(yaml: &str) -> Setting {
        serde_norway::from_str(yaml).unwrap()
    }

    fn eval(yaml: &str, ty: ParamType, tensor: &str, t: f64) -> Option<Scalar> {
        setting(yaml).evaluate(ty, tensor, t).unwrap()
    }

    #[test]
    fn scientific_notation_gradient() {
        for yaml in ["[1e-5, 1e-3]", "['1e-5', '1e-3']", "[1.0e-5, 0.001]"] {
            let v = eval(yaml, ParamType::Float, "x", 0.5).unwrap().as_f64().unwrap();
            assert!((v - 0.000505).abs() < 1e-12, "{yaml}: {v}");
        }
        assert_eq!(eval("1e-5", ParamType::Float, "x", 0.0), Some(Scalar::Float(1e-5)));
    }

    #[test]
    fn typed_gradients() {
        assert_eq!(
            eval("['1e-5', '1e-3']", ParamType::Str, "x", 0.5),
            Some(Scalar::Str("1e-5".into()))
        );
        assert_eq!(
            eval("[false, true]", ParamType::Bool, "x", 0.5),
            Some(Scalar::Bool(false))
        );
        assert_eq!(
            eval("[false, true]", ParamType::Bool, "x", 1.0),
            Some(Scalar::Bool(true))
        );
        assert_eq!(eval("[2, 4]", ParamType::Int, "x", 0.5), Some(Scalar::Int(3)));
        let err = setting("[2, 3]").evaluate(ParamType::Int, "x", 0.5).unwrap_err();
        assert!(err.to_string().contains("fractional"), "{err}");
    }

    #[test]
    fn gradient_endpoints_and_clamping() {
        let g = "[0, 0.5, 0.3, 0.7, 1]";
        assert_eq!(eval(g, ParamType::Float, "x", 0.0), Some(Scalar::Float(0.0)));
        assert_eq!(eval(g, ParamType::Float, "x", 1.0), Some(Scalar::Float(1.0)));
        assert_eq!(eval(g, ParamType::Float, "x", 7.0), Some(Scalar::Float(1.0)));
        assert_eq!(eval(g, ParamType::Float, "x", f64::NAN), Some(Scalar::Float(0.0)));
        assert_eq!(eval(g, ParamType::Float, "x", -3.0), Some(Scalar::Float(0.0)));
        assert_eq!(eval("[3]", ParamType::Float, "x", 0.7), Some(Scalar::Float(3.0)));
        assert_eq!(eval("[]", ParamType::Float, "x", 0.7), None);
    }

    #[test]
    fn conditions_first_substring_match_wins() {
        let yaml = "[{filter: self_attn, value: 1}, {filter: mlp, value: 2}, {value: 3}]";
        let f = |name| eval(yaml, ParamType::Int, name, 0.0);
        assert_eq!(f("model.layers.0.self_attn.q_proj.weight"), Some(Scalar::Int(1)));
        assert_eq!(f("model.layers.0.mlp.self_attn_like"), Some(Scalar::Int(1)));
        assert_eq!(f("model.layers.0.mlp.up_proj.weight"), Some(Scalar::Int(2)));
        assert_eq!(f("lm_head.weight"), Some(Scalar::Int(3)));
        // Substring, not glob: `*` only matches as the whole filter.
        assert_eq!(
            eval(
                "{filter: 'layers.*.mlp', value: 1}",
                ParamType::Int,
                "layers.0.mlp",
                0.0
            ),
            None
        );
        assert_eq!(
            eval("{filter: '*', value: 1}", ParamType::Int, "anything", 0.0),
            Some(Scalar::Int(1))
        );
    }

    #[test]
    fn invalid_value_names_value_and_tensor() {
        let err = setting("abc").evaluate(ParamType::Float, "t.weight", 0.0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value \"abc\" (tensor `t.weight`): expected a float"
        );
    }
}
