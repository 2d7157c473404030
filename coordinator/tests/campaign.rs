//! `shardmerge automerge` and `shardmerge campaign report` as users run them: a campaign on a
//! local multi-process cluster over s3s-fs, killed with `kill -9` and rerun; an embedded one
//! with a pair that cannot merge; every committed merge byte-identical to `shardmerge merge`
//! on the YAML and seed its dataset line records.

mod support;

use shardmerge_coordinator::campaign::record::{self, Record, State};
use shardmerge_worker::storage::test_server::TestS3;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const MODELS: [&str; 4] = ["base_bf16", "ft1_bf16", "ft2_bf16", "ft1_bf16_sharded"];

fn read_dataset(path: &Path) -> Vec<Record> {
    match std::fs::read_to_string(path) {
        Ok(text) => record::parse(&text, "campaign.jsonl").unwrap(),
        Err(_) => Vec::new(),
    }
}

/// `shardmerge merge` of `r`'s YAML (model references mapped by `local`) with its seed; the
/// safetensors files it wrote.
fn reference(r: &Record, local: impl Fn(&str) -> String, dir: &Path) -> Vec<(String, Vec<u8>)> {
    let cfg = dir.join(format!("{}.yml", r.name));
    std::fs::write(&cfg, local(&r.yaml)).unwrap();
    let out = dir.join(format!("{}-reference", r.name));
    let st = Command::new(bin())
        .current_dir(golden())
        .arg("merge")
        .arg(&cfg)
        .arg(&out)
        .args(["--random-seed", &r.seed.to_string(), "--quiet"])
        .status()
        .unwrap();
    assert!(st.success(), "reference merge of {}", r.name);
    model_files(&out)
}

