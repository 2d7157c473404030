//! The chaos suite's schedule: what a round does and when, decided by its seed alone: the
//! merge it runs, how the coordinator splits it into chunk tasks, and the faults.

use super::chaos::LEASE_SECS;
use shardmerge_worker::storage::test_faults::{FaultConfig, FaultKind, SeededRng, Target};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long after submit the chaos goes on at most (the merge alone takes a few seconds).
const WINDOW_SECS: f64 = 10.0;

/// What happens at one point of a round.
#[derive(Debug, Clone)]
pub enum Action {
    /// `kill -9` of the coordinator, restarted on the same state dir and port after `down`.
    KillCoordinator {
        down: Duration,
    },
    RestartCoordinator,
    /// `kill -9` of a random worker, replaced after `replace_after`.
    KillWorker {
        replace_after: Duration,
    },
    /// A replacement for a killed worker.
    StartWorker,
    /// One more worker, unless three are running.
    AddWorker,
    /// SIGSTOP of a random worker for `frozen` (longer than a lease), then SIGCONT.
    Zombie {
        frozen: Duration,
    },
    /// SIGCONT of worker number N.
    Thaw(usize),
    /// S3 faults on the processes' endpoint for `period`.
    Faults {
        config: FaultConfig,
        period: Duration,
    },
    FaultsOff,
    /// Cancel the job; the number is the attempt (tried again while the coordinator is down).
    Cancel(u32),
}

impl Action {
    /// Follow-ups (restarts, thaws, faults off) still run when the chaos stops early.
    pub fn is_follow_up(&self) -> bool {
        matches!(
            self,
            Action::RestartCoordinator | Action::StartWorker | Action::Thaw(_) | Action::FaultsOff
        )
    }
}

/// A round, decided by its seed alone.
pub struct Plan {
    /// Output on `s3://out/…` (even seeds) or a local directory (odd seeds).
    pub s3_output: bool,
    /// DARE's `--random-seed`.
    pub random_seed: u64,
    /// `--out-shard-size`: one shard, or several and an index.
    pub shard_size: &'static str,
    /// Workers at the start.
    pub workers: usize,
    /// The merge method (the config of the synthetic models).
    pub method: Method,
    /// `--chunk-size` of each start of the coordinator in turn (the first plans the job; a
    /// restart resumes it with the journaled size, whatever its own flag); the last repeats.
    /// `None`: the default (256m, which splits no tensor of the synthetic models).
    pub chunk_sizes: Vec<Option<u64>>,
    /// The span after submit in which `events` fall.
    pub window: Duration,
    /// Actions at times after submit.
    pub events: Vec<(Duration, Action)>,
    /// Run (after their delays) once all units but two are done: they aim at the commit.
    pub at_end: Vec<(Duration, Action)>,
}

impl Plan {
    pub fn new(seed: u64) -> Plan {
        let s3_output = seed.is_multiple_of(2);
        let mut rng = SeededRng::new(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0xc4a0_5eed);
        let window = Duration::from_secs_f64(rng.range(0.6, 1.0) * WINDOW_SECS);
        let at = |rng: &mut SeededRng| window.mul_f64(rng.range(0.03, 1.0));
        let mut events = vec![
            (at(&mut rng), coordinator_kill(&mut rng)),
            (at(&mut rng), fault_period(&mut rng, s3_output)),
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
                fault_period(&mut rng, s3_output)
            };
            events.push((at(&mut rng), action));
        }
        // Every sixth seed cancels its job (so the default seeds cover it three times).
        if seed % 6 == 5 {
            let t = window.mul_f64(rng.range(0.1, 0.8));
            events.push((t, Action::Cancel(1)));
        }
        events.sort_by_key(|e| e.0);
        let mut end_rng = SeededRng::new(seed ^ 0x00e4_d0e4);
        let mut at_end = Vec::new();
        if end_rng.chance(0.4) {
            at_end.push((secs(end_rng.range(0.0, 2.0)), coordinator_kill(&mut end_rng)));
        }
        if end_rng.chance(0.5) {
            at_end.push((Duration::ZERO, commit_faults(&mut end_rng, s3_output)));
        }
        let (method, chunk_sizes) = chunking(seed);
        Plan {
            s3_output,
            method,
            chunk_sizes,
            random_seed: 1 + rng.below(1_000_000),
            shard_size: ["5B", "20m", "12m"][rng.below(3) as usize],
            workers: 2 + rng.below(2) as usize,
            window,
            events,
            at_end,
        }
    }

    /// Whether the job is split into chunk tasks (with statistics units) when submitted.
    pub fn chunked(&self) -> bool {
        self.chunk_sizes[0].is_some()
    }

    /// The `--chunk-size` flags of the coordinator starts the schedule may make (one for the
    /// first start and one per planned kill), for the round's description.
    pub fn chunk_flags(&self) -> String {
        let kills = (self.events.iter().chain(&self.at_end))
            .filter(|e| matches!(e.1, Action::KillCoordinator { .. }))
            .count();
        let flags: Vec<String> = (0..=kills)
            .map(|i| chunk_flag(self.chunk_sizes.get(i).copied().flatten()))
            .collect();
        flags.join(" ")
    }
}

