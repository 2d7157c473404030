//! Chunk tasks: one output tensor split into element ranges that run on any worker, in any
//! order, and give exactly the bytes of the whole-tensor kernel.
//!
//! A method is either elementwise (linear, passthrough, task arithmetic, DARE without rescale:
//! every chunk is independent) or needs whole-tensor statistics first. Those run a pipeline of
//! statistics passes: every chunk of pass `k` returns a small [`ChunkStats`]; [`combine()`]
//! folds them, in chunk order and in exactly the order torch reduces, into the
//! [`CombinedStats`] every chunk of the next pass (or of apply) receives.
//!
//! | method | passes | statistics partition | apply partition |
//! |---|---|---|---|
//! | elementwise | 0 | none | any ranges |
//! | SLERP | 2: block norms, block dots | multiples of torch's 2^20-element blocks | any ranges |
//! | DARE with rescale | 1: L1 cascade partials of delta and masked delta | inside one of torch's thread parts, at its cascade granule ([`torch_sum_partial::granule`]) | any ranges |
//! | TIES (magnitude) | 2: high then low 16-bit histograms of `|delta|` keys | any ranges | the statistics partition (ties are kept lowest index first, counted per chunk) |
//! | TIES with `rescale: true` | 3: the two histograms, then L1 cascade partials of `|delta|` and of the kept `|delta|` | as DARE with rescale | the statistics partition |
//! | sce | 3: high histogram of the variance keys and zero count, low histogram (the top-`K` variances), f32 cascade partials of the selected task vectors' squares | inside torch's summation parts of the mean squares (one part unless there is one model) | the statistics partition |
//! | ramplus_tl | 1: each model's counts of shared and unique active elements | any ranges | any ranges |
//! | breadcrumbs (with or without rescale) | as TIES: the high histogram serves both cuts of its window of ranks, pass 2 returns a low histogram per cut ([`crate::kernels::outlier_select`]) | as TIES | the statistics partition |
//! | DELLA without rescale | 0 | none | whole ranking blocks (rows along dim 1) |
//! | model_stock (`filter_wise: false`) | one per link: a *chain* of one-chunk passes in element order, each continuing the task vectors' serial norms and returning the cascade partials of its pair dots | as DARE with rescale (the links) | any ranges |
//! | nuslerp (`nuslerp_flatten`, the default) | the links of a chain carrying the two vectors' serial norms, then one pass of cascade partials of the normalised dot | as DARE with rescale | any ranges |
//! | multislerp | a chain of the task vectors' serial norms, a chain of the norm of the unit vectors' weighted mean, one pass of the dots' cascade partials (one summation part), a chain of the tangent's norm | aligned to the cascade granule of the one part | any ranges |
//! | arcee_fusion (rank >= 2) | 2: high histogram of the importances' keys (those sampled, above 10^6 elements), a low histogram per quantile | whole rows of the last dim | whole rows |
//! | karcher (`max_iter` <= 100) | chains of one-chunk links: the inputs' norms, the mean's norm, then per iteration the dots (MKL's `sdot` or an f64 sum, carried), the tangent's norm and the updated mean's norm; stages after convergence are skipped | any ranges (links) | any ranges |
//! | nuslerp with `nuslerp_row_wise` (vectors along dim 0) | a chain of row-range links carrying every column's sums of squares, then one carrying every column's dot cascade | whole rows (links) | whole rows |
//! | `filter_wise` model_stock, nuslerp over contiguous rows | 0 | none | whole rows of the last dim |
//! | DELLA with rescale | 1: L1 cascade partials of delta and masked delta (each chunk ranks the whole blocks its range touches) | as DARE with rescale | whole ranking blocks |
//!
//! Vocabulary-aligned inputs (row runs) split like stored ones: a chunk builds only the rows
//! its element range touches (`execute/aligned.rs`), padding means streamed over the rows
//! before them, so chunks need no alignment to rows.
//!
//! Not split (they run as one whole-tensor task, so the bytes are exact but `--memory-limit`
//! cannot shrink them): DELLA on tensors of rank < 2 or with ranking blocks longer than a chunk
//! (or 2^22 elements), and the methods whose result needs whole-tensor statistics that no
//! statistics pass computes yet: karcher with more than 100 iterations, arcee_fusion of 1-D
//! tensors (one row), and tensors whose rows are longer than a chunk where a method needs
//! whole rows.

