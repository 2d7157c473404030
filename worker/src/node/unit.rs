//! Executing one work unit: run its tasks, then deliver the unit's byte range of the shard as
//! multipart parts.
//!
//! Inputs may be local files (mapped per tensor) or objects in S3 (concurrent ranged GETs,
//! fetched ahead of the tasks that read them by `prefetch::Prefetch`);
//! to S3 the output range is assembled in memory part by part, and each part is uploaded as soon
//! as the tasks below its end are done (while later tasks compute); to a local upload the tasks
//! write in place and the unit syncs once at its end. Either way the shard becomes visible only
//! when the coordinator completes the upload.

use super::allow::AllowList;
use super::parts::PartBuffers;
use super::prefetch::Prefetch;
use crate::error::TaskError;
use crate::execute::{InputBytes, TaskIo, execute_task};
use crate::storage::{LocalInputs, Location, Storage, StorageError};
use bytes::Bytes;
use shardmerge_proto::v1::{PartResult, TaskStats, TensorSource, WorkUnit};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// Why a unit failed, and whether retrying may help.
#[derive(Debug)]
pub struct UnitError {
    /// Message for the job status.
    pub message: String,
    /// Transient (I/O) or deterministic (bad input).
    pub retryable: bool,
}

impl From<TaskError> for UnitError {
    fn from(e: TaskError) -> Self {
        UnitError {
            retryable: e.retryable(),
            message: e.to_string(),
        }
    }
}

fn storage_err(e: StorageError) -> UnitError {
    UnitError {
        retryable: e.is_retryable(),
        message: e.to_string(),
    }
}

/// What a finished unit did.
#[derive(Debug, Default)]
pub struct UnitOutcome {
    /// The multipart parts the unit uploaded (number, etag, size), for its report.
    pub parts: Vec<PartResult>,
    /// Input bytes read.
    pub bytes_read: u64,
    /// Output bytes uploaded: the unit's byte range of the shard (header included), so that the
    /// units of a job add up to the size of its output files.
    pub bytes_written: u64,
    /// Statistics chunk tasks (a unit without output): one result per task, in task order.
    pub stats: Vec<TaskStats>,
}

struct UnitIo<'a> {
    storage: &'a Storage,
    handle: &'a Handle,
    local: &'a LocalInputs,
    prefetch: Prefetch,
    /// Index of the task running now (for [`Prefetch::take`]).
    task: AtomicUsize,
    /// Where the unit's output goes (nothing for a statistics unit).
    out: Output,
}

/// How a unit delivers its output range.
enum Output {
    /// A statistics unit writes nothing.
    None,
    /// To S3: buffered part by part, each uploaded once complete.
    Parts(PartBuffers),
    /// To a local upload: written in place at its offsets, synced once at the end.
    InPlace { shard: Location, upload: String },
}

impl TaskIo for UnitIo<'_> {
    fn read(&self, src: &TensorSource) -> Result<InputBytes, TaskError> {
        let read_err = |e: std::io::Error| TaskError::Read {
            uri: src.uri.clone(),
            tensor: src.tensor_name.clone(),
            source: e,
        };
        let loc = Location::parse(&src.uri).map_err(|e| read_err(std::io::Error::other(e.to_string())))?;
        if loc.is_local() {
            let map = self
                .local
                .map_range(&src.uri, src.offset, src.length)
                .map_err(read_err)?;
            return Ok(InputBytes::Mapped(map));
        }
        let task = self.task.load(Ordering::Relaxed);
        let fetched = match self.prefetch.take(task, src) {
            // The window stays charged for these bytes until the task drops them.
            Some(fetched) => fetched.map(|(bytes, window)| (bytes, Some(window))),
            None => self
                .handle
                .block_on(self.storage.read_range_vec(&loc, src.offset, src.length))
                .map(|bytes| (bytes, None)),
        };
        let bytes = fetched.map_err(|e| {
            let kind = if e.is_retryable() {
                std::io::ErrorKind::Interrupted
            } else {
                std::io::ErrorKind::InvalidData
            };
            if e.is_retryable() {
                read_err(std::io::Error::new(kind, e.to_string()))
            } else {
                TaskError::BadInput {
                    uri: src.uri.clone(),
                    tensor: src.tensor_name.clone(),
                    reason: e.to_string(),
                }
            }
        })?;
        Ok(match bytes {
            (bytes, Some(window)) => InputBytes::Held(bytes, Box::new(window)),
            (bytes, None) => InputBytes::Owned(bytes),
        })
    }

    fn write(&self, uri: &str, offset: u64, bytes: &[u8], tensor: &str) -> Result<(), TaskError> {
        let written = match &self.out {
            Output::Parts(parts) => parts.write(offset, bytes),
            Output::InPlace { shard, upload } => {
                return self
                    .storage
                    .write_upload_at(shard, upload, offset, bytes)
                    .map_err(|e| TaskError::Write {
                        uri: uri.to_string(),
                        tensor: tensor.to_string(),
                        source: std::io::Error::other(e.to_string()),
                    });
            }
            Output::None => Err("a statistics unit writes nothing".to_string()),
        };
        written.map_err(|reason| TaskError::InvalidTask {
            tensor: tensor.to_string(),
            reason: format!("{uri}: {reason}"),
        })
    }
}

