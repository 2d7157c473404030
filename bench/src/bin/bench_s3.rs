//! Worker S3 read throughput: shardmerge's `Storage::read_range` against a plain object_store
//! loop of concurrent ranged GETs over the same objects, on the same S3 endpoint.
//!
//! Four passes per repeat, in rotating order so none always runs on the warmest server:
//!
//! * `plain`: for each object, `get_range` calls of `--chunk` bytes, `--concurrency` in flight
//!   (`futures::stream::buffer_unordered`), bodies counted and dropped: the reference.
//! * `shardmerge`: `Storage::read_range(object, 0, size)` for each object, with the worker's
//!   default chunking ([`DEFAULT_READ_CHUNK`], [`DEFAULT_READ_CONCURRENCY`]); every GET's body
//!   is streamed into its place in one buffer, as a worker gets them.
//! * `per-tensor`: `Storage::read_range` of every tensor of the safetensors objects in turn, one
//!   tensor at a time (a worker now prefetches a unit's inputs several tensors at once).
//! * `plain-ordered`: the plain loop, but in order (`buffered`) and copied into one buffer per
//!   object, as `read_range` returns it: separates the cost of reassembly from the rest.
//!
//! S3 settings come from the standard `AWS_*` variables (`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`), as for a worker process.
//! Prints `key=value` result lines (medians) on stdout and every run on stderr.
//!
//! Usage: `bench_s3 [--repeat N] s3://bucket/key.safetensors...`

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as KeyPath;
use shardmerge_bench::{median, result, runs};
use shardmerge_worker::storage::{DEFAULT_READ_CHUNK, DEFAULT_READ_CONCURRENCY, Location, Storage, read_header};
use std::collections::HashMap;
use std::ops::Range;
use std::time::Instant;

#[derive(Debug, Parser)]
#[command(about = "S3 read throughput: shardmerge Storage::read_range vs a plain object_store loop")]
struct Args {
    /// Objects to read (`s3://bucket/key`); safetensors files for the per-tensor pass.
    #[arg(required = true)]
    objects: Vec<String>,
    /// Timed repeats of each pass.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Skip the per-tensor pass (objects need not be safetensors then).
    #[arg(long)]
    no_per_tensor: bool,
}

/// One object: its location, size and (for the per-tensor pass) the tensors' byte ranges.
struct Object {
    loc: Location,
    bucket: String,
    key: KeyPath,
    size: u64,
    tensors: Vec<Range<u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Pass {
    Plain,
    PlainOrdered,
    Shardmerge,
    PerTensor,
}

impl Pass {
    fn name(self) -> &'static str {
        match self {
            Pass::Plain => "plain object_store loop",
            Pass::PlainOrdered => "plain loop, ordered + reassembled",
            Pass::Shardmerge => "shardmerge read_range (whole object)",
            Pass::PerTensor => "shardmerge read_range (per tensor)",
        }
    }
}

fn plain_client(bucket: &str) -> Result<AmazonS3> {
    AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_virtual_hosted_style_request(false)
        .build()
        .with_context(|| format!("building an object_store client for bucket {bucket}"))
}

/// The reference: concurrent ranged GETs of `chunk` bytes over each whole object; with
/// `reassemble`, in order and copied into one buffer per object.
async fn plain_pass(stores: &HashMap<String, AmazonS3>, objects: &[Object], reassemble: bool) -> Result<u64> {
    let mut total = 0u64;
    for o in objects {
        let store = &stores[&o.bucket];
        let mut ranges = Vec::new();
        let mut at = 0;
        while at < o.size {
            let end = (at + DEFAULT_READ_CHUNK).min(o.size);
            ranges.push(at..end);
            at = end;
        }
        let gets = futures::stream::iter(ranges).map(|r| store.get_range(&o.key, r));
        total += if reassemble {
            let mut out = BytesMut::with_capacity(o.size as usize);
            let mut chunks = gets.buffered(DEFAULT_READ_CONCURRENCY);
            while let Some(b) = chunks.next().await {
                out.extend_from_slice(&b.with_context(|| format!("plain GETs of {}", o.loc))?);
            }
            out.freeze().len() as u64
        } else {
            gets.buffer_unordered(DEFAULT_READ_CONCURRENCY)
                .try_fold(0u64, |acc, b| async move { Ok(acc + b.len() as u64) })
                .await
                .with_context(|| format!("plain GETs of {}", o.loc))?
        };
    }
    Ok(total)
}

