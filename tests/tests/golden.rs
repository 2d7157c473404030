//! Golden parity with mergekit 0.1.5: every case in `tests/golden/cases` is merged by
//! shardmerge and compared with the files mergekit itself produced (`expected/`).
//!
//! Byte-identical: every safetensors file and index of every case (linear, slerp,
//! task_arithmetic, dare_ties, dare_linear, della and della_linear in f32, f32 ties), except bf16
//! ties and della, and bf16 sce with `select_topk < 1`: torch breaks magnitude ties (at the
//! top-k threshold, in DELLA's row ranks, or among equal variances) in an unspecified order
//! (shardmerge orders them lowest index first), so there only the layout must match and a
//! bounded share of values may differ (the invariants are checked in `ties_invariants`,
//! `della_invariants` and `sce_invariants`). `mergekit_config.yml` is the YAML byte for
//! byte, `config.json` equals mergekit's as JSON except the keys transformers 5 re-expresses
//! (`REWRITTEN` in [`compare`]), tokenizer files are equal, and so is the model card. A chat
//! template named by a built-in name (`chat_template: chatml`) is shardmerge's own text, so it
//! must render as mergekit's does ([`same_rendering`]) rather than be the same text.
//!
//! Each case is its own test in each suite (see [`main`]): run one with
//! `cargo test -p shardmerge-tests --test golden -- CASE`.

use libtest_mimic::{Failed, Trial};
use shardmerge_coordinator::config::parse_config;
use shardmerge_coordinator::plan::chat_templates;
use shardmerge_tests::compare::{TemplateCheck, tokenizer_files_equal_with};
use shardmerge_tests::{Case, cases, model_files, run_case, run_case_chunked, tensors_of, ulp_distance};
use std::path::Path;

#[derive(Debug, PartialEq)]
enum Check {
    Bytes,
    /// Same layout, at most this many elements in 10,000 differ: bf16 (and one f16) cases whose
    /// result depends on the order torch's unstable sort gives tied magnitudes.
    TieOrderBf16(usize),
}

fn check_of(case: &Case) -> Check {
    let bf16 = case.name.contains("bf16");
    // f16 TIES: 57 of 56,736 elements differ, every one at a tied threshold
    // (`ties_f16_differs_from_mergekit_only_at_tied_thresholds`).
    let tied_f16 = case.name == "ties_rescale_f16";
    if (case.name.starts_with("ties") || case.name.starts_with("breadcrumbs") || case.name == "sce_bf16") && bf16
        || tied_f16
    {
        Check::TieOrderBf16(200)
    } else if case.name.starts_with("della") && bf16 {
        // Measured: della_linear_bf16 (no rescale) 0.5%, della_bf16 (rescale: one different
        // keep changes the L1 factor of its whole tensor) more; the exact invariant is checked
        // in `della_invariants`.
        Check::TieOrderBf16(800)
    } else {
        Check::Bytes
    }
}

