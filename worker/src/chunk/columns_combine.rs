//! Folding the chains of nuslerp over columns (`nuslerp_row_wise`, see
//! [`crate::kernels::nuslerp_columns`]): every link hands on all columns' state.

use super::combine::{Fold, bad};
use crate::error::KernelError;
use crate::kernels::nuslerp;
use crate::kernels::{WorkDType, nuslerp_columns};
use crate::with_precision;
use shardmerge_proto::v1::{ChainState, CombinedStats};

/// nuslerp over columns: link `pass` of the squares' chain (passes `1..=L`) or of the dots'
/// chain (`L + 1..=2 L`). A link reports its columns' whole state (the sums so far) in one
/// `LinkSum` whose `start` is the element the chain reached; the last link of each chain
/// finishes the norms (handed on as the coefficients) or the cosines.
pub(super) fn combine(fold: &Fold<'_>) -> Result<Vec<CombinedStats>, KernelError> {
    let (task, pass, partials) = (fold.task, fold.pass, fold.partials);
    let (n, links) = (fold.info.tensor_numel, fold.info.passes / 2);
    let [(range, stats)] = partials else {
        return Err(bad(format!("chain link {pass} has {} chunks, not one", partials.len())));
    };
    let got = fold.got();
    let first = pass == 1 || pass == links + 1;
    let before = match (first, got.and_then(|c| c.chain.as_ref()).and_then(|c| c.sums.first())) {
        (true, _) => 0,
        (false, Some(s)) => s.start,
        (false, None) => return Err(bad(format!("chain link {pass} without the state before it"))),
    };
    let state = stats
        .chain
        .as_ref()
        .and_then(|c| c.sums.first())
        .ok_or_else(|| bad("a column link without its state"))?;
    if range.start != before || state.start != range.end {
        return Err(bad(format!(
            "chain link {pass} covers {range:?}, but the chain stopped at element {before}"
        )));
    }
    // Every pass hands on the norms (coefficients) once known.
    let coefficients = match pass > links {
        true => got.map(|c| c.coefficients.clone()).unwrap_or_default(),
        false => Vec::new(),
    };
    let same = |coefficients: Vec<f32>, chain| fold.hand(coefficients, chain);
    if pass != links && pass != 2 * links {
        let chain = ChainState {
            norms: Vec::new(),
            sums: vec![state.clone()],
        };
        return Ok(same(coefficients, Some(chain)));
    }
    if range.end != n {
        return Err(bad(format!(
            "a chain of `{}` ends at element {}, not {n}",
            task.tensor, range.end
        )));
    }
    let shape = super::tensor_shape(task);
    let nuslerp::Vectors::Columns { len, stride } = nuslerp::Vectors::of(shape, false, true) else {
        return Err(bad("nuslerp columns of a tensor without them"));
    };
    let cols = nuslerp_columns::Columns { len, stride };
    let work = WorkDType::try_from(task.working_dtype())?;
    let expect = if pass == links {
        2 * stride
    } else {
        nuslerp_columns::DOT_STATE * stride
    };
    if state.partial.len() != expect {
        return Err(bad(format!(
            "a column state of {} floats, not {expect}",
            state.partial.len()
        )));
    }
    let out = match pass == links {
        true => with_precision!(work, P => cols.norms::<P>(&state.partial)),
        false => with_precision!(work, P => cols.cosines::<P>(&state.partial)),
    };
    Ok(same(out, None))
}
