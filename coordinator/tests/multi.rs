//! `shardmerge multi` as users run it, against `mergekit-multi` 0.1.5's output for the same
//! multi-stage config (`tests/golden/multi/`, made by `tests/golden/regen.sh`): every stage's
//! tensors and `mergekit_config.yml` byte-identical, `config.json` equal, the model card equal
//! up to the order of its model list; then `--lazy` skips finished stages.

use std::path::{Path, PathBuf};
use std::process::Command;

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden")
        .canonicalize()
        .unwrap()
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
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "shardmerge multi failed: {stderr}");
        stderr
    };
    let log = run(&[]);
    assert!(log.contains("stage `mid`: merged into"), "{log}");
    assert!(log.contains("the final merge: merged into"), "{log}");
    for stage in ["intermediate/mid", "final"] {
        compare_stage(&case.join("expected").join(stage), &tmp.path().join(stage));
    }

    // --lazy (the default) skips both; --no-lazy merges again, to the same bytes.
    let log = run(&[]);
    assert!(log.contains("stage `mid`: ./intermediate/mid exists, skipped"), "{log}");
    assert!(log.contains("the final merge: ./final exists, skipped"), "{log}");
    std::fs::remove_file(tmp.path().join("final/model.safetensors")).unwrap();
    let log = run(&[]);
    assert!(log.contains("stage `mid`: ./intermediate/mid exists, skipped"), "{log}");
    assert!(log.contains("the final merge: merged into"), "{log}");
    run(&["--no-lazy"]);
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
