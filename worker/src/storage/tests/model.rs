//! `open_model_dir` on S3 against `ModelDir::open` on the same files, and its errors.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{Both, loc};
use crate::safetensors_io::{ModelDir, SafetensorsError};
use crate::storage::{Location, StorageError, open_model_dir};

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden/models")
        .join(name)
}

/// `path` relative to `root`, for paths and URIs alike.
fn relative(path: &Path, root: &Path) -> String {
    let (path, root) = (path.to_str().unwrap(), root.to_str().unwrap());
    path.strip_prefix(root).unwrap().trim_start_matches('/').to_owned()
}

/// The two directories describe the same tensors at the same offsets of the same-named files.
fn assert_same_model(remote: &ModelDir, local: &ModelDir) {
    assert_eq!(remote.config, local.config);
    assert_eq!(remote.side, local.side, "the same side files");
    let names = |m: &ModelDir| m.tensors.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(remote), names(local), "same tensors in the same order");
    for (name, r) in &remote.tensors {
        let l = &local.tensors[name];
        assert_eq!(r.info, l.info, "{name}");
        assert_eq!(
            relative(&r.file, &remote.root),
            relative(&l.file, &local.root),
            "{name}"
        );
    }
    let shards = |m: &ModelDir| m.shards.iter().map(|s| relative(s, &m.root)).collect::<Vec<_>>();
    assert_eq!(shards(remote), shards(local));
}

#[tokio::test]
async fn s3_model_dirs_match_local_ones() {
    let both = Both::start().await;
    for (model, shards) in [("base_bf16", 1), ("ft1_bf16_sharded", 2)] {
        both.s3.upload_dir(&golden(model), "bucket", &format!("models/{model}"));
        let root = loc(&format!("s3://bucket/models/{model}"));
        let remote = open_model_dir(&both.s3_storage, &root).await.unwrap();
        let local = ModelDir::open(&golden(model)).unwrap();
        assert_same_model(&remote, &local);
        let tokenizer = std::fs::read_to_string(golden(model).join("tokenizer.json")).ok();
        assert_eq!(remote.side.text("tokenizer.json"), Ok(tokenizer.as_deref()), "{model}");
        assert_eq!(remote.shards.len(), shards, "{model}");
        assert_eq!(remote.root, Path::new(&root.to_uri()));
        let first = remote.tensors.values().next().unwrap();
        assert!(
            first.file.to_str().unwrap().starts_with("s3://bucket/models/"),
            "{model}"
        );

        // The paths of the remote dir lead back to the objects, and tensor bytes match.
        let file = Location::from_path(&first.file).unwrap();
        let bytes = both
            .s3_storage
            .read_range(&file, first.info.data_start, first.info.data_len)
            .await;
        let on_disk = std::fs::read(golden(model).join(file.file_name())).unwrap();
        assert!(bytes.unwrap() == on_disk[first.info.data_start as usize..first.info.data_end() as usize]);

        // Local directories go through the same call.
        let via_storage = open_model_dir(&both.local_storage, &Location::Local(golden(model))).await;
        assert_same_model(&via_storage.unwrap(), &local);
    }
}

#[tokio::test]
async fn bad_remote_models_name_the_uri() {
    let both = Both::start().await;
    let s = &both.s3_storage;
    let files: [(&str, &'static [u8]); 6] = [
        ("corrupt/model.safetensors", b"\x02\0\0\0\0\0\0\0{]"),
        ("short/model.safetensors", b"\xff\0\0\0\0\0\0\0{}"),
        (
            "noshard/model.safetensors.index.json",
            br#"{"weight_map":{"x":"gone.safetensors"}}"#,
        ),
        (
            "badindex/model.safetensors.index.json",
            br#"{"weight_map":{"x":"../up"}}"#,
        ),
        ("pickle/pytorch_model.bin", b"pickle"),
        ("empty/README.md", b"hi"),
    ];
    for (key, bytes) in files {
        s.put(&loc(&format!("s3://bucket/{key}")), Bytes::from_static(bytes))
            .await
            .unwrap();
    }
    let cases = [
        (
            "corrupt",
            "corrupt safetensors header in s3://bucket/corrupt/model.safetensors: invalid JSON",
        ),
        (
            "short",
            "truncated safetensors header in s3://bucket/short/model.safetensors: header claims 255",
        ),
        (
            "noshard",
            "shard s3://bucket/noshard/gone.safetensors listed in s3://bucket/noshard/model.safetensors.index.json does not exist",
        ),
        (
            "badindex",
            "invalid s3://bucket/badindex/model.safetensors.index.json: tensor `x` maps to `../up`",
        ),
        (
            "pickle",
            "pickle checkpoints are not supported; convert to safetensors (found s3://bucket/pickle/pytorch_model.bin)",
        ),
        ("empty", "no model weights in s3://bucket/empty: looked for"),
        (
            "nothing-here",
            "no model weights in s3://bucket/nothing-here: looked for",
        ),
    ];
    for (dir, expected) in cases {
        let err = open_model_dir(s, &loc(&format!("s3://bucket/{dir}")))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, StorageError::Model(_)) && !err.is_retryable(),
            "{dir}: {msg}"
        );
        assert!(msg.starts_with(expected), "{dir}: {msg}");
    }
    let err = open_model_dir(s, &loc("s3://bucket/corrupt")).await.unwrap_err();
    assert!(
        matches!(err, StorageError::Model(SafetensorsError::Header { .. })),
        "{err}"
    );

    let err = open_model_dir(s, &loc("s3://missing-bucket/models/base"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::NoSuchBucket { ref bucket, .. } if bucket == "missing-bucket"),
        "{err}"
    );
}