/// Planned peak memory of executing `unit` with a prefetch window of `window` bytes: its
/// output buffer (an upload to S3 only) plus its largest task ([`crate::chunk::task_memory`], inputs included) or the
/// bytes the window may hold, whichever is larger.
pub fn planned_memory(unit: &WorkUnit, window: u64) -> u64 {
    // Only an upload to S3 buffers its parts; a local upload is written in place.
    let buffer = unit
        .output
        .as_ref()
        .filter(|o| o.shard_uri.starts_with("s3://"))
        .map_or(0, |o| o.end.saturating_sub(o.start));
    let largest = unit.tasks.iter().map(crate::chunk::task_memory).max().unwrap_or(0);
    let fetched: u64 = unit
        .tasks
        .iter()
        .flat_map(|t| {
            t.inputs
                .iter()
                .filter(|i| i.rows.is_empty())
                .filter_map(|i| i.source.as_ref())
                .filter(|s| s.uri.starts_with("s3://"))
                .map(|s| crate::chunk::input_range(t, s).1)
        })
        .sum();
    buffer + largest.max(fetched.min(window))
}

/// Part uploads in flight; those still running when the unit fails are aborted.
struct Uploads(Vec<(u32, u64, PartUpload)>);

/// One part's upload: its ETag when done.
type PartUpload = tokio::task::JoinHandle<Result<String, StorageError>>;

impl Drop for Uploads {
    fn drop(&mut self) {
        for (_, _, put) in &self.0 {
            put.abort();
        }
    }
}

/// Refuses a unit whose input files changed since the coordinator pinned them (size and
/// version: ETag on S3, modification time locally): a merge must never mix old and new bytes.
fn check_pinned_inputs(unit: &WorkUnit, storage: &Storage, handle: &Handle) -> Result<(), UnitError> {
    let mut seen = std::collections::HashSet::new();
    for src in unit
        .tasks
        .iter()
        .flat_map(|t| &t.inputs)
        .filter_map(|i| i.source.as_ref())
    {
        if src.file_version.is_empty() || !seen.insert(src.uri.as_str()) {
            continue;
        }
        let loc = Location::parse(&src.uri).map_err(storage_err)?;
        let (size, version) = handle.block_on(storage.stat(&loc)).map_err(storage_err)?;
        if size != src.file_size || version != src.file_version {
            return Err(UnitError {
                message: format!(
                    "input {} changed since the job was planned (was {} bytes, version {}; now {size} bytes, version {version})",
                    src.uri, src.file_size, src.file_version
                ),
                retryable: false,
            });
        }
    }
    Ok(())
}

/// Runs a unit of statistics chunk tasks: nothing is written, each task's statistics are
/// returned for the report.
fn execute_stats_unit(
    unit: &WorkUnit,
    storage: &Storage,
    handle: &Handle,
    local: &LocalInputs,
    revoked: &CancellationToken,
    window: u64,
) -> Result<UnitOutcome, UnitError> {
    let io = UnitIo {
        storage,
        handle,
        local,
        prefetch: Prefetch::start(unit, storage, handle, window),
        task: AtomicUsize::new(0),
        out: Output::None,
    };
    check_pinned_inputs(unit, storage, handle)?;
    let mut outcome = UnitOutcome::default();
    for (i, task) in unit.tasks.iter().enumerate() {
        if revoked.is_cancelled() {
            return Err(UnitError {
                message: "lease revoked by the coordinator".into(),
                retryable: true,
            });
        }
        io.task.store(i, Ordering::Relaxed);
        let done = execute_task(task, &io)?;
        outcome.bytes_read += done.bytes_read;
        let stats = done.stats.ok_or_else(|| UnitError {
            message: format!("task {} of `{}` is not a statistics task", task.task_id, task.tensor),
            retryable: false,
        })?;
        outcome.stats.push(TaskStats {
            task_id: task.task_id,
            stats: Some(stats),
        });
    }
    Ok(outcome)
}

