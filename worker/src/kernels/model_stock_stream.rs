//! Streaming form of [`super::model_stock`]: the same values, bit for bit, read from the inputs
//! piece by piece instead of decoding every input into a whole f32 tensor.
//!
//! * **One vector** (`filter_wise: false`): one serial statistics pass reads every input once
//!   and feeds each task vector's norm ([`NormStream`], torch's single serial accumulator over
//!   the whole tensor) and every pair's dot product ([`TorchSumStream`] per torch summation
//!   part); an apply pass then writes
//!   `rnd(rnd(t avg) + rnd(rnd(1 - t) w0))` piece by piece, in parallel.
//! * **Per row** (`filter_wise: true`): every row's ratio depends on that row only, so one
//!   parallel pass over groups of whole rows computes each row's ratio and output.
//!
//! Memory is a few pieces per thread, whatever the tensor size. Inputs stored as bfloat16
//! (exactly their working-dtype values) are widened inside the statistics' subtraction and, for
//! two models, inside the interpolation, instead of being decoded into buffers first: the same
//! bits with less memory traffic.

use super::gta_stream::{ChunkSource, Sink};
use super::model_stock::{ModelStockError, ratio, ratio_from};
use super::model_stock_chain::pairs;
use super::precision::Precision;
use super::stream_ops::{
    add_rnd, div_rnd, emit, feed_norm, lerp_pair_bf16_rnd, lerp_pair_rnd, lerp_rnd, mul_rnd, push_sum, stored_bf16,
    sub_bf16_rnd, sub_rnd,
};
use super::torch_norm::NormStream;
use super::torch_sum::{DEFAULT_THREADS, torch_combine_rounded, torch_parts};
use super::torch_sum_stream::{SumKind, TorchSumStream};
use rayon::prelude::*;

/// Elements per piece read from every input (and largest piece handed to the sink).
pub const PIECE: usize = 1 << 16;

/// Per-thread scratch: the base, every fine-tuned input, the average and a product row.
pub(super) struct Scratch {
    base: Vec<f32>,
    pub(super) others: Vec<Vec<f32>>,
    avg: Vec<f32>,
    pub(super) prod: Vec<f32>,
}

impl Scratch {
    pub(super) fn new(models: usize, len: usize) -> Self {
        Scratch {
            base: vec![0.0; len],
            others: vec![vec![0.0; len]; models],
            avg: vec![0.0; len],
            prod: vec![0.0; len],
        }
    }

    /// Reads elements `start .. start + len` of every input.
    pub(super) fn read<E>(
        &mut self,
        start: usize,
        len: usize,
        base: &dyn ChunkSource<E>,
        others: &[&dyn ChunkSource<E>],
    ) -> Result<(), E> {
        base.read(start, &mut self.base[..len])?;
        for (o, src) in self.others.iter_mut().zip(others) {
            src.read(start, &mut o[..len])?;
        }
        Ok(())
    }

    /// `avg = rnd(rnd(w1 + w2 + ...) / N)` over the first `len` elements (left to right).
    fn average<P: Precision>(&mut self, len: usize) {
        let n = self.others.len() as f32;
        let avg = &mut self.avg[..len];
        avg.copy_from_slice(&self.others[0][..len]);
        for o in &self.others[1..] {
            add_rnd::<P>(avg, &o[..len]);
        }
        div_rnd::<P>(avg, n);
    }

    /// [`Self::average`] then [`Self::interpolate`] over the first `len` elements, in one loop
    /// for two models.
    fn average_and_interpolate<P: Precision>(&mut self, len: usize, t: f32) {
        if let [a, b] = &self.others[..] {
            lerp_pair_rnd::<P>(&mut self.base[..len], &a[..len], &b[..len], t, P::rnd(1.0 - t));
        } else {
            self.average::<P>(len);
            self.interpolate::<P>(0..len, t);
        }
    }

    /// One piece of the statistics of one vector: reads elements `start .. start + len`,
    /// turns them into task vectors, continues each one's norm in `norms` and hands every
    /// pair's products `rnd(d_i d_j)` to `dot(pair index, products)`, pairs in `pairs` order.
    pub(super) fn statistics<P: Precision, E>(
        &mut self,
        start: usize,
        len: usize,
        (base, others): (&dyn ChunkSource<E>, &[&dyn ChunkSource<E>]),
        pairs: &[(usize, usize)],
        norms: &mut [NormStream],
        mut dot: impl FnMut(usize, &[f32]),
    ) -> Result<(), E> {
        self.read_deltas::<P, E>(start, len, base, others)?;
        for (norm, d) in norms.iter_mut().zip(&self.others) {
            feed_norm(norm, &d[..len]);
        }
        for (q, &(i, j)) in pairs.iter().enumerate() {
            mul_rnd::<P>(&mut self.prod[..len], &self.others[i][..len], &self.others[j][..len]);
            dot(q, &self.prod[..len]);
        }
        Ok(())
    }

