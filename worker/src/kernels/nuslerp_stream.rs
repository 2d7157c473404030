//! Streaming form of [`super::nuslerp`] for contiguous vectors: the same values, bit for bit,
//! read from the inputs piece by piece instead of decoding them into whole f32 tensors.
//!
//! * **One vector** (`nuslerp_flatten`, the default): the two task vectors' norms (each one
//!   serial accumulator over the whole tensor, [`NormStream`], the two in parallel), then the
//!   dot product of the normalised vectors (one [`TorchSumStream`] per torch summation part, the
//!   parts in parallel), then the interpolation piece by piece in parallel.
//! * **Rows** (a contiguous last dim): every row is its own vector, so one parallel pass over
//!   groups of whole rows interpolates each row as the whole kernel does.
//!
//! Vectors along dim 0 (`nuslerp_row_wise`) are strided and stay with the whole kernel.

use super::gta_stream::{ChunkSource, Sink};
use super::nuslerp::{Coefficients, ROW, Vectors, slerp_vector};
use super::precision::Precision;
use super::stream_ops::{
    Bf16Elems, add_base_rnd, emit, feed_norm, feed_norm_bf16, normalized_products_bf16_rnd, normalized_products_rnd,
    push_sum, stored_bf16, sub_rnd,
};
use super::torch_norm::NormStream;
use super::torch_sum::{DEFAULT_THREADS, torch_combine_rounded, torch_parts};
use super::torch_sum_partial::{PartialStream, SumPartial};
use super::torch_sum_stream::{SumKind, TorchSumStream};
use rayon::prelude::*;
use std::ops::Range;

/// Elements per piece read from every input (and largest piece handed to the sink).
pub const PIECE: usize = 1 << 16;

/// The inputs: the two models and the optional base (task vectors are `rnd(x - base)`).
pub struct Inputs<'a, E> {
    /// The first model.
    pub x0: &'a dyn ChunkSource<E>,
    /// The second model.
    pub x1: &'a dyn ChunkSource<E>,
    /// The base model, if any.
    pub base: Option<&'a dyn ChunkSource<E>>,
}

/// Per-thread scratch: both vectors and the base.
struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    base: Vec<f32>,
}

impl Scratch {
    fn new(len: usize) -> Self {
        Scratch {
            a: vec![0.0; len],
            b: vec![0.0; len],
            base: vec![0.0; len],
        }
    }
}

/// Reads one input's vector (`rnd(x - base)` with a base) over `range` into `out` (`base`:
/// scratch for the base's values).
fn read_vector<P: Precision, E>(
    x: &dyn ChunkSource<E>,
    base: Option<&dyn ChunkSource<E>>,
    range: Range<usize>,
    out: &mut [f32],
    base_vals: &mut [f32],
) -> Result<(), E> {
    let len = range.len();
    x.read(range.start, &mut out[..len])?;
    if let Some(b) = base {
        b.read(range.start, &mut base_vals[..len])?;
        sub_rnd::<P>(&mut out[..len], &base_vals[..len]);
    }
    Ok(())
}

impl<E> Inputs<'_, E> {
    /// Both models' stored bfloat16 elements over `range`, when there is no base and both are
    /// stored as exactly their working-dtype values: the loops then widen them themselves.
    fn stored(&self, range: &Range<usize>) -> Option<(Bf16Elems<'_>, Bf16Elems<'_>)> {
        match self.base {
            None => stored_bf16(self.x0, range).zip(stored_bf16(self.x1, range)),
            Some(_) => None,
        }
    }

    /// The normalised products `rnd(rnd(a / n0) rnd(b / n1))` over `range`, in `s.a`.
    fn products<P: Precision>(&self, range: Range<usize>, s: &mut Scratch, n0: f32, n1: f32) -> Result<(), E> {
        let len = range.len();
        if let Some((a, b)) = self.stored(&range) {
            normalized_products_bf16_rnd::<P>(&mut s.a[..len], a, b, n0, n1);
        } else {
            self.read::<P>(range, s)?;
            normalized_products_rnd::<P>(&mut s.a[..len], &s.b[..len], n0, n1);
        }
        Ok(())
    }

    /// Both vectors (and the base values) over `range`.
    fn read<P: Precision>(&self, range: Range<usize>, s: &mut Scratch) -> Result<(), E> {
        let len = range.len();
        self.x0.read(range.start, &mut s.a[..len])?;
        self.x1.read(range.start, &mut s.b[..len])?;
        if let Some(b) = self.base {
            // The base is read once for both task vectors.
            b.read(range.start, &mut s.base[..len])?;
            sub_rnd::<P>(&mut s.a[..len], &s.base[..len]);
            sub_rnd::<P>(&mut s.b[..len], &s.base[..len]);
        }
        Ok(())
    }
}

