//! Folding multislerp's statistics (see [`crate::kernels::multislerp_stream`]): three chains
//! of serial norms around one pass of dot partials. Every pass hands on the
//! [`Stats`] known so far as the coefficients; a chain's links also hand on its norm state.

use super::combine::{Fold, Linked, bad, resumed_norms};
use crate::error::KernelError;
use crate::kernels::WorkDType;
use crate::kernels::multislerp_stream::{self, Stats};
use crate::kernels::precision::Precision;
use crate::kernels::torch_sum_partial::SumPartial;
use crate::with_precision;
use shardmerge_proto::v1::{CombinedStats, MergeTask};

/// The stage (1 to 4: norms, mean norm, dots, tangent norm) that pass `pass` (1-based) of a
/// multislerp tensor with `passes` statistics passes runs, and for a chain's link its index in
/// the chain.
pub(crate) fn stage(pass: u32, passes: u32) -> (u32, Option<u32>) {
    let links = (passes.saturating_sub(1) / 3).max(1);
    match pass {
        p if p <= links => (1, Some(p - 1)),
        p if p <= 2 * links => (2, Some(p - links - 1)),
        p if p == 2 * links + 1 => (3, None),
        p => (4, Some(p - 2 * links - 2)),
    }
}

/// The statistics the chunks of pass `pass` received (none for pass 1) for `k` models.
pub(crate) fn known(k: usize, pass: u32, received: Option<&CombinedStats>) -> Result<Stats, String> {
    match (pass, received) {
        (1, _) => Ok(Stats::default()),
        (_, Some(c)) => Stats::from_floats(k, &c.coefficients).ok_or_else(|| "malformed multislerp statistics".into()),
        (_, None) => Err(format!("multislerp pass {pass} without the statistics before it")),
    }
}

/// The models multislerp interpolates (the non-base inputs).
pub(crate) fn models(task: &MergeTask) -> usize {
    task.inputs.iter().filter(|i| !i.is_base).count()
}

/// [`super::combine()`] for multislerp.
pub(super) fn combine(fold: &Fold<'_>) -> Result<Vec<CombinedStats>, KernelError> {
    let (task, info, pass, partials) = (fold.task, fold.info, fold.pass, fold.partials);
    let n = info.tensor_numel;
    let k = models(task);
    let work = WorkDType::try_from(task.working_dtype())?;
    let mut stats = known(k, pass, fold.got()).map_err(bad)?;
    let links = info.passes.saturating_sub(1) / 3;
    let (stage, link) = stage(pass, info.passes);
    let same = |s: &Stats, chain| fold.hand(s.to_floats(), chain);
    let Some(link) = link else {
        // The dot pass: every statistics chunk, in element order, from element 0 to n.
        let contiguous = partials.windows(2).all(|w| w[0].0.end == w[1].0.start);
        if !contiguous || partials.first().map(|p| p.0.start) != Some(0) || partials.last().map(|p| p.0.end) != Some(n)
        {
            return Err(bad(format!(
                "the dot pass does not cover the {n} elements of `{}`",
                task.tensor
            )));
        }
        let chunks = partials
            .iter()
            .map(|(_, s)| {
                let sums = s.chain.as_ref().map(|c| &c.sums[..]).unwrap_or_default();
                sums.iter()
                    .map(|l| SumPartial::from_floats(&l.partial).map_err(bad))
                    .collect()
            })
            .collect::<Result<Vec<Vec<SumPartial>>, KernelError>>()?;
        stats.dots = with_precision!(work, P => multislerp_stream::dots::<P>(n as usize, k, &chunks)).map_err(bad)?;
        return Ok(same(&stats, None));
    };
    let carried = match fold.link(link == 0, link + 1 == links)? {
        Linked::Carry(c) => return Ok(same(&stats, Some(c))),
        Linked::Last(c) => c,
    };
    let finished: Vec<f32> = resumed_norms(n, &carried.norms)?
        .into_iter()
        .map(|m| with_precision!(work, P => P::rnd(m.finish())))
        .collect();
    let expect = if stage == 1 { k } else { 1 };
    if finished.len() != expect {
        return Err(bad(format!(
            "stage {stage} of multislerp carries {} norms, not {expect}",
            finished.len()
        )));
    }
    match stage {
        1 => stats.norms = finished,
        2 => stats.mean_norm = finished.first().copied(),
        _ => stats.tangent_norm = finished.first().copied(),
    }
    Ok(same(&stats, None))
}