mod columns_combine;
pub mod combine;
pub(crate) mod karcher_combine;
mod memory;
pub(crate) mod multislerp_combine;
mod sce_combine;
pub(crate) mod select;

use crate::error::KernelError;
use crate::execute::{boolean, float};
use crate::kernels::della::{self, RankRows};
use crate::kernels::gta::GtaVariant;
use crate::kernels::nuslerp::Vectors;
use crate::kernels::sce;
use crate::kernels::slerp::TORCH_CHUNK;
use crate::kernels::sparsify::Sparsifier;
use crate::kernels::torch_sum::{DEFAULT_THREADS, torch_parts};
use crate::kernels::torch_sum_partial;
use crate::kernels::torch_sum_stream::SumKind;
use crate::methods::{self, MethodKind};
use shardmerge_proto::v1::{DType, MergeTask};
use std::ops::Range;

pub use combine::combine;
pub use memory::{
    ALIGNED_MEAN_SCRATCH, STREAM_SCRATCH, aligned_memory, chunk_holds_whole_f32, f32_scratch, task_memory,
    whole_task_memory, whole_task_streams,
};
pub use shardmerge_proto::v1::{ChunkInfo, ChunkStats, CombinedStats, InputCombined, InputStats};

/// How a tensor's chunks are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipeline {
    /// Every chunk is independent: apply only.
    Elementwise,
    /// SLERP: pass 1 block norms, pass 2 block dots, then interpolation.
    Slerp,
    /// DARE with rescale: pass 1 L1 cascade partials, then the masked merge.
    RandomRescale,
    /// TIES and breadcrumbs: pass 1 high histogram, pass 2 low histogram(s), then the masked
    /// merge.
    Magnitude,
    /// TIES and breadcrumbs with rescale: the histograms, pass 3 L1 cascade partials of
    /// `|delta|` before and after the mask, then the masked, rescaled merge.
    MagnitudeRescale,
    /// DELLA without rescale: apply only, in ranges of whole ranking blocks (each chunk ranks
    /// its own rows and draws from its own offset).
    Ranked,
    /// DELLA with rescale: pass 1 L1 cascade partials of delta and masked delta (a chunk ranks
    /// the whole blocks around its range), then the masked merge over whole ranking blocks.
    RankedRescale,
    /// model_stock (one vector): a chain of statistics passes of one chunk each, in element
    /// order, carrying torch's serial norm accumulators and collecting the dot products'
    /// cascade partials; then apply with the ratio. (As many passes as links.)
    Chain,
    /// nuslerp of one vector (`nuslerp_flatten`, the default): a chain carrying the two
    /// vectors' serial norms, then one pass of cascade partials of the normalised vectors'
    /// dot, then apply with the interpolation coefficients.
    NuslerpChain,
    /// multislerp: a chain carrying the task vectors' serial norms, a chain carrying the norm
    /// of the unit vectors' weighted mean, one pass of cascade partials of the dots with the
    /// mean's direction, a chain carrying the tangent's norm, then apply (`3 * links + 1`
    /// passes, see [`crate::kernels::multislerp_stream`]).
    Multislerp,
    /// karcher: chains of one-chunk links, one per statistic (the inputs' norms, the mean's
    /// norm, then per iteration the dots, the tangent's norm and the updated mean's norm),
    /// each link replaying the mean from the statistics so far, then apply (see
    /// [`crate::kernels::karcher_stream`]).
    Karcher,
    /// nuslerp with `nuslerp_row_wise` (vectors along dim 0): a chain of row-range links
    /// carrying every column's sums of squares, then a chain carrying every column's dot state,
    /// then apply with the columns' cosines (see [`crate::kernels::nuslerp_columns`]).
    NuslerpColumns,
    /// Independent rows (`filter_wise` model_stock, nuslerp over contiguous rows): apply only,
    /// in ranges of whole rows of the last dim, through the ordinary streamed kernels.
    Rows,
    /// sce: pass 1 high histogram of the variance keys and zero count, pass 2 low histogram,
    /// pass 3 cascade partials of the selected task vectors' squares, then apply with the
    /// weights (over the statistics partition).
    Sce,
    /// ramplus_tl: pass 1 counts each model's shared and unique active elements, then apply
    /// with the models' `lambda`.
    RamPlus,
    /// arcee_fusion over whole rows: pass 1 high histogram of the importances' keys, pass 2
    /// a low histogram per quantile, then apply with the threshold (see
    /// [`crate::kernels::arcee_chunk`]).
    Arcee,
    /// Not split: the tensor runs as one task.
    Whole,
}

