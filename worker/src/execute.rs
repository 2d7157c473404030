//! Executes one [`MergeTask`]: read the input byte ranges, convert, run the kernel, write the
//! result at its planned place.
//!
//! Everything a task needs is in the task message (plus the storage it names), so tasks run in
//! any order, on any worker, any number of times, and always write the same bytes.

mod aligned;
mod aligned_mean;
mod arcee_chunked;
mod chained;
mod chunked;
mod streamed;
mod tensor_io;
mod whole;

use crate::buffers::Buffer;
use crate::dtypes::storage_dtype;
use crate::error::{KernelError, TaskError};
use crate::kernels::gta::{self, GtaInput, GtaOptions, GtaVariant};
use crate::kernels::gta_stream::{self, StreamError, StreamInput};
use crate::kernels::nuslerp::Vectors;
use crate::kernels::slerp_stream;
use crate::kernels::{WorkDType, linear};
use crate::methods::{self, MethodKind};
use crate::rng::Mt19937;
use crate::safetensors_io;
use crate::storage::{LocalInputs, LocalOutputs};
use crate::with_precision;
use shardmerge_proto::v1::{ChunkInfo, ChunkStats, DType, MergeTask, ParamValue, TensorSource, param_value};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tensor_io::{Loader, WRITE_CHUNK_ELEMS, Writer};

// Streamed kernels hand the writer pieces it can encode in one go.
const _: () = assert!(slerp_stream::OUT_CHUNK <= WRITE_CHUNK_ELEMS);

/// What a finished task did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskOutcome {
    /// Input bytes read.
    pub bytes_read: u64,
    /// Output bytes written.
    pub bytes_written: u64,
    /// Wall time spent.
    pub elapsed: Duration,
    /// What a statistics chunk task found (see [`crate::chunk`]).
    pub stats: Option<ChunkStats>,
}

/// Bytes of one input tensor, mapped or owned.
pub enum InputBytes {
    /// A memory-mapped byte range.
    Mapped(memmap2::Mmap),
    /// Bytes fetched into memory.
    Owned(Vec<u8>),
    /// Bytes fetched into memory, with a guard that keeps them counted against a memory budget
    /// (the prefetch window) until the task that reads them drops them.
    Held(Vec<u8>, Box<dyn std::any::Any + Send + Sync>),
}

