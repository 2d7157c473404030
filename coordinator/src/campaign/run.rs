//! Running a campaign: draw, reuse what an earlier run committed, merge the rest (embedded one
//! after another, or on a cluster with up to `max_running` jobs at once), run `--then`, and
//! rewrite the dataset after every merge.

use super::record::{self, DatasetError, Record, State};
use super::{Draw, draws, hook, recipe};
use crate::cluster::client::{self, ClientError};
use crate::{MergeError, MergeOptions};
use shardmerge_proto::v1::{JobState, MergeOptions as WireOptions};
use shardmerge_worker::storage::{Location, Storage, StorageError};
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::task::JoinSet;

/// What a campaign is.
#[derive(Debug, Clone)]
pub struct CampaignOptions {
    /// Model references to draw from.
    pub pool: Vec<String>,
    /// Number of merges.
    pub count: usize,
    /// Seed of the draws.
    pub seed: u64,
    /// Where the merges and `campaign.jsonl` go (directory or `s3://` prefix).
    pub out: String,
    /// Probability of SLERP (else DARE-TIES).
    pub slerp_probability: f64,
    /// Merges in flight at once on a cluster (embedded campaigns run one at a time).
    pub max_running: usize,
    /// Command run after each committed merge.
    pub then: Option<String>,
}

/// Where merges run.
#[derive(Debug, Clone)]
pub enum Backend {
    /// In this process, one after another.
    Embedded(MergeOptions),
    /// Jobs on a coordinator.
    Cluster {
        /// Coordinator URL.
        url: String,
        /// Cluster token.
        token: Option<String>,
        /// CA certificate (PEM) for TLS.
        tls_ca: Option<Vec<u8>>,
    },
}

/// Why a campaign stopped.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    /// The dataset could not be read or written.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The coordinator could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The options make no sense.
    #[error("{0}")]
    Invalid(String),
}