impl Pipeline {
    /// Statistics passes before apply (a [`Pipeline::Chain`] has one per link: see
    /// [`ChunkPlan::passes`]).
    pub fn passes(self) -> u32 {
        match self {
            Pipeline::Chain
            | Pipeline::NuslerpChain
            | Pipeline::Multislerp
            | Pipeline::Karcher
            | Pipeline::NuslerpColumns => 1,
            Pipeline::Elementwise | Pipeline::Whole | Pipeline::Ranked | Pipeline::Rows => 0,
            Pipeline::RandomRescale | Pipeline::RankedRescale | Pipeline::RamPlus => 1,
            Pipeline::Slerp | Pipeline::Magnitude | Pipeline::Arcee => 2,
            Pipeline::MagnitudeRescale | Pipeline::Sce => 3,
        }
    }

    /// Whether the apply pass runs over the statistics partition (magnitude selections count
    /// their threshold ties per statistics chunk).
    pub fn applies_per_statistics_chunk(self) -> bool {
        matches!(self, Pipeline::Magnitude | Pipeline::MagnitudeRescale | Pipeline::Sce)
    }

    /// Whether apply chunks run through the chunk executor (with statistics, or with masks the
    /// ordinary kernels cannot draw for a chunk) rather than the ordinary kernels.
    pub fn chunk_apply(self) -> bool {
        self.passes() >= 1 || self == Pipeline::Ranked
    }

    /// Whether each statistics pass is one link of a chain (one chunk, in element order).
    pub fn chained(self) -> bool {
        matches!(
            self,
            Pipeline::Chain
                | Pipeline::NuslerpChain
                | Pipeline::Multislerp
                | Pipeline::Karcher
                | Pipeline::NuslerpColumns
        )
    }

    /// Statistics passes of a chained pipeline whose chains have `links` links.
    pub fn chain_passes(self, links: u32) -> u32 {
        match self {
            Pipeline::Multislerp => 3 * links + 1,
            Pipeline::NuslerpChain => links + 1,
            _ => links,
        }
    }

    /// For a chained pipeline of `passes` statistics passes: the link (0-based, its chain's
    /// statistics range) that pass `pass` (1-based) runs, or `None` for a pass over every
    /// statistics range.
    pub fn link_of(self, pass: u32, passes: u32) -> Option<usize> {
        match self {
            Pipeline::Chain => (pass <= passes).then(|| pass as usize - 1),
            Pipeline::NuslerpChain => (pass < passes).then(|| pass as usize - 1),
            Pipeline::Multislerp => multislerp_combine::stage(pass, passes).1.map(|i| i as usize),
            _ => None,
        }
    }
}

/// The ranges of one chunked tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkPlan {
    /// The pipeline.
    pub pipeline: Pipeline,
    /// Element ranges of every statistics pass (empty without passes).
    pub stats: Vec<Range<u64>>,
    /// Element ranges of the apply pass.
    pub apply: Vec<Range<u64>>,
    /// Elements a statistics chunk may read beyond its range, at most (DELLA ranks the whole
    /// blocks its range touches).
    pub context: u64,
    /// Statistics passes before apply.
    pub passes: u32,
}

impl ChunkPlan {
    /// The chunks of statistics pass `pass` (1-based): every statistics range, or for a
    /// chain's links its one link.
    pub fn pass_ranges(&self, pass: u32) -> &[Range<u64>] {
        if matches!(self.pipeline, Pipeline::Karcher | Pipeline::NuslerpColumns) {
            // Every pass is a link of one of its chains.
            let i = (pass as usize - 1) % self.stats.len().max(1);
            return &self.stats[i..=i];
        }
        match self.pipeline.link_of(pass, self.passes) {
            Some(i) => &self.stats[i..=i],
            None => &self.stats,
        }
    }
}

