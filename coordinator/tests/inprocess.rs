//! In-process cluster tests: coordinator and workers as tokio tasks talking real gRPC on
//! loopback, local-filesystem storage. Fast checks of the control plane's edge cases.

use shardmerge_coordinator::cluster::allow::AllowList;
use shardmerge_coordinator::cluster::auth::Credentials;
use shardmerge_coordinator::cluster::client;
use shardmerge_coordinator::cluster::scheduler::SchedulerConfig;
use shardmerge_coordinator::cluster::server::{self, ServeOptions, TlsIdentity};
use shardmerge_coordinator::cluster::service::CoordinatorOptions;
use shardmerge_proto::v1::worker_service_client::WorkerServiceClient;
use shardmerge_proto::v1::{JobState, LeaseUnitsRequest, MergeOptions, RegisterWorkerRequest};
use shardmerge_worker::node::{WorkerOptions, run_worker};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The golden fixtures, canonical: locations with a `..` component are refused.
fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden")
        .canonicalize()
        .expect("tests/golden")
}

/// Coordinator options for the tests: state under `state`, models under the golden fixtures.
fn options(state: &Path) -> CoordinatorOptions {
    CoordinatorOptions {
        state_dir: state.to_path_buf(),
        scheduler: SchedulerConfig::default(),
        unit_target: 5 << 20,
        chunk_size: 0,
        memory_limit: None,
        model_root: golden(),
        metrics: None,
        allow: AllowList::new::<&str>(&[], true).unwrap(),
        retention: Duration::from_secs(3600),
    }
}

async fn start(state: &Path) -> String {
    start_chunked(state, 0).await
}

/// A coordinator splitting tensors above `chunk_size` output bytes into chunk tasks.
async fn start_chunked(state: &Path, chunk_size: u64) -> String {
    let (listener, addr) = server::bind("127.0.0.1:0").await.unwrap();
    let opts = CoordinatorOptions {
        scheduler: SchedulerConfig {
            lease: Duration::from_secs(2),
            heartbeat: Duration::from_millis(400),
            ..Default::default()
        },
        chunk_size,
        ..options(state)
    };
    tokio::spawn(server::serve(ServeOptions::new(opts), listener, std::future::pending()));
    format!("http://{addr}")
}

fn spawn_worker(url: &str, name: &str) {
    let opts = WorkerOptions {
        coordinator: url.to_string(),
        token: None,
        slots: 1,
        threads: Some(1),
        name: name.into(),
        tls_ca: None,
        drain: Duration::from_secs(5),
        allow: AllowList::new::<&str>(&[], true).unwrap(),
        memory_limit: None,
    };
    tokio::spawn(run_worker(opts, std::future::pending()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_process_cluster_merges_local_models_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let url = start(&tmp.path().join("state")).await;
    spawn_worker(&url, "a");
    spawn_worker(&url, "b");
    let mut c = client::connect(&url, None, None).await.unwrap();
    for (case, seed, shard) in [("dare_linear_bf16", 42, 5_000_000_000), ("multishard_bf16", 1, 20_000)] {
        let yaml = std::fs::read_to_string(golden().join("cases").join(case).join("config.yml")).unwrap();
        let out = tmp.path().join(case);
        let options = MergeOptions {
            random_seed: Some(seed),
            out_shard_size: shard,
            copy_tokenizer: true,
            write_model_card: true,
            allow_crimes: false,
            unsafe_truncate_embeddings: false,
        };
        let (job, _) = client::submit(&mut c, yaml, format!("{case}.yml"), out.display().to_string(), options)
            .await
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(60), client::wait(&mut c, &job, false))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.state, JobState::Succeeded as i32, "{status:?}");
        let expected = golden().join("cases").join(case).join("expected");
        let mut names: Vec<_> = std::fs::read_dir(&expected)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".safetensors") || n.ends_with(".index.json"))
            .collect();
        names.sort();
        assert!(!names.is_empty());
        for n in names {
            let want = std::fs::read(expected.join(&n)).unwrap();
            let got = std::fs::read(out.join(&n)).unwrap_or_default();
            assert!(want == got, "{case}: {n} differs");
        }
    }
}

