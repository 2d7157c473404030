//! The coordinator's journal: one append-only JSON-lines file per job in the state directory.
//!
//! The first line records everything needed to re-plan the job identically (the YAML, the
//! options, the chosen seed, the output and the multipart upload ids); each finished unit then
//! appends its parts; a final line records the outcome. A restarted coordinator replays the
//! files and resumes unfinished jobs without redoing finished units.
//!
//! Appends are group-committed: [`Journal::submit`] queues a line for a dedicated writer thread,
//! which writes every line queued so far, fsyncs each touched file once, and only then resolves
//! the lines' [`Durable`] tickets. Lines of one job reach its file in submission order, and a
//! ticket resolves only once its line (and every line submitted before it) is on disk, so the
//! coordinator acknowledges an event only after the record of it is durable, at one fsync per
//! batch instead of one per record.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

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
#[derive(Debug, Clone, thiserror::Error)]
#[error("journal {path}: {reason}")]
pub struct JournalError {
    /// File.
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

/// The journal directory and its writer thread. Cheap to clone; the writer stops when the
/// last clone is dropped (after writing what was queued).
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
    queue: mpsc::Sender<Queued>,
    /// `unit_done` lines submitted but not yet fsynced, per job.
    unsynced: Arc<Mutex<HashMap<String, u64>>>,
}

/// One queued line; an empty `line` is a barrier (written nowhere, acknowledged in order).
#[derive(Debug)]
struct Queued {
    job: String,
    line: String,
    /// A `unit_done` line (counted in [`Journal::unsynced`]).
    unit_done: bool,
    /// The job's last line (`finished`): its file is closed afterwards.
    last: bool,
    ack: oneshot::Sender<Result<(), JournalError>>,
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
    JournalError {
        path: path.display().to_string(),
        reason: "the journal writer stopped".into(),
    }
}

impl Journal {
    /// Opens (creating) `dir/jobs` and starts the writer thread.
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        let dir = state_dir.join("jobs");
        let err = |e: std::io::Error| JournalError {
            path: dir.display().to_string(),
            reason: e.to_string(),
        };
        fs::create_dir_all(&dir).map_err(err)?;
        let (queue, rx) = mpsc::channel();
        let unsynced = Arc::new(Mutex::new(HashMap::new()));
        let writer = Writer {
            dir: dir.clone(),
            files: HashMap::new(),
            unsynced: unsynced.clone(),
        };
        std::thread::Builder::new()
            .name("shardmerge-journal".into())
            .spawn(move || writer.run(rx))
            .map_err(err)?;
        Ok(Journal { dir, queue, unsynced })
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
            Err(e) => return self.failed(job, e.to_string()),
        };
        let unit_done = matches!(entry, Entry::UnitDone { .. });
        if unit_done {
            *self.unsynced_lock().entry(job.to_string()).or_default() += 1;
        }
        self.enqueue(job, line, unit_done, matches!(entry, Entry::Finished { .. }))
    }

    /// Appends one entry for `job` and waits until it is on disk.
    pub async fn append(&self, job: &str, entry: &Entry) -> Result<(), JournalError> {
        self.submit(job, entry).wait().await
    }

    /// Waits until every entry submitted for `job` so far is on disk.
    pub async fn flush(&self, job: &str) -> Result<(), JournalError> {
        self.enqueue(job, String::new(), false, false).wait().await
    }

    /// How many `unit_done` entries of `job` are submitted but not yet on disk.
    pub fn unsynced(&self, job: &str) -> u64 {
        self.unsynced_lock().get(job).copied().unwrap_or(0)
    }

    fn unsynced_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.unsynced.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enqueue(&self, job: &str, line: String, unit_done: bool, last: bool) -> Durable {
        let (ack, rx) = oneshot::channel();
        let queued = Queued {
            job: job.to_string(),
            line,
            unit_done,
            last,
            ack,
        };
        if let Err(mpsc::SendError(q)) = self.queue.send(queued) {
            if unit_done && let Some(c) = self.unsynced_lock().get_mut(job) {
                *c = c.saturating_sub(1);
            }
            let _ = q.ack.send(Err(stopped(&self.file(job))));
        }
        Durable {
            path: self.file(job),
            ack: rx,
        }
    }

    fn failed(&self, job: &str, reason: String) -> Durable {
        let (ack, rx) = oneshot::channel();
        let path = self.file(job);
        let _ = ack.send(Err(JournalError {
            path: path.display().to_string(),
            reason,
        }));
        Durable { path, ack: rx }
    }

    /// Syncs every job file and the directory itself to disk (graceful shutdown). Every
    /// acknowledged append is already on disk (its ticket resolves after the writer's fsync);
    /// this also makes the directory entries of new job files durable. Lines still queued were
    /// never acknowledged, so losing them only means re-running their units.
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

/// Terminates a torn last line (a crash mid-append) so the next line starts on its own; the
/// torn line itself is ignored at replay.
fn end_torn_line(f: &mut File) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8];
    f.seek(SeekFrom::Start(len - 1))?;
    f.read_exact(&mut last)?;
    if last[0] != b'\n' {
        f.write_all(b"\n")?;
    }
    Ok(())
}

