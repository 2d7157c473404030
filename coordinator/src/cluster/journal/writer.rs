//! The journal's writer thread: group commit (write every queued line, fsync each touched file
//! once, then acknowledge), torn-tail repair, and directory fsync for new files.

use super::{JournalError, jerr, sync_dir};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// Upper bound on the lines written per fsync round.
const MAX_BATCH: usize = 4096;

/// One queued line; an empty `line` is a barrier (written nowhere, acknowledged in order).
#[derive(Debug)]
pub(super) struct Queued {
    pub job: String,
    pub line: String,
    /// The job's last line: its file is closed afterwards.
    pub last: bool,
    pub ack: oneshot::Sender<Result<(), JournalError>>,
}

/// The writer thread's state: open files of jobs with recent appends.
pub(super) struct Writer {
    dir: PathBuf,
    files: HashMap<String, File>,
}

impl Writer {
    pub(super) fn new(dir: PathBuf) -> Writer {
        Writer {
            dir,
            files: HashMap::new(),
        }
    }

    /// Group commit: take everything queued, write it, fsync each touched file once, then
    /// acknowledge. Runs until every [`super::Journal`] clone is dropped.
    pub(super) fn run(mut self, rx: mpsc::Receiver<Queued>) {
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
            let mut results: HashMap<String, Result<(), JournalError>> = jobs
                .into_iter()
                .map(|(job, text)| (job.to_string(), self.write(job, &text)))
                .collect();
            for q in &batch {
                if q.last {
                    self.files.remove(&q.job);
                }
            }
            for q in batch {
                let r = results.get(&q.job).cloned().unwrap_or(Ok(()));
                let _ = q.ack.send(r);
            }
            results.clear();
        }
    }

    fn path(&self, job: &str) -> PathBuf {
        self.dir.join(format!("{job}.jsonl"))
    }

    /// Appends `text` to `job`'s file and fsyncs it; an empty `text` (barriers only) does nothing.
    fn write(&mut self, job: &str, text: &str) -> Result<(), JournalError> {
        if text.is_empty() {
            return Ok(());
        }
        let path = self.path(job);
        let err = |e: std::io::Error| jerr(&path, e);
        let f = match self.files.entry(job.to_string()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let existed = path.exists();
                let mut f = OpenOptions::new()
                    .create(true)
                    .read(true)
                    .append(true)
                    .open(&path)
                    .map_err(err)?;
                cut_torn_tail(&mut f).map_err(err)?;
                if !existed {
                    f.sync_all().map_err(err)?;
                    sync_dir(&self.dir).map_err(|e| jerr(&self.dir, e))?;
                }
                v.insert(f)
            }
        };
        let done = f.write_all(text.as_bytes()).and_then(|()| f.sync_data());
        if done.is_err() {
            // Reopen next time (cutting what this write may have left torn).
            self.files.remove(job);
        }
        done.map_err(err)
    }
}

/// Cuts a torn last line (a crash mid-append) off `f`, so the next line starts on its own and
/// replay never sees a torn line anywhere but at the end.
fn cut_torn_tail(f: &mut File) -> std::io::Result<()> {
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut text = Vec::new();
    f.seek(SeekFrom::Start(0))?;
    f.read_to_end(&mut text)?;
    if text.last() == Some(&b'\n') {
        return Ok(());
    }
    let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    f.set_len(keep as u64)?;
    f.sync_all()
}
