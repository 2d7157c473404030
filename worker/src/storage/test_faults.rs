//! Fault injection for the in-process S3 test server ([`super::test_server::TestS3`]).
//!
//! A [`Faults`] sits between hyper and the s3s service. On the endpoint the processes under
//! test use, it draws from a seeded RNG for every targeted request ([`Target`]: ranged GETs,
//! UploadPart, CompleteMultipartUpload) and may answer 500 InternalError or 503 SlowDown (with
//! an S3 XML error body), drop the connection without an answer, throttle the response body,
//! or carry the request out and then drop the answer ([`FaultKind`]). What it injects is
//! configured at run time ([`FaultConfig`]) and counted ([`FaultCounts`]). The test's own
//! endpoint passes through the same layer with injection off, so set-up and verification
//! never see a fault.
//!
//! Both endpoints record CreateMultipartUpload answers, so a test can list the uploads still
//! open on a bucket ([`Faults::open_uploads`]). s3s-fs keeps an upload alive exactly as long
//! as its `ROOT/.upload-ID.json` record exists (CompleteMultipartUpload and
//! AbortMultipartUpload remove it; UploadPart is refused without it), so an upload counts as
//! open while that record is there.
//!
//! Two differences between s3s-fs and S3 are ironed out on both endpoints, so that the
//! server's quirks are not mistaken for the client's bugs: a request naming an upload that no
//! longer exists gets S3's `404 NoSuchUpload` (s3s-fs says `403 AccessDenied`), and a request
//! runs to its end even if the client disconnects (s3s-fs would stop a
//! CompleteMultipartUpload halfway, the upload gone and the object not written).

use parking_lot::Mutex;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod layer;
#[cfg(test)]
mod tests;

pub(super) use layer::serve;

/// SplitMix64: a small, fast, seeded generator whose sequence never changes between versions,
/// so a seed replays the same choices.
#[derive(Debug, Clone)]
pub struct SeededRng(u64);

impl SeededRng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> SeededRng {
        SeededRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// What a fault does to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// `500 InternalError`, the request not carried out.
    InternalError,
    /// `503 SlowDown`, the request not carried out.
    SlowDown,
    /// The connection is closed without an answer, the request not carried out.
    Reset,
    /// The request is carried out; its response body arrives slowly.
    SlowBody,
    /// The request is carried out, then the connection is closed without an answer (never
    /// injected on GETs, where it would be a plain reset).
    LostReply,
}

impl FaultKind {
    /// Every kind, in [`FaultCounts`] order.
    pub const ALL: [FaultKind; 5] = [
        FaultKind::InternalError,
        FaultKind::SlowDown,
        FaultKind::Reset,
        FaultKind::SlowBody,
        FaultKind::LostReply,
    ];

    /// Short name for summaries.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::InternalError => "500-internal-error",
            FaultKind::SlowDown => "503-slow-down",
            FaultKind::Reset => "connection-reset",
            FaultKind::SlowBody => "slow-body",
            FaultKind::LostReply => "lost-reply",
        }
    }
}

/// The requests faults are injected on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A GET with a `Range` header (object reads by workers and the planner).
    Get,
    /// `PUT ?partNumber=N&uploadId=ID`.
    UploadPart,
    /// `POST ?uploadId=ID`.
    Complete,
}

impl Target {
    /// Every target, in [`FaultCounts`] order.
    pub const ALL: [Target; 3] = [Target::Get, Target::UploadPart, Target::Complete];

    /// Short name for summaries.
    pub fn name(self) -> &'static str {
        match self {
            Target::Get => "get",
            Target::UploadPart => "upload-part",
            Target::Complete => "complete",
        }
    }
}

/// What to inject: a probability per kind for each targeted request, and which targets.
/// The default injects nothing.
#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    /// Probability of each [`FaultKind`], in [`FaultKind::ALL`] order; at most one fault per
    /// request, so the sum should stay below 1.
    pub rates: [f64; 5],
    /// Whether faults apply to each [`Target`], in [`Target::ALL`] order.
    pub targets: [bool; 3],
    /// Upper bound of the total delay of one slow body.
    pub slow_body_max: Duration,
}

/// How many faults were injected, per kind and target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts(pub [[u64; 3]; 5]);

impl FaultCounts {
    /// Faults of `kind` on any target.
    pub fn of_kind(&self, kind: FaultKind) -> u64 {
        self.0[kind_index(kind)].iter().sum()
    }

    /// All faults.
    pub fn total(&self) -> u64 {
        self.0.iter().flatten().sum()
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &FaultCounts) {
        for (a, b) in self.0.iter_mut().flatten().zip(other.0.iter().flatten()) {
            *a += b;
        }
    }

