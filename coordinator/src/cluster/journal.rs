//! The coordinator's journal: one append-only JSON-lines file per job in the state directory.
//!
//! The first line records everything needed to re-plan the job identically (the YAML, the
//! options, the chosen seed, the output and the multipart upload ids); each finished unit then
//! appends its parts; a final line records the outcome. A restarted coordinator replays the
//! files and resumes unfinished jobs without redoing finished units. Every append is fsynced
//! before the coordinator acknowledges the event it records.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Everything needed to re-plan a job identically.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobRecord {
    /// Job id.
    pub job_id: String,
    /// The YAML, byte for byte.
    pub config_yaml: String,
    /// Config file name (for messages).
    pub config_name: String,
    /// Output location.
    pub output_uri: String,
    /// Random seed in use (chosen at submission if none was given).
    pub seed: Option<u64>,
    /// Maximum shard bytes.
    pub out_shard_size: u64,
    /// Copy tokenizer files.
    pub copy_tokenizer: bool,
    /// Write the model card.
    pub write_model_card: bool,
    /// Allow mixed architectures.
    pub allow_crimes: bool,
    /// Multipart upload id per shard.
    pub uploads: Vec<String>,
}

/// One journal line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// The job was accepted.
    Job(JobRecord),
    /// A unit finished with these `(part index, etag)` parts.
    UnitDone {
        /// Unit id.
        unit: u64,
        /// Uploaded parts.
        parts: Vec<(u32, String)>,
    },
    /// The commit completed the upload of this output shard (a restarted commit skips it:
    /// a completed upload cannot be completed again).
    ShardCommitted {
        /// Shard index in the plan.
        shard: u32,
    },
    /// The job ended.
    Finished {
        /// `succeeded`, `failed` or `cancelled`.
        state: String,
        /// Error, if any.
        error: String,
    },
}

/// A replayed job.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// Its record.
    pub record: JobRecord,
    /// Finished units and their parts.
    pub done: HashMap<u64, Vec<(u32, String)>>,
    /// Final state, if the job ended.
    pub finished: Option<(String, String)>,
    /// Output shards whose upload a commit already completed.
    pub committed: Vec<u32>,
}

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
#[error("journal {path}: {reason}")]
pub struct JournalError {
    /// File.
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

/// The journal directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// Opens (creating) `dir/jobs`.
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        let dir = state_dir.join("jobs");
        fs::create_dir_all(&dir).map_err(|e| JournalError {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Journal { dir })
    }

    fn file(&self, job: &str) -> PathBuf {
        self.dir.join(format!("{job}.jsonl"))
    }

    /// Appends one entry for `job` and syncs it to disk.
    pub fn append(&self, job: &str, entry: &Entry) -> Result<(), JournalError> {
        let path = self.file(job);
        let err = |e: std::io::Error| JournalError {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let mut line = serde_json::to_string(entry).map_err(|e| err(std::io::Error::other(e)))?;
        line.push('\n');
        let mut f = OpenOptions::new().create(true).append(true).open(&path).map_err(err)?;
        f.write_all(line.as_bytes()).map_err(err)?;
        f.sync_data().map_err(err)
    }

    /// Syncs every job file and the directory itself to disk (graceful shutdown). Appends are
    /// already synced one by one; this also makes the directory entries of new job files
    /// durable, and is the place to flush anything a faster append path may buffer.
    pub fn sync(&self) -> Result<(), JournalError> {
        let err = |p: &Path, e: std::io::Error| JournalError {
            path: p.display().to_string(),
            reason: e.to_string(),
        };
        let rd = fs::read_dir(&self.dir).map_err(|e| err(&self.dir, e))?;
        for path in rd.flatten().map(|e| e.path()) {
            if path.extension().is_some_and(|x| x == "jsonl") {
                fs::File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| err(&path, e))?;
            }
        }
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err(&self.dir, e))
    }

    /// Replays every job file. A torn last line (crash mid-append) is ignored.
    pub fn replay(&self) -> Result<Vec<Replayed>, JournalError> {
        let mut out = Vec::new();
        let rd = fs::read_dir(&self.dir).map_err(|e| JournalError {
            path: self.dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        files.sort();
        for path in files {
            let text = fs::read_to_string(&path).map_err(|e| JournalError {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            let mut record = None;
            let mut done = HashMap::new();
            let mut finished = None;
            let mut committed = Vec::new();
            for line in text.lines() {
                let Ok(entry) = serde_json::from_str::<Entry>(line) else {
                    continue;
                };
                match entry {
                    Entry::Job(r) => record = Some(r),
                    Entry::UnitDone { unit, parts } => {
                        done.insert(unit, parts);
                    }
                    Entry::ShardCommitted { shard } => committed.push(shard),
                    Entry::Finished { state, error } => finished = Some((state, error)),
                }
            }
            if let Some(record) = record {
                out.push(Replayed {
                    record,
                    done,
                    finished,
                    committed,
                });
            }
        }
        Ok(out)
    }

    /// Highest numeric job id in the journal (ids are `job-N`).
    pub fn max_job_number(&self) -> u64 {
        self.replay()
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.record.job_id.strip_prefix("job-").and_then(|n| n.parse().ok()))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> JobRecord {
        JobRecord {
            job_id: id.into(),
            config_yaml: "merge_method: linear\n".into(),
            config_name: "c.yml".into(),
            output_uri: "s3://b/out".into(),
            seed: Some(7),
            out_shard_size: 5_000_000_000,
            copy_tokenizer: true,
            write_model_card: true,
            allow_crimes: false,
            uploads: vec!["u1".into()],
        }
    }

    #[test]
    fn replays_records_done_units_and_outcomes_and_ignores_torn_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::open(tmp.path()).unwrap();
        j.append("job-1", &Entry::Job(record("job-1"))).unwrap();
        j.append(
            "job-1",
            &Entry::UnitDone {
                unit: 3,
                parts: vec![(0, "e".into())],
            },
        )
        .unwrap();
        j.append("job-1", &Entry::ShardCommitted { shard: 0 }).unwrap();
        j.append("job-2", &Entry::Job(record("job-2"))).unwrap();
        j.append(
            "job-2",
            &Entry::Finished {
                state: "failed".into(),
                error: "x".into(),
            },
        )
        .unwrap();
        // A crash mid-append leaves a torn line.
        let mut f = OpenOptions::new()
            .append(true)
            .open(tmp.path().join("jobs/job-1.jsonl"))
            .unwrap();
        f.write_all(b"{\"kind\":\"unit_do").unwrap();
        let r = Journal::open(tmp.path()).unwrap().replay().unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].record, record("job-1"));
        assert_eq!(r[0].done[&3], vec![(0, "e".to_string())]);
        assert!(r[0].finished.is_none());
        assert_eq!((r[0].committed.as_slice(), r[1].committed.len()), (&[0u32][..], 0));
        assert_eq!(r[1].finished, Some(("failed".into(), "x".into())));
        assert_eq!(j.max_job_number(), 2);
    }
}
