//! [`Storage`]: one API over local disk and S3, dispatching on the [`Location`].

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as KeyPath;
use object_store::{Error as OsError, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::error::StorageError;
use super::local_fs;
use super::location::Location;
use super::s3::{Bucket, Missing, S3Clients, S3Options, S3Settings};

type Result<T> = std::result::Result<T, StorageError>;

/// Size of one ranged GET of a large read.
pub const DEFAULT_READ_CHUNK: u64 = 8 << 20;
/// Ranged GETs of one read in flight at once.
pub const DEFAULT_READ_CONCURRENCY: usize = 8;

/// Storage access shared by a process: local paths and `s3://` locations through one API.
///
/// Cheap to clone (clones share the S3 clients). S3 clients are built on first use of each
/// bucket and cached; requests are path-style so S3-compatible servers work, and failed requests
/// are retried by object_store. Every method is async and must run inside a tokio runtime
/// (local file I/O runs on tokio's blocking pool). Credentials are never logged.
#[derive(Debug, Clone)]
pub struct Storage {
    s3: Arc<S3Clients>,
    read_chunk: u64,
    read_concurrency: usize,
}

impl Storage {
    /// S3 settings from the standard `AWS_*` environment variables (`AWS_ENDPOINT`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`, ...),
    /// read when a bucket is first used.
    pub fn from_env() -> Storage {
        Self::with_settings(S3Settings::Env)
    }

    /// Explicit S3 settings; the environment is not read.
    pub fn with_s3_options(options: S3Options) -> Storage {
        Self::with_settings(S3Settings::Explicit(options))
    }

    fn with_settings(settings: S3Settings) -> Storage {
        Storage {
            s3: Arc::new(S3Clients::new(settings)),
            read_chunk: DEFAULT_READ_CHUNK,
            read_concurrency: DEFAULT_READ_CONCURRENCY,
        }
    }

    /// Sets the size of the ranged GETs a large S3 read is split into (at least 1 byte).
    pub fn with_read_chunk(mut self, bytes: u64) -> Storage {
        self.read_chunk = bytes.max(1);
        self
    }

    /// Sets how many ranged GETs of one read run at once (at least 1).
    pub fn with_read_concurrency(mut self, n: usize) -> Storage {
        self.read_concurrency = n.max(1);
        self
    }

    /// How many ranged GETs of one read run at once.
    pub fn read_concurrency(&self) -> usize {
        self.read_concurrency
    }

    fn bucket(&self, bucket: &str) -> Result<Arc<Bucket>> {
        self.s3.bucket(bucket)
    }

    /// The size of the object or file at `loc`. A directory is [`StorageError::NotFound`].
    pub async fn head(&self, loc: &Location) -> Result<u64> {
        match loc {
            Location::Local(path) => local_fs::head(path.clone()).await,
            Location::S3 { bucket, key } => {
                let b = self.bucket(bucket)?;
                let path = b.key_path(key)?;
                let meta = b.check(key, Missing::Object, b.store.head(&path).await).await?;
                Ok(meta.size)
            }
        }
    }

    /// Size and version of the object or file at `loc`: the ETag on S3 (or the modification
    /// time when the store gives none), the modification time in nanoseconds locally. A
    /// rewritten input has another version, so plans pin their inputs with it.
    pub async fn stat(&self, loc: &Location) -> Result<(u64, String)> {
        match loc {
            Location::Local(path) => local_fs::stat(path.clone()).await,
            Location::S3 { bucket, key } => {
                let b = self.bucket(bucket)?;
                let path = b.key_path(key)?;
                let meta = b.check(key, Missing::Object, b.store.head(&path).await).await?;
                let version = meta
                    .e_tag
                    .clone()
                    .unwrap_or_else(|| meta.last_modified.timestamp_nanos_opt().unwrap_or(0).to_string());
                Ok((meta.size, version))
            }
        }
    }

    /// Removes what a killed writer may have left beside the file `loc` (hidden temp files of
    /// interrupted writes and completions; local only: S3 writes leave nothing behind).
    pub async fn remove_leftovers(&self, loc: &Location) -> Result<()> {
        match loc {
            Location::Local(path) => local_fs::remove_leftovers(path.clone(), false).await,
            Location::S3 { .. } => Ok(()),
        }
    }

    /// Moves the fully written local file `from` to `to` atomically (fsync, rename, directory
    /// fsync). Both must be local: a staged file is a local runtime's way to publish a shard.
    pub async fn place(&self, from: &Location, to: &Location) -> Result<()> {
        match (from, to) {
            (Location::Local(a), Location::Local(b)) => local_fs::place(a.clone(), b.clone()).await,
            _ => Err(StorageError::InvalidUri {
                uri: to.to_uri(),
                reason: "a staged local file can only be placed at a local path".to_owned(),
            }),
        }
    }

    /// Aborts every multipart upload to `loc` that this backend can find, for an owner that
    /// crashed between creating uploads and recording their ids. Local only: S3's upload
    /// listing is not available through the client, so there this does nothing (a bucket
    /// lifecycle rule that aborts incomplete uploads covers that window).
    pub async fn abort_unrecorded_uploads(&self, loc: &Location) -> Result<()> {
        match loc {
            Location::Local(path) => local_fs::remove_leftovers(path.clone(), true).await,
            Location::S3 { .. } => Ok(()),
        }
    }

    /// Whether an object or file exists at `loc`. A missing bucket is an error, not `false`.
    pub async fn exists(&self, loc: &Location) -> Result<bool> {
        match self.head(loc).await {
            Ok(_) => Ok(true),
            Err(StorageError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads `len` bytes at `start`. On S3 the range is split into ranged GETs of
    /// [`DEFAULT_READ_CHUNK`] bytes, up to [`Storage::read_concurrency`] at a time (see
    /// `Storage::s3_read_into`); the whole object is never fetched for a partial range. A
    /// range past the end is [`StorageError::OutOfRange`]. A zero-length read returns no bytes
    /// without touching storage (so it succeeds even where there is no object).
    pub async fn read_range(&self, loc: &Location, start: u64, len: u64) -> Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        match loc {
            Location::Local(path) => local_fs::read_range(path.clone(), start, len).await,
            Location::S3 { bucket, key } => {
                let b = self.bucket(bucket)?;
                let mut out = alloc(&b, key, len)?;
                self.s3_read_into(&b, key, start, &mut out).await?;
                Ok(Bytes::from(out))
            }
        }
    }

    /// Reads `len` bytes at `start` into a new vector, as [`Storage::read_range`].
    pub async fn read_range_vec(&self, loc: &Location, start: u64, len: u64) -> Result<Vec<u8>> {
        match loc {
            Location::S3 { bucket, key } if len > 0 => {
                let b = self.bucket(bucket)?;
                let mut out = alloc(&b, key, len)?;
                self.s3_read_into(&b, key, start, &mut out).await?;
                Ok(out)
            }
            _ => Ok(self.read_range(loc, start, len).await?.into()),
        }
    }

    /// Fills `dest` with the bytes at `start` of the S3 object `key`: ranged GETs of the read
    /// chunk size, [`Storage::read_concurrency`] in flight, completing in any order, each
    /// response body copied straight to its place in `dest` as it arrives (no reassembly copy,
    /// and a slow GET does not hold back the ones behind it). object_store retries failed
    /// requests and interrupted bodies.
    async fn s3_read_into(&self, b: &Bucket, key: &str, start: u64, dest: &mut [u8]) -> Result<()> {
        let len = dest.len() as u64;
        let path = b.key_path(key)?;
        if start.checked_add(len).is_none() {
            return Err(range_error(b, key, start, len, None).await);
        }
        let chunk = usize::try_from(self.read_chunk).unwrap_or(usize::MAX);
        let mut gets = Vec::new();
        for (i, buf) in dest.chunks_mut(chunk).enumerate() {
            gets.push(get_into(&b.store, &path, start + (i * chunk) as u64, buf));
        }
        let mut gets = futures::stream::iter(gets).buffer_unordered(self.read_concurrency);
        while let Some(got) = gets.next().await {
            if let Err(e) = got {
                drop(gets);
                return Err(range_error(b, key, start, len, e).await);
            }
        }
        Ok(())
    }

    /// Reads a whole small file (`config.json`, an index); [`StorageError::TooLarge`] if it is
    /// over `max` bytes (checked before the body is read).
    pub async fn read_all_small(&self, loc: &Location, max: u64) -> Result<Bytes> {
        match loc {
            Location::Local(path) => local_fs::read_all_small(path.clone(), max).await,
            Location::S3 { bucket, key } => {
                let b = self.bucket(bucket)?;
                let path = b.key_path(key)?;
                let got = b.check(key, Missing::Object, b.store.get(&path).await).await?;
                if got.meta.size > max {
                    return Err(StorageError::TooLarge {
                        uri: b.uri(key),
                        size: got.meta.size,
                        max,
                    });
                }
                b.check(key, Missing::Object, got.bytes().await).await
            }
        }
    }

    /// Writes a small whole file, replacing any existing one. Locally via a temp file and a
    /// rename (parent directories are created), so readers never see a partial file.
    pub async fn put(&self, loc: &Location, bytes: Bytes) -> Result<()> {
        match loc {
            Location::Local(path) => local_fs::put(path.clone(), bytes, false).await.map(|_| ()),
            Location::S3 { bucket, key } => {
                let b = self.bucket(bucket)?;
                let path = b.key_path(key)?;
                let put = b.store.put(&path, PutPayload::from(bytes)).await;
                b.check(key, Missing::Object, put).await.map(|_| ())
            }
        }
    }

    /// Writes a small whole file only if nothing is at `loc` yet (S3 `If-None-Match: *`; a hard
    /// link locally), atomically. Returns `false`, writing nothing, if something already was.
    /// For commit markers and journal entries written by racing processes.
    pub async fn put_if_absent(&self, loc: &Location, bytes: Bytes) -> Result<bool> {
        match loc {
            Location::Local(path) => local_fs::put(path.clone(), bytes, true).await,
            Location::S3 { bucket, key } => {
                let b = self.bucket(bucket)?;
                let path = b.key_path(key)?;
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                let put = b.store.put_opts(&path, PutPayload::from(bytes), opts).await;
                match b.check(key, Missing::Object, put).await {
                    Ok(_) => Ok(true),
                    Err(StorageError::AlreadyExists { .. }) => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Deletes the object or file at `loc`; deleting something missing is not an error.
    pub async fn delete(&self, loc: &Location) -> Result<()> {
        match loc {
            Location::Local(path) => local_fs::delete(path.clone()).await,
            Location::S3 { bucket, key } => {
                let b = self.bucket(bucket)?;
                let path = b.key_path(key)?;
                match b.check(key, Missing::Object, b.store.delete(&path).await).await {
                    Err(StorageError::NotFound { .. }) => Ok(()),
                    other => other,
                }
            }
        }
    }

    /// Every object under the directory `prefix` (recursively; `a/b` matches `a/b/x`, not
    /// `a/bc`), with its size, sorted by location. Empty if there is none. Uploads in
    /// progress are not listed.
    pub async fn list(&self, prefix: &Location) -> Result<Vec<(Location, u64)>> {
        match prefix {
            Location::Local(path) => Ok(local_fs::list(path.clone())
                .await?
                .into_iter()
                .map(|(p, size)| (Location::Local(p), size))
                .collect()),
            Location::S3 { bucket, key } => {
                let b = self.bucket(bucket)?;
                let path = b.key_path(key)?;
                let listed = b
                    .store
                    .list((!key.is_empty()).then_some(&path))
                    .try_collect::<Vec<_>>()
                    .await;
                let metas = b.check(key, Missing::Object, listed).await?;
                let mut out: Vec<(Location, u64)> = metas
                    .into_iter()
                    .map(|m| {
                        let loc = Location::S3 {
                            bucket: bucket.clone(),
                            key: m.location.to_string(),
                        };
                        (loc, m.size)
                    })
                    .collect();
                out.sort();
                Ok(out)
            }
        }
    }

    /// Starts a multipart upload to `loc`, returning its id. Any process may then upload parts
    /// with the id, and one completes it; nothing appears at `loc` until then. `size` is the
    /// object's final size when known (0 otherwise): locally the upload's file is pre-sized to it.
    pub async fn create_multipart(&self, loc: &Location, size: u64) -> Result<String> {
        match loc {
            Location::Local(path) => local_fs::create_multipart(path.clone(), size).await,
            Location::S3 { bucket, key } => {
                let b = self.bucket(bucket)?;
                let path = b.key_path(key)?;
                b.check(key, Missing::Object, b.store.create_multipart(&path).await)
                    .await
            }
        }
    }

    /// Uploads part `part_index` (0-based; parts may arrive in any order and from any process),
    /// whose bytes start at `offset` of the object, and returns its part id, to be passed to
    /// [`Storage::complete_multipart`]. On S3 every part but the last must be at least 5 MiB.
    /// Locally the part is written in place at `offset`, so a re-upload of a range overwrites it
    /// (see `local_fs`).
    pub async fn put_part(
        &self,
        loc: &Location,
        upload_id: &str,
        part_index: usize,
        offset: u64,
        data: Bytes,
    ) -> Result<String> {
        match loc {
            Location::Local(path) => local_fs::put_part(path.clone(), upload_id.to_owned(), offset, data).await,
            Location::S3 { bucket, key } => {
                let b = self.bucket(bucket)?;
                let path = b.key_path(key)?;
                let id = upload_id.to_owned();
                let put = b.store.put_part(&path, &id, part_index, PutPayload::from(data)).await;
                let part = b.check(key, Missing::Upload(upload_id), put).await?;
                Ok(part.content_id)
            }
        }
    }

    /// Writes `data` at `offset` of a local upload in place, without a part buffer (blocking:
    /// call it from a CPU thread). The bytes become durable with [`Storage::sync_upload`]; their
    /// part ids come from [`Storage::local_part_id`]. `Err` for an upload on S3, which has no
    /// in-place writes.
    pub fn write_upload_at(&self, loc: &Location, upload_id: &str, offset: u64, data: &[u8]) -> Result<()> {
        match loc {
            Location::Local(path) => local_fs::write_at(path, upload_id, offset, data),
            Location::S3 { .. } => Err(StorageError::InvalidUri {
                uri: loc.to_uri(),
                reason: "in-place writes need a local upload".to_owned(),
            }),
        }
    }

    /// Makes every byte written to a local upload so far durable (blocking); a no-op on S3.
    pub fn sync_upload(&self, loc: &Location, upload_id: &str) -> Result<()> {
        match loc {
            Location::Local(path) => local_fs::sync(path, upload_id),
            Location::S3 { .. } => Ok(()),
        }
    }

    /// The part id of the `len` bytes at `offset` of a local upload written in place.
    pub fn local_part_id(offset: u64, len: u64) -> String {
        local_fs::part_name(offset, len)
    }

    /// Completes an upload: the object becomes the concatenation of `parts` (the ids returned
    /// by [`Storage::put_part`]) in the order given, which must be part-index order.
    pub async fn complete_multipart(&self, loc: &Location, upload_id: &str, parts: Vec<String>) -> Result<()> {
        match loc {
            Location::Local(path) => local_fs::complete_multipart(path.clone(), upload_id.to_owned(), parts).await,
            Location::S3 { bucket, key } => {
                let b = self.bucket(bucket)?;
                let path = b.key_path(key)?;
                let parts = parts.into_iter().map(|content_id| PartId { content_id }).collect();
                let id = upload_id.to_owned();
                let done = b.completer.complete_multipart(&path, &id, parts).await;
                b.check(key, Missing::Upload(upload_id), done).await.map(|_| ())
            }
        }
    }

    /// Abandons an upload and its parts; nothing appears at `loc`. Aborting an upload that no
    /// longer exists is not an error.
    pub async fn abort_multipart(&self, loc: &Location, upload_id: &str) -> Result<()> {
        match loc {
            Location::Local(path) => local_fs::abort_multipart(path.clone(), upload_id.to_owned()).await,
            Location::S3 { bucket, key } => {
                let b = self.bucket(bucket)?;
                let path = b.key_path(key)?;
                let id = upload_id.to_owned();
                match b
                    .check(
                        key,
                        Missing::Upload(upload_id),
                        b.store.abort_multipart(&path, &id).await,
                    )
                    .await
                {
                    Err(StorageError::NoSuchUpload { .. }) => Ok(()),
                    other => other,
                }
            }
        }
    }
}

/// A zeroed buffer of `len` bytes for a read of `key`.
fn alloc(b: &Bucket, key: &str, len: u64) -> Result<Vec<u8>> {
    let n = usize::try_from(len).map_err(|_| StorageError::TooLarge {
        uri: b.uri(key),
        size: len,
        max: usize::MAX as u64,
    })?;
    Ok(vec![0u8; n])
}

/// One ranged GET of `buf.len()` bytes at `at`, its body streamed into `buf`. `Err(None)` is a
/// short or oversized answer.
async fn get_into(
    store: &AmazonS3,
    path: &KeyPath,
    at: u64,
    buf: &mut [u8],
) -> std::result::Result<(), Option<OsError>> {
    let range = at..at + buf.len() as u64;
    let opts = GetOptions::new().with_range(Some(range.clone()));
    let got = store.get_opts(path, opts).await.map_err(Some)?;
    if got.range != range {
        return Err(None);
    }
    let mut body = got.into_stream();
    let mut filled = 0;
    while let Some(frame) = body.next().await {
        let frame = frame.map_err(Some)?;
        let end = filled + frame.len();
        let Some(to) = buf.get_mut(filled..end) else {
            return Err(None);
        };
        to.copy_from_slice(&frame);
        filled = end;
    }
    if filled == buf.len() { Ok(()) } else { Err(None) }
}

/// The error for a failed or short ranged read: [`StorageError::OutOfRange`] when the range
/// is past the end of the object, else the request's own error.
async fn range_error(b: &Bucket, key: &str, start: u64, len: u64, error: Option<OsError>) -> StorageError {
    if let Some(e @ OsError::NotFound { .. }) = error {
        return b.error(key, Missing::Object, e).await;
    }
    let head = match b.key_path(key) {
        Ok(path) => b.store.head(&path).await,
        Err(e) => return e,
    };
    match (head, error) {
        (Ok(meta), _) if start.checked_add(len).is_none_or(|end| end > meta.size) => StorageError::OutOfRange {
            uri: b.uri(key),
            start,
            len,
            size: meta.size,
        },
        (_, Some(e)) => b.error(key, Missing::Object, e).await,
        (Ok(_), None) | (Err(_), None) => StorageError::S3 {
            uri: b.uri(key),
            error: OsError::Generic {
                store: "S3",
                source: format!("short read of [{start}, +{len})").into(),
            },
        },
    }
}
