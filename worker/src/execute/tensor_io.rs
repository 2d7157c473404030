//! Task inputs as working-dtype f32 values, and task outputs encoded and written in pieces.

use super::{InputBytes, TaskIo};
use crate::buffers::{Buffer, BufferPool};
use crate::dtypes::storage_dtype;
use crate::error::TaskError;
use crate::kernels::WorkDType;
use crate::kernels::gta_stream::ChunkSource;
use crate::safetensors_io::{self, Dtype};
use crate::with_precision;
use rayon::prelude::*;
use shardmerge_proto::v1::{MergeTask, TensorSource};
use std::cell::RefCell;

/// Output bytes are encoded and written in pieces of this many elements (encoded on one
/// thread, in a reused per-thread buffer).
pub(super) const WRITE_CHUNK_ELEMS: usize = 1 << 16;

/// Encodes f32 values into the output dtype and writes them at their element offset.
pub(super) struct Writer<'a> {
    pub(super) io: &'a dyn TaskIo,
    pub(super) uri: &'a str,
    pub(super) offset: u64,
    pub(super) dtype: Dtype,
    pub(super) size: usize,
    pub(super) tensor: &'a str,
}

impl Writer<'_> {
    /// Writes a whole result (`values` from element 0), in parallel pieces.
    pub(super) fn write_all(&self, values: &[f32]) -> Result<(), TaskError> {
        use rayon::prelude::*;
        values
            .par_chunks(WRITE_CHUNK_ELEMS)
            .enumerate()
            .try_for_each(|(ci, piece)| self.write(ci * WRITE_CHUNK_ELEMS, piece))
    }

    /// Writes `values` (at most [`WRITE_CHUNK_ELEMS`], so encoding stays on this thread and
    /// cannot re-enter the thread's buffer through rayon work stealing) at element `start`.
    pub(super) fn write(&self, start: usize, values: &[f32]) -> Result<(), TaskError> {
        debug_assert!(values.len() <= WRITE_CHUNK_ELEMS);
        thread_local! {
            static ENCODED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        ENCODED.with_borrow_mut(|buf| {
            buf.resize(values.len() * self.size, 0);
            if self.dtype == Dtype::BF16 {
                crate::kernels::precision::encode_bf16(values, buf);
            } else {
                safetensors_io::encode_from_f32(self.dtype, values, buf).map_err(|e| TaskError::InvalidTask {
                    tensor: self.tensor.to_string(),
                    reason: e.to_string(),
                })?;
            }
            let offset = self.offset + (start * self.size) as u64;
            self.io.write(self.uri, offset, buf, self.tensor)
        })
    }
}

/// One input's bytes with the roundings that turn its stored values into working-dtype values.
pub(super) struct Opened<'a> {
    src: TensorSource,
    _task: std::marker::PhantomData<&'a MergeTask>,
    data: InputBytes,
    dtype: Dtype,
    size: usize,
    rounding: [Option<WorkDType>; 2],
}

impl Opened<'_> {
    /// An input whose working-dtype values were built in memory (kept as f32 bytes, exact).
    fn from_values(src: TensorSource, values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Opened {
            src,
            _task: std::marker::PhantomData,
            data: InputBytes::Owned(data),
            dtype: Dtype::F32,
            size: 4,
            rounding: [None, None],
        }
    }
}

/// A problem with the input `src` itself.
pub(super) fn bad_input(src: &TensorSource, reason: String) -> TaskError {
    TaskError::BadInput {
        uri: src.uri.clone(),
        tensor: src.tensor_name.clone(),
        reason,
    }
}

impl ChunkSource<TaskError> for Opened<'_> {
    fn bf16_bytes(&self) -> Option<&[u8]> {
        (self.dtype == Dtype::BF16 && self.rounding == [None, None]).then(|| self.data.as_slice())
    }

    fn read(&self, start: usize, out: &mut [f32]) -> Result<(), TaskError> {
        let bytes = self
            .data
            .as_slice()
            .get(start * self.size..(start + out.len()) * self.size)
            .ok_or_else(|| bad_input(&self.src, format!("elements {start}+{} out of range", out.len())))?;
        if self.dtype == Dtype::BF16 {
            crate::kernels::precision::decode_bf16(bytes, out);
        } else {
            safetensors_io::decode_to_f32(self.dtype, bytes, out).map_err(|e| bad_input(&self.src, e.to_string()))?;
        }
        for r in self.rounding.into_iter().flatten() {
            with_precision!(r, P => out.iter_mut().for_each(|x| *x = <P as crate::kernels::Precision>::rnd(*x)));
        }
        Ok(())
    }
}

/// Loads task inputs one at a time as f32 values rounded to the working dtype.
pub(super) struct Loader<'a> {
    pub(super) task: &'a MergeTask,
    pub(super) io: &'a dyn TaskIo,
    pub(super) work: WorkDType,
    pub(super) load: Option<WorkDType>,
    pub(super) numel: usize,
    pub(super) bytes_read: u64,
}

