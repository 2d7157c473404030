//! Executes one [`MergeTask`]: read the input byte ranges, convert, run the kernel, write the
//! result at its planned place.
//!
//! Everything a task needs is in the task message (plus the storage it names), so tasks run in
//! any order, on any worker, any number of times, and always write the same bytes.

use crate::buffers::{Buffer, BufferPool};
use crate::error::{KernelError, TaskError};
use crate::kernels::gta::{self, GtaInput, GtaOptions};
use crate::kernels::{WorkDType, linear, slerp};

use crate::methods::{self, MethodKind};
use crate::rng::Mt19937;
use crate::safetensors_io::{self, Dtype};
use crate::storage::{LocalInputs, LocalOutputs};
use crate::with_precision;
use shardmerge_proto::v1::{DType, MergeTask, ParamValue, TensorSource, param_value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a finished task did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskOutcome {
    /// Input bytes read.
    pub bytes_read: u64,
    /// Output bytes written.
    pub bytes_written: u64,
    /// Wall time spent.
    pub elapsed: Duration,
}

/// Bytes of one input tensor, mapped or owned.
pub enum InputBytes {
    /// A memory-mapped byte range.
    Mapped(memmap2::Mmap),
    /// Bytes fetched into memory.
    Owned(Vec<u8>),
}

impl InputBytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            InputBytes::Mapped(m) => m,
            InputBytes::Owned(v) => v,
        }
    }
}

/// Where tasks read tensors from and write results to.
pub trait TaskIo: Send + Sync {
    /// Returns the bytes of one input tensor.
    fn read(&self, src: &TensorSource) -> Result<InputBytes, TaskError>;
    /// Writes `bytes` at `offset` of the output at `uri`.
    fn write(&self, uri: &str, offset: u64, bytes: &[u8], tensor: &str) -> Result<(), TaskError>;
}

/// Local-disk task I/O (memory-mapped inputs, positional writes).
#[derive(Default)]
pub struct LocalIo {
    /// Input mappings.
    pub inputs: LocalInputs,
    /// Output handles.
    pub outputs: LocalOutputs,
}

impl TaskIo for LocalIo {
    fn read(&self, src: &TensorSource) -> Result<InputBytes, TaskError> {
        let map = self
            .inputs
            .map_range(&src.uri, src.offset, src.length)
            .map_err(|e| TaskError::Read {
                uri: src.uri.clone(),
                tensor: src.tensor_name.clone(),
                source: e,
            })?;
        Ok(InputBytes::Mapped(map))
    }

    fn write(&self, uri: &str, offset: u64, bytes: &[u8], tensor: &str) -> Result<(), TaskError> {
        self.outputs.write_at(uri, offset, bytes).map_err(|e| TaskError::Write {
            uri: uri.to_string(),
            tensor: tensor.to_string(),
            source: e,
        })
    }
}

/// Maps a wire dtype to the safetensors dtype.
pub fn storage_dtype(d: DType) -> Option<Dtype> {
    Some(match d {
        DType::Bf16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::Bool => Dtype::BOOL,
        DType::U8 => Dtype::U8,
        DType::Unspecified => return None,
    })
}

/// Maps a safetensors dtype to the wire dtype.
pub fn wire_dtype(d: Dtype) -> DType {
    match d {
        Dtype::BF16 => DType::Bf16,
        Dtype::F16 => DType::F16,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::BOOL => DType::Bool,
        Dtype::U8 => DType::U8,
        _ => DType::Unspecified,
    }
}

/// Output bytes are encoded and written in pieces of this many elements.
const WRITE_CHUNK_ELEMS: usize = 4 << 20;