/// `rnd(base + v)` where there is a base.
fn add_base<P: Precision>(v: &mut [f32], base: Option<&[f32]>) {
    if let Some(b) = base {
        add_base_rnd::<P>(v, b);
    }
}

/// nuslerp exactly as [`super::nuslerp::merge`] for [`Vectors::Flat`] and [`Vectors::Rows`]
/// (`n` elements per input, values in the working dtype `P`), calling `sink(start, values)`
/// for every piece of the result, in any order and from any thread. Returns `false` (and
/// writes nothing) for [`Vectors::Columns`], which the caller runs whole.
pub fn merge_streamed<P: Precision, E: Send>(
    n: usize,
    inputs: &Inputs<'_, E>,
    t: f64,
    vectors: Vectors,
    sink: &Sink<'_, E>,
) -> Result<bool, E> {
    match vectors {
        Vectors::Columns { .. } => return Ok(false),
        _ if n == 0 => {}
        Vectors::Flat => {
            let c = flat_cosine::<P, E>(n, inputs)?;
            apply::<P, E>(n, inputs, Coefficients::of::<P>(c, t), sink)?;
        }
        Vectors::Rows(row) => rows::<P, E>(n, row.max(1), inputs, t, sink)?,
    }
    Ok(true)
}

/// The serial norm of one input's vector over the whole tensor, rounded to `P`, floored.
fn norm<P: Precision, E>(n: usize, x: &dyn ChunkSource<E>, base: Option<&dyn ChunkSource<E>>) -> Result<f32, E> {
    let mut s = Scratch::new(PIECE.min(n));
    let mut acc = NormStream::new(n);
    for start in (0..n).step_by(PIECE) {
        let range = start..(start + PIECE).min(n);
        let len = range.len();
        if let (None, Some(xs)) = (base, stored_bf16(x, &range)) {
            feed_norm_bf16(&mut acc, xs);
            continue;
        }
        read_vector::<P, E>(x, base, range, &mut s.a, &mut s.base)?;
        feed_norm(&mut acc, &s.a[..len]);
    }
    Ok(P::rnd(acc.finish()).max(P::rnd(1e-7)))
}

/// The clamped cosine of the two vectors of the whole tensor.
fn flat_cosine<P: Precision, E: Send>(n: usize, inputs: &Inputs<'_, E>) -> Result<f32, E> {
    let (n0, n1) = rayon::join(
        || norm::<P, E>(n, inputs.x0, inputs.base),
        || norm::<P, E>(n, inputs.x1, inputs.base),
    );
    let (n0, n1) = (n0?, n1?);
    let kind = SumKind::of(P::DTYPE);
    let partials = torch_parts(n, DEFAULT_THREADS)
        .into_par_iter()
        .map(|part| {
            let mut s = Scratch::new(PIECE.min(part.len()));
            let mut dot = TorchSumStream::new(kind, part.len());
            for start in part.clone().step_by(PIECE) {
                let range = start..(start + PIECE).min(part.end);
                let len = range.len();
                inputs.products::<P>(range, &mut s, n0, n1)?;
                push_sum(&mut dot, &s.a[..len]);
            }
            Ok(dot.finish())
        })
        .collect::<Result<Vec<f32>, E>>()?;
    Ok(torch_combine_rounded::<P>(n, &partials, DEFAULT_THREADS).clamp(-1.0, 1.0))
}

/// Feeds one link of a chain (see [`crate::chunk`]; `n` elements read from chunk-relative
/// sources) to the norms of the two vectors, in order.
pub fn link_norms<P: Precision, E>(n: usize, inputs: &Inputs<'_, E>, norms: &mut [NormStream; 2]) -> Result<(), E> {
    let mut s = Scratch::new(PIECE.min(n));
    for start in (0..n).step_by(PIECE) {
        let range = start..(start + PIECE).min(n);
        let len = range.len();
        inputs.read::<P>(range, &mut s)?;
        feed_norm(&mut norms[0], &s.a[..len]);
        feed_norm(&mut norms[1], &s.b[..len]);
    }
    Ok(())
}

