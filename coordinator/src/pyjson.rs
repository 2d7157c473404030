//! JSON text the way Python's `json.dumps(obj, indent=2, sort_keys=…)` writes it (what
//! transformers and mergekit emit): 2-space indent, `": "` separators, ASCII-only output with
//! `\uXXXX` escapes, and floats in Python's `repr` form (`1e-05`, `0.02`, `10000.0`).

use serde_json::Value;

/// Serialises `v` with 2-space indentation; object keys sorted when `sort_keys`.
pub fn to_string(v: &Value, sort_keys: bool) -> String {
    let mut out = String::new();
    write_value(&mut out, v, 0, sort_keys);
    out
}

fn write_value(out: &mut String, v: &Value, depth: usize, sort_keys: bool) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                out.push_str(&u.to_string());
            } else {
                out.push_str(&float_repr(n.as_f64().unwrap_or(f64::NAN)));
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(a) => {
            if a.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, depth + 1);
                write_value(out, x, depth + 1, sort_keys);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(m) => {
            if m.is_empty() {
                out.push_str("{}");
                return;
            }
            let mut keys: Vec<&String> = m.keys().collect();
            if sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, depth + 1);
                write_str(out, k);
                out.push_str(": ");
                write_value(out, &m[k], depth + 1, sort_keys);
            }
            newline(out, depth);
            out.push('}');
        }
    }
}

fn newline(out: &mut String, depth: usize) {
    out.push('\n');
    for _ in 0..depth {
        out.push_str("  ");
    }
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: shortest round-trip digits, fixed notation for exponents in
/// [-4, 16), otherwise scientific with at least two exponent digits.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // Shortest digits via Rust's `{:e}` ("d.ddde[-]x").
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} always has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let neg = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if neg { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let s = if exp >= 0 {
            if n <= exp + 1 {
                format!("{digits}{}.0", "0".repeat((exp + 1 - n) as usize))
            } else {
                let (a, b) = digits.split_at((exp + 1) as usize);
                format!("{a}.{b}")
            }
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        };
        format!("{sign}{s}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits.clone()
        };
        let es = if exp < 0 {
            format!("-{:02}", -exp)
        } else {
            format!("+{exp:02}")
        };
        format!("{sign}{m}e{es}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Donor `config.json` floats survive parsing and re-writing byte for byte, including ones
    /// whose shortest decimal form needs correctly rounded parsing (serde_json's
    /// `float_roundtrip`).
    #[test]
    fn config_floats_round_trip_exactly() {
        let text = "[2.2250738585072014e-308, 0.30000000000000004, 9.999999999999999e-06, 1.7976931348623157e+308, 5e-324, 0.1, 1e-05, 3.141592653589793, 2.718281828459045, 0.7853981633974483]";
        let v: Value = serde_json::from_str(text).unwrap();
        let items: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| float_repr(x.as_f64().unwrap()))
            .collect();
        assert_eq!(format!("[{}]", items.join(", ")), text);
    }

    #[test]
    fn floats_print_like_python_repr() {
        let cases = [
            (1e-5, "1e-05"),
            (1e-6, "1e-06"),
            (0.02, "0.02"),
            (10000.0, "10000.0"),
            (500000.0, "500000.0"),
            (1.5e-7, "1.5e-07"),
            (1e16, "1e+16"),
            (123456789012345.6, "123456789012345.6"),
            (0.0001, "0.0001"),
            (-2.5, "-2.5"),
            (1.0, "1.0"),
            (0.1 + 0.2, "0.30000000000000004"),
        ];
        for (x, want) in cases {
            assert_eq!(float_repr(x), want, "{x}");
        }
    }

    #[test]
    fn objects_sorted_and_indented_like_json_dumps() {
        let v: Value = serde_json::from_str(r#"{"b": [1, 2.0], "a": {"é": null}, "c": []}"#).unwrap();
        assert_eq!(
            to_string(&v, true),
            "{\n  \"a\": {\n    \"\\u00e9\": null\n  },\n  \"b\": [\n    1,\n    2.0\n  ],\n  \"c\": []\n}"
        );
    }
}
