//! Malformed headers: each is rejected with a message naming the file and tensor.

use super::super::*;
use super::{image, parse};

fn message(json: &str, data_len: usize) -> String {
    let err = parse(json, data_len).unwrap_err();
    err.in_file("/m/model.safetensors").to_string()
}

#[test]
fn length_prefix_errors() {
    assert_eq!(
        parse_header(&[1, 2, 3], Some(3)),
        Err(HeaderError::FileTooSmall { file_len: 3 })
    );
    let mut bytes = 1234u64.to_le_bytes().to_vec();
    bytes.resize(100, b' ');
    let err = parse_header(&bytes, Some(100)).unwrap_err();
    assert_eq!(
        err.in_file("/x/model.safetensors").to_string(),
        "truncated safetensors header in /x/model.safetensors: header claims 1234 bytes but file has 100"
    );
    let huge = (MAX_HEADER_LEN + 1).to_le_bytes();
    assert_eq!(
        parse_header(&huge, None),
        Err(HeaderError::TooLarge {
            len: MAX_HEADER_LEN + 1
        })
    );
    assert!(matches!(
        parse_header(&u64::MAX.to_le_bytes(), Some(u64::MAX)),
        Err(HeaderError::TooLarge { .. })
    ));
}

#[test]
fn encoding_and_syntax_errors() {
    let mut bytes = image("{\"a?", 0);
    bytes[8 + 3] = 0xff;
    let err = parse_header(&bytes, Some(bytes.len() as u64)).unwrap_err();
    assert_eq!(err, HeaderError::InvalidUtf8 { offset: 3 });
    let msg = message(r#"{"a":{"dtype":"F32",,}}"#, 0);
    assert_eq!(
        msg,
        "corrupt safetensors header in /m/model.safetensors: invalid JSON at line 1 column 21: key must be a string"
    );
    assert!(message("[]", 0).contains("invalid JSON at line 1 column 0"));
    assert!(message(r#"{"a":{"dtype":"F32","shape":[1]}}"#, 0).contains("data_offsets"));
    assert!(message(r#"{"a":1} trailing"#, 0).contains("corrupt safetensors header"));
    let msg = message(r#"{"__metadata__":{"x":1}}"#, 0);
    assert!(msg.contains("invalid JSON"), "{msg}");
    let msg = message(r#"{"__metadata__":{},"__metadata__":{}}"#, 0);
    assert!(msg.contains("duplicate `__metadata__`"), "{msg}");
}

#[test]
fn tensor_errors_name_the_tensor_and_file() {
    let cases: &[(&str, usize, &str)] = &[
        (
            r#"{"a.weight":{"dtype":"BF16","shape":[3,4],"data_offsets":[0,10]}}"#,
            10,
            "tensor `a.weight` in /m/model.safetensors has data_offsets [0, 10] but dtype BF16 shape [3, 4] needs 24 bytes",
        ),
        (
            r#"{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}"#,
            1,
            "tensor `a` in /m/model.safetensors has unknown dtype `Q4`",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#,
            0,
            "tensor `a` in /m/model.safetensors has dtype F32 shape [4294967296, 4294967296] whose byte size overflows",
        ),
        (
            r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}"#,
            1,
            "does not fill whole bytes",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[5,4]}}"#,
            5,
            "tensor `a` in /m/model.safetensors has data_offsets [5, 4] that end before they start",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
            6,
            "tensor `b` in /m/model.safetensors has data_offsets [2, 6] overlapping tensor `a`, which ends at 4",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[1,5]}}"#,
            5,
            "tensor `a` in /m/model.safetensors starts at data offset 1 but should start at 0",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#,
            3,
            "tensor `a` in /m/model.safetensors has data_offsets [0, 4] beyond the end of the file (data section has 3 bytes)",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#,
            6,
            "safetensors file in /m/model.safetensors has a 6-byte data section but its tensors cover only 4 bytes",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}"#,
            0,
            "duplicate tensor `a` in safetensors header in /m/model.safetensors",
        ),
    ];
    for (json, data_len, expected) in cases {
        let msg = message(json, *data_len);
        assert!(msg.contains(expected), "{msg}\n  expected: {expected}");
    }
}

#[test]
fn huge_offsets_without_file_length_do_not_overflow() {
    // Eight U8 tensors of (2^64 - 1) / 8 bytes each end just below 2^64; adding the
    // header length to the last end would overflow.
    let m = u64::MAX / 8;
    let entries: Vec<String> = (0..8u64)
        .map(|k| {
            let (s, e) = (k * m, (k + 1) * m);
            format!(r#""t{k}":{{"dtype":"U8","shape":[{m}],"data_offsets":[{s},{e}]}}"#)
        })
        .collect();
    let bytes = image(&format!("{{{}}}", entries.join(",")), 0);
    assert!(matches!(
        parse_header(&bytes, None),
        Err(HeaderError::SizeOverflow { tensor, .. }) if tensor == "t7"
    ));
    assert!(matches!(
        parse_header(&bytes, Some(bytes.len() as u64)),
        Err(HeaderError::BeyondEnd { tensor, .. }) if tensor == "t0"
    ));
    let overflow = r#"{"a":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,0]}}"#;
    assert!(matches!(parse(overflow, 0), Err(HeaderError::SizeOverflow { .. })));
}
