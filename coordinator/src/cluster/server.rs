//! Running the coordinator process: the gRPC server, the housekeeping ticker and graceful
//! shutdown.

use super::auth::Credentials;
use super::service::{Coordinator, CoordinatorOptions, ServiceError};
use shardmerge_proto::v1::job_service_server::JobServiceServer;
use shardmerge_proto::v1::worker_service_server::WorkerServiceServer;
use shardmerge_worker::storage::Storage;
use std::net::SocketAddr;
use std::time::Duration;

/// How long a graceful shutdown waits for running commits and cleanups.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Everything [`serve`] runs a coordinator with, besides its listener and shutdown signal.
pub struct ServeOptions {
    /// The control plane: state directory, scheduler, planning of new jobs, allowlist.
    pub coordinator: CoordinatorOptions,
    /// The storage the coordinator plans, pins and commits through.
    pub storage: Storage,
    /// The tokens that guard the job and worker APIs.
    pub credentials: Credentials,
    /// Serve gRPC over TLS with this identity; plaintext when `None`.
    pub tls: Option<TlsIdentity>,
}

impl ServeOptions {
    /// `coordinator` over [`Storage::from_env`], without tokens (loopback listeners only)
    /// and without TLS.
    pub fn new(coordinator: CoordinatorOptions) -> ServeOptions {
        ServeOptions {
            coordinator,
            storage: Storage::from_env(),
            credentials: Credentials::default(),
            tls: None,
        }
    }
}

/// The coordinator's TLS identity, as PEM.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The certificate chain, leaf first.
    pub cert_chain: Vec<u8>,
    /// The private key of the leaf certificate.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

/// Serves the coordinator on `listener` until `shutdown` resolves (mini-redis's
/// `server::run(listener, shutdown)` shape). The credentials of `options` guard the job and
/// worker APIs (refused before anything starts when an API would be open beyond loopback).
/// Shutdown is graceful: stop accepting, end status streams, let in-flight RPCs finish, wait
/// up to [`SHUTDOWN_GRACE`] for commits and cleanups, sync the journal.
pub async fn serve(
    options: ServeOptions,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let ServeOptions {
        coordinator: opts,
        storage,
        credentials,
        tls,
    } = options;
    let addr = listener
        .local_addr()
        .map_err(|e| ServiceError::Internal(format!("listener address: {e}")))?;
    let (job_auth, worker_auth) = credentials
        .interceptors(addr)
        .map_err(|e| ServiceError::Invalid(e.to_string()))?;
    let coordinator = Coordinator::start(opts, storage).await?;
    let stopping = coordinator.clone();
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections or leases; finishing in-flight requests");
        stopping.begin_shutdown();
    };
    let finishing = coordinator.clone();
    let ticker = coordinator.clone();
    let tick = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            ticker.tick();
        }
    });
    let incoming = incoming(listener);
    // gRPC health (grpc.health.v1) for Kubernetes probes: answered without the cluster token,
    // since the kubelet sends none; it reveals nothing but SERVING.
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<JobServiceServer<Coordinator>>().await;
    health.set_serving::<WorkerServiceServer<Coordinator>>().await;
    let mut builder = tonic::transport::Server::builder();
    if let Some(TlsIdentity { cert_chain, key }) = tls {
        shardmerge_worker::node::ensure_crypto_provider();
        let identity = tonic::transport::Identity::from_pem(cert_chain, key);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| ServiceError::Invalid(format!("TLS certificate or key: {e}")))?;
    }
    let result = builder
        .add_service(JobServiceServer::with_interceptor(coordinator.clone(), job_auth))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            WorkerServiceServer::new(coordinator)
                .max_decoding_message_size(shardmerge_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(shardmerge_proto::MAX_MESSAGE_BYTES),
            worker_auth,
        ))
        .add_service(health_service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    tick.abort();
    finishing.finish_shutdown(SHUTDOWN_GRACE).await;
    result.map_err(|e| ServiceError::Internal(format!("gRPC server: {e}")))
}

/// Accepted connections with TCP_NODELAY set: a gRPC response is a few small frames, and
/// Nagle's algorithm would hold each back until the client's delayed ACK (tens of ms on
/// loopback), capping a worker's lease/report round trips.
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Binds `addr` (use port 0 for any) and returns the listener and its actual address.
pub async fn bind(addr: &str) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}
