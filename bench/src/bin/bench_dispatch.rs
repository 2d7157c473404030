//! Coordinator dispatch overhead: how many no-op work units per second go through the
//! lease -> report cycle.
//!
//! * `sched`: the pure [`Scheduler`] state machine in-process; one worker leases `--batch` units
//!   at a time and reports each one done. No I/O, no locks: the ceiling.
//! * `grpc`: a real [`Coordinator`] (scheduler behind its mutex, journal with an fsynced line per
//!   finished unit, the 250 ms housekeeping tick) served by tonic on a loopback port, and
//!   `--clients` worker clients over real gRPC that register, lease `--batch` units per call and
//!   report every lease (concurrently, as a worker's unit tasks do). The job is injected through
//!   the public `Coordinator::with_sched` / `Scheduler::add_job` API with synthetic units (one
//!   task of three inputs each, about the size of a real unit's message), so no plan or storage
//!   is involved. The journal lives under `--state-dir` (its disk's fsync cost is measured too).
//!
//! Prints `key=value` result lines (medians) on stdout and every run on stderr.

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use shardmerge_bench::{median, result, runs};
use shardmerge_coordinator::cluster::auth::Credentials;
use shardmerge_coordinator::cluster::scheduler::{Report, ReportRef, Scheduler, SchedulerConfig, planned_parts};
use shardmerge_coordinator::cluster::server;
use shardmerge_coordinator::cluster::service::{Coordinator, CoordinatorOptions};
use shardmerge_proto::PROTOCOL_VERSION;
use shardmerge_proto::v1::worker_service_client::WorkerServiceClient;
use shardmerge_proto::v1::worker_service_server::WorkerServiceServer;
use shardmerge_proto::v1::{
    DType, JobState, JobStatus, LeaseUnitsRequest, MergeTask, ParamValue, PartResult, RegisterWorkerRequest,
    ReportUnitRequest, TaskInput, TensorDestination, TensorSource, UnitOutput, UnitSuccess, WorkUnit, param_value,
    report_unit_request,
};
use shardmerge_worker::storage::Storage;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum Mode {
    Sched,
    Grpc,
}

#[derive(Debug, Parser)]
#[command(about = "Coordinator lease->report rate with no-op units")]
struct Args {
    /// What to measure.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Units per job (a comma-separated list runs each size).
    #[arg(long, value_delimiter = ',', default_value = "20000")]
    units: Vec<u64>,
    /// Units leased per call (a comma-separated list runs each).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    batch: Vec<u32>,
    /// Timed repeats of each configuration.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Concurrent worker clients (grpc).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Parent of the coordinator's per-run state directory (grpc; journal fsyncs land there).
    #[arg(long, default_value = "target/bench-cluster")]
    state_dir: PathBuf,
    /// Label for the result keys (e.g. `disk`, `tmpfs`).
    #[arg(long, default_value = "")]
    label: String,
    /// Leave TCP_NODELAY off on the server's accepted sockets (grpc), as `server::serve` did
    /// before it set it; the default serves exactly what `server::serve` does
    /// (`server::incoming`).
    #[arg(long)]
    no_tcp_nodelay: bool,
    /// Stop leasing after this many seconds and rate the units done so far (grpc).
    #[arg(long, default_value_t = 10.0)]
    max_secs: f64,
}

const JOB: &str = "bench-job";

