//! Validation of one scalar against a declared parameter type, following pydantic v2's lax
//! mode, which is what mergekit 0.1.5 applies to every configured value (semantics §2.4):
//!
//! * float: accepts floats, ints, bools (0.0/1.0) and strings that parse as a float after
//!   trimming whitespace (`"1e-5"`, `"inf"`, `"nan"`, `"1_000.5"` with Python-style
//!   underscores);
//! * int: accepts ints, bools, floats with no fractional part, and strings holding an integer
//!   (optional sign, leading zeros, `_` separators, a trailing `.000`);
//! * bool: accepts bools, the ints 0 and 1, the floats 0.0 and 1.0, and the strings `0`, `1`
//!   and (any case) `f`, `n`, `no`, `off`, `false`, `t`, `y`, `yes`, `on`, `true`;
//! * str: accepts strings only.

use super::setting::{ParamType, Scalar};

/// Validates `value` against `ty`, returning the converted value or a reason phrase such as
/// `expected a float`.
pub(crate) fn validate(ty: ParamType, value: &Scalar) -> Result<Scalar, String> {
    match ty {
        ParamType::Float => Ok(Scalar::Float(to_float(value).ok_or("expected a float")?)),
        ParamType::Int => Ok(Scalar::Int(to_int(value)?)),
        ParamType::Bool => {
            let b = to_bool(value).ok_or("expected a boolean (true/false, yes/no, on/off, 1/0)")?;
            Ok(Scalar::Bool(b))
        }
        ParamType::Str => match value {
            Scalar::Str(s) => Ok(Scalar::Str(s.clone())),
            _ => Err("expected a string".into()),
        },
    }
}

fn to_float(value: &Scalar) -> Option<f64> {
    match value {
        Scalar::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Scalar::Int(i) => Some(*i as f64),
        Scalar::Float(f) => Some(*f),
        Scalar::Str(s) => parse_float(s),
    }
}

/// Python-compatible float parsing: whitespace is trimmed; `_` separators between digits are
/// allowed; `inf`, `infinity` and `nan` in any case are accepted.
pub(crate) fn parse_float(s: &str) -> Option<f64> {
    if let Ok(f) = s.trim().parse::<f64>() {
        return Some(f);
    }
    strip_underscores(s)?.parse::<f64>().ok()
}

fn to_int(value: &Scalar) -> Result<i64, String> {
    match value {
        Scalar::Bool(b) => Ok(i64::from(*b)),
        Scalar::Int(i) => Ok(*i),
        Scalar::Float(f) => float_to_int(*f),
        Scalar::Str(s) => parse_int(s).ok_or_else(|| "expected an integer".into()),
    }
}

/// An int from a float: it must be finite, integral, and fit in an i64.
pub(crate) fn float_to_int(f: f64) -> Result<i64, String> {
    if !f.is_finite() {
        Err("expected a finite integer".into())
    } else if f % 1.0 != 0.0 {
        Err("expected an integer, got a number with a fractional part".into())
    } else if (i64::MIN as f64) < f && f < (i64::MAX as f64) {
        Ok(f as i64)
    } else {
        Err("integer is out of range".into())
    }
}