    /// `self - earlier`, counter by counter.
    pub fn since(&self, earlier: &FaultCounts) -> FaultCounts {
        let mut out = *self;
        for (a, b) in out.0.iter_mut().flatten().zip(earlier.0.iter().flatten()) {
            *a = a.saturating_sub(*b);
        }
        out
    }
}

impl std::fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for kind in FaultKind::ALL {
            for target in Target::ALL {
                let n = self.0[kind_index(kind)][target_index(target)];
                if n > 0 {
                    write!(
                        f,
                        "{}{} {}={n}",
                        if first { "" } else { ", " },
                        kind.name(),
                        target.name()
                    )?;
                    first = false;
                }
            }
        }
        if first {
            write!(f, "none")?;
        }
        Ok(())
    }
}

fn kind_index(kind: FaultKind) -> usize {
    FaultKind::ALL.iter().position(|k| *k == kind).expect("listed")
}

fn target_index(target: Target) -> usize {
    Target::ALL.iter().position(|t| *t == target).expect("listed")
}

/// A multipart upload that s3s-fs still holds open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    /// Bucket.
    pub bucket: String,
    /// Object key.
    pub key: String,
    /// The upload id.
    pub upload_id: String,
}

/// The fault-injecting layer's state: configuration, RNG, counters and the uploads seen.
#[derive(Debug)]
pub struct Faults {
    root: PathBuf,
    rng: Mutex<SeededRng>,
    config: Mutex<FaultConfig>,
    counts: [[AtomicU64; 3]; 5],
    targeted: AtomicU64,
    uploads: Mutex<Vec<OpenUpload>>,
}

impl Faults {
    /// A layer over the s3s-fs root `root`, drawing from `seed`, injecting nothing yet.
    pub fn new(root: PathBuf, seed: u64) -> Faults {
        Faults {
            root,
            rng: Mutex::new(SeededRng::new(seed)),
            config: Mutex::new(FaultConfig::default()),
            counts: Default::default(),
            targeted: AtomicU64::new(0),
            uploads: Mutex::new(Vec::new()),
        }
    }

    /// Replaces the configuration; applies to requests arriving from now on.
    pub fn set(&self, config: FaultConfig) {
        *self.config.lock() = config;
    }

    /// Stops injecting.
    pub fn off(&self) {
        self.set(FaultConfig::default());
    }

    /// Restarts the RNG from `seed` (e.g. at the start of a test round).
    pub fn reseed(&self, seed: u64) {
        *self.rng.lock() = SeededRng::new(seed);
    }

    /// Faults injected so far.
    pub fn counts(&self) -> FaultCounts {
        let mut out = FaultCounts::default();
        for (o, c) in out.0.iter_mut().flatten().zip(self.counts.iter().flatten()) {
            *o = c.load(Ordering::Relaxed);
        }
        out
    }

    /// Targeted requests seen on the faulty endpoint (with or without a fault).
    pub fn targeted_requests(&self) -> u64 {
        self.targeted.load(Ordering::Relaxed)
    }

    /// Whether s3s-fs still holds the upload `id` open.
    pub(crate) fn upload_exists(&self, id: &str) -> bool {
        self.root.join(format!(".upload-{id}.json")).exists()
    }

    /// Multipart uploads on `bucket` whose key starts with `prefix` that were created and
    /// are neither completed nor aborted.
    pub fn open_uploads(&self, bucket: &str, prefix: &str) -> Vec<OpenUpload> {
        let uploads = self.uploads.lock();
        uploads
            .iter()
            .filter(|u| u.bucket == bucket && u.key.starts_with(prefix))
            .filter(|u| self.upload_exists(&u.upload_id))
            .cloned()
            .collect()
    }

    pub(crate) fn draw(&self, target: Target) -> Option<FaultKind> {
        self.targeted.fetch_add(1, Ordering::Relaxed);
        let config = self.config.lock().clone();
        if !config.targets[target_index(target)] {
            return None;
        }
        let mut u = self.rng.lock().unit();
        let kind = FaultKind::ALL.into_iter().zip(config.rates).find_map(|(kind, rate)| {
            u -= rate;
            (u < 0.0).then_some(kind)
        })?;
        if kind == FaultKind::LostReply && target == Target::Get {
            return None;
        }
        self.counts[kind_index(kind)][target_index(target)].fetch_add(1, Ordering::Relaxed);
        Some(kind)
    }

    pub(crate) fn slow_budget(&self) -> Duration {
        let max = self.config.lock().slow_body_max;
        max.mul_f64(self.rng.lock().unit())
    }

    pub(crate) fn track(&self, upload: OpenUpload) {
        self.uploads.lock().push(upload);
    }
}
