//! Chunk tasks of the chained pipelines (see [`crate::chunk`]): a link of a statistics
//! chain continues torch's serial norms over its range (and, for model_stock, returns its dot
//! partials); nuslerp then takes its normalised dot in one parallel pass (multislerp: three
//! chains around a dot pass); apply chunks interpolate with the coefficients.

use super::chunked::ChunkRun;
use super::streamed::NuslerpInputs;
use super::tensor_io::{Loader, sources};
use crate::chunk::tensor_shape;
use crate::chunk::{karcher_combine, multislerp_combine};
use crate::error::TaskError;
use crate::execute::{boolean, float};
use crate::kernels::gta_stream::ChunkSource;
use crate::kernels::karcher_stream::{self, DotStream, Feeds, Stage};
use crate::kernels::multislerp_stream::{self, Setup, Stats};
use crate::kernels::nuslerp::Coefficients;
use crate::kernels::nuslerp::Vectors;
use crate::kernels::nuslerp_columns::{Columns, DOT_STATE};
use crate::kernels::nuslerp_stream;
use crate::kernels::stream_ops;
use crate::kernels::torch_norm::NormStream;
use crate::kernels::torch_sum::DEFAULT_THREADS;
use crate::kernels::{model_stock_chain, model_stock_stream};
use crate::with_precision;
use shardmerge_proto::v1::{ChainState, ChunkInfo, ChunkStats, LinkSum, NormState};

/// The norms a link continues: fresh ones for the first link of its chain (`first`), else
/// the state it received.
fn chain_norms(run: &ChunkRun<'_>, count: usize, first: bool) -> Result<Vec<NormStream>, TaskError> {
    let info = run.info;
    let total = info.tensor_numel as usize;
    let norms: Vec<NormStream> = match first {
        true => (0..count).map(|_| NormStream::new(total)).collect(),
        _ => run
            .received()?
            .chain
            .as_ref()
            .map(|c| &c.norms[..])
            .unwrap_or_default()
            .iter()
            .map(|s| NormStream::resume(total, s.fed as usize, &s.acc, &s.tail))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| run.contract("a norm state does not fit the tensor"))?,
    };
    if norms.len() != count || norms.iter().any(|n| n.state().0 as u64 != info.start) {
        return Err(run.contract("the chain's norms do not stop where this link starts"));
    }
    Ok(norms)
}

/// What a link returns: its norms' states and its sums' partials.
fn link_stats(info: &ChunkInfo, norms: &[NormStream], sums: Vec<Vec<f32>>) -> ChunkStats {
    let state = |n: &NormStream| {
        let (fed, acc, tail) = n.state();
        NormState {
            fed: fed as u64,
            acc: acc.to_vec(),
            tail: tail.to_vec(),
            sum: 0.0,
        }
    };
    let sums = sums
        .into_iter()
        .map(|partial| LinkSum {
            start: info.start,
            partial,
        })
        .collect();
    chained(norms.iter().map(state).collect(), sums)
}

/// A link's statistics: the states of its chain's norms (or dots) and sums.
fn chained(norms: Vec<NormState>, sums: Vec<LinkSum>) -> ChunkStats {
    ChunkStats {
        chain: Some(ChainState { norms, sums }),
        ..Default::default()
    }
}

/// model_stock of one vector: a link of the statistics chain, or an apply chunk at the ratio.
pub(super) fn model_stock(run: &ChunkRun<'_>, loader: &mut Loader<'_>) -> Result<Option<ChunkStats>, TaskError> {
    let (task, info) = (run.task, run.info);
    let (b, others) = super::whole::split_base(task).map_err(run.err())?;
    let base = loader.open(b)?;
    let opened = loader.open_all(others)?;
    let refs = sources(&opened);
    let work = loader.work;
    if info.pass == 0 {
        let sink = run.sink()?;
        let &[t] = &run.received()?.coefficients[..] else {
            return Err(run.contract("model_stock apply needs its ratio"));
        };
        with_precision!(work, P => model_stock_stream::apply_pass::<P, TaskError>(loader.numel, t, &base, &refs, &sink))?;
        return Ok(None);
    }
    let (part, range) = run.part_of(DEFAULT_THREADS)?;
    let mut norms = chain_norms(run, refs.len(), info.pass == 1)?;
    let sums = with_precision!(work, P => model_stock_chain::link::<P, TaskError>(
        part, range, &base, &refs, &mut norms
    ))?
    .map_err(|e| run.contract(e))?;
    Ok(Some(link_stats(
        info,
        &norms,
        sums.iter().map(|p| p.to_floats()).collect(),
    )))
}

