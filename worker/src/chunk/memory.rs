//! Planned memory of tasks and chunk tasks (the planner and the workers share these rules).

use super::{Pipeline, input_range, pipeline};
use crate::methods::{self, MethodKind};
use shardmerge_proto::v1::MergeTask;

/// Scratch of one streamed task (f32 pieces for the pool's threads), an upper bound.
pub const STREAM_SCRATCH: u64 = 32 << 20;

/// Whether the whole-tensor kernel of `task` streams its inputs through bounded scratch.
fn streams_whole(task: &MergeTask, pipeline: Pipeline) -> bool {
    match methods::lookup(&task.method).map(|s| s.kind) {
        Some(MethodKind::Gta(v)) => crate::kernels::gta_stream::supports(v),
        Some(MethodKind::Slerp | MethodKind::ModelStock) => true,
        Some(MethodKind::Nuslerp) => pipeline != Pipeline::Whole,
        _ => false,
    }
}

/// Whether `task` (a whole-tensor task) runs a kernel that streams its inputs through bounded
/// scratch instead of holding whole f32 copies.
pub fn whole_task_streams(task: &MergeTask) -> bool {
    !task.passthrough && pipeline(task).is_ok_and(|p| streams_whole(task, p))
}

/// Planned peak memory of a whole-tensor task whose largest input has `max_in` bytes (the
/// planner counts mapped inputs once: the kernel walks them). Kernels that stream
/// ([`whole_task_streams`]) keep one keep bit per element of each sparsified input (the
/// task-arithmetic family) plus bounded scratch; the others hold whole f32 tensors, as many as
/// the kernel does; vocabulary-aligned inputs are built whole in f32, one per input.
pub fn whole_task_memory(task: &MergeTask, max_in: u64) -> u64 {
    use MethodKind as K;
    let (n, k) = (task.numel, task.inputs.len() as u64);
    let kind = methods::lookup(&task.method).map(|s| s.kind);
    let working = match kind {
        _ if task.passthrough => n * 4,
        _ if whole_task_streams(task) => {
            let keep_bits = match kind {
                Some(K::Gta(_)) => n.div_ceil(8) * k.saturating_sub(1),
                _ => 0,
            };
            keep_bits + f32_scratch(n, k, false)
        }
        Some(K::Gta(_)) => n * 4 * (1 + k),
        Some(K::ModelStock | K::Multislerp | K::RamPlusTl | K::Sce | K::Karcher | K::ArceeFusion) => {
            n * 4 * (3 + 2 * k)
        }
        _ => n * 4 * 2,
    };
    let aligned = task.inputs.iter().filter(|i| !i.rows.is_empty()).count() as u64;
    working + max_in + aligned * n * 4
}

/// Whether a chunk of `task`'s tensor, split with `pipeline`, holds whole f32 copies of its
/// inputs and result (elementwise chunks run through the ordinary kernels, and ramplus_tl,
/// arcee_fusion and nuslerp column chunks) rather than streaming them through pieces of bounded scratch.
pub fn chunk_holds_whole_f32(task: &MergeTask, pipeline: Pipeline) -> bool {
    match task.passthrough || !pipeline.chunk_apply() {
        true => task.passthrough || !streams_whole(task, pipeline),
        false => matches!(pipeline, Pipeline::Arcee | Pipeline::RamPlus | Pipeline::NuslerpColumns),
    }
}

/// f32 scratch of `len` elements of a task with `k` inputs: a piece of every input plus two
/// (bounded by [`STREAM_SCRATCH`]), or every input and two results whole (`whole_f32`).
pub fn f32_scratch(len: u64, k: u64, whole_f32: bool) -> u64 {
    let all = len * 4 * (k + 2);
    if whole_f32 { all } else { all.min(STREAM_SCRATCH) }
}

/// Planned peak memory of executing `task` beyond its output bytes: the input bytes it reads
/// (mapped or fetched), one keep bit per element of each input, and its f32 scratch
/// ([`f32_scratch`]). Planner and workers use the same rule.
pub fn task_memory(task: &MergeTask) -> u64 {
    let k = task.inputs.len() as u64;
    let inputs: u64 = task
        .inputs
        .iter()
        .map(|i| match &i.source {
            _ if !i.rows.is_empty() => aligned_memory(task.numel, i.rows.iter().any(is_pad_mean)),
            Some(s) => input_range(task, s).1,
            None => 0,
        })
        .sum();
    let whole_f32 = match pipeline(task) {
        Ok(p) if task.chunk.is_some() => chunk_holds_whole_f32(task, p),
        Ok(p) => task.passthrough || !streams_whole(task, p),
        Err(_) => false,
    };
    inputs + task.numel.div_ceil(8) * k + f32_scratch(task.numel, k, whole_f32)
}

/// Bound on the rows a padding mean of a vocabulary-aligned chunk holds at once (a batch of
/// f32 rows) plus its running column sums.
pub const ALIGNED_MEAN_SCRATCH: u64 = 48 << 20;

/// Planned memory of one vocabulary-aligned input of `numel` output elements (a whole task's
/// or a chunk's): the f32 values built, their copy as input bytes, and the stored rows read
/// (at most 4 bytes per element), plus [`ALIGNED_MEAN_SCRATCH`] when it has padding rows.
pub fn aligned_memory(numel: u64, pads: bool) -> u64 {
    numel * 12 + if pads { ALIGNED_MEAN_SCRATCH } else { 0 }
}

fn is_pad_mean(r: &shardmerge_proto::v1::RowRun) -> bool {
    r.kind() == shardmerge_proto::v1::RowKind::PadMean
}
