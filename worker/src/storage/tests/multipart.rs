//! Cross-task multipart uploads, on S3 and on local disk.

use bytes::Bytes;

use super::{Both, pattern};
use crate::storage::{Location, Storage, StorageError};

const MIB: usize = 1 << 20;

/// Three parts (two of at least 5 MiB, as S3 requires, and a short last one) uploaded by
/// separate tasks, last part first; completing yields the parts in index order.
async fn upload_out_of_order(storage: &Storage, dest: &Location) {
    let parts = [pattern(5 * MIB, 1), pattern(5 * MIB + 17, 2), pattern(1234, 3)];
    let id = storage.create_multipart(dest).await.unwrap();
    let mut tasks = Vec::new();
    for index in [2, 0, 1] {
        let (storage, dest, id) = (storage.clone(), dest.clone(), id.clone());
        let data = Bytes::from(parts[index].clone());
        tasks.push(tokio::spawn(async move {
            let part = storage.put_part(&dest, &id, index, data).await.unwrap();
            (index, part)
        }));
    }
    let mut ids = vec![String::new(); parts.len()];
    for task in tasks {
        let (index, part) = task.await.unwrap();
        ids[index] = part;
    }
    assert!(
        !storage.exists(dest).await.unwrap(),
        "{dest}: visible before completion"
    );
    storage.complete_multipart(dest, &id, ids).await.unwrap();

    let expected = parts.concat();
    let size = storage.head(dest).await.unwrap();
    assert_eq!(size, expected.len() as u64, "{dest}");
    let got = storage.read_range(dest, 0, size).await.unwrap();
    assert!(
        got == expected,
        "{dest}: completed object differs from the parts in order"
    );
    assert_eq!(storage.list(&dest_dir(dest)).await.unwrap(), [(dest.clone(), size)]);
}

fn dest_dir(dest: &Location) -> Location {
    match dest {
        Location::Local(p) => Location::Local(p.parent().unwrap().to_owned()),
        Location::S3 { bucket, key } => Location::S3 {
            bucket: bucket.clone(),
            key: key.rsplit_once('/').map_or("", |(dir, _)| dir).to_owned(),
        },
    }
}

#[tokio::test]
async fn parts_from_separate_tasks_complete_in_index_order() {
    let both = Both::start().await;
    for (storage, root) in both.roots() {
        upload_out_of_order(storage, &root.join("out/model-00001-of-00002.safetensors")).await;
    }
}

#[tokio::test]
async fn abort_leaves_no_object() {
    let both = Both::start().await;
    for (storage, root) in both.roots() {
        let dest = root.join("aborted/model.safetensors");
        let id = storage.create_multipart(&dest).await.unwrap();
        let data = Bytes::from(pattern(5 * MIB, 4));
        storage.put_part(&dest, &id, 0, data.clone()).await.unwrap();
        storage.abort_multipart(&dest, &id).await.unwrap();
        assert!(!storage.exists(&dest).await.unwrap(), "{dest}");
        assert!(storage.list(&root.join("aborted")).await.unwrap().is_empty(), "{dest}");

        let err = storage.put_part(&dest, &id, 1, data).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&id) && msg.contains(&dest.to_uri()), "{msg}");
        if dest.is_local() {
            assert!(matches!(err, StorageError::NoSuchUpload { .. }), "{msg}");
        } else {
            // Real S3 answers 404 NoSuchUpload (-> `NoSuchUpload`); s3s-fs answers 403
            // AccessDenied for an upload id it does not know.
            assert!(
                matches!(err, StorageError::NoSuchUpload { .. } | StorageError::S3 { .. }),
                "{msg}"
            );
        }
        if dest.is_local() {
            // Aborting twice is fine (S3 says 404 NoSuchUpload, mapped to success; s3s-fs 403).
            storage.abort_multipart(&dest, &id).await.unwrap();
        }
    }
}

