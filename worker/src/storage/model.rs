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
    CONFIG_FILE, Header, HeaderError, INDEX_FILE, LEN_PREFIX, MAX_HEADER_LEN, MAX_SIDE_FILE_LEN, ModelDir,
    PICKLE_FILES, SENTENCEPIECE_MODEL, SINGLE_FILE, SafetensorsError, ShardIndex, SideFile, SideFiles, TEXT_SIDE_FILES,
    parse_header,
};

/// JSON files (config, index) larger than this are refused, as [`ModelDir::open`] does.
const MAX_JSON_LEN: u64 = MAX_HEADER_LEN;

/// Reads `config.json`, every safetensors header and the side files (tokenizer files, see
/// [`SideFiles`]) of the model directory at `root`.
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
    let (mut dir, side) = futures::try_join!(
        open_weights(storage, root, config, has_index, has_single),
        read_side_files(storage, root)
    )?;
    dir.side = side;
    Ok(dir)
}

/// The weights' headers (the index wins over a single file, as in mergekit).
async fn open_weights(
    storage: &Storage,
    root: &Location,
    config: Option<Value>,
    has_index: bool,
    has_single: bool,
) -> Result<ModelDir, StorageError> {
    let (index_loc, single_loc) = (root.join(INDEX_FILE), root.join(SINGLE_FILE));
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

/// The side files present under `root`: the text ones read (up to [`MAX_SIDE_FILE_LEN`]), a
/// SentencePiece model only noted. Storage failures other than a missing object are errors.
async fn read_side_files(storage: &Storage, root: &Location) -> Result<SideFiles, StorageError> {
    let reads = TEXT_SIDE_FILES.map(|name| async move {
        let got = match storage.read_all_small(&root.join(name), MAX_SIDE_FILE_LEN).await {
            Ok(bytes) => Some(SideFile::from_bytes(bytes.to_vec())),
            Err(StorageError::NotFound { .. }) => None,
            Err(StorageError::TooLarge { size, .. }) => Some(SideFile::too_large(size)),
            Err(e) => return Err(e),
        };
        Ok((name, got))
    });
    let sentencepiece = root.join(SENTENCEPIECE_MODEL);
    let (texts, sentencepiece) =
        futures::try_join!(futures::future::try_join_all(reads), storage.exists(&sentencepiece))?;
    let mut side = SideFiles::default();
    for (name, file) in texts {
        if let Some(file) = file {
            side.insert(name, file);
        }
    }
    if sentencepiece {
        side.insert(SENTENCEPIECE_MODEL, SideFile::Present);
    }
    Ok(side)
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
