//! What a job's journal pins: a fingerprint of its planned units and parts, and the versions
//! of its input files: the safetensors files its tasks read and, when the plan read tokenizers
//! (vocabulary alignment, a chat template), the tokenizer files beside every model. A resume
//! checks the pins, then re-plans and compares the fingerprint; a difference is refused and
//! named, never applied to byte ranges it was not journaled for, nor to a tokenizer planned
//! from other files.

use super::super::journal::PinnedInput;
use super::super::units::UnitPlan;
use super::ServiceError;
use crate::plan::Plan;
use prost::Message;
use sha2::{Digest, Sha256};
use shardmerge_worker::safetensors_io::TEXT_SIDE_FILES;
use shardmerge_worker::storage::{Location, Storage};
use std::collections::BTreeSet;

/// `units=N parts=N shards=N bytes=N layout=HASH tasks=HASH`: counts a human can compare,
/// plus hashes of the unit layout (byte ranges, part numbers, task membership) and of every
/// task's wire form (inputs, offsets, parameters, seeds).
pub fn fingerprint(plan: &Plan, units: &[UnitPlan]) -> String {
    let mut layout = Sha256::new();
    let mut parts = 0usize;
    for u in units {
        for v in [u.unit_id, u.shard as u64, u.start, u.end, u64::from(u.first_part)] {
            layout.update(v.to_le_bytes());
        }
        for &p in &u.part_starts {
            layout.update(p.to_le_bytes());
        }
        for &t in &u.tasks {
            layout.update((t as u64).to_le_bytes());
        }
        layout.update(b";");
        parts += u.part_starts.len();
    }
    let mut tasks = Sha256::new();
    for s in &plan.proto.shards {
        tasks.update(s.file_name.as_bytes());
        tasks.update(s.total_bytes.to_le_bytes());
        tasks.update(Sha256::digest(&s.header));
    }
    for t in &plan.proto.tasks {
        // Parameter maps encode in hash-map order: sort them for a stable hash.
        let mut t = t.clone();
        let mut shared: Vec<_> = t.shared_params.drain().collect();
        shared.sort_by(|a, b| a.0.cmp(&b.0));
        tasks.update(format!("{shared:?}").as_bytes());
        for i in &mut t.inputs {
            let mut p: Vec<_> = i.params.drain().collect();
            p.sort_by(|a, b| a.0.cmp(&b.0));
            tasks.update(format!("{p:?}").as_bytes());
        }
        tasks.update(t.encode_to_vec());
    }
    format!(
        "units={} parts={parts} shards={} bytes={} layout={} tasks={}",
        units.len(),
        plan.proto.shards.len(),
        plan.proto.shards.iter().map(|s| s.total_bytes).sum::<u64>(),
        hex(&layout.finalize()[..8]),
        hex(&tasks.finalize()[..8]),
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Explains a fingerprint mismatch: which components differ.
pub fn mismatch(journaled: &str, now: &str) -> String {
    let split = |s: &str| -> Vec<(String, String)> {
        s.split_whitespace()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect()
    };
    let (a, b) = (split(journaled), split(now));
    let diffs: Vec<String> = a
        .iter()
        .filter_map(|(k, v)| {
            let w = b.iter().find(|(k2, _)| k2 == k).map_or("?", |(_, w)| w.as_str());
            (v != w).then(|| format!("{k} {v} -> {w}"))
        })
        .collect();
    let what = if diffs.is_empty() {
        format!("`{journaled}` -> `{now}`")
    } else {
        diffs.join(", ")
    };
    format!(
        "the job's plan changed since it was journaled ({what}); this coordinator would write different byte \
         ranges than the finished units used, so the job is not resumed; resubmit it"
    )
}

/// Every distinct input file the plan read: the files its tasks read and [`tokenizer_uris`].
fn input_uris(plan: &Plan) -> BTreeSet<String> {
    let mut uris: BTreeSet<String> = plan
        .proto
        .tasks
        .iter()
        .flat_map(|t| t.inputs.iter())
        .filter_map(|i| i.source.as_ref().map(|s| s.uri.clone()))
        .collect();
    uris.extend(tokenizer_uris(plan));
    uris
}

/// The tokenizer files (`tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`) of
/// every model that has them, when the plan wrote tokenizer files: the output vocabulary, the
/// row permutations and the chat template were planned from them.
fn tokenizer_uris(plan: &Plan) -> Vec<String> {
    if plan.tokenizer_files.is_none() {
        return Vec::new();
    }
    plan.models
        .iter()
        .flat_map(|m| {
            TEXT_SIDE_FILES
                .iter()
                .filter(|name| m.dir.side.get(name).is_some())
                .map(|name| m.dir.root.join(name).to_string_lossy().into_owned())
        })
        .collect()
}

/// Size and version of every input file now.
pub async fn pin_inputs(storage: &Storage, plan: &Plan) -> Result<Vec<PinnedInput>, ServiceError> {
    let mut out = Vec::new();
    for uri in input_uris(plan) {
        let loc = Location::parse(&uri).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let (size, version) = storage.stat(&loc).await.map_err(ServiceError::storage)?;
        out.push(PinnedInput { uri, size, version });
    }
    Ok(out)
}

/// Checks that every pinned input is unchanged; the error names the first that changed.
pub async fn check_inputs(storage: &Storage, pinned: &[PinnedInput]) -> Result<(), ServiceError> {
    for p in pinned {
        let loc = Location::parse(&p.uri).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let (size, version) = storage.stat(&loc).await.map_err(ServiceError::storage)?;
        if size != p.size || version != p.version {
            let consequence = if TEXT_SIDE_FILES.iter().any(|name| p.uri.ends_with(&format!("/{name}"))) {
                "the job's vocabulary and tokenizer were planned from the old file, so it is not resumed or \
                 published; resubmit it"
            } else {
                "the merge would mix old and new bytes, so it is not published"
            };
            return Err(ServiceError::Invalid(format!(
                "input {} changed while the job ran (was {} bytes, version {}; now {size} bytes, version \
                 {version}); {consequence}",
                p.uri, p.size, p.version
            )));
        }
    }
    Ok(())
}