#[tokio::test]
async fn local_upload_ids_cannot_escape_the_staging_directory() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::from_env();
    let dest = Location::Local(dir.path().join("out.bin"));
    for id in ["../../etc", "", "a/b"] {
        let err = storage
            .put_part(&dest, id, 0, Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::NoSuchUpload { .. }), "{id}: {err}");
    }
    let id = storage.create_multipart(&dest).await.unwrap();
    let err = storage
        .complete_multipart(&dest, &id, vec!["../x".into()])
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(!storage.exists(&dest).await.unwrap());
}

/// A zombie worker re-uploading a part while, or after, the upload is completed cannot change
/// the completed object, nor bring a finished upload back.
#[tokio::test]
async fn late_part_uploads_change_nothing_after_completion() {
    let both = Both::start().await;
    for (storage, root) in both.roots() {
        let dest = root.join("zombie/model.safetensors");
        let id = storage.create_multipart(&dest).await.unwrap();
        let good = Bytes::from(pattern(5 * MIB, 7));
        let etag = storage.put_part(&dest, &id, 0, good.clone()).await.unwrap();
        // The same part again, with other bytes (a zombie from another plan): locally a new
        // part file, so the completion below still uses the journaled one.
        let other_bytes = Bytes::from(pattern(5 * MIB, 8));
        let other = storage.put_part(&dest, &id, 0, other_bytes.clone()).await.unwrap();
        // S3 keeps the last upload of a part number; the local backend every upload.
        let completed = if dest.is_local() { good.clone() } else { other_bytes };
        if dest.is_local() {
            assert_ne!(etag, other, "{dest}: a re-upload must get its own part id");
            storage.complete_multipart(&dest, &id, vec![etag]).await.unwrap();
            assert!(
                storage.read_range(&dest, 0, good.len() as u64).await.unwrap() == good,
                "{dest}"
            );
        } else {
            storage.complete_multipart(&dest, &id, vec![other]).await.unwrap();
        }
        // Refused (s3s-fs answers AccessDenied for an upload it no longer has, real S3
        // NoSuchUpload; the local backend says NoSuchUpload).
        let late = storage.put_part(&dest, &id, 0, good.clone()).await.unwrap_err();
        let again = storage.complete_multipart(&dest, &id, vec![]).await.unwrap_err();
        if dest.is_local() {
            assert!(matches!(late, StorageError::NoSuchUpload { .. }), "{dest}: {late}");
            assert!(matches!(again, StorageError::NoSuchUpload { .. }), "{dest}: {again}");
        }
        assert!(
            storage.read_range(&dest, 0, good.len() as u64).await.unwrap() == completed,
            "{dest}"
        );
        if let Location::Local(p) = &dest {
            let hidden: Vec<_> = std::fs::read_dir(p.parent().unwrap())
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect();
            assert!(hidden.is_empty(), "{dest}: left behind {hidden:?}");
        }
    }
}

/// What a killed writer leaves beside a file (temp files, a finished upload's directory) is
/// hidden from listings and removed by `remove_leftovers`.
#[tokio::test]
async fn leftovers_of_a_killed_writer_are_swept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    std::fs::create_dir_all(dir.join(".model.safetensors.shardmerge-done-1a-2b")).unwrap();
    std::fs::write(dir.join(".model.safetensors.shardmerge-tmp-1a-2b-3"), b"x").unwrap();
    std::fs::write(dir.join(".other.shardmerge-tmp-1"), b"x").unwrap();
    std::fs::write(dir.join("model.safetensors"), b"model").unwrap();
    let storage = Storage::from_env();
    let loc = Location::Local(dir.join("model.safetensors"));
    assert_eq!(storage.list(&Location::Local(dir.clone())).await.unwrap().len(), 1);
    storage.remove_leftovers(&loc).await.unwrap();
    let mut left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [".other.shardmerge-tmp-1", "model.safetensors"],
        "only this file's leftovers go"
    );
}
