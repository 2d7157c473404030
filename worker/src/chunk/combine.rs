//! Folding the statistics of one pass's chunks into what the next pass's chunks receive.
//!
//! Pure and deterministic: the runtime (embedded or the coordinator's scheduler) calls it once
//! every chunk of a pass has reported, with the partials in chunk order.

use super::{InputCombined, Pipeline, pipeline, select, sum_kind};
use crate::error::KernelError;
use crate::execute::float;
use crate::kernels::WorkDType;
use crate::kernels::gta_stream::rescale_factor;
use crate::kernels::magnitude_select::{self, Histogram};
use crate::kernels::model_stock_chain;
use crate::kernels::nuslerp::{self, Coefficients};
use crate::kernels::nuslerp_stream;
use crate::kernels::ram;
use crate::kernels::slerp_stream::{coefficients, norm_of_blocks};
use crate::kernels::sparsify;
use crate::kernels::torch_norm::NormStream;
use crate::kernels::torch_sum::{DEFAULT_THREADS, torch_parts};
use crate::kernels::torch_sum_partial::{self, SumPartial};
use crate::kernels::{arcee_chunk, arcee_fusion};
use crate::with_precision;
use shardmerge_proto::v1::{ChainState, ChunkInfo, ChunkStats, CombinedStats, MergeTask, NormState};
use std::ops::Range;

/// One reported chunk of a pass: its element range and its statistics.
pub type Partial<'a> = (Range<u64>, &'a ChunkStats);

/// What [`combine()`] was given, for the per-method folds.
pub(super) struct Fold<'a> {
    /// Any chunk task of the tensor.
    pub task: &'a MergeTask,
    /// Its chunk (the tensor's length and its number of passes).
    pub info: &'a ChunkInfo,
    /// The pass whose chunks reported.
    pub pass: u32,
    /// Their reports, in chunk order.
    pub partials: &'a [Partial<'a>],
    /// What each of them received, in chunk order (none for pass 1).
    pub received: Option<&'a [CombinedStats]>,
    /// How many chunks the following pass has.
    pub next: usize,
}

impl Fold<'_> {
    /// The statistics the first chunk of the pass received.
    pub fn got(&self) -> Option<&CombinedStats> {
        self.received.and_then(<[CombinedStats]>::first)
    }

    /// What each chunk of the following pass receives: `coefficients` and a chain's state.
    pub fn hand(&self, coefficients: Vec<f32>, chain: Option<ChainState>) -> Vec<CombinedStats> {
        let c = CombinedStats {
            coefficients,
            chain,
            ..Default::default()
        };
        vec![c; self.next]
    }

    /// This pass as a link of a chain ([`carry`]; `last`: its chain's last link, which must end
    /// at the tensor's end).
    pub fn link(&self, first: bool, last: bool) -> Result<Linked, KernelError> {
        let n = self.info.tensor_numel;
        let (range, carried) = carry(first, self.pass, self.partials, self.received)?;
        if !last {
            return Ok(Linked::Carry(carried));
        }
        if range.end != n {
            return Err(bad(format!(
                "a chain of `{}` ends at element {}, not {n}",
                self.task.tensor, range.end
            )));
        }
        Ok(Linked::Last(carried))
    }
}

pub(super) fn bad(reason: impl Into<String>) -> KernelError {
    KernelError::Contract(format!("chunk statistics: {}", reason.into()))
}

