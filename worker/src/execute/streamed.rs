//! Methods with whole-tensor statistics that run streamed from the mapped inputs straight into
//! the output (no whole-tensor f32 buffers): model_stock and nuslerp over contiguous vectors
//! (see [`crate::kernels::model_stock_stream`] and [`crate::kernels::nuslerp_stream`]).

use super::tensor_io::{Loader, Opened, Writer, sources};
use super::{boolean, whole};
use crate::error::{KernelError, TaskError};
use crate::kernels::gta_stream::ChunkSource;
use crate::kernels::model_stock_stream;
use crate::kernels::nuslerp::Vectors;
use crate::kernels::nuslerp_stream::{self, Inputs};
use crate::with_precision;
use shardmerge_proto::v1::MergeTask;

fn kernel_err(task: &MergeTask) -> impl Fn(KernelError) -> TaskError + '_ {
    |source| TaskError::Kernel {
        tensor: task.tensor.clone(),
        source,
    }
}

/// `model_stock`, streamed: a statistics pass and an apply pass over the inputs (one pass
/// over groups of rows with `filter_wise`).
pub(super) fn model_stock(task: &MergeTask, loader: &mut Loader<'_>, out: &Writer<'_>) -> Result<(), TaskError> {
    let err = kernel_err(task);
    let filter_wise = boolean(&task.shared_params, "filter_wise").map_err(&err)?;
    let row = task
        .output
        .as_ref()
        .and_then(|o| o.shape.last().copied())
        .unwrap_or(task.numel) as usize;
    let (b, others) = whole::split_base(task).map_err(&err)?;
    let base = loader.open(b)?;
    let opened = loader.open_all(others)?;
    let refs = sources(&opened);
    let sink = |start: usize, values: &[f32]| out.write(start, values);
    with_precision!(loader.work, P => model_stock_stream::merge_streamed::<P, TaskError>(
        loader.numel, row, filter_wise, &base, &refs, &sink
    ))?
    .map_err(|e| err(KernelError::Contract(e.to_string())))
}

/// How nuslerp cuts `task`'s tensor into vectors (from its shape and flags).
pub(super) fn nuslerp_vectors(task: &MergeTask) -> Result<Vectors, TaskError> {
    let err = kernel_err(task);
    let flatten = boolean(&task.shared_params, "nuslerp_flatten").map_err(&err)?;
    let row_wise = boolean(&task.shared_params, "nuslerp_row_wise").map_err(&err)?;
    let shape = task.output.as_ref().map_or(&[][..], |o| &o.shape[..]);
    Ok(Vectors::of(shape, flatten, row_wise))
}

/// nuslerp's inputs, opened: the optional base and the two models (the non-base inputs).
pub(super) struct NuslerpInputs<'a> {
    base: Option<Opened<'a>>,
    x0: Opened<'a>,
    x1: Opened<'a>,
}

impl<'a> NuslerpInputs<'a> {
    /// Opens the base (if any) and exactly two models.
    pub(super) fn open(task: &MergeTask, loader: &mut Loader<'a>) -> Result<Self, TaskError> {
        let (b, others) = super::whole::base_and_models(task);
        let [i0, i1] = others[..] else {
            return Err(kernel_err(task)(KernelError::Contract(
                "nuslerp takes exactly 2 models besides the base".into(),
            )));
        };
        Ok(NuslerpInputs {
            base: b.map(|b| loader.open(b)).transpose()?,
            x0: loader.open(i0)?,
            x1: loader.open(i1)?,
        })
    }

    /// The kernels' view of them.
    pub(super) fn inputs(&self) -> Inputs<'_, TaskError> {
        Inputs {
            x0: &self.x0,
            x1: &self.x1,
            base: self.base.as_ref().map(|b| b as &dyn ChunkSource<TaskError>),
        }
    }
}

/// `nuslerp` over contiguous vectors (the flattened tensor or its rows), streamed; vectors
/// along dim 0 run whole.
pub(super) fn nuslerp(task: &MergeTask, loader: &mut Loader<'_>, out: &Writer<'_>) -> Result<(), TaskError> {
    let err = kernel_err(task);
    let t = crate::chunk::combine::nuslerp_t(task).map_err(&err)?;
    let vectors = nuslerp_vectors(task)?;
    let opened = NuslerpInputs::open(task, loader)?;
    let inputs = opened.inputs();
    let sink = |start: usize, values: &[f32]| out.write(start, values);
    let done = with_precision!(loader.work, P => nuslerp_stream::merge_streamed::<P, TaskError>(
        loader.numel, &inputs, t, vectors, &sink
    ))?;
    if done {
        Ok(())
    } else {
        Err(err(KernelError::Contract("nuslerp columns run whole".into())))
    }
}
