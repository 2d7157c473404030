use super::*;
use std::io::Write;

fn record(id: &str) -> JobRecord {
    JobRecord {
        format: FORMAT_VERSION,
        job_id: id.into(),
        config_yaml: "merge_method: linear\n".into(),
        config_name: "c.yml".into(),
        output_uri: "s3://b/out".into(),
        seed: Some(7),
        out_shard_size: 5_000_000_000,
        unit_target: 64 << 20,
        chunk_size: 0,
        memory_limit: None,
        copy_tokenizer: true,
        write_model_card: true,
        allow_crimes: false,
        unsafe_truncate_embeddings: true,
        fingerprint: "f".into(),
        inputs: vec![],
        uploads: vec![],
        shard_files: vec![],
    }
}

fn done_entry(unit: u64) -> Entry {
    Entry::UnitDone {
        unit,
        parts: vec![(unit as u32, format!("etag-{unit}"))],
        stats: vec![],
    }
}

fn append_raw(dir: &Path, job: &str, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(dir.join(format!("jobs/{job}.jsonl")))
        .unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn replays_records_uploads_done_units_and_outcomes_and_cuts_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let j = Journal::open(tmp.path()).unwrap();
        j.submit("job-1", &Entry::Job(record("job-1"))).wait_blocking().unwrap();
        let (ids, files) = (vec!["u1".to_string()], vec!["model.safetensors".to_string()]);
        j.submit("job-1", &Entry::Uploads { ids, files })
            .wait_blocking()
            .unwrap();
        j.submit("job-1", &done_entry(3)).wait_blocking().unwrap();
        j.submit("job-1", &Entry::CommitStarted).wait_blocking().unwrap();
        j.submit("job-1", &Entry::ShardCommitted { shard: 0 })
            .wait_blocking()
            .unwrap();
        j.submit("job-2", &Entry::Job(record("job-2"))).wait_blocking().unwrap();
        j.submit("job-2", &Entry::finished("failed", "x".into()))
            .wait_blocking()
            .unwrap();
    }
    // A crash mid-append leaves a torn line.
    append_raw(tmp.path(), "job-1", b"{\"kind\":\"unit_do");
    let j = Journal::open(tmp.path()).unwrap();
    let r = j.replay().unwrap();
    assert_eq!(r.len(), 2);
    assert!(
        r[0].damaged.is_none(),
        "a torn last line is not damage: {:?}",
        r[0].damaged
    );
    assert_eq!(r[0].record.uploads, vec!["u1".to_string()]);
    assert_eq!(r[0].record.shard_files, vec!["model.safetensors".to_string()]);
    assert!(r[0].uploads_created && r[0].commit_started);
    assert_eq!(r[0].done[&3], vec![(3, "etag-3".to_string())]);
    assert!(r[0].finished.is_none());
    assert_eq!((r[0].committed.as_slice(), r[1].committed.len()), (&[0u32][..], 0));
    assert!(!r[1].uploads_created);
    assert_eq!(r[1].finished.as_ref().map(|f| f.0.as_str()), Some("failed"));
    // The next append cuts the torn tail off: the file holds whole lines only.
    j.submit("job-1", &done_entry(4)).wait_blocking().unwrap();
    let r = j.replay().unwrap();
    assert_eq!(r[0].done.len(), 2, "{:?}", r[0].done);
    assert!(r[0].damaged.is_none());
    let text = fs::read_to_string(tmp.path().join("jobs/job-1.jsonl")).unwrap();
    assert!(!text.contains("unit_do\""), "torn line left in the file:\n{text}");
}

#[test]
fn a_damaged_line_that_is_not_the_torn_tail_stops_the_resume_of_that_job() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let j = Journal::open(tmp.path()).unwrap();
        j.submit("job-1", &Entry::Job(record("job-1"))).wait_blocking().unwrap();
        j.submit("job-2", &Entry::Job(record("job-2"))).wait_blocking().unwrap();
    }
    append_raw(tmp.path(), "job-1", b"{\"kind\":\"garbage\"}\n");
    append_raw(tmp.path(), "job-1", b"{\"kind\":\"cleaned\"}\n");
    let j = Journal::open(tmp.path()).unwrap();
    let r = j.replay().unwrap();
    let msg = r[0].damaged.as_deref().expect("damaged");
    assert!(msg.contains("job-1.jsonl line 2"), "{msg}");
    assert!(r[1].damaged.is_none(), "other jobs are unaffected");
}

