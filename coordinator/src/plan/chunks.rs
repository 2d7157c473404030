//! Splitting tensors larger than `--chunk-size` into chunk tasks (see
//! [`shardmerge_worker::chunk`]): statistics passes first, then apply chunks that each write one
//! contiguous byte range of the tensor's place in its shard.

use super::PlanError;
use shardmerge_proto::v1::{ChunkInfo, MergeTask, RowKind, TensorDestination};
use shardmerge_worker::chunk;

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
        // Stored inputs read their chunk's bytes; vocabulary-aligned ones build f32 rows
        // (`chunk::aligned_memory`: 12 bytes per element, and a bounded batch for padding means).
        let in_bytes_per_elem: u64 = task
            .inputs
            .iter()
            .map(|i| match &i.source {
                _ if !i.rows.is_empty() => chunk::aligned_memory(1, false),
                Some(s) => s.length.checked_div(task.numel).unwrap_or(0),
                None => 0,
            })
            .sum();
        let pads = task
            .inputs
            .iter()
            .filter(|i| i.rows.iter().any(|r| r.kind() == RowKind::PadMean))
            .count() as u64;
        let k = task.inputs.len() as u64;
        // Input and output bytes of the chunk, one keep bit per input element, and f32 scratch
        // for a piece of every input plus two (bounded by the streamed kernels' scratch unless
        // the chunk holds whole f32 tensors: `chunk::chunk_scratch`).
        let memory_of = |len: u64, output: bool, whole_f32: bool| {
            let scratch = chunk::f32_scratch(len, k, whole_f32);
            len * in_bytes_per_elem
                + if output { len * elem } else { 0 }
                + len.div_ceil(8) * k
                + scratch
                + pads * chunk::ALIGNED_MEAN_SCRATCH
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
            let fit = limit.saturating_sub(pads * chunk::ALIGNED_MEAN_SCRATCH) / per_elem.max(1);
            if fit == 0 {
                too_big(memory_of(1, true, true), "a one-element chunk".into())?;
            }
            chunk_elems = chunk_elems.min(fit.max(1));
        }
        // Vocabulary-aligned inputs split too: a chunk builds only the rows it touches.
        let plan = chunk::plan(&task, chunk_elems)
            .map_err(|e| PlanError::Invalid(format!("tensor `{}`: {e}", task.tensor)))?;
        let Some(plan) = plan else {
            too_big(mem, "the whole-tensor task".into())?;
            out.push(task);
            out_mem.push(mem);
            continue;
        };
        let passes = plan.passes;
        let whole_f32 = chunk::chunk_holds_whole_f32(&task, plan.pipeline);
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
            let ranges = plan.pass_ranges(pass);
            for (i, r) in ranges.iter().enumerate() {
                // A statistics chunk may also read up to `plan.context` elements around it.
                let need = memory_of(r.end - r.start, false, whole_f32) + plan.context * in_bytes_per_elem;
                let what = format!(
                    "statistics chunk {i} ({} elements, aligned to torch's reduction)",
                    r.end - r.start
                );
                too_big(need, what)?;
                out.push(mk(r, pass, i, ranges.len()));
                out_mem.push(need);
            }
        }
        for (i, r) in plan.apply.iter().enumerate() {
            let need = memory_of(r.end - r.start, true, whole_f32);
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

/// Iterations above which a karcher tensor split into chunk tasks gets a warning: every link
/// replays the mean through all earlier iterations, so the work grows with their square.
const KARCHER_REPLAY_WARN: i64 = 10;

/// One warning when karcher tensors split into chunk tasks with more than
/// [`KARCHER_REPLAY_WARN`] iterations (measured: 50 iterations on 2 MB chunks took 43 times
/// the whole-tensor task's time).
pub(super) fn replay_warnings(tasks: &[MergeTask]) -> Option<String> {
    let split: Vec<(&str, i64)> = tasks
        .iter()
        .filter(|t| t.method == "karcher" && t.chunk.as_ref().is_some_and(|c| c.pass == 0 && c.index == 0))
        .filter_map(|t| {
            Some((
                t.tensor.as_str(),
                super::validate::number(&t.shared_params, "max_iter")? as i64,
            ))
        })
        .filter(|&(_, iters)| iters > KARCHER_REPLAY_WARN)
        .collect();
    let &(first, iters) = split.first()?;
    let others = match split.len() {
        1 => String::new(),
        n => format!(" and {} more", n - 1),
    };
    Some(format!(
        "karcher with max_iter {iters}: tensor `{first}`{others} run as chunk tasks, which replay every \
         earlier iteration (about {} times the arithmetic of whole-tensor tasks); `--chunk-size 0` runs \
         them whole where memory allows",
        iters / 2
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardmerge_proto::v1::{DType, RowRun, TaskInput, TensorSource};

    /// A linear `lm_head` of 66 rows of 32 bf16 elements whose two inputs are aligned: 64
    /// stored rows each (one permuted), and, with `pad`, the last 2 rows padding means.
    fn aligned_task(pad: bool) -> MergeTask {
        let (rows, row) = (66u64, 32u64);
        let input = |i: u32, runs: Vec<RowRun>| TaskInput {
            model_index: i,
            source: Some(TensorSource {
                uri: format!("/m{i}/model.safetensors"),
                offset: 0,
                length: 64 * row * 2,
                dtype: DType::Bf16 as i32,
                shape: vec![64, row],
                ..Default::default()
            }),
            rows: runs,
            ..Default::default()
        };
        let copy = |input: u32, from_row: u64, count: u64| RowRun {
            count,
            kind: RowKind::Copy as i32,
            input,
            from_row,
            terms: Vec::new(),
        };
        let tail = |input: u32| match pad {
            true => RowRun {
                count: 2,
                kind: RowKind::PadMean as i32,
                ..Default::default()
            },
            false => copy(input, 0, 2),
        };
        MergeTask {
            tensor: "lm_head.weight".into(),
            method: "linear".into(),
            working_dtype: DType::Bf16 as i32,
            inputs: vec![
                input(0, vec![copy(0, 0, 64), tail(0)]),
                input(1, vec![copy(1, 32, 32), copy(1, 0, 32), tail(1)]),
            ],
            output: Some(TensorDestination {
                uri: "/out/model.safetensors".into(),
                offset: 0,
                length: rows * row * 2,
                dtype: DType::Bf16 as i32,
                shape: vec![rows, row],
                shard_index: 0,
            }),
            numel: rows * row,
            ..Default::default()
        }
    }

    /// A karcher task of two bf16 inputs of 64 x 32 with `max_iter` iterations.
    fn karcher_task(max_iter: f64) -> MergeTask {
        use shardmerge_proto::v1::param_value::Kind;
        let params = [("max_iter", Kind::Float(max_iter)), ("tol", Kind::Float(1e-5))];
        crate::plan::tests::bf16_task("karcher", 2, &[64, 32], &params)
    }

    /// Chunked karcher with many iterations is warned about once, naming a tensor; few
    /// iterations, or the same tensor whole, are not.
    #[test]
    fn many_karcher_iterations_over_chunk_tasks_get_one_warning() {
        let two = vec![
            karcher_task(50.0),
            MergeTask {
                tensor: "v".into(),
                ..karcher_task(50.0)
            },
        ];
        let (tasks, _) = split(two, vec![1 << 20; 2], 1024, None).unwrap();
        assert!(tasks.len() > 2, "the tensors split");
        let w = replay_warnings(&tasks).expect("a warning");
        assert!(
            w.contains("max_iter 50: tensor `w` and 1 more") && w.contains("--chunk-size 0"),
            "{w}"
        );
        let (whole, _) = split(vec![karcher_task(50.0)], vec![1 << 20], 0, None).unwrap();
        assert_eq!((whole.len(), replay_warnings(&whole)), (1, None));
        let (few, _) = split(vec![karcher_task(10.0)], vec![1 << 20], 1024, None).unwrap();
        assert!(few.len() > 1 && replay_warnings(&few).is_none());
    }

    /// Under a memory limit smaller than the whole task, an aligned tensor plans as chunk
    /// tasks that tile it (it used to stay one whole task and fail the limit), each within the
    /// limit; with padding rows each chunk also budgets the streamed padding mean.
    #[test]
    fn an_aligned_tensor_under_a_small_memory_limit_plans_as_chunks() {
        for pad in [false, true] {
            let task = aligned_task(pad);
            let whole = chunk::task_memory(&task) + task.output.as_ref().unwrap().length;
            let limit = if pad {
                chunk::ALIGNED_MEAN_SCRATCH * 2 + 40_000
            } else {
                whole / 3
            };
            let (tasks, mem) = split(vec![task.clone()], vec![whole], 0, Some(limit)).unwrap();
            assert!(tasks.len() > 1, "pad {pad}: still {} task(s)", tasks.len());
            let mut next = 0;
            for (t, m) in tasks.iter().zip(&mem) {
                let c = t.chunk.as_ref().expect("a chunk task");
                assert_eq!((c.start, c.tensor_numel, c.pass), (next, task.numel, 0));
                assert!(*m <= limit, "pad {pad}: chunk planned at {m} > {limit}");
                assert_eq!(t.inputs[1].rows, task.inputs[1].rows, "chunks keep the row runs");
                next += c.len;
            }
            assert_eq!(next, task.numel, "pad {pad}: the chunks tile the tensor");
        }
        // A limit below the padding mean's scratch cannot fit even a one-element chunk.
        let task = aligned_task(true);
        let err = split(vec![task], vec![u64::MAX / 4], 0, Some(1 << 20)).unwrap_err();
        assert!(
            err.to_string().contains("one-element chunk of tensor `lm_head.weight`"),
            "{err}"
        );
    }
}
