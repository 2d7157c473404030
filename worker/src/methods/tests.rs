//! Registry tests: names, contracts and defaults as mergekit 0.1.5 has them.

use super::*;

#[test]
fn registry_names_are_unique_and_defaults_match_mergekit() {
    let names = names();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len());
    let dare = lookup("dare_ties").unwrap();
    assert!(dare.is_random());
    let normalize = dare.params.iter().find(|p| p.name == "normalize").unwrap();
    assert_eq!(normalize.default, ParamDefault::Bool(false));
    let ties = lookup("ties").unwrap();
    let normalize = ties.params.iter().find(|p| p.name == "normalize").unwrap();
    assert_eq!(normalize.default, ParamDefault::Bool(true));
    assert!(!ties.is_random());
    assert!(lookup("nonsense").is_none());
    let della = lookup("della").unwrap();
    assert!(della.is_random());
    assert!(della.draws(0.5) && !della.draws(0.0) && !della.draws(1.0));
    assert!(dare.draws(0.0) && !dare.draws(1.0));
    let epsilon = della.params.iter().find(|p| p.name == "epsilon").unwrap();
    assert_eq!(epsilon.default, ParamDefault::Float(0.15));
    assert_eq!(epsilon.scope, ParamScope::NonBase);
    let bc = lookup("breadcrumbs_ties").unwrap();
    assert!(!bc.is_random() && !bc.draws(0.5));
    let gamma = bc.params.iter().find(|p| p.name == "gamma").unwrap();
    assert_eq!(gamma.default, ParamDefault::Float(0.01));
    let sce = lookup("sce").unwrap();
    assert_eq!(sce.base, BasePolicy::Required);
    let topk = sce.params.iter().find(|p| p.name == "select_topk").unwrap();
    assert_eq!(topk.default, ParamDefault::Float(1.0));
    let karcher = lookup("karcher").unwrap();
    assert_eq!(karcher.base, BasePolicy::Ignored);
    let max_iter = karcher.params.iter().find(|p| p.name == "max_iter").unwrap();
    assert_eq!(
        (max_iter.kind, max_iter.default),
        (ParamKind::Int, ParamDefault::Int(10))
    );
    let fusion = lookup("arcee_fusion").unwrap();
    assert_eq!((fusion.min_inputs, fusion.max_inputs), (2, Some(2)));
    assert!(fusion.kind.promotes_to_f32() && !fusion.is_random());
    assert_eq!(
        (fusion.sample_draws(1_000_000), fusion.sample_draws(1_000_001)),
        (0, 1_000_000)
    );
    let linear = lookup("della_linear").unwrap();
    let normalize = linear.params.iter().find(|p| p.name == "normalize").unwrap();
    assert_eq!(normalize.default, ParamDefault::Bool(false));
}