fn compare(case: &Case, ours: &Path) -> Result<(), String> {
    let expected = case.dir.join("expected");
    let want = model_files(&expected);
    let got = model_files(ours);
    if want != got {
        return Err(format!("files differ: mergekit {want:?}, shardmerge {got:?}"));
    }
    let check = check_of(case);
    for f in &want {
        let a = std::fs::read(expected.join(f)).map_err(|e| e.to_string())?;
        let b = std::fs::read(ours.join(f)).map_err(|e| e.to_string())?;
        if a == b {
            continue;
        }
        if f.ends_with(".json") || check == Check::Bytes {
            return Err(format!(
                "{f}: bytes differ ({} vs {} bytes){}",
                a.len(),
                b.len(),
                first_diff(&a, &b)
            ));
        }
        // Same header (layout), values within tolerance.
        let ha = u64::from_le_bytes(a[..8].try_into().unwrap()) as usize + 8;
        let hb = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize + 8;
        if a[..ha] != b[..hb] {
            return Err(format!("{f}: safetensors headers differ"));
        }
        let mut total = 0usize;
        let mut total_differing = 0usize;
        for (ta, tb) in tensors_of(&a).iter().zip(tensors_of(&b).iter()) {
            total += ta.3.len();
            total_differing +=
                ta.3.iter()
                    .zip(&tb.3)
                    .filter(|(x, y)| ulp_distance(&ta.1, **x, **y) > 0)
                    .count();
        }
        // bf16 ties: torch's unstable sort picks among equal magnitudes at the top-k threshold
        // (TIES) or orders equal magnitudes' ranks (DELLA); the invariants are checked in
        // `ties_bf16_sparsification_invariants` and `della_bf16_untied_elements_equal_mergekit`.
        if let Check::TieOrderBf16(per_10k) = check
            && total_differing * 10_000 > total * per_10k
        {
            return Err(format!("{f}: {total_differing} of {total} elements differ"));
        }
        println!(
            "{}: {f}: {total_differing} of {total} elements differ (tie order)",
            case.name
        );
    }
    // The config copy is byte-identical; config.json carries the right dtype and layer count.
    let yml_a = std::fs::read(case.dir.join("config.yml")).unwrap();
    let yml_b = std::fs::read(ours.join("mergekit_config.yml")).map_err(|e| format!("mergekit_config.yml: {e}"))?;
    if yml_a != yml_b {
        return Err("mergekit_config.yml is not the original YAML".into());
    }
    let cfg = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p.join("config.json")).unwrap()).unwrap()
    };
    let (ca, cb) = (cfg(&expected), cfg(ours));
    if ca != cb {
        let (oa, ob) = (ca.as_object(), cb.as_object());
        let keys: std::collections::BTreeSet<&String> = oa.iter().chain(ob.iter()).flat_map(|o| o.keys()).collect();
        // transformers 5 re-expresses these when mergekit re-serializes a 4.x-style donor config
        // (tests/golden/README.md; ARCHITECTURE.md, compatibility notes); shardmerge keeps the
        // donor's form. Everything else must be equal.
        const REWRITTEN: [&str; 5] = [
            "transformers_version",
            "rope_scaling",
            "rope_theta",
            "rope_parameters",
            "pad_token_id",
        ];
        let differing: Vec<String> = keys
            .into_iter()
            .filter(|k| ca.get(k.as_str()) != cb.get(k.as_str()) && !REWRITTEN.contains(&k.as_str()))
            .map(|k| {
                format!(
                    "`{k}`: mergekit {:?}, shardmerge {:?}",
                    ca.get(k.as_str()),
                    cb.get(k.as_str())
                )
            })
            .collect();
        if !differing.is_empty() {
            return Err(format!("config.json differs: {}", differing.join("; ")));
        }
    }
    // Tokenizer files are copied byte for byte; a merged tokenizer (`vocab_*` cases) or one
    // re-saved with a chat template (`chat_template_*`) is equal in content (see
    // `shardmerge_tests::compare`), its chat_template.jinja byte for byte.
    // A built-in template the config names (`chat_template: chatml`) is shardmerge's own text of
    // it: equal when it renders as mergekit's does (`same_rendering`).
    let rebuilt = case.name.starts_with("vocab_") || case.name.starts_with("chat_template");
    let specials = special_tokens(&expected)?;
    let same = |theirs: &str, ours: &str| same_rendering(theirs, ours, &specials);
    let check: Option<TemplateCheck<'_>> = names_builtin_template(case)?.then_some(&same);
    tokenizer_files_equal_with(&expected, ours, rebuilt, check)?;
    // The model card is mergekit's, titled with the output directory's name. mergekit lists the
    // merged models in (nondeterministic) set order, so the list is compared as a set; for
    // random methods shardmerge adds one line recording the seed.
    let card = |p: &Path| std::fs::read_to_string(p.join("README.md")).map_err(|e| format!("README.md: {e}"));
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let want_card = card(&expected)?.replacen(&format!("# {}\n", name(&expected)), &format!("# {}\n", name(ours)), 1);
    if normalized_card(&want_card) != normalized_card(&card(ours)?) {
        return Err("README.md (model card) differs from mergekit's".into());
    }
    Ok(())
}

/// Whether the case's `chat_template` names one of mergekit's built-in templates.
fn names_builtin_template(case: &Case) -> Result<bool, String> {
    let path = case.dir.join("config.yml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let config = parse_config(&text, &path).map_err(|e| e.to_string())?;
    Ok(config
        .chat_template
        .is_some_and(|t| chat_templates::builtin(&t).is_some()))
}

/// The special tokens transformers passes to a chat template (`bos_token`, `eos_token`, ...):
/// the `*_token` strings of mergekit's `tokenizer_config.json`, if it wrote one.
fn special_tokens(expected: &Path) -> Result<Vec<(String, String)>, String> {
    let Ok(text) = std::fs::read_to_string(expected.join("tokenizer_config.json")) else {
        return Ok(Vec::new());
    };
    let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("tokenizer_config.json: {e}"))?;
    Ok(config
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.ends_with("_token"))
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect())
}

