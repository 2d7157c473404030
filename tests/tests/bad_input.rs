//! Bad input gets a clear error naming what is wrong, never a panic, and never output that
//! looks like a complete model.

use shardmerge_coordinator::{MergeError, MergeOptions, execute_plan, load_config, merge_config, plan_config};
use shardmerge_tests::fixture::{Fixture, assert_absent, assert_contains};
use shardmerge_tests::{copy_model, golden_dir, rewrite_model};
use std::path::Path;

/// Copies of the golden base, ft1 and ft2 bf16 models as `ROOT/base`, `ROOT/ft1`, `ROOT/ft2`.
fn fixture() -> Fixture {
    Fixture::new(
        &[("base_bf16", "base"), ("ft1_bf16", "ft1"), ("ft2_bf16", "ft2")],
        NOT_AFTER_FAILURE,
    )
}

/// What a failed merge must not leave behind.
const NOT_AFTER_FAILURE: &[&str] = &[
    "model.safetensors",
    "model.safetensors.index.json",
    ".shardmerge-staging",
];

const TA: &str = "models:\n  - model: ROOT/base\n  - model: ROOT/ft1\n    parameters:\n      weight: 0.5\nmerge_method: task_arithmetic\nbase_model: ROOT/base\ndtype: bfloat16\n";

fn assert_nothing_complete(out: &Path) {
    assert_absent(out, NOT_AFTER_FAILURE);
}

#[test]
fn the_valid_fixture_merges() {
    let f = fixture();
    let cfg = f.config(TA);
    shardmerge_coordinator::merge_file(&cfg, &f.out(), &MergeOptions::default()).unwrap();
    assert!(f.out().join("model.safetensors").exists());
    let hidden: Vec<_> = std::fs::read_dir(f.out())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        hidden.is_empty(),
        "a finished merge leaves no staging or temp files: {hidden:?}"
    );
}

#[test]
fn missing_model_path_names_the_model_and_the_line() {
    let f = fixture();
    let msg = f.merge(&TA.replace("ROOT/ft1", "ROOT/does-not-exist"));
    assert_contains(&msg, &["does-not-exist", "not found", "cfg.yml:3"]);
}

#[test]
fn tensor_missing_in_one_model_is_named() {
    let f = fixture();
    rewrite_model(&f.root.join("ft1"), |name, shape, data| {
        (name != "model.layers.3.mlp.up_proj.weight").then(|| (shape.to_vec(), data.to_vec()))
    });
    let msg = f.merge(TA);
    assert_contains(&msg, &["model.layers.3.mlp.up_proj.weight", "missing", "ft1"]);
}

#[test]
fn shape_mismatch_names_model_tensor_and_both_shapes() {
    let f = fixture();
    rewrite_model(&f.root.join("ft1"), |name, shape, data| {
        if name == "model.layers.2.self_attn.q_proj.weight" {
            Some((vec![shape[0] / 2, shape[1]], data[..data.len() / 2].to_vec()))
        } else {
            Some((shape.to_vec(), data.to_vec()))
        }
    });
    let msg = f.merge(TA);
    assert_contains(
        &msg,
        &[
            "model.layers.2.self_attn.q_proj.weight",
            "shape mismatch",
            "[32, 32]",
            "[16, 32]",
            "ft1",
            "base",
        ],
    );
}

#[test]
fn unknown_method_lists_the_available_ones() {
    let f = fixture();
    let msg = f.merge(&TA.replace("task_arithmetic", "frobnicate"));
    assert_contains(&msg, &["frobnicate", "unknown merge method", "cfg.yml:6", "dare_ties"]);
}

#[test]
fn missing_required_parameter_names_parameter_model_and_tensor() {
    let f = fixture();
    let msg = f.merge(&TA.replace("    parameters:\n      weight: 0.5\n", ""));
    assert_contains(&msg, &["weight", "missing required parameter", "ft1"]);
}

