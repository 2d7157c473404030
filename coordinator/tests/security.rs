//! Security of the cluster, in process over real loopback gRPC: each API takes only its own
//! token, the coordinator refuses to serve an API without a token beyond loopback, submissions
//! outside the location allowlist are refused before anything is read or written, and a worker
//! refuses units outside its own allowlist.

use shardmerge_coordinator::cluster::allow::AllowList;
use shardmerge_coordinator::cluster::auth::Credentials;
use shardmerge_coordinator::cluster::client;
use shardmerge_coordinator::cluster::scheduler::SchedulerConfig;
use shardmerge_coordinator::cluster::server::{self, ServeOptions};
use shardmerge_coordinator::cluster::service::CoordinatorOptions;
use shardmerge_proto::PROTOCOL_VERSION;
use shardmerge_proto::v1::worker_service_client::WorkerServiceClient;
use shardmerge_proto::v1::{JobState, LeaseUnitsRequest, MergeOptions, RegisterWorkerRequest};
use shardmerge_worker::node::{BearerToken, WorkerOptions, run_worker};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden")
        .canonicalize()
        .expect("tests/golden")
}

fn options(state: &Path, allow: AllowList) -> CoordinatorOptions {
    CoordinatorOptions {
        state_dir: state.to_path_buf(),
        scheduler: SchedulerConfig::default(),
        unit_target: 5 << 20,
        chunk_size: 0,
        memory_limit: None,
        model_root: golden(),
        metrics: None,
        allow,
        retention: Duration::from_secs(3600),
    }
}

fn loopback_default() -> AllowList {
    AllowList::new::<&str>(&[], true).unwrap()
}

/// Starts a coordinator on loopback; returns its URL.
async fn start(opts: CoordinatorOptions, credentials: Credentials) -> String {
    let (listener, addr) = server::bind("127.0.0.1:0").await.unwrap();
    let options = ServeOptions {
        credentials,
        ..ServeOptions::new(opts)
    };
    tokio::spawn(server::serve(options, listener, std::future::pending()));
    format!("http://{addr}")
}

fn worker_options(url: &str, token: Option<&str>, allow: AllowList) -> WorkerOptions {
    WorkerOptions {
        coordinator: url.to_string(),
        token: token.map(String::from),
        slots: 1,
        threads: Some(1),
        name: "security".into(),
        tls_ca: None,
        drain: Duration::from_secs(5),
        allow,
        memory_limit: None,
    }
}

type WorkerClient = WorkerServiceClient<InterceptedService<Channel, BearerToken>>;

async fn worker_client(url: &str, token: &str) -> WorkerClient {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    WorkerServiceClient::with_interceptor(channel, BearerToken(Some(token.to_string())))
}

