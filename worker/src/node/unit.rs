//! Executing one work unit: run its tasks, then deliver the unit's byte range of the shard as
//! multipart parts.
//!
//! Inputs may be local files (mapped per tensor) or objects in S3 (concurrent ranged GETs,
//! fetched ahead of the tasks that read them by [`Prefetch`]);
//! the output range is assembled in memory and uploaded as the parts the planner assigned, so
//! the shard becomes visible only when the coordinator completes the upload.

use super::allow::AllowList;
use super::prefetch::Prefetch;
use crate::error::TaskError;
use crate::execute::{InputBytes, TaskIo, execute_task};
use crate::storage::{LocalInputs, Location, Storage, StorageError};
use bytes::Bytes;
use shardmerge_proto::v1::{PartResult, TaskStats, TensorSource, WorkUnit};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::runtime::Handle;

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
    /// Uploaded parts.
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
    start: u64,
    buffer: Mutex<Vec<u8>>,
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
            Some(fetched) => fetched,
            None => self
                .handle
                .block_on(self.storage.read_range_vec(&loc, src.offset, src.length)),
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
        Ok(InputBytes::Owned(bytes))
    }

    fn write(&self, uri: &str, offset: u64, bytes: &[u8], tensor: &str) -> Result<(), TaskError> {
        let mut buf = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let at = offset.checked_sub(self.start).map(|o| o as usize);
        match at {
            Some(at) if at + bytes.len() <= buf.len() => {
                buf[at..at + bytes.len()].copy_from_slice(bytes);
                Ok(())
            }
            _ => Err(TaskError::InvalidTask {
                tensor: tensor.to_string(),
                reason: format!("write at {offset} of {uri} is outside the unit's range"),
            }),
        }
    }
}

/// Planned peak memory of executing `unit` with a prefetch window of `window` bytes: its
/// output buffer plus its largest task ([`crate::chunk::task_memory`], inputs included) or the
/// bytes the window may hold, whichever is larger.
pub fn planned_memory(unit: &WorkUnit, window: u64) -> u64 {
    let buffer = unit.output.as_ref().map_or(0, |o| o.end.saturating_sub(o.start));
    let largest = unit.tasks.iter().map(crate::chunk::task_memory).max().unwrap_or(0);
    let fetched: u64 = unit
        .tasks
        .iter()
        .flat_map(|t| {
            t.inputs
                .iter()
                .filter_map(|i| i.source.as_ref())
                .filter(|s| s.uri.starts_with("s3://"))
                .map(|s| crate::chunk::input_range(t, s).1)
        })
        .sum();
    buffer + largest.max(fetched.min(window))
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
    revoked: &AtomicBool,
    window: u64,
) -> Result<UnitOutcome, UnitError> {
    let io = UnitIo {
        storage,
        handle,
        local,
        prefetch: Prefetch::start(unit, storage, handle, window),
        task: AtomicUsize::new(0),
        start: 0,
        buffer: Mutex::new(Vec::new()),
    };
    check_pinned_inputs(unit, storage, handle)?;
    let mut outcome = UnitOutcome::default();
    for (i, task) in unit.tasks.iter().enumerate() {
        if revoked.load(Ordering::SeqCst) {
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
    revoked: &AtomicBool,
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
    let io = UnitIo {
        storage,
        handle,
        local,
        prefetch: Prefetch::start(unit, storage, handle, window),
        task: AtomicUsize::new(0),
        start: out.start,
        buffer: Mutex::new(vec![0u8; len as usize]),
    };
    let mut outcome = UnitOutcome::default();
    check_pinned_inputs(unit, storage, handle)?;
    let check_lease = || {
        if revoked.load(Ordering::SeqCst) {
            Err(UnitError {
                message: "lease revoked by the coordinator".into(),
                retryable: true,
            })
        } else {
            Ok(())
        }
    };
    for (i, task) in unit.tasks.iter().enumerate() {
        check_lease()?;
        io.task.store(i, Ordering::Relaxed);
        let done = execute_task(task, &io)?;
        outcome.bytes_read += done.bytes_read;
    }
    let mut buf = io.buffer.into_inner().unwrap_or_else(|e| e.into_inner());
    if out.start == 0 {
        let h = out.header.len().min(buf.len());
        buf[..h].copy_from_slice(&out.header[..h]);
    }
    let buf = Bytes::from(buf);
    let shard = Location::parse(&out.shard_uri).map_err(storage_err)?;
    for (i, &p) in out.part_starts.iter().enumerate() {
        let end = out.part_starts.get(i + 1).copied().unwrap_or(out.end);
        let slice = buf.slice((p - out.start) as usize..(end - out.start) as usize);
        let index = out.first_part + i as u32;
        // A revoked lease uploads nothing more: its unit belongs to another worker now.
        check_lease()?;
        let size = slice.len() as u64;
        let etag = handle
            .block_on(storage.put_part(&shard, &out.upload_id, index as usize, slice))
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
