//! Splitting tensors larger than `--chunk-size` into chunk tasks (see
//! [`shardmerge_worker::chunk`]): statistics passes first, then apply chunks that each write one
//! contiguous byte range of the tensor's place in its shard.

use super::PlanError;
use shardmerge_proto::v1::{ChunkInfo, MergeTask, TensorDestination};
use shardmerge_worker::chunk;

/// Scratch of one streamed task (chunk buffers of the pool's threads), an upper bound.
pub(super) const STREAM_SCRATCH: u64 = 32 << 20;

/// Replaces every task whose output is larger than `chunk_bytes` (or whose planned memory is
/// above `memory_limit`) by its chunk tasks (in place of the whole task: its statistics passes
/// in order, then its apply chunks), renumbering task ids, and returns the planned peak memory
/// of each task by task index (whole tasks keep `memory[i]`). `chunk_bytes == 0` splits only
/// for the memory limit. A task that cannot be made to fit `memory_limit` is an error naming
/// the tensor, its planned memory and the limit.
pub(super) fn split(
    tasks: Vec<MergeTask>,
    memory: Vec<u64>,
    chunk_bytes: u64,
    memory_limit: Option<u64>,
) -> Result<(Vec<MergeTask>, Vec<u64>), PlanError> {
    if chunk_bytes == 0 && memory_limit.is_none() {
        return Ok((tasks, memory));
    }
    let mut out = Vec::with_capacity(tasks.len());
    let mut out_mem = Vec::with_capacity(tasks.len());
    for (group, (task, mem)) in tasks.into_iter().zip(memory).enumerate() {
        let dest = task.output.clone().unwrap_or_default();
        let elem = dest.length.checked_div(task.numel).unwrap_or(1).max(1);
        let in_bytes_per_elem: u64 = task
            .inputs
            .iter()
            .filter_map(|i| i.source.as_ref())
            .map(|s| s.length.checked_div(task.numel).unwrap_or(0))
            .sum();
        let k = task.inputs.len() as u64;
        // Input and output bytes of the chunk, one keep bit per input element, and f32 scratch
        // for a piece of every input plus two (bounded by the streamed kernels' scratch).
        let memory_of = |len: u64, output: bool| {
            let scratch = (len * 4 * (k + 2)).min(STREAM_SCRATCH);
            len * in_bytes_per_elem + if output { len * elem } else { 0 } + len.div_ceil(8) * k + scratch
        };
        let too_big = |need: u64, what: String| match memory_limit {
            Some(limit) if need > limit => Err(PlanError::Invalid(format!(
                "{what} of tensor `{}` needs {} of memory, more than the memory limit of {}; raise --memory-limit",
                task.tensor,
                human(need),
                human(limit)
            ))),
            _ => Ok(()),
        };
        // A worker reading from S3 holds every input of the task at once (the planner's own
        // estimate counts only the largest, for mapped inputs): plan for the larger.
        let mem = mem.max(chunk::task_memory(&task) + dest.length);
        let mut chunk_elems = if chunk_bytes == 0 {
            u64::MAX
        } else {
            (chunk_bytes / elem).max(1)
        };
        if let Some(limit) = memory_limit
            && mem > limit
        {
            // The longest chunk whose planned memory fits the limit.
            let per_elem = in_bytes_per_elem + elem + k.div_ceil(8) + 4 * (k + 2);
            let fit = limit / per_elem.max(1);
            if fit == 0 {
                too_big(memory_of(1, true), "a one-element chunk".into())?;
            }
            chunk_elems = chunk_elems.min(fit.max(1));
        }
        // Vocabulary-aligned inputs are built whole: such tensors stay whole tasks.
        let aligned = task.inputs.iter().any(|i| !i.rows.is_empty());
        let plan = if aligned {
            None
        } else {
            chunk::plan(&task, chunk_elems).map_err(|e| PlanError::Invalid(format!("tensor `{}`: {e}", task.tensor)))?
        };
        let Some(plan) = plan else {
            too_big(mem, "the whole-tensor task".into())?;
            out.push(task);
            out_mem.push(mem);
            continue;
        };
        let passes = plan.pipeline.passes();
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
                let need = memory_of(r.end - r.start, false);
                let what = format!(
                    "statistics chunk {i} ({} elements, aligned to torch's reduction)",
                    r.end - r.start
                );
                too_big(need, what)?;
                out.push(mk(r, pass, i, plan.stats.len()));
                out_mem.push(need);
            }
        }
        for (i, r) in plan.apply.iter().enumerate() {
            let need = memory_of(r.end - r.start, true);
            too_big(need, format!("chunk {i} ({} elements)", r.end - r.start))?;
            out.push(mk(r, 0, i, plan.apply.len()));
            out_mem.push(need);
        }
    }
    for (i, t) in out.iter_mut().enumerate() {
        t.task_id = i as u64;
    }
    Ok((out, out_mem))
}

/// Bytes for messages (MB or GB, powers of 1000 as `--memory-limit` takes them).
fn human(b: u64) -> String {
    if b >= 1_000_000_000 {
        format!("{:.2} GB", b as f64 / 1e9)
    } else if b < 1_000_000 {
        format!("{b} bytes")
    } else {
        format!("{:.1} MB", b as f64 / 1e6)
    }
}