async fn shardmerge_pass(storage: &Storage, objects: &[Object], per_tensor: bool) -> Result<u64> {
    let mut total = 0u64;
    for o in objects {
        let whole = std::iter::once(0..o.size);
        let ranges: Vec<Range<u64>> = if per_tensor { o.tensors.clone() } else { whole.collect() };
        for r in ranges {
            let bytes = storage
                .read_range(&o.loc, r.start, r.end - r.start)
                .await
                .with_context(|| format!("read_range of {}", o.loc))?;
            total += bytes.len() as u64;
        }
    }
    Ok(total)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let storage = Storage::from_env();
    let mut objects = Vec::new();
    let mut stores = HashMap::new();
    for uri in &args.objects {
        let loc = Location::parse(uri)?;
        let Location::S3 { bucket, key } = &loc else {
            bail!("{uri} is not an s3:// location");
        };
        if !stores.contains_key(bucket) {
            stores.insert(bucket.clone(), plain_client(bucket)?);
        }
        let size = storage.head(&loc).await?;
        let tensors = if args.no_per_tensor {
            Vec::new()
        } else {
            let header = read_header(&storage, &loc)
                .await
                .with_context(|| format!("reading the safetensors header of {uri}"))?;
            header.tensors.iter().map(|t| t.data_start..t.data_end()).collect()
        };
        objects.push(Object {
            bucket: bucket.clone(),
            key: KeyPath::from(key.as_str()),
            loc,
            size,
            tensors,
        });
    }
    let bytes: u64 = objects.iter().map(|o| o.size).sum();
    let tensor_bytes: u64 = objects.iter().flat_map(|o| &o.tensors).map(|r| r.end - r.start).sum();
    let tensor_count: usize = objects.iter().map(|o| o.tensors.len()).sum();
    eprintln!(
        "{} object(s), {:.2} GB; {tensor_count} tensors; chunk {} MiB, {} in flight; {} repeat(s)",
        objects.len(),
        bytes as f64 / 1e9,
        DEFAULT_READ_CHUNK >> 20,
        DEFAULT_READ_CONCURRENCY,
        args.repeat
    );

    let mut passes = vec![Pass::Plain, Pass::PlainOrdered, Pass::Shardmerge];
    if !args.no_per_tensor {
        passes.push(Pass::PerTensor);
    }
    // Warm up: connections, the server's page cache, allocator.
    for &p in &passes {
        run_pass(p, &storage, &stores, &objects).await?;
    }
    let mut gbps: HashMap<&'static str, Vec<f64>> = HashMap::new();
    let mut ratios: HashMap<&'static str, Vec<f64>> = HashMap::new();
    for rep in 0..args.repeat {
        let mut this: HashMap<&'static str, f64> = HashMap::new();
        for i in 0..passes.len() {
            let p = passes[(i + rep) % passes.len()];
            let t = Instant::now();
            let n = run_pass(p, &storage, &stores, &objects).await?;
            let secs = t.elapsed().as_secs_f64();
            let want = if p == Pass::PerTensor { tensor_bytes } else { bytes };
            if n != want {
                bail!("{}: read {n} bytes, expected {want}", p.name());
            }
            let rate = n as f64 / secs / 1e9;
            eprintln!("  run {}: {:<40} {:>6.2} GB/s ({secs:.2} s)", rep + 1, p.name(), rate);
            this.insert(p.name(), rate);
            gbps.entry(p.name()).or_default().push(rate);
        }
        let plain = this[Pass::Plain.name()];
        for p in [Pass::PlainOrdered, Pass::Shardmerge, Pass::PerTensor] {
            if let Some(r) = this.get(p.name()) {
                ratios.entry(p.name()).or_default().push(r / plain);
            }
        }
    }
    for (p, key) in [
        (Pass::Plain, "plain"),
        (Pass::PlainOrdered, "plain_ordered"),
        (Pass::Shardmerge, "shardmerge"),
        (Pass::PerTensor, "per_tensor"),
    ] {
        let Some(v) = gbps.get(p.name()) else { continue };
        eprintln!("{:<40} median {:.2} GB/s of {}", p.name(), median(v), runs(v, 2));
        result(&format!("s3_{key}_gbps"), format!("{:.3}", median(v)));
        if let Some(r) = ratios.get(p.name()) {
            result(&format!("s3_{key}_ratio"), format!("{:.3}", median(r)));
            result(&format!("s3_{key}_ratio_runs"), runs(r, 2));
        }
    }
    result("s3_gb", format!("{:.2}", bytes as f64 / 1e9));
    result("s3_objects", objects.len());
    result("s3_tensors", tensor_count);
    Ok(())
}

async fn run_pass(p: Pass, storage: &Storage, stores: &HashMap<String, AmazonS3>, objects: &[Object]) -> Result<u64> {
    match p {
        Pass::Plain => plain_pass(stores, objects, false).await,
        Pass::PlainOrdered => plain_pass(stores, objects, true).await,
        Pass::Shardmerge => shardmerge_pass(storage, objects, false).await,
        Pass::PerTensor => shardmerge_pass(storage, objects, true).await,
    }
}
