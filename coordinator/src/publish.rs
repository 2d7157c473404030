//! The one commit path of every runtime: the embedded merge and the cluster publish a merged
//! model through [`publish`], over [`Storage`] (local disk or S3), so their invariants live here:
//!
//! - a stale index from an earlier run is deleted first;
//! - metadata (`config.json`, model card, `mergekit_config.yml`, tokenizer files) next;
//! - then each shard becomes its final file (a staged local file renamed into place, or a
//!   multipart upload completed), and is checked against its planned size;
//! - the index last: a multi-shard model looks complete only once everything else is there.
//!
//! A publish that fails is undone by [`unpublish`], which deletes every file a publish may have
//! written (and what an interrupted write left beside them).

use crate::card;
use crate::config::MergeConfig;
use crate::output::{OutputOptions, TOKENIZER_FILES, index_json, output_config};
use crate::plan::Plan;
use crate::pyjson;
use bytes::Bytes;
use shardmerge_worker::storage::{Location, Storage, StorageError};
use std::path::{Path, PathBuf};

/// Largest tokenizer file copied from a donor.
pub const MAX_COPIED_FILE: u64 = 64 << 20;
/// Metadata files a publish may write besides shards, tokenizer files and index.
const METADATA_FILES: &[&str] = &["config.json", "README.md", "mergekit_config.yml"];
/// The index of a multi-shard model.
pub const INDEX: &str = "model.safetensors.index.json";

/// How a shard's bytes become its final file.
#[derive(Debug, Clone)]
pub enum ShardBytes {
    /// A fully written local file, renamed into place.
    Staged(PathBuf),
    /// A multipart upload to the final location, completed with these part ids in order.
    Upload {
        /// Upload id.
        id: String,
        /// Part ids (etags), in part order.
        etags: Vec<String>,
    },
}

/// One shard to publish.
#[derive(Debug, Clone)]
pub struct ShardCommit {
    /// Final file name.
    pub name: String,
    /// Planned size in bytes (checked after publishing).
    pub size: u64,
    /// Where its bytes are.
    pub bytes: ShardBytes,
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Storage refused or failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A published shard does not have its planned size.
    #[error("shard {file} is {got} bytes after publishing, planned {want}")]
    Size {
        /// Shard file.
        file: String,
        /// Size found.
        got: u64,
        /// Size planned.
        want: u64,
    },
}

impl PublishError {
    /// Whether retrying the (repeatable) publish may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            PublishError::Storage(e) => e.is_retryable(),
            PublishError::Size { .. } => false,
        }
    }
}

/// The location of a planned model's directory: a URI as written, or a local path as is (the
/// embedded runtime accepts any path the user gives, `..` included).
fn model_location(path: &Path) -> Result<Location, StorageError> {
    let s = path.to_string_lossy();
    if s.contains("://") {
        Location::parse(&s)
    } else {
        Ok(Location::Local(path.to_path_buf()))
    }
}

/// The metadata files of `plan`'s output, by name: `config.json`, the model card and config
/// copy (with `write_model_card`; the card is named after `out_name`'s last component), and
/// the donor's tokenizer files (with `copy_tokenizer`, when the donor has a tokenizer).
pub async fn metadata(
    st: &Storage,
    plan: &Plan,
    config: &MergeConfig,
    opts: OutputOptions,
    out_name: &Path,
) -> Result<Vec<(String, Bytes)>, PublishError> {
    let mut files = Vec::new();
    if let Some(cfg) = output_config(plan, config) {
        files.push((
            "config.json".to_string(),
            Bytes::from(pyjson::to_string(&cfg, true) + "\n"),
        ));
    }
    if opts.write_model_card {
        let card = card::model_card(plan, config, out_name);
        files.push(("README.md".to_string(), Bytes::from(card)));
        let yaml = Bytes::from(config.source_text.clone());
        files.push(("mergekit_config.yml".to_string(), yaml));
    }
    // A built tokenizer, or the donor's with a chat template, is written (whatever
    // `copy_tokenizer` says, as mergekit) instead of the donor's files.
    if let Some(tf) = &plan.tokenizer_files {
        files.extend(tf.iter().map(|(n, t)| (n.clone(), Bytes::from(t.clone()))));
    } else if opts.copy_tokenizer {
        let donor = model_location(&plan.models[plan.donor].path)?;
        let has = st.exists(&donor.join("tokenizer_config.json")).await?
            && (st.exists(&donor.join("tokenizer.json")).await? || st.exists(&donor.join("tokenizer.model")).await?);
        if has {
            for f in TOKENIZER_FILES {
                let src = donor.join(f);
                if st.exists(&src).await? {
                    files.push((f.to_string(), st.read_all_small(&src, MAX_COPIED_FILE).await?));
                }
            }
        }
    }
    Ok(files)
}

