//! The selection passes of the magnitude sparsifiers, folded over a tensor's chunks: TIES'
//! top-k ([`crate::kernels::magnitude_select`]) and breadcrumbs' window of ascending ranks
//! ([`crate::kernels::outlier_select`]). Pass 1 folds the high 16-bit histograms into each
//! cut's high bin, pass 2 the low histograms into each cut's threshold and each chunk's share
//! of the threshold ties.

use super::combine::Partial;
use crate::error::KernelError;
use crate::execute::float;
use crate::kernels::magnitude_select::{self, ChunkMask, Histogram};
use crate::kernels::outlier_select::{self, Cut, SelectMask, Window, WindowMask};
use crate::kernels::sparsify::{Sparsifier, magnitude_keep_count};
use crate::methods::{self, MethodKind};
use shardmerge_proto::v1::{ChunkStats, CombinedStats, InputCombined, InputStats, MergeTask, RankCut};

fn bad(reason: impl Into<String>) -> KernelError {
    KernelError::Contract(format!("chunk statistics: {}", reason.into()))
}

/// What one input's magnitude sparsifier selects over a tensor of `n` elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Selection {
    /// TIES: the `k` largest keys.
    TopK(u64),
    /// breadcrumbs: a window of ascending ranks.
    Window(Window),
}

/// Whether `task`'s method sparsifies by magnitude outliers (breadcrumbs).
fn outliers(task: &MergeTask) -> bool {
    matches!(
        methods::lookup(&task.method).map(|s| s.kind),
        Some(MethodKind::Gta(v)) if v.sparsifier == Some(Sparsifier::MagnitudeOutliers)
    )
}

/// The selection of input `i`, when it selects: a non-base input with `0 < density < 1`
/// (TIES) or `density < 1` (breadcrumbs, whose window may be empty).
pub(crate) fn selection(task: &MergeTask, i: usize, n: u64) -> Result<Option<Selection>, KernelError> {
    let input = &task.inputs[i];
    if input.is_base || n == 0 {
        return Ok(None);
    }
    let density = float(&input.params, "density")?;
    if outliers(task) {
        let gamma = float(&input.params, "gamma")?;
        return Ok(outlier_select::window(n, density, gamma).map(Selection::Window));
    }
    if density <= 0.0 || density >= 1.0 {
        return Ok(None);
    }
    Ok(Some(Selection::TopK(magnitude_keep_count(n as usize, density) as u64)))
}

/// Marks a non-base input that does not select as keeping nothing (TIES at `density <= 0`)
/// or everything.
fn set_trivial(task: &MergeTask, c: &mut InputCombined, i: usize) -> Result<(), KernelError> {
    let input = &task.inputs[i];
    if input.is_base {
        return Ok(());
    }
    let density = float(&input.params, "density")?;
    if density <= 0.0 && !outliers(task) {
        c.keep_none = true;
    } else {
        c.keep_all = true;
    }
    Ok(())
}

/// Which histogram of a chunk's input statistics.
#[derive(Clone, Copy)]
pub(super) enum Side {
    /// `bins`/`counts`: TIES' and breadcrumbs' pass 1, TIES' and the lower cut's pass 2.
    Lower,
    /// `upper_bins`/`upper_counts`: the upper cut's pass 2.
    Upper,
}

/// The `side` histogram of input `i` of a chunk's statistics (checked shape).
pub(super) fn histogram(s: &ChunkStats, i: usize, side: Side) -> Result<Histogram, KernelError> {
    let input = s.inputs.get(i).ok_or_else(|| bad("missing input"))?;
    let (bins, counts) = match side {
        Side::Lower => (&input.bins, &input.counts),
        Side::Upper => (&input.upper_bins, &input.upper_counts),
    };
    if bins.len() != counts.len() {
        return Err(bad("histogram bins and counts differ in length"));
    }
    Ok(Histogram {
        bins: bins.clone(),
        counts: counts.clone(),
    })
}

