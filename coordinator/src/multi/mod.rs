//! Multi-stage merges, a drop-in for `mergekit-multi`: one YAML file of several documents, each
//! a merge config; a document's `name:` makes it an intermediate merge written to
//! `INTERMEDIATE_DIR/NAME`, and a later (or earlier) document may use that name as a model.
//! At most one document has no name: the final merge, written to `--out-path`.
//!
//! As in mergekit 0.1.5, a model reference whose path equals a stage's name becomes
//! `INTERMEDIATE_DIR/NAME` (joined like Python's `os.path.join`), stages run after the stages
//! they read, every stage is seeded from the same `--random-seed`, `--lazy` (the default) skips
//! a stage whose output already has `config.json` and a model file, and each stage's
//! `mergekit_config.yml` and model card carry the normalized config mergekit re-serializes
//! ([`yaml::mergekit_yaml`]).

pub mod cluster;
pub mod yaml;

use crate::config::{self, ConfigError, MergeConfig, ModelRef};
use crate::{MergeError, MergeOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One document of a multi-stage config.
#[derive(Debug, Clone)]
pub struct Stage {
    /// `name:` of the document; `None` for the final merge.
    pub name: Option<String>,
    /// The merge, with references to other stages already replaced by their output paths.
    pub config: MergeConfig,
    /// Names of the stages it reads.
    pub deps: Vec<String>,
    /// 1-based line of the document's first line in the file.
    pub line: usize,
}

impl Stage {
    /// How messages name the stage.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("stage `{n}`"),
            None => "the final merge".into(),
        }
    }
}

