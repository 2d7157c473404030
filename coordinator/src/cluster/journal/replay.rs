//! Replaying one job's journal file into a [`Replayed`]: complete lines in order, a torn
//! last line ignored, an unreadable line marking the job damaged.

use super::{Entry, JobRecord, Replayed};
use std::collections::HashMap;
use std::path::Path;

/// Replays one job file; `None` when it holds no job record at all (a crash before the
/// first line was complete: nothing was acknowledged).
pub(super) fn replay_file(path: &Path, text: &str) -> Option<Replayed> {
    // Only newline-terminated lines are complete; a final piece without one is torn.
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut r = Replayed {
        record: JobRecord::default_for(path),
        uploads_created: false,
        done: HashMap::new(),
        stats: HashMap::new(),
        commit_started: false,
        committed: Vec::new(),
        finished: None,
        cleaned: false,
        damaged: None,
    };
    let mut have_record = false;
    for (n, line) in complete.lines().enumerate() {
        let entry = match serde_json::from_str::<Entry>(line) {
            Ok(e) => e,
            Err(e) => {
                r.damaged = Some(format!(
                    "journal {} line {}: unreadable ({e}); the job cannot be resumed",
                    path.display(),
                    n + 1
                ));
                break;
            }
        };
        match entry {
            Entry::Job(rec) => {
                have_record = true;
                r.record = rec;
            }
            Entry::Uploads { ids, files } => {
                r.uploads_created = true;
                r.record.uploads = ids;
                r.record.shard_files = files;
            }
            Entry::UnitDone { unit, parts, stats } => {
                r.done.insert(unit, parts);
                if !stats.is_empty() {
                    r.stats.insert(unit, stats);
                }
            }
            Entry::CommitStarted => r.commit_started = true,
            Entry::ShardCommitted { shard } => r.committed.push(shard),
            Entry::Finished { state, error, at } => r.finished = Some((state, error, at)),
            Entry::Cleaned => r.cleaned = true,
        }
    }
    if !have_record && r.damaged.is_none() {
        return None;
    }
    if !have_record {
        // Damaged before any record: name the job by its file.
        r.record.job_id = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
    }
    // Jobs journaled before upload ids had their own entry carried them in the record.
    if !r.record.uploads.is_empty() {
        r.uploads_created = true;
    }
    Some(r)
}

impl JobRecord {
    fn default_for(path: &Path) -> JobRecord {
        JobRecord {
            format: 0,
            job_id: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            config_yaml: String::new(),
            config_name: String::new(),
            output_uri: String::new(),
            seed: None,
            out_shard_size: 0,
            unit_target: 0,
            chunk_size: 0,
            memory_limit: None,
            copy_tokenizer: false,
            write_model_card: false,
            allow_crimes: false,
            unsafe_truncate_embeddings: false,
            fingerprint: String::new(),
            inputs: Vec::new(),
            uploads: Vec::new(),
            shard_files: Vec::new(),
        }
    }
}
