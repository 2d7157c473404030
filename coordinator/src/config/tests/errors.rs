//! Error positions and messages, warnings, and accepted variants.

use super::*;

#[test]
fn malformed_yaml_reports_line() {
    let text = "merge_method: slerp\nslices:\n  - sources:\n      - model: A\n     layer_range: [0, 32]\n";
    let (line, _, message) = err_at(text);
    assert_eq!(line, Some(5), "{message}");
    assert!(message.starts_with("cfg.yml:5:"), "{message}");
    let (line, _, message) = err_at("merge_method: slerp\nmodels: [{model: A}\nbase_model: A\n");
    assert_eq!(line, Some(3), "{message}");
}

#[test]
fn type_error_reports_line_and_path() {
    let text = "merge_method: slerp\nbase_model: A\nslices:\n  - sources: abc\n";
    let e = parse_err(text);
    assert!(matches!(e.kind, ConfigErrorKind::Parse(_)));
    assert_eq!(
        e.to_string(),
        "cfg.yml:4:14: slices[0].sources: invalid type: string \"abc\", expected a sequence"
    );
    let (line, column, message) = err_at("merge_method: m\nmodels:\n  - model: A\n    parameters:\n      weight: ~\n");
    assert_eq!((line, column), (Some(5), Some(15)), "{message}");
    assert!(message.contains("cannot be null"), "{message}");
}

#[test]
fn unknown_keys_become_warnings_with_paths() {
    let text = "\
merge_method: slerp
slices:
  - sources:
      - model: A
        layer_range: [0, 2]
      - model: B
        layer_range: [0, 2]
        weigth: 0.5
    residual_weight: 0.1
parameters:
  t: [{fliter: mlp, value: 1}, {value: 0}]
random_sed: 3
";
    let c = parse(text);
    assert_eq!(
        c.warnings,
        [
            "cfg.yml:8:9: unknown key `slices[0].sources[1].weigth` (ignored; parameters such as \
             `weight` go under `parameters:`)",
            "cfg.yml:11:8: unknown key `parameters.t[0].fliter` (ignored; did you mean `filter`?)",
            "cfg.yml:12:1: unknown key `random_sed` (ignored; did you mean `random_seed`?)",
        ]
    );
    // The misspelled filter is dropped, as mergekit does: the first condition matches all.
    assert_eq!(
        c.parameters["t"]
            .evaluate(ParamType::Float, "x.self_attn", 0.0)
            .unwrap(),
        Some(Scalar::Float(1.0))
    );
}

#[test]
fn model_references() {
    let c = parse(
        "merge_method: linear\nmodels:\n  - model: org/a@v2\n  - model: {model: {path: org/b, revision: main}}\n",
    );
    assert_eq!(c.models[0].model, ModelRef::new("org/a").with_revision("v2"));
    assert_eq!(c.models[1].model.to_string(), "org/b@main");
    let (line, column, message) = err_at("merge_method: linear\nmodels:\n  - model: org/a+org/lora\n");
    assert_eq!((line, column), (Some(3), Some(12)), "{message}");
    assert!(message.contains("LoRA references are not supported yet"), "{message}");
    let (line, _, message) = err_at("merge_method: linear\nbase_model: a@b@c\nmodels: [{model: a}]\n");
    assert_eq!(line, Some(2));
    assert!(
        message.ends_with("invalid model reference `a@b@c`: more than one `@`"),
        "{message}"
    );
}

