//! Conversion between on-disk little-endian element bytes and `f32`.
//!
//! Only BF16, F16 and F32 are converted. F64 is refused rather than narrowed: mergekit keeps
//! f64 inputs in f64, so a lossy f32 path would silently break parity.
//!
//! * Decoding is exact. BF16 is widened by a plain 16-bit shift (as torch does), so NaN
//!   payloads survive bit for bit; `half`'s `bf16::to_f32` would set the quiet bit.
//! * Encoding rounds to nearest, ties to even (`half`), which for finite values and
//!   infinities is bit-identical to torch's `float → bfloat16/half` casts. A NaN stays a NaN
//!   with its sign; its payload bits may differ from torch's, which itself differs between
//!   its scalar and vectorised paths.
//!
//! Large buffers are split into chunks processed with rayon, on whichever pool the caller
//! runs in (use `ThreadPool::install` to pick the worker's CPU pool).

use half::{bf16, f16, slice::HalfFloatSliceExt};
use rayon::prelude::*;
use safetensors::Dtype;

use super::error::ConvertError;

/// Elements per parallel task; buffers up to this size are converted on the calling thread.
const PAR_CHUNK: usize = 1 << 16;
/// Elements per stack block in the F16 paths (so `half` can use F16C on whole slices).
const F16_BLOCK: usize = 512;

type DecodeKernel = fn(&[u8], &mut [f32]);
type EncodeKernel = fn(&[f32], &mut [u8]);

/// Size in bytes of one element of `dtype`, or `None` for sub-byte dtypes (F4, F6_*).
pub fn dtype_size(dtype: Dtype) -> Option<usize> {
    let bits = dtype.bitsize();
    bits.is_multiple_of(8).then_some(bits / 8)
}

/// Decodes little-endian `bytes` of `dtype` into `out`; `bytes.len()` must be exactly
/// `out.len() × dtype size`.
pub fn decode_to_f32(dtype: Dtype, bytes: &[u8], out: &mut [f32]) -> Result<(), ConvertError> {
    let (size, kernel): (usize, DecodeKernel) = match dtype {
        Dtype::BF16 => (2, decode_bf16),
        Dtype::F16 => (2, decode_f16),
        Dtype::F32 => (4, decode_f32),
        _ => return Err(ConvertError::UnsupportedDtype { dtype }),
    };
    check_len(dtype, size, bytes.len(), out.len())?;
    if out.len() <= PAR_CHUNK {
        kernel(bytes, out);
    } else {
        out.par_chunks_mut(PAR_CHUNK)
            .zip(bytes.par_chunks(PAR_CHUNK * size))
            .for_each(|(o, b)| kernel(b, o));
    }
    Ok(())
}

/// Encodes `values` as little-endian `dtype` into `out`; `out.len()` must be exactly
/// `values.len() × dtype size`. Rounds to nearest, ties to even.
pub fn encode_from_f32(dtype: Dtype, values: &[f32], out: &mut [u8]) -> Result<(), ConvertError> {
    let (size, kernel): (usize, EncodeKernel) = match dtype {
        Dtype::BF16 => (2, encode_bf16),
        Dtype::F16 => (2, encode_f16),
        Dtype::F32 => (4, encode_f32),
        _ => return Err(ConvertError::UnsupportedDtype { dtype }),
    };
    check_len(dtype, size, out.len(), values.len())?;
    if values.len() <= PAR_CHUNK {
        kernel(values, out);
    } else {
        values
            .par_chunks(PAR_CHUNK)
            .zip(out.par_chunks_mut(PAR_CHUNK * size))
            .for_each(|(v, o)| kernel(v, o));
    }
    Ok(())
}

fn check_len(dtype: Dtype, size: usize, bytes: usize, values: usize) -> Result<(), ConvertError> {
    if values.checked_mul(size) == Some(bytes) {
        Ok(())
    } else {
        Err(ConvertError::LengthMismatch { dtype, bytes, values })
    }
}

fn decode_bf16(bytes: &[u8], out: &mut [f32]) {
    let (pairs, _) = bytes.as_chunks::<2>();
    for (o, b) in out.iter_mut().zip(pairs) {
        *o = f32::from_bits(u32::from(u16::from_le_bytes(*b)) << 16);
    }
}

fn decode_f16(bytes: &[u8], out: &mut [f32]) {
    let (pairs, _) = bytes.as_chunks::<2>();
    let mut block = [f16::ZERO; F16_BLOCK];
    for (o, p) in out.chunks_mut(F16_BLOCK).zip(pairs.chunks(F16_BLOCK)) {
        let block = &mut block[..o.len()];
        for (h, b) in block.iter_mut().zip(p) {
            *h = f16::from_bits(u16::from_le_bytes(*b));
        }
        block.convert_to_f32_slice(o);
    }
}

