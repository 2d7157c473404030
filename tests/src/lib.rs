//! Test support for shardmerge's end-to-end tests: locating the golden fixtures, running
//! merges in-process, and comparing safetensors outputs tensor by tensor.

pub mod compare;
pub mod fixture;
pub mod tie_order;

use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

/// `tests/golden` in the source tree.
pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden")
}

/// A golden case: `tests/golden/cases/<name>`.
#[derive(Debug, Clone)]
pub struct Case {
    /// Case name.
    pub name: String,
    /// Case directory.
    pub dir: PathBuf,
    /// `--random-seed`, if the case uses one.
    pub random_seed: Option<u64>,
    /// `--out-shard-size`, if given.
    pub out_shard_size: Option<u64>,
    /// `--no-copy-tokenizer` was given.
    pub no_copy_tokenizer: bool,
    /// `--unsafe-truncate-embeddings` was given.
    pub unsafe_truncate_embeddings: bool,
}

/// All golden cases with an `expected/` directory, sorted by name.
pub fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    let dir = golden_dir().join("cases");
    let mut entries: Vec<_> = std::fs::read_dir(&dir).expect("golden cases dir").flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        if !path.join("expected").is_dir() {
            continue;
        }
        let args = std::fs::read_to_string(path.join("args")).unwrap_or_default();
        let words: Vec<&str> = args.split_whitespace().collect();
        let mut random_seed = None;
        let mut out_shard_size = None;
        for w in words.windows(2) {
            match w[0] {
                "--random-seed" => random_seed = Some(w[1].parse().expect("seed")),
                "--out-shard-size" => {
                    out_shard_size = Some(shardmerge_coordinator::plan::layout::parse_size(w[1]).expect("size"))
                }
                _ => {}
            }
        }
        let no_copy_tokenizer = words.contains(&"--no-copy-tokenizer");
        let unsafe_truncate_embeddings = words.contains(&"--unsafe-truncate-embeddings");
        out.push(Case {
            name: e.file_name().to_string_lossy().into_owned(),
            dir: path,
            random_seed,
            out_shard_size,
            no_copy_tokenizer,
            unsafe_truncate_embeddings,
        });
    }
    out
}

/// Merges `case` into `out` in-process with `workers` workers (optionally shuffled).
pub fn run_case(case: &Case, out: &Path, workers: usize, shuffle: Option<u64>) -> anyhow::Result<()> {
    run_case_chunked(case, out, workers, shuffle, None)
}

/// [`run_case`] with `--chunk-size` (`None`: the default).
pub fn run_case_chunked(
    case: &Case,
    out: &Path,
    workers: usize,
    shuffle: Option<u64>,
    chunk_size: Option<u64>,
) -> anyhow::Result<()> {
    let config = shardmerge_coordinator::load_config(&case.dir.join("config.yml"))?;
    let mut opts = shardmerge_coordinator::MergeOptions {
        random_seed: case.random_seed,
        model_root: Some(golden_dir()),
        ..Default::default()
    };
    opts.run.workers = workers;
    opts.run.shuffle = shuffle;
    opts.output.copy_tokenizer = !case.no_copy_tokenizer;
    opts.unsafe_truncate_embeddings = case.unsafe_truncate_embeddings;
    if let Some(s) = case.out_shard_size {
        opts.out_shard_size = s;
    }
    if let Some(c) = chunk_size {
        opts.chunk_size = c;
    }
    shardmerge_coordinator::merge_config(&config, out, &opts)?;
    Ok(())
}

/// Names of the safetensors and index files in a directory, sorted.
pub fn model_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".safetensors") || n.ends_with(".index.json"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// One tensor's elements as f32 plus its raw dtype name.
pub fn tensors_of(bytes: &[u8]) -> Vec<(String, String, Vec<usize>, Vec<f32>)> {
    let st = SafeTensors::deserialize(bytes).expect("valid safetensors");
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            safetensors::Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            safetensors::Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            safetensors::Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            other => panic!("unexpected dtype {other:?}"),
        };
        out.push((name, format!("{:?}", view.dtype()), view.shape().to_vec(), values));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Distance in units in the last place of the stored dtype (`BF16` or `F32`) between two values.
pub fn ulp_distance(dtype: &str, a: f32, b: f32) -> u64 {
    let key = |x: f32| -> i64 {
        let bits = x.to_bits() as i32 as i64;
        if bits < 0 { i64::from(i32::MIN) - bits } else { bits }
    };
    let d = (key(a) - key(b)).unsigned_abs();
    match dtype {
        "BF16" => d >> 16,
        "F16" => d >> 13,
        _ => d,
    }
}

/// Copies a model directory (flat) to `dst`.
pub fn copy_model(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("create model dir");
    for e in std::fs::read_dir(src).expect("read model dir").flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).expect("copy model file");
        }
    }
}

/// Rewrites `dir/model.safetensors`, mapping every tensor through `f(name, shape, bytes)`;
/// `None` drops the tensor. The dtype is kept.
pub fn rewrite_model(dir: &Path, f: impl Fn(&str, &[usize], &[u8]) -> Option<(Vec<usize>, Vec<u8>)>) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).expect("read model");
    let st = SafeTensors::deserialize(&bytes).expect("valid model");
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        if let Some((shape, data)) = f(&name, view.shape(), view.data()) {
            owned.push((name, view.dtype(), shape, data));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view"),
            )
        })
        .collect();
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), &path).expect("write model");
}

#[cfg(test)]
mod compare_tests {
    use super::compare::tokenizer_content_equal;

    #[test]
    fn content_comparison_ignores_rewritten_keys_and_sees_vocabulary_changes() {
        let a = br#"{"model": {"vocab": {"a": 0, "b": 1}}, "post_processor": null}"#;
        let same = br#"{"post_processor": {"type": "TemplateProcessing", "special_tokens": {},
            "single": [{"Sequence": {"id": "A"}}], "pair": [{"Sequence": {"id": "A"}}]},
            "model": {"vocab": {"b": 1, "a": 0}}}"#;
        assert_eq!(tokenizer_content_equal("tokenizer.json", a, same), Ok(()));
        let swapped = br#"{"model": {"vocab": {"a": 1, "b": 0}}, "post_processor": null}"#;
        let err = tokenizer_content_equal("tokenizer.json", a, swapped).unwrap_err();
        assert!(err.contains("model"), "{err}");
        let cfg = br#"{"bos_token": "<s>", "tokenizer_class": "X"}"#;
        let cfg5 = br#"{"bos_token": "<s>", "tokenizer_class": "TokenizersBackend", "is_local": true}"#;
        assert_eq!(tokenizer_content_equal("tokenizer_config.json", cfg, cfg5), Ok(()));
        let other = br#"{"bos_token": "<bos>"}"#;
        assert!(tokenizer_content_equal("tokenizer_config.json", cfg, other).is_err());
    }
}
