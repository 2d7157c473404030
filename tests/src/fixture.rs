//! A scratch directory of golden model copies for tests that break inputs on purpose
//! (`bad_input*.rs`): configs name the copies as `ROOT/<name>`, and a merge that must fail is
//! checked to leave nothing that looks like a complete model.

use crate::{copy_model, golden_dir};
use shardmerge_coordinator::MergeOptions;
use std::path::{Path, PathBuf};

/// Copies of golden models in a temporary directory (removed on drop).
pub struct Fixture {
    _tmp: tempfile::TempDir,
    /// The directory `ROOT` stands for in configs.
    pub root: PathBuf,
    absent: &'static [&'static str],
}

impl Fixture {
    /// Copies each golden model `(directory under tests/golden/models, name)` to `ROOT/name`;
    /// `absent` lists the files [`Fixture::merge`] requires missing from the output after the
    /// merge fails.
    pub fn new(models: &[(&str, &str)], absent: &'static [&'static str]) -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path().to_path_buf();
        for (model, name) in models {
            copy_model(&golden_dir().join("models").join(model), &root.join(name));
        }
        Fixture {
            _tmp: tmp,
            root,
            absent,
        }
    }

    /// Writes `yaml` with `ROOT` replaced by the fixture's directory; returns the config path.
    pub fn config(&self, yaml: &str) -> PathBuf {
        let p = self.root.join("cfg.yml");
        std::fs::write(&p, yaml.replace("ROOT", &self.root.display().to_string())).expect("write config");
        p
    }

    /// The output directory merges write to.
    pub fn out(&self) -> PathBuf {
        self.root.join("out")
    }

    /// Merges `yaml` with default options, which must fail; asserts that none of the fixture's
    /// `absent` files exist in the output, and returns (and prints) the error with its causes.
    pub fn merge(&self, yaml: &str) -> String {
        let cfg = self.config(yaml);
        let out = self.out();
        let err =
            shardmerge_coordinator::merge_file(&cfg, &out, &MergeOptions::default()).expect_err("the merge must fail");
        assert_absent(&out, self.absent);
        let msg = format!("{err:#}");
        println!("{msg}");
        msg
    }
}

/// Asserts that none of `files` exists in `out` (after a failed merge).
pub fn assert_absent(out: &Path, files: &[&str]) {
    for f in files {
        assert!(
            !out.join(f).exists(),
            "{f} exists in {} after a failed merge",
            out.display()
        );
    }
}

/// Asserts that the error message `msg` mentions every one of `parts`.
pub fn assert_contains(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error message {msg:?} does not mention {p:?}");
    }
}
