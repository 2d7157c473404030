//! Randomized fault injection ("chaos") against a real cluster: a `shardmerge coordinator`
//! and `shardmerge worker` processes over an in-process s3s-fs server whose endpoint injects
//! S3 faults. From a seed, each round runs one DARE-TIES merge (output on S3 or on a local
//! directory) while it kills (`kill -9`) and restarts the coordinator, kills and adds
//! workers, freezes a worker past its lease (a zombie that reports late), switches S3 faults
//! on for periods and sometimes cancels the job. Every round must end either `succeeded`
//! with the embedded merge's exact bytes and no leftovers, or `failed`/`cancelled` with
//! nothing at the output and no multipart upload open.
//!
//! Seeds: 1..=20 by default; `SHARDMERGE_CHAOS_SEED=N` replays one;
//! `SHARDMERGE_CHAOS_ROUNDS=K` runs K seeds from a random base (printed).

mod support;

use shardmerge_proto::v1::{JobState, JobStatus};
use shardmerge_worker::storage::test_faults::{FaultConfig, FaultCounts, FaultKind, SeededRng, Target};
use shardmerge_worker::storage::test_server::TestS3;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use support::chaos::{Cluster, LEASE_SECS, describe, state};
use support::chaos_output::{Entry, Output, check_nothing, check_same_model, local_entries};

const DEFAULT_SEEDS: std::ops::RangeInclusive<u64> = 1..=20;
/// How long after submit the chaos goes on at most (the merge alone takes a few seconds).
const WINDOW_SECS: f64 = 14.0;
/// How long a job may take to become final once the chaos stops.
const FINAL_TIMEOUT: Duration = Duration::from_secs(180);

/// What happens at one point of a round.
#[derive(Debug, Clone)]
enum Action {
    KillCoordinator { down: Duration },
    RestartCoordinator,
    KillWorker { replace_after: Duration },
    /// A replacement for a killed worker.
    StartWorker,
    /// One more worker, unless three are running.
    AddWorker,
    Zombie { frozen: Duration },
    Thaw(usize),
    Faults { config: FaultConfig, period: Duration },
    FaultsOff,
    /// Cancel the job; the number is the attempt (tried again while the coordinator is down).
    Cancel(u32),
}

impl Action {
    /// Follow-ups (restarts, thaws, faults off) still run when the chaos stops early.
    fn is_follow_up(&self) -> bool {
        matches!(
            self,
            Action::RestartCoordinator | Action::StartWorker | Action::Thaw(_) | Action::FaultsOff
        )
    }
}

/// A round, decided by its seed alone.
struct Plan {
    s3_output: bool,
    random_seed: u64,
    shard_size: &'static str,
    workers: usize,
    window: Duration,
    events: Vec<(Duration, Action)>,
}

