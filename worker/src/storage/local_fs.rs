//! The local-disk backend of [`super::Storage`]: the same operations as S3, on files.
//!
//! Blocking file I/O runs on tokio's blocking pool. Writes go to a temp file in the target's
//! directory and are renamed into place, so a reader never sees a partial file. A multipart
//! upload is a hidden staging directory next to the target holding one file per part;
//! completing it concatenates the parts into the target. Temp files and staging directories
//! are hidden from [`list`], as S3 hides uploads in progress.

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

/// A part's file name: its index and a unique suffix, so a late re-upload of the same part
/// (a zombie worker) writes a new file and never changes the one a commit refers to.
fn part_name(index: usize) -> String {
    format!("part-{index:06}-{}", unique())
}

fn valid_part_name(name: &str) -> bool {
    name.strip_prefix("part-").is_some_and(|rest| {
        let (n, u) = rest.split_once('-').unwrap_or((rest, ""));
        n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()) && u.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
    })
}

pub(super) async fn create_multipart(path: PathBuf) -> Result<String> {
    blocking(&path.clone(), move || {
        let id = unique();
        let dir = staging(&path, &id)?;
        fs::create_dir_all(&dir).map_err(|e| StorageError::io("create upload for", uri(&path), e))?;
        Ok(id)
    })
    .await
}

pub(super) async fn put_part(path: PathBuf, id: String, index: usize, data: Bytes) -> Result<String> {
    blocking(&path.clone(), move || {
        let dir = staging(&path, &id)?;
        let no_upload = || StorageError::NoSuchUpload {
            uri: uri(&path),
            upload_id: id.clone(),
        };
        if !dir.is_dir() {
            return Err(no_upload());
        }
        let name = part_name(index);
        let part = dir.join(&name);
        // Never create the staging directory here: after an abort or a completion it must
        // stay gone, whatever a late worker uploads.
        let tmp = dir.join(format!(".{name}{TMP_MARK}"));
        let io = |e: io::Error| {
            if e.kind() == io::ErrorKind::NotFound {
                no_upload()
            } else {
                StorageError::io("write", uri(&part), e)
            }
        };
        let written = (|| {
            let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            file.write_all(&data)?;
            file.sync_all()?;
            fs::rename(&tmp, &part)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io(e));
        }
        Ok(name)
    })
    .await
}

pub(super) async fn complete_multipart(path: PathBuf, id: String, parts: Vec<String>) -> Result<()> {
    blocking(&path.clone(), move || {
        let dir = staging(&path, &id)?;
        if !dir.is_dir() {
            return Err(StorageError::NoSuchUpload {
                uri: uri(&path),
                upload_id: id,
            });
        }
        let tmp = write_temp(&path, &[])?;
        let concatenated = (|| {
            // Not in append mode: `io::copy` between files then uses `copy_file_range` (the
            // kernel copies, or shares extents where the filesystem can), not a read/write loop.
            let mut out = OpenOptions::new()
                .write(true)
                .open(&tmp)
                .map_err(|e| StorageError::io("write", uri(&path), e))?;
            for part in &parts {
                let part_path = dir.join(part);
                if !valid_part_name(part) {
                    return Err(StorageError::NotFound { uri: uri(&part_path) });
                }
                let mut input = File::open(&part_path).map_err(|e| StorageError::io("read", uri(&part_path), e))?;
                io::copy(&mut input, &mut out).map_err(|e| StorageError::io("write", uri(&path), e))?;
            }
            out.sync_all().map_err(|e| StorageError::io("write", uri(&path), e))
        })();
        let placed =
            concatenated.and_then(|()| fs::rename(&tmp, &path).map_err(|e| StorageError::io("write", uri(&path), e)));
        if placed.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        placed?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(|e| StorageError::io("write", uri(&path), e))?;
        }
        // The upload ends atomically (a rename), then its parts go: a crash in between leaves
        // a hidden directory that `remove_leftovers` sweeps, never a half-deleted upload that
        // a repeated completion would concatenate.
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
