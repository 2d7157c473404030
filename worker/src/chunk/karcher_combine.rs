//! Folding karcher's statistics (see [`crate::kernels::karcher_stream`]): every pass is a
//! link of one stage's chain; the last link of a stage finishes its statistic, and every pass
//! hands on the [`Stats`] known so far as the coefficients. Stages that do not run (after
//! convergence, or without a valid input) pass the statistics through.

use super::combine::{Fold, Linked, bad, resumed_norms};
use crate::error::KernelError;
use crate::execute::float;
use crate::kernels::WorkDType;
use crate::kernels::karcher_stream::{DotStream, Iteration, Params, Stage, Stats};
use crate::kernels::torch_norm::NormStream;
use crate::with_precision;
use shardmerge_proto::v1::{CombinedStats, MergeTask, NormState};

/// karcher's parameters of `task` and its `max_iter`.
pub(crate) fn params(task: &MergeTask) -> Result<(Params, i64), KernelError> {
    let max_iter = float(&task.shared_params, "max_iter")? as i64;
    let tol = float(&task.shared_params, "tol")?;
    Ok((
        Params {
            k: task.inputs.len(),
            tol,
        },
        max_iter,
    ))
}

/// The chains of `task`'s tensor.
pub(crate) fn stages(task: &MergeTask) -> Result<u32, KernelError> {
    let (_, max_iter) = params(task)?;
    Ok(u32::try_from(Stage::count(max_iter.min(i64::from(u32::MAX / 4)))).unwrap_or(u32::MAX))
}

/// The stage statistics pass `pass` (of `passes`) runs, its link in the stage's chain and the
/// links per chain.
pub(crate) fn stage(task: &MergeTask, pass: u32, passes: u32) -> Result<(Stage, u32, u32), KernelError> {
    let stages = stages(task)?;
    let links = passes / stages.max(1);
    if links == 0 || passes != links * stages || pass == 0 || pass > passes {
        return Err(bad(format!("karcher pass {pass} of {passes} does not fit its chains")));
    }
    let p = pass - 1;
    Ok((Stage::of((p / links) as usize), p % links, links))
}

/// The statistics a chunk of pass `pass` received (none for pass 1).
pub(crate) fn known(params: Params, pass: u32, received: Option<&CombinedStats>) -> Result<Stats, KernelError> {
    match (pass, received) {
        (1, _) => Ok(Stats::default()),
        (_, Some(c)) => Stats::from_floats(params, &c.coefficients).ok_or_else(|| bad("malformed karcher statistics")),
        (_, None) => Err(bad(format!("karcher pass {pass} without the statistics before it"))),
    }
}

/// A finished chain's dot streams.
fn dots(work: WorkDType, n: usize, states: &[NormState]) -> Option<Vec<f32>> {
    states
        .iter()
        .map(|s| {
            with_precision!(work, P => {
                DotStream::resume::<P>(n, s.fed as usize, &s.acc, s.sum).map(|d| d.finish::<P>().clamp(-1.0, 1.0))
            })
        })
        .collect()
}

/// [`super::combine()`] for karcher.
pub(super) fn combine(fold: &Fold<'_>) -> Result<Vec<CombinedStats>, KernelError> {
    let (task, info, pass) = (fold.task, fold.info, fold.pass);
    let n = info.tensor_numel;
    let (params, _) = params(task)?;
    let mut stats = known(params, pass, fold.got())?;
    let (stage, link, links) = stage(task, pass, info.passes)?;
    let same = |s: &Stats, chain| fold.hand(s.to_floats(), chain);
    if !params.runs(stage, &stats) {
        return Ok(same(&stats, None));
    }
    let carried = match fold.link(link == 0, link + 1 == links)? {
        Linked::Carry(c) => return Ok(same(&stats, Some(c))),
        Linked::Last(c) => c,
    };
    let norms = || -> Result<Vec<f32>, KernelError> {
        Ok(resumed_norms(n, &carried.norms)?
            .into_iter()
            .map(NormStream::finish)
            .collect())
    };
    let one = || -> Result<f32, KernelError> {
        match norms()?[..] {
            [v] => Ok(v),
            _ => Err(bad("a karcher stage carries one norm")),
        }
    };
    let work = WorkDType::try_from(task.working_dtype())?;
    match stage {
        Stage::Norms => {
            stats.norms = norms()?;
            if stats.norms.len() != params.k {
                return Err(bad("karcher's first stage carries every input's norm"));
            }
        }
        Stage::MeanNorm => stats.mean_norm = Some(one()?),
        Stage::Dots(j) => {
            let d = dots(work, n as usize, &carried.norms).ok_or_else(|| bad("a dot state does not fit the tensor"))?;
            if d.len() != params.valid(&stats).len() || stats.iters.len() != j {
                return Err(bad("karcher's dots do not fit its valid inputs"));
            }
            stats.iters.push(Iteration {
                dots: d,
                ..Default::default()
            });
        }
        Stage::TangentNorm(j) | Stage::UpdateNorm(j) if stats.iters.len() != j + 1 => {
            return Err(bad(format!("karcher iteration {j} out of order")));
        }
        Stage::TangentNorm(j) => stats.iters[j].tangent_norm = Some(one()?),
        Stage::UpdateNorm(j) => stats.iters[j].update_norm = Some(one()?),
    }
    Ok(same(&stats, None))
}