/// Why a multi-stage config cannot run.
#[derive(Debug, thiserror::Error)]
pub enum MultiError {
    /// Reading the file failed.
    #[error("reading {path}: {source}")]
    Read {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A document is not a valid merge config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Something about the set of documents is wrong (names, dependencies, out path).
    #[error("{file}:{line}: {reason}")]
    Invalid {
        /// Config file.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// `--out-path` is needed for an unnamed document.
    #[error("{0}: --out-path is required when the configuration contains an unnamed final merge")]
    OutPathRequired(String),
    /// A stage's cluster job did not succeed.
    #[error("{stage}: {message}")]
    Job {
        /// Which stage.
        stage: String,
        /// What happened.
        message: String,
    },
    /// A stage failed.
    #[error("{stage}: {source}")]
    Stage {
        /// Which stage.
        stage: String,
        /// Cause.
        #[source]
        source: Box<MergeError>,
    },
}

/// What happened to one stage of [`run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Merged into the path.
    Merged(PathBuf),
    /// Skipped by `--lazy`: the output already existed.
    Skipped(PathBuf),
}

impl Outcome {
    /// This stage's line of `shardmerge multi --output json` (see [`stage_json`]).
    pub fn json(&self, stage: &Stage) -> serde_json::Value {
        match self {
            Outcome::Merged(p) => stage_json(stage, "merged", &p.display().to_string(), None),
            Outcome::Skipped(p) => stage_json(stage, "skipped", &p.display().to_string(), None),
        }
    }
}

/// One stage as `--output json` prints it (`shardmerge multi`, and `shardmerge submit` of a
/// multi-stage config; one JSON object a line): `stage` is the document's `name:` (`null` for
/// the final merge), `outcome` `merged` or `skipped` (`--lazy` kept an output that already
/// existed), `output` where the stage's model is, and `job_id` the cluster job that merged it
/// (only for a stage that ran as a job).
pub fn stage_json(stage: &Stage, outcome: &str, output: &str, job_id: Option<&str>) -> serde_json::Value {
    let mut v = serde_json::json!({ "stage": stage.name, "outcome": outcome, "output": output });
    if let Some(job) = job_id {
        v["job_id"] = job.into();
    }
    v
}

/// Where a stage writes: `INTERMEDIATE_DIR/NAME` for named stages, `out_path` for the final one.
pub fn output_of(stage: &Stage, intermediate_dir: &str, out_path: Option<&Path>) -> Option<PathBuf> {
    match &stage.name {
        Some(n) => Some(PathBuf::from(py_join(intermediate_dir, n))),
        None => out_path.map(Path::to_path_buf),
    }
}

/// Python's `os.path.join(dir, name)` for two parts.
fn py_join(dir: &str, name: &str) -> String {
    if name.starts_with('/') || dir.is_empty() {
        name.to_string()
    } else if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Splits `text` into its YAML documents: `(first line index, text with earlier lines blanked)`,
/// so parser positions are lines of the whole file. Documents with nothing but comments and
/// blank lines are dropped.
fn documents(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut docs = Vec::new();
    let mut start = 0;
    let is_marker = |l: &str| {
        (l.starts_with("---") || l.starts_with("...")) && l[3..].chars().next().is_none_or(|c| c == ' ' || c == '\t')
    };
    for i in 0..=lines.len() {
        if i == lines.len() || is_marker(lines[i]) {
            let body = &lines[start..i];
            let meaningful = body.iter().any(|l| {
                let t = l.trim();
                !t.is_empty() && !t.starts_with('#')
            });
            if meaningful {
                let mut doc = "\n".repeat(start);
                doc.push_str(&body.join("\n"));
                doc.push('\n');
                docs.push((start, doc));
            }
            start = i + 1;
        }
    }
    docs
}

/// Parses a multi-document config: every document's `name:` and merge config, with references
/// to other stages replaced by `INTERMEDIATE_DIR/NAME`.
pub fn parse(text: &str, file: &Path, intermediate_dir: &str) -> Result<Vec<Stage>, MultiError> {
    let shown = file.display().to_string();
    let invalid = |line: usize, reason: String| MultiError::Invalid {
        file: shown.clone(),
        line,
        reason,
    };
    let mut stages: Vec<Stage> = Vec::new();
    for (start, doc) in documents(text) {
        let value: serde_norway::Value =
            serde_norway::from_str(&doc).map_err(|e| invalid(start + 1, format!("not a YAML mapping: {e}")))?;
        let name = match value.get("name") {
            None => None,
            Some(serde_norway::Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(other) => {
                let line = name_line(&doc).unwrap_or(start + 1);
                return Err(invalid(
                    line,
                    format!("`name` must be a non-empty string, got {other:?}"),
                ));
            }
        };
        let line = name_line(&doc).unwrap_or(start + 1);
        if let Some(prev) = stages.iter().find(|s| s.name == name) {
            let reason = match &name {
                Some(n) => format!("duplicate merge name `{n}` (first used at line {})", prev.line),
                None => format!(
                    "more than one unnamed merge (the first is at line {}); name every intermediate merge",
                    prev.line
                ),
            };
            return Err(invalid(line, reason));
        }
        let mut config = config::parse_config(&doc, file)?;
        config.warnings.retain(|w| !w.contains("unknown key `name`"));
        if config.tokenizer.as_ref().is_some_and(|t| t.key == "tokenizer") {
            let line = doc
                .lines()
                .position(|l| l.starts_with("tokenizer:"))
                .map_or(start + 1, |i| i + 1);
            return Err(invalid(
                line,
                "a `tokenizer:` mapping is not supported in multi-stage configs yet (its re-serialized \
                 form is not written as mergekit-multi writes it); use `tokenizer_source:`"
                    .into(),
            ));
        }
        stages.push(Stage {
            name,
            config,
            deps: Vec::new(),
            line: start + 1,
        });
    }
    if stages.is_empty() {
        return Err(invalid(1, "no merge documents".into()));
    }
    let names: Vec<String> = stages.iter().filter_map(|s| s.name.clone()).collect();
    for stage in &mut stages {
        let mut deps = Vec::new();
        for_each_ref(&mut stage.config, |r| {
            if names.contains(&r.path) {
                if !deps.contains(&r.path) {
                    deps.push(r.path.clone());
                }
                r.path = py_join(intermediate_dir, &r.path);
            }
        });
        stage.deps = deps;
    }
    Ok(stages)
}

/// Line of a document's top-level `name:` key.
fn name_line(doc: &str) -> Option<usize> {
    doc.lines().position(|l| l.starts_with("name:")).map(|i| i + 1)
}

/// Calls `f` on every model reference of `config`.
fn for_each_ref(config: &mut MergeConfig, mut f: impl FnMut(&mut ModelRef)) {
    for m in &mut config.models {
        f(&mut m.model);
    }
    if let Some(b) = &mut config.base_model {
        f(b);
    }
    for s in &mut config.slices {
        for src in &mut s.sources {
            f(&mut src.model);
        }
        if let Some(b) = &mut s.base_model {
            f(b);
        }
    }
}

/// The order stages run in: each after the stages it reads, otherwise in document order.
/// Fails on a dependency cycle, naming it.
pub fn order(stages: &[Stage], file: &Path) -> Result<Vec<usize>, MultiError> {
    let index: HashMap<&str, usize> = stages
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.name.as_deref().map(|n| (n, i)))
        .collect();
    // 0: not visited, 1: on the current path, 2: done.
    let mut state = vec![0u8; stages.len()];
    let mut out = Vec::new();
    fn visit(
        i: usize,
        stages: &[Stage],
        index: &HashMap<&str, usize>,
        state: &mut [u8],
        path: &mut Vec<usize>,
        out: &mut Vec<usize>,
    ) -> Result<(), Vec<usize>> {
        match state[i] {
            2 => return Ok(()),
            1 => {
                let from = path.iter().position(|&p| p == i).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(i);
                return Err(cycle);
            }
            _ => {}
        }
        state[i] = 1;
        path.push(i);
        for d in &stages[i].deps {
            if let Some(&j) = index.get(d.as_str()) {
                visit(j, stages, index, state, path, out)?;
            }
        }
        path.pop();
        state[i] = 2;
        out.push(i);
        Ok(())
    }
    for i in 0..stages.len() {
        visit(i, stages, &index, &mut state, &mut Vec::new(), &mut out).map_err(|cycle| {
            let names: Vec<String> = cycle.iter().map(|&c| stages[c].label()).collect();
            MultiError::Invalid {
                file: file.display().to_string(),
                line: stages[cycle[0]].line,
                reason: format!("circular dependency: {}", names.join(" -> ")),
            }
        })?;
    }
    Ok(out)
}

/// Options of [`run`] beyond the per-merge ones.
#[derive(Debug, Clone)]
pub struct MultiOptions {
    /// Where named stages are written (`-I`, `--intermediate-dir`), as given (it is joined to
    /// stage names textually, so the paths in the configs match mergekit's).
    pub intermediate_dir: String,
    /// Where the unnamed final merge is written.
    pub out_path: Option<PathBuf>,
    /// Skip stages whose output already exists.
    pub lazy: bool,
}

/// Whether `text` is a multi-stage config: more than one document, or a top-level `name:`.
pub fn is_multi(text: &str) -> bool {
    documents(text).len() > 1 || text.lines().any(|l| l.starts_with("name:"))
}

/// Runs every stage of the multi-stage config at `path` on in-process workers, calling
/// `on_stage` before each with the stage and where it goes.
pub fn run(
    path: &Path,
    multi: &MultiOptions,
    opts: &MergeOptions,
    mut on_stage: impl FnMut(&Stage, &Path),
) -> Result<Vec<(Stage, Outcome)>, MultiError> {
    let text = std::fs::read_to_string(path).map_err(|source| MultiError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let stages = parse(&text, path, &multi.intermediate_dir)?;
    if stages.iter().any(|s| s.name.is_none()) && multi.out_path.is_none() {
        return Err(MultiError::OutPathRequired(path.display().to_string()));
    }
    let order = order(&stages, path)?;
    let intermediate = match &opts.model_root {
        Some(root) => root.join(&multi.intermediate_dir),
        None => PathBuf::from(&multi.intermediate_dir),
    };
    std::fs::create_dir_all(&intermediate).map_err(|source| MultiError::Read {
        path: multi.intermediate_dir.clone(),
        source,
    })?;
    let mut done = Vec::new();
    for i in order {
        let stage = &stages[i];
        let out = output_of(stage, &multi.intermediate_dir, multi.out_path.as_deref()).expect("checked above");
        // Relative paths resolve against the model root, as the configs' model paths do.
        let out = match &opts.model_root {
            Some(root) if out.is_relative() => root.join(out),
            _ => out,
        };
        if multi.lazy
            && out.join("config.json").exists()
            && crate::publish::MODEL_FILES.iter().any(|f| out.join(f).exists())
        {
            done.push((stage.clone(), Outcome::Skipped(out)));
            continue;
        }
        on_stage(stage, &out);
        let fail = |e: MergeError| MultiError::Stage {
            stage: stage.label(),
            source: Box::new(e),
        };
        let plan = crate::plan_config(&stage.config, &out, opts).map_err(fail)?;
        let mut config = stage.config.clone();
        // mergekit-multi writes the normalized config it re-serialized, not the document.
        config.source_text = yaml::mergekit_yaml(&config, &plan);
        crate::execute_plan(plan, &config, &out, opts).map_err(fail)?;
        done.push((stage.clone(), Outcome::Merged(out)));
    }
    Ok(done)
}

#[cfg(test)]
mod tests;