#[test]
fn rule_violations_point_at_the_key() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "merge_method: m\nmodels: [{model: A}]\nslices:\n  - sources: [{model: A}]\n",
            3,
            "both given",
        ),
        ("merge_method: m\nmodels: []\n", 2, "nothing to merge"),
        ("merge_method: ''\nmodels: [{model: A}]\n", 1, "`merge_method` is empty"),
        (
            "merge_method: m\nslices:\n  - sources: []\n",
            3,
            "`slices[0].sources` is empty",
        ),
        (
            "merge_method: m\nslices:\n  - sources:\n    - {model: A, layer_range: [0, 32]}\n    - {model: B, layer_range: [0, 16]}\n",
            5,
            "`sources[0]` takes [0, 32] (32 layers) but `sources[1]` takes [0, 16] (16 layers)",
        ),
        (
            "merge_method: m\nslices:\n  - sources:\n    - {model: A, layer_range: [8, 4]}\n",
            4,
            "reversed",
        ),
        (
            "merge_method: m\nmodels: [{model: A}]\ndtype: bf16\n",
            3,
            "unknown dtype `bf16`",
        ),
        (
            "merge_method: m\nmodels: [{model: A}]\nout_dtype: torch.int64\n",
            3,
            "not a floating-point dtype",
        ),
        (
            "merge_method: m\nmodules:\n  text: {models: [{model: A}]}\n  vision: {models: [{model: B}]}\n",
            2,
            "`modules` is not supported yet: multi-module configs",
        ),
        (
            "merge_method: m\nmodels: [{model: A}]\nmodules:\n  default: {models: [{model: A}]}\n",
            3,
            "`modules` and `models`/`slices` are both given",
        ),
        (
            "merge_method: m\nmodels: [{model: A}]\ntokenizer_source: union\ntokenizer: {source: base}\n",
            4,
            "`tokenizer_source` and `tokenizer` are both given",
        ),
        (
            "merge_method: m\nmodels: [{model: A}]\ntokenizer:\n  tokens:\n    \"<x>\": {source: B}\n",
            5,
            "token `<x>` takes its embedding from model `B`, which is not one of the merged models",
        ),
        (
            "merge_method: m\nmodels: [{model: A}]\ntokenizer_source: C\n",
            3,
            "the tokenizer source `C` is not one of the merged models",
        ),
        (
            "merge_method: m\nmodels: [{model: A}]\ntokenizer:\n  tokens:\n    x: {source: {kind: model_token, model: A}}\n",
            5,
            "needs `token_id` or `token`",
        ),
        (
            "merge_method: m\nmodels: [{model: A}]\ntokenizer:\n  tokens:\n    x: {source: {kind: one}}\n",
            5,
            "unknown token source kind `one`",
        ),
        (
            "merge_method: m\nmodels: [{model: A}]\ntokenizer: {pad_to_multiple_of: -8}\n",
            3,
            "pad_to_multiple_of",
        ),
        (
            "merge_method: m\nmodels: [{model: A}]\nchat_template: chatlm\n",
            3,
            "unknown chat template name \"chatlm\": the built-in names are alpaca, chatml, exaone",
        ),
        (
            "merge_method: m\nmodels: [{model: A}]\nchat_template: ChatML\n",
            3,
            "unknown chat template name",
        ),
        (
            "merge_method: m\nmodels: [{model: A}]\nchat_template: \"{{ x }}\"\n",
            3,
            "invalid chat template",
        ),
        (
            "merge_method: m\nmodels: [{model: A}]\nrandom_seed: -1\n",
            3,
            "random_seed",
        ),
    ];
    for (text, line, needle) in cases {
        let (got, _, message) = err_at(text);
        assert_eq!(got, Some(*line), "{message}");
        assert!(message.contains(needle), "{message} lacks {needle}");
        assert!(message.starts_with(&format!("cfg.yml:{line}:")), "{message}");
    }
}

#[test]
fn file_level_errors() {
    assert!(matches!(parse_err("").kind, ConfigErrorKind::Empty));
    assert!(matches!(parse_err("# nothing\n---\n").kind, ConfigErrorKind::Empty));
    assert_eq!(
        parse_err("models: [{model: A}]\n").to_string(),
        "cfg.yml: missing required key `merge_method`"
    );
    assert_eq!(
        parse_err("- a\n").to_string(),
        "cfg.yml:1:1: invalid type: sequence, expected a mergekit config mapping (merge_method, \
         models or slices, parameters, ...)"
    );
    assert!(
        parse_err("merge_method: m\nmerge_method: n\nmodels: [{model: A}]\n")
            .to_string()
            .contains("duplicate")
    );
}

#[test]
fn accepted_variants() {
    // Empty parameter maps, torch-prefixed dtypes, null optional keys, residual_weight.
    let c = parse(
        "merge_method: m\nmodels:\n  - model: A\n    parameters:\nbase_model: ~\ndtype: torch.float16\nout_dtype: float64\nchat_template: null\n",
    );
    assert_eq!(
        (c.dtype, c.out_dtype),
        (Some(DTypeName::Float16), Some(DTypeName::Float64))
    );
    assert_eq!(c.base_model, None);
    assert!(c.models[0].parameters.is_empty());
    assert!(c.warnings.is_empty());
    let c = parse(
        "merge_method: passthrough\nslices:\n  - sources: [{model: A, layer_range: [0, 8]}]\n  - sources: [{model: A, layer_range: [4, 12]}]\n",
    );
    assert_eq!(c.slices.len(), 2);
}