impl<'a> Loader<'a> {
    pub(super) fn buffer(&self) -> Result<Buffer, TaskError> {
        BufferPool::global()
            .take(self.numel)
            .map_err(|e| TaskError::InvalidTask {
                tensor: self.task.tensor.clone(),
                reason: format!("allocating {} values: {e}", self.numel),
            })
    }

    /// Checks input `index` against the plan and maps its bytes (or builds its rows, for a
    /// vocabulary-aligned input).
    pub(super) fn open(&mut self, index: usize) -> Result<Opened<'a>, TaskError> {
        let input = self.task.inputs.get(index).ok_or_else(|| TaskError::InvalidTask {
            tensor: self.task.tensor.clone(),
            reason: format!("input {index} missing"),
        })?;
        if !input.rows.is_empty() {
            let src = input.source.clone().unwrap_or_default();
            let values = self.aligned(index)?;
            return Ok(Opened::from_values(src, &values));
        }
        let src = input.source.as_ref().ok_or_else(|| TaskError::InvalidTask {
            tensor: self.task.tensor.clone(),
            reason: "input without source".into(),
        })?;
        let bad = |reason: String| bad_input(src, reason);
        let dtype = storage_dtype(src.dtype()).ok_or_else(|| bad("unspecified dtype".into()))?;
        let size = safetensors_io::dtype_size(dtype);
        // A chunk task's inputs name the whole tensor; it reads the chunk's elements only.
        let whole = self.task.chunk.as_ref().map_or(self.task.numel, |c| c.tensor_numel);
        if size.map(|s| s as u64 * whole) != Some(src.length) {
            return Err(bad(format!(
                "expected {:?} bytes of {dtype:?}, the plan says {}",
                size.map(|s| s as u64 * whole),
                src.length
            )));
        }
        let (offset, length) = crate::chunk::input_range(self.task, src);
        let src = TensorSource {
            offset,
            length,
            ..src.clone()
        };
        let bad = |reason: String| bad_input(&src, reason);
        let data = self.io.read(&src)?;
        if data.as_slice().len() as u64 != src.length {
            return Err(bad(format!(
                "read {} bytes, expected {}",
                data.as_slice().len(),
                src.length
            )));
        }
        self.bytes_read += src.length;
        let rounding = self.rounding(dtype);
        Ok(Opened {
            src,
            _task: std::marker::PhantomData,
            data,
            dtype,
            size: size.unwrap_or(1),
            rounding,
        })
    }

    /// The roundings that turn stored `dtype` values into working-dtype values: the cast on
    /// load (the config's `dtype`), then to the working dtype; both are no-ops when the stored
    /// dtype already is the target, and the working dtype is never narrower.
    pub(super) fn rounding(&self, dtype: Dtype) -> [Option<WorkDType>; 2] {
        let stored = crate::dtypes::work_of_storage(dtype);
        let mut current = stored;
        let mut rounding = [None; 2];
        if let Some(l) = self.load
            && Some(l) != stored
        {
            rounding[0] = Some(l);
            current = Some(l);
        }
        if current != Some(self.work) && current.is_none_or(|c| c.promote(self.work) != self.work) {
            rounding[1] = Some(self.work);
        }
        rounding.map(|r| r.filter(|&r| r != WorkDType::F32))
    }

    /// Opens the inputs `indices`, in their order (see [`Loader::open`]).
    pub(super) fn open_all(&mut self, indices: impl IntoIterator<Item = usize>) -> Result<Vec<Opened<'a>>, TaskError> {
        indices.into_iter().map(|i| self.open(i)).collect()
    }

    /// Loads the inputs `indices`, in their order (see [`Loader::load`]).
    pub(super) fn load_all(&mut self, indices: impl IntoIterator<Item = usize>) -> Result<Vec<Buffer>, TaskError> {
        indices.into_iter().map(|i| self.load(i)).collect()
    }

    /// Input `index` as a whole tensor of working-dtype values.
    pub(super) fn load(&mut self, index: usize) -> Result<Buffer, TaskError> {
        let opened = self.open(index)?;
        let mut v = self.buffer()?;
        safetensors_io::decode_to_f32(opened.dtype, opened.data.as_slice(), &mut v)
            .map_err(|e| bad_input(&opened.src, e.to_string()))?;
        drop(opened.data);
        for r in opened.rounding.into_iter().flatten() {
            round_in_place(r, &mut v);
        }
        Ok(v)
    }
}

/// The streamed kernels' view of opened inputs.
pub(super) fn sources<'s>(opened: &'s [Opened<'_>]) -> Vec<&'s dyn ChunkSource<TaskError>> {
    opened.iter().map(|o| o as &dyn ChunkSource<TaskError>).collect()
}

fn round_in_place(w: WorkDType, v: &mut [f32]) {
    if w != WorkDType::F32 {
        v.par_chunks_mut(1 << 15)
            .for_each(|c| c.iter_mut().for_each(|x| *x = w.round(*x)));
    }
}
