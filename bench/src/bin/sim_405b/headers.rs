//! The simulation's four header-only Llama-3.1-405B-shaped models
//! ([`shardmerge_bench::llama_headers`], as `make_405b_headers` writes them) and the
//! DARE-TIES recipe over them.

use anyhow::{Context, Result};
use shardmerge_bench::llama_headers::LlamaShape;
use std::path::{Path, PathBuf};

/// Parameters of one model.
pub fn parameters() -> u64 {
    LlamaShape::LLAMA_405B.parameters()
}

/// The model directories under `root` (`base`, `finetune-1..=3`), written unless a complete
/// set is already there (the index is written last, so its presence means complete). Returns
/// them and whether they were generated now.
pub fn models(root: &Path) -> Result<([PathBuf; 4], bool)> {
    let dirs = ["base", "finetune-1", "finetune-2", "finetune-3"].map(|m| root.join(m));
    let complete = |d: &PathBuf| d.join("model.safetensors.index.json").is_file() && d.join("config.json").is_file();
    if dirs.iter().all(complete) {
        return Ok((dirs, false));
    }
    for d in &dirs {
        LlamaShape::LLAMA_405B
            .write_model(d)
            .with_context(|| format!("writing {}", d.display()))?;
    }
    Ok((dirs, true))
}

/// The DARE-TIES recipe of `scripts/bench-cluster.sh` over `models` (base first).
pub fn dare_ties_yaml(models: &[PathBuf; 4]) -> String {
    let [base, f1, f2, f3] = models;
    format!(
        "models:
  - model: {base}
  - model: {f1}
    parameters:
      density: 0.53
      weight: 0.6
  - model: {f2}
    parameters:
      density: 0.4
      weight: 0.3
  - model: {f3}
    parameters:
      density: 0.6
      weight: 0.2
merge_method: dare_ties
base_model: {base}
parameters:
  int8_mask: true
dtype: bfloat16
",
        base = base.display(),
        f1 = f1.display(),
        f2 = f2.display(),
        f3 = f3.display()
    )
}
