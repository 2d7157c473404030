//! The worker process: register with the coordinator, lease work units, execute them on a
//! dedicated CPU pool, heartbeat, and report results. Workers pull work, so they need no
//! inbound port; a worker that loses the coordinator re-registers when it comes back.

pub mod allow;
pub mod metrics;
mod parts;
mod prefetch;
mod session;
pub mod unit;

use metrics::WorkerMetrics;
use shardmerge_proto::PROTOCOL_VERSION;
use shardmerge_proto::v1::RegisterWorkerRequest;
use shardmerge_proto::v1::worker_service_client::WorkerServiceClient;
use std::sync::Arc;
use std::time::Duration;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Everything a worker process is configured with (`shardmerge worker` flags), taken by
/// [`run_worker`] as one value.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Coordinator URL, e.g. `http://127.0.0.1:7070`.
    pub coordinator: String,
    /// Worker token (`SHARDMERGE_WORKER_TOKEN`, sent as a bearer token).
    pub token: Option<String>,
    /// Units executed concurrently.
    pub slots: usize,
    /// Threads of the CPU pool (default: all cores).
    pub threads: Option<usize>,
    /// Name reported to the coordinator.
    pub name: String,
    /// PEM CA certificate to verify an `https://` coordinator with.
    pub tls_ca: Option<Vec<u8>>,
    /// On shutdown, how long to keep heartbeating while active units finish (leases not
    /// finished by then expire and are re-run elsewhere).
    pub drain: Duration,
    /// Locations this worker reads and writes; a unit naming any other is refused.
    pub allow: allow::AllowList,
    /// Memory budget (`--memory-limit`): units start only while their planned memory fits;
    /// a unit planned larger than the whole budget runs alone. `None`: no budget.
    pub memory_limit: Option<u64>,
}

/// Semaphore permits of the memory budget are MiB.
const MIB: u64 = 1 << 20;

/// The worker's memory budget: admission of units by planned memory, and the prefetch window
/// that fits it.
#[derive(Clone)]
struct Budget {
    permits: Option<(Arc<tokio::sync::Semaphore>, u32)>,
    window: u64,
}

impl Budget {
    fn new(limit: Option<u64>) -> Self {
        let permits = limit.map(|l| {
            let n = (l / MIB).clamp(1, u64::from(u32::MAX >> 3)) as u32;
            (Arc::new(tokio::sync::Semaphore::new(n as usize)), n)
        });
        // Prefetching may use a quarter of the budget.
        let window = limit.map_or(prefetch::WINDOW, |l| (l / 4).min(prefetch::WINDOW));
        Budget { permits, window }
    }

    /// Waits until `unit`'s planned memory fits (a unit larger than the budget waits for all
    /// of it), and holds it until the returned guard drops.
    async fn admit(&self, unit: &shardmerge_proto::v1::WorkUnit) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let (sem, total) = self.permits.as_ref()?;
        let need = unit::planned_memory(unit, self.window)
            .div_ceil(MIB)
            .clamp(1, u64::from(*total)) as u32;
        if need == *total {
            tracing::warn!(
                job_id = %unit.job_id,
                unit = unit.unit_id,
                "unit planned at or above the whole --memory-limit; running it alone"
            );
        }
        sem.clone().acquire_many_owned(need).await.ok()
    }
}

/// Selects rustls' ring crypto provider for the process (idempotent). Several crates in the
/// dependency tree enable different providers, so rustls cannot pick one by itself.
pub fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds a gRPC endpoint for `url`; `https://` URLs use TLS, verified against `ca` (PEM) when
/// given, else against the system's web PKI roots.
pub fn endpoint(url: &str, ca: Option<&[u8]>) -> Result<Endpoint, NodeError> {
    let bad = |e: String| NodeError::Address(url.to_string(), e);
    let mut ep = Endpoint::from_shared(url.to_string())
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(5));
    if url.starts_with("https://") {
        ensure_crypto_provider();
        let mut tls = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = ca {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
        }
        ep = ep.tls_config(tls).map_err(|e| bad(e.to_string()))?;
    }
    Ok(ep)
}

/// Errors that stop a worker.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The coordinator refused this worker.
    #[error("coordinator refused registration: {0}")]
    Refused(String),
    /// The CPU pool could not start.
    #[error("starting the CPU pool: {0}")]
    Pool(String),
    /// Invalid coordinator address.
    #[error("invalid coordinator address `{0}`: {1}")]
    Address(String, String),
}

/// Adds the bearer token to every request.
#[derive(Clone)]
pub struct BearerToken(pub Option<String>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            let value = format!("Bearer {t}")
                .parse()
                .map_err(|_| tonic::Status::invalid_argument("token"))?;
            req.metadata_mut().insert("authorization", value);
        }
        Ok(req)
    }
}

type Client = WorkerServiceClient<InterceptedService<Channel, BearerToken>>;

/// Runs a worker until `shutdown` resolves.
pub async fn run_worker(opts: WorkerOptions, shutdown: impl std::future::Future<Output = ()>) -> Result<(), NodeError> {
    run_worker_with_metrics(opts, WorkerMetrics::new(), shutdown).await
}

/// Runs a worker until `shutdown` resolves, recording into `metrics` (serve them with
/// [`metrics::serve_metrics`]). On shutdown it leases nothing more and keeps heartbeating while
/// its active units finish, for at most [`WorkerOptions::drain`].
pub async fn run_worker_with_metrics(
    opts: WorkerOptions,
    metrics: Arc<WorkerMetrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    let w = Arc::new(session::Worker::new(opts, metrics)?);
    tokio::pin!(shutdown);
    loop {
        let reg = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = register(w.client.clone(), &w.opts) => r,
        };
        let (worker_id, heartbeat) = match reg {
            Ok(v) => v,
            Err(status)
                if status.code() == tonic::Code::FailedPrecondition
                    || status.code() == tonic::Code::Unauthenticated
                    || status.code() == tonic::Code::PermissionDenied =>
            {
                return Err(NodeError::Refused(status.message().to_string()));
            }
            Err(status) => {
                tracing::warn!(error = %status.message(), "coordinator unreachable; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        tracing::info!(worker_id = %worker_id, "registered");
        let session = session::serve(&w, &worker_id, heartbeat);
        tokio::pin!(session);
        tokio::select! {
            _ = &mut shutdown => {
                w.draining.cancel();
                w.units.close();
                tracing::info!(active = w.units.len(), "shutting down: finishing active units");
                tokio::select! {
                    _ = tokio::time::timeout(w.opts.drain, w.units.wait()) => {}
                    () = &mut session => {}
                }
                return Ok(());
            }
            () = &mut session => tracing::warn!("coordinator forgot this worker; registering again"),
        }
    }
}

async fn register(mut client: Client, opts: &WorkerOptions) -> Result<(String, Duration), tonic::Status> {
    let resp = client
        .register_worker(RegisterWorkerRequest {
            protocol_version: PROTOCOL_VERSION,
            name: opts.name.clone(),
            slots: opts.slots as u32,
        })
        .await?
        .into_inner();
    Ok((resp.worker_id, Duration::from_millis(resp.heartbeat_ms.max(100))))
}