/// Integer strings as pydantic reads them: trimmed, one optional sign, digits with single `_`
/// separators (not leading or trailing), optionally followed by `.` and only zeros.
fn parse_int(s: &str) -> Option<i64> {
    let s = s.trim();
    let (negative, body) = if let Some(rest) = s.strip_prefix('-') {
        (true, rest)
    } else {
        (false, s.strip_prefix('+').unwrap_or(s))
    };
    let int_part = match body.split_once('.') {
        Some((int_part, frac)) if !frac.is_empty() && frac.bytes().all(|b| b == b'0') => int_part,
        Some(_) => return None,
        None => body,
    };
    let digits = if int_part.contains('_') {
        strip_underscores(int_part)?
    } else {
        int_part.to_string()
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let magnitude: i128 = digits.parse().ok()?;
    i64::try_from(if negative { -magnitude } else { magnitude }).ok()
}

/// Removes `_` separators the way Python allows them: not leading, not trailing, never doubled.
fn strip_underscores(s: &str) -> Option<String> {
    if !s.contains('_') || s.starts_with('_') || s.ends_with('_') || s.contains("__") {
        return None;
    }
    Some(s.replace('_', ""))
}

fn to_bool(value: &Scalar) -> Option<bool> {
    match value {
        Scalar::Bool(b) => Some(*b),
        Scalar::Int(0) => Some(false),
        Scalar::Int(1) => Some(true),
        Scalar::Int(_) => None,
        Scalar::Float(f) if *f == 0.0 => Some(false),
        Scalar::Float(f) if *f == 1.0 => Some(true),
        Scalar::Float(_) => None,
        Scalar::Str(s) => {
            const FALSE: [&str; 5] = ["f", "n", "no", "off", "false"];
            const TRUE: [&str; 5] = ["t", "y", "yes", "on", "true"];
            if s == "0" || FALSE.iter().any(|w| s.eq_ignore_ascii_case(w)) {
                Some(false)
            } else if s == "1" || TRUE.iter().any(|w| s.eq_ignore_ascii_case(w)) {
                Some(true)
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ty: ParamType, v: Scalar) -> Result<Scalar, String> {
        validate(ty, &v)
    }

    fn s(x: &str) -> Scalar {
        Scalar::Str(x.into())
    }

    #[test]
    fn floats() {
        assert_eq!(check(ParamType::Float, s("1e-5")), Ok(Scalar::Float(1e-5)));
        assert_eq!(check(ParamType::Float, s(" 2.5 ")), Ok(Scalar::Float(2.5)));
        assert_eq!(check(ParamType::Float, s("1_000.5")), Ok(Scalar::Float(1000.5)));
        assert_eq!(check(ParamType::Float, Scalar::Int(3)), Ok(Scalar::Float(3.0)));
        assert_eq!(check(ParamType::Float, Scalar::Bool(true)), Ok(Scalar::Float(1.0)));
        assert!(matches!(check(ParamType::Float, s("-inf")), Ok(Scalar::Float(f)) if f == f64::NEG_INFINITY));
        assert!(check(ParamType::Float, s("abc")).is_err());
        assert!(check(ParamType::Float, s("1__0")).is_err());
        assert!(check(ParamType::Float, s("0x10")).is_err());
    }

    #[test]
    fn ints() {
        assert_eq!(check(ParamType::Int, Scalar::Float(3.0)), Ok(Scalar::Int(3)));
        assert_eq!(check(ParamType::Int, s("+007")), Ok(Scalar::Int(7)));
        assert_eq!(check(ParamType::Int, s("-1_000.00")), Ok(Scalar::Int(-1000)));
        assert_eq!(check(ParamType::Int, Scalar::Bool(true)), Ok(Scalar::Int(1)));
        let err = check(ParamType::Int, Scalar::Float(2.5)).unwrap_err();
        assert!(err.contains("fractional"), "{err}");
        assert!(check(ParamType::Int, s("1e5")).is_err());
        assert!(check(ParamType::Int, s("1.")).is_err());
        assert!(check(ParamType::Int, s("+-1")).is_err());
        assert!(check(ParamType::Int, s("_1")).is_err());
        assert!(check(ParamType::Int, Scalar::Float(f64::NAN)).is_err());
        assert!(check(ParamType::Int, s("99999999999999999999")).is_err());
    }

    #[test]
    fn bools() {
        for (v, want) in [("YES", true), ("on", true), ("1", true), ("Off", false), ("n", false)] {
            assert_eq!(check(ParamType::Bool, s(v)), Ok(Scalar::Bool(want)), "{v}");
        }
        assert_eq!(check(ParamType::Bool, Scalar::Int(0)), Ok(Scalar::Bool(false)));
        assert_eq!(check(ParamType::Bool, Scalar::Float(1.0)), Ok(Scalar::Bool(true)));
        assert!(check(ParamType::Bool, Scalar::Int(2)).is_err());
        assert!(check(ParamType::Bool, s("maybe")).is_err());
        assert!(check(ParamType::Bool, s(" true")).is_err());
    }

    #[test]
    fn strings_are_strict() {
        assert_eq!(check(ParamType::Str, s("1e-5")), Ok(s("1e-5")));
        assert!(check(ParamType::Str, Scalar::Int(1)).is_err());
        assert!(check(ParamType::Str, Scalar::Bool(true)).is_err());
    }
}
