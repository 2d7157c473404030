//! Building output headers byte-identical to the `safetensors` crate's `serialize()`.
//!
//! Python `safetensors.torch.save_file` calls the same Rust code, so matching the crate
//! matches mergekit's output. The layout it writes (read from `safetensors` 0.8.0,
//! `tensor.rs: prepare`):
//!
//! * tensors sorted by dtype **descending** in `Dtype`'s declaration order (so I64 > F32 >
//!   BF16 > F16), ties by name ascending (byte order); data is laid out contiguously in that
//!   order from offset 0;
//! * compact JSON (serde_json): `"__metadata__"` first when metadata is given, then one
//!   `{"dtype":..,"shape":[..],"data_offsets":[s,e]}` per tensor in file order;
//! * the JSON is padded with spaces (`b' '`) to the next multiple of 8, and the 8-byte
//!   little-endian prefix holds the **padded** length, so `8 + n` is a multiple of 8;
//! * a padded length above 100 000 000 bytes is an error.
//!
//! Where this builder differs, on inputs mergekit never produces (it always writes exactly
//! `{"format":"pt"}`):
//!
//! * an empty metadata map is written as no `__metadata__` entry, like Python's
//!   `metadata=None`; the crate, given `Some(empty)`, writes `"__metadata__":{}` (and, with no
//!   tensors either, the invalid JSON `{},"__metadata__":{}}`);
//! * the crate keeps metadata in a `HashMap`, so with two or more keys its key order is not
//!   deterministic; this builder writes them sorted.

use std::collections::{BTreeMap, HashSet};

use safetensors::Dtype;

use super::error::{HeaderError, MAX_HEADER_LEN};
use super::header::{ByteLenError, LEN_PREFIX, byte_len};

/// A header ready to write, and where each tensor's bytes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputHeader {
    /// The 8-byte little-endian length, the JSON, and its space padding.
    pub bytes: Vec<u8>,
    /// `(name, absolute data start, data length)` per tensor, in file order.
    pub entries: Vec<(String, u64, u64)>,
    /// Length of the complete file.
    pub file_len: u64,
}

/// The metadata mergekit (through `safetensors.torch.save_file`) writes: `{"format":"pt"}`.
pub fn pt_metadata() -> BTreeMap<String, String> {
    BTreeMap::from([("format".to_owned(), "pt".to_owned())])
}

/// Builds the header `safetensors::tensor::serialize` would write for these tensors.
///
/// `tensors` may be in any order; names must be unique and not `__metadata__`. An empty
/// `metadata` map writes no `__metadata__` entry (Python's `metadata=None`); mergekit's is
/// [`pt_metadata`].
pub fn build_header(
    tensors: &[(String, Dtype, Vec<u64>)],
    metadata: &BTreeMap<String, String>,
) -> Result<OutputHeader, HeaderError> {
    let metadata = (!metadata.is_empty()).then_some(metadata);
    let mut order: Vec<&(String, Dtype, Vec<u64>)> = tensors.iter().collect();
    order.sort_by(|(ln, ld, _), (rn, rd, _)| rd.cmp(ld).then_with(|| ln.cmp(rn)));

    let mut seen = HashSet::with_capacity(order.len());
    let mut planned = Vec::with_capacity(order.len());
    let mut offset = 0u64;
    for (name, dtype, shape) in order {
        if name == "__metadata__" {
            return Err(HeaderError::ReservedName);
        }
        if !seen.insert(name.as_str()) {
            return Err(HeaderError::DuplicateTensor { tensor: name.clone() });
        }
        let overflow = || HeaderError::SizeOverflow {
            tensor: name.clone(),
            dtype: *dtype,
            shape: shape.clone(),
        };
        let len = byte_len(*dtype, shape).map_err(|e| match e {
            ByteLenError::Overflow => overflow(),
            ByteLenError::PartialByte => HeaderError::PartialByte {
                tensor: name.clone(),
                dtype: *dtype,
                shape: shape.clone(),
            },
        })?;
        let end = offset.checked_add(len).ok_or_else(overflow)?;
        planned.push((name, *dtype, shape, offset, end));
        offset = end;
    }

    let mut json = String::with_capacity(64 + 96 * planned.len());
    json.push('{');
    if let Some(metadata) = metadata {
        json.push_str("\"__metadata__\":");
        push_json(&mut json, metadata);
    }
    for (i, (name, dtype, shape, start, end)) in planned.iter().enumerate() {
        if i > 0 || metadata.is_some() {
            json.push(',');
        }
        push_json(&mut json, name);
        json.push_str(":{\"dtype\":");
        push_json(&mut json, dtype);
        json.push_str(",\"shape\":");
        push_json(&mut json, shape);
        json.push_str(",\"data_offsets\":");
        push_json(&mut json, &[start, end]);
        json.push('}');
    }
    json.push('}');

    let mut json = json.into_bytes();
    let padded = json.len().next_multiple_of(LEN_PREFIX as usize);
    json.resize(padded, b' ');
    let n = padded as u64;
    if n > MAX_HEADER_LEN {
        return Err(HeaderError::TooLarge { len: n });
    }
    let data_start = LEN_PREFIX + n;
    let Some(file_len) = data_start.checked_add(offset) else {
        // Only reachable when the tensors alone need nearly 2^64 bytes.
        let (name, dtype, shape, ..) = planned.last().expect("a non-zero offset has a tensor");
        return Err(HeaderError::SizeOverflow {
            tensor: (*name).clone(),
            dtype: *dtype,
            shape: (*shape).clone(),
        });
    };

    let mut bytes = Vec::with_capacity(json.len() + LEN_PREFIX as usize);
    bytes.extend_from_slice(&n.to_le_bytes());
    bytes.extend_from_slice(&json);
    let entries = planned
        .into_iter()
        .map(|(name, _, _, start, end)| (name.clone(), data_start + start, end - start))
        .collect();
    Ok(OutputHeader {
        bytes,
        entries,
        file_len,
    })
}

