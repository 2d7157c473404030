//! The runtime side of chunk pipelines: which chunk tasks may run, the statistics they
//! receive, and the folding of each pass's results ([`shardmerge_worker::chunk::combine()`]).
//!
//! Pure bookkeeping shared by the embedded runtime and the cluster scheduler. A task of step
//! `s` (statistics pass `s`, or apply as step `passes + 1`) is ready once every chunk of step
//! `s - 1` has reported; its statistics are then filled in when it is dispatched. Results are
//! deterministic, so a repeated report of the same chunk is ignored.

use shardmerge_proto::v1::{ChunkStats, CombinedStats, MergeTask};
use shardmerge_worker::KernelError;
use shardmerge_worker::chunk;
use std::collections::HashMap;
use std::ops::Range;

/// A chunk task's step in its pipeline: statistics pass `k` is step `k`, apply is `passes + 1`.
pub fn step(task: &MergeTask) -> u32 {
    match &task.chunk {
        Some(c) if c.pass == 0 => c.passes + 1,
        Some(c) => c.pass,
        None => 1,
    }
}

/// One reported chunk of a statistics pass: its element range and what it returned.
type Reported = (Range<u64>, ChunkStats);

#[derive(Debug)]
struct Group {
    /// A task of the group (method, parameters, tensor size).
    template: MergeTask,
    /// Chunk count of each step, index `s - 1`.
    counts: Vec<usize>,
    /// Results of the statistics steps still being collected, by step then chunk index.
    partials: HashMap<u32, Vec<Option<Reported>>>,
    /// What each chunk of step `s >= 2` receives, once step `s - 1` is complete.
    received: HashMap<u32, Vec<CombinedStats>>,
}

/// Chunk pipelines of one plan.
#[derive(Debug, Default)]
pub struct ChunkBook {
    groups: HashMap<u64, Group>,
}

impl ChunkBook {
    /// The pipelines of `tasks` (tasks without statistics passes need no bookkeeping).
    pub fn new(tasks: &[MergeTask]) -> Self {
        let mut groups: HashMap<u64, Group> = HashMap::new();
        for t in tasks {
            let Some(c) = t.chunk.as_ref().filter(|c| c.passes > 0) else {
                continue;
            };
            let g = groups.entry(c.group).or_insert_with(|| Group {
                template: t.clone(),
                counts: vec![0; c.passes as usize + 1],
                partials: HashMap::new(),
                received: HashMap::new(),
            });
            let s = step(t);
            if let Some(n) = g.counts.get_mut(s as usize - 1) {
                *n = (*n).max(c.count as usize);
            }
            if c.pass >= 1 {
                g.partials.entry(s).or_insert_with(|| vec![None; c.count as usize]);
            }
        }
        ChunkBook { groups }
    }

    /// Whether `task` may run now.
    pub fn ready(&self, task: &MergeTask) -> bool {
        match task.chunk.as_ref().filter(|c| c.passes > 0) {
            None => true,
            Some(c) => {
                step(task) == 1
                    || self
                        .groups
                        .get(&c.group)
                        .is_some_and(|g| g.received.contains_key(&step(task)))
            }
        }
    }

    /// `task` as it is dispatched: with the statistics it receives. `None` if not ready.
    pub fn dispatch(&self, task: &MergeTask) -> Option<MergeTask> {
        let mut t = task.clone();
        let Some(c) = t.chunk.as_mut().filter(|c| c.passes > 0) else {
            return Some(t);
        };
        let s = step(task);
        if s > 1 {
            let received = self.groups.get(&c.group)?.received.get(&s)?;
            c.stats = Some(received.get(c.index as usize)?.clone());
        }
        Some(t)
    }

    /// Records the statistics a task of a statistics pass returned. Returns true when this
    /// completed its pass (so more tasks became ready). Fails when the statistics cannot be
    /// combined (they do not fit the tensor).
    pub fn record(&mut self, task: &MergeTask, stats: ChunkStats) -> Result<bool, KernelError> {
        let Some(c) = task.chunk.as_ref().filter(|c| c.pass >= 1) else {
            return Err(KernelError::Contract(format!(
                "`{}`: statistics from a task without a statistics pass",
                task.tensor
            )));
        };
        let s = c.pass;
        let g = self
            .groups
            .get_mut(&c.group)
            .ok_or_else(|| KernelError::Contract(format!("`{}`: unknown chunk group {}", task.tensor, c.group)))?;
        if g.received.contains_key(&(s + 1)) {
            return Ok(false);
        }
        let slots = g
            .partials
            .get_mut(&s)
            .ok_or_else(|| KernelError::Contract(format!("`{}`: no pass {s}", task.tensor)))?;
        let slot = slots
            .get_mut(c.index as usize)
            .ok_or_else(|| KernelError::Contract(format!("`{}`: chunk {} out of range", task.tensor, c.index)))?;
        if slot.is_none() {
            *slot = Some((c.start..c.start + c.len, stats));
        }
        if slots.iter().any(Option::is_none) {
            return Ok(false);
        }
        let all = g.partials.remove(&s).unwrap_or_default();
        let partials: Vec<chunk::combine::Partial<'_>> = all.iter().flatten().map(|(r, st)| (r.clone(), st)).collect();
        let next = g.counts.get(s as usize).copied().unwrap_or(0);
        let received = if s > 1 {
            g.received.get(&s).map(Vec::as_slice)
        } else {
            None
        };
        let combined = chunk::combine(&g.template, s, &partials, received, next)
            .map_err(|e| KernelError::Contract(format!("tensor `{}`, statistics pass {s}: {e}", g.template.tensor)))?;
        g.received.insert(s + 1, combined);
        Ok(true)
    }
}
