//! Whole-tensor kernels without a streamed or chunked form (model_stock, nearswap, ...): decode
//! every input into an f32 buffer, run the kernel, return the result for the writer.

use super::tensor_io::Loader;
use super::{boolean, float};
use crate::buffers::Buffer;
use crate::error::{KernelError, TaskError};
use crate::kernels::{model_stock, nearswap};
use crate::methods::MethodKind;
use crate::with_precision;
use shardmerge_proto::v1::MergeTask;

/// The base input and the others in config order.
fn split_base(task: &MergeTask) -> Result<(usize, Vec<usize>), KernelError> {
    let b = task
        .inputs
        .iter()
        .position(|i| i.is_base)
        .ok_or_else(|| KernelError::Contract(format!("merge method `{}` needs a base input", task.method)))?;
    Ok((b, (0..task.inputs.len()).filter(|&i| i != b).collect()))
}

/// Runs `kind` on the whole tensor.
pub(super) fn run(task: &MergeTask, kind: MethodKind, loader: &mut Loader<'_>) -> Result<Buffer, TaskError> {
    let kernel_err = |source: KernelError| TaskError::Kernel {
        tensor: task.tensor.clone(),
        source,
    };
    let work = loader.work;
    let (b, others) = split_base(task).map_err(kernel_err)?;
    match kind {
        MethodKind::ModelStock => {
            let filter_wise = boolean(&task.shared_params, "filter_wise").map_err(kernel_err)?;
            let row = task
                .output
                .as_ref()
                .and_then(|o| o.shape.last().copied())
                .unwrap_or(task.numel) as usize;
            let mut base = loader.load(b)?;
            let mut loaded = others.iter().map(|&i| loader.load(i)).collect::<Result<Vec<_>, _>>()?;
            let mut refs: Vec<&mut [f32]> = loaded.iter_mut().map(|x| &mut x[..]).collect();
            with_precision!(work, P => model_stock::merge::<P>(&mut base, &mut refs, row, filter_wise))
                .map_err(|e| kernel_err(KernelError::Contract(e.to_string())))?;
            Ok(base)
        }
        MethodKind::NearSwap => {
            let t = float(&task.shared_params, "t").map_err(kernel_err)?;
            let [o] = others[..] else {
                return Err(kernel_err(KernelError::Contract(
                    "nearswap takes exactly 2 inputs".into(),
                )));
            };
            let mut base = loader.load(b)?;
            let other = loader.load(o)?;
            with_precision!(work, P => nearswap::merge::<P>(&mut base, &other, t));
            Ok(base)
        }
        _ => Err(kernel_err(KernelError::Contract(format!(
            "merge method `{}` has no whole-tensor kernel here",
            task.method
        )))),
    }
}
