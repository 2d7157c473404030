//! Vocabulary-aligned inputs (semantics §5.2): an embedding or `lm_head` input whose rows the
//! planner permuted and filled for the output vocabulary. The task lists, per input, runs of
//! rows ([`RowRun`]): stored rows of any input of the task (read as byte ranges), means of
//! stored rows, zeros, and padding rows that are the mean of the aligned rows before them.
//! Values are working-dtype f32, every op rounded as torch rounds it. A chunk task builds only
//! the rows its element range touches, so aligned tensors split like any other.

use super::aligned_mean::ColumnMean;
use super::tensor_io::{Loader, bad_input};
use crate::dtypes::storage_dtype;
use crate::error::TaskError;
use crate::kernels::nuslerp::{OUTER_GROUP, interleaved_cascade, outer_cascade};
use crate::safetensors_io;
use crate::with_precision;
use shardmerge_proto::v1::{RowKind, RowRun, TensorSource};

/// Values per batch of rows read to compute a padding mean in a chunk task (32 MiB of f32),
/// at least one row; see [`crate::chunk::ALIGNED_MEAN_SCRATCH`].
const MEAN_BATCH_ELEMS: usize = 8 << 20;

impl Loader<'_> {
    fn invalid(&self, reason: String) -> TaskError {
        TaskError::InvalidTask {
            tensor: self.task.tensor.clone(),
            reason,
        }
    }

    /// Builds the aligned values of input `index` over the task's elements: the whole tensor,
    /// or a chunk task's range (of any rows, not aligned to them). Only the rows the range
    /// touches are built; a padding row's mean streams over the rows before it.
    pub(super) fn aligned(&mut self, index: usize) -> Result<Vec<f32>, TaskError> {
        let runs = self.task.inputs[index].rows.clone();
        let rows_total = runs
            .iter()
            .try_fold(0u64, |n, r| n.checked_add(r.count))
            .ok_or_else(|| self.invalid(format!("input {index}: row run counts overflow")))?;
        let (start, total) = match &self.task.chunk {
            Some(c) => (c.start, c.tensor_numel),
            None => (0, self.numel as u64),
        };
        if let Some(first) = self.task.output.as_ref().and_then(|o| o.shape.first())
            && *first != rows_total
        {
            return Err(self.invalid(format!("input {index}: row runs fill {rows_total} of {first} rows")));
        }
        if rows_total == 0 || !total.is_multiple_of(rows_total) {
            return Err(self.invalid(format!(
                "input {index}: {rows_total} aligned rows do not divide {total} elements"
            )));
        }
        let row = total / rows_total;
        let end = start + self.numel as u64;
        let (r0, r1) = (start / row, end.div_ceil(row));
        let mut values = self.build_rows(index, &runs, r0, r1, row as usize)?;
        let skip = (start - r0 * row) as usize;
        values.truncate(skip + self.numel);
        values.drain(..skip);
        Ok(values)
    }

    /// Rows `[r0, r1)` of aligned input `index` (whose runs are `runs`), as working-dtype values.
    fn build_rows(
        &mut self,
        index: usize,
        runs: &[RowRun],
        r0: u64,
        r1: u64,
        row: usize,
    ) -> Result<Vec<f32>, TaskError> {
        let mut values = vec![0.0f32; (r1 - r0) as usize * row];
        let mut at = 0u64;
        for run in runs {
            let (a, b) = (at, at + run.count);
            at = b;
            let (lo, hi) = (a.max(r0), b.min(r1));
            if lo >= hi {
                if a >= r1 {
                    break;
                }
                continue;
            }
            let count = (hi - lo) as usize;
            let local = (lo - r0) as usize * row;
            match run.kind() {
                RowKind::Copy => {
                    let out = &mut values[local..local + count * row];
                    self.read_rows(run.input, run.from_row + (lo - a), count, row, out)?;
                }
                RowKind::Mean => self.mean_row(run, row, &mut values[local..local + count * row])?,
                RowKind::Zero => {}
                RowKind::PadMean => {
                    if a == 0 {
                        return Err(self.invalid(format!("input {index}: a padding run without rows before it")));
                    }
                    // The rows before it are all in `values` when it starts at row 0.
                    let mean = if r0 == 0 {
                        self.column_mean(&values[..a as usize * row], a as usize, row)
                    } else {
                        self.streamed_column_mean(index, runs, a, row)?
                    };
                    for r in values[local..local + count * row].chunks_mut(row.max(1)) {
                        r.copy_from_slice(&mean);
                    }
                }
                RowKind::Unspecified => return Err(self.invalid(format!("input {index}: row run without a kind"))),
            }
        }
        Ok(values)
    }

    /// The column means of the first `rows` aligned rows, built and fed a batch at a time.
    fn streamed_column_mean(
        &mut self,
        index: usize,
        runs: &[RowRun],
        rows: u64,
        row: usize,
    ) -> Result<Vec<f32>, TaskError> {
        let batch = (MEAN_BATCH_ELEMS / row.max(1)).max(1) as u64;
        let mut mean = ColumnMean::new(rows as usize, row);
        let mut r = 0;
        while r < rows {
            let next = (r + batch).min(rows);
            mean.feed(&self.build_rows(index, runs, r, next, row)?);
            r = next;
        }
        debug_assert_eq!(mean.fed() as u64, rows);
        Ok(mean.finish(self.work))
    }

    /// One row: the mean of `run.terms`, summed in order and divided, in the working dtype.
    fn mean_row(&mut self, run: &RowRun, row: usize, out: &mut [f32]) -> Result<(), TaskError> {
        if run.count != 1 || run.terms.is_empty() {
            return Err(self.invalid("a mean row run needs count 1 and at least one term".into()));
        }
        let mut term = vec![0.0f32; row];
        let work = self.work;
        for t in &run.terms {
            self.read_rows(t.input, t.row, 1, row, &mut term)?;
            with_precision!(work, P => out.iter_mut().zip(&term).for_each(|(a, &x)| *a = <P as crate::kernels::Precision>::rnd(*a + x)));
        }
        let n = run.terms.len() as f32;
        with_precision!(work, P => out.iter_mut().for_each(|a| *a = <P as crate::kernels::Precision>::rnd(*a / n)));
        Ok(())
    }

    /// `torch.mean(rows, dim=0)` in the working dtype: an f32 sum in ATen's order for a reduced
    /// outer dim, divided in f32 and rounded once.
    fn column_mean(&self, values: &[f32], rows: usize, row: usize) -> Vec<f32> {
        let full = row / OUTER_GROUP * OUTER_GROUP;
        let mut column = vec![0.0f32; rows];
        let work = self.work;
        (0..row)
            .map(|c| {
                for (r, x) in column.iter_mut().enumerate() {
                    *x = values[r * row + c];
                }
                let sum = if c < full {
                    outer_cascade(&column)
                } else {
                    interleaved_cascade(&column)
                };
                work.round(sum / rows as f32)
            })
            .collect()
    }

    /// Rows `[from, from + count)` of input `input`'s stored tensor, as working-dtype values.
    fn read_rows(&mut self, input: u32, from: u64, count: usize, row: usize, out: &mut [f32]) -> Result<(), TaskError> {
        let src = self
            .task
            .inputs
            .get(input as usize)
            .and_then(|i| i.source.as_ref())
            .ok_or_else(|| self.invalid(format!("row run names input {input}, which has no source")))?;
        let bad = |reason: String| bad_input(src, reason);
        let dtype = storage_dtype(src.dtype()).ok_or_else(|| bad("unspecified dtype".into()))?;
        let size = safetensors_io::dtype_size(dtype).ok_or_else(|| bad(format!("dtype {dtype:?}")))? as u64;
        let stored_rows = src.shape.first().copied().unwrap_or(0);
        let stored_row: u64 = src.shape.iter().skip(1).product();
        if stored_row != row as u64 || size * stored_rows * stored_row != src.length {
            return Err(bad(format!(
                "stored shape {:?} ({} bytes) does not fit rows of {row} elements",
                src.shape, src.length
            )));
        }
        if from + count as u64 > stored_rows {
            return Err(bad(format!("rows {from}+{count} of {stored_rows}")));
        }
        let part = TensorSource {
            offset: src.offset + from * stored_row * size,
            length: count as u64 * stored_row * size,
            ..src.clone()
        };
        let data = self.io.read(&part)?;
        if data.as_slice().len() as u64 != part.length {
            return Err(bad_input(
                &part,
                format!("read {} bytes, expected {}", data.as_slice().len(), part.length),
            ));
        }
        self.bytes_read += part.length;
        safetensors_io::decode_to_f32(dtype, data.as_slice(), out).map_err(|e| bad_input(&part, e.to_string()))?;
        for r in self.rounding(dtype).into_iter().flatten() {
            out.iter_mut().for_each(|x| *x = r.round(*x));
        }
        Ok(())
    }
}
