//! gRPC services of the coordinator (tonic): the job API and the worker API, translated onto
//! [`Coordinator`]. Errors become `tonic::Status` here and only here (tokens are checked
//! before, by [`super::auth::CheckToken`]).

use super::scheduler::{Report, ReportRef};
use super::service::{Coordinator, ReportReply, ServiceError, Submission};
use shardmerge_proto::PROTOCOL_VERSION;
use shardmerge_proto::v1::job_service_server::JobService;
use shardmerge_proto::v1::worker_service_server::WorkerService;
use shardmerge_proto::v1::*;
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

/// Most units one `LeaseUnits` call hands out, whatever `max_units` asks for: a worker leases
/// for its free slots, so more only hoards work another worker could run.
pub const MAX_LEASE_UNITS: u32 = 64;

fn check_version(v: u32) -> Result<(), Status> {
    if v == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(Status::failed_precondition(format!(
            "protocol version {v} is not supported by this coordinator (version {PROTOCOL_VERSION}); upgrade the worker"
        )))
    }
}

#[tonic::async_trait]
impl WorkerService for Coordinator {
    async fn register_worker(
        &self,
        req: Request<RegisterWorkerRequest>,
    ) -> Result<Response<RegisterWorkerResponse>, Status> {
        let r = req.into_inner();
        check_version(r.protocol_version)?;
        let (id, lease, hb) = self.with_sched(|s| {
            let id = s.register_worker(Instant::now());
            (id, s.config().lease, s.config().heartbeat)
        });
        tracing::info!(worker_id = %id, name = %r.name, slots = r.slots, "worker registered");
        Ok(Response::new(RegisterWorkerResponse {
            worker_id: id,
            protocol_version: PROTOCOL_VERSION,
            lease_ms: lease.as_millis() as u64,
            heartbeat_ms: hb.as_millis() as u64,
        }))
    }

    async fn lease_units(&self, req: Request<LeaseUnitsRequest>) -> Result<Response<LeaseUnitsResponse>, Status> {
        let r = req.into_inner();
        check_version(r.protocol_version)?;
        // While shutting down, hand out nothing: a lease would outlive this process.
        let max = if self.is_shutting_down() {
            0
        } else {
            r.max_units.min(MAX_LEASE_UNITS) as usize
        };
        let leases = self.with_sched(|s| s.lease(&r.worker_id, max, Instant::now()));
        Ok(Response::new(match leases {
            Some(leases) => LeaseUnitsResponse {
                leases,
                unknown_worker: false,
            },
            None => LeaseUnitsResponse {
                leases: vec![],
                unknown_worker: true,
            },
        }))
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let r = req.into_inner();
        check_version(r.protocol_version)?;
        let revoked = self.with_sched(|s| s.heartbeat(&r.worker_id, &r.lease_ids, Instant::now()));
        Ok(Response::new(match revoked {
            Some(revoked) => HeartbeatResponse {
                revoked,
                unknown_worker: false,
            },
            None => HeartbeatResponse {
                revoked: vec![],
                unknown_worker: true,
            },
        }))
    }

    async fn report_unit(&self, req: Request<ReportUnitRequest>) -> Result<Response<ReportUnitResponse>, Status> {
        let r = req.into_inner();
        let (report, io) = match r.result {
            Some(report_unit_request::Result::Success(s)) => (
                Report::Success {
                    parts: s.parts,
                    stats: s.stats,
                },
                (s.bytes_read, s.bytes_written),
            ),
            Some(report_unit_request::Result::Failure(f)) => (
                Report::Failure {
                    message: f.message,
                    retryable: f.retryable,
                },
                (0, 0),
            ),
            None => return Err(Status::invalid_argument("report without a result")),
        };
        let fenced = ReportRef {
            worker: &r.worker_id,
            lease: &r.lease_id,
            job: &r.job_id,
            unit: r.unit_id,
            attempt: r.attempt,
        };
        Ok(Response::new(match self.report(fenced, report, io).await? {
            ReportReply::Accepted => ReportUnitResponse {
                accepted: true,
                reason: String::new(),
            },
            ReportReply::Rejected(reason) => ReportUnitResponse {
                accepted: false,
                reason,
            },
        }))
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<JobStatus, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for Coordinator {
    async fn submit_job(&self, req: Request<SubmitJobRequest>) -> Result<Response<SubmitJobResponse>, Status> {
        let r = req.into_inner();
        let o = r.options.unwrap_or_default();
        let sub = Submission {
            config_yaml: r.config_yaml,
            config_name: if r.config_name.is_empty() {
                "config.yml".into()
            } else {
                r.config_name
            },
            output_uri: r.output_uri,
            random_seed: o.random_seed,
            out_shard_size: if o.out_shard_size == 0 {
                5_000_000_000
            } else {
                o.out_shard_size
            },
            copy_tokenizer: o.copy_tokenizer,
            write_model_card: o.write_model_card,
            allow_crimes: o.allow_crimes,
            unsafe_truncate_embeddings: o.unsafe_truncate_embeddings,
        };
        let (job_id, warnings) = self.submit(sub).await?;
        tracing::info!(job_id = %job_id, "job submitted");
        Ok(Response::new(SubmitJobResponse { job_id, warnings }))
    }

    async fn get_job(&self, req: Request<GetJobRequest>) -> Result<Response<GetJobResponse>, Status> {
        Ok(Response::new(GetJobResponse {
            status: Some(self.status(&req.into_inner().job_id)?),
        }))
    }

    type WatchJobStream = StatusStream;

    async fn watch_job(&self, req: Request<WatchJobRequest>) -> Result<Response<StatusStream>, Status> {
        let job = req.into_inner().job_id;
        self.status(&job)?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let c = self.clone();
        let mut changes = self.changes();
        tokio::spawn(async move {
            loop {
                let status = match c.status(&job) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let finished = c.is_finished(&job);
                if tx.send(Ok(status)).await.is_err() || finished || c.is_shutting_down() {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(500), changes.changed()).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn cancel_job(&self, req: Request<CancelJobRequest>) -> Result<Response<CancelJobResponse>, Status> {
        Ok(Response::new(CancelJobResponse {
            status: Some(self.cancel(&req.into_inner().job_id).await?),
        }))
    }

    async fn list_jobs(&self, _req: Request<ListJobsRequest>) -> Result<Response<ListJobsResponse>, Status> {
        Ok(Response::new(ListJobsResponse { jobs: self.list() }))
    }
}