/// Appends the compact serde_json encoding of `value`, the encoder the crate uses.
fn push_json<T: serde::Serialize + ?Sized>(out: &mut String, value: &T) {
    // Serializing strings, integers, string maps and the crate's Dtype into a String
    // cannot fail: none of them has a non-string key or a fallible Serialize impl.
    let text = serde_json::to_string(value).expect("plain JSON values always serialize");
    out.push_str(&text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, dtype: Dtype, shape: &[u64]) -> (String, Dtype, Vec<u64>) {
        (name.to_owned(), dtype, shape.to_vec())
    }

    fn json_of(h: &OutputHeader) -> &str {
        std::str::from_utf8(&h.bytes[8..]).unwrap()
    }

    #[test]
    fn exact_bytes_for_a_small_model() {
        let h = build_header(
            &[
                t("w", Dtype::BF16, &[2, 3]),
                t("b", Dtype::F32, &[3]),
                t("pos", Dtype::I64, &[]),
                t("h", Dtype::F16, &[0]),
            ],
            &pt_metadata(),
        )
        .unwrap();
        let expected = concat!(
            r#"{"__metadata__":{"format":"pt"},"#,
            r#""pos":{"dtype":"I64","shape":[],"data_offsets":[0,8]},"#,
            r#""b":{"dtype":"F32","shape":[3],"data_offsets":[8,20]},"#,
            r#""w":{"dtype":"BF16","shape":[2,3],"data_offsets":[20,32]},"#,
            r#""h":{"dtype":"F16","shape":[0],"data_offsets":[32,32]}}"#
        );
        let padded = expected.len().next_multiple_of(8);
        assert_eq!(json_of(&h).trim_end_matches(' '), expected);
        assert_eq!(h.bytes.len(), 8 + padded);
        assert_eq!(h.bytes[..8], (padded as u64).to_le_bytes());
        assert!(json_of(&h)[expected.len()..].bytes().all(|b| b == b' '));
        let data_start = 8 + padded as u64;
        let entries: Vec<_> = h
            .entries
            .iter()
            .map(|(name, start, len)| (name.as_str(), start - data_start, *len))
            .collect();
        assert_eq!(entries, [("pos", 0, 8), ("b", 8, 12), ("w", 20, 12), ("h", 32, 0)]);
        assert_eq!(h.file_len, data_start + 32);
    }

    #[test]
    fn empty_and_metadata_variants() {
        let h = build_header(&[], &BTreeMap::new()).unwrap();
        assert_eq!(h.bytes, b"\x08\0\0\0\0\0\0\0{}      ");
        assert_eq!(h.file_len, 16);
        let h = build_header(&[], &pt_metadata()).unwrap();
        assert_eq!(json_of(&h), r#"{"__metadata__":{"format":"pt"}}"#);
        let h = build_header(&[t("a", Dtype::U8, &[1])], &BTreeMap::new()).unwrap();
        assert!(json_of(&h).starts_with(r#"{"a":{"#));
    }

    #[test]
    fn names_are_json_escaped_and_sorted_bytewise() {
        let h = build_header(
            &[
                t("é\"q\\\n\u{1}", Dtype::F32, &[1]),
                t("B", Dtype::F32, &[1]),
                t("a", Dtype::F32, &[1]),
            ],
            &BTreeMap::new(),
        )
        .unwrap();
        let names: Vec<_> = h.entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["B", "a", "é\"q\\\n\u{1}"]);
        assert!(json_of(&h).contains(r#""é\"q\\\n\u0001":"#));
    }

    #[test]
    fn invalid_tensor_lists_are_errors() {
        let dup = build_header(&[t("a", Dtype::F32, &[1]), t("a", Dtype::F16, &[1])], &BTreeMap::new());
        assert_eq!(dup.unwrap_err(), HeaderError::DuplicateTensor { tensor: "a".into() });
        let reserved = build_header(&[t("__metadata__", Dtype::F32, &[1])], &BTreeMap::new());
        assert_eq!(reserved.unwrap_err(), HeaderError::ReservedName);
        let partial = build_header(&[t("f4", Dtype::F4, &[3])], &BTreeMap::new()).unwrap_err();
        assert!(partial.to_string().contains("does not fill whole bytes"));
        assert!(build_header(&[t("f4", Dtype::F4, &[2])], &BTreeMap::new()).is_ok());
        let huge = build_header(&[t("x", Dtype::F32, &[u64::MAX, 2])], &BTreeMap::new()).unwrap_err();
        assert!(matches!(huge, HeaderError::SizeOverflow { .. }));
        // Eight tensors of (2^64 - 1) / 8 bytes fit as offsets but not after the header;
        // nine overflow the offsets themselves.
        let m = u64::MAX / 8;
        let many = |k: u64| -> Vec<_> { (0..k).map(|i| t(&format!("t{i}"), Dtype::U8, &[m])).collect() };
        for k in [8, 9] {
            let err = build_header(&many(k), &BTreeMap::new()).unwrap_err();
            assert!(
                matches!(&err, HeaderError::SizeOverflow { tensor, .. } if *tensor == format!("t{}", k - 1)),
                "{err:?}"
            );
        }
    }

    #[test]
    fn header_over_the_cap_is_an_error() {
        let name = "n".repeat(MAX_HEADER_LEN as usize);
        let err = build_header(&[t(&name, Dtype::U8, &[0])], &BTreeMap::new()).unwrap_err();
        assert!(matches!(err, HeaderError::TooLarge { .. }));
    }
}
