//! Output tensors and their inputs.
//!
//! Pre-weights (embeddings) come from the first slice's sources, post-weights (final norm,
//! `lm_head`) from the last slice's, both at layer position `t = 0`. Layer `k` of a slice with
//! `L` layers becomes output layer `c` (counting across slices) and reads input layer `a_j + k`
//! of source `j`, at `t = k / (L - 1)` (or 1 when `L = 1`).

use super::PlanError;
use super::params::{resolve_input_params, resolve_shared_params};
use super::sources::{NSlice, Normalized};
use super::vocab::Vocabulary;
use super::vocab_rows::{self, AlignedInput};
use crate::arch;
use crate::config::MergeConfig;
use shardmerge_proto::v1::{ParamValue, RowRun};
use shardmerge_worker::dtypes::{storage_of_work, work_of_storage};
use shardmerge_worker::kernels::WorkDType;
use shardmerge_worker::methods::{BasePolicy, MethodSpec, OptionalPolicy};
use shardmerge_worker::safetensors_io::{Dtype, TensorInfo};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

mod steps;

/// One resolved input of an output tensor.
#[derive(Debug, Clone)]
pub struct PlannedInput {
    /// Model index.
    pub model: usize,
    /// File holding the tensor.
    pub file: PathBuf,
    /// Header entry of the tensor (name as found, which may be an alias or tied name).
    pub info: TensorInfo,
    /// Whether this input is the base of its group.
    pub is_base: bool,
    /// Resolved per-input parameters.
    pub params: HashMap<String, ParamValue>,
    /// Resolved density (for random-stream accounting).
    pub density: Option<f64>,
    /// Vocabulary alignment or truncation of this input's rows (empty: read as stored).
    pub rows: Vec<RowRun>,
}

/// One output tensor.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    /// Output name.
    pub name: String,
    /// Execution-order key: the largest input name.
    pub label: String,
    /// Inputs in kernel order.
    pub inputs: Vec<PlannedInput>,
    /// Shared parameters.
    pub shared: HashMap<String, ParamValue>,
    /// Output shape.
    pub shape: Vec<u64>,
    /// Element count.
    pub numel: u64,
    /// dtype inputs are cast to on load (config `dtype`).
    pub load: Option<WorkDType>,
    /// Working dtype.
    pub work: WorkDType,
    /// Stored dtype.
    pub out_dtype: Dtype,
    /// Copy the single input unchanged.
    pub passthrough: bool,
}

/// Maps a config dtype name to a working dtype.
pub fn work_dtype_of_name(name: &str) -> Option<WorkDType> {
    match name.trim_start_matches("torch.") {
        "bfloat16" => Some(WorkDType::Bf16),
        "float16" => Some(WorkDType::F16),
        "float32" => Some(WorkDType::F32),
        _ => None,
    }
}

enum Kind {
    Pre,
    Post,
    Layer { k: u64, len: u64 },
}

/// Enumerates every output tensor with its inputs, dtypes and parameters.
pub fn output_tensors(
    config: &MergeConfig,
    method: &MethodSpec,
    norm: &Normalized,
    vocab: Option<&Vocabulary>,
    truncate_vocab: bool,
) -> Result<Vec<PlannedTensor>, PlanError> {
    let load = match &config.dtype {
        Some(d) => Some(dtype_setting(config, "dtype", d.as_str())?),
        None => None,
    };
    let out_dtype = match &config.out_dtype {
        Some(d) => Some(dtype_setting(config, "out_dtype", d.as_str())?),
        None => None,
    };
    let ctx = Ctx {
        config,
        method,
        norm,
        load,
        out_dtype,
        vocab,
        truncate_vocab,
    };
    let mut out = Vec::new();
    let first = &norm.slices[0];
    let last = &norm.slices[norm.slices.len() - 1];
    // Non-layer weights.
    for (slice_idx, slice, pre) in [(0usize, first, true), (norm.slices.len() - 1, last, false)] {
        let mut names = BTreeSet::new();
        for s in &slice.sources {
            for n in norm.models[s.model].dir.tensors.keys() {
                if arch::split_layer_name(n).is_none() && arch::is_pre_weight(n) == pre {
                    names.insert(n.clone());
                }
            }
        }
        for name in names {
            let kind = if pre { Kind::Pre } else { Kind::Post };
            let inputs: Vec<(usize, String)> = slice
                .sources
                .iter()
                .enumerate()
                .map(|(j, _)| (j, name.clone()))
                .collect();
            if let Some(t) = ctx.tensor(slice_idx, slice, &name, &inputs, kind)? {
                out.push(t);
            }
        }
    }
    // Layers.
    let mut c = 0u64;
    for (si, slice) in norm.slices.iter().enumerate() {
        let len = slice.sources[0].range.1 - slice.sources[0].range.0;
        for k in 0..len {
            let mut templates: BTreeSet<(String, String)> = BTreeSet::new();
            for s in &slice.sources {
                let layer = s.range.0 + k;
                for n in norm.models[s.model].dir.tensors.keys() {
                    if let Some((p, i, rest)) = arch::split_layer_name(n)
                        && i == layer
                    {
                        templates.insert((p.to_string(), rest.to_string()));
                    }
                }
            }
            for (prefix, rest) in &templates {
                let out_name = arch::layer_name(prefix, c, rest);
                let inputs: Vec<(usize, String)> = slice
                    .sources
                    .iter()
                    .enumerate()
                    .map(|(j, s)| (j, arch::layer_name(prefix, s.range.0 + k, rest)))
                    .collect();
                if let Some(t) = ctx.tensor(si, slice, &out_name, &inputs, Kind::Layer { k, len })? {
                    out.push(t);
                }
            }
            c += 1;
        }
    }
    Ok(out)
}

fn dtype_setting(config: &MergeConfig, key: &str, value: &str) -> Result<WorkDType, PlanError> {
    work_dtype_of_name(value).ok_or_else(|| {
        PlanError::Invalid(format!(
            "{}: `{key}: {value}` is not supported; use bfloat16, float16 or float32",
            super::sources::at_line(config, key)
        ))
    })
}

struct Ctx<'a> {
    config: &'a MergeConfig,
    method: &'a MethodSpec,
    norm: &'a Normalized,
    load: Option<WorkDType>,
    out_dtype: Option<WorkDType>,
    vocab: Option<&'a Vocabulary>,
    truncate_vocab: bool,
}

/// How a vocabulary tensor's inputs are brought to one row count.
enum VocabMode {
    /// Shapes must agree.
    None,
    /// Aligned to the output vocabulary.
    Align,
    /// The first `min` rows (`--unsafe-truncate-embeddings`).
    Truncate(u64),
}
