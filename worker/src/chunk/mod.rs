//! Chunk tasks: one output tensor split into element ranges that run on any worker, in any
//! order, and give exactly the bytes of the whole-tensor kernel.
//!
//! A method is either elementwise (linear, passthrough, task arithmetic, DARE without rescale:
//! every chunk is independent) or needs whole-tensor statistics first. Those run a pipeline of
//! statistics passes: every chunk of pass `k` returns a small [`ChunkStats`]; [`combine`]
//! folds them, in chunk order and in exactly the order torch reduces, into the
//! [`CombinedStats`] every chunk of the next pass (or of apply) receives.
//!
//! | method | passes | statistics partition | apply partition |
//! |---|---|---|---|
//! | elementwise | 0 | none | any ranges |
//! | SLERP | 2: block norms, block dots | multiples of torch's 2^20-element blocks | any ranges |
//! | DARE with rescale | 1: L1 cascade partials of delta and masked delta | inside one of torch's thread parts, at its cascade granule ([`torch_sum_partial::granule`]) | any ranges |
//! | TIES (magnitude) | 2: high then low 16-bit histograms of `|delta|` keys | any ranges | the statistics partition (ties are kept lowest index first, counted per chunk) |
//! | TIES with `rescale: true` (bf16 or f32 working dtype) | 3: the two histograms, then L1 cascade partials of `|delta|` and of the kept `|delta|` | as DARE with rescale | the statistics partition |
//!
//! Not split (they run as one whole-tensor task, so the bytes are exact but `--memory-limit`
//! cannot shrink them): TIES with `rescale: true` in f16 (torch sums f16 magnitudes with the
//! reduced-precision cascade, which no statistics pass models yet), and the methods whose
//! result needs whole-tensor (or whole-row) statistics that no statistics pass computes yet: breadcrumbs
//! and DELLA when they sparsify (sorts of `|delta|`), model_stock, nuslerp, multislerp, karcher,
//! sce, ramplus_tl and arcee_fusion.

pub mod combine;

use crate::error::KernelError;
use crate::execute::{boolean, float};
use crate::kernels::gta::GtaVariant;
use crate::kernels::slerp::TORCH_CHUNK;
use crate::kernels::sparsify::Sparsifier;
use crate::kernels::torch_sum::{DEFAULT_THREADS, torch_parts};
use crate::kernels::torch_sum_partial;
use crate::kernels::torch_sum_stream::SumKind;
use crate::methods::{self, MethodKind};
use shardmerge_proto::v1::{DType, MergeTask};
use std::ops::Range;

pub use combine::combine;
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
    /// TIES: pass 1 high histogram, pass 2 low histogram, then the masked merge.
    Magnitude,
    /// TIES with rescale: the two histograms, pass 3 L1 cascade partials of `|delta|` before
    /// and after the mask, then the masked, rescaled merge.
    MagnitudeRescale,
    /// Not split: the tensor runs as one task.
    Whole,
}

impl Pipeline {
    /// Statistics passes before apply.
    pub fn passes(self) -> u32 {
        match self {
            Pipeline::Elementwise | Pipeline::Whole => 0,
            Pipeline::RandomRescale => 1,
            Pipeline::Slerp | Pipeline::Magnitude => 2,
            Pipeline::MagnitudeRescale => 3,
        }
    }

    /// Whether the apply pass runs over the statistics partition (magnitude selections count
    /// their threshold ties per statistics chunk).
    pub fn applies_per_statistics_chunk(self) -> bool {
        matches!(self, Pipeline::Magnitude | Pipeline::MagnitudeRescale)
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
        MethodKind::ModelStock
        | MethodKind::Nuslerp
        | MethodKind::Multislerp
        | MethodKind::RamPlusTl
        | MethodKind::Sce
        | MethodKind::Karcher
        | MethodKind::ArceeFusion => Pipeline::Whole,
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
        Some(Sparsifier::Magnitude) if rescale => match task.working_dtype() {
            DType::Bf16 | DType::F32 => Pipeline::MagnitudeRescale,
            _ => Pipeline::Whole,
        },
        Some(Sparsifier::Magnitude) => Pipeline::Magnitude,
        // Whole-tensor sorts (row ranks, outlier cut): not split (no statistics pass yet).
        Some(Sparsifier::MagnitudeOutliers | Sparsifier::DellaMagprune) => Pipeline::Whole,
    })
}

/// The summation kind of torch's L1 sums for the working dtype (bf16 vectors, else f32).
pub fn sum_kind(working: DType) -> SumKind {
    if working == DType::Bf16 {
        SumKind::Bf16
    } else {
        SumKind::F32
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
    let (stats, apply) = match pipeline {
        Pipeline::Whole => return Ok(None),
        Pipeline::Elementwise => (Vec::new(), even),
        Pipeline::Slerp => {
            let block = TORCH_CHUNK as u64;
            (split(0..n, chunk.div_ceil(block) * block), even)
        }
        Pipeline::RandomRescale => (sum_aligned(task, chunk), even),
        Pipeline::Magnitude => (even.clone(), even),
        Pipeline::MagnitudeRescale => {
            let stats = sum_aligned(task, chunk);
            (stats.clone(), stats)
        }
    };
    Ok(Some(ChunkPlan { pipeline, stats, apply }))
}

/// Ranges of about `chunk` elements that each lie inside one of torch's summation parts of
/// the tensor, at its cascade granule, so L1 partials combine bit-exactly.
fn sum_aligned(task: &MergeTask, chunk: u64) -> Vec<Range<u64>> {
    let kind = sum_kind(task.working_dtype());
    let mut stats = Vec::new();
    for part in torch_parts(task.numel as usize, DEFAULT_THREADS) {
        let start = part.start as u64;
        for r in torch_sum_partial::ranges(kind, part.len(), chunk as usize) {
            stats.push(start + r.start as u64..start + r.end as u64);
        }
    }
    stats
}

/// The bytes `task` reads of its input `src`: the whole tensor, or a chunk task's elements.
pub fn input_range(task: &MergeTask, src: &shardmerge_proto::v1::TensorSource) -> (u64, u64) {
    match &task.chunk {
        Some(c) if c.tensor_numel > 0 => {
            let size = src.length / c.tensor_numel;
            (src.offset + c.start * size, c.len * size)
        }
        _ => (src.offset, src.length),
    }
}

/// Scratch of one streamed task (f32 pieces for the pool's threads), an upper bound.
pub const STREAM_SCRATCH: u64 = 32 << 20;

/// Planned peak memory of executing `task` beyond its output bytes: the input bytes it reads
/// (mapped or fetched), one keep bit per element of each input, and f32 scratch for a piece of
/// every input plus two (bounded by [`STREAM_SCRATCH`]). Planner and workers use the same rule.
pub fn task_memory(task: &MergeTask) -> u64 {
    let k = task.inputs.len() as u64;
    let inputs: u64 = task
        .inputs
        .iter()
        .filter_map(|i| i.source.as_ref())
        .map(|s| input_range(task, s).1)
        .sum();
    inputs + task.numel.div_ceil(8) * k + (task.numel * 4 * (k + 2)).min(STREAM_SCRATCH)
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
