//! Cross-task multipart uploads, on S3 and on local disk.

use bytes::Bytes;

use super::{Both, pattern};
use crate::storage::{Location, Storage, StorageError};

const MIB: usize = 1 << 20;

/// Three parts (two of at least 5 MiB, as S3 requires, and a short last one) uploaded by
/// separate tasks, last part first; completing yields the parts in index order.
async fn upload_out_of_order(storage: &Storage, dest: &Location) {
    let parts = [pattern(5 * MIB, 1), pattern(5 * MIB + 17, 2), pattern(1234, 3)];
    let id = storage.create_multipart(dest, 0).await.unwrap();
    let mut tasks = Vec::new();
    for index in [2, 0, 1] {
        let (storage, dest, id) = (storage.clone(), dest.clone(), id.clone());
        let data = Bytes::from(parts[index].clone());
        let offset = parts[..index].iter().map(|p| p.len() as u64).sum();
        tasks.push(tokio::spawn(async move {
            let part = storage.put_part(&dest, &id, index, offset, data).await.unwrap();
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
        let id = storage.create_multipart(&dest, 0).await.unwrap();
        let data = Bytes::from(pattern(5 * MIB, 4));
        storage.put_part(&dest, &id, 0, 0, data.clone()).await.unwrap();
        storage.abort_multipart(&dest, &id).await.unwrap();
        assert!(!storage.exists(&dest).await.unwrap(), "{dest}");
        assert!(storage.list(&root.join("aborted")).await.unwrap().is_empty(), "{dest}");

        let err = storage.put_part(&dest, &id, 1, 5 * MIB as u64, data).await.unwrap_err();
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
            .put_part(&dest, id, 0, 0, Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::NoSuchUpload { .. }), "{id}: {err}");
    }
    let id = storage.create_multipart(&dest, 0).await.unwrap();
    let err = storage
        .complete_multipart(&dest, &id, vec!["../x".into()])
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(!storage.exists(&dest).await.unwrap());
}

/// A zombie worker re-uploading a part (the same bytes: every attempt of a job writes the same
/// output) while the upload is in progress changes nothing; after completion it is refused and
/// cannot bring the upload back.
#[tokio::test]
async fn late_part_uploads_change_nothing_after_completion() {
    let both = Both::start().await;
    for (storage, root) in both.roots() {
        let dest = root.join("zombie/model.safetensors");
        let id = storage.create_multipart(&dest, 0).await.unwrap();
        let good = Bytes::from(pattern(5 * MIB, 7));
        let tail = Bytes::from(pattern(1000, 8));
        let first = storage.put_part(&dest, &id, 0, 0, good.clone()).await.unwrap();
        let again = storage.put_part(&dest, &id, 0, 0, good.clone()).await.unwrap();
        let last = storage
            .put_part(&dest, &id, 1, good.len() as u64, tail.clone())
            .await
            .unwrap();
        storage.complete_multipart(&dest, &id, vec![again, last]).await.unwrap();
        let completed = [good.clone(), tail.clone()].concat();
        // Refused (s3s-fs answers AccessDenied for an upload it no longer has, real S3
        // NoSuchUpload; the local backend says NoSuchUpload).
        let late = storage.put_part(&dest, &id, 0, 0, tail.clone()).await.unwrap_err();
        let repeat = storage.complete_multipart(&dest, &id, vec![first]).await.unwrap_err();
        if dest.is_local() {
            assert!(matches!(late, StorageError::NoSuchUpload { .. }), "{dest}: {late}");
            assert!(matches!(repeat, StorageError::NoSuchUpload { .. }), "{dest}: {repeat}");
        }
        let size = completed.len() as u64;
        assert!(storage.read_range(&dest, 0, size).await.unwrap() == completed, "{dest}");
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

/// Locally, parts that do not tile the object from its first byte (a part missing, or listed
/// out of order) are refused and nothing appears.
#[tokio::test]
async fn local_parts_must_tile_the_object() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = Storage::from_env();
    let dest = Location::Local(tmp.path().join("model.safetensors"));
    let id = storage.create_multipart(&dest, 0).await.unwrap();
    let a = storage
        .put_part(&dest, &id, 0, 0, Bytes::from_static(b"abc"))
        .await
        .unwrap();
    let c = storage
        .put_part(&dest, &id, 2, 5, Bytes::from_static(b"fg"))
        .await
        .unwrap();
    assert!(
        storage
            .complete_multipart(&dest, &id, vec![a.clone(), c.clone()])
            .await
            .is_err()
    );
    let b = storage
        .put_part(&dest, &id, 1, 3, Bytes::from_static(b"de"))
        .await
        .unwrap();
    assert!(
        storage
            .complete_multipart(&dest, &id, vec![b.clone(), a.clone(), c.clone()])
            .await
            .is_err()
    );
    assert!(
        storage
            .complete_multipart(&dest, &id, vec![a.clone(), b.clone()])
            .await
            .is_err(),
        "short"
    );
    assert!(!storage.exists(&dest).await.unwrap());
    storage.complete_multipart(&dest, &id, vec![a, b, c]).await.unwrap();
    assert_eq!(std::fs::read(tmp.path().join("model.safetensors")).unwrap(), b"abcdefg");
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

/// A local upload written in place (no part buffers): pre-sized to the object, bytes no one
/// writes read as zeros, ids from `local_part_id` complete it, and nothing is visible before.
#[tokio::test]
async fn local_uploads_are_written_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = Storage::from_env();
    let dest = Location::Local(tmp.path().join("model.safetensors"));
    let id = storage.create_multipart(&dest, 10).await.unwrap();
    let st = storage.clone();
    let (d, i) = (dest.clone(), id.clone());
    tokio::task::spawn_blocking(move || {
        st.write_upload_at(&d, &i, 6, b"wxyz").unwrap();
        st.write_upload_at(&d, &i, 0, b"ab").unwrap();
        st.sync_upload(&d, &i).unwrap();
    })
    .await
    .unwrap();
    assert!(!storage.exists(&dest).await.unwrap());
    let parts = vec![Storage::local_part_id(0, 4), Storage::local_part_id(4, 6)];
    storage.complete_multipart(&dest, &id, parts).await.unwrap();
    assert_eq!(
        std::fs::read(tmp.path().join("model.safetensors")).unwrap(),
        b"ab\0\0\0\0wxyz"
    );
    assert!(matches!(
        storage.write_upload_at(&dest, &id, 0, b"late").unwrap_err(),
        StorageError::NoSuchUpload { .. }
    ));
    let s3 = Location::parse("s3://bucket/key").unwrap();
    assert!(storage.write_upload_at(&s3, "x", 0, b"x").is_err());
}