/// `template` rendered over `messages` as transformers renders a chat template: blocks trim
/// the newline after them and the indentation before them, no trailing newline is kept, the
/// tokenizer's special tokens and `add_generation_prompt` are variables, and
/// `raise_exception(message)` fails the rendering.
fn render(
    template: &str,
    messages: &serde_json::Value,
    add_generation_prompt: bool,
    specials: &[(String, String)],
) -> Result<String, String> {
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(false)
        .build()
        .map_err(|e| format!("{e:#}"))?;
    let mut env = minijinja::Environment::new();
    env.set_syntax(syntax);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
        },
    );
    env.add_template("chat", template).map_err(|e| format!("{e:#}"))?;
    let mut vars: std::collections::BTreeMap<String, minijinja::Value> = specials
        .iter()
        .map(|(k, v)| (k.clone(), minijinja::Value::from(v.as_str())))
        .collect();
    vars.insert(
        "messages".into(),
        minijinja::Value::from(minijinja::value::Serde(messages)),
    );
    vars.insert("add_generation_prompt".into(), add_generation_prompt.into());
    let chat = env.get_template("chat").map_err(|e| format!("{e:#}"))?;
    chat.render(vars).map_err(|e| format!("{e:#}"))
}

/// Conversations a named template is rendered over, and whether every built-in template
/// renders it (the others may fail, e.g. mistral's on turns that do not alternate, but then
/// both templates must fail). Text with outer whitespace, which some formats trim.
fn conversations() -> Vec<(serde_json::Value, bool)> {
    let m = |role: &str, content: &str| serde_json::json!({"role": role, "content": content});
    let system = m("system", "  Answer briefly.\n");
    let user = m("user", " What is 2 + 2? \n");
    let answer = m("assistant", "4. ");
    let again = m("user", "And 3 + 3?\nTwo lines.");
    let shapes = [
        (vec![system.clone(), user.clone()], true),
        (vec![user.clone()], true),
        (vec![user.clone(), answer.clone()], true),
        (vec![user.clone(), answer.clone(), again.clone()], true),
        (vec![system.clone(), user.clone(), answer.clone(), again.clone()], true),
        (vec![user.clone(), again.clone()], false),
        (vec![answer.clone(), user.clone()], false),
        (vec![user.clone(), m("user_context", " a context ")], false),
        (
            vec![system.clone(), m("system", "Another system message."), user.clone()],
            false,
        ),
        (vec![m("tool", "42"), user.clone(), answer], false),
    ];
    shapes
        .into_iter()
        .map(|(c, all)| (serde_json::Value::from(c), all))
        .collect()
}

