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
use shardmerge_worker::kernels::WorkDType;
use shardmerge_worker::methods::{BasePolicy, MethodSpec, OptionalPolicy};
use shardmerge_worker::safetensors_io::{Dtype, TensorInfo};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

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

fn work_of_storage(d: Dtype) -> Option<WorkDType> {
    match d {
        Dtype::BF16 => Some(WorkDType::Bf16),
        Dtype::F16 => Some(WorkDType::F16),
        Dtype::F32 => Some(WorkDType::F32),
        _ => None,
    }
}

/// Storage dtype of a working dtype.
pub fn storage_of_work(w: WorkDType) -> Dtype {
    match w {
        WorkDType::Bf16 => Dtype::BF16,
        WorkDType::F16 => Dtype::F16,
        WorkDType::F32 => Dtype::F32,
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

impl Ctx<'_> {
    fn tensor(
        &self,
        _slice_idx: usize,
        slice: &NSlice,
        out_name: &str,
        wanted: &[(usize, String)],
        kind: Kind,
    ) -> Result<Option<PlannedTensor>, PlanError> {
        let norm = self.norm;
        let tied = arch::tied_names(out_name);
        // Resolve each source's tensor: canonical name, then tied names for optional weights.
        let mut found: Vec<(usize, &str, PathBuf, TensorInfo)> = Vec::new();
        let any_canonical = wanted
            .iter()
            .any(|(j, n)| norm.models[slice.sources[*j].model].dir.tensors.contains_key(n));
        if !any_canonical {
            return Ok(None);
        }
        for (j, name) in wanted {
            let model = &norm.models[slice.sources[*j].model];
            let mut candidates = vec![name.as_str()];
            if let Some(t) = tied {
                candidates.extend(t.iter().copied());
            }
            match candidates.iter().find_map(|c| model.dir.tensors.get(*c)) {
                Some(lt) => found.push((*j, name, lt.file.clone(), lt.info.clone())),
                None if tied.is_some() => {}
                None => {
                    let present = wanted
                        .iter()
                        .find(|(jj, n)| norm.models[slice.sources[*jj].model].dir.tensors.contains_key(n))
                        .map(|(jj, _)| norm.models[slice.sources[*jj].model].display.clone())
                        .unwrap_or_default();
                    return Err(PlanError::Invalid(format!(
                        "tensor `{name}` is missing in model `{}` (it is present in `{present}`)",
                        model.display
                    )));
                }
            }
        }
        // Shapes must agree (for vocabulary tensors being aligned or truncated: past dim 0).
        let mut shape = found[0].3.shape.clone();
        let vocab_tensor = arch::has_vocabulary_axis(out_name) && !shape.is_empty();
        let mode = match (vocab_tensor, self.vocab) {
            (true, Some(v)) => {
                shape[0] = v.rows;
                VocabMode::Align
            }
            (true, None) if self.truncate_vocab => {
                let min = found
                    .iter()
                    .map(|f| f.3.shape.first().copied().unwrap_or(0))
                    .min()
                    .unwrap_or(0);
                shape[0] = min;
                VocabMode::Truncate(min)
            }
            _ => VocabMode::None,
        };
        let rows_differ =
            |a: &[u64], b: &[u64]| a.len() == b.len() && !a.is_empty() && a[1..] == b[1..] && a[0] != b[0];
        for f in &found[1..] {
            let same = match mode {
                VocabMode::None => f.3.shape == shape,
                _ => f.3.shape.len() == shape.len() && f.3.shape[1..] == shape[1..],
            };
            if !same && vocab_tensor && rows_differ(&f.3.shape, &found[0].3.shape) {
                return Err(PlanError::Invalid(format!(
                    "tensor `{out_name}`: vocabulary sizes differ: model `{}` has {} rows, model `{}` has {}; \
                     mergekit 0.1.5 refuses this too (\"Tensor size mismatch\"): set `tokenizer_source: union` \
                     (or `base`, or a `tokenizer:` section) to align the vocabularies, or pass \
                     --unsafe-truncate-embeddings to keep the first {} rows of every model",
                    norm.models[slice.sources[found[0].0].model].display,
                    found[0].3.shape[0],
                    norm.models[slice.sources[f.0].model].display,
                    f.3.shape[0],
                    found[0].3.shape[0].min(f.3.shape[0])
                )));
            }
            if !same {
                return Err(PlanError::Invalid(format!(
                    "tensor `{out_name}`: shape mismatch: model `{}` has `{}` with shape {:?}, model `{}` has `{}` with shape {:?}",
                    norm.models[slice.sources[found[0].0].model].display,
                    found[0].3.name,
                    shape,
                    norm.models[slice.sources[f.0].model].display,
                    f.3.name,
                    f.3.shape
                )));
            }
        }
        // Dtypes.
        let mut work: Option<WorkDType> = None;
        for f in &found {
            let d = match self.load {
                Some(l) => l,
                None => work_of_storage(f.3.dtype).ok_or_else(|| {
                    PlanError::Invalid(format!(
                        "tensor `{}` of model `{}` has dtype {:?}; shardmerge merges bf16, f16 and f32 tensors",
                        f.3.name, norm.models[slice.sources[f.0].model].display, f.3.dtype
                    ))
                })?,
            };
            work = Some(work.map_or(d, |w| w.promote(d)));
        }
        let work = work.expect("at least one input");
        let t = match kind {
            Kind::Pre | Kind::Post => 0.0,
            Kind::Layer { k, len } => {
                if len > 1 {
                    k as f64 / (len - 1) as f64
                } else {
                    1.0
                }
            }
        };
        // Base and contract.
        let base_pos = match self.method.base {
            BasePolicy::Required => {
                let b = slice.base.ok_or_else(|| {
                    PlanError::Invalid(format!(
                        "{}: merge method `{}` needs a `base_model`",
                        super::sources::at_line(self.config, "merge_method"),
                        self.method.name
                    ))
                })?;
                let pos = found.iter().position(|f| slice.sources[f.0].model == b);
                if pos.is_none() {
                    return Err(PlanError::Invalid(format!(
                        "tensor `{out_name}`: base model `{}` is not among the inputs",
                        norm.models[b].display
                    )));
                }
                pos
            }
            BasePolicy::Ignored => None,
            BasePolicy::Optional => match slice.base {
                None => None,
                Some(b) => match found.iter().position(|f| slice.sources[f.0].model == b) {
                    Some(pos) => Some(pos),
                    None => {
                        return Err(PlanError::Invalid(format!(
                            "tensor `{out_name}`: base model `{}` is not among the inputs",
                            norm.models[b].display
                        )));
                    }
                },
            },
        };
        let only_base = found.len() == 1 && base_pos == Some(0);
        let passthrough = match self.method.optional_policy {
            OptionalPolicy::Error => false,
            OptionalPolicy::PassthroughSingleton => found.len() == 1,
            OptionalPolicy::PassthroughBaseSingleton | OptionalPolicy::BaseOrSkip => only_base,
        };
        if self.method.optional_policy == OptionalPolicy::BaseOrSkip
            && !passthrough
            && found.len() < self.method.min_inputs
            && found.len() < wanted.len()
        {
            // mergekit skips the tensor (writes nothing) when optional weights leave too few.
            return Ok(None);
        }
        if !passthrough {
            let n = found.len();
            if n < self.method.min_inputs || self.method.max_inputs.is_some_and(|m| n > m) {
                return Err(PlanError::Invalid(format!(
                    "{}: tensor `{out_name}`: merge method `{}` takes {}{} inputs{}, got {n}",
                    super::sources::at_line(self.config, "merge_method"),
                    self.method.name,
                    self.method.min_inputs,
                    self.method
                        .max_inputs
                        .map(|m| if m == self.method.min_inputs {
                            String::new()
                        } else {
                            format!("..{m}")
                        })
                        .unwrap_or_else(|| "+".into()),
                    match self.method.base {
                        BasePolicy::Required => " including the base model",
                        BasePolicy::Ignored | BasePolicy::Optional => "",
                    }
                )));
            }
        }
        if let (false, Some((lo, hi))) = (passthrough, self.method.non_base_inputs) {
            let n = found.len() - usize::from(base_pos.is_some());
            if n < lo || hi.is_some_and(|h| n > h) {
                return Err(PlanError::Invalid(format!(
                    "{}: tensor `{out_name}`: merge method `{}` takes {} models besides the base model, got {n}",
                    super::sources::at_line(self.config, "merge_method"),
                    self.method.name,
                    match hi {
                        Some(h) if h == lo => format!("exactly {lo}"),
                        Some(h) => format!("{lo} to {h}"),
                        None => format!("at least {lo}"),
                    }
                )));
            }
        }
        let shared = resolve_shared_params(self.config, self.method, slice, out_name, t)?;
        let mut inputs = Vec::with_capacity(found.len());
        let mut label = String::new();
        for (pos, (j, _, file, info)) in found.into_iter().enumerate() {
            let src = &slice.sources[j];
            let is_base = base_pos == Some(pos);
            let model = &norm.models[src.model];
            let (params, density) = resolve_input_params(
                self.config,
                self.method,
                slice,
                src.model,
                &model.display,
                is_base,
                &info.name,
                t,
            )?;
            if info.name > label {
                label = info.name.clone();
            }
            inputs.push(PlannedInput {
                model: src.model,
                file,
                info,
                is_base,
                params,
                density,
                rows: Vec::new(),
            });
        }
        match (mode, self.vocab) {
            (VocabMode::Align, Some(v)) => {
                let aligned: Vec<AlignedInput> = inputs
                    .iter()
                    .map(|i| AlignedInput {
                        model: i.model,
                        stored_rows: i.info.shape[0],
                    })
                    .collect();
                let refs: Vec<_> = norm.models.iter().map(|m| m.reference.clone()).collect();
                // mergekit passes the slice's base model whatever the method does with it.
                let base = slice.base.and_then(|b| inputs.iter().position(|i| i.model == b));
                let defaults = vocab_rows::defaults(v, &aligned, base, out_name, &refs)?;
                for (k, inp) in inputs.iter_mut().enumerate() {
                    inp.rows = vocab_rows::runs(v, &aligned, k, &defaults);
                }
            }
            (VocabMode::Truncate(min), _) => {
                for (k, inp) in inputs.iter_mut().enumerate() {
                    inp.rows = vocab_rows::truncated(k, min);
                }
            }
            _ => {}
        }
        let numel = shape.iter().product::<u64>();
        Ok(Some(PlannedTensor {
            name: out_name.to_string(),
            label,
            inputs,
            shared,
            numel,
            shape,
            load: self.load,
            work,
            // ramplus_tl's and arcee_fusion's f32 factors promote their results (semantics §3.3).
            out_dtype: storage_of_work(self.out_dtype.unwrap_or(
                if self.method.kind.promotes_to_f32() && !passthrough {
                    WorkDType::F32
                } else {
                    work
                },
            )),
            passthrough,
        }))
    }
}
