//! Vocabulary alignment through the cluster with models and outputs on S3 (issue 11): real
//! coordinator and worker processes over s3s-fs, models uploaded through the S3 API. The
//! planner reads each model's tokenizer files from S3 (they come with the model directory's
//! headers), aligned tensors run as chunk tasks (`--chunk-size` cuts their rows), and the
//! result is mergekit 0.1.5's: tensors byte for byte, tokenizer files equal in content, as the
//! golden suite compares them. `--unsafe-truncate-embeddings` travels with `submit`. Models on
//! S3 without a usable `tokenizer.json` are refused at submit, naming the model's URI.

mod support;

use shardmerge_worker::storage::test_server::TestS3;
use std::path::{Path, PathBuf};
use support::golden_compare::tokenizer_files_equal;

/// The golden models the cases read.
const MODELS: [&str; 4] = ["base_bf16", "chatml_bf16", "rev_bf16", "chatml_tied_bf16"];

/// Golden cases run on the cluster (with their `args` file's flags).
const CASES: [&str; 4] = [
    "vocab_union_slerp_bf16",
    "vocab_dare_ties_bf16",
    "vocab_tied_linear_bf16",
    "vocab_truncate_linear_bf16",
];

fn case_dir(case: &str) -> PathBuf {
    support::golden().join("cases").join(case)
}

/// The flags of the case's `args` file (`--random-seed N`, `--unsafe-truncate-embeddings`).
fn case_args(case: &str) -> Vec<String> {
    let args = std::fs::read_to_string(case_dir(case).join("args")).unwrap_or_default();
    args.split_whitespace().map(str::to_string).collect()
}

/// Submits `config` to `s3://out/NAME` and waits; returns (success, stdout + stderr).
fn submit(s3: &TestS3, url: &str, config: &Path, name: &str, extra: &[String]) -> (bool, String) {
    let out = format!("s3://out/{name}");
    let mut args: Vec<&str> = vec!["submit", config.to_str().unwrap(), &out, "--coordinator", url, "--wait"];
    args.extend(extra.iter().map(String::as_str));
    let (ok, stdout, stderr) = tokio::task::block_in_place(|| support::client(s3, &args, None));
    (ok, format!("{stdout}{stderr}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn vocab_golden_cases_on_s3_through_the_cluster_match_mergekit() {
    let s3 = TestS3::start().await;
    for m in MODELS {
        s3.put_dir(&support::golden().join("models").join(m), "models", m).await;
    }
    let out = s3.create_bucket("out");
    let tmp = tempfile::tempdir().unwrap();
    // 499-element chunks: the aligned embeddings and lm_heads (66 rows of 32) split mid-row.
    let coord = support::coordinator(&s3, &tmp.path().join("state"), &["--chunk-size", "998"], None);
    let _w = support::KillOnDrop((0..2).map(|_| support::worker(&s3, &coord.url, None)).collect());
    let mut failures = Vec::new();
    for case in CASES {
        let config = support::s3_config(case, tmp.path());
        let (ok, log) = submit(&s3, &coord.url, &config, case, &case_args(case));
        assert!(ok, "{case}: the job failed: {log}");
        let expected = case_dir(case).join("expected");
        let ours = out.join(case);
        let want = support::model_files(&expected);
        assert!(!want.is_empty(), "{case}: no golden tensors");
        let got = support::model_files(&ours);
        let names = |v: &[(String, Vec<u8>)]| v.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
        if names(&got) != names(&want) {
            failures.push(format!("{case}: files {:?}, mergekit {:?}", names(&got), names(&want)));
            continue;
        }
        for (g, w) in got.iter().zip(&want) {
            if g.1 != w.1 {
                failures.push(format!("{case}: {} differs from mergekit's", g.0));
            }
        }
        // The truncated case copies the donor's tokenizer: byte for byte.
        let rebuilt = case != "vocab_truncate_linear_bf16";
        if let Err(e) = tokenizer_files_equal(&expected, &ours, rebuilt) {
            failures.push(format!("{case}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Without the flag the truncated case's vocabulary mismatch is refused at submit.
    let case = "vocab_truncate_linear_bf16";
    let config = support::s3_config(case, tmp.path());
    let seed = vec!["--random-seed".to_string(), "42".to_string()];
    let (ok, log) = submit(&s3, &coord.url, &config, "no-flag", &seed);
    assert!(!ok, "a vocabulary mismatch without the flag must fail: {log}");
    assert!(
        log.contains("vocabulary sizes differ") && log.contains("--unsafe-truncate-embeddings"),
        "{log}"
    );
    assert!(!out.join("no-flag").exists(), "nothing written for a refused job");
}

/// A model variant: name, `tokenizer.json`, `tokenizer.model`, phrases of the refusal.
type Variant = (
    &'static str,
    Option<&'static [u8]>,
    Option<&'static [u8]>,
    &'static [&'static str],
);

#[tokio::test(flavor = "multi_thread")]
async fn models_on_s3_without_a_usable_tokenizer_are_refused_naming_their_uri() {
    let s3 = TestS3::start().await;
    s3.put_dir(&support::golden().join("models/base_bf16"), "models", "base_bf16")
        .await;
    let src = support::golden().join("models/chatml_bf16");
    let tmp = tempfile::tempdir().unwrap();
    // Each variant of chatml_bf16, uploaded through the S3 API as `models/NAME`: its
    // tokenizer.json, its tokenizer.model, what the refusal must say.
    let variants: [Variant; 3] = [
        ("no_tokenizer", None, None, &["has no `tokenizer.json`"]),
        (
            "sentencepiece",
            None,
            Some(b"\x0a\x05hello"),
            &["SentencePiece", "tokenizer.model"],
        ),
        (
            "corrupt",
            Some(b"{\"model\": "),
            None,
            &["tokenizer.json", "is not a valid tokenizer"],
        ),
    ];
    for (name, tokenizer, spm, _) in &variants {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer_config.json"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        if let Some(t) = tokenizer {
            std::fs::write(dir.join("tokenizer.json"), t).unwrap();
        }
        if let Some(m) = spm {
            std::fs::write(dir.join("tokenizer.model"), m).unwrap();
        }
        s3.put_dir(&dir, "models", name).await;
    }
    let out = s3.create_bucket("out");
    let coord = support::coordinator(&s3, &tmp.path().join("state"), &[], None);
    for (name, _, _, wants) in &variants {
        let yaml = std::fs::read_to_string(case_dir("vocab_tied_linear_bf16").join("config.yml"))
            .unwrap()
            .replace("./models/chatml_tied_bf16", &format!("s3://models/{name}"))
            .replace("./models/", "s3://models/");
        let config = tmp.path().join(format!("{name}.yml"));
        std::fs::write(&config, yaml).unwrap();
        let (ok, log) = submit(&s3, &coord.url, &config, name, &[]);
        assert!(!ok, "{name}: the submit must fail: {log}");
        assert!(
            log.contains(&format!("s3://models/{name}")),
            "{name}: no model URI in: {log}"
        );
        for w in *wants {
            assert!(log.contains(w), "{name}: {w:?} not in: {log}");
        }
        assert!(!out.join(name).exists(), "{name}: nothing written for a refused job");
    }
}
