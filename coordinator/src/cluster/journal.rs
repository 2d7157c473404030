//! The coordinator's journal: one append-only JSON-lines file per job in the state directory.
//!
//! The first line records everything needed to re-plan the job identically (the YAML, every
//! option that shapes the plan, the chosen seed, the pinned inputs, the format version and a
//! fingerprint of the planned units); the multipart upload ids follow once created; each
//! finished unit then appends its parts; the commit marks its start and each completed shard;
//! `finished` records the outcome, and `cleaned` that a failed or cancelled job's output was
//! removed. A restarted coordinator replays the files and resumes unfinished jobs without
//! redoing finished units.
//!
//! Appends are group-committed by a writer thread (`journal/writer.rs`): a ticket ([`Durable`])
//! resolves only once its line, and every line submitted before it, is on disk.
//!
//! Damage: only a torn last line (a crash mid-append: no final newline) is ignored, and it is
//! cut off before the next append. Any other unreadable line stops the resume of that job with
//! an error naming the file and line. The state directory is locked (`state_dir/lock`) so two
//! coordinators never share it, and holds the coordinator's epoch (`state_dir/epoch`), bumped
//! at every start, which makes every id a coordinator issues unique across restarts.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use tokio::sync::oneshot;

mod replay;
mod stats;
mod writer;
pub use stats::{decode_stats, encode_stats};
use writer::{Queued, Writer};

/// Version of the job record's format; a record of another version is not resumed.
pub const FORMAT_VERSION: u32 = 2;

/// An input file pinned at plan time: a worker refuses to read it if it changed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PinnedInput {
    /// URI of the file.
    pub uri: String,
    /// Its size.
    pub size: u64,
    /// ETag (S3) or modification time (local), when known.
    pub version: String,
}

/// Everything needed to re-plan a job identically.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobRecord {
    /// Record format ([`FORMAT_VERSION`]).
    #[serde(default)]
    pub format: u32,
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
    /// Target bytes per work unit (the coordinator's `--unit-size` when the job was submitted).
    #[serde(default)]
    pub unit_target: u64,
    /// Output bytes above which tensors were split into chunk tasks (the coordinator's
    /// `--chunk-size` when the job was submitted; 0, as in older journals, splits nothing).
    #[serde(default)]
    pub chunk_size: u64,
    /// Workers' memory budget the job was planned for (`--worker-memory-limit`).
    #[serde(default)]
    pub memory_limit: Option<u64>,
    /// Copy tokenizer files.
    pub copy_tokenizer: bool,
    /// Write the model card.
    pub write_model_card: bool,
    /// Allow mixed architectures.
    pub allow_crimes: bool,
    /// `--unsafe-truncate-embeddings` (false in older journals, which could not set it).
    #[serde(default)]
    pub unsafe_truncate_embeddings: bool,
    /// Hash of the planned units, parts and options; a resume that plans differently is refused.
    #[serde(default)]
    pub fingerprint: String,
    /// Input files as they were at plan time.
    #[serde(default)]
    pub inputs: Vec<PinnedInput>,
    /// Multipart upload id per shard (filled from the `uploads` entry on replay).
    #[serde(default)]
    pub uploads: Vec<String>,
    /// File name per shard (filled from the `uploads` entry on replay).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shard_files: Vec<String>,
}

/// One journal line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// The job was accepted.
    Job(JobRecord),
    /// The output's multipart uploads were created (one per shard, in shard order).
    Uploads {
        /// Upload ids.
        ids: Vec<String>,
        /// The shards' file names, in the same order (so a cleanup needs no plan).
        #[serde(default)]
        files: Vec<String>,
    },
    /// A unit finished with these `(part index, etag)` parts.
    UnitDone {
        /// Unit id.
        unit: u64,
        /// The multipart parts the unit uploaded, as the completion will name them.
        parts: Vec<(u32, String)>,
        /// Statistics chunk tasks: `(task id, hex of the protobuf ChunkStats)` in task order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        stats: Vec<(u64, String)>,
    },
    /// The commit started writing at the output (a failure from here on removes what it wrote).
    CommitStarted,
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
        /// Unix time in seconds (for retention).
        #[serde(default)]
        at: u64,
    },
    /// A failed or cancelled job's uploads are aborted and its output removed.
    Cleaned,
}