/// The index text of `plan`, when it has more than one shard.
pub fn index(plan: &Plan) -> Option<String> {
    (plan.proto.shards.len() > 1).then(|| index_json(plan))
}

/// A publish in steps, for callers that record progress between shards (the cluster journals
/// each published shard): [`Publisher::begin`], then [`Publisher::shard`] for each shard not
/// yet published, then [`Publisher::finish`]. Every step is repeatable.
pub struct Publisher<'a> {
    st: &'a Storage,
    output: &'a Location,
}

impl<'a> Publisher<'a> {
    /// Deletes a stale index and writes the metadata files.
    pub async fn begin(
        st: &'a Storage,
        output: &'a Location,
        metadata: &[(String, Bytes)],
    ) -> Result<Self, PublishError> {
        st.delete(&output.join(INDEX)).await?;
        for (name, bytes) in metadata {
            st.put(&output.join(name), bytes.clone()).await?;
        }
        Ok(Publisher { st, output })
    }

    /// Puts one shard in place and checks its size. An upload that no longer exists is
    /// accepted when the object has the planned size (its completion landed just before an
    /// interruption).
    pub async fn shard(&self, shard: ShardCommit) -> Result<(), PublishError> {
        let loc = self.output.join(&shard.name);
        match shard.bytes {
            ShardBytes::Staged(path) => self.st.place(&Location::Local(path), &loc).await?,
            ShardBytes::Upload { id, etags } => match self.st.complete_multipart(&loc, &id, etags).await {
                Ok(()) => {}
                Err(StorageError::NoSuchUpload { .. }) => {
                    tracing::warn!(shard = %shard.name, "upload already completed; checking the object");
                }
                Err(e) => return Err(e.into()),
            },
        }
        let got = self.st.head(&loc).await?;
        if got != shard.size {
            return Err(PublishError::Size {
                file: shard.name,
                got,
                want: shard.size,
            });
        }
        self.st.remove_leftovers(&loc).await?;
        Ok(())
    }

    /// Writes the index (the commit point of a multi-shard model) and sweeps leftovers.
    pub async fn finish(self, index: Option<String>) -> Result<(), PublishError> {
        if let Some(text) = index {
            self.st.put(&self.output.join(INDEX), Bytes::from(text)).await?;
        }
        for f in METADATA_FILES.iter().chain(TOKENIZER_FILES).chain([&INDEX]) {
            self.st.remove_leftovers(&self.output.join(f)).await?;
        }
        Ok(())
    }
}

/// Publishes a model at `output` in one go (see the module docs for the order).
pub async fn publish(
    st: &Storage,
    output: &Location,
    metadata: &[(String, Bytes)],
    shards: Vec<ShardCommit>,
    index: Option<String>,
) -> Result<(), PublishError> {
    let p = Publisher::begin(st, output, metadata).await?;
    for shard in shards {
        p.shard(shard).await?;
    }
    p.finish(index).await
}

/// Files whose presence, with `config.json`, marks a directory as a committed model (the
/// rule `mergekit-multi --lazy` uses; the index or the single shard is written last).
pub const MODEL_FILES: [&str; 4] = [
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
];

/// Whether a committed model is at `out`: its `config.json` and a model file.
pub async fn is_committed(st: &Storage, out: &Location) -> Result<bool, StorageError> {
    if !st.exists(&out.join("config.json")).await? {
        return Ok(false);
    }
    for f in MODEL_FILES {
        if st.exists(&out.join(f)).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Deletes everything a publish of shards `shard_names` may have written at `output`, and
/// what interrupted writes left beside those files. Deleting what is absent is not an error.
pub async fn unpublish(st: &Storage, output: &Location, shard_names: &[String]) -> Result<(), StorageError> {
    let files = shard_names
        .iter()
        .map(String::as_str)
        .chain(METADATA_FILES.iter().copied())
        .chain(TOKENIZER_FILES.iter().copied())
        .chain([INDEX]);
    let mut result = Ok(());
    for f in files {
        let loc = output.join(f);
        result = result.and(st.delete(&loc).await);
        result = result.and(st.remove_leftovers(&loc).await);
    }
    result
}