    /// Reads elements `start .. start + len` of every input and turns the fine-tuned ones into
    /// task vectors (the base is not kept). Stored bfloat16 inputs are widened inside the
    /// subtraction, so the inputs are not decoded into buffers first.
    fn read_deltas<P: Precision, E>(
        &mut self,
        start: usize,
        len: usize,
        base: &dyn ChunkSource<E>,
        others: &[&dyn ChunkSource<E>],
    ) -> Result<(), E> {
        let range = start..start + len;
        if let Some(b) = stored_bf16(base, &range) {
            let xs: Option<Vec<_>> = others.iter().map(|o| stored_bf16(*o, &range)).collect();
            if let Some(xs) = xs {
                for (d, x) in self.others.iter_mut().zip(xs) {
                    sub_bf16_rnd::<P>(&mut d[..len], x, b);
                }
                return Ok(());
            }
        }
        self.read(start, len, base, others)?;
        self.deltas::<P>(len);
        Ok(())
    }

    /// Turns the first `len` elements of every fine-tuned input into task vectors.
    pub(super) fn deltas<P: Precision>(&mut self, len: usize) {
        for o in &mut self.others {
            sub_rnd::<P>(&mut o[..len], &self.base[..len]);
        }
    }

    /// `base = rnd(rnd(t avg) + rnd(rnd(1 - t) base))` over `range` of the first elements.
    fn interpolate<P: Precision>(&mut self, range: std::ops::Range<usize>, t: f32) {
        let keep = P::rnd(1.0 - t);
        lerp_rnd::<P>(&mut self.base[range.clone()], &self.avg[range], t, keep);
    }
}

/// model_stock of `base` and the fine-tuned `others` (`n` elements each, values in the working
/// dtype `P`) exactly as [`super::model_stock::merge`], calling `sink(start, values)` for every
/// piece of the result, in any order and from any thread. `row` is the length of the last dim
/// (used only with `filter_wise`).
pub fn merge_streamed<P: Precision, E: Send>(
    n: usize,
    row: usize,
    filter_wise: bool,
    base: &dyn ChunkSource<E>,
    others: &[&dyn ChunkSource<E>],
    sink: &Sink<'_, E>,
) -> Result<Result<(), ModelStockError>, E> {
    if others.len() < 2 {
        return Ok(Err(ModelStockError::TooFew(others.len())));
    }
    if n == 0 {
        return Ok(Ok(()));
    }
    if filter_wise && row > 0 {
        rows_pass::<P, E>(n, row, base, others, sink)?;
    } else {
        let t = flat_ratio::<P, E>(n, base, others)?;
        apply_pass::<P, E>(n, t, base, others, sink)?;
    }
    Ok(Ok(()))
}

/// The statistics pass of one vector: the ratio `t` of the whole tensor.
///
/// One serial pass reads every input once: each task vector's norm is one serial accumulator
/// over the whole tensor anyway, and each torch part's dot sums are serial, so the pass feeds
/// the norms and the current part's dots from the same pieces. (Parallel passes per norm and
/// per part would read the inputs several times over; the runtime runs other tensors beside
/// this one instead.)
fn flat_ratio<P: Precision, E: Send>(
    n: usize,
    base: &dyn ChunkSource<E>,
    others: &[&dyn ChunkSource<E>],
) -> Result<f32, E> {
    let kind = SumKind::of(P::DTYPE);
    let pairs = pairs(others.len());
    let mut norms: Vec<NormStream> = others.iter().map(|_| NormStream::new(n)).collect();
    let mut s = Scratch::new(others.len(), PIECE.min(n));
    let mut partials: Vec<Vec<f32>> = Vec::new();
    for part in torch_parts(n, DEFAULT_THREADS) {
        let mut dots: Vec<TorchSumStream> = pairs.iter().map(|_| TorchSumStream::new(kind, part.len())).collect();
        for start in part.clone().step_by(PIECE) {
            let len = PIECE.min(part.end - start);
            s.statistics::<P, E>(start, len, (base, others), &pairs, &mut norms, |q, prod| {
                push_sum(&mut dots[q], prod)
            })?;
        }
        partials.push(dots.into_iter().map(TorchSumStream::finish).collect());
    }
    let norms: Vec<f32> = norms.into_iter().map(|x| P::rnd(x.finish())).collect();
    let dots: Vec<f32> = (0..pairs.len())
        .map(|k| {
            let of_pair: Vec<f32> = partials.iter().map(|p| p[k]).collect();
            torch_combine_rounded::<P>(n, &of_pair, DEFAULT_THREADS)
        })
        .collect();
    Ok(ratio_from::<P>(&norms, &dots, false))
}