/// Half the rounds (seeds 2, 3, 6, 7, 10, 11, …, so output on S3 and local alike) split their
/// job into chunk tasks: a `--chunk-size` of 150 kB to 3 MB, so every matrix of the synthetic
/// models (1.2 to 9.2 MB) has 1 to about 60 chunks and every method needs statistics units. Their
/// method turns with the seed: DARE-TIES (rescale: one pass of L1 partials), TIES (two
/// histogram passes), SLERP (norms, then dots, on 2^20-element blocks), model_stock (a chain
/// of one-chunk passes carrying the norms), DELLA (row ranks; a pass of L1 partials whose
/// chunks read the rows around them), nuslerp (a chain of norms, then a pass of dots),
/// breadcrumbs_ties with rescale (two cuts' histogram passes, then L1 partials), sce
/// (variance histograms, then mean-square partials), multislerp (three chains of norms
/// around a pass of dots) or arcee_fusion (histograms of sampled importances over whole rows).
/// Other rounds run
/// DARE-TIES unsplit. Some restarts of the coordinator change the flag (a chunked job must
/// keep its journaled size; an unsplit one must not become split). A stream of its own, so
/// the fault schedule of a seed is the same as before chunk rounds existed.
fn chunking(seed: u64) -> (Method, Vec<Option<u64>>) {
    let mut rng = SeededRng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x00c4_0c5e);
    let chunked = (seed / 2) % 2 == 1;
    let size = |rng: &mut SeededRng| {
        let log = rng.range(150e3_f64.ln(), 3e6_f64.ln());
        Some(log.exp().round() as u64)
    };
    let first = if chunked { size(&mut rng) } else { None };
    let mut sizes = vec![first];
    for _ in 0..16 {
        let next = if !rng.chance(0.3) {
            first
        } else if first.is_some() && rng.chance(0.5) {
            None
        } else {
            size(&mut rng)
        };
        sizes.push(next);
    }
    // Chunked seeds are 2 and 3 mod 4: numbered 0, 1, 2, ..., any 10 in a row (so those of the
    // default seeds 1..=20) run every method.
    let method = if chunked {
        let index = seed / 4 * 2 + seed % 2;
        Method::ALL[(index % Method::ALL.len() as u64) as usize]
    } else {
        Method::DareTies
    };
    (method, sizes)
}

/// A `--chunk-size` for descriptions (`default` when the flag is not given).
pub fn chunk_flag(size: Option<u64>) -> String {
    size.map_or_else(|| "default".to_string(), |b| b.to_string())
}

/// The merge methods of the rounds, each needing statistics passes when split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    DareTies,
    Ties,
    Slerp,
    ModelStock,
    Della,
    Nuslerp,
    Breadcrumbs,
    Sce,
    Multislerp,
    ArceeFusion,
}