/// nuslerp of one vector: a link of the norms' chain, a chunk of the dot pass, or an apply
/// chunk with the interpolation coefficients.
pub(super) fn nuslerp(run: &ChunkRun<'_>, loader: &mut Loader<'_>) -> Result<Option<ChunkStats>, TaskError> {
    let (task, info) = (run.task, run.info);
    let opened = NuslerpInputs::open(task, loader)?;
    let inputs = opened.inputs();
    let work = loader.work;
    let links = info.passes - 1;
    if info.pass == 0 {
        let sink = run.sink()?;
        let coef = Coefficients::from_floats(&run.received()?.coefficients)
            .ok_or_else(|| run.contract("nuslerp apply needs its coefficients"))?;
        with_precision!(work, P => nuslerp_stream::apply::<P, TaskError>(loader.numel, &inputs, coef, &sink))?;
        return Ok(None);
    }
    let (part, range) = run.part_of(DEFAULT_THREADS)?;
    if info.pass <= links {
        let mut norms = chain_norms(run, 2, info.pass == 1)?;
        let pair: &mut [NormStream; 2] = (&mut norms[..])
            .try_into()
            .map_err(|_| run.contract("nuslerp takes two norms"))?;
        with_precision!(work, P => nuslerp_stream::link_norms::<P, TaskError>(range.len(), &inputs, pair))?;
        return Ok(Some(link_stats(info, &norms, Vec::new())));
    }
    let &[n0, n1] = &run.received()?.coefficients[..] else {
        return Err(run.contract("nuslerp's dot pass needs the two norms"));
    };
    let partial = with_precision!(work, P => nuslerp_stream::dot_partial::<P, TaskError>(
        part, range, &inputs, n0, n1
    ))?
    .map_err(|e| run.contract(e))?;
    Ok(Some(link_stats(info, &[], vec![partial.to_floats()])))
}

