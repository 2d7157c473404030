//! Chunk tasks of methods with whole-tensor statistics: the statistics passes and the apply
//! pass that uses the combined statistics (see [`crate::chunk`]). Elementwise chunks run
//! through the ordinary kernels on the narrowed inputs.

use super::tensor_io::{Loader, Writer, sources};
use super::{float, gta_params};
use crate::chunk::{self, Pipeline, select};
use crate::error::{KernelError, TaskError};
use crate::kernels::della_chunk::{self, DellaMask};
use crate::kernels::gta::GtaError;
use crate::kernels::gta_masked::{self, Mask, MaskedInput};
use crate::kernels::magnitude_select::ChunkMask;
use crate::kernels::nuslerp::OUTER_GROUP;
use crate::kernels::sce_chunk::{self, Select};
use crate::kernels::slerp_stream;
use crate::kernels::torch_sum::{DEFAULT_THREADS, torch_parts};
use crate::kernels::{ram, sce};
use crate::methods::{self, MethodKind};
use crate::rng::Mt19937;
use crate::with_precision;
use shardmerge_proto::v1::{ChunkInfo, ChunkStats, CombinedStats, InputCombined, InputStats, MergeTask};
use std::ops::Range;

/// One chunk task being run: the task, its chunk and, for an apply chunk, its output.
pub(super) struct ChunkRun<'a> {
    /// The task.
    pub(super) task: &'a MergeTask,
    /// The task's chunk.
    pub(super) info: &'a ChunkInfo,
    /// Where an apply chunk writes its values (`None` for a statistics pass).
    pub(super) out: Option<&'a Writer<'a>>,
}

impl<'a> ChunkRun<'a> {
    /// Chunk `info` of `task`, writing to `out` if it is an apply chunk.
    pub(super) fn new(task: &'a MergeTask, info: &'a ChunkInfo, out: Option<&'a Writer<'a>>) -> Self {
        ChunkRun { task, info, out }
    }

    /// Turns a kernel's error into the task's.
    pub(super) fn err(&self) -> impl Fn(KernelError) -> TaskError + 'a {
        let task = self.task;
        move |source| TaskError::Kernel {
            tensor: task.tensor.clone(),
            source,
        }
    }

    /// A broken contract between the planner and this chunk: `msg` says which.
    pub(super) fn contract(&self, msg: impl Into<String>) -> TaskError {
        self.err()(KernelError::Contract(msg.into()))
    }

    /// The statistics this chunk received, required from pass 2 on and for apply.
    pub(super) fn received(&self) -> Result<&'a CombinedStats, TaskError> {
        let info = self.info;
        info.stats
            .as_ref()
            .ok_or_else(|| self.contract(format!("chunk pass {} dispatched without statistics", info.pass)))
    }

    /// The output an apply chunk writes to.
    pub(super) fn output(&self) -> Result<&'a Writer<'a>, TaskError> {
        self.out.ok_or_else(|| self.contract("apply chunk without output"))
    }

    /// The output an apply chunk writes to, as the streamed kernels' sink (values at an
    /// element offset).
    pub(super) fn sink(&self) -> Result<impl Fn(usize, &[f32]) -> Result<(), TaskError> + Sync + 'a, TaskError> {
        let out = self.output()?;
        Ok(move |start: usize, values: &[f32]| out.write(start, values))
    }

    /// The part of a sum torch runs on `threads` threads that a statistics chunk lies in, and
    /// the chunk's element range.
    pub(super) fn part_of(&self, threads: usize) -> Result<(Range<usize>, Range<usize>), TaskError> {
        let info = self.info;
        let total = info.tensor_numel as usize;
        let range = info.start as usize..(info.start + info.len) as usize;
        let part = torch_parts(total, threads)
            .into_iter()
            .find(|p| p.contains(&range.start) && range.end <= p.end)
            .ok_or_else(|| self.contract("a statistics chunk crosses torch's summation parts"))?;
        Ok((part, range))
    }

    /// The length of the summation part (of a sum torch runs on `threads` threads) a
    /// statistics chunk lies in, and the chunk's offset in it.
    fn sum_part(&self, threads: usize) -> Result<(usize, usize), TaskError> {
        let (part, range) = self.part_of(threads)?;
        Ok((part.len(), range.start - part.start))
    }
}

