//! Client side of the job API, used by `shardmerge submit`, `status` and `cancel`.

use super::scheduler::is_final;
use indicatif::{ProgressBar, ProgressStyle};
use shardmerge_proto::v1::job_service_client::JobServiceClient;
use shardmerge_proto::v1::{
    CancelJobRequest, GetJobRequest, JobState, JobStatus, ListJobsRequest, MergeOptions, SubmitJobRequest,
    WatchJobRequest,
};
use shardmerge_worker::node::BearerToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Why a job API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The coordinator's address is malformed or its TLS settings are unusable.
    #[error(transparent)]
    Address(#[from] shardmerge_worker::node::NodeError),
    /// No connection could be made.
    #[error("cannot reach the coordinator at {url}: {source}")]
    Connect {
        /// Coordinator URL.
        url: String,
        /// Cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// The coordinator refused or failed the call (its message says why).
    #[error("{}", .0.message())]
    Rpc(#[from] tonic::Status),
    /// [`wait`] gave up on a coordinator that stayed away.
    #[error("{why}; gave up waiting for job {job_id} after {secs} s")]
    GaveUp {
        /// The last reason it was unreachable.
        why: String,
        /// The job followed.
        job_id: String,
        /// How long it waited.
        secs: u64,
    },
}

/// A connected job client.
pub type Client = JobServiceClient<InterceptedService<Channel, BearerToken>>;

/// Connects to the coordinator at `url`.
pub async fn connect(url: &str, token: Option<String>, tls_ca: Option<&[u8]>) -> Result<Client, ClientError> {
    let channel = shardmerge_worker::node::endpoint(url, tls_ca)?
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            url: url.to_string(),
            source,
        })?;
    Ok(JobServiceClient::with_interceptor(channel, BearerToken(token)))
}

/// Submits a job; returns its id and the planner's warnings.
pub async fn submit(
    client: &mut Client,
    config_yaml: String,
    config_name: String,
    output_uri: String,
    options: MergeOptions,
) -> Result<(String, Vec<String>), ClientError> {
    let r = client
        .submit_job(SubmitJobRequest {
            config_yaml,
            config_name,
            output_uri,
            options: Some(options),
        })
        .await?
        .into_inner();
    Ok((r.job_id, r.warnings))
}

/// Human name of a state (as the scheduler and the journal name it).
pub fn state_name(s: i32) -> &'static str {
    super::scheduler::state_name(JobState::try_from(s).unwrap_or(JobState::Unspecified))
}

/// One status line.
pub fn describe(s: &JobStatus) -> String {
    let mut line = format!(
        "{}  {:<10}  units {}/{}  {:.1}/{:.1} MB  workers {}  retries {}  resumed {}  -> {}",
        s.job_id,
        state_name(s.state),
        s.units_done,
        s.units_total,
        s.bytes_done as f64 / 1e6,
        s.bytes_total as f64 / 1e6,
        s.live_workers,
        s.retries,
        s.resumed_units,
        s.output_uri
    );
    if !s.error.is_empty() {
        line.push_str(&format!("\n  error: {}", s.error));
    }
    line
}

/// A status as a JSON object: every [`JobStatus`] field under its proto name, `state` as the
/// lowercase name [`state_name`] gives (`running`, `succeeded`, ...). The exhaustive
/// destructuring makes a new proto field a compile error here until it is printed too.
pub fn status_json(s: &JobStatus) -> serde_json::Value {
    let JobStatus {
        job_id,
        state,
        units_total,
        units_done,
        bytes_total,
        bytes_done,
        error,
        output_uri,
        live_workers,
        retries,
        resumed_units,
    } = s;
    serde_json::json!({
        "job_id": job_id,
        "state": state_name(*state),
        "units_total": units_total,
        "units_done": units_done,
        "bytes_total": bytes_total,
        "bytes_done": bytes_done,
        "error": error,
        "output_uri": output_uri,
        "live_workers": live_workers,
        "retries": retries,
        "resumed_units": resumed_units,
    })
}

