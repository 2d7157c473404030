//! Reads, small writes, listings and not-found errors.

use bytes::Bytes;

use super::{Both, loc, pattern};
use crate::storage::{DEFAULT_READ_CHUNK, Location, StorageError};

const MIB: usize = 1 << 20;

#[tokio::test]
async fn read_range_matches_the_bytes_across_chunks_and_at_the_edges() {
    let both = Both::start().await;
    let data = pattern(20 * MIB + 12_345, 7);
    std::fs::write(both.s3.create_bucket("bucket").join("big.bin"), &data).unwrap();
    let local_file = both.local.path().join("big.bin");
    std::fs::write(&local_file, &data).unwrap();

    let len = data.len() as u64;
    let chunk = DEFAULT_READ_CHUNK;
    let ranges = [
        (0, len),           // three chunks, the last one partial
        (1, 2 * chunk + 5), // three chunks, none aligned
        (chunk - 1, 2),     // straddles a chunk boundary
        (chunk, chunk),     // exactly one aligned chunk
        (123, 4567),        // small, inside the first chunk
        (len - 1, 1),       // the last byte
        (0, 1),             // the first byte
        (0, 0),             // empty
        (len, 0),           // empty, at the end
    ];
    let s3 = loc("s3://bucket/big.bin");
    let local = Location::Local(local_file);
    let variants = [
        ("s3 default", both.s3_storage.clone(), &s3),
        ("s3 sequential", both.s3_storage.clone().with_read_concurrency(1), &s3),
        (
            "s3 1 MiB chunks",
            both.s3_storage.clone().with_read_chunk(MIB as u64),
            &s3,
        ),
        ("local", both.local_storage.clone(), &local),
    ];
    for (name, storage, at) in variants {
        assert_eq!(storage.head(at).await.unwrap(), len, "{name}");
        for (start, n) in ranges {
            let got = storage.read_range(at, start, n).await.unwrap();
            let want = &data[start as usize..(start + n) as usize];
            assert!(
                got == want,
                "{name}: range [{start}, +{n}) differs ({} bytes read)",
                got.len()
            );
        }
    }
}

#[tokio::test]
async fn reads_past_the_end_are_out_of_range() {
    let both = Both::start().await;
    for (storage, root) in both.roots() {
        let file = root.join("f.bin");
        storage.put(&file, Bytes::from_static(b"0123456789")).await.unwrap();
        for (start, len) in [(9, 2), (10, 1), (20, 5), (u64::MAX, 1)] {
            let err = storage.read_range(&file, start, len).await.unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, StorageError::OutOfRange { size: 10, .. }),
                "{root} [{start}, +{len}): {msg}"
            );
            assert!(msg.contains(&file.to_uri()) && msg.contains("(10 bytes)"), "{msg}");
        }
    }
}

#[tokio::test]
async fn small_files_put_read_list_delete() {
    let both = Both::start().await;
    for (storage, root) in both.roots() {
        let (a, marker, nested) = (root.join("a.json"), root.join("marker"), root.join("sub/x.bin"));
        storage.put(&a, Bytes::from_static(b"{}")).await.unwrap();
        assert_eq!(storage.read_all_small(&a, 2).await.unwrap(), "{}");
        storage.put(&a, Bytes::from_static(b"{\"v\":2}")).await.unwrap();
        assert_eq!(storage.read_all_small(&a, 100).await.unwrap(), "{\"v\":2}");
        assert_eq!(
            (storage.head(&a).await.unwrap(), storage.exists(&a).await.unwrap()),
            (7, true)
        );
        let err = storage.read_all_small(&a, 6).await.unwrap_err();
        assert!(matches!(err, StorageError::TooLarge { size: 7, max: 6, .. }), "{err}");
        assert!(err.to_string().contains(&a.to_uri()), "{err}");

        assert!(
            storage
                .put_if_absent(&marker, Bytes::from_static(b"first"))
                .await
                .unwrap()
        );
        assert!(
            !storage
                .put_if_absent(&marker, Bytes::from_static(b"second"))
                .await
                .unwrap()
        );
        assert_eq!(storage.read_all_small(&marker, 100).await.unwrap(), "first");
        storage.put(&nested, Bytes::from(vec![7; 300])).await.unwrap();

        let listed = storage.list(&root).await.unwrap();
        assert_eq!(
            listed,
            [(a.clone(), 7), (marker.clone(), 5), (nested.clone(), 300)],
            "{root}"
        );
        assert_eq!(storage.list(&root.join("sub")).await.unwrap(), [(nested.clone(), 300)]);
        assert!(storage.list(&root.join("nothing")).await.unwrap().is_empty());
        assert!(
            storage.list(&root.join("su")).await.unwrap().is_empty(),
            "prefixes are whole segments"
        );

        storage.delete(&a).await.unwrap();
        assert!(!storage.exists(&a).await.unwrap());
        storage.delete(&a).await.unwrap();

        let missing = root.join("missing.bin");
        for err in [
            storage.head(&missing).await.unwrap_err(),
            storage.read_range(&missing, 0, 1).await.unwrap_err(),
            storage.read_all_small(&missing, 10).await.unwrap_err(),
        ] {
            assert!(
                matches!(err, StorageError::NotFound { .. }) && err.is_not_found(),
                "{err}"
            );
            assert_eq!(err.to_string(), format!("{} does not exist", missing.to_uri()));
        }
    }
}

#[tokio::test]
async fn a_missing_bucket_is_named_as_such() {
    let both = Both::start().await;
    let storage = &both.s3_storage;
    let object = loc("s3://no-such-bucket/models/base/config.json");
    let errors = [
        storage.head(&object).await.unwrap_err(),
        storage.exists(&object).await.unwrap_err(),
        storage.read_range(&object, 0, 10).await.unwrap_err(),
        storage.read_all_small(&object, 10).await.unwrap_err(),
        storage.list(&loc("s3://no-such-bucket/models")).await.unwrap_err(),
    ];
    // (Not `put` nor `delete`: s3s-fs creates a missing bucket's directory on PUT and accepts
    // the DELETE, where S3 answers 404 NoSuchBucket, which maps to the same error.)
    for err in errors {
        let msg = err.to_string();
        assert!(matches!(err, StorageError::NoSuchBucket { .. }), "{msg}");
        assert!(msg.starts_with("bucket `no-such-bucket` does not exist"), "{msg}");
        assert!(msg.contains("s3://no-such-bucket/models"), "{msg}");
    }
}

#[tokio::test]
async fn wrong_credentials_are_not_retried_and_not_shown() {
    let both = Both::start().await;
    let mut options = both.s3.options();
    options.secret_access_key = Some("not-the-secret".to_owned());
    let storage = crate::storage::Storage::with_s3_options(options);
    let err = storage.head(&loc("s3://bucket/x")).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StorageError::S3 { .. }) && !err.is_retryable(), "{msg}");
    assert!(
        msg.contains("s3://bucket/x") && !msg.contains("not-the-secret"),
        "{msg}"
    );
}