/// Runs `task` against `io`.
pub fn execute_task(task: &MergeTask, io: &dyn TaskIo) -> Result<TaskOutcome, TaskError> {
    let started = Instant::now();
    let invalid = |reason: String| TaskError::InvalidTask {
        tensor: task.tensor.clone(),
        reason,
    };
    let kernel_err = |source: KernelError| TaskError::Kernel {
        tensor: task.tensor.clone(),
        source,
    };
    let work = WorkDType::try_from(task.working_dtype()).map_err(kernel_err)?;
    let load = match task.load_dtype() {
        DType::Unspecified => None,
        d => Some(WorkDType::try_from(d).map_err(kernel_err)?),
    };
    let numel = usize::try_from(task.numel).map_err(|_| invalid("tensor too large".into()))?;
    let dest = task
        .output
        .as_ref()
        .ok_or_else(|| invalid("task without output".into()))?;
    let out_dtype = storage_dtype(dest.dtype()).ok_or_else(|| invalid("output dtype unspecified".into()))?;
    let size = safetensors_io::dtype_size(out_dtype).ok_or_else(|| invalid("output dtype".into()))?;
    if (size as u64).checked_mul(task.numel) != Some(dest.length) {
        return Err(invalid(format!(
            "output length {} != {} elements of {out_dtype:?}",
            dest.length, numel
        )));
    }
    let mut loader = Loader {
        task,
        io,
        work,
        load,
        numel,
        bytes_read: 0,
    };
    let out = if task.passthrough {
        loader.load(0)?
    } else {
        let spec =
            methods::lookup(&task.method).ok_or_else(|| kernel_err(KernelError::UnknownMethod(task.method.clone())))?;
        run_kernel(task, spec.kind, &mut loader)?
    };
    let bytes_read = loader.bytes_read;
    let out = &*out;
    let mut encoded = vec![0u8; size * numel.min(WRITE_CHUNK_ELEMS)];
    for (ci, chunk) in out.chunks(WRITE_CHUNK_ELEMS).enumerate() {
        let buf = &mut encoded[..chunk.len() * size];
        safetensors_io::encode_from_f32(out_dtype, chunk, buf).map_err(|e| invalid(e.to_string()))?;
        let offset = dest.offset + (ci * WRITE_CHUNK_ELEMS * size) as u64;
        io.write(&dest.uri, offset, buf, &task.tensor)?;
    }
    Ok(TaskOutcome {
        bytes_read,
        bytes_written: dest.length,
        elapsed: started.elapsed(),
    })
}

/// Loads task inputs one at a time as f32 values rounded to the working dtype.
struct Loader<'a> {
    task: &'a MergeTask,
    io: &'a dyn TaskIo,
    work: WorkDType,
    load: Option<WorkDType>,
    numel: usize,
    bytes_read: u64,
}

impl Loader<'_> {
    fn buffer(&self) -> Result<Buffer, TaskError> {
        BufferPool::global()
            .take(self.numel)
            .map_err(|e| TaskError::InvalidTask {
                tensor: self.task.tensor.clone(),
                reason: format!("allocating {} values: {e}", self.numel),
            })
    }

    fn load(&mut self, index: usize) -> Result<Buffer, TaskError> {
        let input = self.task.inputs.get(index).ok_or_else(|| TaskError::InvalidTask {
            tensor: self.task.tensor.clone(),
            reason: format!("input {index} missing"),
        })?;
        let src = input.source.as_ref().ok_or_else(|| TaskError::InvalidTask {
            tensor: self.task.tensor.clone(),
            reason: "input without source".into(),
        })?;
        let bad = |reason: String| TaskError::BadInput {
            uri: src.uri.clone(),
            tensor: src.tensor_name.clone(),
            reason,
        };
        let dtype = storage_dtype(src.dtype()).ok_or_else(|| bad("unspecified dtype".into()))?;
        let expected = safetensors_io::dtype_size(dtype).map(|s| s as u64 * self.task.numel);
        if expected != Some(src.length) {
            return Err(bad(format!(
                "expected {expected:?} bytes of {dtype:?}, the plan says {}",
                src.length
            )));
        }
        let data = self.io.read(src)?;
        let bytes = data.as_slice();
        if bytes.len() as u64 != src.length {
            return Err(bad(format!("read {} bytes, expected {}", bytes.len(), src.length)));
        }
        let mut v = self.buffer()?;
        safetensors_io::decode_to_f32(dtype, bytes, &mut v).map_err(|e| bad(e.to_string()))?;
        drop(data);
        self.bytes_read += src.length;
        // Cast on load (the config's `dtype`), then to the working dtype; both are no-ops when
        // the stored dtype already is the target, and the working dtype is never narrower.
        let stored = work_of(dtype);
        let mut current = stored;
        if let Some(l) = self.load
            && Some(l) != stored
        {
            round_in_place(l, &mut v);
            current = Some(l);
        }
        if current != Some(self.work) && current.is_none_or(|c| c.promote(self.work) != self.work) {
            round_in_place(self.work, &mut v);
        }
        Ok(v)
    }
}

fn work_of(d: Dtype) -> Option<WorkDType> {
    match d {
        Dtype::BF16 => Some(WorkDType::Bf16),
        Dtype::F16 => Some(WorkDType::F16),
        Dtype::F32 => Some(WorkDType::F32),
        _ => None,
    }
}