/// Chunk tasks on the cluster: statistics units (SLERP norms and dots, DARE's L1 partials,
/// TIES' histograms and, with rescale, its L1 partials) leased, reported, journaled and combined, then apply units that receive
/// the combined statistics; the output equals the embedded, unchunked merge byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunked_jobs_on_the_cluster_equal_the_embedded_merge() {
    let tmp = tempfile::tempdir().unwrap();
    let url = start_chunked(&tmp.path().join("state"), 998).await;
    spawn_worker(&url, "a");
    spawn_worker(&url, "b");
    let mut c = client::connect(&url, None, None).await.unwrap();
    for case in [
        "dare_ties_f32",
        "ties_bf16",
        "ties_rescale_bf16",
        "slerp_bf16",
        "linear_bf16",
        "dare_linear_bf16",
    ] {
        let dir = golden().join("cases").join(case);
        let yaml = std::fs::read_to_string(dir.join("config.yml")).unwrap();
        let out = tmp.path().join(case);
        let options = MergeOptions {
            random_seed: Some(42),
            out_shard_size: 5_000_000_000,
            copy_tokenizer: true,
            write_model_card: true,
            allow_crimes: false,
            unsafe_truncate_embeddings: false,
        };
        let (job, _) = client::submit(&mut c, yaml, format!("{case}.yml"), out.display().to_string(), options)
            .await
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(120), client::wait(&mut c, &job, false))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.state, JobState::Succeeded as i32, "{case}: {status:?}");
        let whole = tmp.path().join(format!("{case}-embedded"));
        let config = shardmerge_coordinator::load_config(&dir.join("config.yml")).unwrap();
        let opts = shardmerge_coordinator::MergeOptions {
            random_seed: Some(42),
            model_root: Some(golden()),
            chunk_size: 0,
            memory_limit: None,
            ..Default::default()
        };
        let w = whole.clone();
        tokio::task::spawn_blocking(move || shardmerge_coordinator::merge_config(&config, &w, &opts).map(|_| ()))
            .await
            .unwrap()
            .unwrap();
        let want = std::fs::read(whole.join("model.safetensors")).unwrap();
        let got = std::fs::read(out.join("model.safetensors")).unwrap();
        assert!(
            want == got,
            "{case}: the chunked cluster merge differs from the embedded one"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_clear_statuses() {
    let tmp = tempfile::tempdir().unwrap();
    let url = start(&tmp.path().join("state")).await;
    let mut w = WorkerServiceClient::connect(url.clone()).await.unwrap();
    let err = w
        .register_worker(RegisterWorkerRequest {
            protocol_version: 99,
            name: "old".into(),
            slots: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("protocol version 99"), "{}", err.message());
    let r = w
        .lease_units(LeaseUnitsRequest {
            protocol_version: shardmerge_proto::PROTOCOL_VERSION,
            worker_id: "w-404".into(),
            max_units: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.unknown_worker, "an unknown worker is told to re-register");
    let mut c = client::connect(&url, None, None).await.unwrap();
    let err = client::submit(
        &mut c,
        "merge_method: [oops".into(),
        "bad.yml".into(),
        tmp.path().display().to_string(),
        MergeOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("bad.yml:1"), "{err}");
    let err = client::status(&mut c, Some("job-missing".into())).await.unwrap_err();
    assert!(err.to_string().contains("job-missing"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_cluster_works_and_plaintext_clients_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (ck.cert.pem().into_bytes(), ck.signing_key.serialize_pem().into_bytes());
    let (listener, addr) = server::bind("127.0.0.1:0").await.unwrap();
    let opts = options(&tmp.path().join("state"));
    let tls = TlsIdentity {
        cert_chain: cert.clone(),
        key,
    };
    let options = ServeOptions {
        tls: Some(tls),
        ..ServeOptions::new(opts)
    };
    tokio::spawn(server::serve(options, listener, std::future::pending()));
    let url = format!("https://localhost:{}", addr.port());
    let wopts = WorkerOptions {
        coordinator: url.clone(),
        token: None,
        slots: 1,
        threads: Some(1),
        name: "tls".into(),
        tls_ca: Some(cert.clone()),
        drain: Duration::from_secs(5),
        allow: AllowList::new::<&str>(&[], true).unwrap(),
        memory_limit: None,
    };
    tokio::spawn(run_worker(wopts, std::future::pending()));
    let mut c = client::connect(&url, None, Some(&cert)).await.unwrap();
    let yaml = std::fs::read_to_string(golden().join("cases/linear_bf16/config.yml")).unwrap();
    let out = tmp.path().join("tls-out");
    let (job, _) = client::submit(
        &mut c,
        yaml,
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
    assert_eq!(st.state, JobState::Succeeded as i32, "{st:?}");
    let want = std::fs::read(golden().join("cases/linear_bf16/expected/model.safetensors")).unwrap();
    assert!(std::fs::read(out.join("model.safetensors")).unwrap() == want);
    // A plaintext client cannot talk to a TLS coordinator.
    let plain = format!("http://127.0.0.1:{}", addr.port());
    let refused = match client::connect(&plain, None, None).await {
        Err(_) => true,
        Ok(mut c) => client::status(&mut c, None).await.is_err(),
    };
    assert!(refused, "plaintext request to a TLS coordinator must fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_answers_without_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let (listener, addr) = server::bind("127.0.0.1:0").await.unwrap();
    let opts = options(&tmp.path().join("state"));
    let options = ServeOptions {
        credentials: Credentials {
            client: Some("secret".into()),
            ..Default::default()
        },
        ..ServeOptions::new(opts)
    };
    tokio::spawn(server::serve(options, listener, std::future::pending()));
    let url = format!("http://{addr}");
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // The job API still requires the token.
    let mut c = client::connect(&url, None, None).await.unwrap();
    assert!(
        client::status(&mut c, None)
            .await
            .unwrap_err()
            .to_string()
            .contains("missing cluster token")
    );
}

/// A client that goes away while its submit is in flight (its RPC future dropped at every
/// point from the first microsecond on) never leaves the output claimed by a job that does not
/// exist: a later submit to the same output succeeds, at the latest once the abandoned job
/// (created whole or not at all) has finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_submit_abandoned_mid_flight_never_strands_its_output() {
    let tmp = tempfile::tempdir().unwrap();
    let url = start(&tmp.path().join("state")).await;
    spawn_worker(&url, "a");
    let yaml = std::fs::read_to_string(golden().join("cases/ties_f32/config.yml")).unwrap();
    let options = MergeOptions {
        random_seed: Some(1),
        out_shard_size: 5_000_000_000,
        copy_tokenizer: true,
        write_model_card: true,
        allow_crimes: false,
        unsafe_truncate_embeddings: false,
    };
    for (i, micros) in [1u64, 50, 200, 500, 1000, 2000, 4000, 8000].into_iter().enumerate() {
        let out = tmp.path().join(format!("out-{i}")).display().to_string();
        let mut c = client::connect(&url, None, None).await.unwrap();
        let abandoned = client::submit(&mut c, yaml.clone(), "c.yml".into(), out.clone(), options);
        let _ = tokio::time::timeout(Duration::from_micros(micros), abandoned).await;
        drop(c);
        let mut c = client::connect(&url, None, None).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match client::submit(&mut c, yaml.clone(), "c.yml".into(), out.clone(), options).await {
                Ok((job, _)) => {
                    let s = client::wait(&mut c, &job, false).await.unwrap();
                    assert_eq!(s.state, JobState::Succeeded as i32, "{s:?}");
                    break;
                }
                Err(client::ClientError::Rpc(s)) if s.code() == tonic::Code::FailedPrecondition => {
                    // The abandoned job is being created or runs: it must show up and finish.
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "after {micros} µs: the output stayed held for 30 s: {}",
                        s.message()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("after {micros} µs: {e}"),
            }
        }
    }
}
