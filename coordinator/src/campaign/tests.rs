use super::report::{spread, summarize};
use super::*;

fn pool(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("./models/m{i}")).collect()
}

#[test]
fn the_same_seed_gives_the_same_campaign() {
    let a = draws(&pool(4), 50, 7, 0.4);
    assert_eq!(a, draws(&pool(4), 50, 7, 0.4));
    assert_ne!(a, draws(&pool(4), 50, 8, 0.4));
    // A longer campaign extends a shorter one with the same seed.
    assert_eq!(a[..20], draws(&pool(4), 20, 7, 0.4)[..]);
    for d in &a {
        assert_ne!(d.models[0], d.models[1], "a pair is two distinct models");
        assert_eq!(d.name, format!("{:04}-{}", d.index, d.method));
    }
}

#[test]
fn method_and_pair_draws_follow_their_probabilities() {
    // 20,000 draws: SLERP's share is 0.4 within 5 standard deviations (sd = 0.0035), and
    // every ordered pair of 4 models (12) appears about 1/12 of the time.
    let n = 20_000;
    let d = draws(&pool(4), n, 12345, 0.4);
    let slerp = d.iter().filter(|d| d.method == "slerp").count() as f64 / n as f64;
    let sd = (0.4f64 * 0.6 / n as f64).sqrt();
    assert!((slerp - 0.4).abs() < 5.0 * sd, "SLERP share {slerp}");
    let mut pairs = std::collections::HashMap::new();
    for x in &d {
        *pairs.entry(x.models.clone()).or_insert(0usize) += 1;
    }
    assert_eq!(pairs.len(), 12);
    let p = 1.0 / 12.0;
    let sd = (p * (1.0 - p) / n as f64).sqrt();
    for (pair, c) in pairs {
        let share = c as f64 / n as f64;
        assert!((share - p).abs() < 5.0 * sd, "{pair:?}: {share}");
    }
    // The extremes.
    assert!(draws(&pool(3), 100, 1, 0.0).iter().all(|d| d.method == "dare_ties"));
    assert!(draws(&pool(3), 100, 1, 1.0).iter().all(|d| d.method == "slerp"));
}

#[test]
fn recipes_are_automergers() {
    let d = draws(&pool(2), 10, 3, 0.5);
    let slerp = d.iter().find(|d| d.method == "slerp").unwrap();
    let y = recipe(slerp, 6);
    assert!(
        y.contains("merge_method: slerp") && y.contains("layer_range: [0, 6]"),
        "{y}"
    );
    assert!(y.contains(&format!("base_model: {}", slerp.models[0])), "{y}");
    let dare = d.iter().find(|d| d.method == "dare_ties").unwrap();
    let y = recipe(dare, 6);
    for want in [
        "merge_method: dare_ties",
        "density: 0.53",
        "weight: 0.6",
        "int8_mask: true",
        "dtype: bfloat16",
    ] {
        assert!(y.contains(want), "{want} in {y}");
    }
}

#[test]
fn pools_are_read_one_model_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pool.txt");
    std::fs::write(&p, "# top models\n./a\n\n  s3://bucket/b  \n./c\n").unwrap();
    assert_eq!(read_pool(&p).unwrap(), vec!["./a", "s3://bucket/b", "./c"]);
    std::fs::write(&p, "./a\n./b\n./a\n").unwrap();
    let e = read_pool(&p).unwrap_err().to_string();
    assert!(
        e.contains("pool.txt:3") && e.contains("already listed at line 1"),
        "{e}"
    );
    std::fs::write(&p, "./a\n").unwrap();
    assert!(read_pool(&p).unwrap_err().to_string().contains("at least two"));
}

#[test]
fn reports_summarize_per_method() {
    let s = spread(&[4.0, 1.0, 3.0, 2.0]);
    assert_eq!((s.n, s.mean, s.median, s.q1, s.q3), (4, 2.5, 2.5, 1.75, 3.25));
    let text = r#"{"index":0,"name":"0000-slerp","models":["a","b"],"method":"slerp","seed":1,"yaml":"","output":"o","state":"committed","seconds":2.0,"scores":{"acc":0.5}}
{"index":1,"name":"0001-dare_ties","models":["a","b"],"method":"dare_ties","seed":2,"yaml":"","output":"o","state":"failed","error":"x"}
{"index":2,"name":"0002-slerp","models":["b","a"],"method":"slerp","seed":3,"yaml":"","output":"o","state":"committed","seconds":4.0,"scores":{"acc":0.7}}
"#;
    let records = record::parse(text, "campaign.jsonl").unwrap();
    let rows = summarize(&records);
    assert_eq!(rows["slerp"].committed, 2);
    assert_eq!(rows["slerp"].mean_seconds, Some(3.0));
    assert_eq!(rows["slerp"].scores["acc"], vec![0.5, 0.7]);
    assert_eq!(rows["dare_ties"].failed, 1);
    let table = report::table(&rows);
    assert!(table.contains("score `acc`"), "{table}");
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("scores.svg");
    assert_eq!(report::plot(&rows, &svg).unwrap(), 1);
    let svg = std::fs::read_to_string(svg).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("acc by merge method"),
        "{}",
        &svg[..200]
    );
}