#[test]
fn malformed_yaml_reports_the_line() {
    let f = fixture();
    let msg = f.merge("models:\n  - model: ROOT/base\n  - model: [unclosed\nmerge_method: linear\n");
    assert_contains(&msg, &["cfg.yml:"]);
    let line: String = msg
        .split("cfg.yml:")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let line: usize = line.parse().unwrap();
    assert!((3..=5).contains(&line), "line {line} in {msg:?}");
}

#[test]
fn truncated_safetensors_header_is_an_error_not_a_panic() {
    let f = fixture();
    let path = f.root.join("ft1/model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..100]).unwrap();
    let msg = f.merge(TA);
    assert_contains(&msg, &["ft1", "model.safetensors"]);
}

#[test]
fn corrupt_safetensors_header_is_an_error_not_a_panic() {
    let f = fixture();
    let path = f.root.join("ft1/model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    for b in bytes[8..40].iter_mut() {
        *b = b'#';
    }
    std::fs::write(&path, &bytes).unwrap();
    let msg = f.merge(TA);
    assert_contains(&msg, &["ft1", "model.safetensors", "header"]);
    // A header length far beyond the file.
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let msg = f.merge(TA);
    assert_contains(&msg, &["ft1", "model.safetensors"]);
}

#[test]
fn unwritable_output_directory_is_reported() {
    let f = fixture();
    let cfg = f.config(TA);
    let blocker = f.root.join("a-file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let out = blocker.join("out");
    let err = shardmerge_coordinator::merge_file(&cfg, &out, &MergeOptions::default()).unwrap_err();
    let msg = format!("{err:#}");
    assert_contains(&msg, &["a-file"]);
    assert!(std::fs::read(&blocker).unwrap() == b"not a directory");
}

#[test]
fn a_failure_while_merging_leaves_no_complete_looking_output() {
    let f = fixture();
    let cfg = load_config(&f.config(TA)).unwrap();
    let out = f.out();
    // Leave a previous complete model in the output directory, as a rerun would.
    std::fs::create_dir_all(&out).unwrap();
    let opts = MergeOptions::default();
    let plan = plan_config(&cfg, &out, &opts).unwrap();
    // The input disappears after planning: tasks fail mid-merge.
    std::fs::remove_file(f.root.join("ft1/model.safetensors")).unwrap();
    let err = execute_plan(plan, &cfg, &out, &opts).unwrap_err();
    assert!(matches!(err, MergeError::Run(_)), "{err:?}");
    assert_contains(&format!("{err:#}"), &["ft1", "model.safetensors"]);
    assert_nothing_complete(&out);
    // And a clean rerun after restoring the input succeeds.
    copy_model(&golden_dir().join("models/ft1_bf16"), &f.root.join("ft1"));
    merge_config(&cfg, &out, &opts).unwrap();
    assert!(out.join("model.safetensors").exists());
}

#[test]
fn a_memory_limit_below_the_smallest_task_fails_at_plan_time_naming_tensor_and_limit() {
    let f = fixture();
    let cfg = f.config(TA);
    let opts = MergeOptions {
        memory_limit: Some(20),
        ..MergeOptions::default()
    };
    let err = shardmerge_coordinator::merge_file(&cfg, &f.out(), &opts).expect_err("cannot fit 20 bytes");
    assert_nothing_complete(&f.out());
    let msg = format!("{err:#}");
    assert_contains(
        &msg,
        &["tensor `", "needs", "memory limit of 20 bytes", "--memory-limit"],
    );
}

#[test]
fn a_memory_limit_splits_large_tasks_into_chunks_with_the_same_bytes() {
    let f = fixture();
    let cfg = f.config(TA);
    let whole = f.root.join("whole");
    shardmerge_coordinator::merge_file(&cfg, &whole, &MergeOptions::default()).unwrap();
    let limit = 8000;
    let opts = MergeOptions {
        memory_limit: Some(limit),
        ..MergeOptions::default()
    };
    let config = load_config(&cfg).unwrap();
    let plan = plan_config(&config, &f.out(), &opts).unwrap();
    assert!(
        plan.proto.tasks.iter().any(|t| t.chunk.is_some()),
        "the limit splits tensors"
    );
    assert!(
        plan.task_memory.iter().all(|&m| m <= limit),
        "every task fits the limit"
    );
    execute_plan(plan, &config, &f.out(), &opts).unwrap();
    let a = std::fs::read(whole.join("model.safetensors")).unwrap();
    let b = std::fs::read(f.out().join("model.safetensors")).unwrap();
    assert!(a == b, "chunking for the memory limit changed the bytes");
}

const DELLA: &str = "models:\n  - model: ROOT/base\n  - model: ROOT/ft1\n    parameters:\n      weight: 0.5\n      density: 0.5\n      epsilon: 0.6\nmerge_method: della\nbase_model: ROOT/base\ndtype: bfloat16\n";

#[test]
fn della_epsilon_outside_the_density_band_names_the_line_model_and_tensor() {
    let f = fixture();
    let msg = f.merge(DELLA);
    assert_contains(
        &msg,
        &["cfg.yml:7", "della", "ft1", "density 0.5 and epsilon 0.6", "tensor `"],
    );
    // density 1 draws nothing and never checks epsilon (as mergekit).
    let cfg = f.config(&DELLA.replace("density: 0.5", "density: 1.0"));
    shardmerge_coordinator::merge_file(&cfg, &f.root.join("ok"), &MergeOptions::default()).unwrap();
}

#[test]
fn della_without_a_base_model_names_the_method() {
    let f = fixture();
    let msg = f.merge(
        &DELLA
            .replace("base_model: ROOT/base\n", "")
            .replace("epsilon: 0.6", "epsilon: 0.1"),
    );
    assert_contains(&msg, &["cfg.yml:8", "della", "needs a `base_model`"]);
}

#[test]
fn breadcrumbs_gamma_of_the_wrong_type_names_the_parameter_and_line() {
    let f = fixture();
    let yaml = TA
        .replace("task_arithmetic", "breadcrumbs")
        .replace("weight: 0.5\n", "weight: 0.5\n      gamma: lots\n");
    let msg = f.merge(&yaml);
    assert_contains(&msg, &["gamma", "lots", "cfg.yml:"]);
}

#[test]
fn model_stock_with_one_fine_tune_names_the_count_and_the_line() {
    let f = fixture();
    let msg = f.merge(&TA.replace("task_arithmetic", "model_stock"));
    assert_contains(
        &msg,
        &[
            "cfg.yml:6",
            "model_stock",
            "takes 3+ inputs including the base model, got 2",
        ],
    );
}

#[test]
fn nearswap_with_three_models_or_without_t_or_base_is_refused() {
    let f = fixture();
    let three = "models:\n  - model: ROOT/base\n  - model: ROOT/ft1\n  - model: ROOT/ft2\nmerge_method: nearswap\nbase_model: ROOT/base\nparameters:\n  t: 0.01\n";
    let msg = f.merge(three);
    assert_contains(
        &msg,
        &[
            "cfg.yml:5",
            "nearswap",
            "takes 2 inputs including the base model, got 3",
        ],
    );
    let msg = f.merge(
        &three
            .replace("  - model: ROOT/ft2\n", "")
            .replace("parameters:\n  t: 0.01\n", ""),
    );
    assert_contains(&msg, &["missing required parameter `t`"]);
    let msg = f.merge(
        &three
            .replace("  - model: ROOT/ft2\n", "")
            .replace("base_model: ROOT/base\n", ""),
    );
    assert_contains(&msg, &["cfg.yml:4", "nearswap", "needs a `base_model`"]);
}

#[test]
fn nuslerp_with_three_models_names_the_count_and_the_line() {
    let f = fixture();
    let yaml = "models:\n  - model: ROOT/base\n    parameters:\n      weight: 0.2\n  - model: ROOT/ft1\n    parameters:\n      weight: 0.3\n  - model: ROOT/ft2\n    parameters:\n      weight: 0.5\nmerge_method: nuslerp\ndtype: bfloat16\n";
    let msg = f.merge(yaml);
    assert_contains(
        &msg,
        &[
            "cfg.yml:11",
            "nuslerp",
            "takes exactly 2 models besides the base model, got 3",
        ],
    );
    // With the base as base_model, two fine-tunes are right; without weights they are not.
    let with_base = format!("{yaml}base_model: ROOT/base\n");
    let cfg = f.config(&with_base);
    shardmerge_coordinator::merge_file(&cfg, &f.root.join("ok"), &MergeOptions::default()).unwrap();
    let msg = f.merge(&with_base.replace("    parameters:\n      weight: 0.5\n", ""));
    assert_contains(&msg, &["missing required parameter `weight`", "ft2"]);
}

#[test]
fn multislerp_without_weights_names_the_parameter() {
    let f = fixture();
    let msg = f.merge("models:\n  - model: ROOT/ft1\n  - model: ROOT/ft2\nmerge_method: multislerp\n");
    assert_contains(&msg, &["missing required parameter `weight`", "ft1"]);
}

#[test]
fn passthrough_with_two_models_names_the_count_and_the_line() {
    let f = fixture();
    let msg = f.merge("models:\n  - model: ROOT/base\n  - model: ROOT/ft1\nmerge_method: passthrough\n");
    assert_contains(&msg, &["cfg.yml:4", "passthrough", "takes 1 inputs, got 2"]);
}

#[test]
fn ram_without_a_base_model_names_the_method_and_line() {
    let f = fixture();
    let msg = f.merge("models:\n  - model: ROOT/ft1\n  - model: ROOT/ft2\nmerge_method: ram\n");
    assert_contains(&msg, &["cfg.yml:4", "ram", "needs a `base_model`"]);
}

#[test]
fn ramplus_tl_with_a_non_numeric_r_names_the_parameter() {
    let f = fixture();
    let msg = f.merge("models:\n  - model: ROOT/base\n  - model: ROOT/ft1\nmerge_method: ramplus_tl\nbase_model: ROOT/base\nparameters:\n  r: fast\n");
    assert_contains(&msg, &["`r`", "fast", "cfg.yml:"]);
}

#[test]
fn sce_without_a_base_model_or_with_a_bad_select_topk_is_refused() {
    let f = fixture();
    let msg = f.merge("models:\n  - model: ROOT/ft1\n  - model: ROOT/ft2\nmerge_method: sce\n");
    assert_contains(&msg, &["cfg.yml:4", "sce", "needs a `base_model`"]);
    let msg = f.merge("models:\n  - model: ROOT/base\n  - model: ROOT/ft1\nmerge_method: sce\nbase_model: ROOT/base\nparameters:\n  select_topk: most\n");
    assert_contains(&msg, &["`select_topk`", "most", "cfg.yml:7"]);
}

#[test]
fn karcher_with_a_fractional_max_iter_or_a_text_tol_names_the_parameter_and_line() {
    let f = fixture();
    let yaml =
        "models:\n  - model: ROOT/base\n  - model: ROOT/ft1\nmerge_method: karcher\nparameters:\n  max_iter: 2.5\n";
    let msg = f.merge(yaml);
    assert_contains(&msg, &["`max_iter`", "fractional part", "cfg.yml:6"]);
    let msg = f.merge(&yaml.replace("max_iter: 2.5", "tol: small"));
    assert_contains(&msg, &["`tol`", "small", "cfg.yml:6"]);
}

#[test]
fn arcee_fusion_with_three_models_or_without_a_base_names_the_count_and_the_line() {
    let f = fixture();
    let three = "models:\n  - model: ROOT/base\n  - model: ROOT/ft1\n  - model: ROOT/ft2\nmerge_method: arcee_fusion\nbase_model: ROOT/base\n";
    let msg = f.merge(three);
    assert_contains(
        &msg,
        &[
            "cfg.yml:5",
            "arcee_fusion",
            "takes 2 inputs including the base model, got 3",
        ],
    );
    let msg = f.merge(
        &three
            .replace("  - model: ROOT/ft2\n", "")
            .replace("base_model: ROOT/base\n", ""),
    );
    assert_contains(&msg, &["cfg.yml:4", "arcee_fusion", "needs a `base_model`"]);
}