impl Plan {
    fn new(seed: u64) -> Plan {
        let mut rng = SeededRng::new(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0xc4a0_5eed);
        let window = Duration::from_secs_f64(rng.range(0.6, 1.0) * WINDOW_SECS);
        let at = |rng: &mut SeededRng| window.mul_f64(rng.range(0.03, 1.0));
        let mut events = vec![
            (at(&mut rng), coordinator_kill(&mut rng)),
            (at(&mut rng), fault_period(&mut rng)),
        ];
        for _ in 0..2 + rng.below(5) {
            let r = rng.unit();
            let action = if r < 0.25 {
                coordinator_kill(&mut rng)
            } else if r < 0.45 {
                let replace_after = secs(if rng.chance(0.5) { 0.0 } else { rng.range(0.5, 3.0) });
                Action::KillWorker { replace_after }
            } else if r < 0.55 {
                Action::AddWorker
            } else if r < 0.75 {
                let lease = LEASE_SECS as f64;
                Action::Zombie {
                    frozen: secs(rng.range(lease + 1.0, lease + 4.0)),
                }
            } else {
                fault_period(&mut rng)
            };
            events.push((at(&mut rng), action));
        }
        // Every sixth seed cancels its job (so the default seeds cover it three times).
        if seed % 6 == 5 {
            let t = window.mul_f64(rng.range(0.1, 0.8));
            events.push((t, Action::Cancel(1)));
        }
        events.sort_by_key(|e| e.0);
        Plan {
            s3_output: seed % 2 == 0,
            random_seed: 1 + rng.below(1_000_000),
            shard_size: ["5B", "20m", "12m"][rng.below(3) as usize],
            workers: 2 + rng.below(2) as usize,
            window,
            events,
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn coordinator_kill(rng: &mut SeededRng) -> Action {
    let down = if rng.chance(0.5) { 0.0 } else { rng.range(0.5, 4.0) };
    Action::KillCoordinator { down: secs(down) }
}

/// S3 faults on some of GET / UploadPart / Complete, 5–35 % of those requests in total.
fn fault_period(rng: &mut SeededRng) -> Action {
    let mut targets = [rng.chance(0.6), rng.chance(0.6), rng.chance(0.6)];
    if !targets.contains(&true) {
        targets[rng.below(3) as usize] = true;
    }
    let total = rng.range(0.05, 0.35);
    let mut weights = [0.0; 5];
    for (i, w) in weights.iter_mut().enumerate() {
        // Lost replies are the harshest (the operation happened): weighted down.
        *w = rng.unit() * if FaultKind::ALL[i] == FaultKind::LostReply { 0.3 } else { 1.0 };
    }
    let sum: f64 = weights.iter().sum::<f64>().max(1e-9);
    Action::Faults {
        config: FaultConfig {
            rates: weights.map(|w| total * w / sum),
            targets,
            slow_body_max: Duration::from_millis(1500),
        },
        period: secs(rng.range(2.0, 6.0)),
    }
}

/// The S3 server, the uploaded inputs and the cached reference merges shared by all rounds.
struct World {
    s3: TestS3,
    tmp: tempfile::TempDir,
    s3_config: PathBuf,
    local_config: PathBuf,
    references: HashMap<(u64, &'static str), Vec<Entry>>,
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
        // Llama-shaped, 4 layers, ~80 MB per model: 15-20 units of 5 MB.
        support::synth_models(&synth);
        for m in ["base", "finetune-a", "finetune-b"] {
            rt.block_on(s3.put_dir(&synth.join(m), "synth", m));
        }
        s3.create_bucket("out");
        World {
            s3_config: support::synth_config(tmp.path(), "s3://synth"),
            local_config: support::synth_config(tmp.path(), &synth.display().to_string()),
            s3,
            tmp,
            references: HashMap::new(),
            rt,
        }
    }

    /// The embedded merge of the same config, seed and shard size.
    fn reference(&mut self, random_seed: u64, shard_size: &'static str) -> Vec<Entry> {
        let (cfg, tmp) = (&self.local_config, self.tmp.path());
        self.references
            .entry((random_seed, shard_size))
            .or_insert_with(|| {
                let out = tmp.join(format!("reference-{random_seed}-{shard_size}"));
                let st = Command::new(support::bin())
                    .arg("merge")
                    .arg(cfg)
                    .arg(&out)
                    .args(["--random-seed", &random_seed.to_string(), "--out-shard-size", shard_size])
                    .arg("--quiet")
                    .status()
                    .unwrap();
                assert!(st.success(), "the embedded reference merge failed");
                local_entries(&out)
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
    faults: FaultCounts,
    outcomes: HashMap<&'static str, u64>,
}

fn run_round(world: &mut World, seed: u64, tally: &mut Tally) -> Result<(), String> {
    let plan = Plan::new(seed);
    let reference = world.reference(plan.random_seed, plan.shard_size);
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
        "  output {} random-seed {} shard-size {} workers {} window {:.1}s events {:?}",
        output.uri(),
        plan.random_seed,
        plan.shard_size,
        plan.workers,
        plan.window.as_secs_f64(),
        plan.events.iter().map(|e| (e.0.as_secs_f64() * 10.0).round() / 10.0).collect::<Vec<_>>()
    );
    let endpoint = world.s3.faulty_endpoint().expect("faulty endpoint").to_string();
    let state_dir = world.tmp.path().join(format!("state-{seed}"));
    let mut cluster = Cluster::start(&endpoint, &state_dir, world.rt.handle().clone())?;
    for _ in 0..plan.workers {
        cluster.add_worker();
    }
    let job = cluster.submit(&world.s3_config, &output.uri(), plan.random_seed, plan.shard_size)?;
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
        if let Ok(again) = cluster.job(&job)
            && again.state != fin.state
        {
            return Err(format!("final state changed: {} then {}", describe(&fin), describe(&again)));
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

/// Runs the plan's events until the window ends or the job is final; then runs the pending
/// follow-ups so that a coordinator, live workers and fault-free S3 remain. Returns the
/// cancel reply, if the round cancelled.
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
    loop {
        let now = start.elapsed();
        cluster.check_coordinator()?;
        if !stopping && (now > plan.window || last_poll.elapsed() > Duration::from_millis(300)) {
            last_poll = Instant::now();
            let done = cluster.job(job).is_ok_and(|s| support::chaos::is_final(&s));
            stopping = done || now > plan.window;
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
        match &action {
            Action::KillCoordinator { down } => {
                skipped = !cluster.kill_coordinator();
                if !skipped {
                    tally.coordinator_kills += 1;
                    queue.push((now + *down, Action::RestartCoordinator));
                }
            }
            Action::RestartCoordinator => cluster.start_coordinator()?,
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
        println!("  t={:.1}s {}{note}", now.as_secs_f64(), brief(&action));
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

/// An action for the round's log (fault rates in percent).
fn brief(action: &Action) -> String {
    match action {
        Action::Faults { config, period } => {
            let rates: Vec<String> = (FaultKind::ALL.iter().zip(config.rates))
                .map(|(k, r)| format!("{} {:.1}%", k.name(), r * 100.0))
                .collect();
            let targets: Vec<&str> = (Target::ALL.iter().zip(config.targets))
                .filter(|(_, on)| *on)
                .map(|(t, _)| t.name())
                .collect();
            format!("S3 faults on {targets:?} for {:.1}s: {}", period.as_secs_f64(), rates.join(", "))
        }
        other => format!("{other:?}"),
    }
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
        JobState::Failed if acknowledged_cancel => {
            Err(format!("the cancel was acknowledged, yet the job ended failed: {}", fin.error))
        }
        JobState::Failed => check_nothing(&entries, "failed"),
        JobState::Cancelled => check_nothing(&entries, "cancelled"),
        _ => Err(format!("not a final state: {}", describe(fin))),
    }?;
    // On every end, no multipart upload may stay open (S3 bills them until aborted).
    let open = world.s3.faults().expect("faults").open_uploads("out", &format!("{prefix}/"));
    if open.is_empty() {
        Ok(())
    } else {
        Err(format!("{} multipart upload(s) left open: {open:?}", open.len()))
    }
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("SHARDMERGE_CHAOS_SEED") {
        return vec![s.trim().parse().expect("SHARDMERGE_CHAOS_SEED must be an integer")];
    }
    if let Ok(k) = std::env::var("SHARDMERGE_CHAOS_ROUNDS") {
        let k: u64 = k.trim().parse().expect("SHARDMERGE_CHAOS_ROUNDS must be an integer");
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        let base = 1000 + u64::from(nanos.subsec_nanos()) % 1_000_000;
        println!("chaos base seed={base} rounds={k}");
        return (base..base + k).collect();
    }
    DEFAULT_SEEDS.collect()
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
    println!("chaos summary ({:.0}s):", started.elapsed().as_secs_f64());
    for kind in FaultKind::ALL {
        println!("  S3 faults {:<20} {}", kind.name(), tally.faults.of_kind(kind));
    }
    println!("  S3 faults by target: {}", tally.faults);
    println!(
        "  coordinator kills {} worker kills {} zombies {} fault periods {} cancels {}",
        tally.coordinator_kills, tally.worker_kills, tally.zombies, tally.fault_periods, tally.cancels
    );
    for outcome in ["succeeded", "failed", "cancelled", "not final"] {
        println!("  outcome {outcome:<10} {}", tally.outcomes.get(outcome).copied().unwrap_or(0));
    }
    println!("  rounds failing the check: {}", failures.len());
    assert!(failures.is_empty(), "chaos rounds failed:\n{}", failures.join("\n"));
}