/// The norm a finished chain gives, as [`merge_streamed`] takes it: rounded to `P`, floored.
pub fn finished_norm<P: Precision>(norm: NormStream) -> f32 {
    P::rnd(norm.finish()).max(P::rnd(1e-7))
}

/// The cascade partial of the normalised vectors' dot over `range` (chunk-relative sources)
/// of the torch part `part`, given both norms. The inner error is a misaligned range.
pub fn dot_partial<P: Precision, E>(
    part: Range<usize>,
    range: Range<usize>,
    inputs: &Inputs<'_, E>,
    n0: f32,
    n1: f32,
) -> Result<Result<SumPartial, String>, E> {
    let n = range.len();
    let mut dot = match PartialStream::new(SumKind::of(P::DTYPE), part.len(), range.start - part.start, n) {
        Ok(d) => d,
        Err(e) => return Ok(Err(e)),
    };
    let mut s = Scratch::new(PIECE.min(n));
    for start in (0..n).step_by(PIECE) {
        let piece = start..(start + PIECE).min(n);
        let len = piece.len();
        inputs.products::<P>(piece, &mut s, n0, n1)?;
        dot.feed(&s.a[..len]);
    }
    Ok(dot.finish())
}

/// The cosine from every torch part's dot value over `n` elements, as the whole kernel clamps it.
pub fn cosine<P: Precision>(n: usize, part_dots: &[f32]) -> f32 {
    torch_combine_rounded::<P>(n, part_dots, DEFAULT_THREADS).clamp(-1.0, 1.0)
}

/// The interpolation of one vector with known coefficients, piece by piece in parallel (also
/// one apply chunk of a chunked tensor).
pub(crate) fn apply<P: Precision, E: Send>(
    n: usize,
    inputs: &Inputs<'_, E>,
    coef: Coefficients,
    sink: &Sink<'_, E>,
) -> Result<(), E> {
    (0..n.div_ceil(PIECE)).into_par_iter().try_for_each_init(
        || Scratch::new(PIECE.min(n)),
        |s, i| {
            let range = i * PIECE..((i + 1) * PIECE).min(n);
            let len = range.len();
            if let Some((a, b)) = inputs.stored(&range) {
                coef.apply_bf16::<P>(&mut s.a[..len], a, b);
            } else {
                inputs.read::<P>(range.clone(), s)?;
                coef.apply::<P>(&mut s.a[..len], &s.b[..len]);
                add_base::<P>(&mut s.a[..len], inputs.base.map(|_| &s.base[..len]));
            }
            sink(range.start, &s.a[..len])
        },
    )
}

