//! The header writer and reader against the `safetensors` crate itself, and file round trips
//! through `read_header`, `MappedFile` and the converters.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

/// An empty metadata map is where we deliberately differ: we omit `__metadata__` (Python's
/// `metadata=None`). The crate, given `Some(empty)`, writes `"__metadata__":{}`; with no tensors
/// either, its map-length hint (tensors + metadata keys) is 0, which makes serde_json close the
/// map at once, so it writes the invalid `{},"__metadata__":{}}`. mergekit always writes
/// `{"format":"pt"}`, so parity is unaffected.
#[test]
fn empty_metadata_is_omitted_where_the_crate_writes_broken_json() {
    let theirs = crate_bytes(&[], Some(&BTreeMap::new()));
    assert_eq!(&theirs[8..], b"{},\"__metadata__\":{}}   ");
    assert!(parse_header(&theirs, Some(theirs.len() as u64)).is_err());
    let ours = build_header(&[], &BTreeMap::new()).unwrap();
    assert_eq!(ours.bytes, crate_bytes(&[], None));
    let parsed = parse_header(&ours.bytes, Some(ours.file_len)).unwrap();
    assert!(parsed.metadata.is_none() && parsed.tensors.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn build_header_matches_the_crate_byte_for_byte(
        tensors in tensors_strategy(),
        meta in prop_oneof![
            Just(BTreeMap::new()),
            Just(pt_metadata()),
            ("[a-z\"é]{0,6}", "[ -~]{0,12}").prop_map(|(k, v)| BTreeMap::from([(k, v)])),
        ],
    ) {
        let ours = build_header(&spec(&tensors), &meta).unwrap();
        // The crate's `None` is our empty map.
        let crate_meta = (!meta.is_empty()).then_some(&meta);
        let theirs = crate_bytes(&tensors, crate_meta);
        prop_assert_eq!(ours.file_len, theirs.len() as u64);
        prop_assert_eq!(&theirs[..ours.bytes.len()], &ours.bytes[..]);
        prop_assert_eq!(ours.bytes.len() % 8, 0);
        // Offsets agree with where the crate put each tensor's bytes, contiguously.
        let view = crate_view(&theirs).unwrap();
        prop_assert_eq!(view.len(), ours.entries.len());
        let mut previous_end = ours.bytes.len() as u64;
        for (name, start, len) in &ours.entries {
            let (_, _, crate_start, data) = &view[name];
            prop_assert_eq!(*start, *crate_start);
            prop_assert_eq!(*len, data.len() as u64);
            prop_assert_eq!(*start, previous_end);
            previous_end = start + len;
        }
        // And our parser reads the crate's file back to the same layout and tensors.
        let parsed = parse_header(&theirs, Some(theirs.len() as u64)).unwrap();
        let parsed_layout: Vec<_> = parsed
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.data_start, t.data_len))
            .collect();
        prop_assert_eq!(&parsed_layout, &ours.entries);
        prop_assert_eq!(our_view(&theirs, &parsed), view);
        prop_assert_eq!(parsed.metadata, crate_meta.cloned());
    }

    #[test]
    fn crate_files_round_trip_through_read_header_and_mmap(tensors in tensors_strategy()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let refs: Vec<(&str, &Fixture)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        write_with_crate(&path, &refs);
        let header = read_header(&path).unwrap();
        let map = MappedFile::open(&path).unwrap();
        prop_assert_eq!(header.file_len(), map.len());
        prop_assert_eq!(header.metadata.as_ref(), Some(&pt_metadata()));
        prop_assert_eq!(header.tensors.len(), tensors.len());
        for (name, fixture) in &tensors {
            let info = header.tensor(name).unwrap();
            let bytes = map.tensor_bytes(info).unwrap();
            prop_assert_eq!(bytes, &fixture.data[..]);
            prop_assert_eq!(info.numel(), fixture.shape.iter().product::<usize>() as u64);
            let mut values = vec![0f32; info.numel() as usize];
            match decode_to_f32(info.dtype, bytes, &mut values) {
                Ok(()) => {
                    let size = dtype_size(info.dtype).unwrap();
                    for (v, b) in values.iter().zip(bytes.chunks_exact(size)) {
                        let expected = match info.dtype {
                            Dtype::BF16 => f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16),
                            Dtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                            _ => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                        };
                        prop_assert!(v.to_bits() == expected.to_bits() || (v.is_nan() && expected.is_nan()));
                    }
                    let mut again = vec![0u8; bytes.len()];
                    encode_from_f32(info.dtype, &values, &mut again).unwrap();
                    for (a, b) in again.chunks_exact(size).zip(bytes.chunks_exact(size)) {
                        let nan = values.is_empty() || {
                            let mut one = [0f32];
                            decode_to_f32(info.dtype, b, &mut one).unwrap();
                            one[0].is_nan()
                        };
                        prop_assert!(a == b || nan);
                    }
                }
                Err(_) => prop_assert!(matches!(info.dtype, Dtype::I64 | Dtype::U8 | Dtype::F64)),
            }
        }
    }
}