/// Which pipeline `task` (a whole-tensor task) needs.
pub fn pipeline(task: &MergeTask) -> Result<Pipeline, KernelError> {
    if task.passthrough {
        return Ok(Pipeline::Elementwise);
    }
    let spec = methods::lookup(&task.method).ok_or_else(|| KernelError::UnknownMethod(task.method.clone()))?;
    Ok(match spec.kind {
        MethodKind::Linear => Pipeline::Elementwise,
        MethodKind::Slerp => Pipeline::Slerp,
        MethodKind::Gta(variant) => gta_pipeline(task, variant)?,
        MethodKind::NearSwap | MethodKind::Passthrough | MethodKind::Ram => Pipeline::Elementwise,
        MethodKind::ModelStock if !boolean(&task.shared_params, "filter_wise")? => Pipeline::Chain,
        MethodKind::Nuslerp if boolean(&task.shared_params, "nuslerp_flatten")? => Pipeline::NuslerpChain,
        MethodKind::ModelStock => Pipeline::Rows,
        MethodKind::Nuslerp => {
            let row_wise = boolean(&task.shared_params, "nuslerp_row_wise")?;
            match Vectors::of(tensor_shape(task), false, row_wise) {
                Vectors::Rows(_) => Pipeline::Rows,
                Vectors::Columns { .. } => Pipeline::NuslerpColumns,
                Vectors::Flat => Pipeline::Whole,
            }
        }
        MethodKind::Sce => Pipeline::Sce,
        MethodKind::RamPlusTl => Pipeline::RamPlus,
        MethodKind::Multislerp => Pipeline::Multislerp,
        MethodKind::ArceeFusion => Pipeline::Arcee,
        MethodKind::Karcher => Pipeline::Karcher,
    })
}

fn gta_pipeline(task: &MergeTask, variant: GtaVariant) -> Result<Pipeline, KernelError> {
    let rescale = boolean(&task.shared_params, "rescale")?;
    let mut sparsified = false;
    for input in task.inputs.iter().filter(|i| !i.is_base) {
        let density = float(&input.params, "density")?;
        // breadcrumbs keeps a Python slice of the sorted magnitudes even for density <= 0.
        let outliers = variant.sparsifier == Some(Sparsifier::MagnitudeOutliers);
        sparsified |= density < 1.0 && (density > 0.0 || outliers);
    }
    Ok(match variant.sparsifier {
        None => Pipeline::Elementwise,
        Some(_) if !sparsified => Pipeline::Elementwise,
        Some(Sparsifier::Random) if rescale => Pipeline::RandomRescale,
        Some(Sparsifier::Random) => Pipeline::Elementwise,
        Some(Sparsifier::Magnitude | Sparsifier::MagnitudeOutliers) if rescale => Pipeline::MagnitudeRescale,
        Some(Sparsifier::Magnitude | Sparsifier::MagnitudeOutliers) => Pipeline::Magnitude,
        Some(Sparsifier::DellaMagprune) if rescale => Pipeline::RankedRescale,
        Some(Sparsifier::DellaMagprune) => Pipeline::Ranked,
    })
}

/// The vector load of torch's L1 sums in `pipeline` for the working dtype: DARE sums its
/// deltas in bf16 for bf16 and in f32 otherwise (f16 deltas are masked as f32 on CPU); TIES
/// sums them in the working dtype, and torch loads f16 vectors as it loads bf16 ones.
pub fn sum_kind(pipeline: Pipeline, working: DType) -> SumKind {
    match (pipeline, working) {
        (Pipeline::Sce, _) => SumKind::F32,
        (
            Pipeline::Chain
            | Pipeline::NuslerpChain
            | Pipeline::Multislerp
            | Pipeline::Karcher
            | Pipeline::NuslerpColumns,
            DType::F32,
        ) => SumKind::F32,
        (
            Pipeline::Chain
            | Pipeline::NuslerpChain
            | Pipeline::Multislerp
            | Pipeline::Karcher
            | Pipeline::NuslerpColumns,
            _,
        ) => SumKind::Bf16,
        (_, DType::Bf16) | (Pipeline::MagnitudeRescale, DType::F16) => SumKind::Bf16,
        _ => SumKind::F32,
    }
}

