//! Storage tests against a real S3-compatible server (s3s-fs over HTTP) and local disk, with
//! the same checks run on both kinds of location.

mod io;
mod model;
mod multipart;

use super::test_server::TestS3;
use super::{Location, Storage};

/// Deterministic pseudo-random bytes (xorshift), so ranges are distinguishable.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn loc(uri: &str) -> Location {
    Location::parse(uri).unwrap()
}

/// A server with bucket `bucket`, its storage, and a local temp dir with its storage.
struct Both {
    s3: TestS3,
    s3_storage: Storage,
    local: tempfile::TempDir,
    local_storage: Storage,
}

impl Both {
    async fn start() -> Both {
        let s3 = TestS3::start().await;
        s3.create_bucket("bucket");
        let s3_storage = s3.storage();
        Both {
            s3,
            s3_storage,
            local: tempfile::tempdir().unwrap(),
            local_storage: Storage::from_env(),
        }
    }

    /// `(storage, root)` for S3 and for local disk.
    fn roots(&self) -> [(&Storage, Location); 2] {
        [
            (&self.s3_storage, loc("s3://bucket/root")),
            (&self.local_storage, Location::Local(self.local.path().join("root"))),
        ]
    }
}
