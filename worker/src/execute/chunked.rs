//! Chunk tasks of methods with whole-tensor statistics: the statistics passes and the apply
//! pass that uses the combined statistics (see [`crate::chunk`]). Elementwise chunks run
//! through the ordinary kernels on the narrowed inputs.

use super::tensor_io::{Loader, Writer};
use super::{float, gta_params};
use crate::chunk::{self, Pipeline, select};
use crate::error::{KernelError, TaskError};
use crate::kernels::della_chunk::{self, DellaMask};
use crate::kernels::gta::GtaError;
use crate::kernels::gta_masked::{self, Mask, MaskedInput};
use crate::kernels::gta_stream::ChunkSource;
use crate::kernels::magnitude_select::ChunkMask;
use crate::kernels::nuslerp::OUTER_GROUP;
use crate::kernels::sce_chunk::{self, Select};
use crate::kernels::slerp_stream;
use crate::kernels::torch_sum::DEFAULT_THREADS;
use crate::kernels::{ram, sce};
use crate::methods::{self, MethodKind};
use crate::rng::Mt19937;
use crate::with_precision;
use shardmerge_proto::v1::{ChunkInfo, ChunkStats, CombinedStats, InputCombined, InputStats, MergeTask};

pub(super) fn kernel_err(task: &MergeTask) -> impl Fn(KernelError) -> TaskError + '_ {
    |source| TaskError::Kernel {
        tensor: task.tensor.clone(),
        source,
    }
}

pub(super) fn contract(task: &MergeTask, msg: impl Into<String>) -> TaskError {
    kernel_err(task)(KernelError::Contract(msg.into()))
}

/// The statistics this chunk received, required from pass 2 on and for apply.
pub(super) fn received<'t>(task: &'t MergeTask, info: &'t ChunkInfo) -> Result<&'t CombinedStats, TaskError> {
    info.stats
        .as_ref()
        .ok_or_else(|| contract(task, format!("chunk pass {} dispatched without statistics", info.pass)))
}

/// Runs a chunk task of a tensor with statistics passes: a statistics pass returns its
/// partial statistics, the apply pass writes through `out` and returns `None`.
pub(super) fn run(
    task: &MergeTask,
    info: &ChunkInfo,
    loader: &mut Loader<'_>,
    out: Option<&Writer<'_>>,
) -> Result<Option<ChunkStats>, TaskError> {
    let pipeline = chunk::pipeline(task).map_err(kernel_err(task))?;
    if !pipeline.chained() && pipeline.passes() != info.passes {
        return Err(contract(
            task,
            format!(
                "{pipeline:?} has {} passes, the task says {}",
                pipeline.passes(),
                info.passes
            ),
        ));
    }
    let n = loader.numel;
    let work = loader.work;
    match pipeline {
        Pipeline::Slerp => {
            let (b, o) = chunk::combine::slerp_inputs(task).map_err(kernel_err(task))?;
            let base = loader.open(b)?;
            let other = loader.open(o)?;
            match info.pass {
                1 => {
                    let (pa, pb) = slerp_stream::block_norms(n, &base, &other)?;
                    let mut inputs = vec![InputStats::default(); 2];
                    inputs[b].sums = pa;
                    inputs[o].sums = pb;
                    Ok(Some(ChunkStats {
                        inputs,
                        dots: Vec::new(),
                        ..Default::default()
                    }))
                }
                2 => {
                    let s = received(task, info)?;
                    let [na, nb] = s.slerp[..] else {
                        return Err(contract(task, "slerp pass 2 needs two norms"));
                    };
                    let dots = slerp_stream::block_dots(n, &base, &other, na, nb)?;
                    Ok(Some(ChunkStats {
                        inputs: Vec::new(),
                        dots,
                        ..Default::default()
                    }))
                }
                _ => {
                    let out = out.ok_or_else(|| contract(task, "apply chunk without output"))?;
                    let s = received(task, info)?;
                    let [ca, cb] = s.slerp[..] else {
                        return Err(contract(task, "slerp apply needs two coefficients"));
                    };
                    let sink = |start: usize, values: &[f32]| out.write(start, values);
                    with_precision!(work, P => slerp_stream::interpolate_streamed::<P, TaskError>(
                        n, &base, &other, ca, cb, &sink
                    ))?;
                    Ok(None)
                }
            }
        }
        Pipeline::RandomRescale
        | Pipeline::Magnitude
        | Pipeline::MagnitudeRescale
        | Pipeline::Ranked
        | Pipeline::RankedRescale => gta(task, info, pipeline, loader, out),
        Pipeline::Sce => sce(task, info, loader, out),
        Pipeline::RamPlus => ram_plus(task, info, loader, out),
        Pipeline::Chain => super::chained::model_stock(task, info, loader, out),
        Pipeline::NuslerpChain => super::chained::nuslerp(task, info, loader, out),
        Pipeline::Multislerp => super::chained::multislerp(task, info, loader, out),
        Pipeline::Arcee => super::arcee_chunked::run(task, info, loader, out),
        Pipeline::Karcher => super::chained::karcher(task, info, loader, out),
        Pipeline::NuslerpColumns => super::chained::nuslerp_columns(task, info, loader, out),
        Pipeline::Elementwise | Pipeline::Rows | Pipeline::Whole => {
            Err(contract(task, format!("{pipeline:?} has no chunk passes")))
        }
    }
}