#[test]
fn the_state_dir_is_locked_and_the_epoch_grows_at_every_start() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Journal::open(tmp.path()).unwrap();
    assert_eq!(a.epoch(), 1);
    let e = Journal::open(tmp.path()).unwrap_err();
    assert!(e.to_string().contains("in use by another coordinator"), "{e}");
    drop(a);
    let b = Journal::open(tmp.path()).unwrap();
    assert_eq!(b.epoch(), 2);
}

#[test]
fn a_closed_job_is_replayed_as_finished_and_removed_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(tmp.path()).unwrap();
    j.submit("job-1", &Entry::Job(record("job-1"))).wait_blocking().unwrap();
    for u in 0..10 {
        j.submit("job-1", &done_entry(u)).wait_blocking().unwrap();
    }
    j.submit("job-1", &Entry::finished("succeeded", String::new()))
        .wait_blocking()
        .unwrap();
    let r = j.replay().unwrap();
    assert_eq!(r[0].done.len(), 10);
    assert_eq!(r[0].finished.as_ref().unwrap().0, "succeeded");
    j.remove("job-1").unwrap();
    assert!(j.replay().unwrap().is_empty());
}

#[test]
fn concurrent_appends_are_group_committed_in_order_and_all_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(tmp.path()).unwrap();
    j.submit("job-1", &Entry::Job(record("job-1"))).wait_blocking().unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                let tickets: Vec<_> = (0..250).map(|i| j.submit("job-1", &done_entry(t * 1000 + i))).collect();
                for d in tickets {
                    d.wait_blocking().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let pending = j.submit("job-1", &done_entry(9999));
    let last = j.submit("job-1", &Entry::finished("failed", "x".into()));
    last.wait_blocking().unwrap();
    // Acknowledged in order: the earlier ticket is durable too.
    pending.wait_blocking().unwrap();
    let r = j.replay().unwrap();
    assert_eq!(r[0].done.len(), 1001);
    assert_eq!(r[0].finished.as_ref().unwrap().0, "failed");
    let text = fs::read_to_string(tmp.path().join("jobs/job-1.jsonl")).unwrap();
    assert!(text.lines().next().unwrap().contains("\"kind\":\"job\""));
    assert!(text.lines().last().unwrap().contains("\"kind\":\"finished\""));
}

#[test]
fn statistics_round_trip_through_hex_and_malformed_hex_is_an_error() {
    use shardmerge_proto::v1::{ChainState, ChunkStats, InputStats, LinkSum, NormState, TaskStats};
    let stats = vec![TaskStats {
        task_id: 7,
        stats: Some(ChunkStats {
            inputs: vec![InputStats {
                sums: vec![1.5, -0.0, f32::MAX],
                bins: vec![3, 65535],
                counts: vec![1, u64::MAX],
                ..Default::default()
            }],
            dots: vec![0.25],
            // A model_stock chain link's state: a norm part-way and a dot partial.
            chain: Some(ChainState {
                norms: vec![NormState {
                    fed: 1 << 40,
                    acc: vec![0.5, 1e-30, 3.0, -0.0, 5.0, 6.0, 7.0, 8.0],
                    tail: vec![2.5],
                    // karcher's f64 dot state.
                    sum: -1.5e-300,
                }],
                sums: vec![LinkSum {
                    start: 4096,
                    partial: vec![1.0, 0.0, 1.5e-7],
                }],
            }),
        }),
    }];
    let journaled = super::encode_stats(&stats);
    assert!(
        journaled[0]
            .1
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(super::decode_stats(&journaled).unwrap(), stats);
    for bad in ["0", "zz", "0g"] {
        assert!(super::decode_stats(&[(7, bad.to_string())]).is_err(), "{bad}");
    }
}
