//! `shardmerge multi` as users run it, against `mergekit-multi` 0.1.5's output for the same
//! multi-stage config (`tests/golden/multi/`, made by `tests/golden/regen.sh`): every stage's
//! tensors and `mergekit_config.yml` byte-identical, `config.json` equal, the model card equal
//! up to the order of its model list; then `--lazy` skips finished stages. On a cluster
//! (`shardmerge submit` of the same kind of file, S3 everywhere) every stage is a job and gives
//! the embedded bytes.

mod support;

use shardmerge_worker::storage::test_server::TestS3;
use std::path::{Path, PathBuf};
use std::process::Command;

fn golden() -> PathBuf {
    support::golden().canonicalize().unwrap()
}

/// A model card with its bullet list sorted (mergekit lists models in set order) and
/// shardmerge's seed line removed.
fn normalized_card(card: &str) -> String {
    let mut lines: Vec<&str> = card
        .lines()
        .filter(|l| !l.starts_with("Merged by shardmerge with random seed"))
        .collect();
    let first = lines.iter().position(|l| l.starts_with("* ")).unwrap_or(0);
    let end = first + lines[first..].iter().take_while(|l| l.starts_with("* ")).count();
    lines[first..end].sort_unstable();
    lines.join("\n").trim_end().to_string()
}

fn compare_stage(want: &Path, got: &Path) {
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    for f in ["model.safetensors", "mergekit_config.yml"] {
        assert!(
            read(&want.join(f)) == read(&got.join(f)),
            "{}: {f} differs from mergekit-multi's",
            got.display()
        );
    }
    let json = |p: &Path| -> serde_json::Value { serde_json::from_slice(&read(&p.join("config.json"))).unwrap() };
    assert_eq!(json(want), json(got), "{}: config.json", got.display());
    let card = |p: &Path| String::from_utf8(read(&p.join("README.md"))).unwrap();
    assert_eq!(
        normalized_card(&card(want)),
        normalized_card(&card(got)),
        "{}: README.md",
        got.display()
    );
}

/// The stage lines of `--output json` (`shardmerge multi`, or `shardmerge submit` of a
/// multi-stage config), in order: (name, `"final"` for the unnamed merge; outcome; output;
/// job id, if it ran as a job).
fn stage_lines(stdout: &str) -> Vec<(String, String, String, Option<String>)> {
    stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
            let text = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("no `{k}` in {v}")).to_string();
            let name = if v["stage"].is_null() {
                "final".into()
            } else {
                text("stage")
            };
            (
                name,
                text("outcome"),
                text("output"),
                v.get("job_id").map(|_| text("job_id")),
            )
        })
        .collect()
}

/// (name, outcome, output) of each line of [`stage_lines`], for runs without jobs.
fn outcomes(stdout: &str) -> Vec<(String, String, String)> {
    stage_lines(stdout)
        .into_iter()
        .map(|(name, outcome, output, job)| {
            assert_eq!(job, None, "{name} ran embedded: {stdout}");
            (name, outcome, output)
        })
        .collect()
}

fn owned(v: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    v.iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
}

#[test]
fn multi_matches_mergekit_multi_and_skips_finished_stages() {
    let case = golden().join("multi/two_stage");
    let tmp = tempfile::tempdir().unwrap();
    // Run where the config's relative paths resolve, as mergekit-multi was run.
    std::os::unix::fs::symlink(golden().join("models"), tmp.path().join("models")).unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_shardmerge"))
            .current_dir(tmp.path())
            .arg("multi")
            .arg(case.join("config.yml"))
            .args(["-I", "./intermediate", "--out-path", "./final", "--random-seed", "7"])
            .args(["--output", "json"])
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "shardmerge multi failed: {stderr}");
        outcomes(&String::from_utf8_lossy(&out.stdout))
    };
    let merged = [("mid", "merged", "./intermediate/mid"), ("final", "merged", "./final")];
    assert_eq!(run(&[]), owned(&merged));
    for stage in ["intermediate/mid", "final"] {
        compare_stage(&case.join("expected").join(stage), &tmp.path().join(stage));
    }

    // --lazy (the default) skips both; --no-lazy merges again, to the same bytes.
    let skipped = [
        ("mid", "skipped", "./intermediate/mid"),
        ("final", "skipped", "./final"),
    ];
    assert_eq!(run(&[]), owned(&skipped));
    std::fs::remove_file(tmp.path().join("final/model.safetensors")).unwrap();
    assert_eq!(run(&[]), owned(&[skipped[0], merged[1]]));
    assert_eq!(run(&["--no-lazy"]), owned(&merged));
    for stage in ["intermediate/mid", "final"] {
        compare_stage(&case.join("expected").join(stage), &tmp.path().join(stage));
    }
}

