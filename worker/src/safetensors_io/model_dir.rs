//! Hugging Face model directories: where each tensor of a model lives.
//!
//! Layout lookup follows mergekit 0.1.5 (`io/lazy_tensor_loader.py: ShardedTensorIndex`):
//! `model.safetensors.index.json` is used when present (even if `model.safetensors` exists
//! too), else `model.safetensors`; a directory with only `pytorch_model.bin(.index.json)` is
//! refused, as pickles are not read. Unlike mergekit, which fails lazily when a tensor is
//! first loaded, every shard header is read up front and a tensor the index maps to a shard
//! that lacks it is an error at open time.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use indexmap::IndexMap;
use rayon::prelude::*;
use serde_json::Value;

use super::error::{MAX_HEADER_LEN, SafetensorsError};
use super::header::{Header, TensorInfo, read_header};
use super::side_files::SideFiles;

/// Single-file safetensors weights.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Index of sharded safetensors weights.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The Hugging Face model configuration (architecture, sizes, dtype).
pub const CONFIG_FILE: &str = "config.json";
/// Pickle weights files, which are refused rather than read.
pub const PICKLE_FILES: [&str; 2] = ["pytorch_model.bin", "pytorch_model.bin.index.json"];
/// JSON files larger than this are refused (an index is a few hundred KB).
const MAX_JSON_LEN: u64 = MAX_HEADER_LEN;

/// A tensor and the file holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedTensor {
    /// The safetensors file (root joined with the shard name).
    pub file: PathBuf,
    /// Where in that file.
    pub info: TensorInfo,
}

/// A model directory with every tensor located.
#[derive(Debug, Clone)]
pub struct ModelDir {
    /// The directory.
    pub root: PathBuf,
    /// `config.json`, if present.
    pub config: Option<Value>,
    /// Tensors by name: in `weight_map` order for a sharded model, in data-offset order for
    /// a single file.
    pub tensors: IndexMap<String, LocatedTensor>,
    /// The safetensors files, in order of first use by `tensors`.
    pub shards: Vec<PathBuf>,
    /// The tokenizer files beside the weights (see [`SideFiles`]).
    pub side: SideFiles,
}

impl ModelDir {
    /// Reads `config.json`, the headers of every weights file and the side files under `root`.
    pub fn open(root: &Path) -> Result<ModelDir, SafetensorsError> {
        if !root.is_dir() {
            return Err(SafetensorsError::NotADirectory { path: root.to_owned() });
        }
        let config_path = root.join(CONFIG_FILE);
        let config = if config_path.exists() {
            Some(read_json(&config_path)?)
        } else {
            None
        };
        let index = root.join(INDEX_FILE);
        let single = root.join(SINGLE_FILE);
        let (tensors, shards) = if index.exists() {
            locate_sharded(root, &index)?
        } else if single.exists() {
            locate_single(single)?
        } else if let Some(pickle) = PICKLE_FILES.iter().map(|f| root.join(f)).find(|p| p.exists()) {
            return Err(SafetensorsError::PickleCheckpoint { path: pickle });
        } else {
            return Err(SafetensorsError::NoWeights { dir: root.to_owned() });
        };
        Ok(ModelDir {
            root: root.to_owned(),
            config,
            tensors,
            shards,
            side: SideFiles::read_local(root),
        })
    }

    /// The tensor called `name`, if the model has it.
    pub fn tensor(&self, name: &str) -> Option<&LocatedTensor> {
        self.tensors.get(name)
    }
}

type Located = (IndexMap<String, LocatedTensor>, Vec<PathBuf>);

impl ModelDir {
    /// A model directory whose single weights file `file` has `header` (for readers that fetch
    /// the header themselves, e.g. over the network). `root` and `file` may hold URIs; the
    /// side files are left for the reader to fill in.
    pub fn from_single_file(root: PathBuf, config: Option<Value>, file: PathBuf, header: Header) -> ModelDir {
        let (tensors, shards) = located_single(file, header);
        ModelDir {
            root,
            config,
            tensors,
            shards,
            side: SideFiles::default(),
        }
    }
}

fn locate_single(file: PathBuf) -> Result<Located, SafetensorsError> {
    let header = read_header(&file)?;
    Ok(located_single(file, header))
}