/// multislerp: a link of one of its three chains, a chunk of its dot pass, or an apply chunk
/// (see [`crate::kernels::multislerp_stream`]).
pub(super) fn multislerp(run: &ChunkRun<'_>, loader: &mut Loader<'_>) -> Result<Option<ChunkStats>, TaskError> {
    let (task, info) = (run.task, run.info);
    let err = run.err();
    let (b, others) = super::whole::base_and_models(task);
    let weights = super::whole::model_weights(task, &others).map_err(&err)?;
    let normalize = boolean(&task.shared_params, "normalize_weights").map_err(&err)?;
    let eps = float(&task.shared_params, "eps").map_err(&err)?;
    let base = b.map(|b| loader.open(b)).transpose()?;
    let opened = loader.open_all(others.iter().copied())?;
    let inputs = multislerp_stream::Inputs {
        xs: sources(&opened),
        base: base.as_ref().map(|b| b as &dyn ChunkSource<TaskError>),
    };
    let (work, len, k) = (loader.work, loader.numel, others.len());
    let stats = match info.pass {
        1 => Stats::default(),
        _ => Stats::from_floats(k, &run.received()?.coefficients)
            .ok_or_else(|| run.contract("malformed multislerp statistics"))?,
    };
    let setup = with_precision!(work, P => Setup::new::<P>(&weights, normalize, eps));
    let inner = |r: Result<(), String>| r.map_err(|e| run.contract(e));
    if info.pass == 0 {
        let sink = run.sink()?;
        inner(
            with_precision!(work, P => multislerp_stream::apply::<P, TaskError>(len, &inputs, &setup, &stats, &sink))?,
        )?;
        return Ok(None);
    }
    let (stage, link) = multislerp_combine::stage(info.pass, info.passes);
    let Some(link) = link else {
        let (part, range) = run.part_of(1)?;
        let partials = with_precision!(work, P => multislerp_stream::dot_partials::<P, TaskError>(
            part.len(), range, &inputs, &setup, &stats
        ))?
        .map_err(|e| run.contract(e))?;
        return Ok(Some(link_stats(
            info,
            &[],
            partials.iter().map(|p| p.to_floats()).collect(),
        )));
    };
    let count = if stage == 1 { k } else { 1 };
    let mut norms = chain_norms(run, count, link == 0)?;
    match stage {
        1 => with_precision!(work, P => multislerp_stream::link_norms::<P, TaskError>(len, &inputs, &mut norms))?,
        2 => with_precision!(work, P => multislerp_stream::link_mean_norm::<P, TaskError>(
            len, &inputs, &setup, &stats, &mut norms[0]
        ))?,
        _ => inner(
            with_precision!(work, P => multislerp_stream::link_tangent_norm::<P, TaskError>(
                len, &inputs, &setup, &stats, &mut norms[0]
            ))?,
        )?,
    }
    Ok(Some(link_stats(info, &norms, Vec::new())))
}

/// karcher: a link of one of its stages' chains, or an apply chunk (see
/// [`crate::kernels::karcher_stream`]).
pub(super) fn karcher(run: &ChunkRun<'_>, loader: &mut Loader<'_>) -> Result<Option<ChunkStats>, TaskError> {
    let (task, info) = (run.task, run.info);
    let err = run.err();
    let (params, _) = karcher_combine::params(task).map_err(&err)?;
    let opened = loader.open_all(0..task.inputs.len())?;
    let xs = sources(&opened);
    let (work, len) = (loader.work, loader.numel);
    let got = match info.pass {
        1 => None,
        _ => Some(run.received()?),
    };
    let stats = karcher_combine::known(params, if got.is_some() { 2 } else { 1 }, got).map_err(&err)?;
    if info.pass == 0 {
        let sink = run.sink()?;
        with_precision!(work, P => karcher_stream::apply::<P, TaskError>(len, &xs, params, &stats, &sink))?;
        return Ok(None);
    }
    let (stage, link, _) = karcher_combine::stage(task, info.pass, info.passes).map_err(&err)?;
    if !params.runs(stage, &stats) {
        return Ok(Some(ChunkStats::default()));
    }
    let total = info.tensor_numel as usize;
    let received_states = || {
        got.and_then(|c| c.chain.as_ref())
            .map(|c| &c.norms[..])
            .unwrap_or_default()
    };
    let mut feeds = match stage {
        Stage::Dots(_) => {
            let count = params.valid(&stats).len();
            let dots: Option<Vec<DotStream>> = match link {
                0 => Some(
                    (0..count)
                        .map(|_| with_precision!(work, P => DotStream::new::<P>(total)))
                        .collect(),
                ),
                _ => received_states()
                    .iter()
                    .map(|s| with_precision!(work, P => DotStream::resume::<P>(total, s.fed as usize, &s.acc, s.sum)))
                    .collect(),
            };
            let dots = dots.ok_or_else(|| run.contract("a dot state does not fit the tensor"))?;
            if dots.len() != count || dots.iter().any(|d| d.state().0 as u64 != info.start) {
                return Err(run.contract("the chain's dots do not stop where this link starts"));
            }
            Feeds::Dots(dots)
        }
        Stage::Norms => Feeds::Norms(chain_norms(run, params.k, link == 0)?),
        _ => Feeds::Norms(chain_norms(run, 1, link == 0)?),
    };
    with_precision!(work, P => karcher_stream::link::<P, TaskError>(stage, len, &xs, params, &stats, &mut feeds))?;
    Ok(Some(match feeds {
        Feeds::Norms(norms) => link_stats(info, &norms, Vec::new()),
        Feeds::Dots(dots) => {
            let state = |d: &DotStream| {
                let (fed, acc, sum) = d.state();
                NormState {
                    fed: fed as u64,
                    acc,
                    tail: Vec::new(),
                    sum,
                }
            };
            chained(dots.iter().map(state).collect(), Vec::new())
        }
    }))
}