#[test]
fn multi_refuses_an_unnamed_merge_without_out_path() {
    let case = golden().join("multi/two_stage");
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shardmerge"))
        .current_dir(tmp.path())
        .arg("multi")
        .arg(case.join("config.yml"))
        .args(["-I", "./intermediate"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--out-path is required"), "{stderr}");
    assert!(
        !tmp.path().join("intermediate/mid").exists(),
        "nothing runs before the check"
    );
}

/// Three stages, each reading the one before, and a final merge reading two of them.
const THREE: &str = "\
name: a
models:
  - model: MODELS/base_bf16
    parameters: {weight: 0.2}
  - model: MODELS/ft1_bf16
    parameters: {weight: 0.5}
  - model: MODELS/ft2_bf16
    parameters: {weight: 0.5}
merge_method: linear
dtype: bfloat16
---
name: b
models:
  - model: MODELS/base_bf16
  - model: a
merge_method: slerp
base_model: MODELS/base_bf16
parameters:
  t:
    - filter: mlp
      value: [0, 0.5, 1]
    - value: 0.3
dtype: bfloat16
---
models:
  - model: MODELS/base_bf16
  - model: a
    parameters: {density: 0.5, weight: 0.6}
  - model: b
    parameters: {density: 0.4, weight: 0.4}
merge_method: dare_ties
base_model: MODELS/base_bf16
dtype: bfloat16
";

#[tokio::test(flavor = "multi_thread")]
async fn a_three_stage_pipeline_on_the_cluster_equals_the_embedded_multi() {
    let s3 = TestS3::start().await;
    for m in ["base_bf16", "ft1_bf16", "ft2_bf16"] {
        s3.upload_dir(&golden().join("models").join(m), "models", m);
    }
    let inter = s3.create_bucket("inter");
    let out = s3.create_bucket("out");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("three.yml");
    std::fs::write(&cfg, THREE.replace("MODELS", "s3://models")).unwrap();
    let coord = support::coordinator(&s3, &tmp.path().join("state"), &[], None);
    let _w = support::KillOnDrop((0..2).map(|_| support::worker(&s3, &coord.url, None)).collect());
    let submit = |extra: &[&str]| {
        let mut args = vec![
            "submit",
            cfg.to_str().unwrap(),
            "s3://out/final",
            "--coordinator",
            &coord.url,
        ];
        args.extend(["-I", "s3://inter/run", "--random-seed", "9", "--output", "json"]);
        args.extend(extra);
        let (ok, out, log) = tokio::task::block_in_place(|| support::client(&s3, &args, None));
        assert!(ok, "{log}");
        stage_lines(&out)
    };
    // Every stage ran as a job (in dependency order), merging into its output.
    let all_jobs = |lines: &[(String, String, String, Option<String>)]| {
        let want = [
            ("a", "s3://inter/run/a"),
            ("b", "s3://inter/run/b"),
            ("final", "s3://out/final"),
        ];
        assert_eq!(lines.len(), want.len(), "{lines:?}");
        for ((name, outcome, output, job), (stage, target)) in lines.iter().zip(want) {
            assert_eq!(
                (name.as_str(), outcome.as_str(), output.as_str()),
                (stage, "merged", target)
            );
            assert!(
                job.as_ref().is_some_and(|j| j.starts_with("job-")),
                "{stage} ran as a job: {lines:?}"
            );
        }
    };
    all_jobs(&submit(&[]));

    // The embedded run of the same stages, on local copies of the models.
    let local = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(golden().join("models"), local.path().join("models")).unwrap();
    let local_cfg = local.path().join("three.yml");
    std::fs::write(&local_cfg, THREE.replace("MODELS", "./models")).unwrap();
    let st = Command::new(env!("CARGO_BIN_EXE_shardmerge"))
        .current_dir(local.path())
        .args([
            "multi",
            local_cfg.to_str().unwrap(),
            "-I",
            "./inter",
            "--out-path",
            "./final",
        ])
        .args(["--random-seed", "9", "--quiet"])
        .status()
        .unwrap();
    assert!(st.success());
    let same_text = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap()
            .replace("s3://models/", "./models/")
            .replace("s3://inter/run/", "./inter/")
    };
    for (cluster, embedded) in [
        (inter.join("run/a"), local.path().join("inter/a")),
        (inter.join("run/b"), local.path().join("inter/b")),
        (out.join("final"), local.path().join("final")),
    ] {
        let files = support::model_files(&embedded);
        assert!(!files.is_empty());
        assert!(
            support::model_files(&cluster) == files,
            "{}: tensors differ",
            cluster.display()
        );
        assert_eq!(
            same_text(&cluster.join("mergekit_config.yml")),
            std::fs::read_to_string(embedded.join("mergekit_config.yml")).unwrap(),
            "{}: mergekit_config.yml",
            cluster.display()
        );
    }

    // Lazy by default: a rerun submits nothing; --no-lazy runs every stage again.
    let lines = submit(&[]);
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (name, outcome, _, job) in &lines {
        assert!(outcome == "skipped" && job.is_none(), "{name} was skipped: {lines:?}");
    }
    all_jobs(&submit(&["--no-lazy"]));
}
