//! Whole-tensor kernels without a streamed or chunked form (nearswap, nuslerp, ...): decode
//! every input into an f32 buffer, run the kernel, return the result for the writer.

use super::tensor_io::Loader;
use super::{boolean, float};
use crate::buffers::Buffer;
use crate::error::{KernelError, TaskError};
use crate::kernels::nuslerp::{self, Vectors};
use crate::kernels::{arcee_fusion, karcher, multislerp, nearswap, passthrough, ram, sce};
use crate::methods::MethodKind;
use crate::rng::Mt19937;
use crate::with_precision;
use shardmerge_proto::v1::MergeTask;

/// The base input and the others in config order.
pub(super) fn split_base(task: &MergeTask) -> Result<(usize, Vec<usize>), KernelError> {
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
    match kind {
        MethodKind::Nuslerp | MethodKind::Multislerp => return run_base_optional(task, kind, loader),
        MethodKind::Passthrough => {
            let input = task
                .inputs
                .first()
                .ok_or_else(|| kernel_err(KernelError::Contract("passthrough needs one input".into())))?;
            let scale = match input.params.contains_key("scale") {
                true => Some(float(&input.params, "scale").map_err(kernel_err)?),
                false => None,
            };
            let mut x = loader.load(0)?;
            with_precision!(work, P => passthrough::apply::<P>(&mut x, scale));
            return Ok(x);
        }
        MethodKind::Karcher => {
            let max_iter = float(&task.shared_params, "max_iter").map_err(kernel_err)? as i64;
            let tol = float(&task.shared_params, "tol").map_err(kernel_err)?;
            let mut loaded = loader.load_all(0..task.inputs.len())?;
            if loaded.len() > 1 {
                let mut refs: Vec<&mut [f32]> = loaded.iter_mut().map(|x| &mut x[..]).collect();
                with_precision!(work, P => karcher::merge::<P>(&mut refs, max_iter, tol));
            }
            return loaded
                .into_iter()
                .next()
                .ok_or_else(|| kernel_err(KernelError::Contract("karcher needs an input".into())));
        }
        _ => {}
    }
    let (b, others) = split_base(task).map_err(kernel_err)?;
    match kind {
        MethodKind::Ram => {
            let epsilon = float(&task.shared_params, "epsilon").map_err(kernel_err)?;
            let (start, numel) = task
                .chunk
                .as_ref()
                .map_or((0, task.numel), |c| (c.start, c.tensor_numel));
            let mut base = loader.load(b)?;
            let loaded = loader.load_all(others.iter().copied())?;
            let refs: Vec<&[f32]> = loaded.iter().map(|x| &x[..]).collect();
            with_precision!(work, P => ram::merge::<P>(&mut base, &refs, epsilon, start as usize, numel as usize));
            Ok(base)
        }
        MethodKind::RamPlusTl => {
            let get = |name| float(&task.shared_params, name).map_err(kernel_err);
            let (epsilon, r, alpha) = (get("epsilon")?, get("r")?, get("alpha")?);
            let mut base = loader.load(b)?;
            let loaded = loader.load_all(others.iter().copied())?;
            let refs: Vec<&[f32]> = loaded.iter().map(|x| &x[..]).collect();
            with_precision!(work, P => ram::merge_plus::<P>(&mut base, &refs, epsilon, r, alpha));
            Ok(base)
        }
        MethodKind::Sce => {
            let select_topk = float(&task.shared_params, "select_topk").map_err(kernel_err)?;
            let mut base = loader.load(b)?;
            let mut loaded = loader.load_all(others.iter().copied())?;
            let mut refs: Vec<&mut [f32]> = loaded.iter_mut().map(|x| &mut x[..]).collect();
            with_precision!(work, P => sce::merge::<P>(&mut base, &mut refs, select_topk));
            Ok(base)
        }
        MethodKind::ArceeFusion => {
            let [o] = others[..] else {
                return Err(kernel_err(KernelError::Contract(
                    "arcee_fusion takes exactly 2 inputs".into(),
                )));
            };
            let row = task
                .output
                .as_ref()
                .and_then(|o| o.shape.last().copied())
                .unwrap_or(task.numel) as usize;
            let rng = match (task.random_seed, task.inputs[o].rng_offset) {
                (Some(seed), Some(off)) => Some(Mt19937::at_offset(seed as u32, off)),
                _ => None,
            };
            let mut base = loader.load(b)?;
            let other = loader.load(o)?;
            with_precision!(work, P => arcee_fusion::merge::<P>(&mut base, &other, row, rng))
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

/// The optional base input and the models (the other inputs, in config order) of a method
/// whose base is optional (nuslerp, multislerp).
pub(super) fn base_and_models(task: &MergeTask) -> (Option<usize>, Vec<usize>) {
    let b = task.inputs.iter().position(|i| i.is_base);
    (b, (0..task.inputs.len()).filter(|&i| Some(i) != b).collect())
}

/// Every model's `weight`, in order.
pub(super) fn model_weights(task: &MergeTask, models: &[usize]) -> Result<Vec<f64>, KernelError> {
    models
        .iter()
        .map(|&i| float(&task.inputs[i].params, "weight"))
        .collect()
}

/// nuslerp and multislerp: the base is optional; the non-base inputs keep config order.
fn run_base_optional(task: &MergeTask, kind: MethodKind, loader: &mut Loader<'_>) -> Result<Buffer, TaskError> {
    let kernel_err = |source: KernelError| TaskError::Kernel {
        tensor: task.tensor.clone(),
        source,
    };
    let work = loader.work;
    let (b, others) = base_and_models(task);
    let weights = model_weights(task, &others).map_err(kernel_err)?;
    let base = b.map(|b| loader.load(b)).transpose()?;
    match kind {
        MethodKind::Nuslerp => {
            let [i0, i1] = others[..] else {
                return Err(kernel_err(KernelError::Contract(
                    "nuslerp takes exactly 2 models besides the base".into(),
                )));
            };
            let flatten = boolean(&task.shared_params, "nuslerp_flatten").map_err(kernel_err)?;
            let row_wise = boolean(&task.shared_params, "nuslerp_row_wise").map_err(kernel_err)?;
            let shape = task.output.as_ref().map_or(&[][..], |o| &o.shape[..]);
            let vectors = Vectors::of(shape, flatten, row_wise);
            let t = nuslerp::interpolation_t(weights[0], weights[1]);
            let mut x0 = loader.load(i0)?;
            let mut x1 = loader.load(i1)?;
            with_precision!(work, P => nuslerp::merge::<P>(&mut x0, &mut x1, base.as_deref(), t, vectors));
            Ok(x0)
        }
        _ => {
            let normalize = boolean(&task.shared_params, "normalize_weights").map_err(kernel_err)?;
            let eps = float(&task.shared_params, "eps").map_err(kernel_err)?;
            let mut loaded = loader.load_all(others.iter().copied())?;
            if loaded.len() == 1 {
                // mergekit returns the single input unchanged (the base is not added back).
                return Ok(loaded.remove(0));
            }
            let mut refs: Vec<&mut [f32]> = loaded.iter_mut().map(|x| &mut x[..]).collect();
            with_precision!(work, P => multislerp::merge::<P>(&mut refs, &weights, base.as_deref(), normalize, eps))
                .map_err(|e| kernel_err(KernelError::Contract(e.to_string())))?;
            Ok(loaded.remove(0))
        }
    }
}