impl Entry {
    /// The `finished` entry for `state` now.
    pub fn finished(state: &str, error: String) -> Entry {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Entry::Finished {
            state: state.into(),
            error,
            at,
        }
    }

    /// The job's file is complete after this entry (it is closed; removed after retention).
    fn is_last(&self) -> bool {
        matches!(self, Entry::Cleaned) || matches!(self, Entry::Finished { state, .. } if state == "succeeded")
    }
}

/// A replayed job.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// Its record (with the upload ids of the `uploads` entry).
    pub record: JobRecord,
    /// Whether the `uploads` entry was journaled.
    pub uploads_created: bool,
    /// Finished units and their parts.
    pub done: HashMap<u64, Vec<(u32, String)>>,
    /// Statistics of done statistics units, as journaled (`(task id, hex)`).
    pub stats: HashMap<u64, Vec<(u64, String)>>,
    /// Whether the commit started writing at the output.
    pub commit_started: bool,
    /// Output shards whose upload a commit already completed.
    pub committed: Vec<u32>,
    /// Final state, error and time, if the job ended.
    pub finished: Option<(String, String, u64)>,
    /// The cleanup of a failed or cancelled job finished.
    pub cleaned: bool,
    /// Why the file cannot be resumed (a damaged line), if so.
    pub damaged: Option<String>,
}

/// Errors of the journal.
#[derive(Debug, Clone, thiserror::Error)]
#[error("journal {path}: {reason}")]
pub struct JournalError {
    /// File.
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

fn jerr(path: &Path, e: impl std::fmt::Display) -> JournalError {
    JournalError {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// The journal directory and its writer thread. Cheap to clone; the writer stops when the
/// last clone is dropped (after writing what was queued).
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
    queue: mpsc::Sender<Queued>,
    epoch: u64,
    /// The state directory's lock, held until [`Journal::close`] (or the process ends).
    lock: Arc<parking_lot::Mutex<Option<File>>>,
}

/// Resolves once a submitted line is fsynced (or its write failed).
#[derive(Debug)]
#[must_use = "a journal line is durable only once its ticket resolves"]
pub struct Durable {
    path: PathBuf,
    ack: oneshot::Receiver<Result<(), JournalError>>,
}

impl Durable {
    /// Waits until the line is on disk.
    pub async fn wait(self) -> Result<(), JournalError> {
        let path = self.path;
        self.ack.await.unwrap_or_else(|_| Err(stopped(&path)))
    }

    /// [`Durable::wait`] for synchronous callers (not from inside an async context).
    pub fn wait_blocking(self) -> Result<(), JournalError> {
        let path = self.path;
        self.ack.blocking_recv().unwrap_or_else(|_| Err(stopped(&path)))
    }
}

fn stopped(path: &Path) -> JournalError {
    jerr(path, "the journal writer stopped")
}

/// Makes `dir`'s entries (new or renamed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Locks `state_dir` for this process and bumps its epoch; returns the lock and the epoch.
fn lock_and_bump_epoch(state_dir: &Path) -> Result<(File, u64), JournalError> {
    fs::create_dir_all(state_dir).map_err(|e| jerr(state_dir, e))?;
    let lock_path = state_dir.join("lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| jerr(&lock_path, e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            return Err(jerr(
                &lock_path,
                "the state directory is in use by another coordinator (one state directory per coordinator)",
            ));
        }
        Err(fs::TryLockError::Error(e)) => return Err(jerr(&lock_path, e)),
    }
    let epoch_path = state_dir.join("epoch");
    let prev = match fs::read_to_string(&epoch_path) {
        Ok(t) => t
            .trim()
            .parse::<u64>()
            .map_err(|e| jerr(&epoch_path, format!("not an epoch number: {e}")))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(jerr(&epoch_path, e)),
    };
    let epoch = prev + 1;
    let tmp = state_dir.join("epoch.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        std::io::Write::write_all(&mut f, format!("{epoch}\n").as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &epoch_path)?;
        sync_dir(state_dir)
    };
    write().map_err(|e| jerr(&epoch_path, e))?;
    Ok((lock, epoch))
}