fn register() -> RegisterWorkerRequest {
    RegisterWorkerRequest {
        protocol_version: PROTOCOL_VERSION,
        name: "intruder".into(),
        slots: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_token_cannot_call_worker_rpcs_nor_a_worker_token_job_rpcs() {
    let tmp = tempfile::tempdir().unwrap();
    let creds = Credentials {
        client: Some("client-secret".into()),
        worker: Some("worker-secret".into()),
        allow_unauthenticated: false,
    };
    let url = start(options(&tmp.path().join("state"), loopback_default()), creds).await;

    // The client token on the worker API: refused, for every RPC.
    let mut w = worker_client(&url, "client-secret").await;
    let err = w.register_worker(register()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("worker token"), "{}", err.message());
    let err = w
        .lease_units(LeaseUnitsRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: "w-1".into(),
            max_units: 64,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // No token, or an unknown one: unauthenticated.
    let mut anon = WorkerServiceClient::connect(url.clone()).await.unwrap();
    let err = anon.register_worker(register()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let err = worker_client(&url, "guess")
        .await
        .register_worker(register())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    // The worker token opens the worker API ...
    let mut w = worker_client(&url, "worker-secret").await;
    let id = w.register_worker(register()).await.unwrap().into_inner().worker_id;
    assert!(!id.is_empty());
    // ... and not the job API.
    let mut c = client::connect(&url, Some("worker-secret".into()), None).await.unwrap();
    let err = client::status(&mut c, None).await.unwrap_err().to_string();
    assert!(err.contains("job API needs the cluster token"), "{err}");
    let mut c = client::connect(&url, Some("client-secret".into()), None).await.unwrap();
    assert!(client::status(&mut c, None).await.unwrap().is_empty());

    // A worker process given the client token stops with the refusal instead of retrying.
    let wrong = worker_options(&url, Some("client-secret"), loopback_default());
    let r = tokio::time::timeout(Duration::from_secs(10), run_worker(wrong, std::future::pending()))
        .await
        .expect("the worker must give up at once");
    let err = r.unwrap_err().to_string();
    assert!(err.contains("refused registration"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_without_its_token_is_not_served_beyond_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    for (creds, var) in [
        (
            Credentials {
                client: Some("c".into()),
                ..Default::default()
            },
            "SHARDMERGE_WORKER_TOKEN",
        ),
        (
            Credentials {
                worker: Some("w".into()),
                ..Default::default()
            },
            "SHARDMERGE_TOKEN",
        ),
        (Credentials::default(), "SHARDMERGE_TOKEN"),
    ] {
        let state = tmp.path().join("state");
        let (listener, _) = server::bind("0.0.0.0:0").await.unwrap();
        let serve_options = ServeOptions {
            credentials: creds,
            ..ServeOptions::new(options(&state, loopback_default()))
        };
        let err = server::serve(serve_options, listener, std::future::pending())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(var) && err.contains("not a loopback address"), "{err}");
        assert!(!state.exists(), "refused before the journal was opened");
    }
    let (listener, _) = server::bind("127.0.0.1:0").await.unwrap();
    let same = Credentials {
        client: Some("t".into()),
        worker: Some("t".into()),
        allow_unauthenticated: false,
    };
    let serve_options = ServeOptions {
        credentials: same,
        ..ServeOptions::new(options(&tmp.path().join("state"), loopback_default()))
    };
    let err = server::serve(serve_options, listener, std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("are the same"), "{err}");
}

fn golden_config(case: &str) -> String {
    std::fs::read_to_string(golden().join("cases").join(case).join("config.yml")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_outside_the_allowlist_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let allowed = tmp.path().join("allowed");
    let allow = AllowList::new(
        &[
            golden().join("models").display().to_string(),
            allowed.display().to_string(),
        ],
        false,
    )
    .unwrap();
    let url = start(options(&tmp.path().join("state"), allow), Credentials::default()).await;
    let mut c = client::connect(&url, None, None).await.unwrap();
    let base = c.clone();
    let submit = move |yaml: String, out: PathBuf| {
        let mut c = base.clone();
        async move {
            client::submit(
                &mut c,
                yaml,
                "linear.yml".into(),
                out.display().to_string(),
                MergeOptions::default(),
            )
            .await
        }
    };
    let yaml = golden_config("linear_bf16");

    // An output outside the allowlist.
    let denied = tmp.path().join("denied").join("out");
    let err = submit(yaml.clone(), denied.clone()).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("location `{}` is not allowed", denied.display())),
        "{err}"
    );
    assert!(
        !tmp.path().join("denied").exists(),
        "nothing may be created at a refused output"
    );

    // A model outside it, as an absolute path and climbing out with `..`.
    let outside = tmp.path().join("models");
    std::fs::create_dir_all(&outside).unwrap();
    let abs = yaml.replace("./models/ft1_bf16", &outside.join("ft1_bf16").display().to_string());
    let err = submit(abs, allowed.join("a")).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "location `{}` is not allowed",
            outside.join("ft1_bf16").display()
        )),
        "{err}"
    );
    let climb = yaml.replace("./models/ft1_bf16", "./models/../cases/ft1_bf16");
    let err = submit(climb, allowed.join("b")).await.unwrap_err().to_string();
    assert!(err.contains("`..` component"), "{err}");
    assert!(!allowed.exists(), "refused submissions create nothing");
    assert!(
        client::status(&mut c, None).await.unwrap().is_empty(),
        "no job for a refused submission"
    );

    // Inside the allowlist, the same config is accepted.
    let (job, _) = submit(yaml, allowed.join("ok")).await.unwrap();
    assert_eq!(client::status(&mut c, Some(job)).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_refuses_units_outside_its_own_allowlist() {
    let tmp = tempfile::tempdir().unwrap();
    // The coordinator (loopback) allows local paths; the worker only an S3 bucket.
    let url = start(
        options(&tmp.path().join("state"), loopback_default()),
        Credentials::default(),
    )
    .await;
    let only_s3 = AllowList::new(&["s3://models"], false).unwrap();
    tokio::spawn(run_worker(worker_options(&url, None, only_s3), std::future::pending()));
    let mut c = client::connect(&url, None, None).await.unwrap();
    let out = tmp.path().join("out");
    let (job, _) = client::submit(
        &mut c,
        golden_config("linear_bf16"),
        "linear.yml".into(),
        out.display().to_string(),
        MergeOptions::default(),
    )
    .await
    .unwrap();
    let st = tokio::time::timeout(Duration::from_secs(60), client::wait(&mut c, &job, false))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.state, JobState::Failed as i32, "{st:?}");
    assert!(
        st.error.contains("refuses the unit")
            && st.error.contains("models/base_bf16/model.safetensors` is not allowed")
            && st.error.contains("s3://models"),
        "{}",
        st.error
    );
    let written: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        !written.iter().any(|n| n.to_string_lossy().ends_with(".safetensors")),
        "{written:?}"
    );
}
