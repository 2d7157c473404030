//! Normalisation of a config into output slices, and opening of the input models.
//!
//! `models:` becomes one slice whose sources are the listed models over all their layers, with
//! the base appended last when it is not listed (mergekit's rule). `slices:` is taken as is,
//! each slice's `base_model` overriding the global one.

use super::{PlanError, PlanOptions};
use crate::arch;
use crate::config::{MergeConfig, ModelRef, ParamMap};
use shardmerge_worker::methods::MethodSpec;
use shardmerge_worker::safetensors_io::ModelDir;
use std::path::PathBuf;

/// One distinct input model.
#[derive(Debug)]
pub struct PlannedModel {
    /// The reference as written in the config.
    pub reference: ModelRef,
    /// Display form (`path[@rev]`).
    pub display: String,
    /// Resolved local directory.
    pub path: PathBuf,
    /// The opened directory (tensor index and config).
    pub dir: ModelDir,
    /// Layer count from its config (or inferred from tensor names).
    pub num_layers: u64,
}

/// One source of a normalised slice.
#[derive(Debug, Clone)]
pub struct NSource {
    /// Index into [`Normalized::models`].
    pub model: usize,
    /// Half-open input layer range.
    pub range: (u64, u64),
    /// Per-source parameters.
    pub params: ParamMap,
}

/// One normalised output slice.
#[derive(Debug, Clone)]
pub struct NSlice {
    /// Sources in config order.
    pub sources: Vec<NSource>,
    /// Base model of this slice.
    pub base: Option<usize>,
    /// Slice-level parameters.
    pub params: ParamMap,
}

/// The config in `slices` form with its models opened.
#[derive(Debug)]
pub struct Normalized {
    /// Distinct models.
    pub models: Vec<PlannedModel>,
    /// Output slices.
    pub slices: Vec<NSlice>,
    /// Global base model.
    pub base: Option<usize>,
    /// Donor of `config.json` and the tokenizer.
    pub donor: usize,
    /// Output layer count when the config uses `slices`.
    pub num_layers: Option<u64>,
    /// Warnings for the user.
    pub warnings: Vec<String>,
}

/// `FILE:LINE` of the first line mentioning `needle`, or just `FILE`.
pub fn at_line(config: &MergeConfig, needle: &str) -> String {
    let file = config.file.display();
    match config.source_text.lines().position(|l| l.contains(needle)) {
        Some(i) => format!("{file}:{}", i + 1),
        None => format!("{file}"),
    }
}

struct Models<'a> {
    config: &'a MergeConfig,
    opts: &'a PlanOptions,
    list: Vec<PlannedModel>,
}

impl Models<'_> {
    fn index(&mut self, r: &ModelRef) -> Result<usize, PlanError> {
        if let Some(i) = self.list.iter().position(|m| &m.reference == r) {
            return Ok(i);
        }
        let where_ = at_line(self.config, &r.path);
        if r.path.contains("://")
            && !r.path.starts_with("file://")
            && let Some(open) = &self.opts.opener
        {
            let (path, dir) = open(&r.path).map_err(|e| PlanError::Model(format!("{where_}: model `{r}`: {e}")))?;
            return Ok(self.push(r, path, dir));
        }
        let raw = r.path.strip_prefix("file://").unwrap_or(&r.path);
        let path = if std::path::Path::new(raw).is_absolute() {
            PathBuf::from(raw)
        } else {
            self.opts.model_root.join(raw)
        };
        if !path.is_dir() {
            return Err(PlanError::Model(format!(
                "{where_}: model `{r}` not found: no directory at {} (shardmerge reads local model directories; it does not download from the Hugging Face Hub)",
                path.display()
            )));
        }
        let dir = ModelDir::open(&path).map_err(|e| PlanError::Model(format!("{where_}: model `{r}`: {e}")))?;
        Ok(self.push(r, path, dir))
    }

    fn push(&mut self, r: &ModelRef, path: PathBuf, dir: ModelDir) -> usize {
        let from_config = dir.config.as_ref().and_then(arch::num_layers).map(|(_, n)| n);
        let inferred = dir
            .tensors
            .keys()
            .filter_map(|n| arch::split_layer_name(n).map(|(_, i, _)| i + 1))
            .max()
            .unwrap_or(0);
        let num_layers = from_config.unwrap_or(inferred);
        self.list.push(PlannedModel {
            reference: r.clone(),
            display: r.to_string(),
            path,
            dir,
            num_layers,
        });
        self.list.len() - 1
    }
}

