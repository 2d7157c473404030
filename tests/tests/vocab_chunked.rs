//! Chunk tasks of vocabulary-aligned tensors (issue 11): every `vocab_*` golden case merged
//! with tiny chunk sizes (chunks of 33 and 499 elements, which cut rows of 32 anywhere, and,
//! for the cases with padding rows, SLERP's statistics passes and DARE's draws, one-element
//! chunks) on 1 worker and on 4 shuffled workers gives mergekit 0.1.5's tensor bytes, the same
//! bytes the whole-tensor tasks give.

use shardmerge_tests::{Case, cases, model_files, run_case_chunked};
use std::path::Path;

/// Element size of the vocab cases' outputs (all bf16).
const BF16: u64 = 2;

fn vocab_cases() -> Vec<Case> {
    let all: Vec<Case> = cases().into_iter().filter(|c| c.name.starts_with("vocab_")).collect();
    assert!(
        all.len() >= 9,
        "expected the committed vocab_* golden cases, found {}",
        all.len()
    );
    all
}

/// Safetensors and index files of `ours` byte for byte against `want`; the differing ones.
fn differing(want: &Path, ours: &Path) -> Vec<String> {
    let files = model_files(want);
    assert!(!files.is_empty(), "no model files in {}", want.display());
    if files != model_files(ours) {
        return vec![format!("files differ: {:?} vs {:?}", files, model_files(ours))];
    }
    files
        .into_iter()
        .filter(|f| std::fs::read(want.join(f)).unwrap() != std::fs::read(ours.join(f)).unwrap())
        .collect()
}

#[test]
fn chunked_aligned_tensors_equal_whole_tensors_and_mergekit() {
    let tmp = tempfile::tempdir().unwrap();
    let one_element = ["vocab_pad_ta_bf16", "vocab_union_slerp_bf16", "vocab_dare_ties_bf16"];
    let mut failures = Vec::new();
    let mut runs_done = 0;
    for case in vocab_cases() {
        let expected = case.dir.join("expected");
        let whole = tmp.path().join(format!("{}-whole", case.name));
        run_case_chunked(&case, &whole, 2, None, Some(0)).unwrap();
        for f in differing(&expected, &whole) {
            failures.push(format!("{} (whole tasks): {f} differs from mergekit's", case.name));
        }
        let mut runs = vec![
            (33 * BF16, 1usize, None),
            (499 * BF16, 4, Some(11)),
            (33 * BF16, 4, Some(3)),
        ];
        if one_element.contains(&case.name.as_str()) {
            runs.push((BF16, 4, Some(5)));
        }
        for (chunk, workers, shuffle) in runs {
            let out = tmp.path().join(format!("{}-{chunk}-{workers}", case.name));
            if let Err(e) = run_case_chunked(&case, &out, workers, shuffle, Some(chunk)) {
                failures.push(format!("{} (chunk {chunk} bytes): merge failed: {e:#}", case.name));
                continue;
            }
            runs_done += 1;
            for f in differing(&expected, &out) {
                failures.push(format!(
                    "{} (chunk {chunk} bytes, {workers} workers): {f} differs from mergekit's",
                    case.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(runs_done >= 30, "only {runs_done} chunked runs");
}

/// The aligned tensors really are split: a plan with a tiny chunk size has chunk tasks of
/// `lm_head` and the embedding whose inputs carry row runs, and chunks that start mid-row.
#[test]
fn aligned_tensors_plan_as_chunk_tasks_that_cut_rows() {
    let case = vocab_cases()
        .into_iter()
        .find(|c| c.name == "vocab_pad_ta_bf16")
        .expect("the padded case");
    let config = shardmerge_coordinator::load_config(&case.dir.join("config.yml")).unwrap();
    let opts = shardmerge_coordinator::MergeOptions {
        model_root: Some(shardmerge_tests::golden_dir()),
        chunk_size: 33 * BF16,
        ..Default::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let plan = shardmerge_coordinator::plan_config(&config, tmp.path(), &opts).unwrap();
    for name in ["lm_head.weight", "model.embed_tokens.weight"] {
        let chunks: Vec<_> = plan
            .proto
            .tasks
            .iter()
            .filter(|t| t.tensor == name && t.inputs.iter().any(|i| !i.rows.is_empty()))
            .filter_map(|t| t.chunk.as_ref())
            .collect();
        assert!(chunks.len() > 10, "{name}: {} aligned chunk tasks", chunks.len());
        let row = plan
            .proto
            .tasks
            .iter()
            .find(|t| t.tensor == name)
            .unwrap()
            .output
            .as_ref()
            .unwrap()
            .shape[1];
        assert!(
            chunks.iter().any(|c| c.start % row != 0),
            "{name}: every chunk starts at a row"
        );
    }
}