/// A hook that sleeps a little (so a campaign takes a while), fails for merge 2, and otherwise
/// prints a log line and then a JSON object with the output it was given.
fn hook(dir: &Path) -> String {
    let p = dir.join("hook.sh");
    std::fs::write(
        &p,
        "sleep 0.4\nif [ \"$SHARDMERGE_MERGE_INDEX\" = 2 ]; then echo 'eval crashed' >&2; exit 3; fi\n\
         echo 'evaluating...'\necho \"{\\\"acc\\\": 0.$SHARDMERGE_MERGE_INDEX, \\\"output\\\": \\\"$SHARDMERGE_MERGE_OUTPUT\\\"}\"\n",
    )
    .unwrap();
    format!("sh {}", p.display())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_campaign_resumes_after_kill_9_and_every_merge_is_byte_exact() {
    let s3 = TestS3::start().await;
    for m in MODELS {
        s3.upload_dir(&golden().join("models").join(m), "models", m);
    }
    let bucket = s3.create_bucket("out");
    let tmp = tempfile::tempdir().unwrap();
    let pool = tmp.path().join("pool.txt");
    let lines: Vec<String> = MODELS.iter().map(|m| format!("s3://models/{m}")).collect();
    std::fs::write(&pool, lines.join("\n") + "\n").unwrap();
    let coord = coordinator(&s3, &tmp.path().join("state"), &[], None);
    let _workers = KillOnDrop((0..2).map(|_| worker(&s3, &coord.url, None)).collect());
    let then = hook(tmp.path());
    let args = |out: &str, with_hook: bool| {
        let mut a: Vec<String> = [
            "automerge",
            "--pool",
            pool.to_str().unwrap(),
            "--count",
            "8",
            "--seed",
            "11",
            "--out",
            out,
            "--coordinator",
            &coord.url,
            "--max-running",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if with_hook {
            a.extend(["--then".to_string(), then.clone()]);
        }
        a
    };
    let dataset = bucket.join("camp/campaign.jsonl");

    // First run: kill -9 once two merges are recorded.
    let mut cmd = Command::new(bin());
    s3_env(&mut cmd, &s3);
    let mut child = cmd
        .args(args("s3://out/camp", true))
        .current_dir(golden())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let done = read_dataset(&dataset)
            .iter()
            .filter(|r| r.state != State::Pending)
            .count();
        if done >= 2 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the campaign exited early");
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no merge finished in 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = read_dataset(&dataset);
    assert_eq!(before.len(), 8, "every draw is recorded from the start");
    let finished: Vec<&Record> = before.iter().filter(|r| r.state != State::Pending).collect();
    assert!(finished.len() < 8, "killed before the end: {} finished", finished.len());

    // Rerun: completes only what is missing.
    let (ok, _, err) = tokio::task::block_in_place(|| {
        let a = args("s3://out/camp", true);
        client(&s3, &a.iter().map(String::as_str).collect::<Vec<_>>(), None)
    });
    assert!(ok, "rerun failed: {err}");
    let after = read_dataset(&dataset);
    assert_eq!(after.len(), 8);
    for f in &finished {
        assert_eq!(
            &after[f.index], *f,
            "merge {} was done before the kill and is not redone",
            f.index
        );
    }
    for r in &after {
        assert_eq!(r.state, State::Committed, "{}: {:?}", r.name, r.error);
        assert_eq!(r.output, format!("s3://out/camp/{}", r.name));
        if r.index == 2 {
            assert!(r.scores.is_none());
            let e = r.hook_error.as_deref().unwrap_or("");
            assert!(e.contains("exited") && e.contains("eval crashed"), "{e}");
        } else {
            let s = r
                .scores
                .as_ref()
                .unwrap_or_else(|| panic!("{}: no scores ({:?})", r.name, r.hook_error));
            assert_eq!(s["output"], serde_json::Value::String(r.output.clone()));
        }
        let got = model_files(&bucket.join("camp").join(&r.name));
        let want = reference(r, |y| y.replace("s3://models/", "./models/"), tmp.path());
        assert!(!want.is_empty());
        assert!(
            got == want,
            "{}: the campaign's merge differs from `shardmerge merge`",
            r.name
        );
    }
    let methods: Vec<&str> = after.iter().map(|r| r.method.as_str()).collect();
    assert!(
        methods.contains(&"slerp") && methods.contains(&"dare_ties"),
        "{methods:?}"
    );

    // The same --seed draws the same campaign (elsewhere): same lines but for the output.
    let (ok, _, err) = tokio::task::block_in_place(|| {
        let a = args("s3://out/again", false);
        client(&s3, &a.iter().map(String::as_str).collect::<Vec<_>>(), None)
    });
    assert!(ok, "second campaign failed: {err}");
    let again = read_dataset(&bucket.join("again/campaign.jsonl"));
    assert_eq!(again.len(), 8);
    for (a, b) in after.iter().zip(&again) {
        assert_eq!(
            (a.index, &a.name, &a.models, &a.method, a.seed, &a.yaml),
            (b.index, &b.name, &b.models, &b.method, b.seed, &b.yaml)
        );
        assert_eq!(b.state, State::Committed);
        assert!(model_files(&bucket.join("camp").join(&a.name)) == model_files(&bucket.join("again").join(&b.name)));
    }
}

#[test]
fn an_embedded_campaign_skips_pairs_that_cannot_merge_and_reports() {
    let tmp = tempfile::tempdir().unwrap();
    // A model of another shape: 2 layers, hidden 16.
    let synth = tmp.path().join("synth");
    let st = Command::new(bin())
        .args(["synth", synth.to_str().unwrap(), "--hidden", "16", "--layers", "2"])
        .args(["--intermediate", "32", "--vocab", "64"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let odd = synth.join("base");
    let pool = tmp.path().join("pool.txt");
    let models: Vec<PathBuf> = ["base_bf16", "ft1_bf16", "ft2_bf16"]
        .iter()
        .map(|m| golden().join("models").join(m).canonicalize().unwrap())
        .chain([odd.clone()])
        .collect();
    let text: Vec<String> = models.iter().map(|m| m.display().to_string()).collect();
    std::fs::write(
        &pool,
        format!("# three golden models and one of another shape\n{}\n", text.join("\n")),
    )
    .unwrap();
    let out = tmp.path().join("camp");
    let run = || {
        let o = Command::new(bin())
            .args([
                "automerge",
                "--pool",
                pool.to_str().unwrap(),
                "--count",
                "10",
                "--seed",
                "3",
            ])
            .args(["--out", out.to_str().unwrap(), "--then", &hook(tmp.path())])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let log = run();
    let records = read_dataset(&out.join("campaign.jsonl"));
    assert_eq!(records.len(), 10, "{log}");
    let odd = odd.display().to_string();
    let mut skipped = 0;
    for r in &records {
        if r.models.contains(&odd) {
            assert_eq!(r.state, State::Skipped, "{}: {:?}", r.name, r.error);
            assert!(!r.error.as_deref().unwrap_or("").is_empty());
            assert!(!out.join(&r.name).exists(), "a skipped merge writes nothing");
            skipped += 1;
            continue;
        }
        assert_eq!(r.state, State::Committed, "{}: {:?}", r.name, r.error);
        let got = model_files(&out.join(&r.name));
        assert!(got == reference(r, str::to_string, tmp.path()), "{} differs", r.name);
    }
    assert!(
        skipped > 0 && skipped < 10,
        "{skipped} of 10 pairs include the odd model"
    );

    // A rerun finds everything done.
    run();
    assert_eq!(read_dataset(&out.join("campaign.jsonl")), records);

    let plot = tmp.path().join("scores.svg");
    let o = Command::new(bin())
        .args([
            "campaign",
            "report",
            out.to_str().unwrap(),
            "--plot",
            plot.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    let committed = records.iter().filter(|r| r.state == State::Committed).count();
    let listed: usize = table
        .lines()
        .filter(|l| l.starts_with("slerp") || l.starts_with("dare_ties"))
        .take(2)
        .map(|l| l.split_whitespace().nth(2).unwrap().parse::<usize>().unwrap())
        .sum();
    assert_eq!(listed, committed, "{table}");
    assert!(table.contains("score `acc`"), "{table}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("acc by merge method"));
}
