//! Resuming from the journal: a job keeps the plan it was journaled with (its unit size), and a
//! journal that does not match what this coordinator plans is refused with a clear error, never
//! applied and never a panic (nor is a job whose pinned inputs, tokenizer files included,
//! changed). In-process coordinators and workers over loopback gRPC, local
//! storage.

use shardmerge_coordinator::cluster::allow::AllowList;
use shardmerge_coordinator::cluster::client;
use shardmerge_coordinator::cluster::scheduler::SchedulerConfig;
use shardmerge_coordinator::cluster::server::{self, ServeOptions};
use shardmerge_coordinator::cluster::service::CoordinatorOptions;
use shardmerge_coordinator::demo::{SynthSpec, dare_ties_recipe, write_family};
use shardmerge_proto::v1::{JobState, JobStatus, MergeOptions};
use shardmerge_worker::node::{WorkerOptions, run_worker};
use shardmerge_worker::safetensors_io::Dtype;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::oneshot;

/// About 33 MB of bf16: several 5 MiB units, one 64 MiB unit per shard.
const SPEC: SynthSpec = SynthSpec {
    vocab: 4096,
    hidden: 512,
    intermediate: 1376,
    layers: 4,
    dtype: Dtype::BF16,
};

struct Running {
    url: String,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Graceful shutdown; returns once the state directory is unlocked.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.done.await.unwrap();
    }
}

async fn coordinator(state: &Path, unit_target: u64) -> Running {
    let (listener, addr) = server::bind("127.0.0.1:0").await.unwrap();
    let opts = CoordinatorOptions {
        state_dir: state.to_path_buf(),
        scheduler: SchedulerConfig {
            lease: Duration::from_secs(3),
            heartbeat: Duration::from_millis(500),
            ..Default::default()
        },
        unit_target,
        chunk_size: 0,
        memory_limit: None,
        model_root: PathBuf::from("/"),
        metrics: None,
        allow: AllowList::new::<&str>(&[], true).unwrap(),
        retention: Duration::from_secs(3600),
    };
    let (stop, rx) = oneshot::channel();
    let done = tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.await;
        };
        server::serve(ServeOptions::new(opts), listener, shutdown)
            .await
            .unwrap();
    });
    Running {
        url: format!("http://{addr}"),
        stop,
        done,
    }
}

fn spawn_worker(url: &str) -> tokio::task::JoinHandle<()> {
    let opts = WorkerOptions {
        coordinator: url.to_string(),
        token: None,
        slots: 1,
        threads: Some(1),
        name: "resume-test".into(),
        tls_ca: None,
        drain: Duration::from_secs(1),
        allow: AllowList::new::<&str>(&[], true).unwrap(),
        memory_limit: None,
    };
    tokio::spawn(async move {
        let _ = run_worker(opts, std::future::pending()).await;
    })
}

/// The synthetic family, the DARE-TIES config and the embedded merge of it (the reference).
fn setup(dir: &Path) -> (String, PathBuf) {
    let [base, ft, _] = write_family(&SPEC, &dir.join("models")).unwrap();
    let yaml = dare_ties_recipe(&base, &ft);
    let cfg = dir.join("config.yml");
    std::fs::write(&cfg, &yaml).unwrap();
    let reference = dir.join("reference");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_shardmerge"))
        .args(["merge", cfg.to_str().unwrap(), reference.to_str().unwrap()])
        .args(["--random-seed", "7", "--out-shard-size", "20m", "--quiet"])
        .status()
        .unwrap();
    assert!(st.success());
    (yaml, reference)
}

fn options() -> MergeOptions {
    MergeOptions {
        random_seed: Some(7),
        out_shard_size: 20_000_000,
        copy_tokenizer: true,
        write_model_card: true,
        allow_crimes: false,
        unsafe_truncate_embeddings: false,
    }
}

async fn submit(url: &str, yaml: &str, out: &Path) -> (String, JobStatus) {
    let mut c = client::connect(url, None, None).await.unwrap();
    let (job, _) = client::submit(
        &mut c,
        yaml.to_string(),
        "config.yml".into(),
        out.display().to_string(),
        options(),
    )
    .await
    .unwrap();
    let st = client::status(&mut c, Some(job.clone())).await.unwrap().remove(0);
    (job, st)
}

