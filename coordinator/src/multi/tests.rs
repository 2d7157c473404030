use super::*;

const TWO: &str = "\
# a comment before the first document
name: mid
models:
  - model: ./models/base
  - model: ./models/ft
merge_method: linear
parameters:
  weight: 0.5
---
models:
  - model: ./models/base
  - model: mid
merge_method: slerp
base_model: ./models/base
parameters:
  t: 0.5
";

fn file() -> &'static Path {
    Path::new("multi.yml")
}

#[test]
fn stage_names_become_intermediate_paths() {
    let stages = parse(TWO, file(), "work/inter").unwrap();
    assert_eq!(stages.len(), 2);
    assert_eq!(stages[0].name.as_deref(), Some("mid"));
    assert_eq!(stages[0].line, 1);
    assert!(stages[0].config.warnings.is_empty(), "{:?}", stages[0].config.warnings);
    assert_eq!(stages[1].name, None);
    assert_eq!(stages[1].line, 10);
    assert_eq!(stages[1].deps, vec!["mid".to_string()]);
    assert_eq!(stages[1].config.models[1].model.path, "work/inter/mid");
    assert_eq!(stages[1].config.models[0].model.path, "./models/base");
    assert_eq!(order(&stages, file()).unwrap(), vec![0, 1]);
    // os.path.join: a trailing slash is not doubled; an absolute name wins.
    assert_eq!(py_join("inter/", "a"), "inter/a");
    assert_eq!(py_join("inter", "/abs"), "/abs");
    assert_eq!(
        output_of(&stages[1], "inter", Some(Path::new("out"))),
        Some(PathBuf::from("out"))
    );
}

#[test]
fn stages_run_after_the_stages_they_read() {
    let text = "\
models: [{model: b}, {model: a}]
merge_method: linear
---
name: b
models: [{model: ./m1}, {model: a}]
merge_method: linear
---
name: a
models: [{model: ./m1}, {model: ./m2}]
merge_method: linear
";
    let stages = parse(text, file(), "i").unwrap();
    assert_eq!(order(&stages, file()).unwrap(), vec![2, 1, 0]);
}

#[test]
fn bad_multi_configs_name_the_line() {
    let dup = "name: a\nmodels: [{model: ./x}]\nmerge_method: linear\n---\nname: a\nmodels: [{model: ./y}]\nmerge_method: linear\n";
    let e = parse(dup, file(), "i").unwrap_err().to_string();
    assert!(
        e.contains("multi.yml:5") && e.contains("duplicate merge name `a`"),
        "{e}"
    );

    let unnamed = "models: [{model: ./x}]\nmerge_method: linear\n---\nmodels: [{model: ./y}]\nmerge_method: linear\n";
    let e = parse(unnamed, file(), "i").unwrap_err().to_string();
    assert!(e.contains("more than one unnamed merge"), "{e}");

    let cycle = "name: a\nmodels: [{model: b}]\nmerge_method: linear\n---\nname: b\nmodels: [{model: a}]\nmerge_method: linear\n";
    let stages = parse(cycle, file(), "i").unwrap();
    let e = order(&stages, file()).unwrap_err().to_string();
    assert!(
        e.contains("circular dependency: stage `a` -> stage `b` -> stage `a`"),
        "{e}"
    );

    let bad_name = "name: [1]\nmodels: [{model: ./x}]\nmerge_method: linear\n";
    let e = parse(bad_name, file(), "i").unwrap_err().to_string();
    assert!(
        e.contains("multi.yml:1") && e.contains("`name` must be a non-empty string"),
        "{e}"
    );

    // A config error in the second document reports the line in the whole file.
    let bad = "name: a\nmodels: [{model: ./x}]\nmerge_method: linear\n---\nmodels: [{model: a}]\nmerge_method: linear\ndtype: float8\n";
    let e = parse(bad, file(), "i").unwrap_err().to_string();
    assert!(e.contains("multi.yml:7"), "{e}");

    assert!(
        parse("# nothing\n---\n", file(), "i")
            .unwrap_err()
            .to_string()
            .contains("no merge documents")
    );
}