/// A no-op unit shaped like a real one: one DARE-TIES-like task with three inputs.
fn unit(id: u64) -> WorkUnit {
    let tensor = format!("model.layers.{}.mlp.down_proj.weight", id % 126);
    let src = |m: u32| TensorSource {
        uri: format!(
            "s3://models/finetune-{m}/model-{:05}-of-00191.safetensors",
            id % 191 + 1
        ),
        offset: id * 4096,
        length: 1 << 20,
        dtype: DType::Bf16 as i32,
        shape: vec![512, 1024],
        tensor_name: tensor.clone(),
        ..Default::default()
    };
    let input = |m: u32| TaskInput {
        model_index: m,
        model: format!("s3://models/finetune-{m}"),
        is_base: m == 0,
        source: Some(src(m)),
        params: HashMap::from([
            (
                "density".to_string(),
                ParamValue {
                    kind: Some(param_value::Kind::Float(0.53)),
                },
            ),
            (
                "weight".to_string(),
                ParamValue {
                    kind: Some(param_value::Kind::Float(0.6)),
                },
            ),
        ]),
        rng_offset: (m > 0).then_some(id << 20),
        rows: Vec::new(),
    };
    let shard_uri = "s3://out/merged/model-00001-of-00001.safetensors".to_string();
    WorkUnit {
        job_id: JOB.to_string(),
        unit_id: id,
        tasks: vec![MergeTask {
            task_id: id,
            tensor: tensor.clone(),
            method: "dare_ties".into(),
            working_dtype: DType::Bf16 as i32,
            inputs: (0..3).map(input).collect(),
            shared_params: HashMap::new(),
            output: Some(TensorDestination {
                uri: shard_uri.clone(),
                offset: id << 20,
                length: 1 << 20,
                dtype: DType::Bf16 as i32,
                shape: vec![512, 1024],
                shard_index: 0,
            }),
            random_seed: Some(42),
            numel: 512 * 1024,
            passthrough: false,
            load_dtype: DType::Bf16 as i32,
            chunk: None,
        }],
        output: Some(UnitOutput {
            shard_uri,
            start: id << 20,
            end: (id + 1) << 20,
            upload_id: "upload".into(),
            first_part: id as u32,
            part_starts: vec![id << 20],
            header: Vec::new(),
        }),
        attempt: 0,
    }
}

/// The parts a worker reports for `u`: its planned part numbers and sizes.
fn parts_of(u: &WorkUnit) -> Vec<PartResult> {
    planned_parts(u)
        .into_iter()
        .map(|(n, size)| PartResult {
            part_index: n,
            etag: format!("etag-{n}"),
            size,
        })
        .collect()
}

fn add_job(s: &mut Scheduler, n: u64) {
    let status = JobStatus {
        job_id: JOB.to_string(),
        ..Default::default()
    };
    s.add_job(
        status,
        (0..n).map(unit).collect(),
        vec![1 << 20; n as usize],
        HashMap::new(),
        HashMap::new(),
    )
    .expect("no chunk statistics");
}

