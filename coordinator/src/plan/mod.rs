//! The planner: from a config and the input headers to the complete output layout and the
//! list of tasks that fill it. Reads headers only; no tensor data moves here.
//!
//! Steps: normalise the config into output slices ([`sources`]), enumerate output tensors and
//! resolve their inputs ([`tensors`]), resolve parameters ([`params`]), order tensors the way
//! mergekit executes them (code-point order of their label) and assign random-stream offsets,
//! then lay out shards ([`layout`]) and emit one [`MergeTask`] per tensor.

pub mod chat_templates;
mod chunks;
pub mod layout;
pub mod params;
pub mod sources;
pub mod tensors;
mod validate;
pub mod vocab;
mod vocab_files;
pub mod vocab_rows;

use crate::config::MergeConfig;
use shardmerge_proto::v1::{MergePlan, MergeTask, ShardPlan, TaskInput, TensorDestination, TensorSource};
use shardmerge_worker::chunk;
use shardmerge_worker::dtypes::wire_dtype;
use shardmerge_worker::methods::{self, MethodSpec};
use std::path::PathBuf;

pub use sources::PlannedModel;

/// Directory inside the output directory where shards are written before the commit.
pub const STAGING_DIR: &str = ".shardmerge-staging";

/// Errors found while planning. Each message names the config file, model, tensor or shapes.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The config is inconsistent with the method or the models.
    #[error("{0}")]
    Invalid(String),
    /// A model could not be opened.
    #[error("{0}")]
    Model(String),
}

/// Opens a model directory given its reference (local path or URI); returns the resolved
/// location (as a path-like string) and the directory's headers.
pub type ModelOpener = std::sync::Arc<
    dyn Fn(&str) -> Result<(PathBuf, shardmerge_worker::safetensors_io::ModelDir), String> + Send + Sync,
>;

/// How the plan was asked for.
#[derive(Clone)]
pub struct PlanOptions {
    /// Output directory.
    pub out_dir: PathBuf,
    /// Maximum data bytes per output shard (mergekit's `--out-shard-size`).
    pub out_shard_size: u64,
    /// Seed from the command line (wins over the YAML `random_seed`).
    pub random_seed: Option<u64>,
    /// Allow models of different architectures.
    pub allow_crimes: bool,
    /// Directory that relative model paths are resolved against (the working directory).
    pub model_root: PathBuf,
    /// Opens models that are not local directories (e.g. `s3://`); `None` means local only.
    pub opener: Option<ModelOpener>,
    /// Output bytes above which a tensor is split into chunk tasks (`--chunk-size`); 0 never
    /// splits.
    pub chunk_size: u64,
    /// Memory budget of one worker (`--memory-limit`): larger tasks are split into chunks, and
    /// a task that cannot fit is a planning error. `None`: no limit.
    pub memory_limit: Option<u64>,
    /// `--unsafe-truncate-embeddings`: without a tokenizer setting, vocabulary tensors keep the
    /// first rows common to every model (config.json untouched).
    pub unsafe_truncate_embeddings: bool,
}

/// Where the random seed came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedSource {
    /// `--random-seed`.
    CommandLine,
    /// `random_seed:` in the YAML.
    Config,
    /// Generated because none was given (recorded in the model card).
    Generated,
}

/// A complete plan.
#[derive(Debug)]
pub struct Plan {
    /// The wire form: shards and tasks.
    pub proto: MergePlan,
    /// The merge method.
    pub method: MethodSpec,
    /// Distinct input models (indexed by `TaskInput::model_index`).
    pub models: Vec<PlannedModel>,
    /// Model whose `config.json` and tokenizer are copied.
    pub donor: usize,
    /// The base model, if any.
    pub base: Option<usize>,
    /// New layer count (only when the config uses `slices`), with its config key.
    pub num_layers: Option<u64>,
    /// Seed of the random stream and its origin.
    pub seed: Option<(u64, SeedSource)>,
    /// Estimated peak bytes of one task, by task.
    pub task_memory: Vec<u64>,
    /// Warnings to show the user.
    pub warnings: Vec<String>,
    /// The memory limit the plan fits (every task's planned memory is at most this).
    pub memory_limit: Option<u64>,
    /// The output vocabulary, when the config sets `tokenizer_source` or `tokenizer`.
    pub vocab: Option<vocab::Vocabulary>,
    /// The output tokenizer's files `(name, text)`, written instead of the donor's when a
    /// tokenizer is built or a chat template is set.
    pub tokenizer_files: Option<Vec<(String, String)>>,
}

impl Plan {
    /// Estimated peak memory of running with `workers` concurrent tasks under a memory budget
    /// that never runs two of the largest tasks at once.
    pub fn memory_budget(&self) -> u64 {
        let mut sizes = self.task_memory.clone();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        let budget = sizes.first().copied().unwrap_or(0) + sizes.get(1).copied().unwrap_or(0) / 2;
        self.memory_limit.map_or(budget, |l| budget.min(l))
    }
}