/// How one merge ended.
enum Ended {
    /// `bytes`: tensor bytes written, unknown for a merge found already committed.
    Committed {
        bytes: Option<u64>,
    },
    Failed(String),
    Skipped(String),
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The record of a draw before it runs.
async fn pending(st: &Storage, prefix: &Location, d: &Draw) -> Record {
    let output = prefix.join(&d.name).to_uri();
    let mut r = Record {
        index: d.index,
        name: d.name.clone(),
        models: d.models.clone(),
        method: d.method.to_string(),
        seed: d.seed,
        yaml: String::new(),
        output,
        state: State::Pending,
        error: None,
        seconds: None,
        bytes_written: None,
        finished_at: None,
        scores: None,
        hook_error: None,
    };
    // SLERP's recipe covers the first model's whole layer range.
    match crate::arch::model_num_layers(st, &d.models[0]).await {
        Ok(layers) => r.yaml = recipe(d, layers),
        Err(e) => {
            r.state = State::Skipped;
            r.error = Some(e);
        }
    }
    r
}

/// Whether the committed output of `r` is there.
async fn committed(st: &Storage, r: &Record) -> Result<bool, StorageError> {
    crate::publish::is_committed(st, &Location::parse(&r.output)?).await
}

/// Runs the campaign; `on_done` sees every record as it finishes. Returns every record.
pub async fn run(
    st: &Storage,
    opts: &CampaignOptions,
    backend: Backend,
    mut on_done: impl FnMut(&Record),
) -> Result<Vec<Record>, CampaignError> {
    if opts.pool.len() < 2 {
        return Err(CampaignError::Invalid("the pool needs at least two models".into()));
    }
    if !(0.0..=1.0).contains(&opts.slerp_probability) {
        return Err(CampaignError::Invalid(format!(
            "--slerp-probability must be within [0, 1], got {}",
            opts.slerp_probability
        )));
    }
    let prefix = Location::parse(&opts.out)?;
    if matches!(backend, Backend::Embedded(_)) && !prefix.is_local() {
        return Err(CampaignError::Invalid(format!(
            "an embedded campaign writes to a local directory; {} needs --coordinator",
            opts.out
        )));
    }
    let dataset = record::location(&prefix);
    let previous = record::load(st, &dataset).await?;
    let mut records = Vec::new();
    for d in draws(&opts.pool, opts.count, opts.seed, opts.slerp_probability) {
        let mut r = pending(st, &prefix, &d).await;
        if let Some(p) = previous.iter().find(|p| p.index == d.index)
            && p.name == r.name
            && p.models == r.models
            && p.yaml == r.yaml
            && p.seed == r.seed
            && (p.state == State::Skipped || (p.state == State::Committed && committed(st, p).await?))
        {
            r = p.clone();
        }
        records.push(r);
    }
    record::save(st, &dataset, &records).await?;
    let todo: Vec<usize> = (0..records.len())
        .filter(|&i| records[i].state == State::Pending)
        .collect();
    let client = match &backend {
        Backend::Cluster { url, token, tls_ca } => Some(client::connect(url, token.clone(), tls_ca.as_deref()).await?),
        Backend::Embedded(_) => None,
    };
    let limit = match backend {
        Backend::Embedded(_) => 1,
        Backend::Cluster { .. } => opts.max_running.max(1),
    };
    let mut running = JoinSet::new();
    let mut next = todo.into_iter();
    loop {
        while running.len() < limit {
            let Some(i) = next.next() else { break };
            let r = records[i].clone();
            let backend = backend.clone();
            let client = client.clone();
            let st = st.clone();
            running.spawn(async move {
                let started = Instant::now();
                let ended = merge(&st, &r, &backend, client).await;
                (i, ended, started.elapsed().as_secs_f64())
            });
        }
        let Some(joined) = running.join_next().await else { break };
        let (i, ended, seconds) = joined.map_err(|e| CampaignError::Invalid(format!("a merge task died: {e}")))?;
        let r = &mut records[i];
        r.seconds = Some(seconds);
        r.finished_at = Some(now());
        match ended {
            Ended::Committed { bytes } => {
                r.state = State::Committed;
                r.bytes_written = bytes;
                if let Some(cmd) = &opts.then {
                    let (cmd, rec) = (cmd.clone(), r.clone());
                    match tokio::task::spawn_blocking(move || hook::run(&cmd, &rec)).await {
                        Ok(Ok(scores)) => r.scores = Some(scores),
                        Ok(Err(e)) => r.hook_error = Some(e),
                        Err(e) => r.hook_error = Some(format!("the hook task died: {e}")),
                    }
                }
            }
            Ended::Failed(e) => {
                r.state = State::Failed;
                r.error = Some(e);
            }
            Ended::Skipped(e) => {
                r.state = State::Skipped;
                r.error = Some(e);
            }
        }
        on_done(r);
        record::save(st, &dataset, &records).await?;
    }
    Ok(records)
}

/// Whether `r`'s output is committed from exactly its YAML (a merge that finished after the
/// campaign process died, before the dataset recorded it).
async fn already_merged(st: &Storage, r: &Record) -> bool {
    let Ok(out) = Location::parse(&r.output) else {
        return false;
    };
    if !committed(st, r).await.unwrap_or(false) {
        return false;
    }
    let yaml = st.read_all_small(&out.join("mergekit_config.yml"), 1 << 20).await;
    yaml.is_ok_and(|y| y.as_ref() == r.yaml.as_bytes())
}

/// Runs one merge.
async fn merge(st: &Storage, r: &Record, backend: &Backend, client: Option<client::Client>) -> Ended {
    if already_merged(st, r).await {
        return Ended::Committed { bytes: None };
    }
    match backend {
        Backend::Embedded(opts) => {
            let mut opts = opts.clone();
            opts.random_seed = Some(r.seed);
            let (yaml, name, out) = (r.yaml.clone(), format!("{}.yml", r.name), r.output.clone());
            let done = tokio::task::spawn_blocking(move || {
                let config = crate::config::parse_config(&yaml, Path::new(&name)).map_err(MergeError::from)?;
                let out = Path::new(&out);
                let plan = crate::plan_config(&config, out, &opts)?;
                crate::execute_plan(plan, &config, out, &opts)
            })
            .await;
            match done {
                Ok(Ok(report)) => Ended::Committed {
                    bytes: Some(report.stats.bytes_written),
                },
                Ok(Err(MergeError::Plan(e))) => Ended::Skipped(e.to_string()),
                Ok(Err(e)) => Ended::Failed(e.to_string()),
                Err(e) => Ended::Failed(format!("the merge task died: {e}")),
            }
        }
        Backend::Cluster { .. } => {
            let Some(mut c) = client else {
                return Ended::Failed("no coordinator connection".into());
            };
            on_cluster(st, r, &mut c).await
        }
    }
}

/// Attempts at a merge whose output another job holds before giving up.
const CLAIM_ATTEMPTS: usize = 300;

/// Runs `r` as a job. A rerun after the campaign process died first adopts the job it had
/// submitted for this output (waiting for it), or finds its output committed; a submit the
/// coordinator refuses because a job still holds the output is retried.
async fn on_cluster(st: &Storage, r: &Record, c: &mut client::Client) -> Ended {
    let options = WireOptions {
        random_seed: Some(r.seed),
        out_shard_size: 5_000_000_000,
        copy_tokenizer: true,
        write_model_card: true,
        allow_crimes: false,
        unsafe_truncate_embeddings: false,
    };
    let mut last = String::new();
    for _ in 0..CLAIM_ATTEMPTS {
        let adopted = adopt(c, &r.output).await;
        let orphan = matches!(adopted, Ok(Some(_)));
        let job = match adopted {
            Ok(Some(job)) => job,
            Ok(None) if already_merged(st, r).await => return Ended::Committed { bytes: None },
            Ok(None) => {
                let name = format!("{}.yml", r.name);
                match client::submit(c, r.yaml.clone(), name, r.output.clone(), options).await {
                    Ok((job, _)) => job,
                    Err(ClientError::Rpc(s)) if s.code() == tonic::Code::InvalidArgument => {
                        return Ended::Skipped(s.message().to_string());
                    }
                    Err(ClientError::Rpc(s)) if s.code() == tonic::Code::FailedPrecondition => {
                        // Another job still holds the output (it is finishing): look again.
                        last = s.message().to_string();
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        continue;
                    }
                    Err(e) => return Ended::Failed(e.to_string()),
                }
            }
            Err(e) => return Ended::Failed(e.to_string()),
        };
        return match client::wait(c, &job, false).await {
            Ok(s) if s.state == JobState::Succeeded as i32 => Ended::Committed {
                bytes: Some(s.bytes_total),
            },
            // An adopted job of the dead process that did not succeed: run the merge anew.
            Ok(_) if orphan => continue,
            Ok(s) => Ended::Failed(format!("job {job} {}: {}", client::state_name(s.state), s.error)),
            Err(e) => Ended::Failed(e.to_string()),
        };
    }
    Ended::Failed(format!("gave up after {CLAIM_ATTEMPTS} attempts: {last}"))
}

/// The job still writing `output`, if the coordinator has one (finished jobs are not adopted:
/// a committed output is recognized by its `mergekit_config.yml` instead).
async fn adopt(c: &mut client::Client, output: &str) -> Result<Option<String>, ClientError> {
    let same = |u: &str| u.trim_end_matches('/') == output.trim_end_matches('/');
    let jobs = client::status(c, None).await?;
    let live = |s: i32| {
        matches!(
            JobState::try_from(s),
            Ok(JobState::Planning | JobState::Running | JobState::Committing)
        )
    };
    Ok(jobs
        .iter()
        .find(|j| same(&j.output_uri) && live(j.state))
        .map(|j| j.job_id.clone()))
}
