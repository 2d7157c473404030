//! Uploads the files of local directories to S3 through the S3 API (multipart uploads of 64 MiB
//! parts), for the cluster benchmarks.
//!
//! Why not copy files into an s3s-fs root directly: s3s-fs keeps each object's ETag in a sidecar
//! written when the object is uploaded; an object placed on its disk by hand has none, so every
//! HEAD and GET of it hashes the *whole* file (MD5) first, which makes a ranged GET of a 1 GB
//! object cost seconds of server CPU.
//!
//! S3 settings come from the standard `AWS_*` variables. Usage:
//! `s3_put LOCAL_DIR s3://bucket/prefix [LOCAL_DIR s3://bucket/prefix ...]` (files only, not
//! subdirectories).

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use shardmerge_worker::storage::{Location, Storage};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

const PART: u64 = 64 << 20;
const IN_FLIGHT: usize = 4;

async fn put_file(storage: &Storage, file: &Path, to: &Location) -> Result<u64> {
    let f = std::sync::Arc::new(std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?);
    let size = f.metadata()?.len();
    if size < PART {
        storage.put(to, Bytes::from(std::fs::read(file)?)).await?;
        return Ok(size);
    }
    let upload = storage.create_multipart(to, size).await?;
    let parts: Vec<u64> = (0..size.div_ceil(PART)).collect();
    let ids: Vec<String> = futures::stream::iter(parts)
        .map(|i| {
            let (f, upload) = (f.clone(), upload.clone());
            async move {
                let start = i * PART;
                let len = PART.min(size - start) as usize;
                let buf = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len];
                    f.read_exact_at(&mut buf, start).map(|()| buf)
                })
                .await??;
                let id = storage
                    .put_part(to, &upload, i as usize, start, Bytes::from(buf))
                    .await?;
                anyhow::Ok(id)
            }
        })
        .buffered(IN_FLIGHT)
        .try_collect()
        .await?;
    storage.complete_multipart(to, &upload, ids).await?;
    Ok(size)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || !args.len().is_multiple_of(2) {
        bail!("usage: s3_put LOCAL_DIR s3://bucket/prefix [LOCAL_DIR s3://bucket/prefix ...]");
    }
    let storage = Storage::from_env();
    for pair in args.chunks(2) {
        let (dir, prefix) = (PathBuf::from(&pair[0]), Location::parse(&pair[1])?);
        let t = Instant::now();
        let mut bytes = 0;
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        entries.sort();
        for path in entries.into_iter().filter(|p| p.is_file()) {
            let name = path.file_name().and_then(|n| n.to_str()).context("file name")?;
            bytes += put_file(&storage, &path, &prefix.join(name)).await?;
        }
        eprintln!(
            "uploaded {} -> {prefix}: {:.2} GB in {:.1} s",
            dir.display(),
            bytes as f64 / 1e9,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