fn located_single(file: PathBuf, header: Header) -> Located {
    let tensors = header
        .tensors
        .into_iter()
        .map(|info| {
            let located = LocatedTensor {
                file: file.clone(),
                info,
            };
            (located.info.name.clone(), located)
        })
        .collect();
    (tensors, vec![file])
}

/// The validated `weight_map` of a `model.safetensors.index.json`: which shard holds each
/// tensor. Lets a reader fetch the shard headers itself, then [`ShardIndex::locate`] them.
#[derive(Debug, Clone)]
pub struct ShardIndex {
    /// The index file (or its URI), named in errors.
    pub index: PathBuf,
    /// Shard file names relative to the model directory, in order of first use.
    pub shards: Vec<String>,
    /// Tensors in `weight_map` order, each with the position of its shard in `shards`.
    entries: Vec<(String, usize)>,
}

impl ShardIndex {
    /// Validates the parsed JSON of the index file `index`: a `weight_map` object whose
    /// values are plain relative file names.
    pub fn parse(index: PathBuf, json: &Value) -> Result<ShardIndex, SafetensorsError> {
        let invalid = |message: String| SafetensorsError::InvalidJsonFile {
            path: index.clone(),
            message,
        };
        let Some(weight_map) = json.get("weight_map").and_then(Value::as_object) else {
            return Err(invalid("missing `weight_map` object".to_owned()));
        };
        let mut shard_names: IndexMap<&str, usize> = IndexMap::new();
        let mut entries = Vec::with_capacity(weight_map.len());
        for (tensor, shard) in weight_map {
            let Some(shard) = shard.as_str() else {
                return Err(invalid(format!(
                    "`weight_map` entry for tensor `{tensor}` is not a string"
                )));
            };
            if !is_plain_relative(shard) {
                return Err(invalid(format!(
                    "tensor `{tensor}` maps to `{shard}`, which is not a file inside the model directory"
                )));
            }
            let next = shard_names.len();
            let shard_idx = *shard_names.entry(shard).or_insert(next);
            entries.push((tensor.clone(), shard_idx));
        }
        let shards = shard_names.keys().map(|s| (*s).to_owned()).collect();
        Ok(ShardIndex { index, shards, entries })
    }

    /// Builds the model directory from the shards' `files` (`root` joined with each of
    /// [`ShardIndex::shards`]) and their `headers`, both in the order of `shards` (side files
    /// left for the reader to fill in).
    ///
    /// # Panics
    ///
    /// If `files` or `headers` do not have one entry per shard (a caller bug).
    pub fn locate(
        self,
        root: PathBuf,
        config: Option<Value>,
        files: Vec<PathBuf>,
        headers: Vec<Header>,
    ) -> Result<ModelDir, SafetensorsError> {
        assert_eq!(files.len(), self.shards.len(), "one file per shard");
        assert_eq!(headers.len(), self.shards.len(), "one header per shard");
        let by_name: Vec<HashMap<&str, &TensorInfo>> = headers
            .iter()
            .map(|h| h.tensors.iter().map(|t| (t.name.as_str(), t)).collect())
            .collect();
        let mut tensors = IndexMap::with_capacity(self.entries.len());
        for (tensor, shard_idx) in self.entries {
            let Some(info) = by_name[shard_idx].get(tensor.as_str()) else {
                return Err(SafetensorsError::TensorNotInShard {
                    tensor,
                    index: self.index,
                    shard: files[shard_idx].clone(),
                });
            };
            let located = LocatedTensor {
                file: files[shard_idx].clone(),
                info: (*info).clone(),
            };
            tensors.insert(tensor, located);
        }
        Ok(ModelDir {
            root,
            config,
            tensors,
            shards: files,
            side: SideFiles::default(),
        })
    }
}

fn locate_sharded(root: &Path, index: &Path) -> Result<Located, SafetensorsError> {
    let json = read_json(index)?;
    let shard_index = ShardIndex::parse(index.to_owned(), &json)?;
    let shards: Vec<PathBuf> = shard_index.shards.iter().map(|s| root.join(s)).collect();
    let headers: Vec<Result<Header, SafetensorsError>> = shards.par_iter().map(|s| read_shard(index, s)).collect();
    let headers: Vec<Header> = headers.into_iter().collect::<Result<_, _>>()?;
    let dir = shard_index.locate(root.to_owned(), None, shards, headers)?;
    Ok((dir.tensors, dir.shards))
}