/// Our template renders every conversation of [`conversations`], with and without a
/// generation prompt, exactly as mergekit's does (or both fail).
fn same_rendering(theirs: &str, ours: &str, specials: &[(String, String)]) -> Result<(), String> {
    for (messages, every_template_renders) in conversations() {
        for add_generation_prompt in [false, true] {
            let want = render(theirs, &messages, add_generation_prompt, specials);
            let got = render(ours, &messages, add_generation_prompt, specials);
            let roles: Vec<&str> = messages
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["role"].as_str())
                .collect();
            let what = format!("roles {roles:?}, add_generation_prompt {add_generation_prompt}");
            match (&want, &got) {
                (Ok(a), Ok(b)) if a == b => {
                    // Not vacuous: every user turn's text is in the rendering.
                    let users = messages
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|m| m["role"] == "user");
                    if let Some(t) = users
                        .filter_map(|m| m["content"].as_str())
                        .find(|t| !a.contains(t.trim()))
                    {
                        return Err(format!("{what}: the rendering {a:?} lacks the user text {t:?}"));
                    }
                }
                (Err(_), Err(_)) if !every_template_renders => {}
                _ => {
                    return Err(format!(
                        "{what}: mergekit's template renders {want:?}, shardmerge's {got:?}"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A model card with its bullet lists sorted and shardmerge's seed line removed.
fn normalized_card(card: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut bullets: Vec<&str> = Vec::new();
    for line in card
        .lines()
        .filter(|l| !l.starts_with("Merged by shardmerge with random seed"))
    {
        if line.starts_with("* ") {
            bullets.push(line);
            continue;
        }
        bullets.sort_unstable();
        out.extend(bullets.drain(..).map(String::from));
        out.push(line.to_string());
    }
    bullets.sort_unstable();
    out.extend(bullets.drain(..).map(String::from));
    out.join("\n").trim_end().to_string()
}

fn first_diff(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!("; first difference at byte {i}"),
        None => String::new(),
    }
}

/// Golden cases of the worker-count and task-order suite: one of each random or
/// order-sensitive method, plus a multi-shard layout.
const INVARIANCE_CASES: [&str; 7] = [
    "dare_ties_f32",
    "dare_linear_bf16",
    "ties_f32",
    "multishard_bf16",
    "slerp_bf16",
    "della_f32",
    "della_linear_bf16",
];

/// Cases that the chunked suite also splits into one-element chunks (one of each method with
/// statistics passes).
const ONE_ELEMENT_CASES: [&str; 7] = [
    "slerp_f32",
    "ties_bf16",
    "ties_rescale_f32",
    "dare_ties_f32",
    "breadcrumbs_ties_f32",
    "sce_f32",
    "multislerp_f32",
];

/// Each golden case is a test of its own in each of three suites, named
/// `mergekit::CASE`, `worker_count_and_task_order::CASE` and `chunked::CASE`, so that
/// `cargo test -p shardmerge-tests --test golden -- CASE` runs one case and a failure names it.
fn main() -> std::process::ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let all = cases();
    let count = all.len();
    let mut trials = vec![Trial::test("golden_cases_are_committed", move || {
        if count >= 15 {
            Ok(())
        } else {
            Err(format!("expected the committed golden cases, found {count}").into())
        }
    })];
    for case in &all {
        let c = case.clone();
        trials.push(Trial::test(format!("mergekit::{}", case.name), move || {
            case_matches_mergekit(&c).map_err(Failed::from)
        }));
    }
    for case in all.iter().filter(|c| INVARIANCE_CASES.contains(&c.name.as_str())) {
        let c = case.clone();
        trials.push(Trial::test(
            format!("worker_count_and_task_order::{}", case.name),
            move || {
                output_is_identical_for_any_worker_count_and_task_order(&c);
                Ok(())
            },
        ));
    }
    for case in all {
        let name = format!("chunked::{}", case.name);
        trials.push(Trial::test(name, move || {
            chunked_merges_equal_whole_merges_and_mergekit(&case).map_err(Failed::from)
        }));
    }
    libtest_mimic::run(&args, trials).exit_code()
}

/// shardmerge's merge of `case` (2 workers) equals mergekit's output ([`compare`]).
fn case_matches_mergekit(case: &Case) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = tmp.path().join(&case.name);
    run_case(case, &out, 2, None).map_err(|e| format!("merge failed: {e:#}"))?;
    compare(case, &out)
}

/// One worker and four shuffled workers write the same bytes.
fn output_is_identical_for_any_worker_count_and_task_order(case: &Case) {
    let tmp = tempfile::tempdir().unwrap();
    let one = tmp.path().join(format!("{}-1", case.name));
    let four = tmp.path().join(format!("{}-4", case.name));
    run_case(case, &one, 1, None).unwrap();
    run_case(case, &four, 4, Some(7)).unwrap();
    let files = model_files(&one);
    assert!(!files.is_empty());
    assert_eq!(files, model_files(&four));
    for f in files {
        let a = std::fs::read(one.join(&f)).unwrap();
        let b = std::fs::read(four.join(&f)).unwrap();
        assert!(
            a == b,
            "{}: {f} differs between 1 worker and 4 shuffled workers",
            case.name
        );
    }
}

/// Chunk tasks give the whole-tensor bytes: the case with a chunk size that does not divide
/// its tensors (and, for one case of each method, one-element chunks), on 1 worker and on 4
/// shuffled workers, equals the unchunked merge file for file, and so mergekit's output.
fn chunked_merges_equal_whole_merges_and_mergekit(case: &Case) -> Result<(), String> {
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let whole = tmp.path().join(format!("{}-whole", case.name));
    run_case_chunked(case, &whole, 2, None, Some(0)).unwrap();
    let mut runs = vec![(998u64, 1usize, None), (998, 4, Some(11))];
    if ONE_ELEMENT_CASES.contains(&case.name.as_str()) {
        runs.push((1, 4, Some(5)));
    }
    for (chunk, workers, shuffle) in runs {
        let out = tmp.path().join(format!("{}-{chunk}-{workers}", case.name));
        if let Err(e) = run_case_chunked(case, &out, workers, shuffle, Some(chunk)) {
            failures.push(format!("{} (chunk {chunk}): merge failed: {e:#}", case.name));
            continue;
        }
        let files = model_files(&whole);
        assert!(!files.is_empty());
        assert_eq!(files, model_files(&out), "{}", case.name);
        for f in files {
            if std::fs::read(whole.join(&f)).unwrap() != std::fs::read(out.join(&f)).unwrap() {
                failures.push(format!(
                    "{} (chunk {chunk} bytes, {workers} workers): {f} differs",
                    case.name
                ));
            }
        }
        if let Err(e) = compare(case, &out) {
            failures.push(format!("{} (chunk {chunk}): {e}", case.name));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}