impl Journal {
    /// Locks `state_dir`, bumps its epoch, opens (creating) `state_dir/jobs` and starts the
    /// writer thread.
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        let (lock, epoch) = lock_and_bump_epoch(state_dir)?;
        let dir = state_dir.join("jobs");
        fs::create_dir_all(&dir).map_err(|e| jerr(&dir, e))?;
        sync_dir(state_dir).map_err(|e| jerr(state_dir, e))?;
        let (queue, rx) = mpsc::channel();
        let writer = Writer::new(dir.clone());
        std::thread::Builder::new()
            .name("shardmerge-journal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| jerr(&dir, e))?;
        Ok(Journal {
            dir,
            queue,
            epoch,
            lock: Arc::new(parking_lot::Mutex::new(Some(lock))),
        })
    }

    /// This coordinator's epoch: 1 at the first start on a state directory, +1 at every start.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn file(&self, job: &str) -> PathBuf {
        self.dir.join(format!("{job}.jsonl"))
    }

    /// Queues one entry for `job`; it is durable when the returned ticket resolves. Entries of
    /// one job are written in the order they are submitted.
    pub fn submit(&self, job: &str, entry: &Entry) -> Durable {
        let line = match serde_json::to_string(entry) {
            Ok(mut l) => {
                l.push('\n');
                l
            }
            Err(e) => {
                let (ack, rx) = oneshot::channel();
                let _ = ack.send(Err(jerr(&self.file(job), e)));
                return Durable {
                    path: self.file(job),
                    ack: rx,
                };
            }
        };
        self.enqueue(job, line, entry.is_last())
    }

    /// Appends one entry for `job` and waits until it is on disk.
    pub async fn append(&self, job: &str, entry: &Entry) -> Result<(), JournalError> {
        self.submit(job, entry).wait().await
    }

    /// Waits until every entry submitted for `job` so far is on disk.
    pub async fn flush(&self, job: &str) -> Result<(), JournalError> {
        self.enqueue(job, String::new(), false).wait().await
    }

    /// Syncs, refuses every later append, and unlocks the state directory (end of a graceful
    /// shutdown: another coordinator may take it over).
    pub fn close(&self) -> Result<(), JournalError> {
        let synced = self.sync();
        self.lock.lock().take();
        synced
    }

    fn enqueue(&self, job: &str, line: String, last: bool) -> Durable {
        let (ack, rx) = oneshot::channel();
        if self.lock.lock().is_none() {
            let _ = ack.send(Err(jerr(
                &self.file(job),
                "the journal is closed (coordinator stopped)",
            )));
            return Durable {
                path: self.file(job),
                ack: rx,
            };
        }
        let queued = Queued {
            job: job.to_string(),
            line,
            last,
            ack,
        };
        if let Err(mpsc::SendError(q)) = self.queue.send(queued) {
            let _ = q.ack.send(Err(stopped(&self.file(job))));
        }
        Durable {
            path: self.file(job),
            ack: rx,
        }
    }

    /// Syncs every job file and the directory itself to disk (graceful shutdown). Every
    /// acknowledged append is already on disk; lines still queued were never acknowledged.
    pub fn sync(&self) -> Result<(), JournalError> {
        let rd = fs::read_dir(&self.dir).map_err(|e| jerr(&self.dir, e))?;
        for path in rd.flatten().map(|e| e.path()) {
            if path.extension().is_some_and(|x| x == "jsonl") {
                File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| jerr(&path, e))?;
            }
        }
        sync_dir(&self.dir).map_err(|e| jerr(&self.dir, e))
    }

    /// Deletes the file of a job that is closed (retention).
    pub fn remove(&self, job: &str) -> Result<(), JournalError> {
        let path = self.file(job);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(jerr(&path, e)),
            _ => sync_dir(&self.dir).map_err(|e| jerr(&self.dir, e)),
        }
    }

    /// Replays every job file. A torn last line (crash mid-append) is ignored; any other
    /// unreadable line marks that job `damaged`.
    pub fn replay(&self) -> Result<Vec<Replayed>, JournalError> {
        let rd = fs::read_dir(&self.dir).map_err(|e| jerr(&self.dir, e))?;
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        files.sort();
        let mut out = Vec::new();
        for path in files {
            let text = fs::read_to_string(&path).map_err(|e| jerr(&path, e))?;
            if let Some(r) = replay::replay_file(&path, &text) {
                out.push(r);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
