//! The local-disk backend of [`super::Storage`]: the same operations as S3, on files.
//!
//! Blocking file I/O runs on tokio's blocking pool. Writes go to a temp file in the target's
//! directory and are renamed into place, so a reader never sees a partial file. A multipart
//! upload is a hidden staging directory next to the target holding one `data` file; each part
//! is written in place at its offset (and synced before it is reported), and completing the
//! upload checks that the parts tile the file and renames it onto the target, so nothing is
//! copied. Temp files and staging directories are hidden from [`list`], as S3 hides uploads in
//! progress.
//!
//! Unlike S3, a re-upload of a byte range overwrites it. That is safe for shardmerge because a
//! job's output is a pure function of its journaled record: every attempt, a zombie's
//! included, writes the same bytes at the same offsets, so neither order nor repetition
//! changes the result; and a write after completion or abort is refused, since the `data`
//! file is gone from its path (a zombie's write already in flight can only rewrite equal
//! bytes).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::error::StorageError;

const TMP_MARK: &str = ".shardmerge-tmp-";
const UPLOAD_MARK: &str = ".shardmerge-upload-";
const DONE_MARK: &str = ".shardmerge-done-";
/// The one file of an upload in progress, inside its staging directory.
const DATA: &str = "data";

type Result<T> = std::result::Result<T, StorageError>;

fn uri(path: &Path) -> String {
    path.display().to_string()
}

/// Runs blocking file I/O off the async worker threads.
async fn blocking<T: Send + 'static>(path: &Path, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(StorageError::Io {
            op: "access",
            uri: uri(path),
            error: io::Error::other(e),
        }),
    }
}

/// A name unique across processes and calls: pid, clock and a counter.
fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{nanos:x}-{n:x}", std::process::id())
}

/// `dir/.name<mark><suffix>`, a hidden sibling of `path`.
fn sibling(path: &Path, mark: &str, suffix: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| StorageError::InvalidUri {
            uri: uri(path),
            reason: "not a file path".to_owned(),
        })?;
    Ok(path.with_file_name(format!(".{name}{mark}{suffix}")))
}

fn metadata_len(path: &Path) -> Result<u64> {
    let meta = fs::metadata(path).map_err(|e| StorageError::io("read", uri(path), e))?;
    if meta.is_file() {
        Ok(meta.len())
    } else {
        Err(StorageError::NotFound { uri: uri(path) })
    }
}

pub(super) async fn head(path: PathBuf) -> Result<u64> {
    blocking(&path.clone(), move || metadata_len(&path)).await
}

pub(super) async fn read_range(path: PathBuf, start: u64, len: u64) -> Result<Bytes> {
    blocking(&path.clone(), move || {
        let file = File::open(&path).map_err(|e| StorageError::io("read", uri(&path), e))?;
        let size = file
            .metadata()
            .map_err(|e| StorageError::io("read", uri(&path), e))?
            .len();
        let out_of_range = || StorageError::OutOfRange {
            uri: uri(&path),
            start,
            len,
            size,
        };
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(out_of_range());
        }
        let mut buf = vec![0; usize::try_from(len).map_err(|_| out_of_range())?];
        file.read_exact_at(&mut buf, start)
            .map_err(|e| StorageError::io("read", uri(&path), e))?;
        Ok(Bytes::from(buf))
    })
    .await
}

pub(super) async fn read_all_small(path: PathBuf, max: u64) -> Result<Bytes> {
    blocking(&path.clone(), move || {
        let size = metadata_len(&path)?;
        if size > max {
            return Err(StorageError::TooLarge {
                uri: uri(&path),
                size,
                max,
            });
        }
        fs::read(&path)
            .map(Bytes::from)
            .map_err(|e| StorageError::io("read", uri(&path), e))
    })
    .await
}

/// Writes `bytes` to a fresh temp file beside `path` and returns the temp path.
fn write_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let io = |e| StorageError::io("write", uri(path), e);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = sibling(path, TMP_MARK, &unique())?;
    let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(tmp)
}

/// Writes a whole file atomically. With `create_only`, leaves an existing file alone and
/// returns `false`.
pub(super) async fn put(path: PathBuf, bytes: Bytes, create_only: bool) -> Result<bool> {
    blocking(&path.clone(), move || {
        let tmp = write_temp(&path, &bytes)?;
        let placed = if create_only {
            // A hard link fails if the target exists: an atomic create-if-absent.
            fs::hard_link(&tmp, &path)
        } else {
            fs::rename(&tmp, &path)
        };
        let _ = fs::remove_file(&tmp);
        match placed {
            Ok(()) => Ok(true),
            Err(e) if create_only && e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(StorageError::io("write", uri(&path), e)),
        }
    })
    .await
}