/// How long [`wait`] keeps trying to reach a coordinator that went away (restart, rollout).
pub const WAIT_RECONNECT: std::time::Duration = std::time::Duration::from_secs(600);

/// A job followed to its end by [`follow`].
#[derive(Debug, Clone)]
pub struct Followed {
    /// The job's final status.
    pub status: JobStatus,
    /// How many times the coordinator went away mid-job (restart, rollout) and the job was
    /// watched again: 0 when one status stream saw it through.
    pub rewatched: u32,
}

/// Follows a job until it ends, with a progress bar when `progress`; returns the final status.
/// When the coordinator goes away mid-job (a graceful shutdown ends the stream, a crash breaks
/// the connection) it watches again once a coordinator answers, for up to [`WAIT_RECONNECT`].
pub async fn wait(client: &mut Client, job_id: &str, progress: bool) -> Result<JobStatus, ClientError> {
    Ok(follow(client, job_id, progress).await?.status)
}

/// [`wait`], also counting how many times the job had to be watched again.
pub async fn follow(client: &mut Client, job_id: &str, progress: bool) -> Result<Followed, ClientError> {
    let bar = if progress {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut last: Option<JobStatus> = None;
    let mut received = 0u64;
    let mut away_since: Option<std::time::Instant> = None;
    let mut rewatched = 0u32;
    loop {
        let before = received;
        let why = match watch_once(client, job_id, &bar, &mut last, &mut received).await {
            Ok(()) => match &last {
                Some(s) if is_final(JobState::try_from(s.state).unwrap_or(JobState::Unspecified)) => {
                    bar.finish_and_clear();
                    return Ok(Followed {
                        status: s.clone(),
                        rewatched,
                    });
                }
                _ => "the coordinator ended the status stream (shutting down?)".to_string(),
            },
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ) =>
            {
                format!("the coordinator is unreachable: {}", s.message())
            }
            Err(s) => {
                bar.finish_and_clear();
                return Err(s.into());
            }
        };
        if received > before {
            away_since = None; // it answered in between: a new outage starts now
        }
        let since = *away_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() > WAIT_RECONNECT {
            bar.finish_and_clear();
            return Err(ClientError::GaveUp {
                why,
                job_id: job_id.to_string(),
                secs: WAIT_RECONNECT.as_secs(),
            });
        }
        bar.suspend(|| tracing::warn!(job_id, "{why}; watching again"));
        rewatched += 1;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// One WatchJob stream, until it ends; updates `last` and the bar with every status.
async fn watch_once(
    client: &mut Client,
    job_id: &str,
    bar: &ProgressBar,
    last: &mut Option<JobStatus>,
    received: &mut u64,
) -> Result<(), tonic::Status> {
    let mut stream = client
        .watch_job(WatchJobRequest {
            job_id: job_id.to_string(),
        })
        .await?
        .into_inner();
    while let Some(s) = stream.message().await? {
        bar.set_length(s.bytes_total);
        bar.set_position(s.bytes_done);
        bar.set_message(format!(
            "{} {}/{} units, {} workers",
            state_name(s.state),
            s.units_done,
            s.units_total,
            s.live_workers
        ));
        *last = Some(s);
        *received += 1;
    }
    Ok(())
}

/// Status of one job, or all jobs.
pub async fn status(client: &mut Client, job: Option<String>) -> Result<Vec<JobStatus>, ClientError> {
    Ok(match job {
        Some(job_id) => vec![
            client
                .get_job(GetJobRequest { job_id })
                .await?
                .into_inner()
                .status
                .unwrap_or_default(),
        ],
        None => client.list_jobs(ListJobsRequest {}).await?.into_inner().jobs,
    })
}

/// Cancels a job.
pub async fn cancel(client: &mut Client, job_id: String) -> Result<JobStatus, ClientError> {
    Ok(client
        .cancel_job(CancelJobRequest { job_id })
        .await?
        .into_inner()
        .status
        .unwrap_or_default())
}