/// The length of the torch summation part a statistics chunk lies in, and the chunk's offset
/// in it.
fn sum_part(task: &MergeTask, info: &ChunkInfo) -> Result<(usize, usize), TaskError> {
    sum_part_in(task, info, DEFAULT_THREADS)
}

/// [`sum_part`] of a sum torch runs on `threads` threads.
fn sum_part_in(task: &MergeTask, info: &ChunkInfo, threads: usize) -> Result<(usize, usize), TaskError> {
    let (part, range) = super::chained::part_of(task, info, threads)?;
    Ok((part.len(), range.start - part.start))
}

/// ramplus_tl: the counting pass and apply, over the chunk's inputs loaded whole.
fn ram_plus(
    task: &MergeTask,
    info: &ChunkInfo,
    loader: &mut Loader<'_>,
    out: Option<&Writer<'_>>,
) -> Result<Option<ChunkStats>, TaskError> {
    let err = kernel_err(task);
    let (b, others) = super::whole::split_base(task).map_err(&err)?;
    let epsilon = float(&task.shared_params, "epsilon").map_err(&err)?;
    let mut base = loader.load(b)?;
    let loaded = others.iter().map(|&i| loader.load(i)).collect::<Result<Vec<_>, _>>()?;
    let xs: Vec<&[f32]> = loaded.iter().map(|x| &x[..]).collect();
    let work = loader.work;
    if info.pass == 1 {
        let counts = with_precision!(work, P => ram::plus_counts::<P>(&base, &xs, epsilon));
        let mut inputs = vec![InputStats::default(); task.inputs.len()];
        for (&i, (shared, unique)) in others.iter().zip(counts) {
            inputs[i].shared = shared;
            inputs[i].unique = unique;
        }
        return Ok(Some(ChunkStats {
            inputs,
            ..Default::default()
        }));
    }
    let out = out.ok_or_else(|| contract(task, "apply chunk without output"))?;
    let lambda = &received(task, info)?.coefficients;
    if lambda.len() != xs.len() {
        return Err(contract(task, "ramplus_tl apply needs one lambda per model"));
    }
    let (start, numel) = (info.start as usize, info.tensor_numel as usize);
    with_precision!(work, P => ram::plus_apply::<P>(&mut base, &xs, epsilon, lambda, start, numel));
    out.write_all(&base)?;
    Ok(None)
}