/// Folds the statistics of every chunk of `pass` of the tensor of `task` (any chunk task of
/// it), given in chunk order, into the statistics each of the `next` chunks of the following
/// pass receives. `received` is what each chunk of `pass` received, in chunk order (none for
/// pass 1).
pub fn combine(
    task: &MergeTask,
    pass: u32,
    partials: &[Partial<'_>],
    received: Option<&[CombinedStats]>,
    next: usize,
) -> Result<Vec<CombinedStats>, KernelError> {
    let info = task.chunk.as_ref().ok_or_else(|| bad("not a chunk task"))?;
    let n = info.tensor_numel;
    let p = pipeline(task)?;
    let fold = Fold {
        task,
        info,
        pass,
        partials,
        received,
        next,
    };
    match p {
        Pipeline::NuslerpColumns => return super::columns_combine::combine(&fold),
        Pipeline::Karcher => return super::karcher_combine::combine(&fold),
        Pipeline::Multislerp => return super::multislerp_combine::combine(&fold),
        _ if p.chained() && p.link_of(pass, info.passes).is_some() => return chain(&fold, p),
        _ => {}
    }
    let covered: u64 = partials.iter().map(|(r, _)| r.end - r.start).sum();
    let contiguous = partials.windows(2).all(|w| w[0].0.end == w[1].0.start);
    if covered != n || !contiguous || partials.first().is_some_and(|p| p.0.start != 0) {
        return Err(bad(format!(
            "pass {pass} does not cover the {n} elements of `{}`",
            task.tensor
        )));
    }
    let same = |c: CombinedStats| vec![c; next];
    match (p, pass) {
        (Pipeline::Slerp, 1) => {
            let (base, other) = slerp_inputs(task)?;
            let blocks = |i: usize| -> Result<Vec<f32>, KernelError> {
                let mut v = Vec::new();
                for (_, s) in partials {
                    v.extend_from_slice(&s.inputs.get(i).ok_or_else(|| bad("missing input"))?.sums);
                }
                Ok(v)
            };
            let (pa, pb) = (blocks(base)?, blocks(other)?);
            let expect = n.div_ceil(crate::kernels::slerp::TORCH_CHUNK as u64) as usize;
            if pa.len() != expect || pb.len() != expect {
                return Err(bad(format!(
                    "expected {expect} block norms, got {} and {}",
                    pa.len(),
                    pb.len()
                )));
            }
            Ok(same(CombinedStats {
                slerp: vec![norm_of_blocks(&pa), norm_of_blocks(&pb)],
                inputs: Vec::new(),
                ..Default::default()
            }))
        }
        (Pipeline::Slerp, 2) => {
            let dots: Vec<f32> = partials.iter().flat_map(|(_, s)| s.dots.iter().copied()).collect();
            let expect = n.div_ceil(crate::kernels::slerp::TORCH_CHUNK as u64) as usize;
            if dots.len() != expect {
                return Err(bad(format!("expected {expect} block dots, got {}", dots.len())));
            }
            let t = float(&task.shared_params, "t")?;
            let (ca, cb) = coefficients(&dots, t);
            Ok(same(CombinedStats {
                slerp: vec![ca, cb],
                inputs: Vec::new(),
                ..Default::default()
            }))
        }
        (p @ (Pipeline::RandomRescale | Pipeline::RankedRescale), 1) => {
            // DARE and DELLA: every non-base input below density 1 reports its L1 partials.
            let dare = |i: usize| -> Result<bool, KernelError> {
                let input = &task.inputs[i];
                Ok(!input.is_base && float(&input.params, "density")? < 1.0)
            };
            let factors = rescale_factors(task, p, n, partials, dare)?;
            let inputs = factors
                .into_iter()
                .map(|rescale| InputCombined {
                    rescale,
                    ..Default::default()
                })
                .collect();
            Ok(same(CombinedStats {
                slerp: Vec::new(),
                inputs,
                ..Default::default()
            }))
        }
        (Pipeline::Magnitude | Pipeline::MagnitudeRescale, 1) => Ok(same(CombinedStats {
            inputs: select::pass1(task, n, partials)?,
            ..Default::default()
        })),
        (Pipeline::Magnitude | Pipeline::MagnitudeRescale, 2) => {
            let received = received
                .and_then(<[CombinedStats]>::first)
                .ok_or_else(|| bad("pass 2 without pass 1's selection"))?;
            if next != partials.len() {
                return Err(bad(
                    "the apply partition of a magnitude selection is its statistics partition",
                ));
            }
            select::pass2(task, n, partials, received)
        }
        (Pipeline::MagnitudeRescale, 3) => {
            let received = received.ok_or_else(|| bad("pass 3 without the selection"))?;
            if received.len() != partials.len() || next != partials.len() {
                return Err(bad(
                    "the apply partition of a magnitude selection is its statistics partition",
                ));
            }
            let selects = |i: usize| Ok(select::selection(task, i, n)?.is_some());
            let factors = rescale_factors(task, Pipeline::MagnitudeRescale, n, partials, selects)?;
            let mut out = received.to_vec();
            for c in &mut out {
                if c.inputs.len() != factors.len() {
                    return Err(bad("missing input"));
                }
                for (input, f) in c.inputs.iter_mut().zip(&factors) {
                    input.rescale = *f;
                }
            }
            Ok(out)
        }
        (Pipeline::NuslerpChain, _) => {
            let work = WorkDType::try_from(task.working_dtype())?;
            let kind = sum_kind(Pipeline::NuslerpChain, task.working_dtype());
            let mut part_dots = Vec::new();
            for part in torch_parts(n as usize, DEFAULT_THREADS) {
                let ps = partials
                    .iter()
                    .filter(|(r, _)| part.contains(&(r.start as usize)))
                    .map(|(_, s)| {
                        let sum = s.chain.as_ref().and_then(|c| c.sums.first());
                        SumPartial::from_floats(&sum.ok_or_else(|| bad("a dot chunk without its partial"))?.partial)
                            .map_err(bad)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                part_dots.push(torch_sum_partial::combine(kind, part.len(), &ps).map_err(bad)?);
            }
            let t = nuslerp_t(task)?;
            let coefficients = with_precision!(work, P => {
                let c = nuslerp_stream::cosine::<P>(n as usize, &part_dots);
                Coefficients::of::<P>(c, t)
            });
            Ok(same(CombinedStats {
                coefficients: coefficients.to_floats(),
                ..Default::default()
            }))
        }
        (Pipeline::Arcee, 1) => {
            let highs = partials
                .iter()
                .map(|(_, s)| {
                    s.inputs
                        .first()
                        .map(histogram)
                        .ok_or_else(|| bad("an importance chunk without its histogram"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let merged = magnitude_select::merge(&highs).map_err(bad)?;
            let quantiles = arcee_chunk::select_bins(n, &merged).map_err(bad)?;
            let inputs = quantiles
                .iter()
                .map(|q| InputCombined {
                    high_bin: u32::from(q.high),
                    above: q.above,
                    ..Default::default()
                })
                .collect();
            Ok(same(CombinedStats {
                inputs,
                ..Default::default()
            }))
        }
        (Pipeline::Arcee, 2) => {
            let got = received
                .and_then(<[CombinedStats]>::first)
                .ok_or_else(|| bad("pass 2 without the quantiles' bins"))?;
            let ks = arcee_chunk::quantile_ks(arcee_chunk::sample_count(n));
            let mut values = [0.0f32; 3];
            for (q, (v, k)) in values.iter_mut().zip(ks).enumerate() {
                let c = got.inputs.get(q).ok_or_else(|| bad("a quantile without its bin"))?;
                let high = u16::try_from(c.high_bin).map_err(|_| bad("a quantile's bin is out of range"))?;
                let lows = partials
                    .iter()
                    .map(|(_, s)| {
                        s.inputs
                            .get(q)
                            .map(histogram)
                            .ok_or_else(|| bad("a chunk without a quantile's histogram"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let merged = magnitude_select::merge(&lows).map_err(bad)?;
                let quantile = arcee_chunk::Quantile {
                    k,
                    high,
                    above: c.above,
                };
                *v = arcee_chunk::quantile_value(quantile, &merged).map_err(bad)?;
            }
            let work = WorkDType::try_from(task.working_dtype())?;
            let thr = with_precision!(work, P => arcee_fusion::threshold_of::<P>(values));
            Ok(same(CombinedStats {
                coefficients: vec![thr],
                ..Default::default()
            }))
        }
        (Pipeline::Sce, pass) => super::sce_combine::combine(task, pass, n, partials, received, next),
        (Pipeline::RamPlus, 1) => {
            // Every non-base model's counts over the whole tensor, then its lambda.
            let mut counts = Vec::new();
            for (i, input) in task.inputs.iter().enumerate().filter(|(_, i)| !i.is_base) {
                let mut c = (0u64, 0u64);
                for (_, s) in partials {
                    let st = s
                        .inputs
                        .get(i)
                        .ok_or_else(|| bad(format!("missing counts of `{}`", input.model_index)))?;
                    c = (c.0 + st.shared, c.1 + st.unique);
                }
                counts.push(c);
            }
            let get = |name| float(&task.shared_params, name);
            let lambda = ram::plus_lambdas(&counts, get("epsilon")?, get("r")?, get("alpha")?);
            Ok(same(CombinedStats {
                coefficients: lambda,
                ..Default::default()
            }))
        }
        (p, pass) => Err(bad(format!("{p:?} has no statistics pass {pass}"))),
    }
}

/// A reported histogram.
fn histogram(s: &shardmerge_proto::v1::InputStats) -> Histogram {
    Histogram {
        bins: s.bins.clone(),
        counts: s.counts.clone(),
    }
}

/// One link of a chain: carries the link's norm states on and collects its dot partials;
/// after the last link, the ratio every apply chunk receives.
fn chain(fold: &Fold<'_>, pipeline: Pipeline) -> Result<Vec<CombinedStats>, KernelError> {
    let (task, pass, next, n) = (fold.task, fold.pass, fold.next, fold.info.tensor_numel);
    let last = pipeline.link_of(pass + 1, fold.info.passes).is_none();
    let carried = match fold.link(pass == 1, last)? {
        Linked::Carry(c) => return Ok(fold.hand(Vec::new(), Some(c))),
        Linked::Last(c) => c,
    };
    let same = |c: CombinedStats| vec![c; next];
    let norms = resumed_norms(n, &carried.norms)?;
    let per_link = model_stock_chain::pairs(norms.len()).len().max(1);
    let mut links = Vec::new();
    for l in carried.sums.chunks(per_link) {
        let start = l[0].start as usize;
        let ps = l
            .iter()
            .map(|s| SumPartial::from_floats(&s.partial).map_err(bad))
            .collect::<Result<Vec<_>, _>>()?;
        links.push((start, ps));
    }
    let work = WorkDType::try_from(task.working_dtype())?;
    if pipeline == Pipeline::NuslerpChain {
        // The two norms, for every chunk of the dot pass.
        let norms: Vec<f32> = norms
            .into_iter()
            .map(|m| with_precision!(work, P => nuslerp_stream::finished_norm::<P>(m)))
            .collect();
        return Ok(same(CombinedStats {
            coefficients: norms,
            ..Default::default()
        }));
    }
    let t = with_precision!(work, P => model_stock_chain::ratio::<P>(n as usize, norms, &links)).map_err(bad)?;
    Ok(same(CombinedStats {
        coefficients: vec![t],
        ..Default::default()
    }))
}

/// A chain after one of its links.
pub(super) enum Linked {
    /// The state to hand on to the next link.
    Carry(ChainState),
    /// After the last link (which ended at the tensor's end): the chain's final state.
    Last(ChainState),
}

/// The norm streams of a chain's states over `n` elements.
pub(super) fn resumed_norms(n: u64, states: &[NormState]) -> Result<Vec<NormStream>, KernelError> {
    states
        .iter()
        .map(|s| NormStream::resume(n as usize, s.fed as usize, &s.acc, &s.tail))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("a norm state does not fit the tensor"))
}

/// The state a chain carries after link `pass` (`first`: the first link of its chain), which
/// must be one chunk that starts where the chain's norms stopped: the link's norms and every
/// link's sums so far. Also the link's range.
pub(super) fn carry(
    first: bool,
    pass: u32,
    partials: &[Partial<'_>],
    received: Option<&[CombinedStats]>,
) -> Result<(Range<u64>, ChainState), KernelError> {
    let [(range, stats)] = partials else {
        return Err(bad(format!("chain link {pass} has {} chunks, not one", partials.len())));
    };
    let link = stats
        .chain
        .as_ref()
        .ok_or_else(|| bad("a chain link without its state"))?;
    let mut carried = match (first, received.and_then(<[CombinedStats]>::first)) {
        (true, _) => ChainState::default(),
        (_, Some(c)) => c.chain.clone().ok_or_else(|| bad("a chain link received no state"))?,
        (_, None) => return Err(bad(format!("chain link {pass} without the state before it"))),
    };
    // Links are contiguous, in element order: each starts where the norms stopped.
    let fed_before = carried.norms.first().map_or(0, |s| s.fed);
    if range.start != fed_before || link.norms.iter().any(|s| s.fed != range.end) {
        return Err(bad(format!(
            "chain link {pass} covers {range:?}, but the chain stopped at element {fed_before}"
        )));
    }
    carried.norms = link.norms.clone();
    carried.sums.extend(link.sums.iter().cloned());
    Ok((range.clone(), carried))
}

/// nuslerp's interpolation `t` from the weights of its two models (the non-base inputs).
pub(crate) fn nuslerp_t(task: &MergeTask) -> Result<f64, KernelError> {
    let weights = task
        .inputs
        .iter()
        .filter(|i| !i.is_base)
        .map(|i| float(&i.params, "weight"))
        .collect::<Result<Vec<_>, _>>()?;
    let [w0, w1] = weights[..] else {
        return Err(KernelError::Contract(
            "nuslerp takes exactly 2 models besides the base".into(),
        ));
    };
    Ok(nuslerp::interpolation_t(w0, w1))
}

/// Indices of SLERP's base and other input.
pub(crate) fn slerp_inputs(task: &MergeTask) -> Result<(usize, usize), KernelError> {
    let b = task
        .inputs
        .iter()
        .position(|i| i.is_base)
        .ok_or_else(|| KernelError::Contract("slerp needs a base input".into()))?;
    if task.inputs.len() != 2 {
        let msg = format!("slerp needs exactly 2 inputs, got {}", task.inputs.len());
        return Err(KernelError::Contract(msg));
    }
    Ok((b, 1 - b))
}

/// The L1 rescale factor of every input that `rescales` (by index), from the cascade
/// partials of `|delta|` and of the masked `|delta|` of every chunk: DARE's after pass 1,
/// TIES' after pass 3. The chunks lie inside torch's summation parts.
fn rescale_factors(
    task: &MergeTask,
    pipeline: Pipeline,
    n: u64,
    partials: &[Partial<'_>],
    rescales: impl Fn(usize) -> Result<bool, KernelError>,
) -> Result<Vec<Option<f32>>, KernelError> {
    let kind = sum_kind(pipeline, task.working_dtype());
    let work = WorkDType::try_from(task.working_dtype())?;
    let parts = torch_parts(n as usize, DEFAULT_THREADS);
    let mut factors = Vec::new();
    for i in 0..task.inputs.len() {
        if !rescales(i)? {
            factors.push(None);
            continue;
        }
        let mut before = Vec::new();
        let mut after = Vec::new();
        for part in &parts {
            let of_part = |pick: fn(&shardmerge_proto::v1::InputStats) -> &Vec<f32>| {
                partials
                    .iter()
                    .filter(|(r, _)| r.start >= part.start as u64 && r.end <= part.end as u64)
                    .map(|(_, s)| {
                        let input = s.inputs.get(i).ok_or_else(|| bad("missing input"))?;
                        SumPartial::from_floats(pick(input)).map_err(bad)
                    })
                    .collect::<Result<Vec<_>, KernelError>>()
            };
            let sum = |ps: Vec<SumPartial>| torch_sum_partial::combine(kind, part.len(), &ps).map_err(bad);
            before.push(sum(of_part(|s| &s.sums)?)?);
            after.push(sum(of_part(|s| &s.masked_sums)?)?);
        }
        factors.push(if pipeline == Pipeline::MagnitudeRescale {
            with_precision!(work, P => sparsify::rescale_factor::<P>(n as usize, &before, &after))
        } else {
            with_precision!(work, P => rescale_factor::<P>(n as usize, &before, &after))
        });
    }
    Ok(factors)
}