/// Plans `config`.
pub fn plan(config: &MergeConfig, opts: &PlanOptions) -> Result<Plan, PlanError> {
    let method = methods::lookup(&config.merge_method).ok_or_else(|| {
        PlanError::Invalid(format!(
            "{}: unknown merge method `{}`; available: {}",
            sources::at_line(config, "merge_method"),
            config.merge_method,
            methods::names().join(", ")
        ))
    })?;
    let norm = sources::normalize(config, &method, opts)?;
    let mut warnings = norm.warnings.clone();
    let known: Vec<&str> = method.params.iter().map(|p| p.name).collect();
    warnings.extend(config.unknown_parameter_warnings(&known));
    let vocab = match &config.tokenizer {
        Some(t) => Some(vocab::build(t, &norm)?),
        None => None,
    };

    let tokenizer_files = tokenizer_files(config, &norm, vocab.as_ref(), &mut warnings)?;
    let mut out = tensors::output_tensors(config, &method, &norm, vocab.as_ref(), opts.unsafe_truncate_embeddings)?;
    for t in &out {
        validate::check_tensor(config, &method, &norm, t)?;
    }
    // mergekit executes (and saves) tensors in code-point order of their label.
    out.sort_by(|a, b| a.label.cmp(&b.label).then_with(|| a.name.cmp(&b.name)));

    let seed = if method.is_random() || out.iter().any(|t| !t.passthrough && method.sample_draws(t.numel) > 0) {
        Some(match (opts.random_seed, config.random_seed) {
            (Some(s), _) => (s, SeedSource::CommandLine),
            (None, Some(s)) => (s, SeedSource::Config),
            (None, None) => {
                let s = u64::from(rand::random::<u32>());
                warnings.push(format!(
                    "no --random-seed given: using generated seed {s} (recorded in README.md); pass --random-seed {s} to reproduce"
                ));
                (s, SeedSource::Generated)
            }
        })
    } else {
        None
    };

    let layout_input: Vec<layout::LayoutTensor> = out
        .iter()
        .map(|t| layout::LayoutTensor {
            name: t.name.clone(),
            dtype: t.out_dtype,
            shape: t.shape.clone(),
        })
        .collect();
    let shards = layout::layout(&layout_input, opts.out_shard_size)?;
    let staging = opts.out_dir.join(STAGING_DIR);
    let mut placement = vec![(0u32, 0u64, 0u64); out.len()];
    let mut shard_plans = Vec::with_capacity(shards.len());
    for (si, s) in shards.iter().enumerate() {
        for &(ti, off, len) in &s.placements {
            placement[ti] = (si as u32, off, len);
        }
        shard_plans.push(ShardPlan {
            file_name: s.file_name.clone(),
            staging_uri: staging.join(&s.file_name).to_string_lossy().into_owned(),
            total_bytes: s.file_len,
            header: s.header.clone(),
            tensors: s.placements.iter().map(|&(ti, _, _)| out[ti].name.clone()).collect(),
        });
    }

    let mut cursor = 0u64;
    let mut tasks = Vec::with_capacity(out.len());
    let mut task_memory = Vec::with_capacity(out.len());
    let mut bytes_to_read = 0u64;
    let mut total_size = 0u64;
    for (ti, t) in out.iter().enumerate() {
        let (si, offset, length) = placement[ti];
        total_size += length;
        let mut inputs = Vec::with_capacity(t.inputs.len());
        let mut max_in = 0u64;
        for inp in &t.inputs {
            let sampled = if t.passthrough { 0 } else { method.sample_draws(t.numel) };
            let rng_offset = if !inp.is_base && inp.density.is_some_and(|d| method.draws(d)) {
                let o = cursor;
                cursor += t.numel;
                Some(o)
            } else if !inp.is_base && sampled > 0 {
                let o = cursor;
                cursor += sampled;
                Some(o)
            } else {
                None
            };
            bytes_to_read += inp.info.data_len;
            max_in = max_in.max(inp.info.data_len);
            inputs.push(TaskInput {
                model_index: inp.model as u32,
                model: norm.models[inp.model].display.clone(),
                is_base: inp.is_base,
                source: Some(TensorSource {
                    uri: inp.file.to_string_lossy().into_owned(),
                    offset: inp.info.data_start,
                    length: inp.info.data_len,
                    dtype: wire_dtype(inp.info.dtype) as i32,
                    shape: inp.info.shape.clone(),
                    tensor_name: inp.info.name.clone(),
                    // Pinned by the cluster coordinator (the embedded runtime reads once).
                    file_size: 0,
                    file_version: String::new(),
                }),
                params: inp.params.clone(),
                rng_offset,
                rows: inp.rows.clone(),
            });
        }
        let task = MergeTask {
            task_id: ti as u64,
            tensor: t.name.clone(),
            method: method.name.to_string(),
            working_dtype: t.work.wire() as i32,
            inputs,
            shared_params: t.shared.clone(),
            output: Some(TensorDestination {
                uri: shard_plans[si as usize].staging_uri.clone(),
                offset,
                length,
                dtype: wire_dtype(t.out_dtype) as i32,
                shape: t.shape.clone(),
                shard_index: si,
            }),
            random_seed: seed.map(|(s, _)| s),
            numel: t.numel,
            passthrough: t.passthrough,
            load_dtype: t.load.map(|l| l.wire() as i32).unwrap_or(0),
            chunk: None,
        };
        task_memory.push(chunk::whole_task_memory(&task, max_in));
        tasks.push(task);
    }
    let (tasks, task_memory) = chunks::split(tasks, task_memory, opts.chunk_size, opts.memory_limit)?;
    warnings.extend(chunks::replay_warnings(&tasks));
    let proto = MergePlan {
        output_uri: opts.out_dir.to_string_lossy().into_owned(),
        shards: shard_plans,
        tasks,
        total_size,
        bytes_to_read,
    };
    Ok(Plan {
        proto,
        method,
        models: norm.models,
        donor: norm.donor,
        base: norm.base,
        num_layers: norm.num_layers,
        seed,
        task_memory,
        warnings,
        memory_limit: opts.memory_limit,
        vocab,
        tokenizer_files,
    })
}