/// Upper bound on the lines written per fsync round.
const MAX_BATCH: usize = 4096;

/// The writer thread's state: open files of jobs with recent appends.
struct Writer {
    dir: PathBuf,
    files: HashMap<String, File>,
    unsynced: Arc<Mutex<HashMap<String, u64>>>,
}

impl Writer {
    /// Group commit: take everything queued, write it, fsync each touched file once, then
    /// acknowledge. Runs until every [`Journal`] clone is dropped.
    fn run(mut self, rx: mpsc::Receiver<Queued>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(q) => batch.push(q),
                    Err(_) => break,
                }
            }
            // Lines per job, in submission order; jobs in order of first appearance.
            let mut jobs: Vec<(&str, String)> = Vec::new();
            for q in &batch {
                match jobs.iter_mut().find(|(j, _)| *j == q.job) {
                    Some((_, text)) => text.push_str(&q.line),
                    None => jobs.push((&q.job, q.line.clone())),
                }
            }
            let results: HashMap<String, Result<(), JournalError>> = jobs
                .into_iter()
                .map(|(job, text)| (job.to_string(), self.write(job, &text)))
                .collect();
            let mut synced: HashMap<&str, u64> = HashMap::new();
            for q in &batch {
                if q.unit_done {
                    *synced.entry(&q.job).or_default() += 1;
                }
            }
            {
                let mut unsynced = self.unsynced.lock().unwrap_or_else(|e| e.into_inner());
                for (job, n) in synced {
                    if let Some(c) = unsynced.get_mut(job) {
                        *c = c.saturating_sub(n);
                        if *c == 0 {
                            unsynced.remove(job);
                        }
                    }
                }
            }
            for q in batch {
                let r = results[&q.job].clone();
                if q.last {
                    self.files.remove(&q.job);
                }
                let _ = q.ack.send(r);
            }
        }
    }

    /// Appends `text` to `job`'s file and fsyncs it; an empty `text` (barriers only) does nothing.
    fn write(&mut self, job: &str, text: &str) -> Result<(), JournalError> {
        if text.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(format!("{job}.jsonl"));
        let err = |e: std::io::Error| JournalError {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let f = match self.files.entry(job.to_string()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let mut f = OpenOptions::new()
                    .create(true)
                    .read(true)
                    .append(true)
                    .open(&path)
                    .map_err(err)?;
                end_torn_line(&mut f).map_err(err)?;
                v.insert(f)
            }
        };
        let done = f.write_all(text.as_bytes()).and_then(|()| f.sync_data());
        if done.is_err() {
            // Reopen next time rather than trusting a handle that failed.
            self.files.remove(job);
        }
        done.map_err(err)
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
        j.submit("job-1", &Entry::Job(record("job-1"))).wait_blocking().unwrap();
        j.submit(
            "job-1",
            &Entry::UnitDone {
                unit: 3,
                parts: vec![(0, "e".into())],
            },
        )
        .wait_blocking()
        .unwrap();
        j.submit("job-1", &Entry::ShardCommitted { shard: 0 })
            .wait_blocking()
            .unwrap();
        j.submit("job-2", &Entry::Job(record("job-2"))).wait_blocking().unwrap();
        j.submit(
            "job-2",
            &Entry::Finished {
                state: "failed".into(),
                error: "x".into(),
            },
        )
        .wait_blocking()
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
        // The next append after the torn line starts on a line of its own.
        let j = Journal::open(tmp.path()).unwrap();
        j.submit("job-1", &done_entry(4)).wait_blocking().unwrap();
        let r = j.replay().unwrap();
        assert_eq!(r[0].done.len(), 2, "{:?}", r[0].done);
    }

    fn done_entry(unit: u64) -> Entry {
        Entry::UnitDone {
            unit,
            parts: vec![(unit as u32, format!("etag-{unit}"))],
        }
    }

    #[test]
    fn concurrent_appends_are_group_committed_in_order_and_all_durable() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::open(tmp.path()).unwrap();
        j.submit("job-1", &Entry::Job(record("job-1"))).wait_blocking().unwrap();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let j = j.clone();
                std::thread::spawn(move || {
                    let tickets: Vec<_> = (0..250).map(|i| j.submit("job-1", &done_entry(t * 1000 + i))).collect();
                    for d in tickets {
                        d.wait_blocking().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(j.unsynced("job-1"), 0);
        let pending = j.submit("job-1", &done_entry(9999));
        let finished = Entry::Finished {
            state: "succeeded".into(),
            error: String::new(),
        };
        let last = j.submit("job-1", &finished);
        last.wait_blocking().unwrap();
        // Acknowledged in order: the earlier ticket is durable too.
        pending.wait_blocking().unwrap();
        let r = j.replay().unwrap();
        assert_eq!(r[0].done.len(), 1001);
        assert_eq!(r[0].finished, Some(("succeeded".into(), String::new())));
        let text = fs::read_to_string(tmp.path().join("jobs/job-1.jsonl")).unwrap();
        assert!(text.lines().next().unwrap().contains("\"kind\":\"job\""));
        assert!(text.lines().last().unwrap().contains("\"kind\":\"finished\""));
    }
}
