//! The worker process: register with the coordinator, lease work units, execute them on a
//! dedicated CPU pool, heartbeat, and report results. Workers pull work, so they need no
//! inbound port; a worker that loses the coordinator re-registers when it comes back.

pub mod allow;
pub mod metrics;
mod parts;
mod prefetch;
pub mod unit;

use crate::storage::{LocalInputs, Storage};
use metrics::WorkerMetrics;
use parking_lot::Mutex;
use shardmerge_proto::PROTOCOL_VERSION;
use shardmerge_proto::v1::worker_service_client::WorkerServiceClient;
use shardmerge_proto::v1::{
    HeartbeatRequest, LeaseUnitsRequest, RegisterWorkerRequest, ReportUnitRequest, UnitFailure, UnitSuccess,
    report_unit_request,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Worker settings.
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

/// Leases being worked on, each with the flag that tells its unit to stop (set when a
/// heartbeat reply says the lease is revoked).
type Active = Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>;

/// Runs a worker until `shutdown` resolves.
pub async fn run_worker(opts: WorkerOptions, shutdown: impl std::future::Future<Output = ()>) -> Result<(), NodeError> {
    run_worker_with_metrics(opts, WorkerMetrics::new(), shutdown).await
}

/// Runs a worker until `shutdown` resolves, recording into `metrics` (serve them with
/// [`metrics::serve_metrics`]).
pub async fn run_worker_with_metrics(
    opts: WorkerOptions,
    metrics: Arc<WorkerMetrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads.unwrap_or(0))
            .thread_name(|i| format!("shardmerge-cpu-{i}"))
            .build()
            .map_err(|e| NodeError::Pool(e.to_string()))?,
    );
    let channel = endpoint(&opts.coordinator, opts.tls_ca.as_deref())?.connect_lazy();
    let client = WorkerServiceClient::with_interceptor(channel, BearerToken(opts.token.clone()))
        .max_decoding_message_size(shardmerge_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(shardmerge_proto::MAX_MESSAGE_BYTES);
    let storage = Storage::from_env();
    let local = Arc::new(LocalInputs::new());
    let active: Active = Arc::default();
    let budget = Budget::new(opts.memory_limit);
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::pin!(shutdown);
    loop {
        let reg = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = register(client.clone(), &opts) => r,
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
        let session = serve(
            client.clone(),
            &worker_id,
            heartbeat,
            &opts,
            &storage,
            &local,
            &pool,
            &active,
            &draining,
            &metrics,
            &budget,
        );
        tokio::pin!(session);
        tokio::select! {
            _ = &mut shutdown => {
                // Graceful shutdown: lease nothing new, keep heartbeating, let active units finish.
                draining.store(true, std::sync::atomic::Ordering::SeqCst);
                let n = active.lock().len();
                tracing::info!(active = n, "shutting down: finishing active units");
                let deadline = tokio::time::Instant::now() + opts.drain;
                let drained = async {
                    while !active.lock().is_empty() && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                };
                tokio::select! {
                    () = drained => {}
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

/// One registration session: lease, execute, heartbeat, until the coordinator forgets us.
#[allow(clippy::too_many_arguments)]
async fn serve(
    client: Client,
    worker_id: &str,
    heartbeat: Duration,
    opts: &WorkerOptions,
    storage: &Storage,
    local: &Arc<LocalInputs>,
    pool: &Arc<rayon::ThreadPool>,
    active: &Active,
    draining: &Arc<std::sync::atomic::AtomicBool>,
    metrics: &Arc<WorkerMetrics>,
    budget: &Budget,
) {
    let mut hb_client = client.clone();
    let hb_active = active.clone();
    let hb_worker = worker_id.to_string();
    let heartbeats = async move {
        loop {
            tokio::time::sleep(heartbeat).await;
            let lease_ids: Vec<String> = hb_active.lock().keys().cloned().collect();
            let req = HeartbeatRequest {
                protocol_version: PROTOCOL_VERSION,
                worker_id: hb_worker.clone(),
                lease_ids,
            };
            match hb_client.heartbeat(req).await {
                Ok(r) if r.get_ref().unknown_worker => return,
                Ok(r) => {
                    let active = hb_active.lock();
                    for id in &r.get_ref().revoked {
                        if let Some(flag) = active.get(id) {
                            tracing::warn!(lease = %id, "lease revoked; abandoning its unit");
                            flag.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e.message(), "heartbeat failed"),
            }
        }
    };
    let work = async {
        let mut client = client.clone();
        let mut idle = Duration::from_millis(100);
        loop {
            let free = opts.slots.saturating_sub(active.lock().len());
            if free == 0 || draining.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let req = LeaseUnitsRequest {
                protocol_version: PROTOCOL_VERSION,
                worker_id: worker_id.to_string(),
                max_units: free as u32,
            };
            let resp = match client.lease_units(req).await {
                Ok(r) => r.into_inner(),
                Err(e) => {
                    tracing::warn!(error = %e.message(), "leasing failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if resp.unknown_worker {
                return;
            }
            if resp.leases.is_empty() {
                // Back off while there is no work (100 ms doubling to 500 ms): an idle fleet of
                // thousands of workers must not keep the coordinator busy answering polls.
                tokio::time::sleep(idle).await;
                idle = (idle * 2).min(Duration::from_millis(500));
                continue;
            }
            idle = Duration::from_millis(100);
            for lease in resp.leases {
                let Some(unit) = lease.unit else { continue };
                let revoked = Arc::new(AtomicBool::new(false));
                active.lock().insert(lease.lease_id.clone(), revoked.clone());
                let (storage, local, pool, active) = (storage.clone(), local.clone(), pool.clone(), active.clone());
                let mut client = client.clone();
                let worker_id = worker_id.to_string();
                let handle = tokio::runtime::Handle::current();
                let metrics = metrics.clone();
                let allow = opts.allow.clone();
                let budget = budget.clone();
                tokio::spawn(async move {
                    // The lease stays heartbeated while the unit waits for memory.
                    let memory = budget.admit(&unit).await;
                    let window = budget.window;
                    tracing::debug!(job_id = %unit.job_id, unit = unit.unit_id, "unit started");
                    let started = metrics.unit_started();
                    let (job_id, unit_id, attempt) = (unit.job_id.clone(), unit.unit_id, unit.attempt);
                    let flag = revoked.clone();
                    let result = tokio::task::spawn_blocking(move || {
                        let done = pool
                            .install(|| unit::execute_unit(&unit, &storage, &handle, &local, &allow, &flag, window));
                        drop(memory);
                        done
                    })
                    .await
                    .unwrap_or_else(|e| {
                        Err(unit::UnitError {
                            message: format!("unit panicked: {e}"),
                            retryable: false,
                        })
                    });
                    metrics.unit_finished(started, result.as_ref().ok().map(|o| (o.bytes_read, o.bytes_written)));
                    let result = match result {
                        Ok(o) => report_unit_request::Result::Success(UnitSuccess {
                            parts: o.parts,
                            bytes_read: o.bytes_read,
                            bytes_written: o.bytes_written,
                            stats: o.stats,
                        }),
                        Err(e) => report_unit_request::Result::Failure(UnitFailure {
                            message: e.message,
                            retryable: e.retryable,
                        }),
                    };
                    let req = ReportUnitRequest {
                        worker_id,
                        lease_id: lease.lease_id.clone(),
                        result: Some(result),
                        job_id,
                        unit_id,
                        attempt,
                    };
                    for try_no in 0..5 {
                        if revoked.load(std::sync::atomic::Ordering::SeqCst) {
                            tracing::info!(lease = %lease.lease_id, "lease revoked; not reporting");
                            break;
                        }
                        match client.report_unit(req.clone()).await {
                            Ok(r) if !r.get_ref().accepted => {
                                tracing::warn!(lease = %lease.lease_id, reason = %r.get_ref().reason, "report refused; unit dropped");
                                break;
                            }
                            Ok(_) => break,
                            Err(e) => {
                                let attempt = try_no;
                                tracing::warn!(error = %e.message(), attempt, "reporting failed");
                                tokio::time::sleep(Duration::from_millis(300)).await;
                            }
                        }
                    }
                    active.lock().remove(&lease.lease_id);
                });
            }
        }
    };
    tokio::select! {
        () = heartbeats => {}
        () = work => {}
    }
}
