//! Opening a model directory's headers from any [`Location`].
//!
//! Local directories go through [`ModelDir::open`]. On S3 the same layout rules apply (the
//! index wins over `model.safetensors`, as in mergekit; pickles are refused), but only the
//! headers are fetched: for each shard a HEAD for its size, a ranged GET of the 8-byte length
//! prefix, then one of the `n` header bytes. The result is the same [`ModelDir`], whose paths
//! hold the `s3://` URIs of the files, and errors are the same [`SafetensorsError`]s naming
//! those URIs.

use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

use super::error::StorageError;
use super::location::Location;
use super::store::Storage;
use crate::safetensors_io::{
    CONFIG_FILE, Header, HeaderError, INDEX_FILE, LEN_PREFIX, MAX_HEADER_LEN, ModelDir, PICKLE_FILES, SINGLE_FILE,
    SafetensorsError, ShardIndex, parse_header,
};

/// JSON files (config, index) larger than this are refused, as [`ModelDir::open`] does.
const MAX_JSON_LEN: u64 = MAX_HEADER_LEN;

/// Reads `config.json` and every safetensors header of the model directory at `root`.
///
/// Tensor data is never read. Errors: [`StorageError::Model`] for anything wrong with the
/// model (no weights, corrupt header, bad index, missing shard: each naming the file's URI),
/// [`StorageError::NoSuchBucket`], and storage failures.
pub async fn open_model_dir(storage: &Storage, root: &Location) -> Result<ModelDir, StorageError> {
    if let Location::Local(path) = root {
        let path = path.clone();
        return match tokio::task::spawn_blocking(move || ModelDir::open(&path)).await {
            Ok(result) => result.map_err(StorageError::Model),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StorageError::Io {
                op: "open model directory",
                uri: root.to_uri(),
                error: std::io::Error::other(e),
            }),
        };
    }
    let (config_loc, index_loc, single_loc) = (root.join(CONFIG_FILE), root.join(INDEX_FILE), root.join(SINGLE_FILE));
    let (has_config, has_index, has_single) = futures::try_join!(
        storage.exists(&config_loc),
        storage.exists(&index_loc),
        storage.exists(&single_loc)
    )?;
    let config = if has_config {
        Some(read_json(storage, &config_loc).await?)
    } else {
        None
    };
    if has_index {
        let json = read_json(storage, &index_loc).await?;
        let index = ShardIndex::parse(index_loc.to_path_buf(), &json)?;
        let files: Vec<Location> = index.shards.iter().map(|s| root.join(s)).collect();
        let headers: Vec<Header> = futures::stream::iter(&files)
            .map(|file| read_shard_header(storage, &index_loc, file))
            .buffered(storage.read_concurrency())
            .try_collect()
            .await?;
        let files = files.iter().map(Location::to_path_buf).collect();
        return Ok(index.locate(root.to_path_buf(), config, files, headers)?);
    }
    if has_single {
        let header = read_header(storage, &single_loc).await?;
        return Ok(ModelDir::from_single_file(
            root.to_path_buf(),
            config,
            single_loc.to_path_buf(),
            header,
        ));
    }
    for pickle in PICKLE_FILES {
        let loc = root.join(pickle);
        if storage.exists(&loc).await? {
            return Err(SafetensorsError::PickleCheckpoint {
                path: loc.to_path_buf(),
            }
            .into());
        }
    }
    Err(SafetensorsError::NoWeights {
        dir: root.to_path_buf(),
    }
    .into())
}

/// Reads the safetensors header at `loc` with ranged reads of exactly `8` and then `n` bytes.
pub async fn read_header(storage: &Storage, loc: &Location) -> Result<Header, StorageError> {
    let size = storage.head(loc).await?;
    let mut prefix = storage.read_range(loc, 0, size.min(LEN_PREFIX)).await?.to_vec();
    loop {
        match parse_header(&prefix, Some(size)) {
            Err(HeaderError::NeedMore { needed, available }) if needed > available && needed <= size => {
                let more = storage.read_range(loc, available, needed - available).await?;
                prefix.extend_from_slice(&more);
            }
            other => return other.map_err(|e| e.in_file(loc.to_path_buf()).into()),
        }
    }
}

/// A shard's header; a missing shard is [`SafetensorsError::MissingShard`] naming the index.
async fn read_shard_header(storage: &Storage, index: &Location, shard: &Location) -> Result<Header, StorageError> {
    read_header(storage, shard).await.map_err(|e| match e {
        StorageError::NotFound { .. } => SafetensorsError::MissingShard {
            index: index.to_path_buf(),
            shard: shard.to_path_buf(),
        }
        .into(),
        other => other,
    })
}

async fn read_json(storage: &Storage, loc: &Location) -> Result<Value, StorageError> {
    let invalid = |message: String| SafetensorsError::InvalidJsonFile {
        path: loc.to_path_buf(),
        message,
    };
    let bytes = match storage.read_all_small(loc, MAX_JSON_LEN).await {
        Err(StorageError::TooLarge { size, max, .. }) => {
            return Err(invalid(format!("file is {size} bytes, over the {max}-byte cap")).into());
        }
        other => other?,
    };
    serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()).into())
}
