//! Splitting tensors larger than `--chunk-size` into chunk tasks (see
//! [`shardmerge_worker::chunk`]): statistics passes first, then apply chunks that each write one
//! contiguous byte range of the tensor's place in its shard.

use super::PlanError;
use shardmerge_proto::v1::{ChunkInfo, MergeTask, TensorDestination};
use shardmerge_worker::chunk;

/// Scratch of one streamed task (chunk buffers of the pool's threads), an upper bound.
pub(super) const STREAM_SCRATCH: u64 = 32 << 20;

/// Replaces every task whose output is larger than `chunk_bytes` by its chunk tasks (in place
/// of the whole task: its statistics passes in order, then its apply chunks), renumbering
/// task ids, and returns the planned peak memory of each chunk task by task index (whole
/// tasks keep `memory[i]`). `chunk_bytes == 0` splits nothing.
pub(super) fn split(
    tasks: Vec<MergeTask>,
    memory: Vec<u64>,
    chunk_bytes: u64,
) -> Result<(Vec<MergeTask>, Vec<u64>), PlanError> {
    if chunk_bytes == 0 {
        return Ok((tasks, memory));
    }
    let mut out = Vec::with_capacity(tasks.len());
    let mut out_mem = Vec::with_capacity(tasks.len());
    for (group, (task, mem)) in tasks.into_iter().zip(memory).enumerate() {
        let dest = task.output.clone().unwrap_or_default();
        let elem = dest.length.checked_div(task.numel).unwrap_or(1).max(1);
        let chunk_elems = (chunk_bytes / elem).max(1);
        let plan = chunk::plan(&task, chunk_elems)
            .map_err(|e| PlanError::Invalid(format!("tensor `{}`: {e}", task.tensor)))?;
        let Some(plan) = plan else {
            out.push(task);
            out_mem.push(mem);
            continue;
        };
        let passes = plan.pipeline.passes();
        let in_bytes_per_elem: u64 = task
            .inputs
            .iter()
            .filter_map(|i| i.source.as_ref())
            .map(|s| s.length.checked_div(task.numel).unwrap_or(0))
            .sum();
        let keep_bits = task.inputs.len() as u64;
        let memory_of = |len: u64, output: bool| {
            len * in_bytes_per_elem + if output { len * elem } else { 0 } + len.div_ceil(8) * keep_bits + STREAM_SCRATCH
        };
        let mk = |range: &std::ops::Range<u64>, pass: u32, index: usize, count: usize| {
            let len = range.end - range.start;
            MergeTask {
                numel: len,
                output: (pass == 0).then(|| TensorDestination {
                    offset: dest.offset + range.start * elem,
                    length: len * elem,
                    ..dest.clone()
                }),
                chunk: Some(ChunkInfo {
                    group: group as u64,
                    start: range.start,
                    len,
                    pass,
                    passes,
                    index: index as u32,
                    count: count as u32,
                    stats: None,
                    tensor_numel: task.numel,
                }),
                ..task.clone()
            }
        };
        for pass in 1..=passes {
            for (i, r) in plan.stats.iter().enumerate() {
                out.push(mk(r, pass, i, plan.stats.len()));
                out_mem.push(memory_of(r.end - r.start, false));
            }
        }
        for (i, r) in plan.apply.iter().enumerate() {
            out.push(mk(r, 0, i, plan.apply.len()));
            out_mem.push(memory_of(r.end - r.start, true));
        }
    }
    for (i, t) in out.iter_mut().enumerate() {
        t.task_id = i as u64;
    }
    Ok((out, out_mem))
}