fn read_shard(index: &Path, shard: &Path) -> Result<Header, SafetensorsError> {
    read_header(shard).map_err(|e| match e {
        SafetensorsError::Io { error, .. } if error.kind() == ErrorKind::NotFound => SafetensorsError::MissingShard {
            index: index.to_owned(),
            shard: shard.to_owned(),
        },
        other => other,
    })
}

/// A non-empty relative path with only normal components (no `..`, no root).
fn is_plain_relative(name: &str) -> bool {
    let path = Path::new(name);
    !name.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

fn read_json(path: &Path) -> Result<Value, SafetensorsError> {
    let io = |error| SafetensorsError::Io {
        path: path.to_owned(),
        error,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_JSON_LEN {
        return Err(SafetensorsError::InvalidJsonFile {
            path: path.to_owned(),
            message: format!("file is {len} bytes, over the {MAX_JSON_LEN}-byte cap"),
        });
    }
    let text = std::fs::read(path).map_err(io)?;
    serde_json::from_slice(&text).map_err(|e| SafetensorsError::InvalidJsonFile {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Fixture, write_with_crate};
    use super::*;
    use safetensors::Dtype;

    fn bf16(shape: &[usize], seed: u8) -> Fixture {
        Fixture::new(Dtype::BF16, shape, seed)
    }

    fn write_index(dir: &Path, map: &[(&str, &str)]) {
        let weight_map: serde_json::Map<String, Value> = map
            .iter()
            .map(|(t, s)| ((*t).to_owned(), Value::String((*s).to_owned())))
            .collect();
        let json = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
        std::fs::write(dir.join(INDEX_FILE), json.to_string()).unwrap();
    }

    #[test]
    fn single_file_with_config() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (bf16(&[2, 2], 1), Fixture::new(Dtype::F32, &[3], 2));
        write_with_crate(&dir.path().join(SINGLE_FILE), &[("z.a", &a), ("b", &b)]);
        std::fs::write(dir.path().join(CONFIG_FILE), r#"{"model_type":"llama"}"#).unwrap();
        let m = ModelDir::open(dir.path()).unwrap();
        assert_eq!(m.config.as_ref().unwrap()["model_type"], "llama");
        // Data-offset order: F32 sorts before BF16 in the file.
        let names: Vec<_> = m.tensors.keys().map(String::as_str).collect();
        assert_eq!(names, ["b", "z.a"]);
        assert_eq!(m.shards, [dir.path().join(SINGLE_FILE)]);
        let t = m.tensor("z.a").unwrap();
        assert_eq!(t.file, dir.path().join(SINGLE_FILE));
        assert_eq!((t.info.dtype, t.info.numel()), (Dtype::BF16, 4));
        let mapped = super::super::MappedFile::open(&t.file).unwrap();
        assert_eq!(mapped.tensor_bytes(&t.info).unwrap(), &a.data[..]);
    }

    #[test]
    fn index_over_two_shards() {
        let dir = tempfile::tempdir().unwrap();
        let (x, y, z) = (bf16(&[2], 1), bf16(&[3], 2), bf16(&[], 3));
        write_with_crate(&dir.path().join("s-1.safetensors"), &[("x", &x), ("unlisted", &x)]);
        write_with_crate(&dir.path().join("s-2.safetensors"), &[("y", &y), ("z", &z)]);
        write_index(
            dir.path(),
            &[
                ("z", "s-2.safetensors"),
                ("x", "s-1.safetensors"),
                ("y", "s-2.safetensors"),
            ],
        );
        let m = ModelDir::open(dir.path()).unwrap();
        assert!(m.config.is_none());
        let names: Vec<_> = m.tensors.keys().map(String::as_str).collect();
        assert_eq!(names, ["z", "x", "y"]);
        let shards = [dir.path().join("s-2.safetensors"), dir.path().join("s-1.safetensors")];
        assert_eq!(m.shards, shards);
        assert_eq!(m.tensor("x").unwrap().file, shards[1]);
        assert_eq!(m.tensor("z").unwrap().info.shape, Vec::<u64>::new());
        let y_info = &m.tensor("y").unwrap().info;
        let mapped = super::super::MappedFile::open(&shards[0]).unwrap();
        assert_eq!(mapped.tensor_bytes(y_info).unwrap(), &y.data[..]);
        assert!(m.tensor("unlisted").is_none());
    }

    #[test]
    fn index_wins_over_single_file_like_mergekit() {
        let dir = tempfile::tempdir().unwrap();
        let (x, y) = (bf16(&[2], 1), bf16(&[2], 2));
        write_with_crate(&dir.path().join(SINGLE_FILE), &[("from_single", &x)]);
        write_with_crate(&dir.path().join("s.safetensors"), &[("from_index", &y)]);
        write_index(dir.path(), &[("from_index", "s.safetensors")]);
        let m = ModelDir::open(dir.path()).unwrap();
        assert!(m.tensor("from_index").is_some() && m.tensor("from_single").is_none());
    }

    #[test]
    fn index_naming_a_missing_shard() {
        let dir = tempfile::tempdir().unwrap();
        write_index(dir.path(), &[("x", "gone.safetensors")]);
        let msg = ModelDir::open(dir.path()).unwrap_err().to_string();
        assert!(msg.starts_with("shard ") && msg.contains("gone.safetensors"), "{msg}");
        assert!(msg.contains(INDEX_FILE), "{msg}");
    }

    #[test]
    fn tensor_missing_from_its_shard_names_both() {
        let dir = tempfile::tempdir().unwrap();
        let x = bf16(&[2], 1);
        write_with_crate(&dir.path().join("s-1.safetensors"), &[("x", &x)]);
        write_with_crate(&dir.path().join("s-2.safetensors"), &[("y", &x)]);
        write_index(dir.path(), &[("x", "s-1.safetensors"), ("y", "s-1.safetensors")]);
        let err = ModelDir::open(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, SafetensorsError::TensorNotInShard { .. }));
        assert!(msg.contains("`y`") && msg.contains("s-1.safetensors") && msg.contains(INDEX_FILE));
    }

    #[test]
    fn corrupt_shard_error_names_the_shard() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.safetensors"), b"\x02\0\0\0\0\0\0\0{]").unwrap();
        write_index(dir.path(), &[("x", "bad.safetensors")]);
        let msg = ModelDir::open(dir.path()).unwrap_err().to_string();
        assert!(msg.starts_with("corrupt safetensors header in ") && msg.contains("bad.safetensors"));
    }

    #[test]
    fn bad_index_files() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("not json", "invalid "),
            (r#"{"metadata":{}}"#, "missing `weight_map` object"),
            (r#"{"weight_map":{"x":1}}"#, "tensor `x` is not a string"),
            (
                r#"{"weight_map":{"x":"../up.safetensors"}}"#,
                "not a file inside the model directory",
            ),
            (
                r#"{"weight_map":{"x":"/abs.safetensors"}}"#,
                "not a file inside the model directory",
            ),
            (r#"{"weight_map":{"x":""}}"#, "not a file inside the model directory"),
        ];
        for (text, expected) in cases {
            std::fs::write(dir.path().join(INDEX_FILE), text).unwrap();
            let msg = ModelDir::open(dir.path()).unwrap_err().to_string();
            assert!(msg.contains(expected) && msg.contains(INDEX_FILE), "{msg}");
        }
    }

    #[test]
    fn pickle_only_no_weights_and_not_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let msg = ModelDir::open(dir.path()).unwrap_err().to_string();
        assert!(msg.starts_with("no model weights in ") && msg.contains("model.safetensors"));
        assert!(msg.contains(&dir.path().display().to_string()));

        std::fs::write(dir.path().join("pytorch_model.bin"), b"pickle").unwrap();
        let msg = ModelDir::open(dir.path()).unwrap_err().to_string();
        assert!(msg.starts_with("pickle checkpoints are not supported; convert to safetensors"));
        assert!(msg.contains("pytorch_model.bin"));

        let file = dir.path().join("pytorch_model.bin");
        let msg = ModelDir::open(&file).unwrap_err().to_string();
        assert!(msg.contains("is not a directory"));
    }

    #[test]
    fn invalid_config_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_with_crate(&dir.path().join(SINGLE_FILE), &[("x", &bf16(&[1], 0))]);
        std::fs::write(dir.path().join(CONFIG_FILE), "{oops").unwrap();
        let msg = ModelDir::open(dir.path()).unwrap_err().to_string();
        assert!(msg.starts_with("invalid ") && msg.contains(CONFIG_FILE), "{msg}");
    }
}