/// Runs every task of `unit` (CPU work on the caller's thread, typically inside a rayon pool)
/// and uploads its parts. Must not be called from an async context: storage calls block on
/// `handle`. A unit that names a location outside `allow` is refused before anything is read
/// or written, as a deterministic (non-retryable) failure.
pub fn execute_unit(
    unit: &WorkUnit,
    storage: &Storage,
    handle: &Handle,
    local: &LocalInputs,
    allow: &AllowList,
    revoked: &CancellationToken,
    window: u64,
) -> Result<UnitOutcome, UnitError> {
    allow.check_unit(unit).map_err(|e| UnitError {
        message: format!("this worker refuses the unit: {e}"),
        retryable: false,
    })?;
    let Some(out) = unit.output.as_ref() else {
        return execute_stats_unit(unit, storage, handle, local, revoked, window);
    };
    let len = out.end.checked_sub(out.start).ok_or_else(|| UnitError {
        message: "inverted unit range".into(),
        retryable: false,
    })?;
    let shard = Location::parse(&out.shard_uri).map_err(storage_err)?;
    let output = if shard.is_local() {
        Output::InPlace {
            shard: shard.clone(),
            upload: out.upload_id.clone(),
        }
    } else {
        Output::Parts(PartBuffers::new(out))
    };
    let io = UnitIo {
        storage,
        handle,
        local,
        prefetch: Prefetch::start(unit, storage, handle, window),
        task: AtomicUsize::new(0),
        out: output,
    };
    let mut outcome = UnitOutcome::default();
    check_pinned_inputs(unit, storage, handle)?;
    let check_lease = || {
        if revoked.is_cancelled() {
            Err(UnitError {
                message: "lease revoked by the coordinator".into(),
                retryable: true,
            })
        } else {
            Ok(())
        }
    };
    if matches!(io.out, Output::InPlace { .. }) {
        check_lease()?;
        if out.start == 0 && !out.header.is_empty() {
            let h = (out.header.len() as u64).min(out.end) as usize;
            storage
                .write_upload_at(&shard, &out.upload_id, 0, &out.header[..h])
                .map_err(storage_err)?;
        }
    }
    let mut uploads = Uploads(Vec::new());
    // Uploads every part that is final once the bytes below `done_to` are.
    let mut upload_complete = |done_to: u64| -> Result<(), UnitError> {
        let Output::Parts(parts) = &io.out else {
            return Ok(());
        };
        for (i, bytes) in parts.take_complete(done_to) {
            // A revoked lease uploads nothing more: its unit belongs to another worker now.
            check_lease()?;
            let index = out.first_part + i as u32;
            let size = bytes.len() as u64;
            let offset = out.part_starts[i];
            let (storage, shard, upload) = (storage.clone(), shard.clone(), out.upload_id.clone());
            let put = handle.spawn(async move {
                storage
                    .put_part(&shard, &upload, index as usize, offset, Bytes::from(bytes))
                    .await
            });
            uploads.0.push((index, size, put));
        }
        Ok(())
    };
    for (i, task) in unit.tasks.iter().enumerate() {
        check_lease()?;
        io.task.store(i, Ordering::Relaxed);
        let done = execute_task(task, &io)?;
        outcome.bytes_read += done.bytes_read;
        if let Some(o) = &task.output {
            upload_complete(o.offset + o.length)?;
        }
    }
    upload_complete(out.end)?;
    if matches!(io.out, Output::InPlace { .. }) {
        // Durable before it is reported: the coordinator journals the parts as done.
        storage.sync_upload(&shard, &out.upload_id).map_err(storage_err)?;
        for (i, &start) in out.part_starts.iter().enumerate() {
            let end = out.part_starts.get(i + 1).copied().unwrap_or(out.end);
            outcome.parts.push(PartResult {
                part_index: out.first_part + i as u32,
                etag: Storage::local_part_id(start, end - start),
                size: end - start,
            });
        }
    }
    for (index, size, put) in std::mem::take(&mut uploads.0) {
        let etag = handle
            .block_on(put)
            .map_err(|e| UnitError {
                message: format!("uploading part {index}: {e}"),
                retryable: true,
            })?
            .map_err(storage_err)?;
        outcome.parts.push(PartResult {
            part_index: index,
            etag,
            size,
        });
    }
    outcome.bytes_written = len;
    Ok(outcome)
}
