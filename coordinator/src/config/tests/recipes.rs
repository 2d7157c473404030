//! The AutoMerger recipes, gradients and precedence through whole configs.

use super::*;

#[test]
fn slerp_recipe_parses() {
    let c = parse(SLERP);
    assert_eq!(c.merge_method, "slerp");
    assert!(c.models.is_empty());
    assert_eq!(c.slices.len(), 1);
    let sources = &c.slices[0].sources;
    assert_eq!(
        sources.iter().map(|s| s.model.to_string()).collect::<Vec<_>>(),
        ["A", "B"]
    );
    assert!(sources.iter().all(|s| s.layer_range == Some((0, 32))));
    assert_eq!(c.base_model, Some(ModelRef::new("A")));
    assert_eq!(c.dtype, Some(DTypeName::BFloat16));
    assert_eq!(c.out_dtype, None);
    assert_eq!(c.random_seed, None);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.source_text, SLERP);
    assert!(matches!(&c.parameters["t"], Setting::Conditions(v) if v.len() == 3));
}

#[test]
fn slerp_recipe_t_per_layer_matches_semantics_10_1() {
    let c = parse(SLERP);
    let slice = &c.slices[0];
    let t_param = Param::new("t", ParamType::Float, ParamScope::Shared).required();
    let len = slice.sources[0].layer_range.map(|(a, b)| b - a).unwrap();
    let t_of = |k: u64, part: &str| {
        let name = format!("model.layers.{k}.{part}.weight");
        let v = t_param.resolve(&[], Some(&slice.parameters), &c.parameters, "", &name, layer_t(k, len));
        let v = v.unwrap();
        v.and_then(|s| s.as_f64()).unwrap()
    };
    // (k, self_attn, mlp) as printed in semantics §10.1.
    let expected = [
        (0, 0.0, 1.0),
        (1, 0.0645161, 0.935484),
        (8, 0.493548, 0.506452),
        (15, 0.312903, 0.687097),
        (16, 0.325806, 0.674194),
        (24, 0.729032, 0.270968),
        (31, 1.0, 0.0),
    ];
    for (k, attn, mlp) in expected {
        let (got_attn, got_mlp) = (t_of(k, "self_attn.q_proj"), t_of(k, "mlp.up_proj"));
        assert!((got_attn - attn).abs() < 1e-6, "k={k}: self_attn {got_attn} vs {attn}");
        assert!((got_mlp - mlp).abs() < 1e-6, "k={k}: mlp {got_mlp} vs {mlp}");
        assert!((t_of(k, "self_attn.o_proj") - attn).abs() < 1e-6);
        assert_eq!(t_of(k, "input_layernorm"), 0.5);
    }
    for k in 0..32 {
        let sum = t_of(k, "self_attn.k_proj") + t_of(k, "mlp.down_proj");
        assert!((sum - 1.0).abs() < 1e-12, "k={k}: mlp mirrors self_attn");
    }
    assert_eq!(t_of(0, "lm_head").to_bits(), 0.5f64.to_bits());
}

#[test]
fn dare_ties_recipe() {
    let c = parse(DARE_TIES);
    assert_eq!(c.merge_method, "dare_ties");
    assert_eq!(c.slices.len(), 0);
    assert_eq!(c.models.len(), 2);
    assert!(c.models[0].parameters.is_empty());
    assert_eq!(c.random_seed, Some(42));
    let tensor = "model.layers.3.mlp.down_proj.weight";
    let resolve = |p: &Param, model: usize| {
        let sources = [&c.models[model].parameters];
        p.resolve(
            &sources,
            None,
            &c.parameters,
            &c.models[model].model.to_string(),
            tensor,
            0.0,
        )
    };
    let weight = Param::new("weight", ParamType::Float, ParamScope::NonBase).required();
    let density = Param::new("density", ParamType::Float, ParamScope::NonBase).default(Scalar::Float(1.0));
    let int8_mask = Param::new("int8_mask", ParamType::Bool, ParamScope::Shared).default(Scalar::Bool(false));
    let normalize = Param::new("normalize", ParamType::Bool, ParamScope::Shared).default(Scalar::Bool(false));
    assert_eq!(resolve(&weight, 1).unwrap(), Some(Scalar::Float(0.6)));
    assert_eq!(resolve(&density, 1).unwrap(), Some(Scalar::Float(0.53)));
    assert_eq!(resolve(&int8_mask, 1).unwrap(), Some(Scalar::Bool(true)));
    assert_eq!(resolve(&normalize, 1).unwrap(), Some(Scalar::Bool(false)));
    // The base has no weight: fine for NON_BASE (never asked), an error if it were asked.
    let err = resolve(&weight, 0).unwrap_err().to_string();
    assert_eq!(
        err,
        format!("missing required parameter `weight` for model `A` tensor `{tensor}`")
    );
}

#[test]
fn scientific_notation_gradients_at_every_level() {
    let text = "\
merge_method: linear
slices:
  - sources:
      - model: A
        layer_range: [0, 2]
        parameters: {a: [1e-5, 1e-3]}
    parameters: {b: [1e-5, 1e-3]}
parameters: {c: [1e-5, 1e-3], d: ['1e-5', '1e-3']}
";
    let c = parse(text);
    let slice = &c.slices[0];
    let sources = [&slice.sources[0].parameters];
    for name in ["a", "b", "c", "d"] {
        let p = Param::new(name, ParamType::Float, ParamScope::Input);
        let v = p.resolve(&sources, Some(&slice.parameters), &c.parameters, "A", "x", 0.5);
        let v = v.unwrap().unwrap();
        assert!((v.as_f64().unwrap() - 0.000505).abs() < 1e-15, "{name}: {v}");
    }
}