/// Contiguous rows of `row` elements: groups of whole rows in parallel.
fn rows<P: Precision, E: Send>(
    n: usize,
    row: usize,
    inputs: &Inputs<'_, E>,
    t: f64,
    sink: &Sink<'_, E>,
) -> Result<(), E> {
    let group = (PIECE / row).max(1) * row;
    (0..n.div_ceil(group)).into_par_iter().try_for_each_init(
        || Scratch::new(group.min(n)),
        |s, g| {
            let range = g * group..((g + 1) * group).min(n);
            let len = range.len();
            inputs.read::<P>(range.clone(), s)?;
            for r in (0..len).step_by(row) {
                let span = r..(r + row).min(len);
                slerp_vector::<P>(&mut s.a[span.clone()], &s.b[span], t, &ROW);
            }
            add_base::<P>(&mut s.a[..len], inputs.base.map(|_| &s.base[..len]));
            emit(sink, range.start, &s.a[..len], PIECE)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::nuslerp::merge;
    use crate::kernels::precision::{Bf16, F16, F32};
    use std::sync::Mutex;

    use crate::kernels::stream_ops::VecSource as Src;

    use crate::kernels::stream_ops::test_values as values;

    fn check<P: Precision>(n: usize, vectors: Vectors, with_base: bool, t: f64) {
        let base = values::<P>(n, 7, 1.0, None);
        let around = with_base.then_some(&base[..]);
        let x0 = values::<P>(n, 11 + n as u64, 0.02, around);
        let x1 = values::<P>(n, 13 + n as u64, 0.02, around);
        let mut want = x0.clone();
        let mut w1 = x1.clone();
        merge::<P>(&mut want, &mut w1, around, t, vectors);

        let got = Mutex::new(vec![f32::NAN; n]);
        let sink = |start: usize, v: &[f32]| -> Result<(), String> {
            assert!(v.len() <= PIECE);
            got.lock().unwrap()[start..start + v.len()].copy_from_slice(v);
            Ok(())
        };
        let (s0, s1, sb) = (Src(x0), Src(x1), Src(base));
        let inputs = Inputs {
            x0: &s0,
            x1: &s1,
            base: with_base.then_some(&sb as &dyn ChunkSource<String>),
        };
        assert!(merge_streamed::<P, String>(n, &inputs, t, vectors, &sink).unwrap());
        let got = got.into_inner().unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(
            bits(&got) == bits(&want),
            "{:?} n = {n}, {vectors:?}, base {with_base}",
            P::DTYPE
        );
    }

    #[test]
    fn streamed_equals_the_whole_kernel() {
        for n in [1, 37, 4099, 3 * PIECE + 77, 300_007] {
            for with_base in [false, true] {
                check::<F32>(n, Vectors::Flat, with_base, 0.6);
                check::<Bf16>(n, Vectors::Flat, with_base, 0.6);
                check::<F16>(n, Vectors::Flat, with_base, 0.25);
            }
        }
        for (n, row) in [(4096 * 33, 4096), (3 * PIECE + 10, PIECE + 5), (999, 37)] {
            check::<F32>(n, Vectors::Rows(row), true, 0.6);
            check::<Bf16>(n, Vectors::Rows(row), false, 0.4);
            check::<F16>(n, Vectors::Rows(row), true, 0.5);
        }
    }

    /// Stored bf16 models without a base: the norms, the dot and the interpolation widen the
    /// stored elements themselves (no `read` at all); same bits as
    /// the whole kernel in bf16 and in f32 (bf16 inputs promoted), spherical and collinear.
    fn check_stored<P: Precision>(n: usize, collinear: bool) {
        use crate::kernels::stream_ops::StoredBf16;
        use std::sync::atomic::Ordering::Relaxed;
        let x0 = values::<Bf16>(n, 17 + n as u64, 0.02, None);
        let x1 = if collinear {
            x0.clone()
        } else {
            values::<Bf16>(n, 19 + n as u64, 0.02, None)
        };
        let mut want = x0.clone();
        let mut w1 = x1.clone();
        merge::<P>(&mut want, &mut w1, None, 0.4, Vectors::Flat);

        let got = Mutex::new(vec![f32::NAN; n]);
        let sink = |start: usize, v: &[f32]| -> Result<(), String> {
            got.lock().unwrap()[start..start + v.len()].copy_from_slice(v);
            Ok(())
        };
        let (s0, s1) = (StoredBf16::new(x0), StoredBf16::new(x1));
        let inputs = Inputs {
            x0: &s0,
            x1: &s1,
            base: None,
        };
        assert!(merge_streamed::<P, String>(n, &inputs, 0.4, Vectors::Flat, &sink).unwrap());
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let what = format!("{:?} n = {n}, collinear {collinear}", P::DTYPE);
        assert!(bits(&got.into_inner().unwrap()) == bits(&want), "{what}");
        let reads = s0.reads.load(Relaxed) + s1.reads.load(Relaxed);
        assert_eq!(reads, 0, "{what}: nothing is decoded into buffers");
    }

    #[test]
    fn stored_bf16_models_equal_the_whole_kernel() {
        for n in [1, 37, 3 * PIECE + 77, 300_007] {
            for collinear in [false, true] {
                check_stored::<Bf16>(n, collinear);
                check_stored::<F32>(n, collinear);
            }
        }
    }

    #[test]
    fn columns_are_left_to_the_whole_kernel() {
        let s = Src(vec![1.0; 6]);
        let inputs = Inputs {
            x0: &s,
            x1: &s,
            base: None,
        };
        let sink = |_: usize, _: &[f32]| -> Result<(), String> { panic!("nothing is written") };
        let columns = Vectors::Columns { len: 2, stride: 3 };
        assert!(!merge_streamed::<F32, String>(6, &inputs, 0.5, columns, &sink).unwrap());
    }

    #[test]
    fn collinear_vectors_take_the_linear_branch() {
        assert!(matches!(
            Coefficients::of::<F32>(1.0, 0.3),
            Coefficients::Collinear { .. }
        ));
        assert!(matches!(
            Coefficients::of::<Bf16>(-1.0, 0.3),
            Coefficients::Collinear { .. }
        ));
        assert!(matches!(
            Coefficients::of::<F32>(0.5, 0.3),
            Coefficients::Spherical { .. }
        ));
    }
}
