//! Randomized fault injection ("chaos") against a real cluster: a `shardmerge coordinator`
//! and `shardmerge worker` processes over an in-process s3s-fs server whose endpoint injects
//! S3 faults. From a seed, each round runs one merge (output on S3 or on a local directory;
//! DARE-TIES, or in half the rounds split into chunk tasks with statistics units by a small
//! `--chunk-size`, DARE-TIES, TIES or SLERP) while it kills (`kill -9`) and restarts the
//! coordinator (sometimes with another `--chunk-size`), kills and adds
//! workers, freezes a worker past its lease (a zombie that reports late), switches S3 faults
//! on for periods and sometimes cancels the job. Every round must end either `succeeded`
//! with the embedded merge's exact bytes and no leftovers, or `failed`/`cancelled` with
//! nothing at the output and no multipart upload open.
//!
//! Seeds: 1..=20 by default; `SHARDMERGE_CHAOS_SEED=N` replays one;
//! `SHARDMERGE_CHAOS_ROUNDS=K` runs K seeds from a random base (printed), or from N when
//! `SHARDMERGE_CHAOS_SEED=N` is set too.

mod support;

use shardmerge_proto::v1::{JobState, JobStatus};
use shardmerge_worker::storage::test_faults::{FaultCounts, FaultKind, SeededRng};
use shardmerge_worker::storage::test_server::TestS3;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use support::chaos::{Cluster, LEASE_SECS, describe, state};
use support::chaos_output::{Entry, Output, check_nothing, check_same_model, legitimate_failure, local_entries};
use support::chaos_plan::{Action, Method, Plan, brief, chunk_flag};

const DEFAULT_SEEDS: std::ops::RangeInclusive<u64> = 1..=20;
/// How long a job may take to become final once the chaos stops.
const FINAL_TIMEOUT: Duration = Duration::from_secs(120);

