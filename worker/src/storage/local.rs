//! Task I/O on local disk: memory-mapped input files and positional writes into output shards.
//!
//! Inputs are mapped once per file and shared by all tasks; a task borrows only the byte range
//! of its tensor, so no whole file is ever copied. Outputs are pre-sized files that tasks fill
//! with `pwrite` at planned offsets, so any number of tasks can write one shard concurrently.

use memmap2::{Mmap, MmapOptions};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Opens local input files on first use and maps one tensor's byte range per read.
///
/// Mapping per tensor (not per file) keeps resident memory bounded: when a task drops its
/// mapping, the pages leave this process's resident set.
#[derive(Default)]
pub struct LocalInputs {
    files: Mutex<HashMap<PathBuf, Arc<File>>>,
}

impl LocalInputs {
    /// Creates an empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `len` bytes at `start` of `uri` (a local path or `file://` URI).
    pub fn map_range(&self, uri: &str, start: u64, len: u64) -> std::io::Result<Mmap> {
        let path = local_path(uri);
        let file = {
            let mut files = self.files.lock();
            match files.get(&path) {
                Some(f) => f.clone(),
                None => {
                    let f = Arc::new(File::open(&path)?);
                    files.insert(path, f.clone());
                    f
                }
            }
        };
        let file_len = file.metadata()?.len();
        if start.checked_add(len).is_none_or(|end| end > file_len) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("range {start}+{len} is beyond the end of the file ({file_len} bytes)"),
            ));
        }
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        // SAFETY: the file is opened read-only; shardmerge never writes its inputs. A concurrent
        // external truncation could fault, as with any memory-mapped reader.
        unsafe { MmapOptions::new().offset(start).len(len).map(&*file) }
    }
}

/// Writes tensors into pre-sized local shard files.
#[derive(Default)]
pub struct LocalOutputs {
    files: Mutex<HashMap<PathBuf, Arc<File>>>,
}

impl LocalOutputs {
    /// Creates an empty handle cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `bytes` at `offset` of the file at `uri`.
    pub fn write_at(&self, uri: &str, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        let path = local_path(uri);
        let file = {
            let mut files = self.files.lock();
            match files.get(&path) {
                Some(f) => f.clone(),
                None => {
                    let f = Arc::new(OpenOptions::new().write(true).open(&path)?);
                    files.insert(path.clone(), f.clone());
                    f
                }
            }
        };
        file.write_all_at(bytes, offset)
    }

    /// Closes all cached handles (call before renaming the files).
    pub fn close_all(&self) {
        self.files.lock().clear();
    }
}

/// Converts a local path or `file://` URI to a path.
pub fn local_path(uri: &str) -> PathBuf {
    Path::new(uri.strip_prefix("file://").unwrap_or(uri)).to_path_buf()
}