pub(super) async fn delete(path: PathBuf) -> Result<()> {
    blocking(&path.clone(), move || match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StorageError::io("delete", uri(&path), e)),
        _ => Ok(()),
    })
    .await
}

/// Every file under `dir` (recursively) with its size; empty when `dir` does not exist.
pub(super) async fn list(dir: PathBuf) -> Result<Vec<(PathBuf, u64)>> {
    blocking(&dir.clone(), move || {
        let mut out = Vec::new();
        let mut pending = vec![dir];
        while let Some(dir) = pending.pop() {
            let io = |e| StorageError::Io {
                op: "list",
                uri: uri(&dir),
                error: e,
            };
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => continue,
                Err(e) => return Err(io(e)),
            };
            for entry in entries {
                let path = entry.map_err(io)?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.contains(TMP_MARK) || name.contains(UPLOAD_MARK) || name.contains(DONE_MARK) {
                    continue;
                }
                let meta = fs::metadata(&path).map_err(io)?;
                if meta.is_dir() {
                    pending.push(path);
                } else if meta.is_file() {
                    out.push((path, meta.len()));
                }
            }
        }
        out.sort();
        Ok(out)
    })
    .await
}

/// The staging directory of upload `id` for `path`, refusing ids this backend never issued
/// (they come from other processes and are joined into a path).
fn staging(path: &Path, id: &str) -> Result<PathBuf> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(StorageError::NoSuchUpload {
            uri: uri(path),
            upload_id: id.to_owned(),
        });
    }
    sibling(path, UPLOAD_MARK, id)
}

/// A part's id: where its bytes lie in the object (also of bytes written with [`write_at`]).
pub(super) fn part_name(offset: u64, len: u64) -> String {
    format!("at-{offset:x}-{len:x}")
}

/// The byte range a part id names.
fn parse_part_name(name: &str) -> Option<(u64, u64)> {
    let (offset, len) = name.strip_prefix("at-")?.split_once('-')?;
    let offset = u64::from_str_radix(offset, 16).ok()?;
    let len = u64::from_str_radix(len, 16).ok()?;
    offset.checked_add(len).map(|_| (offset, len))
}

pub(super) async fn create_multipart(path: PathBuf, size: u64) -> Result<String> {
    blocking(&path.clone(), move || {
        let id = unique();
        let dir = staging(&path, &id)?;
        let io = |e| StorageError::io("create upload for", uri(&path), e);
        fs::create_dir_all(&dir).map_err(io)?;
        // Pre-sized (sparse): bytes no part writes read as zeros, as a never-written part would.
        File::create_new(dir.join(DATA))
            .and_then(|f| f.set_len(size))
            .map_err(io)?;
        // The upload must survive a machine crash once its id is handed out (it is journaled).
        File::open(&dir).and_then(|d| d.sync_all()).map_err(io)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(id)
    })
    .await
}

pub(super) async fn put_part(path: PathBuf, id: String, offset: u64, data: Bytes) -> Result<String> {
    blocking(&path.clone(), move || {
        let file = open_upload(&path, &id)?;
        let io = |e| StorageError::io("write", uri(&path), e);
        file.write_all_at(&data, offset).map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(part_name(offset, data.len() as u64))
    })
    .await
}

/// Opens upload `id`'s file by path, never creating it: after an abort or a completion the file
/// is gone from its path, so a late worker's write is refused.
fn open_upload(path: &Path, id: &str) -> Result<File> {
    let file = staging(path, id)?.join(DATA);
    OpenOptions::new().write(true).open(&file).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            StorageError::NoSuchUpload {
                uri: uri(path),
                upload_id: id.to_owned(),
            }
        } else {
            StorageError::io("write", uri(&file), e)
        }
    })
}

/// Writes `data` at `offset` of upload `id` (blocking; not yet durable, see [`sync`]).
pub(super) fn write_at(path: &Path, id: &str, offset: u64, data: &[u8]) -> Result<()> {
    open_upload(path, id)?
        .write_all_at(data, offset)
        .map_err(|e| StorageError::io("write", uri(path), e))
}

