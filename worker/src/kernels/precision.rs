//! Working precisions and round-to-nearest-even helpers.
//!
//! Every kernel computes in `f32` and rounds each intermediate result to the working dtype `W`
//! exactly where torch would (an elementwise op or reduction on a bf16/f16 tensor computes in
//! f32 and rounds once). Values of `W` are held in `f32`, which represents bf16 and f16 exactly.

use super::simd::simd_dispatch;
use crate::error::KernelError;

/// Working dtype of a tensor group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkDType {
    /// bfloat16: computed in f32, rounded to bf16 after every op.
    Bf16,
    /// float16: computed in f32, rounded to f16 after every op.
    F16,
    /// float32.
    F32,
}

impl WorkDType {
    /// Rounds an f32 value to this dtype (round to nearest, ties to even).
    #[inline]
    pub fn round(self, x: f32) -> f32 {
        match self {
            WorkDType::Bf16 => round_bf16(x),
            WorkDType::F16 => round_f16(x),
            WorkDType::F32 => x,
        }
    }

    /// Rounds a Python float (f64) the way torch stores it into a tensor of this dtype:
    /// first to f32, then to the dtype.
    #[inline]
    pub fn from_f64(self, x: f64) -> f32 {
        self.round(x as f32)
    }

    /// The promotion of two dtypes (torch.promote_types restricted to float types).
    pub fn promote(self, other: WorkDType) -> WorkDType {
        if self == other { self } else { WorkDType::F32 }
    }

    /// The wire dtype of this working dtype.
    pub fn wire(self) -> shardmerge_proto::v1::DType {
        use shardmerge_proto::v1::DType as D;
        match self {
            WorkDType::Bf16 => D::Bf16,
            WorkDType::F16 => D::F16,
            WorkDType::F32 => D::F32,
        }
    }

    /// Short name as used in configs (`bfloat16`, `float16`, `float32`).
    pub fn name(self) -> &'static str {
        match self {
            WorkDType::Bf16 => "bfloat16",
            WorkDType::F16 => "float16",
            WorkDType::F32 => "float32",
        }
    }
}

impl TryFrom<shardmerge_proto::v1::DType> for WorkDType {
    type Error = KernelError;
    fn try_from(d: shardmerge_proto::v1::DType) -> Result<Self, KernelError> {
        use shardmerge_proto::v1::DType as D;
        match d {
            D::Bf16 => Ok(WorkDType::Bf16),
            D::F16 => Ok(WorkDType::F16),
            D::F32 => Ok(WorkDType::F32),
            other => Err(KernelError::UnsupportedDType(format!("{other:?}"))),
        }
    }
}

/// Calls a generic function with the compile-time precision matching a [`WorkDType`].
///
/// `with_precision!(w, P => expr)` evaluates `expr` with the type alias `P` bound to
/// [`Bf16`], [`F16`] or [`F32`].
#[macro_export]
macro_rules! with_precision {
    ($w:expr, $p:ident => $body:expr) => {
        match $w {
            $crate::kernels::WorkDType::Bf16 => {
                type $p = $crate::kernels::precision::Bf16;
                $body
            }
            $crate::kernels::WorkDType::F16 => {
                type $p = $crate::kernels::precision::F16;
                $body
            }
            $crate::kernels::WorkDType::F32 => {
                type $p = $crate::kernels::precision::F32;
                $body
            }
        }
    };
}

/// Compile-time working precision.
pub trait Precision: Send + Sync + 'static {
    /// The runtime tag of this precision.
    const DTYPE: WorkDType;
    /// Rounds an f32 to this precision.
    fn rnd(x: f32) -> f32;
}

/// bfloat16 precision.
pub struct Bf16;
/// float16 precision.
pub struct F16;
/// float32 precision.
pub struct F32;

impl Precision for Bf16 {
    const DTYPE: WorkDType = WorkDType::Bf16;
    #[inline(always)]
    fn rnd(x: f32) -> f32 {
        round_bf16(x)
    }
}
impl Precision for F16 {
    const DTYPE: WorkDType = WorkDType::F16;
    #[inline(always)]
    fn rnd(x: f32) -> f32 {
        round_f16(x)
    }
}
impl Precision for F32 {
    const DTYPE: WorkDType = WorkDType::F32;
    #[inline(always)]
    fn rnd(x: f32) -> f32 {
        x
    }
}

/// Rounds to the nearest bfloat16 (ties to even), returned as f32. NaN stays NaN.
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000;
    let quiet_nan = (b | 0x0040_0000) & 0xFFFF_0000;
    // Branch-free select so loops over slices vectorise.
    f32::from_bits(if x.is_nan() { quiet_nan } else { rounded })
}

simd_dispatch! {
    /// Encodes `values` as little-endian bfloat16 into `out` (2 bytes each; extra elements on
    /// either side are ignored), bit-identical to `half::bf16::from_f32`: round to nearest,
    /// ties to even, and a NaN keeps its sign and upper payload with the quiet bit set.
    pub fn encode_bf16<>(values: &[f32], out: &mut [u8]) => encode_bf16_impl
}