/// Splits `task` (a whole-tensor task) into chunks of about `chunk_elems` output elements, or
/// `None` when it stays whole (it is not larger than one chunk, or its method cannot split).
pub fn plan(task: &MergeTask, chunk_elems: u64) -> Result<Option<ChunkPlan>, KernelError> {
    let n = task.numel;
    let chunk = chunk_elems.max(1);
    if n <= chunk {
        return Ok(None);
    }
    let pipeline = pipeline(task)?;
    let even = split(0..n, chunk);
    let mut context = 0;
    let (stats, apply) = match pipeline {
        Pipeline::Whole => return Ok(None),
        // model_stock needs two fine-tuned models (the whole kernel says so otherwise).
        Pipeline::Chain if task.inputs.iter().filter(|i| !i.is_base).count() < 2 => return Ok(None),
        Pipeline::Chain => (sum_aligned(task, pipeline, chunk), even),
        // nuslerp interpolates exactly two models (the whole kernel says so otherwise).
        Pipeline::NuslerpChain if task.inputs.iter().filter(|i| !i.is_base).count() != 2 => return Ok(None),
        Pipeline::NuslerpChain => (sum_aligned(task, pipeline, chunk), even),
        // One model is returned unchanged (the whole kernel does it).
        Pipeline::Multislerp if task.inputs.iter().filter(|i| !i.is_base).count() < 2 => return Ok(None),
        // torch sums each row of the stacked `[k, n]` products on one thread: one part.
        Pipeline::Multislerp => (sum_aligned_in(task, pipeline, chunk, 1), even),
        Pipeline::Rows => {
            let row = tensor_shape(task).last().copied().unwrap_or(n).max(1);
            if row > chunk {
                return Ok(None);
            }
            (Vec::new(), split(0..n, chunk / row * row))
        }
        // Too many iterations for chains of statistics passes: whole.
        Pipeline::Karcher if task.inputs.len() < 2 || karcher_combine::stages(task)? > MAX_KARCHER_STAGES => {
            return Ok(None);
        }
        Pipeline::Karcher => (split(0..n, chunk), even),
        Pipeline::NuslerpColumns => {
            let Vectors::Columns { stride, .. } = Vectors::of(tensor_shape(task), false, true) else {
                return Ok(None);
            };
            let models = task.inputs.iter().filter(|i| !i.is_base).count();
            if stride == 0 || stride as u64 > chunk || models != 2 {
                return Ok(None);
            }
            let rows = split(0..n, chunk / stride as u64 * stride as u64);
            (rows.clone(), rows)
        }
        // A row's importance needs its whole row; a 1-D tensor is one row (the whole kernel's).
        Pipeline::Arcee => {
            let shape = tensor_shape(task);
            let row = shape.last().copied().unwrap_or(n).max(1);
            if shape.len() < 2 || row > chunk || task.inputs.len() != 2 {
                return Ok(None);
            }
            let rows = split(0..n, chunk / row * row);
            (rows.clone(), rows)
        }
        Pipeline::Ranked | Pipeline::RankedRescale => {
            let Some(block) = ranking_block(task, chunk)? else {
                return Ok(None);
            };
            let apply = split(0..n, chunk / block * block);
            if pipeline == Pipeline::Ranked {
                (Vec::new(), apply)
            } else {
                context = 2 * block;
                (sum_aligned(task, pipeline, chunk), apply)
            }
        }
        Pipeline::Elementwise => (Vec::new(), even),
        Pipeline::Slerp => {
            let block = TORCH_CHUNK as u64;
            (split(0..n, chunk.div_ceil(block) * block), even)
        }
        Pipeline::RandomRescale => (sum_aligned(task, pipeline, chunk), even),
        Pipeline::Magnitude => (even.clone(), even),
        Pipeline::MagnitudeRescale => {
            let stats = sum_aligned(task, pipeline, chunk);
            (stats.clone(), stats)
        }
        Pipeline::RamPlus if task.inputs.iter().all(|i| i.is_base) => return Ok(None),
        Pipeline::RamPlus => (even.clone(), even),
        Pipeline::Sce => {
            let k = task.inputs.iter().filter(|i| !i.is_base).count();
            if k == 0 {
                return Ok(None);
            }
            let stats = sum_aligned_in(task, pipeline, chunk, sce::mean_square_threads(k));
            (stats.clone(), stats)
        }
    };
    let passes = match pipeline.chained() {
        true if pipeline == Pipeline::Karcher => stats.len() as u32 * karcher_combine::stages(task)?,
        true if pipeline == Pipeline::NuslerpColumns => 2 * stats.len() as u32,
        true => pipeline.chain_passes(stats.len() as u32),
        false => pipeline.passes(),
    };
    Ok(Some(ChunkPlan {
        pipeline,
        stats,
        apply,
        context,
        passes,
    }))
}

/// Most chains of a karcher tensor split into chunk tasks (`max_iter` up to 100); more
/// iterations run whole.
const MAX_KARCHER_STAGES: u32 = 2 + 3 * 100;