/// Normalises `config` and opens every referenced model.
pub fn normalize(config: &MergeConfig, method: &MethodSpec, opts: &PlanOptions) -> Result<Normalized, PlanError> {
    let mut models = Models {
        config,
        opts,
        list: Vec::new(),
    };
    let mut warnings = config.warnings.clone();
    let base = config.base_model.as_ref().map(|b| models.index(b)).transpose()?;
    let mut slices = Vec::new();
    let mut num_layers = None;
    if !config.models.is_empty() {
        let mut sources = Vec::new();
        for m in &config.models {
            let idx = models.index(&m.model)?;
            sources.push(NSource {
                model: idx,
                range: (0, 0),
                params: m.parameters.clone(),
            });
        }
        if let Some(b) = base
            && !sources.iter().any(|s| s.model == b)
        {
            sources.push(NSource {
                model: b,
                range: (0, 0),
                params: ParamMap::default(),
            });
        }
        let first_len = models.list[sources[0].model].num_layers;
        let first_name = models.list[sources_first(&sources)].display.clone();
        for s in &mut sources {
            let n = models.list[s.model].num_layers;
            if n != first_len {
                return Err(PlanError::Invalid(format!(
                    "{}: models have different layer counts: `{}` has {first_len}, `{}` has {n}; use `slices:` to pick layer ranges",
                    config.file.display(),
                    first_name,
                    models.list[s.model].display
                )));
            }
            s.range = (0, n);
        }
        slices.push(NSlice {
            sources,
            base,
            params: ParamMap::default(),
        });
    } else {
        let mut total = 0u64;
        for (si, slice) in config.slices.iter().enumerate() {
            let slice_base = match &slice.base_model {
                Some(b) => Some(models.index(b)?),
                None => base,
            };
            let mut sources = Vec::new();
            let mut len = None;
            for src in &slice.sources {
                let idx = models.index(&src.model)?;
                let n = models.list[idx].num_layers;
                let (a, b) = src.layer_range.unwrap_or((0, n));
                if a > b || b > n {
                    return Err(PlanError::Invalid(format!(
                        "{}: slice {si}: layer_range [{a}, {b}] of model `{}` is outside its {n} layers",
                        at_line(config, "layer_range"),
                        src.model
                    )));
                }
                match len {
                    None => len = Some(b - a),
                    Some(l) if l != b - a => {
                        return Err(PlanError::Invalid(format!(
                            "{}: slice {si}: sources have different layer_range lengths ({l} and {})",
                            config.file.display(),
                            b - a
                        )));
                    }
                    _ => {}
                }
                sources.push(NSource {
                    model: idx,
                    range: (a, b),
                    params: src.parameters.clone(),
                });
            }
            if sources.is_empty() {
                return Err(PlanError::Invalid(format!(
                    "{}: slice {si} has no sources",
                    config.file.display()
                )));
            }
            total += len.unwrap_or(0);
            slices.push(NSlice {
                sources,
                base: slice_base,
                params: slice.parameters.clone(),
            });
        }
        num_layers = Some(total);
    }
    if slices.is_empty() {
        return Err(PlanError::Invalid(format!(
            "{}: nothing to merge: `models` and `slices` are empty",
            config.file.display()
        )));
    }
    let donor = base.unwrap_or(slices[0].sources[0].model);
    check_architectures(&models.list, opts.allow_crimes, &mut warnings)?;
    let _ = method;
    Ok(Normalized {
        models: models.list,
        slices,
        base,
        donor,
        num_layers,
        warnings,
    })
}

fn sources_first(sources: &[NSource]) -> usize {
    sources[0].model
}

fn check_architectures(
    models: &[PlannedModel],
    allow_crimes: bool,
    warnings: &mut Vec<String>,
) -> Result<(), PlanError> {
    let archs: Vec<(String, Option<String>)> = models
        .iter()
        .map(|m| (m.display.clone(), m.dir.config.as_ref().and_then(arch::architecture)))
        .collect();
    let known: Vec<&(String, Option<String>)> = archs.iter().filter(|(_, a)| a.is_some()).collect();
    if let Some(first) = known.first() {
        for other in &known[1..] {
            if other.1 != first.1 {
                let msg = format!(
                    "models have different architectures: `{}` is {}, `{}` is {}",
                    first.0,
                    first.1.as_deref().unwrap_or("?"),
                    other.0,
                    other.1.as_deref().unwrap_or("?")
                );
                if allow_crimes {
                    warnings.push(format!("{msg} (allowed by --allow-crimes)"));
                } else {
                    return Err(PlanError::Invalid(format!(
                        "{msg}; pass --allow-crimes to merge them anyway"
                    )));
                }
            }
        }
    }
    Ok(())
}
