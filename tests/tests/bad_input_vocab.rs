//! Bad input around vocabularies (issue 11): a clear error naming the model, token or file,
//! never a panic, and no output that looks complete.

use shardmerge_coordinator::MergeOptions;
use shardmerge_tests::fixture::{Fixture, assert_contains};

/// Copies of the golden base_bf16 and chatml_bf16 models as `ROOT/base` and `ROOT/chatml`.
fn fixture() -> Fixture {
    Fixture::new(
        &[("base_bf16", "base"), ("chatml_bf16", "chatml")],
        &[
            "model.safetensors",
            "config.json",
            "tokenizer.json",
            ".shardmerge-staging",
        ],
    )
}

fn linear(extra: &str) -> String {
    format!(
        "models:\n  - model: ROOT/base\n    parameters:\n      weight: 0.5\n  - model: ROOT/chatml\n    parameters:\n      \
         weight: 0.5\nmerge_method: linear\nbase_model: ROOT/base\ndtype: bfloat16\n{extra}"
    )
}

#[test]
fn a_vocabulary_mismatch_without_a_tokenizer_setting_is_refused_with_the_fixes() {
    let f = fixture();
    let msg = f.merge(&linear(""));
    assert_contains(
        &msg,
        &[
            "vocabulary sizes differ",
            "64 rows",
            "66",
            "Tensor size mismatch",
            "tokenizer_source: union",
            "--unsafe-truncate-embeddings",
        ],
    );
}

#[test]
fn a_token_source_outside_the_merge_names_the_token_file_and_line() {
    let f = fixture();
    let msg = f.merge(&linear(
        "tokenizer:\n  source: union\n  tokens:\n    \"<|im_end|>\":\n      source: ROOT/elsewhere\n",
    ));
    assert_contains(
        &msg,
        &[
            "cfg.yml:15:",
            "token `<|im_end|>`",
            "elsewhere",
            "not one of the merged models",
        ],
    );
}

#[test]
fn a_missing_tokenizer_json_names_the_model_and_file() {
    let f = fixture();
    std::fs::remove_file(f.root.join("chatml/tokenizer.json")).unwrap();
    let msg = f.merge(&linear("tokenizer_source: union\n"));
    assert_contains(&msg, &["chatml", "tokenizer.json", "has no `tokenizer.json`"]);
}

#[test]
fn a_sentencepiece_only_model_is_refused_clearly() {
    let f = fixture();
    std::fs::remove_file(f.root.join("chatml/tokenizer.json")).unwrap();
    std::fs::write(f.root.join("chatml/tokenizer.model"), b"\x0a\x05hello").unwrap();
    let msg = f.merge(&linear("tokenizer_source: union\n"));
    assert_contains(&msg, &["chatml", "SentencePiece", "tokenizer.model"]);
}

#[test]
fn a_corrupt_tokenizer_json_names_the_model_and_file() {
    let f = fixture();
    for text in [
        "{\"model\": ",
        "{\"version\": \"1.0\", \"model\": {\"type\": \"NoSuchModel\"}}",
        "\u{0}\u{1}garbage",
    ] {
        std::fs::write(f.root.join("chatml/tokenizer.json"), text).unwrap();
        let msg = f.merge(&linear("tokenizer_source: union\n"));
        assert_contains(&msg, &["chatml", "tokenizer.json", "is not a valid tokenizer"]);
    }
}

#[test]
fn a_forced_token_without_a_source_is_refused() {
    let f = fixture();
    let msg = f.merge(&linear("tokenizer:\n  tokens:\n    a: {force: true}\n"));
    assert_contains(&msg, &["token `a`", "without a `source`"]);
}

#[test]
fn a_model_token_id_past_the_rows_is_refused() {
    let f = fixture();
    let msg = f.merge(&linear(
        "tokenizer:\n  tokens:\n    \"<|im_end|>\":\n      source: {kind: model_token, model: ROOT/base, token_id: 64}\n",
    ));
    assert_contains(&msg, &["token `<|im_end|>`", "64", "out of range", "64 rows"]);
}

#[test]
fn truncated_embeddings_keep_the_common_rows() {
    let f = fixture();
    let cfg = f.root.join("cfg.yml");
    std::fs::write(&cfg, linear("").replace("ROOT", &f.root.display().to_string())).unwrap();
    let out = f.root.join("out");
    let opts = MergeOptions {
        unsafe_truncate_embeddings: true,
        ..MergeOptions::default()
    };
    shardmerge_coordinator::merge_file(&cfg, &out, &opts).unwrap();
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("model.embed_tokens.weight").unwrap().shape(), [64, 32]);
    assert_eq!(st.tensor("lm_head.weight").unwrap().shape(), [64, 32]);
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["vocab_size"], 64, "the donor's config is kept");
}
