//! The `shardmerge` binary as users run it: mergekit-style arguments, `plan`, help and errors.

use std::path::{Path, PathBuf};
use std::process::Command;

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden")
}

fn shardmerge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shardmerge"))
}

#[test]
fn merge_accepts_mergekit_arguments_and_matches_mergekit_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let case = golden().join("cases/dare_ties_bf16_automerger");
    let output = shardmerge()
        .current_dir(golden())
        .args(["merge", "cases/dare_ties_bf16_automerger/config.yml"])
        .arg(&out)
        .args([
            "--random-seed",
            "42",
            "--cuda",
            "--lazy-unpickle",
            "--copy-tokenizer",
            "--allow-crimes",
            "-j",
            "2",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("--cuda is a mergekit flag with no effect"), "{stderr}");
    let want = std::fs::read(case.join("expected/model.safetensors")).unwrap();
    let got = std::fs::read(out.join("model.safetensors")).unwrap();
    assert!(want == got, "model.safetensors differs from mergekit's");
    assert!(out.join("tokenizer.json").exists());
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("random seed 42 (--random-seed)"), "{card}");
}

#[test]
fn no_write_model_card_and_no_copy_tokenizer_are_honoured() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let status = shardmerge()
        .current_dir(golden())
        .args(["merge", "cases/linear_bf16/config.yml"])
        .arg(&out)
        .args([
            "--no-write-model-card",
            "--no-copy-tokenizer",
            "--quiet",
            "--out-shard-size",
            "30k",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(!out.join("README.md").exists());
    assert!(!out.join("mergekit_config.yml").exists());
    assert!(!out.join("tokenizer.json").exists());
    assert!(
        out.join("model.safetensors.index.json").exists(),
        "30k shards must split the model"
    );
}

#[test]
fn yaml_random_seed_is_honoured_and_the_flag_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = std::fs::read_to_string(golden().join("cases/dare_ties_bf16_automerger/config.yml")).unwrap();
    let cfg = tmp.path().join("seeded.yml");
    std::fs::write(&cfg, format!("{yaml}random_seed: 42\n")).unwrap();
    let run = |name: &str, extra: &[&str]| -> Vec<u8> {
        let out = tmp.path().join(name);
        let st = shardmerge()
            .current_dir(golden())
            .arg("merge")
            .arg(&cfg)
            .arg(&out)
            .args(extra)
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::read(out.join("model.safetensors")).unwrap()
    };
    let expected = std::fs::read(golden().join("cases/dare_ties_bf16_automerger/expected/model.safetensors")).unwrap();
    assert!(
        run("yaml-seed", &[]) == expected,
        "YAML random_seed: 42 must reproduce mergekit --random-seed 42"
    );
    assert!(
        run("flag-wins", &["--random-seed", "7"]) != expected,
        "--random-seed must override the YAML seed"
    );
}