/// Runs a chunk task of a tensor with statistics passes: a statistics pass returns its
/// partial statistics, the apply pass writes through `run.out` and returns `None`.
pub(super) fn run(run: &ChunkRun<'_>, loader: &mut Loader<'_>) -> Result<Option<ChunkStats>, TaskError> {
    let (task, info) = (run.task, run.info);
    let pipeline = chunk::pipeline(task).map_err(run.err())?;
    if !pipeline.chained() && pipeline.passes() != info.passes {
        return Err(run.contract(format!(
            "{pipeline:?} has {} passes, the task says {}",
            pipeline.passes(),
            info.passes
        )));
    }
    let n = loader.numel;
    let work = loader.work;
    match pipeline {
        Pipeline::Slerp => {
            let (b, o) = chunk::combine::slerp_inputs(task).map_err(run.err())?;
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
                    let s = run.received()?;
                    let [na, nb] = s.slerp[..] else {
                        return Err(run.contract("slerp pass 2 needs two norms"));
                    };
                    let dots = slerp_stream::block_dots(n, &base, &other, na, nb)?;
                    Ok(Some(ChunkStats {
                        inputs: Vec::new(),
                        dots,
                        ..Default::default()
                    }))
                }
                _ => {
                    let sink = run.sink()?;
                    let s = run.received()?;
                    let [ca, cb] = s.slerp[..] else {
                        return Err(run.contract("slerp apply needs two coefficients"));
                    };
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
        | Pipeline::RankedRescale => gta(run, pipeline, loader),
        Pipeline::Sce => sce(run, loader),
        Pipeline::RamPlus => ram_plus(run, loader),
        Pipeline::Chain => super::chained::model_stock(run, loader),
        Pipeline::NuslerpChain => super::chained::nuslerp(run, loader),
        Pipeline::Multislerp => super::chained::multislerp(run, loader),
        Pipeline::Arcee => super::arcee_chunked::run(run, loader),
        Pipeline::Karcher => super::chained::karcher(run, loader),
        Pipeline::NuslerpColumns => super::chained::nuslerp_columns(run, loader),
        Pipeline::Elementwise | Pipeline::Rows | Pipeline::Whole => {
            Err(run.contract(format!("{pipeline:?} has no chunk passes")))
        }
    }
}

/// ramplus_tl: the counting pass and apply, over the chunk's inputs loaded whole.
fn ram_plus(run: &ChunkRun<'_>, loader: &mut Loader<'_>) -> Result<Option<ChunkStats>, TaskError> {
    let (task, info) = (run.task, run.info);
    let err = run.err();
    let (b, others) = super::whole::split_base(task).map_err(&err)?;
    let epsilon = float(&task.shared_params, "epsilon").map_err(&err)?;
    let mut base = loader.load(b)?;
    let loaded = loader.load_all(others.iter().copied())?;
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
    let out = run.output()?;
    let lambda = &run.received()?.coefficients;
    if lambda.len() != xs.len() {
        return Err(run.contract("ramplus_tl apply needs one lambda per model"));
    }
    let (start, numel) = (info.start as usize, info.tensor_numel as usize);
    with_precision!(work, P => ram::plus_apply::<P>(&mut base, &xs, epsilon, lambda, start, numel));
    out.write_all(&base)?;
    Ok(None)
}

/// sce: the three statistics passes (see [`sce_chunk`]) and apply.
fn sce(run: &ChunkRun<'_>, loader: &mut Loader<'_>) -> Result<Option<ChunkStats>, TaskError> {
    let (task, info) = (run.task, run.info);
    let (b, others) = super::whole::split_base(task).map_err(run.err())?;
    let base = loader.open(b)?;
    let opened = loader.open_all(others.iter().copied())?;
    let xs = sources(&opened);
    let (n, work) = (loader.numel, loader.work);
    let selection = |r: &InputCombined| match (r.keep_all, r.keep_none) {
        (true, _) => Select::All,
        (_, true) => Select::Nothing,
        _ => Select::TopK(ChunkMask::new(r.threshold, r.keep_ties)),
    };
    let received_selection = || -> Result<InputCombined, TaskError> {
        run.received()?
            .inputs
            .first()
            .cloned()
            .ok_or_else(|| run.contract("sce chunk without its selection"))
    };
    let high = match info.pass {
        1 => None,
        2 => {
            let r = received_selection()?;
            if r.keep_all || r.keep_none {
                return Ok(Some(ChunkStats::default()));
            }
            Some(u16::try_from(r.high_bin).map_err(|_| run.contract("high bin out of range"))?)
        }
        3 => {
            let select = selection(&received_selection()?);
            let (part_len, offset) = run.sum_part(sce::mean_square_threads(xs.len()))?;
            let partials = with_precision!(work, P => sce_chunk::mean_squares::<P, TaskError>(
                part_len, offset, n, &base, &xs, select
            ))?
            .map_err(|e| run.contract(e))?;
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
            let sink = run.sink()?;
            let s = run.received()?;
            if s.coefficients.len() != xs.len() {
                return Err(run.contract("sce apply needs one weight per model"));
            }
            let select = selection(&received_selection()?);
            let total = info.tensor_numel as usize;
            let grouped = total / OUTER_GROUP * OUTER_GROUP;
            with_precision!(work, P => sce_chunk::apply::<P, TaskError>(
                n, info.start as usize, grouped, &base, &xs, select, &s.coefficients, &sink
            ))?;
            return Ok(None);
        }
    };
    let topk = float(&task.shared_params, "select_topk").map_err(run.err())?;
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
fn gta(run: &ChunkRun<'_>, pipeline: Pipeline, loader: &mut Loader<'_>) -> Result<Option<ChunkStats>, TaskError> {
    let (task, info) = (run.task, run.info);
    let err = run.err();
    let spec = methods::lookup(&task.method).ok_or_else(|| err(KernelError::UnknownMethod(task.method.clone())))?;
    let MethodKind::Gta(variant) = spec.kind else {
        return Err(run.contract("not a task-arithmetic method"));
    };
    let (opts, b, params) = gta_params(task).map_err(&err)?;
    let n = loader.numel;
    let work = loader.work;
    let base = loader.open(b)?;
    let opened = loader.open_all(params.iter().map(|p| p.index))?;
    let total = info.tensor_numel;
    // A DELLA statistics chunk reads the whole ranking blocks around its range (its window).
    let window = chunk::read_range(task).ok_or_else(|| run.contract("not a chunk task"))?;
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
                    let (part_len, offset) = run.sum_part(DEFAULT_THREADS)?;
                    let kind = chunk::sum_kind(pipeline, task.working_dtype());
                    let (before, after) = with_precision!(work, P => della_chunk::sums::<P, TaskError>(
                        kind, part_len, offset, &base, x, window_len, skip, n, &mask
                    ))?
                    .map_err(|e| run.contract(e))?;
                    stats.sums = before.to_floats();
                    stats.masked_sums = after.to_floats();
                }
                Pipeline::RandomRescale if density < 1.0 => {
                    let rng = rng.ok_or_else(|| err(KernelError::Gta(GtaError::MissingRng(i))))?;
                    let (part_len, offset) = run.sum_part(DEFAULT_THREADS)?;
                    let kind = chunk::sum_kind(pipeline, task.working_dtype());
                    let (before, after) = with_precision!(work, P => gta_masked::random_sums::<P, TaskError>(
                        kind, part_len, offset, n, &base, x, density, rng
                    ))?
                    .map_err(|e| run.contract(e))?;
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
                    let r = run
                        .received()?
                        .inputs
                        .get(i)
                        .ok_or_else(|| run.contract("missing input"))?;
                    if info.pass == 2 {
                        let [lower, upper] = select::pass2_bins(r, sel).map_err(&err)?;
                        let lower = lower.map(|h| histogram(Some(h))).transpose()?;
                        let upper = upper.map(|h| histogram(Some(h))).transpose()?;
                        select::store_pass2(stats, lower, upper);
                        continue;
                    }
                    let mask = select::select_mask(r, sel);
                    let (part_len, offset) = run.sum_part(DEFAULT_THREADS)?;
                    let kind = chunk::sum_kind(pipeline, task.working_dtype());
                    let (before, after) = with_precision!(work, P => gta_masked::selection_sums::<P, TaskError>(
                        kind, part_len, offset, n, &base, x, mask
                    ))?
                    .map_err(|e| run.contract(e))?;
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
    let sink = run.sink()?;
    let none = CombinedStats::default();
    let s = match pipeline {
        Pipeline::Ranked => &none,
        _ => run.received()?,
    };
    let mut masked = Vec::new();
    for (p, x) in params.into_iter().zip(&opened) {
        let (i, weight, density, rng) = (p.index, p.weight, p.density, p.rng);
        let none = InputCombined::default();
        let r = match pipeline {
            Pipeline::Ranked => &none,
            _ => s.inputs.get(i).ok_or_else(|| run.contract("missing input"))?,
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
    with_precision!(work, P => gta_masked::merge_masked::<P, TaskError>(variant, opts, n, &base, masked, &sink))?;
    Ok(None)
}