/// Longest DELLA ranking block (elements ranked together, `len * inner` of
/// [`RankRows`]) that chunks split around; longer ones stay whole.
const MAX_RANKING_BLOCK: u64 = 1 << 22;

/// The elements of one DELLA ranking block of `task`'s tensor, when its chunks can be made of
/// whole blocks of at most `chunk` elements. `None` (the tensor stays whole, where the kernel
/// reports what is wrong) for one-element rows, a block longer than a chunk, or an epsilon
/// outside the range mergekit accepts.
fn ranking_block(task: &MergeTask, chunk: u64) -> Result<Option<u64>, KernelError> {
    let rows = ranking_rows(task);
    let block = (rows.len * rows.inner) as u64;
    if rows.len <= 1 || block == 0 || block > chunk || block > MAX_RANKING_BLOCK {
        return Ok(None);
    }
    for input in task.inputs.iter().filter(|i| !i.is_base) {
        let density = float(&input.params, "density")?;
        let epsilon = match input.params.contains_key("epsilon") {
            true => float(&input.params, "epsilon")?,
            false => 0.0,
        };
        if della::draws(density) && !della::epsilon_ok(density, epsilon) {
            return Ok(None);
        }
    }
    Ok(Some(block))
}

/// DELLA's ranking rows of `task`'s output tensor (a statistics chunk has no output: its
/// inputs' stored shapes differ from it at most in dim 0, which the blocks do not depend on;
/// `outer` is then the input's).
pub fn ranking_rows(task: &MergeTask) -> RankRows {
    RankRows::of_shape(tensor_shape(task))
}

/// The output tensor's shape (a statistics chunk has no output: its first input's stored
/// shape, which differs from it at most in dim 0).
pub(crate) fn tensor_shape(task: &MergeTask) -> &[u64] {
    match &task.output {
        Some(o) => &o.shape[..],
        None => task
            .inputs
            .iter()
            .find_map(|i| i.source.as_ref())
            .map_or(&[][..], |s| &s.shape[..]),
    }
}

/// The element range a chunk task reads: its own, or for a DELLA statistics chunk the whole
/// ranking blocks its range touches.
pub fn read_range(task: &MergeTask) -> Option<Range<u64>> {
    let c = task.chunk.as_ref()?;
    let own = c.start..c.start + c.len;
    if c.pass == 0 || pipeline(task).ok() != Some(Pipeline::RankedRescale) {
        return Some(own);
    }
    let rows = ranking_rows(task);
    let block = ((rows.len * rows.inner) as u64).max(1);
    Some(own.start / block * block..own.end.div_ceil(block).saturating_mul(block).min(c.tensor_numel))
}

/// Ranges of about `chunk` elements that each lie inside one of torch's summation parts of
/// the tensor, at its cascade granule, so L1 partials combine bit-exactly.
fn sum_aligned(task: &MergeTask, pipeline: Pipeline, chunk: u64) -> Vec<Range<u64>> {
    sum_aligned_in(task, pipeline, chunk, DEFAULT_THREADS)
}

/// [`sum_aligned`] for a sum torch runs on `threads` threads.
fn sum_aligned_in(task: &MergeTask, pipeline: Pipeline, chunk: u64, threads: usize) -> Vec<Range<u64>> {
    let kind = sum_kind(pipeline, task.working_dtype());
    let mut stats = Vec::new();
    for part in torch_parts(task.numel as usize, threads) {
        let start = part.start as u64;
        for r in torch_sum_partial::ranges(kind, part.len(), chunk as usize) {
            stats.push(start + r.start as u64..start + r.end as u64);
        }
    }
    stats
}

/// The bytes `task` reads of its input `src`: the whole tensor, or a chunk task's elements
/// (not for a vocabulary-aligned input, which reads the stored rows its runs name).
pub fn input_range(task: &MergeTask, src: &shardmerge_proto::v1::TensorSource) -> (u64, u64) {
    match (&task.chunk, read_range(task)) {
        (Some(c), Some(r)) if c.tensor_numel > 0 => {
            let size = src.length / c.tensor_numel;
            (src.offset + r.start * size, (r.end - r.start) * size)
        }
        _ => (src.offset, src.length),
    }
}

/// `range` cut into pieces of `size` elements (the last shorter).
fn split(range: Range<u64>, size: u64) -> Vec<Range<u64>> {
    (range.start..range.end)
        .step_by(size as usize)
        .map(|s| s..(s + size).min(range.end))
        .collect()
}

#[cfg(test)]
mod tests;