fn round_in_place(w: WorkDType, v: &mut [f32]) {
    use rayon::prelude::*;
    if w != WorkDType::F32 {
        v.par_chunks_mut(1 << 15)
            .for_each(|c| c.iter_mut().for_each(|x| *x = w.round(*x)));
    }
}

fn run_kernel(task: &MergeTask, kind: MethodKind, loader: &mut Loader<'_>) -> Result<Buffer, TaskError> {
    let kernel_err = |source: KernelError| TaskError::Kernel {
        tensor: task.tensor.clone(),
        source,
    };
    let work = loader.work;
    let base_idx = task.inputs.iter().position(|i| i.is_base);
    match kind {
        MethodKind::Linear => {
            let weights = task
                .inputs
                .iter()
                .map(|i| float(&i.params, "weight"))
                .collect::<Result<Vec<_>, _>>()
                .map_err(kernel_err)?;
            let normalize = boolean(&task.shared_params, "normalize").map_err(kernel_err)?;
            let mut acc = loader.buffer()?;
            acc.fill(0.0);
            for (i, &w) in weights.iter().enumerate() {
                let x = loader.load(i)?;
                linear::accumulate(&mut acc, &x, w);
            }
            with_precision!(work, P => linear::finish::<P>(&mut acc, &weights, normalize));
            Ok(acc)
        }
        MethodKind::Slerp => {
            let b = base_idx.ok_or_else(|| kernel_err(KernelError::Contract("slerp needs a base input".into())))?;
            if task.inputs.len() != 2 {
                let msg = format!("slerp needs exactly 2 inputs, got {}", task.inputs.len());
                return Err(kernel_err(KernelError::Contract(msg)));
            }
            let t = float(&task.shared_params, "t").map_err(kernel_err)?;
            let mut a = loader.load(b)?;
            let other = loader.load(1 - b)?;
            with_precision!(work, P => slerp::slerp_in_place::<P>(&mut a, &other, t));
            Ok(a)
        }
        MethodKind::Gta(variant) => {
            let b = base_idx.ok_or_else(|| {
                kernel_err(KernelError::Contract(
                    "the task-arithmetic family needs a base input".into(),
                ))
            })?;
            let opts = GtaOptions {
                normalize: boolean(&task.shared_params, "normalize").map_err(kernel_err)?,
                rescale: boolean(&task.shared_params, "rescale").map_err(kernel_err)?,
                lambda: float(&task.shared_params, "lambda").map_err(kernel_err)?,
            };
            let seed = task.random_seed.map(|s| s as u32);
            let mut base = loader.load(b)?;
            let mut others = Vec::new();
            for (i, input) in task.inputs.iter().enumerate() {
                if i == b {
                    continue;
                }
                let rng = match (seed, input.rng_offset) {
                    (Some(seed), Some(off)) => Some(Mt19937::at_offset(seed, off)),
                    _ => None,
                };
                let weight = float(&input.params, "weight").map_err(kernel_err)?;
                let density = float(&input.params, "density").map_err(kernel_err)?;
                others.push((loader.load(i)?, weight, density, rng));
            }
            let inputs = others
                .iter_mut()
                .map(|(data, weight, density, rng)| GtaInput {
                    data: &mut data[..],
                    weight: *weight,
                    density: *density,
                    rng: rng.take(),
                })
                .collect();
            with_precision!(work, P => gta::merge::<P>(variant, opts, &mut base, inputs))
                .map_err(|e| kernel_err(e.into()))?;
            Ok(base)
        }
    }
}

fn float(params: &HashMap<String, ParamValue>, name: &str) -> Result<f64, KernelError> {
    match params.get(name).and_then(|p| p.kind.as_ref()) {
        Some(param_value::Kind::Float(f)) => Ok(*f),
        Some(param_value::Kind::Int(i)) => Ok(*i as f64),
        Some(other) => Err(KernelError::Param {
            name: name.into(),
            reason: format!("expected a number, got {other:?}"),
        }),
        None => Err(KernelError::Param {
            name: name.into(),
            reason: "missing".into(),
        }),
    }
}

fn boolean(params: &HashMap<String, ParamValue>, name: &str) -> Result<bool, KernelError> {
    match params.get(name).and_then(|p| p.kind.as_ref()) {
        Some(param_value::Kind::Bool(b)) => Ok(*b),
        Some(other) => Err(KernelError::Param {
            name: name.into(),
            reason: format!("expected a boolean, got {other:?}"),
        }),
        None => Err(KernelError::Param {
            name: name.into(),
            reason: "missing".into(),
        }),
    }
}