/// One in-process run: lease `batch` at a time, report each; returns units per second.
fn sched_run(n: u64, batch: u32) -> Result<f64> {
    let mut s = Scheduler::new(SchedulerConfig::default(), 1);
    let w = s.register_worker(Instant::now());
    add_job(&mut s, n);
    let t = Instant::now();
    let mut done = 0u64;
    loop {
        let leases = s.lease(&w, batch as usize, Instant::now()).context("worker unknown")?;
        if leases.is_empty() {
            break;
        }
        for l in leases {
            let u = l.unit.as_ref().context("lease without unit")?;
            let fenced = ReportRef {
                worker: &w,
                lease: &l.lease_id,
                job: &u.job_id,
                unit: u.unit_id,
                attempt: u.attempt,
            };
            let report = Report::Success {
                parts: parts_of(u),
                stats: Vec::new(),
            };
            s.report(fenced, report, Instant::now())
                .map_err(|(_, why)| anyhow::anyhow!("report rejected: {why}"))?;
            s.settle(JOB, u.unit_id, Instant::now());
            done += 1;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let status = s.status(JOB).context("job vanished")?;
    if done != n || status.units_done != n || status.state != JobState::Committing as i32 {
        bail!("dispatched {done}, scheduler says {} of {n} done", status.units_done);
    }
    Ok(n as f64 / secs)
}

type Client = WorkerServiceClient<Channel>;

/// One worker client: register, then lease and report until no unit is left or `deadline`.
async fn client_loop(channel: Channel, batch: u32, deadline: Instant) -> Result<u64> {
    let mut c = Client::new(channel);
    let worker_id = c
        .register_worker(RegisterWorkerRequest {
            protocol_version: PROTOCOL_VERSION,
            name: "bench".into(),
            slots: batch,
        })
        .await?
        .into_inner()
        .worker_id;
    let mut done = 0u64;
    while Instant::now() < deadline {
        let leases = c
            .lease_units(LeaseUnitsRequest {
                protocol_version: PROTOCOL_VERSION,
                worker_id: worker_id.clone(),
                max_units: batch,
            })
            .await?
            .into_inner()
            .leases;
        if leases.is_empty() {
            return Ok(done);
        }
        let reports = leases.into_iter().map(|l| {
            let mut c = c.clone();
            let u = l.unit.unwrap_or_default();
            let req = ReportUnitRequest {
                worker_id: worker_id.clone(),
                lease_id: l.lease_id,
                result: Some(report_unit_request::Result::Success(UnitSuccess {
                    stats: Vec::new(),
                    parts: parts_of(&u),
                    bytes_read: 0,
                    bytes_written: 0,
                })),
                job_id: u.job_id.clone(),
                unit_id: u.unit_id,
                attempt: u.attempt,
            };
            async move { c.report_unit(req).await }
        });
        for r in futures::future::join_all(reports).await {
            r?;
            done += 1;
        }
    }
    Ok(done)
}

/// One gRPC run against a fresh in-process coordinator; returns units per second.
async fn grpc_run(args: &Args, n: u64, batch: u32) -> Result<f64> {
    let state_parent = &args.state_dir;
    std::fs::create_dir_all(state_parent)?;
    let state = tempfile::Builder::new()
        .prefix("dispatch-state-")
        .tempdir_in(state_parent)
        .with_context(|| format!("state dir under {}", state_parent.display()))?;
    let opts = CoordinatorOptions {
        state_dir: state.path().to_path_buf(),
        scheduler: SchedulerConfig::default(),
        unit_target: 64 << 20,
        chunk_size: 0,
        memory_limit: None,
        model_root: PathBuf::from("."),
        metrics: None,
        allow: shardmerge_worker::node::allow::AllowList::new::<&str>(&[], true)?,
        retention: Duration::from_secs(3600),
    };
    let coord = Coordinator::start(opts, Storage::from_env()).await?;
    coord.with_sched(|s| add_job(s, n));
    // What `server::serve` runs, with the coordinator kept in hand to inject the job.
    let ticker = coord.clone();
    let tick = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            ticker.tick();
        }
    });
    let (listener, addr) = server::bind("127.0.0.1:0").await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (_, open) = Credentials::default().interceptors("127.0.0.1:0".parse()?)?;
    let svc = WorkerServiceServer::with_interceptor(coord.clone(), open);
    let srv = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming(listener, !args.no_tcp_nodelay), async {
                let _ = stopped.await;
            }),
    );
    let url = format!("http://{addr}");
    let mut channels = Vec::new();
    for _ in 0..args.clients {
        channels.push(tonic::transport::Endpoint::from_shared(url.clone())?.connect().await?);
    }
    let t = Instant::now();
    let deadline = t + Duration::from_secs_f64(args.max_secs);
    let tasks: Vec<_> = channels
        .into_iter()
        .map(|ch| tokio::spawn(client_loop(ch, batch, deadline)))
        .collect();
    let mut done = 0;
    for task in tasks {
        done += task.await??;
    }
    let secs = t.elapsed().as_secs_f64();
    let status = coord.status(JOB)?;
    let _ = stop.send(());
    srv.await??;
    tick.abort();
    if status.units_done != done || (done != n && secs < args.max_secs) {
        bail!("dispatched {done}, coordinator says {} of {n} done", status.units_done);
    }
    if done < n {
        eprintln!("  stopped after {secs:.1} s with {done} of {n} units done");
    }
    Ok(done as f64 / secs)
}

/// Accepted connections: `server::incoming` (what `server::serve` uses), or with `nodelay`
/// false a plain `TcpListenerStream` (Nagle's algorithm on).
fn incoming(
    l: tokio::net::TcpListener,
    nodelay: bool,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    if nodelay {
        server::incoming(l).boxed()
    } else {
        futures::stream::unfold(l, |l| async move { Some((l.accept().await.map(|(s, _)| s), l)) }).boxed()
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let label = if args.label.is_empty() {
        String::new()
    } else {
        format!("_{}", args.label)
    };
    for &n in &args.units {
        for &batch in &args.batch {
            let mut rates = Vec::new();
            for _ in 0..args.repeat {
                let rate = match args.mode {
                    Mode::Sched => sched_run(n, batch)?,
                    Mode::Grpc => rt.block_on(grpc_run(&args, n, batch))?,
                };
                rates.push(rate);
            }
            let mode = match args.mode {
                Mode::Sched => "sched",
                Mode::Grpc => "grpc",
            };
            eprintln!(
                "{mode}{label}: {n} units, batch {batch}{}: median {:.0} units/s of {}",
                if args.mode == Mode::Grpc {
                    format!(", {} clients", args.clients)
                } else {
                    String::new()
                },
                median(&rates),
                runs(&rates, 0)
            );
            result(
                &format!("dispatch_{mode}{label}_n{n}_b{batch}"),
                format!("{:.0}", median(&rates)),
            );
        }
    }
    Ok(())
}