/// The apply pass of one vector: the output at ratio `t`, piece by piece in parallel (also
/// one apply chunk of a chunked tensor, `n` its length).
pub(crate) fn apply_pass<P: Precision, E: Send>(
    n: usize,
    t: f32,
    base: &dyn ChunkSource<E>,
    others: &[&dyn ChunkSource<E>],
    sink: &Sink<'_, E>,
) -> Result<(), E> {
    (0..n.div_ceil(PIECE)).into_par_iter().try_for_each_init(
        || Scratch::new(others.len(), PIECE.min(n)),
        |s, i| {
            let (start, len) = (i * PIECE, PIECE.min(n - i * PIECE));
            let range = start..start + len;
            let raw = match others {
                [a, b] => stored_bf16(base, &range)
                    .zip(stored_bf16(*a, &range))
                    .zip(stored_bf16(*b, &range)),
                _ => None,
            };
            if let Some(((w, a), b)) = raw {
                lerp_pair_bf16_rnd::<P>(&mut s.base[..len], w, a, b, t, P::rnd(1.0 - t));
            } else {
                s.read(start, len, base, others)?;
                s.average_and_interpolate::<P>(len, t);
            }
            sink(start, &s.base[..len])
        },
    )
}

/// `filter_wise`: groups of whole rows in parallel, each row with its own ratio.
fn rows_pass<P: Precision, E: Send>(
    n: usize,
    row: usize,
    base: &dyn ChunkSource<E>,
    others: &[&dyn ChunkSource<E>],
    sink: &Sink<'_, E>,
) -> Result<(), E> {
    let group = (PIECE / row).max(1) * row;
    (0..n.div_ceil(group)).into_par_iter().try_for_each_init(
        || Scratch::new(others.len(), group.min(n)),
        |s, g| {
            let (start, len) = (g * group, group.min(n - g * group));
            s.read(start, len, base, others)?;
            s.average::<P>(len);
            s.deltas::<P>(len);
            for r in (0..len).step_by(row) {
                let span = r..(r + row).min(len);
                let d: Vec<&[f32]> = s.others.iter().map(|o| &o[span.clone()]).collect();
                let t = ratio::<P>(&d, 1, true);
                s.interpolate::<P>(span, t);
            }
            emit(sink, start, &s.base[..len], PIECE)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::model_stock::merge;
    use crate::kernels::precision::{Bf16, F16, F32};
    use std::sync::Mutex;

    use crate::kernels::stream_ops::VecSource as Src;

    /// A base and `models` fine-tunes of `n` values of precision `P` (small task vectors, so
    /// f16 sums stay finite), correlated so the ratio is neither 0 nor 1.
    fn inputs<P: Precision>(n: usize, models: usize, seed: u64) -> (Vec<f32>, Vec<Vec<f32>>) {
        let mut z = seed | 1;
        let mut next = || {
            z ^= z << 13;
            z ^= z >> 7;
            z ^= z << 17;
            (z >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let base: Vec<f32> = (0..n).map(|_| P::rnd(next())).collect();
        let shared: Vec<f32> = (0..n).map(|_| next() * 0.01).collect();
        let others = (0..models)
            .map(|_| {
                base.iter()
                    .zip(&shared)
                    .map(|(&b, &s)| P::rnd(b + s + next() * 0.01))
                    .collect()
            })
            .collect();
        (base, others)
    }

    /// The whole kernel's result, as bits.
    fn whole<P: Precision>(base: &[f32], others: &[Vec<f32>], row: usize, filter_wise: bool) -> Vec<u32> {
        let mut want = base.to_vec();
        let mut scratch = others.to_vec();
        let mut refs: Vec<&mut [f32]> = scratch.iter_mut().map(|o| &mut o[..]).collect();
        merge::<P>(&mut want, &mut refs, row, filter_wise).unwrap();
        want.iter().map(|x| x.to_bits()).collect()
    }

    /// [`merge_streamed`]'s result over these sources, as bits.
    fn streamed<P: Precision, S: ChunkSource<String>>(
        n: usize,
        row: usize,
        filter_wise: bool,
        b: &S,
        os: &[S],
    ) -> Vec<u32> {
        let got = Mutex::new(vec![f32::NAN; n]);
        let sink = |start: usize, v: &[f32]| -> Result<(), String> {
            assert!(v.len() <= PIECE);
            got.lock().unwrap()[start..start + v.len()].copy_from_slice(v);
            Ok(())
        };
        let refs: Vec<&dyn ChunkSource<String>> = os.iter().map(|o| o as &dyn ChunkSource<String>).collect();
        merge_streamed::<P, String>(n, row, filter_wise, b, &refs, &sink)
            .unwrap()
            .unwrap();
        got.into_inner().unwrap().iter().map(|x| x.to_bits()).collect()
    }

    fn check<P: Precision>(n: usize, models: usize, row: usize, filter_wise: bool) {
        let (base, others) = inputs::<P>(n, models, n as u64 ^ 0x5EED);
        let want = whole::<P>(&base, &others, row, filter_wise);
        let got = streamed::<P, Src>(
            n,
            row,
            filter_wise,
            &Src(base),
            &others.into_iter().map(Src).collect::<Vec<_>>(),
        );
        assert!(
            got == want,
            "{:?} n = {n}, {models} models, row {row}, filter_wise {filter_wise}",
            P::DTYPE
        );
    }

    #[test]
    fn streamed_equals_the_whole_kernel() {
        // Below and above torch's two-thread split, pieces that do not divide the tensor.
        for n in [1, 37, 4099, 3 * PIECE + 77, 300_007] {
            for models in [2, 3] {
                check::<F32>(n, models, n, false);
                check::<Bf16>(n, models, n, false);
                check::<F16>(n, models, n, false);
            }
        }
    }

    /// Stored bf16 inputs: the statistics widen them inside the subtraction and, for two
    /// models, the apply pass inside the interpolation, without a single `read`; same bits as
    /// the whole kernel in bf16 and in f32 (bf16 inputs promoted).
    fn check_stored<P: Precision>(n: usize, models: usize) {
        use crate::kernels::stream_ops::StoredBf16;
        use std::sync::atomic::Ordering::Relaxed;
        let (base, others) = inputs::<Bf16>(n, models, n as u64 ^ 0xB16);
        let want = whole::<P>(&base, &others, n, false);
        let b = StoredBf16::new(base);
        let os: Vec<StoredBf16> = others.into_iter().map(StoredBf16::new).collect();
        let got = streamed::<P, StoredBf16>(n, n, false, &b, &os);
        assert!(got == want, "{:?} n = {n}, {models} models", P::DTYPE);
        let reads = b.reads.load(Relaxed) + os.iter().map(|o| o.reads.load(Relaxed)).sum::<usize>();
        if models == 2 {
            assert_eq!(reads, 0, "two stored bf16 models are never decoded into buffers");
        } else {
            // More models: the apply pass reads (each piece of every input once), the
            // statistics do not.
            assert_eq!(reads, (models + 1) * n.div_ceil(PIECE));
        }
    }

    #[test]
    fn stored_bf16_inputs_equal_the_whole_kernel() {
        for n in [1, 37, 3 * PIECE + 77, 300_007] {
            for models in [2, 3] {
                check_stored::<Bf16>(n, models);
                check_stored::<F32>(n, models);
            }
        }
    }

    #[test]
    fn filter_wise_streamed_equals_the_whole_kernel() {
        // Rows shorter than a piece, a row longer than a piece, a short last group.
        for (n, row) in [(4096 * 33, 4096), (3 * PIECE + 10, PIECE + 5), (999, 37)] {
            check::<F32>(n, 2, row, true);
            check::<Bf16>(n, 3, row, true);
            check::<F16>(n, 2, row, true);
        }
    }

    #[test]
    fn too_few_models_is_an_error() {
        let b = Src(vec![0.0; 4]);
        let o = Src(vec![1.0; 4]);
        let sink = |_: usize, _: &[f32]| -> Result<(), String> { Ok(()) };
        let got = merge_streamed::<F32, String>(4, 4, false, &b, &[&o], &sink).unwrap();
        assert_eq!(got, Err(ModelStockError::TooFew(1)));
    }
}