fn decode_f32(bytes: &[u8], out: &mut [f32]) {
    let (quads, _) = bytes.as_chunks::<4>();
    for (o, b) in out.iter_mut().zip(quads) {
        *o = f32::from_le_bytes(*b);
    }
}

fn encode_bf16(values: &[f32], out: &mut [u8]) {
    let (pairs, _) = out.as_chunks_mut::<2>();
    for (o, &v) in pairs.iter_mut().zip(values) {
        *o = bf16::from_f32(v).to_bits().to_le_bytes();
    }
}

fn encode_f16(values: &[f32], out: &mut [u8]) {
    let (pairs, _) = out.as_chunks_mut::<2>();
    let mut block = [f16::ZERO; F16_BLOCK];
    for (v, o) in values.chunks(F16_BLOCK).zip(pairs.chunks_mut(F16_BLOCK)) {
        let block = &mut block[..v.len()];
        block.convert_from_f32_slice(v);
        for (b, h) in o.iter_mut().zip(block.iter()) {
            *b = h.to_bits().to_le_bytes();
        }
    }
}

fn encode_f32(values: &[f32], out: &mut [u8]) {
    let (quads, _) = out.as_chunks_mut::<4>();
    for (o, v) in quads.iter_mut().zip(values) {
        *o = v.to_le_bytes();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(dtype: Dtype, v: f32) -> Vec<u8> {
        let mut out = vec![0; dtype_size(dtype).unwrap()];
        encode_from_f32(dtype, &[v], &mut out).unwrap();
        out
    }

    fn enc16(dtype: Dtype, bits: u32) -> u16 {
        let b = enc(dtype, f32::from_bits(bits));
        u16::from_le_bytes([b[0], b[1]])
    }

    fn dec(dtype: Dtype, bytes: &[u8]) -> f32 {
        let mut out = [0f32];
        decode_to_f32(dtype, bytes, &mut out).unwrap();
        out[0]
    }

    /// torch's c10::BFloat16 round_to_nearest_even for non-NaN input.
    fn torch_bf16(bits: u32) -> u16 {
        let bias = 0x7FFF + ((bits >> 16) & 1);
        (bits.wrapping_add(bias) >> 16) as u16
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(enc16(Dtype::BF16, 0x3F80_8000), 0x3F80); // 1.00390625: tie, down to even
        assert_eq!(enc16(Dtype::BF16, 0x3F81_8000), 0x3F82); // tie, up to even
        assert_eq!(enc16(Dtype::BF16, 0x3F80_8001), 0x3F81); // above the tie
        assert_eq!(enc16(Dtype::BF16, 0x3F80_7FFF), 0x3F80); // below the tie
        assert_eq!(enc16(Dtype::BF16, 0xBF80_8000), 0xBF80); // negative tie
        assert_eq!(enc16(Dtype::BF16, 0x7F7F_FFFF), 0x7F80); // f32::MAX rounds to inf
        assert_eq!(enc16(Dtype::BF16, 0x0000_8001), 0x0001); // subnormal rounds up
        assert_eq!(enc16(Dtype::BF16, 0x8000_0000), 0x8000); // -0 keeps its sign
        assert_eq!(enc16(Dtype::BF16, 0xFF80_0000), 0xFF80); // -inf
        assert_eq!(dec(Dtype::BF16, &[0x80, 0x3F]), 1.0);
    }

    #[test]
    fn f16_rounds_to_nearest_even() {
        assert_eq!(enc16(Dtype::F16, (1.0f32 + 2f32.powi(-11)).to_bits()), 0x3C00);
        assert_eq!(enc16(Dtype::F16, (1.0f32 + 3.0 * 2f32.powi(-11)).to_bits()), 0x3C02);
        assert_eq!(enc16(Dtype::F16, 65520f32.to_bits()), 0x7C00); // rounds to inf
        assert_eq!(enc16(Dtype::F16, 65519f32.to_bits()), 0x7BFF);
        assert_eq!(enc16(Dtype::F16, 2f32.powi(-25).to_bits()), 0x0000); // tie to even zero
        assert_eq!(enc16(Dtype::F16, (3.0 * 2f32.powi(-25)).to_bits()), 0x0002);
        assert_eq!(dec(Dtype::F16, &[0x00, 0x3C]), 1.0);
        assert_eq!(dec(Dtype::F16, &[0x01, 0x00]), 2f32.powi(-24));
    }

    #[test]
    fn nan_stays_nan_with_its_sign() {
        for dtype in [Dtype::BF16, Dtype::F16, Dtype::F32] {
            for nan in [f32::NAN, -f32::NAN, f32::from_bits(0x7F80_0001)] {
                let back = dec(dtype, &enc(dtype, nan));
                assert!(back.is_nan(), "{dtype}");
                assert_eq!(back.is_sign_negative(), nan.is_sign_negative(), "{dtype}");
            }
        }
        // Decoding keeps a bf16 signalling-NaN payload bit for bit.
        assert_eq!(dec(Dtype::BF16, &[0x81, 0x7F]).to_bits(), 0x7F81_0000);
        assert_eq!(dec(Dtype::F32, &[1, 0, 0x80, 0x7F]).to_bits(), 0x7F80_0001);
    }

    #[test]
    fn every_16_bit_pattern_decodes_exactly_and_round_trips() {
        let bytes: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        for dtype in [Dtype::BF16, Dtype::F16] {
            let mut values = vec![0f32; 1 << 16];
            decode_to_f32(dtype, &bytes, &mut values).unwrap();
            let mut back = vec![0u8; bytes.len()];
            encode_from_f32(dtype, &values, &mut back).unwrap();
            for (i, v) in values.iter().enumerate() {
                let bits = i as u16;
                let reference = match dtype {
                    Dtype::BF16 => f32::from_bits(u32::from(bits) << 16),
                    _ => f16::from_bits(bits).to_f64() as f32,
                };
                let again = u16::from_le_bytes([back[2 * i], back[2 * i + 1]]);
                if reference.is_nan() {
                    assert!(v.is_nan());
                } else {
                    assert_eq!(v.to_bits(), reference.to_bits(), "{dtype} {bits:#06x}");
                    assert_eq!(again, bits, "{dtype} {bits:#06x}");
                }
            }
        }
    }

    #[test]
    fn big_buffers_take_the_parallel_path_and_agree() {
        let n = 3 * PAR_CHUNK + 12345;
        let values: Vec<f32> = (0..n)
            .map(|i| f32::from_bits((i as u32).wrapping_mul(2_654_435_761)))
            .collect();
        for dtype in [Dtype::BF16, Dtype::F16, Dtype::F32] {
            let size = dtype_size(dtype).unwrap();
            let mut bytes = vec![0u8; n * size];
            encode_from_f32(dtype, &values, &mut bytes).unwrap();
            let mut serial = vec![0u8; n * size];
            for (v, o) in values.iter().zip(serial.chunks_mut(size)) {
                encode_from_f32(dtype, std::slice::from_ref(v), o).unwrap();
            }
            assert_eq!(bytes, serial, "{dtype}");
            let mut decoded = vec![0f32; n];
            decode_to_f32(dtype, &bytes, &mut decoded).unwrap();
            for (i, d) in decoded.iter().enumerate() {
                let one = dec(dtype, &bytes[i * size..(i + 1) * size]);
                assert!(d.to_bits() == one.to_bits() || (d.is_nan() && one.is_nan()));
            }
        }
    }

    #[test]
    fn errors() {
        let mut out = [0f32; 2];
        let err = decode_to_f32(Dtype::BF16, &[0; 3], &mut out).unwrap_err();
        assert_eq!(err.to_string(), "3 bytes of BF16 do not hold exactly 2 values");
        let err = decode_to_f32(Dtype::F64, &[0; 16], &mut out).unwrap_err();
        assert!(err.to_string().starts_with("dtype F64 cannot be converted"));
        assert!(encode_from_f32(Dtype::I64, &[1.0], &mut [0; 8]).is_err());
        assert!(encode_from_f32(Dtype::F32, &[1.0], &mut [0; 3]).is_err());
        assert_eq!(dtype_size(Dtype::BF16), Some(2));
        assert_eq!(dtype_size(Dtype::I64), Some(8));
        assert_eq!(dtype_size(Dtype::F4), None);
    }

    proptest! {
        #[test]
        fn bf16_matches_torch_rounding(bits in any::<u32>()) {
            prop_assume!(!f32::from_bits(bits).is_nan());
            prop_assert_eq!(enc16(Dtype::BF16, bits), torch_bf16(bits));
        }

        #[test]
        fn f16_matches_software_rounding(bits in any::<u32>()) {
            let v = f32::from_bits(bits);
            prop_assume!(!v.is_nan());
            prop_assert_eq!(enc16(Dtype::F16, bits), f16::from_f32_const(v).to_bits());
        }

        #[test]
        fn f32_is_a_straight_copy(bits in any::<u32>()) {
            let b = enc(Dtype::F32, f32::from_bits(bits));
            prop_assert_eq!(&b[..], &bits.to_le_bytes()[..]);
            prop_assert_eq!(dec(Dtype::F32, &b).to_bits(), bits);
        }
    }
}
