//! Tied `lm_head`: a model without `lm_head.weight` contributes its embedding instead (mergekit's
//! `tied_names`), and when no input has `lm_head.weight` the output has none either.

use shardmerge_coordinator::MergeOptions;
use shardmerge_tests::{copy_model, golden_dir, rewrite_model, tensors_of};

const LINEAR: &str = "models:\n  - model: ROOT/base\n    parameters:\n      weight: 0.25\n  - model: ROOT/ft1\n    parameters:\n      weight: 0.75\nmerge_method: linear\ndtype: float32\n";

fn drop_lm_head(dir: &std::path::Path) {
    rewrite_model(dir, |name, shape, data| {
        (name != "lm_head.weight").then(|| (shape.to_vec(), data.to_vec()))
    });
}

fn merge(root: &std::path::Path) -> Vec<(String, String, Vec<usize>, Vec<f32>)> {
    let cfg = root.join("cfg.yml");
    std::fs::write(&cfg, LINEAR.replace("ROOT", &root.display().to_string())).unwrap();
    let out = root.join("out");
    shardmerge_coordinator::merge_file(&cfg, &out, &MergeOptions::default()).unwrap();
    tensors_of(&std::fs::read(out.join("model.safetensors")).unwrap())
}

#[test]
fn a_model_without_lm_head_contributes_its_embedding() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    copy_model(&golden_dir().join("models/base_f32"), &root.join("base"));
    copy_model(&golden_dir().join("models/ft1_f32"), &root.join("ft1"));
    drop_lm_head(&root.join("ft1"));
    let base = tensors_of(&std::fs::read(root.join("base/model.safetensors")).unwrap());
    let ft1 = tensors_of(&std::fs::read(root.join("ft1/model.safetensors")).unwrap());
    let get = |ts: &[(String, String, Vec<usize>, Vec<f32>)], n: &str| ts.iter().find(|t| t.0 == n).unwrap().3.clone();
    let out = merge(root);
    let head = get(&out, "lm_head.weight");
    let (b, e) = (get(&base, "lm_head.weight"), get(&ft1, "model.embed_tokens.weight"));
    for i in 0..head.len() {
        let want = e[i].mul_add(0.75, b[i].mul_add(0.25, 0.0)) / (0.25 + 0.75);
        assert_eq!(head[i], want, "element {i}");
    }
}

#[test]
fn no_lm_head_anywhere_means_none_in_the_output() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    copy_model(&golden_dir().join("models/base_f32"), &root.join("base"));
    copy_model(&golden_dir().join("models/ft1_f32"), &root.join("ft1"));
    drop_lm_head(&root.join("base"));
    drop_lm_head(&root.join("ft1"));
    let out = merge(root);
    assert!(out.iter().all(|t| t.0 != "lm_head.weight"));
    assert!(out.iter().any(|t| t.0 == "model.embed_tokens.weight"));
}