/// The merged tokenizer's files, or the donor's tokenizer re-serialized with the configured
/// chat template (mergekit's path when `chat_template` is set without a tokenizer setting).
fn tokenizer_files(
    config: &MergeConfig,
    norm: &sources::Normalized,
    vocab: Option<&vocab::Vocabulary>,
    warnings: &mut Vec<String>,
) -> Result<Option<Vec<(String, String)>>, PlanError> {
    let template = match config.chat_template.as_deref() {
        Some("auto") => vocab_files::auto_template(&norm.models)?,
        Some(t) => Some(chat_templates::builtin(t).unwrap_or(t).to_string()),
        None => None,
    };
    if let Some(v) = vocab {
        return vocab_files::files(&v.tokenizer, &norm.models[v.source], template).map(Some);
    }
    if config.chat_template.is_none() {
        return Ok(None);
    }
    let donor = &norm.models[norm.donor];
    let tok = match vocab::tokenizer_text(donor).and_then(|t| vocab::parse_tokenizer(donor, &t)) {
        Ok(t) => t,
        Err(e) => {
            // mergekit logs the failure and writes no tokenizer.
            warnings.push(format!("chat_template is set but no tokenizer can be written: {e}"));
            return Ok(Some(Vec::new()));
        }
    };
    vocab_files::files(&tok, donor, template).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardmerge_proto::v1::param_value::Kind;
    use shardmerge_proto::v1::{DType, ParamValue};

    /// A whole-tensor task `w` of `method` over `inputs` bf16 tensors of `shape` with shared
    /// `params`, written to `/out/model.safetensors`.
    pub(super) fn bf16_task(method: &str, inputs: u32, shape: &[u64], params: &[(&str, Kind)]) -> MergeTask {
        let n: u64 = shape.iter().product();
        let source = |i: u32| TensorSource {
            uri: format!("/m{i}/model.safetensors"),
            length: n * 2,
            dtype: DType::Bf16 as i32,
            shape: shape.to_vec(),
            ..Default::default()
        };
        MergeTask {
            tensor: "w".into(),
            method: method.into(),
            working_dtype: DType::Bf16 as i32,
            inputs: (0..inputs)
                .map(|i| TaskInput {
                    model_index: i,
                    source: Some(source(i)),
                    ..Default::default()
                })
                .collect(),
            shared_params: params
                .iter()
                .map(|(k, v)| (k.to_string(), ParamValue { kind: Some(v.clone()) }))
                .collect(),
            output: Some(TensorDestination {
                uri: "/out/model.safetensors".into(),
                length: n * 2,
                dtype: DType::Bf16 as i32,
                shape: shape.to_vec(),
                ..Default::default()
            }),
            numel: n,
            ..Default::default()
        }
    }

    /// A streamed kernel (model_stock) is planned at its bounded scratch, the workers' rule,
    /// not at whole f32 copies: two such tensors of 23 MB each then fit the budget together
    /// (they used to be planned at 19 bytes per element and ran one at a time). A kernel
    /// that holds whole f32 tensors (karcher) still plans them.
    #[test]
    fn streamed_whole_tasks_plan_their_scratch_not_f32_copies() {
        let n = 11_534_336;
        let params = [
            ("filter_wise", Kind::Bool(false)),
            ("max_iter", Kind::Float(10.0)),
            ("tol", Kind::Float(1e-5)),
        ];
        let streamed = bf16_task("model_stock", 3, &[n], &params);
        assert!(chunk::whole_task_streams(&streamed));
        assert_eq!(
            chunk::whole_task_memory(&streamed, n * 2),
            n * 2 + chunk::STREAM_SCRATCH
        );
        let whole = bf16_task("karcher", 3, &[n], &params);
        assert!(!chunk::whole_task_streams(&whole));
        assert_eq!(chunk::whole_task_memory(&whole, n * 2), n * 2 + n * 4 * 9);
    }
}
