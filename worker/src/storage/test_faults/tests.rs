//! The fault layer against the real s3s-fs server and the object_store client.

use std::time::Duration;

use bytes::Bytes;

use super::{FaultConfig, FaultKind, SeededRng, Target};
use crate::storage::test_server::TestS3;
use crate::storage::{Location, Storage};

/// The server, a client of its faulty endpoint that does not retry, and a fault-free client.
async fn setup(seed: u64) -> (TestS3, Storage, Storage) {
    let s3 = TestS3::start_with_faults(seed).await;
    s3.create_bucket("bkt");
    let mut options = s3.options();
    options.endpoint = s3.faulty_endpoint().map(str::to_string);
    options.retry.max_retries = 0;
    let (faulty, clean) = (Storage::with_s3_options(options), s3.storage());
    (s3, faulty, clean)
}

/// Every `target` request gets a fault of `kind`.
fn only(kind: FaultKind, target: Target) -> FaultConfig {
    let mut config = FaultConfig {
        slow_body_max: Duration::from_millis(400),
        ..FaultConfig::default()
    };
    config.rates[FaultKind::ALL.iter().position(|k| *k == kind).unwrap()] = 1.0;
    config.targets[Target::ALL.iter().position(|t| *t == target).unwrap()] = true;
    config
}

fn data() -> Vec<u8> {
    (0..6u32 << 20).map(|i| (i % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_hit_only_targeted_requests_on_the_faulty_endpoint_and_are_counted() {
    let (s3, faulty, clean) = setup(7).await;
    let faults = s3.faults().unwrap().clone();
    let input = Location::parse("s3://bkt/in/x.bin").unwrap();
    let data = data();
    clean.put(&input, data.clone().into()).await.unwrap();
    for kind in [FaultKind::InternalError, FaultKind::SlowDown, FaultKind::Reset] {
        faults.set(only(kind, Target::Get));
        assert!(faulty.read_range(&input, 5, 10).await.is_err(), "{kind:?}");
        assert_eq!(clean.read_range(&input, 5, 10).await.unwrap(), data[5..15], "{kind:?}");
        assert_eq!(faults.counts().of_kind(kind), 1, "{kind:?}");
    }
    faults.set(only(FaultKind::SlowBody, Target::Get));
    assert_eq!(faulty.read_range(&input, 0, 3 << 20).await.unwrap(), data[..3 << 20]);
    // Uploads are not targeted by this configuration.
    let out = Location::parse("s3://bkt/out/y.bin").unwrap();
    let id = faulty.create_multipart(&out, 0).await.unwrap();
    let part = faulty
        .put_part(&out, &id, 0, 0, Bytes::from(data.clone()))
        .await
        .unwrap();
    faults.set(only(FaultKind::SlowDown, Target::UploadPart));
    assert!(
        faulty
            .put_part(&out, &id, 0, 0, Bytes::from(data.clone()))
            .await
            .is_err()
    );
    assert!(faulty.read_range(&input, 5, 10).await.is_ok());
    faults.off();
    faulty.complete_multipart(&out, &id, vec![part]).await.unwrap();
    let counts = faults.counts();
    assert_eq!(counts.total(), 5, "{counts}");
    assert_eq!(counts.0[1], [1, 1, 0], "{counts}");
    assert_eq!(counts.of_kind(FaultKind::SlowBody), 1, "{counts}");
}

#[tokio::test(flavor = "multi_thread")]
async fn open_uploads_follow_create_abort_and_complete_also_with_a_lost_reply() {
    let (s3, faulty, clean) = setup(8).await;
    let faults = s3.faults().unwrap().clone();
    let out = Location::parse("s3://bkt/out/y.bin").unwrap();
    let aborted = faulty.create_multipart(&out, 0).await.unwrap();
    assert_eq!(faults.open_uploads("bkt", "out/").len(), 1);
    assert!(faults.open_uploads("bkt", "in/").is_empty() && faults.open_uploads("other", "").is_empty());
    faulty.abort_multipart(&out, &aborted).await.unwrap();
    assert!(faults.open_uploads("bkt", "out/").is_empty());

    let id = faulty.create_multipart(&out, 0).await.unwrap();
    let data = data();
    faults.set(only(FaultKind::Reset, Target::UploadPart));
    assert!(
        faulty
            .put_part(&out, &id, 0, 0, Bytes::from(data.clone()))
            .await
            .is_err()
    );
    faults.set(only(FaultKind::LostReply, Target::Complete));
    let part = faulty
        .put_part(&out, &id, 0, 0, Bytes::from(data.clone()))
        .await
        .unwrap();
    assert_eq!(faults.open_uploads("bkt", "out/")[0].upload_id, id);
    // The completion happens, but its answer is lost.
    assert!(faulty.complete_multipart(&out, &id, vec![part]).await.is_err());
    assert!(faults.open_uploads("bkt", "out/").is_empty());
    assert_eq!(clean.read_range_vec(&out, 0, data.len() as u64).await.unwrap(), data);
    // Like S3 (not s3s-fs), an upload that is gone is `NoSuchUpload`, which abort accepts.
    faults.off();
    faulty.abort_multipart(&out, &id).await.unwrap();
    let counts = faults.counts();
    assert_eq!(counts.total(), 2, "{counts}");
    assert!(faults.targeted_requests() >= 3);
}

#[test]
fn a_seed_replays_the_same_draws() {
    let draws = |seed| {
        let mut rng = SeededRng::new(seed);
        (0..8).map(|_| rng.next_u64()).collect::<Vec<_>>()
    };
    assert_eq!(draws(3), draws(3));
    assert_ne!(draws(3), draws(4));
    let mut rng = SeededRng::new(5);
    assert!((0..1000).map(|_| rng.unit()).all(|u| (0.0..1.0).contains(&u)));
}