/// sce: the three statistics passes (see [`sce_chunk`]) and apply.
fn sce(
    task: &MergeTask,
    info: &ChunkInfo,
    loader: &mut Loader<'_>,
    out: Option<&Writer<'_>>,
) -> Result<Option<ChunkStats>, TaskError> {
    let err = kernel_err(task);
    let (b, others) = super::whole::split_base(task).map_err(&err)?;
    let base = loader.open(b)?;
    let opened = others.iter().map(|&i| loader.open(i)).collect::<Result<Vec<_>, _>>()?;
    let xs: Vec<&dyn ChunkSource<TaskError>> = opened.iter().map(|o| o as &dyn ChunkSource<TaskError>).collect();
    let (n, work) = (loader.numel, loader.work);
    let selection = |r: &InputCombined| match (r.keep_all, r.keep_none) {
        (true, _) => Select::All,
        (_, true) => Select::Nothing,
        _ => Select::TopK(ChunkMask::new(r.threshold, r.keep_ties)),
    };
    let received_selection = || -> Result<InputCombined, TaskError> {
        received(task, info)?
            .inputs
            .first()
            .cloned()
            .ok_or_else(|| contract(task, "sce chunk without its selection"))
    };
    let high = match info.pass {
        1 => None,
        2 => {
            let r = received_selection()?;
            if r.keep_all || r.keep_none {
                return Ok(Some(ChunkStats::default()));
            }
            Some(u16::try_from(r.high_bin).map_err(|_| contract(task, "high bin out of range"))?)
        }
        3 => {
            let select = selection(&received_selection()?);
            let (part_len, offset) = sum_part_in(task, info, sce::mean_square_threads(xs.len()))?;
            let partials = with_precision!(work, P => sce_chunk::mean_squares::<P, TaskError>(
                part_len, offset, n, &base, &xs, select
            ))?
            .map_err(|e| contract(task, e))?;
            let mut inputs = vec![InputStats::default(); task.inputs.len()];
            for (&i, p) in others.iter().zip(partials) {
                inputs[i].sums = p.to_floats();
            }
            return Ok(Some(ChunkStats {
                inputs,
                ..Default::default()
            }));
        }
        _ => {
            let out = out.ok_or_else(|| contract(task, "apply chunk without output"))?;
            let s = received(task, info)?;
            if s.coefficients.len() != xs.len() {
                return Err(contract(task, "sce apply needs one weight per model"));
            }
            let select = selection(&received_selection()?);
            let total = info.tensor_numel as usize;
            let grouped = total / OUTER_GROUP * OUTER_GROUP;
            let sink = |start: usize, values: &[f32]| out.write(start, values);
            with_precision!(work, P => sce_chunk::apply::<P, TaskError>(
                n, info.start as usize, grouped, &base, &xs, select, &s.coefficients, &sink
            ))?;
            return Ok(None);
        }
    };
    let topk = float(&task.shared_params, "select_topk").map_err(&err)?;
    if info.pass == 1 && !(topk > 0.0 && topk < 1.0) {
        // No selection: the combine step ignores pass 1.
        return Ok(Some(ChunkStats::default()));
    }
    let (h, zeros) = with_precision!(work, P => sce_chunk::histogram::<P, TaskError>(n, &base, &xs, high))?;
    let stats = InputStats {
        bins: h.bins,
        counts: h.counts,
        zeros,
        ..Default::default()
    };
    Ok(Some(ChunkStats {
        inputs: vec![stats],
        ..Default::default()
    }))
}