/// Makes every byte written to upload `id` so far durable (blocking).
pub(super) fn sync(path: &Path, id: &str) -> Result<()> {
    open_upload(path, id)?
        .sync_data()
        .map_err(|e| StorageError::io("write", uri(path), e))
}

pub(super) async fn complete_multipart(path: PathBuf, id: String, parts: Vec<String>) -> Result<()> {
    blocking(&path.clone(), move || {
        let dir = staging(&path, &id)?;
        let data = dir.join(DATA);
        let no_upload = || StorageError::NoSuchUpload {
            uri: uri(&path),
            upload_id: id.clone(),
        };
        if !data.is_file() {
            return Err(no_upload());
        }
        // The parts must tile the object from its first byte to its last, in order.
        let mut end = 0u64;
        for part in &parts {
            match parse_part_name(part) {
                Some((offset, len)) if offset == end => end += len,
                _ => {
                    return Err(StorageError::NotFound {
                        uri: uri(&dir.join(part)),
                    });
                }
            }
        }
        let io = |e| StorageError::io("write", uri(&path), e);
        let file = OpenOptions::new().write(true).open(&data).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => no_upload(),
            _ => io(e),
        })?;
        let len = file.metadata().map_err(io)?.len();
        if len != end {
            return Err(io(io::Error::other(format!(
                "the upload holds {len} bytes, its parts {end}"
            ))));
        }
        file.sync_all().map_err(io)?;
        drop(file);
        fs::rename(&data, &path).map_err(io)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent).and_then(|d| d.sync_all()).map_err(io)?;
        }
        // The upload ends atomically (a rename); its directory goes after. A crash in between
        // leaves an empty hidden directory that `remove_leftovers` sweeps and that a repeated
        // completion reports as an upload that no longer exists.
        let done = sibling(&path, DONE_MARK, &id)?;
        fs::rename(&dir, &done).map_err(|e| StorageError::io("complete upload for", uri(&path), e))?;
        let _ = fs::remove_dir_all(&done);
        Ok(())
    })
    .await
}

pub(super) async fn abort_multipart(path: PathBuf, id: String) -> Result<()> {
    blocking(&path.clone(), move || {
        let dir = staging(&path, &id)?;
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StorageError::io("abort upload for", uri(&path), e)),
            _ => Ok(()),
        }
    })
    .await
}

pub(super) async fn place(from: PathBuf, to: PathBuf) -> Result<()> {
    blocking(&to.clone(), move || {
        let io = |e| StorageError::io("write", uri(&to), e);
        File::open(&from).and_then(|f| f.sync_all()).map_err(io)?;
        fs::rename(&from, &to).map_err(io)?;
        match to.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(dir) => File::open(dir).and_then(|d| d.sync_all()).map_err(io),
            None => Ok(()),
        }
    })
    .await
}

pub(super) async fn stat(path: PathBuf) -> Result<(u64, String)> {
    blocking(&path.clone(), move || {
        let meta = fs::metadata(&path).map_err(|e| StorageError::io("read", uri(&path), e))?;
        if !meta.is_file() {
            return Err(StorageError::NotFound { uri: uri(&path) });
        }
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok((meta.len(), format!("mtime:{mtime}")))
    })
    .await
}

/// Removes hidden temp files and finished-upload directories a killed process left beside
/// `path`; with `uploads`, also every upload in progress to `path` (for an owner that lost
/// track of the ids it created).
pub(super) async fn remove_leftovers(path: PathBuf, uploads: bool) -> Result<()> {
    blocking(&path.clone(), move || {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
            return Ok(());
        };
        let entries = match fs::read_dir(parent) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StorageError::io("list", uri(parent), e)),
        };
        let mut prefixes = vec![format!(".{name}{TMP_MARK}"), format!(".{name}{DONE_MARK}")];
        if uploads {
            prefixes.push(format!(".{name}{UPLOAD_MARK}"));
        }
        for entry in entries.flatten() {
            let n = entry.file_name();
            let n = n.to_string_lossy();
            if prefixes.iter().any(|p| n.starts_with(p.as_str())) {
                let p = entry.path();
                let gone = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                if let Err(e) = gone
                    && e.kind() != io::ErrorKind::NotFound
                {
                    return Err(StorageError::io("delete", uri(&p), e));
                }
            }
        }
        Ok(())
    })
    .await
}
