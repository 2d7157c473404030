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
//! byte, and `config.json` equals mergekit's as JSON.

use shardmerge_tests::{Case, cases, model_files, run_case, run_case_chunked, tensors_of, ulp_distance};
use std::path::Path;

#[derive(Debug, PartialEq)]
enum Check {
    Bytes,
    /// Same layout, at most this many elements in 10,000 differ: bf16 cases whose result
    /// depends on the order torch's unstable sort gives tied magnitudes.
    TieOrderBf16(usize),
}

fn check_of(case: &Case) -> Check {
    let bf16 = case.name.contains("bf16");
    if (case.name.starts_with("ties") || case.name.starts_with("breadcrumbs") || case.name == "sce_bf16") && bf16 {
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
    // `tokenizer_content_equal`), its chat_template.jinja byte for byte.
    let rebuilt = case.name.starts_with("vocab_") || case.name.starts_with("chat_template");
    for tok in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        match (
            std::fs::read(expected.join(tok)).ok(),
            std::fs::read(ours.join(tok)).ok(),
        ) {
            (a, b) if a == b => {}
            (Some(a), Some(b)) if rebuilt && tok.ends_with(".json") => tokenizer_content_equal(tok, &a, &b)?,
            (a, b) => {
                return Err(format!(
                    "{tok}: mergekit {}, shardmerge {}",
                    a.map_or("absent".into(), |a| format!("{} bytes", a.len())),
                    b.map_or("absent".into(), |b| format!("{} bytes", b.len()))
                ));
            }
        }
    }
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

/// Keys transformers 5 rewrites or adds when it saves a loaded tokenizer's config (its class
/// name, backend and load options) and the added-token table it moves to `tokenizer.json`.
const TOKENIZER_CONFIG_REWRITTEN: [&str; 5] = [
    "tokenizer_class",
    "backend",
    "is_local",
    "local_files_only",
    "added_tokens_decoder",
];

/// A merged tokenizer's files: `tokenizer.json` equal as JSON (vocabulary, ids, merges, added
/// and special tokens, pipeline), `tokenizer_config.json` equal past the keys transformers
/// rewrites (special tokens, chat template, lengths).
fn tokenizer_content_equal(file: &str, a: &[u8], b: &[u8]) -> Result<(), String> {
    let parse = |x: &[u8]| serde_json::from_slice::<serde_json::Value>(x).map_err(|e| format!("{file}: {e}"));
    let (mut ja, mut jb) = (parse(a)?, parse(b)?);
    if file == "tokenizer_config.json" {
        for j in [&mut ja, &mut jb] {
            if let Some(o) = j.as_object_mut() {
                o.retain(|k, _| !TOKENIZER_CONFIG_REWRITTEN.contains(&k.as_str()));
            }
        }
    }
    for j in [&mut ja, &mut jb] {
        if let Some(p) = j.get_mut("post_processor")
            && is_plain_template(p)
        {
            *p = serde_json::Value::Null;
        }
    }
    if ja != jb {
        let keys: Vec<String> = ja
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| jb.get(k.as_str()) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        return Err(format!("{file}: content differs in {keys:?}"));
    }
    Ok(())
}

/// transformers 5 gives a loaded tokenizer without a post-processor a `TemplateProcessing` that
/// adds no tokens (`$A`, `$A $B:1`); it encodes as no post-processor does.
fn is_plain_template(p: &serde_json::Value) -> bool {
    let only_sequences = |k: &str| {
        p.get(k)
            .and_then(|v| v.as_array())
            .is_some_and(|a| a.iter().all(|e| e.get("Sequence").is_some()))
    };
    p.get("type").and_then(|t| t.as_str()) == Some("TemplateProcessing")
        && p.get("special_tokens")
            .and_then(|s| s.as_object())
            .is_some_and(|s| s.is_empty())
        && only_sequences("single")
        && only_sequences("pair")
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

#[test]
fn every_golden_case_matches_mergekit() {
    let all = cases();
    assert!(
        all.len() >= 15,
        "expected the committed golden cases, found {}",
        all.len()
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for case in &all {
        let out = tmp.path().join(&case.name);
        if let Err(e) = run_case(case, &out, 2, None) {
            failures.push(format!("{}: merge failed: {e:#}", case.name));
            continue;
        }
        if let Err(e) = compare(case, &out) {
            failures.push(format!("{}: {e}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

#[test]
fn output_is_identical_for_any_worker_count_and_task_order() {
    let tmp = tempfile::tempdir().unwrap();
    for case in cases().iter().filter(|c| {
        [
            "dare_ties_f32",
            "dare_linear_bf16",
            "ties_f32",
            "multishard_bf16",
            "slerp_bf16",
            "della_f32",
            "della_linear_bf16",
        ]
        .contains(&c.name.as_str())
    }) {
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
}

/// Chunk tasks give the whole-tensor bytes: every case with a chunk size that does not divide
/// its tensors (and, for one case of each method, one-element chunks), on 1 worker and on 4
/// shuffled workers, equals the unchunked merge file for file, and so mergekit's output.
#[test]
fn chunked_merges_equal_whole_merges_and_mergekit() {
    let tmp = tempfile::tempdir().unwrap();
    let one_element = ["slerp_f32", "ties_bf16", "ties_rescale_f32", "dare_ties_f32"];
    let mut failures = Vec::new();
    for case in cases() {
        let whole = tmp.path().join(format!("{}-whole", case.name));
        run_case_chunked(&case, &whole, 2, None, Some(0)).unwrap();
        let mut runs = vec![(998u64, 1usize, None), (998, 4, Some(11))];
        if one_element.contains(&case.name.as_str()) {
            runs.push((1, 4, Some(5)));
        }
        for (chunk, workers, shuffle) in runs {
            let out = tmp.path().join(format!("{}-{chunk}-{workers}", case.name));
            if let Err(e) = run_case_chunked(&case, &out, workers, shuffle, Some(chunk)) {
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
            if let Err(e) = compare(&case, &out) {
                failures.push(format!("{} (chunk {chunk}): {e}", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
