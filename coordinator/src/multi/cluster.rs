//! A multi-stage config as one pipeline on a cluster (`shardmerge submit` of a multi-document
//! file): every stage is a job, submitted once the stages it reads are committed. Intermediate
//! outputs may live on S3. Each job's config is the stage's normalized YAML (what
//! `mergekit-multi` writes to `mergekit_config.yml`), which shardmerge reads back as the same
//! merge, so every stage's output equals the embedded `shardmerge multi`'s.

use super::{MultiError, Stage, output_of, stage_json, yaml};
use crate::cluster::client::{self, Client};
use crate::config::ModelRef;
use shardmerge_proto::v1::{JobState, MergeOptions};
use shardmerge_worker::storage::{Location, Storage};
use std::collections::HashMap;

/// What happened to one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageRun {
    /// Committed by this job.
    Committed {
        /// The job.
        job: String,
        /// Where.
        output: String,
    },
    /// Skipped by `--lazy`: its output was already committed.
    Skipped(String),
}

impl StageRun {
    /// This stage's line of `shardmerge submit --output json` (see [`stage_json`]).
    pub fn json(&self, stage: &Stage) -> serde_json::Value {
        match self {
            StageRun::Committed { job, output } => stage_json(stage, "merged", output, Some(job)),
            StageRun::Skipped(output) => stage_json(stage, "skipped", output, None),
        }
    }
}

fn failed(stage: &Stage, message: String) -> MultiError {
    MultiError::Job {
        stage: stage.label(),
        message,
    }
}

/// Layer counts of every model `stage` reads, from their `config.json`.
async fn layer_counts(st: &Storage, stage: &Stage) -> Result<HashMap<String, u64>, MultiError> {
    let c = &stage.config;
    let refs: Vec<&ModelRef> = c
        .models
        .iter()
        .map(|m| &m.model)
        .chain(c.slices.iter().flat_map(|s| s.sources.iter().map(|x| &x.model)))
        .collect();
    let mut out = HashMap::new();
    for r in refs {
        if out.contains_key(&r.path) {
            continue;
        }
        let n = crate::arch::model_num_layers(st, &r.path)
            .await
            .map_err(|e| failed(stage, e))?;
        out.insert(r.path.clone(), n);
    }
    Ok(out)
}

/// Runs `stages` in `order` as jobs on the coordinator behind `c`: each is submitted after the
/// stages before it in `order` (which it may read) committed. Stops at the first stage that
/// does not succeed. `on_stage(stage, what)` reports progress; the result is every stage with
/// what happened to it, in `order`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    st: &Storage,
    c: &mut Client,
    stages: &[Stage],
    order: &[usize],
    intermediate_dir: &str,
    out: &str,
    lazy: bool,
    options: MergeOptions,
    mut on_stage: impl FnMut(&Stage, &str),
) -> Result<Vec<(Stage, StageRun)>, MultiError> {
    let mut done = Vec::new();
    for &i in order {
        let stage = &stages[i];
        let target = output_of(stage, intermediate_dir, Some(std::path::Path::new(out)))
            .expect("the final output is given")
            .display()
            .to_string();
        let loc = Location::parse(&target).map_err(|e| failed(stage, e.to_string()))?;
        if lazy && crate::publish::is_committed(st, &loc).await.unwrap_or(false) {
            on_stage(stage, &format!("{target} exists, skipped (--no-lazy reruns it)"));
            done.push((stage.clone(), StageRun::Skipped(target)));
            continue;
        }
        let layers = layer_counts(st, stage).await?;
        let text = yaml::normalized_yaml(&stage.config, |m| layers.get(&m.path).copied().unwrap_or(0));
        let name = format!(
            "{}#{}",
            stage.config.file.display(),
            stage.name.as_deref().unwrap_or("final")
        );
        let (job, warnings) = client::submit(c, text, name, target.clone(), options)
            .await
            .map_err(|e| failed(stage, e.to_string()))?;
        for w in warnings {
            on_stage(stage, &format!("warning: {w}"));
        }
        on_stage(stage, &format!("job {job} merging into {target}"));
        let s = client::wait(c, &job, false)
            .await
            .map_err(|e| failed(stage, e.to_string()))?;
        if s.state != JobState::Succeeded as i32 {
            return Err(failed(
                stage,
                format!("job {job} {}: {}", client::state_name(s.state), s.error),
            ));
        }
        on_stage(stage, &format!("job {job} committed {target}"));
        done.push((stage.clone(), StageRun::Committed { job, output: target }));
    }
    Ok(done)
}