/// The S3 server, the uploaded inputs and the cached reference merges shared by all rounds.
struct World {
    s3: TestS3,
    tmp: tempfile::TempDir,
    /// Configs of each method over the models on S3 (what rounds submit) and on local disk
    /// (the reference merges).
    configs: HashMap<Method, (PathBuf, PathBuf)>,
    /// Embedded merges, unsplit, by method, random seed and shard size.
    references: HashMap<(Method, u64, &'static str), Vec<Entry>>,
    /// Temp or staging leftovers the embedded merge itself left (a bug of its own, reported
    /// apart from the cluster's).
    reference_leftovers: Vec<String>,
    rt: tokio::runtime::Runtime,
}

impl World {
    fn new() -> World {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let s3 = rt.block_on(TestS3::start_with_faults(0));
        let tmp = tempfile::tempdir().unwrap();
        let synth = tmp.path().join("synth");
        // Llama-shaped, 6 layers, ~110 MB per model: 14-15 units of 5 MB.
        let st = Command::new(support::bin())
            .arg("synth")
            .arg(&synth)
            .args([
                "--hidden",
                "768",
                "--layers",
                "6",
                "--intermediate",
                "2048",
                "--vocab",
                "6000",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "shardmerge synth failed");
        for m in ["base", "finetune-a", "finetune-b"] {
            rt.block_on(s3.put_dir(&synth.join(m), "synth", m));
        }
        s3.create_bucket("out");
        let local = synth.display().to_string();
        let configs = Method::ALL
            .iter()
            .map(|&m| {
                let s3 = m.config(tmp.path(), "s3://synth", "s3");
                (m, (s3, m.config(tmp.path(), &local, "local")))
            })
            .collect();
        World {
            configs,
            s3,
            tmp,
            references: HashMap::new(),
            reference_leftovers: Vec::new(),
            rt,
        }
    }

    /// The embedded merge of the same config, seed and shard size, whole tensors (no chunk
    /// tasks), without the leftovers it should not have left (noted in `reference_leftovers`).
    fn reference(&mut self, method: Method, random_seed: u64, shard_size: &'static str) -> Vec<Entry> {
        let (cfg, tmp, problems) = (&self.configs[&method].1, self.tmp.path(), &mut self.reference_leftovers);
        self.references
            .entry((method, random_seed, shard_size))
            .or_insert_with(|| {
                let out = tmp.join(format!("reference-{}-{random_seed}-{shard_size}", method.name()));
                let st = Command::new(support::bin())
                    .arg("merge")
                    .arg(cfg)
                    .arg(&out)
                    .args([
                        "--random-seed",
                        &random_seed.to_string(),
                        "--out-shard-size",
                        shard_size,
                        "--chunk-size",
                        "0",
                    ])
                    .arg("--quiet")
                    .status()
                    .unwrap();
                assert!(st.success(), "the embedded reference merge failed");
                let (leftovers, model): (Vec<Entry>, _) = local_entries(&out)
                    .into_iter()
                    .partition(|e| e.0.contains(".shardmerge-"));
                if !leftovers.is_empty() {
                    let names: Vec<&str> = leftovers.iter().map(|e| e.0.as_str()).collect();
                    problems.push(format!(
                        "the embedded merge (`shardmerge merge`, the reference) left {names:?} in {}",
                        out.display()
                    ));
                }
                model
            })
            .clone()
    }
}

/// What one round did and how it ended.
#[derive(Default)]
struct Tally {
    coordinator_kills: u64,
    worker_kills: u64,
    zombies: u64,
    fault_periods: u64,
    cancels: u64,
    /// Rounds whose job was split into chunk tasks, by method.
    chunked: HashMap<&'static str, u64>,
    faults: FaultCounts,
    outcomes: HashMap<&'static str, u64>,
}

fn run_round(world: &mut World, seed: u64, tally: &mut Tally) -> Result<(), String> {
    let plan = Plan::new(seed);
    if plan.chunked() {
        *tally.chunked.entry(plan.method.name()).or_default() += 1;
    }
    let reference = world.reference(plan.method, plan.random_seed, plan.shard_size);
    let faults = world.s3.faults().expect("started with faults").clone();
    faults.off();
    faults.reseed(seed);
    let before = faults.counts();
    let prefix = format!("chaos-{seed}");
    let output = if plan.s3_output {
        Output::S3 {
            bucket: "out".into(),
            prefix: prefix.clone(),
        }
    } else {
        Output::Local(world.tmp.path().join("out").join(&prefix))
    };
    println!(
        "  {} chunk-size {} (coordinator starts: {}) output {} random-seed {} shard-size {} workers {} \
         window {:.1}s events {:?}",
        plan.method.name(),
        chunk_flag(plan.chunk_sizes[0]),
        plan.chunk_flags(),
        output.uri(),
        plan.random_seed,
        plan.shard_size,
        plan.workers,
        plan.window.as_secs_f64(),
        plan.events
            .iter()
            .map(|e| (e.0.as_secs_f64() * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
    if !plan.at_end.is_empty() {
        println!(
            "  near the end: {}",
            plan.at_end.iter().map(|a| brief(&a.1)).collect::<Vec<_>>().join("; ")
        );
    }
    let endpoint = world.s3.faulty_endpoint().expect("faulty endpoint").to_string();
    let state_dir = world.tmp.path().join(format!("state-{seed}"));
    let chunk_sizes = plan.chunk_sizes.clone();
    let mut cluster = Cluster::start(&endpoint, &state_dir, chunk_sizes, world.rt.handle().clone())?;
    for _ in 0..plan.workers {
        cluster.add_worker();
    }
    let config = &world.configs[&plan.method].0;
    let job = cluster.submit(config, &output.uri(), plan.random_seed, plan.shard_size)?;
    let result = chaos(&mut cluster, &plan, seed, &job, &faults, tally).and_then(|cancel| {
        let fin = cluster.wait_final(&job, FINAL_TIMEOUT).map_err(|e| {
            *tally.outcomes.entry("not final").or_default() += 1;
            format!("job stuck: {e}")
        })?;
        println!("  final: {}", describe(&fin));
        let outcome = match state(&fin) {
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            _ => "cancelled",
        };
        *tally.outcomes.entry(outcome).or_default() += 1;
        // Thawed zombies may still act; give them a lease, then the state must not change.
        std::thread::sleep(Duration::from_secs(LEASE_SECS + 1));
        cluster.check_coordinator()?;
        if let Ok(again) = cluster.job(&job)
            && again.state != fin.state
        {
            return Err(format!(
                "final state changed: {} then {}",
                describe(&fin),
                describe(&again)
            ));
        }
        cluster.stop_all();
        verify(world, &output, &prefix, &fin, cancel.as_ref(), &reference)
    });
    let round_faults = faults.counts().since(&before);
    faults.off();
    println!("  S3 faults injected: {round_faults}");
    tally.faults.add(&round_faults);
    if result.is_err() {
        println!("{}", cluster.logs());
    }
    cluster.stop_all();
    result
}

/// Runs the plan's events until the job is final or the window (plus a grace for the actions
/// aimed at the commit) ends; then runs the pending follow-ups so that a coordinator, live
/// workers and fault-free S3 remain. Returns the cancel reply, if the round cancelled.
fn chaos(
    cluster: &mut Cluster,
    plan: &Plan,
    seed: u64,
    job: &str,
    faults: &shardmerge_worker::storage::test_faults::Faults,
    tally: &mut Tally,
) -> Result<Option<Result<JobStatus, String>>, String> {
    let mut rng = SeededRng::new(seed ^ 0xface);
    let mut queue = plan.events.clone();
    let mut cancel = None;
    let start = Instant::now();
    let mut last_poll = Instant::now();
    let mut stopping = false;
    let mut near_end = false;
    loop {
        let now = start.elapsed();
        cluster.check_coordinator()?;
        if !stopping && last_poll.elapsed() > Duration::from_millis(300) {
            last_poll = Instant::now();
            let status = cluster.job(job);
            if let Ok(s) = &status
                && !near_end
                && s.units_total > 0
                && s.units_done + 2 >= s.units_total
            {
                near_end = true;
                println!("  t={:.1}s nearly done: {}", now.as_secs_f64(), describe(s));
                queue.extend(plan.at_end.iter().map(|(d, a)| (now + *d, a.clone())));
            }
            let done = status.is_ok_and(|s| support::chaos::is_final(&s));
            // The plan's events all fall within the window; what comes later is follow-ups
            // and the actions aimed at the commit, for a few more seconds.
            stopping = done || now > plan.window + Duration::from_secs(8);
        }
        if stopping {
            queue.retain(|(_, a)| a.is_follow_up());
            if queue.is_empty() {
                break;
            }
        }
        let due = queue.iter().position(|(t, _)| stopping || *t <= now);
        let Some(i) = due else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let (_, action) = queue.remove(i);
        let live = cluster.live_workers(true);
        let mut skipped = false;
        let mut detail = String::new();
        match &action {
            Action::KillCoordinator { down } => {
                skipped = !cluster.kill_coordinator();
                if !skipped {
                    tally.coordinator_kills += 1;
                    queue.push((now + *down, Action::RestartCoordinator));
                }
            }
            Action::RestartCoordinator => {
                detail = format!(" with chunk-size {}", chunk_flag(cluster.chunk_size_of_next_start()));
                cluster.start_coordinator()?;
            }
            Action::KillWorker { replace_after } if !live.is_empty() => {
                tally.worker_kills += 1;
                cluster.workers[live[rng.below(live.len() as u64) as usize]].kill9();
                queue.push((now + *replace_after, Action::StartWorker));
            }
            Action::StartWorker => cluster.add_worker(),
            Action::AddWorker if live.len() < 3 => cluster.add_worker(),
            Action::Zombie { frozen } => {
                let unfrozen = cluster.live_workers(false);
                skipped = unfrozen.is_empty();
                if !skipped {
                    tally.zombies += 1;
                    let w = unfrozen[rng.below(unfrozen.len() as u64) as usize];
                    cluster.workers[w].freeze(true);
                    queue.push((now + *frozen, Action::Thaw(w)));
                }
            }
            Action::Thaw(w) => cluster.workers[*w].freeze(false),
            Action::Faults { config, period } => {
                tally.fault_periods += 1;
                faults.set(config.clone());
                queue.push((now + *period, Action::FaultsOff));
            }
            Action::FaultsOff => faults.off(),
            Action::Cancel(attempt) => {
                let reply = cluster.cancel(job);
                println!("  cancel: {:?}", reply.as_ref().map(describe));
                match reply {
                    Err(e) if *attempt < 20 && support::chaos::retryable(&e) => {
                        queue.push((now + Duration::from_millis(300), Action::Cancel(attempt + 1)));
                    }
                    reply => {
                        tally.cancels += 1;
                        cancel = Some(reply);
                    }
                }
            }
            Action::KillWorker { .. } | Action::AddWorker => skipped = true,
        }
        let note = if skipped { " (skipped)" } else { "" };
        println!("  t={:.1}s {}{detail}{note}", now.as_secs_f64(), brief(&action));
    }
    faults.off();
    cluster.thaw_all();
    if cluster.coordinator.is_none() {
        cluster.start_coordinator()?;
    }
    if cluster.live_workers(false).is_empty() {
        cluster.add_worker();
    }
    Ok(cancel)
}

/// The two acceptable ends of a round.
fn verify(
    world: &World,
    output: &Output,
    prefix: &str,
    fin: &JobStatus,
    cancel: Option<&Result<JobStatus, String>>,
    reference: &[Entry],
) -> Result<(), String> {
    let entries = output.entries(&world.s3, &world.rt)?;
    let acknowledged_cancel = matches!(cancel, Some(Ok(s)) if state(s) == JobState::Cancelled);
    match state(fin) {
        JobState::Succeeded if acknowledged_cancel => {
            Err("the cancel was acknowledged (cancelled), yet the job ended succeeded".into())
        }
        JobState::Succeeded => check_same_model(&entries, reference),
        JobState::Cancelled if cancel.is_none() => Err("cancelled, but the test never cancelled it".into()),
        JobState::Failed if acknowledged_cancel => Err(format!(
            "the cancel was acknowledged, yet the job ended failed: {}",
            fin.error
        )),
        JobState::Failed => check_nothing(&entries, "failed").and_then(|()| legitimate_failure(&fin.error)),
        JobState::Cancelled => check_nothing(&entries, "cancelled"),
        _ => Err(format!("not a final state: {}", describe(fin))),
    }?;
    // On every end, no multipart upload may stay open (S3 bills them until aborted).
    let open = world
        .s3
        .faults()
        .expect("faults")
        .open_uploads("out", &format!("{prefix}/"));
    if open.is_empty() {
        Ok(())
    } else {
        Err(format!("{} multipart upload(s) left open: {open:?}", open.len()))
    }
}

fn seeds() -> Vec<u64> {
    let var = |name: &str| {
        let v = std::env::var(name).ok()?;
        Some(
            v.trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{name} must be an integer")),
        )
    };
    match (var("SHARDMERGE_CHAOS_SEED"), var("SHARDMERGE_CHAOS_ROUNDS")) {
        (Some(seed), None) => vec![seed],
        (seed, Some(k)) => {
            let base = seed.unwrap_or_else(|| {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                1000 + u64::from(nanos.subsec_nanos()) % 1_000_000
            });
            println!("chaos base seed={base} rounds={k}");
            (base..base + k).collect()
        }
        (None, None) => DEFAULT_SEEDS.collect(),
    }
}

#[test]
fn chaos_rounds_end_exact_or_with_nothing_at_the_output() {
    let started = Instant::now();
    let mut world = World::new();
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    for seed in seeds() {
        println!("chaos seed={seed}");
        let t = Instant::now();
        if let Err(e) = run_round(&mut world, seed, &mut tally) {
            println!("  FAILED: {e}");
            failures.push(format!(
                "seed={seed}: {e}\n  replay: SHARDMERGE_CHAOS_SEED={seed} cargo test -p shardmerge-coordinator \
                 --test chaos -- --nocapture"
            ));
        }
        println!("  round took {:.1}s", t.elapsed().as_secs_f64());
    }
    if let Some(first) = world.reference_leftovers.first() {
        let more = world.reference_leftovers.len() - 1;
        println!("reference: {first} (and {more} more reference merges)");
        failures.push(format!("not the cluster: {first} (and {more} more reference merges)"));
    }
    println!("chaos summary ({:.0}s):", started.elapsed().as_secs_f64());
    for kind in FaultKind::ALL {
        println!("  S3 faults {:<20} {}", kind.name(), tally.faults.of_kind(kind));
    }
    println!("  S3 faults by target: {}", tally.faults);
    println!(
        "  coordinator kills {} worker kills {} zombies {} fault periods {} cancels {}",
        tally.coordinator_kills, tally.worker_kills, tally.zombies, tally.fault_periods, tally.cancels
    );
    let chunked: Vec<String> = Method::ALL
        .iter()
        .map(|m| format!("{} {}", m.name(), tally.chunked.get(m.name()).copied().unwrap_or(0)))
        .collect();
    println!("  rounds split into chunk tasks: {}", chunked.join(", "));
    for outcome in ["succeeded", "failed", "cancelled", "not final"] {
        println!(
            "  outcome {outcome:<10} {}",
            tally.outcomes.get(outcome).copied().unwrap_or(0)
        );
    }
    println!("  failures: {}", failures.len());
    assert!(failures.is_empty(), "chaos rounds failed:\n{}", failures.join("\n"));
}

/// The end-state checks themselves catch what they are for.
#[test]
fn output_checks_catch_wrong_bytes_leftovers_missing_files_and_unexplained_failures() {
    let file = |name: &str, bytes: &[u8]| (name.to_string(), Some(bytes.to_vec()));
    let reference = vec![file("config.json", b"{}"), file("model.safetensors", b"abcdef")];
    assert!(check_same_model(&reference, &reference).is_ok());
    let wrong = vec![file("config.json", b"{}"), file("model.safetensors", b"abcXef")];
    let e = check_same_model(&wrong, &reference).unwrap_err();
    assert!(e.contains("model.safetensors") && e.contains("from byte 3"), "{e}");
    let longer = vec![file("config.json", b"{}"), file("model.safetensors", b"abcdefgh")];
    assert!(
        check_same_model(&longer, &reference)
            .unwrap_err()
            .contains("8 bytes, expected 6")
    );
    let mut leftover = reference.clone();
    leftover.push(file(".model.safetensors.shardmerge-tmp-1", b""));
    assert!(
        check_same_model(&leftover, &reference)
            .unwrap_err()
            .contains("leftovers")
    );
    assert!(check_same_model(&reference[..1], &reference).is_err());
    assert!(check_nothing(&[], "failed").is_ok());
    assert!(check_nothing(&[(".shardmerge-staging/".into(), None)], "failed").is_err());
    assert!(legitimate_failure("unit 3 (tensors [\"x\"]): worker lost while running it (after 4 attempts)").is_ok());
    assert!(legitimate_failure("combining chunk statistics: tensor `x`, statistics pass 1: bad").is_err());
}
