//! Chunk tasks of arcee_fusion (see [`crate::kernels::arcee_chunk`]): a chunk of whole rows
//! computes its rows' importances, returns the histograms of those that enter the quantiles
//! (passes 1 and 2), or merges with the threshold (apply).

use super::chunked::ChunkRun;
use super::tensor_io::Loader;
use crate::chunk::tensor_shape;
use crate::error::TaskError;
use crate::kernels::magnitude_select::Histogram;
use crate::kernels::{arcee_chunk, arcee_fusion};
use crate::rng::Mt19937;
use crate::with_precision;
use shardmerge_proto::v1::{ChunkStats, InputStats};

fn stats_of(h: Histogram) -> InputStats {
    InputStats {
        bins: h.bins,
        counts: h.counts,
        ..Default::default()
    }
}

/// One chunk task of an arcee_fusion tensor split into whole rows.
pub(super) fn run(run: &ChunkRun<'_>, loader: &mut Loader<'_>) -> Result<Option<ChunkStats>, TaskError> {
    let (task, info) = (run.task, run.info);
    let err = run.err();
    let (b, others) = super::whole::split_base(task).map_err(&err)?;
    let [o] = others[..] else {
        return Err(run.contract("arcee_fusion takes exactly 2 inputs"));
    };
    let row = tensor_shape(task).last().copied().unwrap_or(1).max(1) as usize;
    let mut base = loader.load(b)?;
    let y = loader.load(o)?;
    if base.len() % row != 0 {
        return Err(run.contract("an arcee_fusion chunk is not whole rows"));
    }
    let work = loader.work;
    let imp = with_precision!(work, P => arcee_fusion::importance_of_rows::<P>(&y, &base, row, false));
    if info.pass == 0 {
        let out = run.output()?;
        let &[thr] = &run.received()?.coefficients[..] else {
            return Err(run.contract("arcee_fusion apply needs its threshold"));
        };
        with_precision!(work, P => arcee_fusion::apply::<P>(&mut base, &y, &imp, thr));
        out.write_all(&base)?;
        return Ok(None);
    }
    let rng = match (task.random_seed, task.inputs[o].rng_offset) {
        (Some(seed), Some(off)) => Some(Mt19937::at_offset(seed as u32, off)),
        _ => None,
    };
    let sampled =
        arcee_chunk::sampled(&imp, info.start, info.tensor_numel, rng).map_err(|e| run.contract(e.to_string()))?;
    let inputs = match info.pass {
        1 => vec![stats_of(arcee_chunk::high_histogram(&sampled))],
        _ => {
            let got = run.received()?;
            if got.inputs.len() != 3 {
                return Err(run.contract("arcee_fusion pass 2 needs the three quantiles' bins"));
            }
            got.inputs
                .iter()
                .map(|q| {
                    let high =
                        u16::try_from(q.high_bin).map_err(|_| run.contract("a quantile's bin is out of range"))?;
                    Ok(stats_of(arcee_chunk::low_histogram(&sampled, high)))
                })
                .collect::<Result<Vec<_>, TaskError>>()?
        }
    };
    Ok(Some(ChunkStats {
        inputs,
        ..Default::default()
    }))
}