async fn wait_final(url: &str, job: &str) -> JobStatus {
    let mut c = client::connect(url, None, None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), client::wait(&mut c, job, false))
        .await
        .expect("job did not finish in time")
        .unwrap()
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .filter(|(n, p)| {
                    p.is_file() && (n.ends_with(".safetensors") || n.ends_with(".json") || n.starts_with('.'))
                })
                .map(|(n, p)| (n, std::fs::read(p).unwrap()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every entry of `dir` (hidden ones included), for "nothing at the output" checks.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits (up to 20 s) until at most `n` entries are left in `dir` (cleanup runs in the
/// background after a job fails), and returns what is left.
async fn cleaned_up(dir: &Path, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = entries(dir);
        if left.len() <= n || std::time::Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_with_another_unit_size_finishes_the_job_with_its_journaled_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (yaml, reference) = setup(tmp.path());
    let state = tmp.path().join("state");
    let out = tmp.path().join("out");
    // Journaled with 5 MiB units; no worker yet.
    let a = coordinator(&state, 5 << 20).await;
    let (job, before) = submit(&a.url, &yaml, &out).await;
    assert!(before.units_total > 3, "{before:?}");
    a.stop().await;
    // Restarted with 64 MiB units (a changed flag or Helm value): the job keeps its plan.
    let b = coordinator(&state, 64 << 20).await;
    let workers = [spawn_worker(&b.url), spawn_worker(&b.url)];
    let st = wait_final(&b.url, &job).await;
    assert_eq!(st.state, JobState::Succeeded as i32, "{st:?}");
    assert_eq!(st.units_total, before.units_total, "the journaled unit size is used");
    let want: Vec<_> = files(&reference)
        .into_iter()
        .filter(|f| f.0.ends_with(".safetensors") || f.0.ends_with("index.json"))
        .collect();
    let got: Vec<_> = files(&out)
        .into_iter()
        .filter(|f| f.0.ends_with(".safetensors") || f.0.ends_with("index.json") || f.0.starts_with('.'))
        .collect();
    assert_eq!(
        want.iter().map(|f| &f.0).collect::<Vec<_>>(),
        got.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for (w, g) in want.iter().zip(&got) {
        assert!(w.1 == g.1, "{} differs from the embedded merge", w.0);
    }
    // A new job on the restarted coordinator uses the new unit size.
    let (_, fresh) = submit(&b.url, &yaml, &tmp.path().join("out2")).await;
    assert!(fresh.units_total < before.units_total, "{fresh:?} vs {before:?}");
    for w in workers {
        w.abort();
    }
    b.stop().await;
}

/// Rewrites the journal of `job`: `f` edits each parsed line.
fn tamper(state: &Path, job: &str, f: impl Fn(&mut serde_json::Value)) {
    let path = state.join("jobs").join(format!("{job}.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        f(&mut v);
        out.push_str(&serde_json::to_string(&v).unwrap());
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_journal_that_does_not_match_the_plan_is_refused_clearly_and_cleaned_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (yaml, _) = setup(tmp.path());
    let state = tmp.path().join("state");
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit, &[&str]); 3] = [
        (
            "fingerprint",
            |v| {
                if v["kind"] == "job" {
                    let fp = v["fingerprint"].as_str().unwrap().replace("units=", "units=9");
                    v["fingerprint"] = fp.into();
                }
            },
            &["plan changed", "units "],
        ),
        (
            "missing upload",
            |v| {
                if v["kind"] == "uploads" {
                    v["ids"].as_array_mut().unwrap().pop();
                }
            },
            &["upload ids for 2 output shards"],
        ),
        (
            "extra upload",
            |v| {
                if v["kind"] == "uploads" {
                    v["ids"].as_array_mut().unwrap().push("0123-abcd".into());
                }
            },
            &["upload ids for 2 output shards"],
        ),
    ];
    for (what, edit, expect) in cases {
        let out = tmp.path().join(format!("out-{}", what.replace(' ', "-")));
        let a = coordinator(&state, 5 << 20).await;
        let (job, _) = submit(&a.url, &yaml, &out).await;
        a.stop().await;
        assert!(
            !entries(&out).is_empty(),
            "{what}: the uploads are staged at the output"
        );
        tamper(&state, &job, edit);
        let b = coordinator(&state, 5 << 20).await;
        let st = wait_final(&b.url, &job).await;
        assert_eq!(st.state, JobState::Failed as i32, "{what}: {st:?}");
        for e in expect {
            assert!(st.error.contains(e), "{what}: `{e}` not in {:?}", st.error);
        }
        // Cleaned up: the uploads the journal names are aborted (a missing one can't be).
        let left = cleaned_up(&out, usize::from(what == "missing upload")).await;
        assert!(
            left.len() <= usize::from(what == "missing upload"),
            "{what}: left at the output: {left:?}"
        );
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_input_rewritten_after_planning_fails_the_job_and_nothing_is_published() {
    let tmp = tempfile::tempdir().unwrap();
    let (yaml, _) = setup(tmp.path());
    let state = tmp.path().join("state");
    let out = tmp.path().join("out");
    let c = coordinator(&state, 5 << 20).await;
    let (job, _) = submit(&c.url, &yaml, &out).await;
    // Same size, new bytes (e.g. a fine-tune re-uploaded under the same name).
    let file = tmp.path().join("models/finetune-a/model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::thread::sleep(Duration::from_millis(20)); // a new modification time
    std::fs::write(&file, bytes).unwrap();
    let workers = [spawn_worker(&c.url)];
    let st = wait_final(&c.url, &job).await;
    assert_eq!(st.state, JobState::Failed as i32, "{st:?}");
    assert!(st.error.contains("changed since the job was planned"), "{}", st.error);
    let left = cleaned_up(&out, 0).await;
    assert!(left.is_empty(), "left at the output: {left:?}");
    for w in workers {
        w.abort();
    }
    c.stop().await;
}

/// A tokenizer file the plan read (here for a vocabulary union) is pinned like the weights:
/// rewritten between a stop and a restart, with a vocabulary and so a plan that stay the same,
/// the job is not resumed (a worker is ready to run it) and the error names the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tokenizer_rewritten_before_a_restart_fails_the_job_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/models");
    let models = tmp.path().join("models");
    for m in ["base_bf16", "chatml_bf16"] {
        std::fs::create_dir_all(models.join(m)).unwrap();
        for e in std::fs::read_dir(golden.join(m)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), models.join(m).join(e.file_name())).unwrap();
        }
    }
    let (base, chatml) = (models.join("base_bf16"), models.join("chatml_bf16"));
    let yaml = format!(
        "models:\n  - model: {b}\n    parameters: {{weight: 0.5}}\n  - model: {c}\n    parameters: {{weight: 0.5}}\n\
         merge_method: linear\nbase_model: {b}\ndtype: bfloat16\ntokenizer_source: union\n",
        b = base.display(),
        c = chatml.display()
    );
    let state = tmp.path().join("state");
    let out = tmp.path().join("out");
    let a = coordinator(&state, 5 << 20).await;
    let (job, before) = submit(&a.url, &yaml, &out).await;
    assert_eq!(before.state, JobState::Running as i32, "{before:?}");
    a.stop().await;
    // The base's tokenizer (the output's) gets a lowercasing normalizer: the same vocabulary
    // and rows, another tokenizer.
    let file = base.join("tokenizer.json");
    let mut tokenizer: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    tokenizer["normalizer"] = serde_json::json!({"type": "Lowercase"});
    std::thread::sleep(Duration::from_millis(20)); // a new modification time
    std::fs::write(&file, serde_json::to_vec_pretty(&tokenizer).unwrap()).unwrap();
    let b = coordinator(&state, 5 << 20).await;
    let workers = [spawn_worker(&b.url)];
    let st = wait_final(&b.url, &job).await;
    assert_eq!(st.state, JobState::Failed as i32, "{st:?}");
    for needle in [
        file.display().to_string().as_str(),
        "changed",
        "vocabulary and tokenizer",
    ] {
        assert!(st.error.contains(needle), "`{needle}` not in {:?}", st.error);
    }
    let left = cleaned_up(&out, 0).await;
    assert!(left.is_empty(), "left at the output: {left:?}");
    for w in workers {
        w.abort();
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_job_to_an_output_a_live_job_owns_is_refused_until_it_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let (yaml, _) = setup(tmp.path());
    let state = tmp.path().join("state");
    let out = tmp.path().join("out");
    let c = coordinator(&state, 5 << 20).await;
    let (job, _) = submit(&c.url, &yaml, &out).await;
    let mut cl = client::connect(&c.url, None, None).await.unwrap();
    let second = client::submit(
        &mut cl,
        yaml.clone(),
        "c.yml".into(),
        format!("{}/", out.display()),
        options(),
    )
    .await;
    let err = format!("{:#}", second.unwrap_err());
    assert!(err.contains(&format!("being written by job {job}")), "{err}");
    // Cancelled: the output is free again (after its cleanup).
    let st = client::cancel(&mut cl, job.clone()).await.unwrap();
    assert_eq!(st.state, JobState::Cancelled as i32);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let third = loop {
        let r = client::submit(
            &mut cl,
            yaml.clone(),
            "c.yml".into(),
            out.display().to_string(),
            options(),
        )
        .await;
        if r.is_ok() || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (third, _) = third.unwrap();
    assert_ne!(third, job);
    // A cancelled job stays cancelled, and cannot be cancelled again.
    let again = format!("{:#}", client::cancel(&mut cl, job.clone()).await.unwrap_err());
    assert!(again.contains("already finished (cancelled)"), "{again}");
    c.stop().await;
}