/// nuslerp over columns (`nuslerp_row_wise`): a link of the squares' or the dots' chain over
/// whole rows, or an apply chunk with the columns' cosines (see
/// [`crate::kernels::nuslerp_columns`]).
pub(super) fn nuslerp_columns(run: &ChunkRun<'_>, loader: &mut Loader<'_>) -> Result<Option<ChunkStats>, TaskError> {
    let (task, info) = (run.task, run.info);
    let Vectors::Columns { len: rows, stride } = Vectors::of(tensor_shape(task), false, true) else {
        return Err(run.contract("nuslerp columns of a tensor without them"));
    };
    let cols = Columns { len: rows, stride };
    let opened = NuslerpInputs::open(task, loader)?;
    let inputs = opened.inputs();
    let (work, len) = (loader.work, loader.numel);
    if !len.is_multiple_of(stride.max(1)) || !info.start.is_multiple_of(stride.max(1) as u64) {
        return Err(run.contract("a nuslerp column chunk is not whole rows"));
    }
    let read = |x: &dyn ChunkSource<TaskError>| -> Result<Vec<f32>, TaskError> {
        let mut v = vec![0.0f32; len];
        x.read(0, &mut v)?;
        Ok(v)
    };
    let (mut a, mut b) = (read(inputs.x0)?, read(inputs.x1)?);
    let base = inputs.base.map(read).transpose()?;
    if let Some(base) = &base {
        with_precision!(work, P => {
            stream_ops::sub_rnd::<P>(&mut a, base);
            stream_ops::sub_rnd::<P>(&mut b, base);
        });
    }
    if info.pass == 0 {
        let out = run.output()?;
        let cosines = &run.received()?.coefficients;
        if cosines.len() != stride {
            return Err(run.contract("nuslerp column apply needs every column's cosine"));
        }
        let t = crate::chunk::combine::nuslerp_t(task).map_err(run.err())?;
        with_precision!(work, P => {
            cols.apply::<P>(&mut a, &b, cosines, t);
            if let Some(base) = &base {
                stream_ops::add_base_rnd::<P>(&mut a, base);
            }
        });
        out.write_all(&a)?;
        return Ok(None);
    }
    let links = info.passes / 2;
    let squares = info.pass <= links;
    let size = if squares { 2 * stride } else { DOT_STATE * stride };
    let first = info.pass == 1 || info.pass == links + 1;
    let mut state = match first {
        true => vec![0.0f32; size],
        false => run
            .received()?
            .chain
            .as_ref()
            .and_then(|c| c.sums.first())
            .filter(|s| s.start == info.start)
            .map(|s| s.partial.clone())
            .ok_or_else(|| run.contract("the columns' chain does not stop where this link starts"))?,
    };
    if state.len() != size {
        return Err(run.contract("a column state does not fit the tensor"));
    }
    if squares {
        cols.feed_squares(&a, &b, &mut state);
    } else {
        let norms = &run.received()?.coefficients;
        if norms.len() != 2 * stride {
            return Err(run.contract("the dots' chain needs every column's norms"));
        }
        let row0 = info.start as usize / stride;
        with_precision!(work, P => cols.feed_dots::<P>(row0, &a, &b, norms, &mut state));
    }
    let reached = LinkSum {
        start: info.start + info.len,
        partial: state,
    };
    Ok(Some(chained(Vec::new(), vec![reached])))
}
