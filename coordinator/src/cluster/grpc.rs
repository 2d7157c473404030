//! gRPC services of the coordinator (tonic): the job API and the worker API, translated onto
//! [`Coordinator`]. Errors become `tonic::Status` here and only here.

use super::scheduler::Report;
use super::service::{Coordinator, ServiceError, Submission};
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
        match e {
            ServiceError::Invalid(m) => Status::invalid_argument(m),
            ServiceError::NotFound(m) => Status::not_found(format!("no job `{m}`")),
            ServiceError::Internal(m) => Status::internal(m),
        }
    }
}

/// Checks the shared token on every request (`authorization: Bearer TOKEN`).
#[derive(Clone)]
pub struct CheckToken(pub Option<std::sync::Arc<str>>);

impl tonic::service::Interceptor for CheckToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(want) = &self.0 else { return Ok(req) };
        let got = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match got {
            Some(t) if constant_time_eq(t.as_bytes(), want.as_bytes()) => Ok(req),
            Some(_) => Err(Status::unauthenticated("invalid cluster token")),
            None => Err(Status::unauthenticated("missing cluster token (set SHARDMERGE_TOKEN)")),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

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
            r.max_units as usize
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
        let (report, read, written) = match r.result {
            Some(report_unit_request::Result::Success(s)) => {
                (Report::Success { parts: s.parts }, s.bytes_read, s.bytes_written)
            }
            Some(report_unit_request::Result::Failure(f)) => (
                Report::Failure {
                    message: f.message,
                    retryable: f.retryable,
                },
                0,
                0,
            ),
            None => return Err(Status::invalid_argument("report without a result")),
        };
        self.report(&r.worker_id, &r.lease_id, report, read, written).await;
        Ok(Response::new(ReportUnitResponse {}))
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
            status: Some(self.cancel(&req.into_inner().job_id)?),
        }))
    }

    async fn list_jobs(&self, _req: Request<ListJobsRequest>) -> Result<Response<ListJobsResponse>, Status> {
        Ok(Response::new(ListJobsResponse { jobs: self.list() }))
    }
}
