//! No-panic properties of the parser on arbitrary and mutated bytes, and agreement with the
//! `safetensors` crate on what is a valid file.

use proptest::prelude::*;

use super::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), cut in any::<prop::sample::Index>()) {
        let _ = parse_header(&bytes, Some(bytes.len() as u64));
        let _ = parse_header(&bytes, None);
        let prefix = &bytes[..cut.index(bytes.len() + 1)];
        let _ = parse_header(prefix, Some(bytes.len() as u64));
        // A small length prefix followed by random bytes reaches the JSON parser.
        let mut framed = ((bytes.len() as u64).saturating_sub(8)).to_le_bytes().to_vec();
        framed.extend_from_slice(bytes.get(8..).unwrap_or_default());
        let _ = parse_header(&framed, Some(framed.len() as u64));
    }

    #[test]
    fn mutated_headers_never_panic_and_agree_with_the_crate(
        tensors in tensors_strategy(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        splice in any::<prop::sample::Index>(),
        token in prop_oneof![
            Just("18446744073709551615"), Just("18446744073709551616"), Just("-1"), Just("0"),
            Just("1e3"), Just("null"), Just("[]"), Just("{}"), Just("\"BF16\""), Just(","),
            Just("\"data_offsets\":[0,0]"), Just("\"shape\":[4294967296,4294967296]"),
        ],
        truncate in any::<prop::sample::Index>(),
        mode in 0u8..3,
    ) {
        let mut bytes = crate_bytes(&tensors, Some(&pt_metadata()));
        let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        match mode {
            // Random byte edits anywhere in the length prefix or the JSON.
            0 => for (at, value) in &edits {
                let i = at.index(header_end);
                bytes[i] = *value;
            },
            // Splice a token into the JSON, keeping the length prefix consistent.
            1 => {
                let at = 8 + splice.index(header_end - 8);
                bytes.splice(at..at, token.bytes());
                let n = (header_end - 8 + token.len()) as u64;
                bytes[..8].copy_from_slice(&n.to_le_bytes());
            }
            // Truncate the file.
            _ => bytes.truncate(truncate.index(bytes.len() + 1)),
        }
        let ours = parse_header(&bytes, Some(bytes.len() as u64));
        let _ = parse_header(&bytes, None);
        let theirs = std::panic::catch_unwind(|| crate_view(&bytes));
        if let Ok(header) = &ours {
            let theirs = theirs.as_ref().ok().and_then(Option::as_ref);
            prop_assert_eq!(theirs, Some(&our_view(&bytes, header)), "we accept what the crate rejects");
        }
        if let (Ok(Some(_)), Err(e)) = (&theirs, &ours) {
            prop_assert!(matches!(e, HeaderError::DuplicateTensor { .. }), "crate accepts, we reject: {e}");
        }
    }
}
