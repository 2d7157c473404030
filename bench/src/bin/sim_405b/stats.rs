//! What a simulated worker reports for a statistics unit, and what it checks on the units it
//! leases: statistics shaped exactly as a real worker's (`worker/src/execute/chunked.rs`), so
//! the scheduler fences, journals and really combines them (`chunk::combine`), and apply
//! chunks that carry the combined statistics.
//!
//! The simulated inputs are all zero: each statistics chunk reports, for every sparsified input
//! (not the base, density below 1), the L1 cascade partials of zeros over its range
//! ([`SumPartial::of_zeros`]) as `sums` and `masked_sums`, built without reading any data.

use anyhow::{Context, Result, bail};
use shardmerge_proto::v1::{ChunkStats, InputStats, MergeTask, TaskStats, WorkUnit, param_value};
use shardmerge_worker::chunk::{self, Pipeline};
use shardmerge_worker::kernels::torch_sum::{DEFAULT_THREADS, torch_parts};
use shardmerge_worker::kernels::torch_sum_partial::SumPartial;

/// The statistics of every task of a statistics unit, in task order (what `ReportUnit`
/// carries). Only DARE with rescale is simulated; other pipelines are an error.
pub fn unit_stats(unit: &WorkUnit) -> Result<Vec<TaskStats>> {
    unit.tasks
        .iter()
        .map(|t| {
            Ok(TaskStats {
                task_id: t.task_id,
                stats: Some(task_stats(t).with_context(|| format!("statistics of `{}`", t.tensor))?),
            })
        })
        .collect()
}

/// A number parameter of an input (`density`), as the worker reads it.
fn float(task: &MergeTask, input: usize, name: &str) -> Result<f64> {
    let p = task.inputs[input].params.get(name).and_then(|p| p.kind.as_ref());
    Ok(match p {
        Some(param_value::Kind::Float(f)) => *f,
        Some(param_value::Kind::Int(i)) => *i as f64,
        other => bail!("input {input}: parameter `{name}` is {other:?}, not a number"),
    })
}

fn task_stats(task: &MergeTask) -> Result<ChunkStats> {
    let c = task
        .chunk
        .as_ref()
        .filter(|c| c.pass >= 1)
        .context("not a statistics chunk task")?;
    let pipeline = chunk::pipeline(task)?;
    if pipeline != Pipeline::RandomRescale {
        bail!("simulated workers answer DARE's rescale statistics only, not {pipeline:?}");
    }
    let kind = chunk::sum_kind(pipeline, task.working_dtype());
    let (start, end) = (c.start as usize, (c.start + c.len) as usize);
    let part = torch_parts(c.tensor_numel as usize, DEFAULT_THREADS)
        .into_iter()
        .find(|p| p.start <= start && end <= p.end)
        .context("a statistics chunk crosses torch's summation parts")?;
    let range = start - part.start..end - part.start;
    let zeros = SumPartial::of_zeros(kind, part.len(), range).map_err(anyhow::Error::msg)?;
    let floats = zeros.to_floats();
    let mut inputs = vec![InputStats::default(); task.inputs.len()];
    for (i, stats) in inputs.iter_mut().enumerate() {
        if !task.inputs[i].is_base && float(task, i, "density")? < 1.0 {
            stats.sums = floats.clone();
            stats.masked_sums = floats.clone();
        }
    }
    Ok(ChunkStats {
        inputs,
        ..Default::default()
    })
}

/// Checks that every task of a leased unit that follows a statistics pass carries the combined
/// statistics (the scheduler filled them in); returns how many such tasks there are.
pub fn check_received(unit: &WorkUnit) -> Result<u64> {
    let mut n = 0;
    for t in &unit.tasks {
        let Some(c) = t.chunk.as_ref() else { continue };
        let after_stats = c.passes > 0 && (c.pass == 0 || c.pass > 1);
        if !after_stats {
            continue;
        }
        let Some(s) = c.stats.as_ref() else {
            bail!(
                "unit {}: chunk {} of `{}` was leased without the combined statistics",
                unit.unit_id,
                c.index,
                t.tensor
            );
        };
        if s.inputs.is_empty() && s.slerp.is_empty() {
            bail!(
                "unit {}: chunk {} of `{}` received empty statistics",
                unit.unit_id,
                c.index,
                t.tensor
            );
        }
        n += 1;
    }
    Ok(n)
}