#[inline(always)]
fn encode_bf16_impl(values: &[f32], out: &mut [u8]) {
    let (pairs, _) = out.as_chunks_mut::<2>();
    for (o, &v) in pairs.iter_mut().zip(values) {
        *o = ((round_bf16(v).to_bits() >> 16) as u16).to_le_bytes();
    }
}

simd_dispatch! {
    /// Decodes little-endian bfloat16 `bytes` into `out` (a plain 16-bit shift, so every bit
    /// pattern, NaN payloads included, is kept exactly); extra elements on either side are
    /// ignored.
    pub fn decode_bf16<>(bytes: &[u8], out: &mut [f32]) => decode_bf16_impl
}

#[inline(always)]
fn decode_bf16_impl(bytes: &[u8], out: &mut [f32]) {
    let (pairs, _) = bytes.as_chunks::<2>();
    for (o, &b) in out.iter_mut().zip(pairs) {
        *o = widen_bf16(b);
    }
}

/// One stored little-endian bfloat16 element as its exact f32 value (a 16-bit shift).
#[inline(always)]
pub fn widen_bf16(x: [u8; 2]) -> f32 {
    f32::from_bits(u32::from(u16::from_le_bytes(x)) << 16)
}

/// Rounds to the nearest float16 (ties to even), returned as f32.
#[inline(always)]
pub fn round_f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// Sum of `f(x)` over a slice, accumulated in f64 and rounded to f32 (a stand-in for torch's
/// f32 cascade sum, which is accurate to a few ulp).
pub fn sum_f32(values: &[f32], f: impl Fn(f32) -> f32 + Sync) -> f32 {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    if values.len() <= CHUNK {
        return values.iter().map(|&v| f(v) as f64).sum::<f64>() as f32;
    }
    values
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| f(v) as f64).sum::<f64>())
        .collect::<Vec<f64>>()
        .into_iter()
        .sum::<f64>() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_half() {
        let samples = [
            0.0f32,
            -0.0,
            1.0,
            1.003_906_3,
            f32::from_bits(0x3F80_8000),
            f32::from_bits(0x3F81_8000),
            f32::from_bits(0x3F80_8001),
            3.4e38,
            f32::MAX,
            -f32::MAX,
            1e-40,
            f32::INFINITY,
            0.6,
        ];
        for s in samples {
            let ours = round_bf16(s).to_bits();
            let theirs = half::bf16::from_f32(s).to_f32().to_bits();
            assert_eq!(ours, theirs, "value {s:e}");
        }
        assert!(round_bf16(f32::NAN).is_nan());
        // ties to even
        assert_eq!(round_bf16(f32::from_bits(0x3F80_8000)).to_bits(), 0x3F80_0000);
        assert_eq!(round_bf16(f32::from_bits(0x3F81_8000)).to_bits(), 0x3F82_0000);
    }

    #[test]
    fn bf16_rounding_matches_half_exhaustively_on_a_sweep() {
        let mut bits = 0u32;
        while bits < 0xFFFF_F000 {
            let x = f32::from_bits(bits);
            if !x.is_nan() {
                assert_eq!(
                    round_bf16(x).to_bits(),
                    half::bf16::from_f32(x).to_f32().to_bits(),
                    "bits {bits:#x}"
                );
            }
            bits = bits.wrapping_add(0x0000_1235);
        }
    }

    #[test]
    fn bf16_encoding_matches_half() {
        let mut values = vec![
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7F80_0001),
            f32::from_bits(0xFFBF_FFFF),
        ];
        let mut bits = 0u32;
        while bits < 0xFFFF_F000 {
            values.push(f32::from_bits(bits));
            bits = bits.wrapping_add(0x0000_0F35);
        }
        values.extend((0..=0xFFFFu32).map(|h| f32::from_bits((h << 16) | 0x8000)));
        let mut ours = vec![0u8; values.len() * 2];
        encode_bf16(&values, &mut ours);
        for (v, o) in values.iter().zip(ours.chunks_exact(2)) {
            let theirs = half::bf16::from_f32(*v).to_bits();
            assert_eq!(u16::from_le_bytes([o[0], o[1]]), theirs, "bits {:#x}", v.to_bits());
        }
    }

    #[test]
    fn bf16_decoding_is_a_shift() {
        let bytes: Vec<u8> = (0..=0xFFFFu16).flat_map(|h| h.to_le_bytes()).collect();
        let mut out = vec![0.0f32; 0x10000];
        decode_bf16(&bytes, &mut out);
        for (h, v) in out.iter().enumerate() {
            assert_eq!(v.to_bits(), (h as u32) << 16);
        }
    }

    #[test]
    fn python_floats_round_through_f32() {
        assert_eq!(WorkDType::Bf16.from_f64(0.6), 0.601_562_5);
        assert_eq!(WorkDType::Bf16.from_f64(0.4), 0.400_390_63);
        assert_eq!(WorkDType::Bf16.from_f64(0.53), 0.531_25);
    }
}
