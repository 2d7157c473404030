//! The YAML shapes of a [`Setting`]: a scalar, a list of scalars, one `{filter, value}`
//! mapping, or a list of such mappings whose values are scalars or lists of scalars. Shape
//! errors are raised inside the visit, so the parser stamps them with the value's position.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::setting::{Condition, Scalar, Setting};

/// Where a value is being read, which decides the shapes it may take.
#[derive(Clone, Copy)]
enum Ctx {
    /// Directly under `parameters:`: any form.
    Top,
    /// The `value` of a condition: a scalar or a list of scalars.
    ConditionValue,
    /// An element of a list; conditions allowed only in a top-level list.
    ListItem { conditions_allowed: bool },
}

impl<'de> Deserialize<'de> for Setting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        SettingSeed(Ctx::Top).deserialize(deserializer)
    }
}

struct SettingSeed(Ctx);

impl<'de> DeserializeSeed<'de> for SettingSeed {
    type Value = Setting;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Setting, D::Error> {
        deserializer.deserialize_any(self)
    }
}

fn int_scalar<T: TryInto<i64> + fmt::Display + Copy, E: de::Error>(v: T) -> Result<Setting, E> {
    v.try_into()
        .map(|i| Setting::Scalar(Scalar::Int(i)))
        .map_err(|_| E::custom(format!("integer {v} is too large")))
}

impl<'de> Visitor<'de> for SettingSeed {
    type Value = Setting;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Ctx::Top => "a parameter value: a scalar, a list, or {filter, value} conditions",
            Ctx::ConditionValue => "a scalar or a list of scalars",
            Ctx::ListItem { .. } => "a scalar",
        })
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Setting, E> {
        Ok(Setting::Scalar(Scalar::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Setting, E> {
        Ok(Setting::Scalar(Scalar::Int(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Setting, E> {
        int_scalar(v)
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Setting, E> {
        int_scalar(v)
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Setting, E> {
        int_scalar(v)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Setting, E> {
        Ok(Setting::Scalar(Scalar::Float(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Setting, E> {
        Ok(Setting::Scalar(Scalar::Str(v.to_string())))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Setting, E> {
        Err(E::custom(
            "a parameter value cannot be null; remove the key or give it a value",
        ))
    }

    fn visit_none<E: de::Error>(self) -> Result<Setting, E> {
        self.visit_unit()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Setting, A::Error> {
        let item_ctx = match self.0 {
            Ctx::Top => Ctx::ListItem {
                conditions_allowed: true,
            },
            Ctx::ConditionValue => Ctx::ListItem {
                conditions_allowed: false,
            },
            Ctx::ListItem { .. } => {
                return Err(de::Error::custom("a list inside a parameter list is not allowed"));
            }
        };
        let mut scalars = Vec::new();
        let mut conditions = Vec::new();
        while let Some(item) = seq.next_element_seed(SettingSeed(item_ctx))? {
            match item {
                Setting::Scalar(s) => scalars.push(s),
                Setting::Conditions(c) => conditions.extend(c),
                Setting::List(_) => {
                    return Err(de::Error::custom("a list inside a parameter list is not allowed"));
                }
            }
        }
        match (scalars.is_empty(), conditions.is_empty()) {
            (_, true) => Ok(Setting::List(scalars)),
            (true, false) => Ok(Setting::Conditions(conditions)),
            (false, false) => Err(de::Error::custom(
                "a parameter list mixes plain values and {filter, value} conditions",
            )),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Setting, A::Error> {
        match self.0 {
            Ctx::Top
            | Ctx::ListItem {
                conditions_allowed: true,
            } => {}
            Ctx::ConditionValue
            | Ctx::ListItem {
                conditions_allowed: false,
            } => {
                return Err(de::Error::custom(
                    "a condition's `value` must be a scalar or a list of scalars, not another mapping",
                ));
            }
        }
        let mut filter = None;
        let mut value = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "filter" => filter = map.next_value::<Option<String>>()?,
                "value" => value = Some(map.next_value_seed(SettingSeed(Ctx::ConditionValue))?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let value = value.ok_or_else(|| de::Error::custom("a {filter, value} condition is missing `value`"))?;
        Ok(Setting::Conditions(vec![Condition { filter, value }]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(yaml: &str) -> Setting {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn shapes() {
        assert_eq!(setting("0.5"), Setting::Scalar(Scalar::Float(0.5)));
        assert_eq!(setting("[]"), Setting::List(vec![]));
        assert_eq!(
            setting("{filter: mlp, value: [0, 1]}"),
            Setting::Conditions(vec![Condition {
                filter: Some("mlp".into()),
                value: Setting::List(vec![Scalar::Int(0), Scalar::Int(1)]),
            }])
        );
        assert!(matches!(setting("[{filter: a, value: 1}, {value: 2}]"), Setting::Conditions(c) if c.len() == 2));
    }

    #[test]
    fn bad_shapes_are_errors() {
        for yaml in [
            "~",
            "[1, {value: 2}]",
            "[[1, 2]]",
            "{filter: a}",
            "{value: {value: 1}}",
            "{value: [{value: 1}]}",
            "99999999999999999999",
        ] {
            assert!(serde_norway::from_str::<Setting>(yaml).is_err(), "{yaml}");
        }
    }

    #[test]
    fn shape_errors_explain_themselves() {
        let err = |yaml| serde_norway::from_str::<Setting>(yaml).unwrap_err().to_string();
        assert!(err("[1, {value: 2}]").contains("mixes plain values and {filter, value} conditions"));
        assert!(err("[[1, 2]]").contains("a list inside a parameter list is not allowed"));
        assert!(err("{filter: a}").contains("missing `value`"));
        assert!(err("~").contains("cannot be null"));
    }
}