impl Method {
    pub const ALL: [Method; 10] = [
        Method::DareTies,
        Method::Ties,
        Method::Slerp,
        Method::ModelStock,
        Method::Della,
        Method::Nuslerp,
        Method::Breadcrumbs,
        Method::Sce,
        Method::Multislerp,
        Method::ArceeFusion,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::DareTies => "dare_ties",
            Method::Ties => "ties",
            Method::Slerp => "slerp",
            Method::ModelStock => "model_stock",
            Method::Della => "della",
            Method::Nuslerp => "nuslerp",
            Method::Breadcrumbs => "breadcrumbs_ties",
            Method::Sce => "sce",
            Method::Multislerp => "multislerp",
            Method::ArceeFusion => "arcee_fusion",
        }
    }

    /// Writes the config over the synthetic family at `prefix` (`s3://synth` or a local
    /// directory) into `dir`; `kind` names the file.
    pub fn config(self, dir: &Path, prefix: &str, kind: &str) -> PathBuf {
        if self == Method::DareTies {
            return super::synth_config(dir, prefix); // the suite's original config
        }
        let yaml = match self {
            Method::Slerp => format!(
                "slices:
  - sources:
      - model: {prefix}/base
        layer_range: [0, 6]
      - model: {prefix}/finetune-a
        layer_range: [0, 6]
merge_method: slerp
base_model: {prefix}/base
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
"
            ),
            Method::ModelStock => format!(
                "models:
  - model: {prefix}/base
  - model: {prefix}/finetune-a
  - model: {prefix}/finetune-b
merge_method: model_stock
base_model: {prefix}/base
dtype: bfloat16
"
            ),
            Method::Nuslerp => format!(
                "models:
  - model: {prefix}/finetune-a
    parameters:
      weight: 0.7
  - model: {prefix}/finetune-b
    parameters:
      weight: 0.4
merge_method: nuslerp
base_model: {prefix}/base
dtype: bfloat16
"
            ),
            Method::Della => format!(
                "models:
  - model: {prefix}/base
  - model: {prefix}/finetune-a
    parameters:
      density: 0.53
      weight: 0.6
      epsilon: 0.2
  - model: {prefix}/finetune-b
    parameters:
      density: 0.4
      weight: 0.3
      epsilon: 0.1
merge_method: della
base_model: {prefix}/base
dtype: bfloat16
"
            ),
            Method::Breadcrumbs => format!(
                "models:
  - model: {prefix}/base
  - model: {prefix}/finetune-a
    parameters:
      density: 0.6
      gamma: 0.05
      weight: 0.6
  - model: {prefix}/finetune-b
    parameters:
      density: 0.4
      gamma: 0.1
      weight: 0.3
merge_method: breadcrumbs_ties
base_model: {prefix}/base
parameters:
  rescale: true
dtype: bfloat16
"
            ),
            Method::Multislerp => format!(
                "models:
  - model: {prefix}/base
  - model: {prefix}/finetune-a
    parameters:
      weight: 0.6
  - model: {prefix}/finetune-b
    parameters:
      weight: 0.3
merge_method: multislerp
base_model: {prefix}/base
dtype: bfloat16
"
            ),
            Method::ArceeFusion => format!(
                "models:
  - model: {prefix}/base
  - model: {prefix}/finetune-a
merge_method: arcee_fusion
base_model: {prefix}/base
dtype: bfloat16
"
            ),
            Method::Sce => format!(
                "models:
  - model: {prefix}/base
  - model: {prefix}/finetune-a
  - model: {prefix}/finetune-b
merge_method: sce
base_model: {prefix}/base
parameters:
  select_topk: 0.6
dtype: bfloat16
"
            ),
            _ => format!(
                "models:
  - model: {prefix}/base
  - model: {prefix}/finetune-a
    parameters:
      density: 0.53
      weight: 0.6
  - model: {prefix}/finetune-b
    parameters:
      density: 0.4
      weight: 0.3
merge_method: ties
base_model: {prefix}/base
parameters:
  int8_mask: true
dtype: bfloat16
"
            ),
        };
        let p = dir.join(format!("chaos-{}-{kind}.yml", self.name()));
        std::fs::write(&p, yaml).unwrap();
        p
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn coordinator_kill(rng: &mut SeededRng) -> Action {
    let down = if rng.chance(0.5) { 0.0 } else { rng.range(0.5, 4.0) };
    Action::KillCoordinator { down: secs(down) }
}

/// S3 faults on some of GET / UploadPart / Complete, 5–35 % of those requests in total. A
/// local output makes no S3 uploads, so there GETs are always among the targets.
fn fault_period(rng: &mut SeededRng, s3_output: bool) -> Action {
    let mut targets = [rng.chance(0.6), rng.chance(0.6), rng.chance(0.6)];
    if !targets.contains(&true) {
        targets[rng.below(3) as usize] = true;
    }
    targets[0] |= !s3_output;
    let total = rng.range(0.05, 0.35);
    let mut weights = [0.0; 5];
    for (i, w) in weights.iter_mut().enumerate() {
        // Lost replies are the harshest (the operation happened): weighted down.
        *w = rng.unit()
            * if FaultKind::ALL[i] == FaultKind::LostReply {
                0.3
            } else {
                1.0
            };
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

/// Heavy S3 faults on CompleteMultipartUpload (and maybe UploadPart): 30–60 %, a good share of
/// them lost replies, so that completions are retried and some happen without their answer.
/// A local output has no S3 commit: the last units' GETs get half as many faults instead.
fn commit_faults(rng: &mut SeededRng, s3_output: bool) -> Action {
    let total = rng.range(0.3, 0.6);
    let lost_reply = |i: usize| f64::from(FaultKind::ALL[i] == FaultKind::LostReply);
    let weights: [f64; 5] = std::array::from_fn(|i| rng.unit() + lost_reply(i));
    let sum: f64 = weights.iter().sum::<f64>().max(1e-9);
    let parts_too = rng.chance(0.5);
    let (targets, total) = if s3_output {
        ([false, parts_too, true], total)
    } else {
        ([true, false, false], total / 2.0)
    };
    Action::Faults {
        config: FaultConfig {
            rates: weights.map(|w| total * w / sum),
            targets,
            slow_body_max: Duration::from_millis(1500),
        },
        period: secs(rng.range(3.0, 8.0)),
    }
}

/// An action for the round's log (fault rates in percent).
pub fn brief(action: &Action) -> String {
    match action {
        Action::Faults { config, period } => {
            let rates: Vec<String> = (FaultKind::ALL.iter().zip(config.rates))
                .map(|(k, r)| format!("{} {:.1}%", k.name(), r * 100.0))
                .collect();
            let targets: Vec<&str> = (Target::ALL.iter().zip(config.targets))
                .filter(|(_, on)| *on)
                .map(|(t, _)| t.name())
                .collect();
            format!(
                "S3 faults on {targets:?} for {:.1}s: {}",
                period.as_secs_f64(),
                rates.join(", ")
            )
        }
        other => format!("{other:?}"),
    }
}