#[test]
fn load_config_reads_files_and_reports_read_errors() {
    let dir = std::env::temp_dir().join(format!("shardmerge-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.yml");
    std::fs::write(&good, DARE_TIES).unwrap();
    assert_eq!(load_config(&good).unwrap().merge_method, "dare_ties");
    let binary = dir.join("binary.yml");
    std::fs::write(&binary, b"merge_method: \xff\n").unwrap();
    let err = load_config(&binary).unwrap_err();
    assert!(matches!(err.kind, ConfigErrorKind::NotUtf8));
    assert!(
        err.to_string()
            .ends_with("binary.yml: the config file is not valid UTF-8"),
        "{err}"
    );
    let missing = dir.join("missing.yml");
    let err = load_config(&missing).unwrap_err().to_string();
    assert!(err.contains("missing.yml: cannot read the config file"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn yaml_merge_keys_are_applied() {
    let text = "\
base: &b {model: A, parameters: {weight: 0.3}}
merge_method: linear
models:
  - <<: *b
  - {<<: *b, model: B}
";
    let c = parse(text);
    assert_eq!(c.models[0].model, ModelRef::new("A"));
    assert_eq!(c.models[1].model, ModelRef::new("B"));
    let weight = Setting::Scalar(Scalar::Float(0.3));
    assert_eq!(c.models[1].parameters["weight"], weight);
    assert_eq!(c.warnings, ["cfg.yml:1:1: unknown key `base` (ignored)"]);
}

#[test]
fn deep_flow_nesting_is_rejected_before_the_scanner() {
    let n = 100_000;
    let text = format!(
        "merge_method: m\nparameters:\n  w: {}{}\n",
        "[".repeat(n),
        "]".repeat(n)
    );
    let started = std::time::Instant::now();
    let (line, column, message) = err_at(&text);
    assert_eq!((line, column), (Some(3), Some(70)), "{message}");
    assert!(message.contains("nested more than 64 levels"), "{message}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn tokenizer_settings_parse() {
    let c = parse("merge_method: m\nmodels: [{model: A}, {model: B@main}]\ntokenizer_source: B@main\n");
    let t = c.tokenizer.unwrap();
    assert_eq!(
        t.source,
        TokenizerSource::Model(ModelRef::new("B").with_revision("main"))
    );
    assert_eq!(
        (t.key, t.tokens.len(), t.pad_to_multiple_of),
        ("tokenizer_source", 0, None)
    );
    let c = parse("merge_method: m\nmodels: [{model: A}]\ntokenizer_source: base\n");
    assert_eq!(c.tokenizer.unwrap().source, TokenizerSource::Base);
    let c = parse(
        "merge_method: m\nmodels: [{model: A}, {model: B}]\ntokenizer:\n  pad_to_multiple_of: 64\n  tokens:\n    \
         \"<|im_end|>\": {source: {kind: model_token, model: A, token: \"</s>\"}}\n    z: {source: B, force: true}\n    \
         y: {source: {kind: zero}}\n    w: {}\n",
    );
    let t = c.tokenizer.unwrap();
    assert_eq!(
        (t.source.clone(), t.key, t.pad_to_multiple_of),
        (TokenizerSource::Union, "tokenizer", Some(64))
    );
    let names: Vec<&str> = t.tokens.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["<|im_end|>", "z", "y", "w"]);
    assert_eq!(
        t.tokens[0].1.source,
        Some(TokenEmbeddingSource::ModelToken {
            model: ModelRef::new("A"),
            token_id: None,
            token: Some("</s>".into())
        })
    );
    assert_eq!(
        t.tokens[1].1,
        TokenEmbedding {
            source: Some(TokenEmbeddingSource::Model(ModelRef::new("B"))),
            force: true
        }
    );
    assert_eq!(t.tokens[2].1.source, Some(TokenEmbeddingSource::Zero));
    assert_eq!(t.tokens[3].1, TokenEmbedding::default());
    // pad_to_multiple_of: 0 means no padding, as mergekit's falsy check.
    let c = parse("merge_method: m\nmodels: [{model: A}]\ntokenizer: {pad_to_multiple_of: 0}\n");
    assert_eq!(c.tokenizer.unwrap().pad_to_multiple_of, None);
}