#[test]
fn typed_gradients_from_yaml() {
    let c = parse(
        "merge_method: m\nmodels: [{model: A}]\nparameters:\n  s: ['1e-5', '1e-3']\n  b: [false, true]\n  i: [2, 4]\n",
    );
    let eval = |name: &'static str, ty| {
        let p = Param::new(name, ty, ParamScope::Shared);
        p.resolve(&[], None, &c.parameters, "A", "x", 0.5).unwrap()
    };
    assert_eq!(eval("s", ParamType::Str), Some(Scalar::Str("1e-5".into())));
    assert_eq!(eval("b", ParamType::Bool), Some(Scalar::Bool(false)));
    assert_eq!(eval("i", ParamType::Int), Some(Scalar::Int(3)));
}

#[test]
fn single_conditional_mapping_falls_back_to_default() {
    let c = parse("merge_method: m\nmodels: [{model: A}]\nparameters:\n  lambda: {filter: mlp, value: 0.5}\n");
    let lambda = Param::new("lambda", ParamType::Float, ParamScope::Shared).default(Scalar::Float(1.0));
    let at = |name| lambda.resolve(&[], None, &c.parameters, "A", name, 0.0).unwrap();
    assert_eq!(at("model.layers.0.self_attn.v_proj.weight"), Some(Scalar::Float(1.0)));
    assert_eq!(at("model.layers.0.mlp.gate_proj.weight"), Some(Scalar::Float(0.5)));
}

#[test]
fn precedence_in_a_config() {
    let text = "\
merge_method: task_arithmetic
base_model: A
slices:
  - sources:
      - {model: A, layer_range: [0, 4]}
      - {model: B, layer_range: [0, 4], parameters: {weight: 0.1}}
      - {model: B, layer_range: [4, 8], parameters: {weight: 0.2, lambda: 9}}
    parameters: {weight: 0.3, lambda: 0.7}
parameters: {weight: 0.4}
";
    let c = parse(text);
    let slice = &c.slices[0];
    let weight = Param::new("weight", ParamType::Float, ParamScope::Input);
    let lambda = Param::new("lambda", ParamType::Float, ParamScope::Shared).default(Scalar::Float(1.0));
    let get = |p: &Param, model: &str| {
        let sources = slice.source_parameters(&ModelRef::new(model));
        p.resolve(&sources, Some(&slice.parameters), &c.parameters, model, "x", 0.0)
            .unwrap()
    };
    assert_eq!(
        get(&weight, "B"),
        Some(Scalar::Float(0.1)),
        "first matching source wins"
    );
    assert_eq!(get(&weight, "A"), Some(Scalar::Float(0.3)), "then the slice");
    assert_eq!(get(&lambda, "B"), Some(Scalar::Float(0.7)), "shared skips sources");
    let top_only = weight.resolve(&[], None, &c.parameters, "A", "x", 0.0).unwrap();
    assert_eq!(top_only, Some(Scalar::Float(0.4)));
}

/// mergekit's normalized form (what it writes to `mergekit_config.yml` when it re-serializes a
/// config, as `mergekit-multi` does): one `default` module of slices reads as those slices.
#[test]
fn one_module_reads_as_its_slices_or_models() {
    let normalized = "base_model: ./b\ndtype: bfloat16\nmerge_method: slerp\nmodules:\n  default:\n    slices:\n    - sources:\n      - layer_range: [0, 6]\n        model: ./b\n      - layer_range: [0, 6]\n        model: ./x\nparameters:\n  t: 0.5";
    let flat = "base_model: ./b\ndtype: bfloat16\nmerge_method: slerp\nslices:\n- sources:\n  - layer_range: [0, 6]\n    model: ./b\n  - layer_range: [0, 6]\n    model: ./x\nparameters:\n  t: 0.5";
    let a = parse_config(normalized, Path::new("n.yml")).unwrap();
    let b = parse_config(flat, Path::new("f.yml")).unwrap();
    assert_eq!(a.slices, b.slices);
    assert_eq!(
        (a.base_model, a.parameters, a.dtype),
        (b.base_model, b.parameters, b.dtype)
    );
    assert!(a.warnings.is_empty(), "{:?}", a.warnings);
    let models = parse_config(
        "merge_method: linear\nmodules:\n  text:\n    models: [{model: ./a}]\n",
        Path::new("m.yml"),
    )
    .unwrap();
    assert_eq!(models.models.len(), 1);
}

/// `chat_template:` names mergekit 0.1.5 ships are accepted and kept as written (the planner
/// resolves them); a value that is not a name by 0.1.5's rule must be Jinja.
#[test]
fn built_in_chat_template_names_are_accepted() {
    for name in crate::plan::chat_templates::BUILTIN_NAMES {
        let c = parse(&format!(
            "merge_method: linear\nmodels: [{{model: A}}]\nchat_template: {name}\n"
        ));
        assert_eq!(c.chat_template.as_deref(), Some(name));
    }
    // With a newline the name is not looked up: too short and without `{`, it is refused.
    let e = parse_err("merge_method: linear\nmodels: [{model: A}]\nchat_template: \"chatml\\n\"\n");
    assert!(e.to_string().contains("invalid chat template"), "{e}");
}
