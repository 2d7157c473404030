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

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::service::S3Service;
use tokio::net::TcpListener;

type StdError = Box<dyn std::error::Error + Send + Sync>;
type ResponseBody = UnsyncBoxBody<Bytes, StdError>;

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
                    write!(f, "{}{} {}={n}", if first { "" } else { ", " }, kind.name(), target.name())?;
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
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// Stops injecting.
    pub fn off(&self) {
        self.set(FaultConfig::default());
    }

    /// Restarts the RNG from `seed` (e.g. at the start of a test round).
    pub fn reseed(&self, seed: u64) {
        *self.rng.lock().unwrap_or_else(|e| e.into_inner()) = SeededRng::new(seed);
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

    /// Multipart uploads on `bucket` whose key starts with `prefix` that were created and
    /// are neither completed nor aborted.
    pub fn open_uploads(&self, bucket: &str, prefix: &str) -> Vec<OpenUpload> {
        let uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        uploads
            .iter()
            .filter(|u| u.bucket == bucket && u.key.starts_with(prefix))
            .filter(|u| self.root.join(format!(".upload-{}.json", u.upload_id)).exists())
            .cloned()
            .collect()
    }

    fn draw(&self, target: Target) -> Option<FaultKind> {
        self.targeted.fetch_add(1, Ordering::Relaxed);
        let config = self.config.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if !config.targets[target_index(target)] {
            return None;
        }
        let mut u = self.rng.lock().unwrap_or_else(|e| e.into_inner()).unit();
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

    fn slow_budget(&self) -> Duration {
        let max = self.config.lock().unwrap_or_else(|e| e.into_inner()).slow_body_max;
        max.mul_f64(self.rng.lock().unwrap_or_else(|e| e.into_inner()).unit())
    }

    fn track(&self, upload: OpenUpload) {
        self.uploads.lock().unwrap_or_else(|e| e.into_inner()).push(upload);
    }
}

/// The S3 operation of a request, as far as the layer cares.
enum Op {
    Targeted(Target),
    Create { bucket: String, key: String },
    Other,
}

fn classify<B>(req: &Request<B>) -> Op {
    let query = req.uri().query().unwrap_or("");
    let has = |name: &str| query.split('&').any(|kv| kv.split('=').next() == Some(name));
    let path = req.uri().path().trim_start_matches('/');
    let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
    let m = req.method();
    if *m == Method::GET && !key.is_empty() && req.headers().contains_key(hyper::header::RANGE) {
        Op::Targeted(Target::Get)
    } else if *m == Method::PUT && has("partNumber") && has("uploadId") {
        Op::Targeted(Target::UploadPart)
    } else if *m == Method::POST && has("uploadId") {
        Op::Targeted(Target::Complete)
    } else if *m == Method::POST && has("uploads") {
        Op::Create {
            bucket: percent_decode(bucket),
            key: percent_decode(key),
        }
    } else {
        Op::Other
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn xml_error(status: StatusCode, code: &str, message: &str, resource: &str) -> Response<ResponseBody> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
         <Resource>{resource}</Resource><RequestId>shardmerge-chaos</RequestId></Error>"
    );
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/xml"),
    );
    resp
}

/// Serves `service` on `listener` through the layer; `inject` is false for the test's own
/// endpoint.
pub(super) async fn serve(listener: TcpListener, service: S3Service, faults: Arc<Faults>, inject: bool) {
    let http = ConnBuilder::new(TokioExecutor::new());
    while let Ok((socket, _)) = listener.accept().await {
        let (service, faults) = (service.clone(), faults.clone());
        let handler = hyper::service::service_fn(move |req: Request<Incoming>| {
            handle(service.clone(), faults.clone(), inject, req)
        });
        let conn = http.serve_connection(TokioIo::new(socket), handler).into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

async fn handle(
    service: S3Service,
    faults: Arc<Faults>,
    inject: bool,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, StdError> {
    let op = classify(&req);
    let fault = match (&op, inject) {
        (Op::Targeted(target), true) => faults.draw(*target),
        _ => None,
    };
    let resource = req.uri().path().to_owned();
    match fault {
        Some(kind @ (FaultKind::InternalError | FaultKind::SlowDown)) => {
            // Read the request first, so the client sees the answer rather than a broken pipe.
            let _ = req.into_body().collect().await;
            return Ok(if kind == FaultKind::SlowDown {
                xml_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SlowDown",
                    "Please reduce your request rate.",
                    &resource,
                )
            } else {
                xml_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "We encountered an internal error. Please try again.",
                    &resource,
                )
            });
        }
        Some(FaultKind::Reset) => return Err("injected fault: connection reset".into()),
        _ => {}
    }
    let resp = hyper::service::Service::call(&service, req).await.map_err(StdError::from)?;
    let resp = match op {
        Op::Create { bucket, key } if resp.status().is_success() => {
            let (parts, body) = resp.into_parts();
            let bytes = body.collect().await?.to_bytes();
            let text = String::from_utf8_lossy(&bytes);
            if let Some(id) = text
                .split_once("<UploadId>")
                .and_then(|(_, rest)| rest.split_once("</UploadId>"))
                .map(|(id, _)| id.to_owned())
            {
                faults.track(OpenUpload {
                    bucket,
                    key,
                    upload_id: id,
                });
            }
            Response::from_parts(parts, Full::new(bytes).map_err(|e| match e {}).boxed_unsync())
        }
        _ => resp.map(BodyExt::boxed_unsync),
    };
    match fault {
        Some(FaultKind::LostReply) => {
            // Let the operation finish (CompleteMultipartUpload answers while it works).
            let _ = resp.into_body().collect().await;
            Err("injected fault: reply lost".into())
        }
        Some(FaultKind::SlowBody) => {
            let budget = faults.slow_budget();
            Ok(resp.map(|b| SlowBody::new(b, budget).boxed_unsync()))
        }
        _ => Ok(resp),
    }
}

/// A response body delayed by `budget` in total: a quarter before the first frame and a
/// quarter after each of the next data frames until the budget is spent.
struct SlowBody {
    inner: ResponseBody,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    step: Duration,
    left: Duration,
}

impl SlowBody {
    fn new(inner: ResponseBody, budget: Duration) -> SlowBody {
        let step = budget / 4;
        SlowBody {
            inner,
            sleep: Some(Box::pin(tokio::time::sleep(step))),
            step,
            left: budget.saturating_sub(step),
        }
    }
}

impl Body for SlowBody {
    type Data = Bytes;
    type Error = StdError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, StdError>>> {
        let this = self.get_mut();
        if let Some(sleep) = this.sleep.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if !this.left.is_zero() && matches!(&frame, Some(Ok(f)) if f.is_data()) {
            let d = this.step.min(this.left);
            this.left -= d;
            this.sleep = Some(Box::pin(tokio::time::sleep(d)));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.sleep.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