/// The task-arithmetic family's statistics and apply passes.
fn gta(
    task: &MergeTask,
    info: &ChunkInfo,
    pipeline: Pipeline,
    loader: &mut Loader<'_>,
    out: Option<&Writer<'_>>,
) -> Result<Option<ChunkStats>, TaskError> {
    let err = kernel_err(task);
    let spec = methods::lookup(&task.method).ok_or_else(|| err(KernelError::UnknownMethod(task.method.clone())))?;
    let MethodKind::Gta(variant) = spec.kind else {
        return Err(contract(task, "not a task-arithmetic method"));
    };
    let (opts, b, params) = gta_params(task).map_err(&err)?;
    let n = loader.numel;
    let work = loader.work;
    let base = loader.open(b)?;
    let opened = params
        .iter()
        .map(|p| loader.open(p.index))
        .collect::<Result<Vec<_>, _>>()?;
    let total = info.tensor_numel;
    // A DELLA statistics chunk reads the whole ranking blocks around its range (its window).
    let window = chunk::read_range(task).ok_or_else(|| contract(task, "not a chunk task"))?;
    let (window_len, skip) = (
        (window.end - window.start) as usize,
        (info.start - window.start) as usize,
    );
    // DELLA draws (and needs the input's stream) only for `0 < density < 1`.
    let della = |i: usize, rng: Option<Mt19937>, density: f64, epsilon: f64| -> Result<DellaMask, TaskError> {
        let rng = match crate::kernels::della::draws(density) {
            true => rng.ok_or_else(|| err(KernelError::Gta(GtaError::MissingRng(i))))?,
            false => Mt19937::new(0),
        };
        Ok(DellaMask {
            rng,
            density,
            epsilon,
            rows: opts.rows,
        })
    };
    if info.pass >= 1 {
        let mut inputs = vec![InputStats::default(); task.inputs.len()];
        for (p, x) in params.into_iter().zip(&opened) {
            let (i, density, rng) = (p.index, p.density, p.rng);
            let stats = &mut inputs[i];
            match pipeline {
                Pipeline::RankedRescale if density < 1.0 => {
                    let mask = della(i, rng, density, p.epsilon)?;
                    let (part_len, offset) = sum_part(task, info)?;
                    let kind = chunk::sum_kind(pipeline, task.working_dtype());
                    let (before, after) = with_precision!(work, P => della_chunk::sums::<P, TaskError>(
                        kind, part_len, offset, &base, x, window_len, skip, n, &mask
                    ))?
                    .map_err(|e| contract(task, e))?;
                    stats.sums = before.to_floats();
                    stats.masked_sums = after.to_floats();
                }
                Pipeline::RandomRescale if density < 1.0 => {
                    let rng = rng.ok_or_else(|| err(KernelError::Gta(GtaError::MissingRng(i))))?;
                    let (part_len, offset) = sum_part(task, info)?;
                    let kind = chunk::sum_kind(pipeline, task.working_dtype());
                    let (before, after) = with_precision!(work, P => gta_masked::random_sums::<P, TaskError>(
                        kind, part_len, offset, n, &base, x, density, rng
                    ))?
                    .map_err(|e| contract(task, e))?;
                    stats.sums = before.to_floats();
                    stats.masked_sums = after.to_floats();
                }
                Pipeline::Magnitude | Pipeline::MagnitudeRescale => {
                    let Some(sel) = select::selection(task, i, total).map_err(&err)? else {
                        continue;
                    };
                    let histogram = |high: Option<u16>| with_precision!(work, P => gta_masked::magnitude_histogram::<P, TaskError>(n, &base, x, high));
                    if info.pass == 1 {
                        let h = histogram(None)?;
                        stats.bins = h.bins;
                        stats.counts = h.counts;
                        continue;
                    }
                    let r = received(task, info)?
                        .inputs
                        .get(i)
                        .ok_or_else(|| contract(task, "missing input"))?;
                    if info.pass == 2 {
                        let [lower, upper] = select::pass2_bins(r, sel).map_err(&err)?;
                        let lower = lower.map(|h| histogram(Some(h))).transpose()?;
                        let upper = upper.map(|h| histogram(Some(h))).transpose()?;
                        select::store_pass2(stats, lower, upper);
                        continue;
                    }
                    let mask = select::select_mask(r, sel);
                    let (part_len, offset) = sum_part(task, info)?;
                    let kind = chunk::sum_kind(pipeline, task.working_dtype());
                    let (before, after) = with_precision!(work, P => gta_masked::selection_sums::<P, TaskError>(
                        kind, part_len, offset, n, &base, x, mask
                    ))?
                    .map_err(|e| contract(task, e))?;
                    stats.sums = before.to_floats();
                    stats.masked_sums = after.to_floats();
                }
                _ => {}
            }
        }
        return Ok(Some(ChunkStats {
            inputs,
            dots: Vec::new(),
            ..Default::default()
        }));
    }
    let out = out.ok_or_else(|| contract(task, "apply chunk without output"))?;
    let none = CombinedStats::default();
    let s = match pipeline {
        Pipeline::Ranked => &none,
        _ => received(task, info)?,
    };
    let mut masked = Vec::new();
    for (p, x) in params.into_iter().zip(&opened) {
        let (i, weight, density, rng) = (p.index, p.weight, p.density, p.rng);
        let none = InputCombined::default();
        let r = match pipeline {
            Pipeline::Ranked => &none,
            _ => s.inputs.get(i).ok_or_else(|| contract(task, "missing input"))?,
        };
        let mask = match pipeline {
            Pipeline::Ranked | Pipeline::RankedRescale if density >= 1.0 => Mask::Keep,
            Pipeline::Ranked | Pipeline::RankedRescale if density <= 0.0 => Mask::Drop,
            Pipeline::Ranked | Pipeline::RankedRescale => Mask::Della(Box::new(della(i, rng, density, p.epsilon)?)),
            Pipeline::RandomRescale if density < 1.0 => Mask::Random {
                rng: Box::new(rng.ok_or_else(|| err(KernelError::Gta(GtaError::MissingRng(i))))?),
                density,
            },
            Pipeline::Magnitude | Pipeline::MagnitudeRescale if r.keep_none => Mask::Drop,
            Pipeline::Magnitude | Pipeline::MagnitudeRescale => {
                match select::selection(task, i, total).map_err(&err)? {
                    Some(sel) => Mask::Select(select::select_mask(r, sel)),
                    None => Mask::Keep,
                }
            }
            _ => Mask::Keep,
        };
        masked.push(MaskedInput {
            source: x,
            weight,
            mask,
            scale: r.rescale,
        });
    }
    let sink = |start: usize, values: &[f32]| out.write(start, values);
    with_precision!(work, P => gta_masked::merge_masked::<P, TaskError>(variant, opts, n, &base, masked, &sink))?;
    Ok(None)
}