impl InputBytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            InputBytes::Mapped(m) => m,
            InputBytes::Owned(v) | InputBytes::Held(v, _) => v,
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
    if let Some(c) = &task.chunk
        && (c.len != task.numel || c.start.checked_add(c.len).is_none_or(|e| e > c.tensor_numel))
    {
        return Err(invalid(format!(
            "chunk {}+{} of {} elements does not fit the task's {} elements",
            c.start, c.len, c.tensor_numel, task.numel
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
    // Statistics passes of chunk tasks write nothing and return their partial statistics.
    if let Some(c) = task.chunk.as_ref().filter(|c| c.pass >= 1) {
        let stats = chunked::run(&chunked::ChunkRun::new(task, c, None), &mut loader)?;
        return Ok(TaskOutcome {
            bytes_read: loader.bytes_read,
            bytes_written: 0,
            elapsed: started.elapsed(),
            stats,
        });
    }
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
    let writer = Writer {
        io,
        uri: &dest.uri,
        offset: dest.offset,
        dtype: out_dtype,
        size,
        tensor: &task.tensor,
    };
    let chunk_apply = |c: &&ChunkInfo| c.passes >= 1 || crate::chunk::pipeline(task).is_ok_and(|p| p.chunk_apply());
    if let Some(c) = task.chunk.as_ref().filter(chunk_apply) {
        chunked::run(&chunked::ChunkRun::new(task, c, Some(&writer)), &mut loader)?;
        return Ok(TaskOutcome {
            bytes_read: loader.bytes_read,
            bytes_written: dest.length,
            elapsed: started.elapsed(),
            stats: None,
        });
    }
    let kind = if task.passthrough {
        None
    } else {
        let spec =
            methods::lookup(&task.method).ok_or_else(|| kernel_err(KernelError::UnknownMethod(task.method.clone())))?;
        Some(spec.kind)
    };
    match kind {
        Some(MethodKind::Gta(variant)) if gta_stream::supports(variant) => {
            run_streamed(task, variant, &mut loader, &writer)?;
        }
        Some(MethodKind::Slerp) => run_slerp_streamed(task, &mut loader, &writer)?,
        Some(MethodKind::ModelStock) => streamed::model_stock(task, &mut loader, &writer)?,
        Some(MethodKind::Nuslerp) if !matches!(streamed::nuslerp_vectors(task)?, Vectors::Columns { .. }) => {
            streamed::nuslerp(task, &mut loader, &writer)?;
        }
        _ => {
            let out = match kind {
                None => loader.load(0)?,
                Some(kind) => run_kernel(task, kind, &mut loader)?,
            };
            writer.write_all(&out)?;
        }
    }
    Ok(TaskOutcome {
        bytes_read: loader.bytes_read,
        bytes_written: dest.length,
        elapsed: started.elapsed(),
        stats: None,
    })
}

/// A non-base input of the task-arithmetic family.
pub(super) struct GtaParams {
    /// Input index.
    pub(super) index: usize,
    /// `weight`.
    pub(super) weight: f64,
    /// `density`.
    pub(super) density: f64,
    /// `gamma` (breadcrumbs; 0 otherwise).
    pub(super) gamma: f64,
    /// `epsilon` (DELLA; 0 otherwise).
    pub(super) epsilon: f64,
    /// Random stream at the input's first draw (random sparsifiers with a planned offset).
    pub(super) rng: Option<Mt19937>,
}

/// The task-arithmetic family's shared options, base input and other inputs.
pub(super) fn gta_params(task: &MergeTask) -> Result<(GtaOptions, usize, Vec<GtaParams>), KernelError> {
    let opts = GtaOptions {
        normalize: boolean(&task.shared_params, "normalize")?,
        rescale: boolean(&task.shared_params, "rescale")?,
        lambda: float(&task.shared_params, "lambda")?,
        rows: crate::chunk::ranking_rows(task),
    };
    let b = task
        .inputs
        .iter()
        .position(|i| i.is_base)
        .ok_or_else(|| KernelError::Contract("the task-arithmetic family needs a base input".into()))?;
    let seed = task.random_seed.map(|s| s as u32);
    // A chunk's draws start at its own element of the input's stream.
    let skip = task.chunk.as_ref().map_or(0, |c| c.start);
    let mut others = Vec::new();
    for (i, input) in task.inputs.iter().enumerate().filter(|&(i, _)| i != b) {
        let rng = match (seed, input.rng_offset) {
            (Some(seed), Some(off)) => Some(Mt19937::at_offset(seed, off + skip)),
            _ => None,
        };
        let optional = |name: &str| match input.params.contains_key(name) {
            true => float(&input.params, name),
            false => Ok(0.0),
        };
        others.push(GtaParams {
            index: i,
            weight: float(&input.params, "weight")?,
            density: float(&input.params, "density")?,
            gamma: optional("gamma")?,
            epsilon: optional("epsilon")?,
            rng,
        });
    }
    Ok((opts, b, others))
}

/// `slerp`, streamed from the mapped inputs straight into the output (see [`slerp_stream`]).
fn run_slerp_streamed(task: &MergeTask, loader: &mut Loader<'_>, out: &Writer<'_>) -> Result<(), TaskError> {
    let kernel_err = |source: KernelError| TaskError::Kernel {
        tensor: task.tensor.clone(),
        source,
    };
    let (b, o) = crate::chunk::combine::slerp_inputs(task).map_err(kernel_err)?;
    let t = float(&task.shared_params, "t").map_err(kernel_err)?;
    let base = loader.open(b)?;
    let other = loader.open(o)?;
    let sink = |start: usize, values: &[f32]| out.write(start, values);
    with_precision!(loader.work, P => slerp_stream::slerp_streamed::<P, TaskError>(
        loader.numel, &base, &other, t, &sink
    ))
}

/// The task-arithmetic family without a global ranking: streamed from the mapped inputs
/// straight into the output, chunk by chunk (see [`gta_stream`]).
fn run_streamed(
    task: &MergeTask,
    variant: GtaVariant,
    loader: &mut Loader<'_>,
    out: &Writer<'_>,
) -> Result<(), TaskError> {
    let kernel_err = |source: KernelError| TaskError::Kernel {
        tensor: task.tensor.clone(),
        source,
    };
    let (opts, b, params) = gta_params(task).map_err(kernel_err)?;
    let base = loader.open(b)?;
    let opened = params
        .iter()
        .map(|p| loader.open(p.index))
        .collect::<Result<Vec<_>, _>>()?;
    let inputs = opened
        .iter()
        .zip(params)
        .map(|(source, p)| StreamInput {
            source,
            weight: p.weight,
            density: p.density,
            rng: p.rng,
        })
        .collect();
    let sink = |start: usize, values: &[f32]| out.write(start, values);
    with_precision!(loader.work, P => gta_stream::merge_streamed::<P, TaskError>(
        variant, opts, loader.numel, &base, inputs, &sink
    ))
    .map_err(|e| match e {
        StreamError::Gta(e) => kernel_err(e.into()),
        StreamError::Io(e) => e,
    })
}

fn run_kernel(task: &MergeTask, kind: MethodKind, loader: &mut Loader<'_>) -> Result<Buffer, TaskError> {
    let kernel_err = |source: KernelError| TaskError::Kernel {
        tensor: task.tensor.clone(),
        source,
    };
    let work = loader.work;
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
        // Streamed by `run_slerp_streamed` and `streamed::model_stock`; never reach here.
        MethodKind::Slerp | MethodKind::ModelStock => Err(kernel_err(KernelError::Contract(format!(
            "{} runs streamed",
            task.method
        )))),
        MethodKind::NearSwap
        | MethodKind::Nuslerp
        | MethodKind::Multislerp
        | MethodKind::Passthrough
        | MethodKind::Ram
        | MethodKind::RamPlusTl
        | MethodKind::Sce
        | MethodKind::Karcher
        | MethodKind::ArceeFusion => whole::run(task, kind, loader),
        MethodKind::Gta(variant) => {
            let (opts, b, params) = gta_params(task).map_err(kernel_err)?;
            let mut base = loader.load(b)?;
            let mut others = Vec::new();
            for p in params {
                others.push((loader.load(p.index)?, p));
            }
            let inputs = others
                .iter_mut()
                .map(|(data, p)| GtaInput {
                    data: &mut data[..],
                    weight: p.weight,
                    density: p.density,
                    gamma: p.gamma,
                    epsilon: p.epsilon,
                    rng: p.rng.take(),
                })
                .collect();
            with_precision!(work, P => gta::merge::<P>(variant, opts, &mut base, inputs))
                .map_err(|e| kernel_err(e.into()))?;
            Ok(base)
        }
    }
}

pub(crate) fn float(params: &HashMap<String, ParamValue>, name: &str) -> Result<f64, KernelError> {
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

pub(crate) fn boolean(params: &HashMap<String, ParamValue>, name: &str) -> Result<bool, KernelError> {
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