fn merged(partials: &[Partial<'_>], i: usize, side: Side) -> Result<Histogram, KernelError> {
    let hists = partials
        .iter()
        .map(|(_, s)| histogram(s, i, side))
        .collect::<Result<Vec<_>, _>>()?;
    magnitude_select::merge(&hists).map_err(bad)
}

/// Pass 1: every selecting input's high bin(s) from the chunks' high histograms.
pub(super) fn pass1(task: &MergeTask, n: u64, partials: &[Partial<'_>]) -> Result<Vec<InputCombined>, KernelError> {
    let mut inputs = Vec::new();
    for i in 0..task.inputs.len() {
        let mut c = InputCombined::default();
        match selection(task, i, n)? {
            Some(Selection::TopK(k)) => {
                let (high, above) =
                    magnitude_select::select_high(k, &merged(partials, i, Side::Lower)?).map_err(bad)?;
                c.high_bin = u32::from(high);
                c.above = above;
            }
            Some(Selection::Window(w)) => {
                let hist = merged(partials, i, Side::Lower)?;
                let cut = |rank: u64| -> Result<RankCut, KernelError> {
                    let (high, above) = outlier_select::cut_high(n, rank, &hist).map_err(bad)?;
                    Ok(RankCut {
                        high_bin: u32::from(high),
                        above,
                        ..Default::default()
                    })
                };
                c.lower = w.lower.map(cut).transpose()?;
                c.upper = w.upper.map(cut).transpose()?;
            }
            None => set_trivial(task, &mut c, i)?,
        }
        inputs.push(c);
    }
    Ok(inputs)
}

/// Each chunk's count of keys equal to `threshold` in its `side` histogram of input `i`.
fn ties(partials: &[Partial<'_>], i: usize, side: Side, threshold: u32) -> Result<Vec<u64>, KernelError> {
    partials
        .iter()
        .map(|(_, s)| Ok(histogram(s, i, side)?.count((threshold & 0xFFFF) as u16)))
        .collect()
}

fn high_bin(bin: u32) -> Result<u16, KernelError> {
    u16::try_from(bin).map_err(|_| bad("high bin out of range"))
}

/// Pass 2: every selecting input's threshold(s), with each chunk's share of the ties, for the
/// apply chunks (the statistics partition).
pub(super) fn pass2(
    task: &MergeTask,
    n: u64,
    partials: &[Partial<'_>],
    received: &CombinedStats,
) -> Result<Vec<CombinedStats>, KernelError> {
    let mut out = vec![
        CombinedStats {
            inputs: received.inputs.clone(),
            ..Default::default()
        };
        partials.len()
    ];
    for i in 0..task.inputs.len() {
        let r = received.inputs.get(i).ok_or_else(|| bad("missing input"))?;
        match selection(task, i, n)? {
            Some(Selection::TopK(k)) => {
                let high = high_bin(r.high_bin)?;
                let hist = merged(partials, i, Side::Lower)?;
                let (threshold, keep) = magnitude_select::select_low(k, high, r.above, &hist).map_err(bad)?;
                let per_chunk = magnitude_select::ties_per_chunk(keep, &ties(partials, i, Side::Lower, threshold)?);
                for (c, keep_here) in out.iter_mut().zip(per_chunk) {
                    c.inputs[i].threshold = threshold;
                    c.inputs[i].keep_ties = keep_here;
                }
            }
            Some(Selection::Window(w)) => {
                for (side, rank) in [(Side::Lower, w.lower), (Side::Upper, w.upper)] {
                    let Some(rank) = rank else { continue };
                    let cut = match side {
                        Side::Lower => r.lower.as_ref(),
                        Side::Upper => r.upper.as_ref(),
                    }
                    .ok_or_else(|| bad("pass 2 without pass 1's cut"))?;
                    let hist = merged(partials, i, side)?;
                    let (threshold, skip) =
                        outlier_select::cut_low(n, rank, high_bin(cut.high_bin)?, cut.above, &hist).map_err(bad)?;
                    let per_chunk = outlier_select::ties_per_chunk(skip, &ties(partials, i, side, threshold)?);
                    for (c, skip) in out.iter_mut().zip(per_chunk) {
                        let slot = match side {
                            Side::Lower => &mut c.inputs[i].lower,
                            Side::Upper => &mut c.inputs[i].upper,
                        };
                        let s = slot.get_or_insert_with(RankCut::default);
                        s.threshold = threshold;
                        s.skip = skip;
                    }
                }
            }
            None => {}
        }
    }
    Ok(out)
}

/// The high bins a pass-2 chunk of input `i` counts its low histograms in: TIES' (as the
/// lower side) or breadcrumbs' lower and upper cuts'.
pub(crate) fn pass2_bins(r: &InputCombined, selection: Selection) -> Result<[Option<u16>; 2], KernelError> {
    Ok(match selection {
        Selection::TopK(_) => [Some(high_bin(r.high_bin)?), None],
        Selection::Window(_) => [
            r.lower.as_ref().map(|c| high_bin(c.high_bin)).transpose()?,
            r.upper.as_ref().map(|c| high_bin(c.high_bin)).transpose()?,
        ],
    })
}

/// Stores a pass-2 chunk's low histograms of its lower and upper side.
pub(crate) fn store_pass2(stats: &mut InputStats, lower: Option<Histogram>, upper: Option<Histogram>) {
    if let Some(h) = lower {
        stats.bins = h.bins;
        stats.counts = h.counts;
    }
    if let Some(h) = upper {
        stats.upper_bins = h.bins;
        stats.upper_counts = h.counts;
    }
}

/// The selection mask a chunk applies, from what it received.
pub(crate) fn select_mask(r: &InputCombined, selection: Selection) -> SelectMask {
    let cut = |c: &RankCut| Cut {
        threshold: c.threshold,
        skip: c.skip,
    };
    match selection {
        Selection::TopK(_) => SelectMask::TopK(ChunkMask::new(r.threshold, r.keep_ties)),
        Selection::Window(_) => SelectMask::Window(WindowMask {
            lower: r.lower.as_ref().map(cut),
            upper: r.upper.as_ref().map(cut),
        }),
    }
}
