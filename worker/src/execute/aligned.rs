//! Vocabulary-aligned inputs (semantics §5.2): an embedding or `lm_head` input whose rows the
//! planner permuted and filled for the output vocabulary. The task lists, per input, runs of
//! rows ([`RowRun`]): stored rows of any input of the task (read as byte ranges), means of
//! stored rows, zeros, and padding rows that are the mean of the aligned rows before them.
//! Values are working-dtype f32, every op rounded as torch rounds it.

use super::storage_dtype;
use super::tensor_io::{Loader, bad_input};
use crate::error::TaskError;
use crate::kernels::nuslerp::{OUTER_GROUP, interleaved_cascade, outer_cascade};
use crate::safetensors_io;
use crate::with_precision;
use shardmerge_proto::v1::{RowKind, RowRun, TensorSource};

impl Loader<'_> {
    fn invalid(&self, reason: String) -> TaskError {
        TaskError::InvalidTask {
            tensor: self.task.tensor.clone(),
            reason,
        }
    }

    /// Builds the aligned rows of input `index` (the task's output shape, vocabulary first).
    pub(super) fn aligned(&mut self, index: usize) -> Result<Vec<f32>, TaskError> {
        if self.task.chunk.is_some() {
            return Err(self.invalid("a vocabulary-aligned input cannot be read in chunks".into()));
        }
        let shape = self.task.output.as_ref().map(|o| o.shape.clone()).unwrap_or_default();
        let rows_total = *shape
            .first()
            .ok_or_else(|| self.invalid("aligned input of a scalar output".into()))? as usize;
        let row = self.numel.checked_div(rows_total).unwrap_or(0);
        let mut values = vec![0.0f32; self.numel];
        let runs = self.task.inputs[index].rows.clone();
        let mut at = 0usize;
        for run in &runs {
            let count = run.count as usize;
            if at + count > rows_total {
                return Err(self.invalid(format!("input {index}: row runs exceed {rows_total} rows")));
            }
            let out = &mut values[at * row..(at + count) * row];
            match run.kind() {
                RowKind::Copy => self.read_rows(run.input, run.from_row, count, row, out)?,
                RowKind::Mean => self.mean_row(run, row, out)?,
                RowKind::Zero => {}
                RowKind::PadMean => {
                    let mean = self.column_mean(&values[..at * row], at, row);
                    for r in values[at * row..(at + count) * row].chunks_mut(row.max(1)) {
                        r.copy_from_slice(&mean);
                    }
                }
                RowKind::Unspecified => return Err(self.invalid(format!("input {index}: row run without a kind"))),
            }
            at += count;
        }
        if at != rows_total {
            return Err(self.invalid(format!("input {index}: row runs fill {at} of {rows_total} rows")));
        }
        Ok(values)
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