#[test]
fn plan_reads_headers_and_prints_layout() {
    let output = shardmerge()
        .current_dir(golden())
        .args([
            "plan",
            "cases/multishard_bf16/config.yml",
            "--out-shard-size",
            "20k",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let shards = plan["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 6, "{plan}");
    assert_eq!(shards[5]["file_name"], "model-00006-of-00006.safetensors");
    // The shards hold every tensor byte the plan writes after their headers, and each tensor once.
    let field = |s: &serde_json::Value, k: &str| s[k].as_u64().unwrap();
    let bytes: u64 = shards
        .iter()
        .map(|s| field(s, "bytes") - field(s, "header_bytes"))
        .sum();
    assert_eq!(bytes, plan["bytes_to_write"].as_u64().unwrap());
    let tensors: u64 = shards.iter().map(|s| s["tensors"].as_u64().unwrap()).sum();
    assert_eq!(
        tensors,
        plan["tasks"].as_u64().unwrap(),
        "one task per tensor without chunks"
    );
    assert!(plan["bytes_to_read"].as_u64().unwrap() > 0);
    assert!(plan["peak_memory_bytes"].as_u64().unwrap() >= plan["largest_task_bytes"].as_u64().unwrap());
    // The summary for people says the same.
    let text = shardmerge()
        .current_dir(golden())
        .args(["plan", "cases/multishard_bf16/config.yml", "--out-shard-size", "20k"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("output shards: 6"), "{text}");
}

#[test]
fn plan_shows_the_vocabulary_what_each_model_lacks_and_where_rows_come_from() {
    let plan = |case: &str| {
        let output = shardmerge()
            .current_dir(golden())
            .args(["plan", &format!("cases/{case}/config.yml"), "/tmp/unused-out"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let stdout = plan("vocab_pad_ta_bf16");
    for needle in [
        "vocabulary:    66 tokens (tokenizer source: union), 96 rows (pad_to_multiple_of)",
        "./models/base_bf16: lacks 2 (rows filled: `<|im_start|>` <- ./models/chatml_bf16 row 64, `<|im_end|>` <- ./models/chatml_bf16 row 65)",
        "./models/chatml_bf16: lacks 0\n",
        "rows 66..96: the mean of each model's aligned rows",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    let stdout = plan("vocab_tokens_linear_bf16");
    let needle = "./models/rev_bf16: lacks 2 (rows filled: `a` (forced) <- ./models/chatml_bf16 row 4, \
                  `<|im_start|>` <- zeros, `<|im_end|>` <- ./models/base_bf16 row 2)";
    assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
}

#[test]
fn errors_exit_nonzero_with_a_message_and_help_teaches() {
    let output = shardmerge()
        .args(["merge", "/nonexistent/cfg.yml", "/tmp/never"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/cfg.yml"), "{stderr}");
    let help = shardmerge().args(["merge", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--random-seed",
        "--out-shard-size",
        "--no-copy-tokenizer",
        "--workers",
        "--num-threads",
    ] {
        assert!(text.contains(flag), "help lacks {flag}");
    }
}

/// `merge` and `multi` take the same run flags (one `MergeRunArgs`), both refuse
/// `--no-safe-serialization` before reading anything, and `submit` takes `--lazy` as well as
/// `--no-lazy` for multi-stage files.
#[test]
fn merge_and_multi_share_their_run_flags_and_submit_takes_lazy() {
    for command in ["merge", "multi"] {
        let help = shardmerge().args([command, "--help"]).output().unwrap();
        let text = String::from_utf8_lossy(&help.stdout);
        for flag in [
            "--random-seed",
            "--out-shard-size",
            "--allow-crimes",
            "--chunk-size",
            "--memory-limit",
            "--workers",
            "--unsafe-truncate-embeddings",
            "--no-copy-tokenizer",
            "--no-write-model-card",
            "--quiet",
            "--num-threads",
        ] {
            assert!(text.contains(flag), "`{command} --help` lacks {flag}:\n{text}");
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let config = golden().join("cases/linear_bf16/config.yml");
    for args in [
        vec![
            "merge".into(),
            config.display().to_string(),
            tmp.path().join("a").display().to_string(),
        ],
        vec![
            "multi".into(),
            config.display().to_string(),
            "-I".into(),
            tmp.path().join("i").display().to_string(),
            "--out-path".into(),
            tmp.path().join("b").display().to_string(),
        ],
    ] {
        let output = shardmerge()
            .args(&args)
            .arg("--no-safe-serialization")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} --no-safe-serialization succeeded");
        assert!(stderr.contains("--no-safe-serialization is not supported"), "{stderr}");
        assert!(!tmp.path().join("a").exists() && !tmp.path().join("b").exists());
    }
    let help = shardmerge().args(["submit", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--lazy",
        "--no-lazy",
        "--intermediate-dir",
        "--copy-tokenizer",
        "--random-seed",
    ] {
        assert!(text.contains(flag), "`submit --help` lacks {flag}:\n{text}");
    }
}

/// `multi --help` teaches `--output json` and what a stage line holds.
#[test]
fn multi_help_teaches_its_json_output() {
    let help = shardmerge().args(["multi", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for needle in ["--output", "json", "\"outcome\":\"merged\"", "skipped"] {
        assert!(text.contains(needle), "`multi --help` lacks {needle}:\n{text}");
    }
}
