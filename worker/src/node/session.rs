//! One registration session of a worker: heartbeats, the lease loop, and the task of each
//! leased unit (admission by memory, execution on the CPU pool, report).
//!
//! Concurrency is bounded by a semaphore of `--slots` permits (a unit holds one until it has
//! reported); unit tasks run on a [`TaskTracker`] that shutdown closes and waits for; the
//! `draining` token stops leasing; each lease has a [`CancellationToken`] that a heartbeat
//! reply cancels when the coordinator revokes it, and the unit stops at its next check.

use super::metrics::WorkerMetrics;
use super::{BearerToken, Budget, Client, NodeError, WorkerOptions, endpoint, unit};
use crate::storage::{LocalInputs, Storage};
use parking_lot::Mutex;
use shardmerge_proto::PROTOCOL_VERSION;
use shardmerge_proto::v1::worker_service_client::WorkerServiceClient;
use shardmerge_proto::v1::{
    HeartbeatRequest, Lease, LeaseUnitsRequest, ReportUnitRequest, UnitFailure, UnitSuccess, report_unit_request,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Everything a worker process shares across its sessions and unit tasks.
pub(super) struct Worker {
    pub(super) opts: WorkerOptions,
    pub(super) client: Client,
    storage: Storage,
    local: Arc<LocalInputs>,
    pool: Arc<rayon::ThreadPool>,
    metrics: Arc<WorkerMetrics>,
    budget: Budget,
    /// `--slots` permits; a unit holds one from its lease until its report.
    slots: Arc<Semaphore>,
    /// Leases being worked on, each with the token its revocation cancels.
    active: Mutex<HashMap<String, CancellationToken>>,
    /// The unit tasks (shutdown closes it and waits).
    pub(super) units: TaskTracker,
    /// Cancelled on shutdown: lease nothing more.
    pub(super) draining: CancellationToken,
}

impl Worker {
    pub(super) fn new(opts: WorkerOptions, metrics: Arc<WorkerMetrics>) -> Result<Self, NodeError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads.unwrap_or(0))
            .thread_name(|i| format!("shardmerge-cpu-{i}"))
            .build()
            .map_err(|e| NodeError::Pool(e.to_string()))?;
        let channel = endpoint(&opts.coordinator, opts.tls_ca.as_deref())?.connect_lazy();
        let client = WorkerServiceClient::with_interceptor(channel, BearerToken(opts.token.clone()))
            .max_decoding_message_size(shardmerge_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(shardmerge_proto::MAX_MESSAGE_BYTES);
        Ok(Worker {
            budget: Budget::new(opts.memory_limit),
            slots: Arc::new(Semaphore::new(opts.slots.max(1))),
            opts,
            client,
            storage: Storage::from_env(),
            local: Arc::new(LocalInputs::new()),
            pool: Arc::new(pool),
            metrics,
            active: Mutex::default(),
            units: TaskTracker::new(),
            draining: CancellationToken::new(),
        })
    }
}

/// Runs one session until the coordinator no longer knows `worker_id`.
pub(super) async fn serve(w: &Arc<Worker>, worker_id: &str, heartbeat: Duration) {
    tokio::select! {
        () = heartbeats(w, worker_id, heartbeat) => {}
        () = lease_loop(w, worker_id) => {}
    }
}

/// Heartbeats every `every` with the active leases, cancelling those the reply revokes;
/// returns when the coordinator answers that it does not know this worker.
async fn heartbeats(w: &Worker, worker_id: &str, every: Duration) {
    let mut client = w.client.clone();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let lease_ids: Vec<String> = w.active.lock().keys().cloned().collect();
        let req = HeartbeatRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: worker_id.to_string(),
            lease_ids,
        };
        match client.heartbeat(req).await {
            Ok(r) if r.get_ref().unknown_worker => return,
            Ok(r) => {
                let active = w.active.lock();
                for id in &r.get_ref().revoked {
                    if let Some(token) = active.get(id) {
                        tracing::warn!(lease = %id, "lease revoked; abandoning its unit");
                        token.cancel();
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e.message(), "heartbeat failed"),
        }
    }
}

/// Leases units while slots are free (waiting on the slot semaphore, not polling) and starts
/// a tracked task for each; returns when the coordinator does not know this worker. Once the
/// worker is draining it leases nothing more.
async fn lease_loop(w: &Arc<Worker>, worker_id: &str) {
    let mut client = w.client.clone();
    let mut idle = Duration::from_millis(100);
    loop {
        let first = tokio::select! {
            permit = w.slots.clone().acquire_owned() => permit.expect("the slot semaphore is never closed"),
            () = w.draining.cancelled() => return std::future::pending().await,
        };
        let mut permits = vec![first];
        while let Ok(p) = w.slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        let req = LeaseUnitsRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: worker_id.to_string(),
            max_units: permits.len() as u32,
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
            drop(permits);
            tokio::time::sleep(idle).await;
            idle = (idle * 2).min(Duration::from_millis(500));
            continue;
        }
        idle = Duration::from_millis(100);
        for lease in resp.leases {
            let Some(permit) = permits.pop() else {
                // The coordinator never grants more than asked; if it did, the lease expires
                // and runs elsewhere.
                tracing::warn!(lease = %lease.lease_id, "more leases than free slots; leaving it");
                continue;
            };
            let revoked = CancellationToken::new();
            // Registered before the task starts, so the next heartbeat extends it.
            w.active.lock().insert(lease.lease_id.clone(), revoked.clone());
            w.units
                .spawn(run_unit(w.clone(), worker_id.to_string(), lease, revoked, permit));
        }
    }
}

/// Admits, executes and reports one leased unit; its slot is free again when this returns.
async fn run_unit(
    w: Arc<Worker>,
    worker_id: String,
    lease: Lease,
    revoked: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    if let Some(unit) = lease.unit.clone() {
        // The lease stays heartbeated while the unit waits for memory.
        let memory = w.budget.admit(&unit).await;
        let window = w.budget.window;
        tracing::debug!(job_id = %unit.job_id, unit = unit.unit_id, "unit started");
        let started = w.metrics.unit_started();
        let (job_id, unit_id, attempt) = (unit.job_id.clone(), unit.unit_id, unit.attempt);
        let (cpu, token, handle) = (w.clone(), revoked.clone(), tokio::runtime::Handle::current());
        let result = tokio::task::spawn_blocking(move || {
            let done = cpu.pool.install(|| {
                unit::execute_unit(
                    &unit,
                    &cpu.storage,
                    &handle,
                    &cpu.local,
                    &cpu.opts.allow,
                    &token,
                    window,
                )
            });
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
        w.metrics
            .unit_finished(started, result.as_ref().ok().map(|o| (o.bytes_read, o.bytes_written)));
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
        report(&w, req, &revoked).await;
    }
    w.active.lock().remove(&lease.lease_id);
}

/// Reports a unit, retrying transport failures a few times; a revoked lease reports nothing.
async fn report(w: &Worker, req: ReportUnitRequest, revoked: &CancellationToken) {
    let mut client = w.client.clone();
    for attempt in 0..5 {
        if revoked.is_cancelled() {
            tracing::info!(lease = %req.lease_id, "lease revoked; not reporting");
            return;
        }
        match client.report_unit(req.clone()).await {
            Ok(r) if !r.get_ref().accepted => {
                tracing::warn!(lease = %req.lease_id, reason = %r.get_ref().reason, "report refused; unit dropped");
                return;
            }
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e.message(), attempt, "reporting failed");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}
