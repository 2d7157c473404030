//! The campaign's dataset: `PREFIX/campaign.jsonl`, one JSON object a line per merge, in draw
//! order, rewritten whole and atomically whenever a merge finishes.

use serde::{Deserialize, Serialize};
use shardmerge_worker::storage::{Location, Storage, StorageError};

/// Where a merge stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not finished (never started, or interrupted).
    Pending,
    /// Merged and committed at `output`.
    Committed,
    /// The merge failed (`error` says why).
    Failed,
    /// The pair cannot be merged (different architectures or shapes: `error` says why).
    Skipped,
}

/// One line of `campaign.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the campaign, from 0.
    pub index: usize,
    /// Output name under the prefix.
    pub name: String,
    /// The two models; the first is the base.
    pub models: [String; 2],
    /// `slerp` or `dare_ties`.
    pub method: String,
    /// `--random-seed` of the merge.
    pub seed: u64,
    /// The full merge YAML.
    pub yaml: String,
    /// Output location (path or `s3://` URI).
    pub output: String,
    /// State.
    pub state: State,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Wall seconds of the merge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Bytes written (tensor data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<u64>,
    /// Unix time the merge finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// The JSON object `--then` printed (for example evaluation scores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<serde_json::Map<String, serde_json::Value>>,
    /// Why `--then` failed, if it did (the merge itself stays committed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_error: Option<String>,
}

/// Why the dataset cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A line is not a record.
    #[error("{location}:{line}: not a campaign record: {source}")]
    Parse {
        /// Dataset location.
        location: String,
        /// 1-based line.
        line: usize,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Largest dataset read back (a million merges of a few KiB each).
const MAX_DATASET: u64 = 4 << 30;

/// The dataset of the campaign at `prefix`.
pub fn location(prefix: &Location) -> Location {
    prefix.join("campaign.jsonl")
}

/// Reads the records at `loc`; an absent dataset is empty.
pub async fn load(st: &Storage, loc: &Location) -> Result<Vec<Record>, DatasetError> {
    if !st.exists(loc).await? {
        return Ok(Vec::new());
    }
    let bytes = st.read_all_small(loc, MAX_DATASET).await?;
    parse(&String::from_utf8_lossy(&bytes), &loc.to_uri())
}

/// Parses JSON lines (blank lines skipped).
pub fn parse(text: &str, shown: &str) -> Result<Vec<Record>, DatasetError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| DatasetError::Parse {
                location: shown.to_string(),
                line: i + 1,
                source,
            })
        })
        .collect()
}

/// Writes every record, one a line, replacing the dataset atomically.
pub async fn save(st: &Storage, loc: &Location, records: &[Record]) -> Result<(), DatasetError> {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).expect("records serialize"));
        text.push('\n');
    }
    st.put(loc, text.into_bytes().into()).await?;
    Ok(())
}
