//! What a plan holds, for the report: tasks and units by kind, bytes by kind, and the longest
//! dependency chain.

use shardmerge_coordinator::Plan;
use shardmerge_coordinator::cluster::units::UnitPlan;
use std::collections::{HashMap, HashSet};

/// What the plan holds: tasks and units by kind.
pub struct Shape {
    /// Output tensors (whole tasks plus chunked tensors).
    pub tensors: usize,
    /// Tasks: whole-tensor tasks plus chunk tasks.
    pub tasks: usize,
    /// Tensors split into chunk tasks.
    pub chunked: usize,
    /// Chunk tasks of statistics passes.
    pub stats_tasks: usize,
    /// Apply chunk tasks.
    pub apply_chunks: usize,
    /// Statistics units (no output).
    pub stats_units: usize,
    /// Units with output (whole tasks and apply chunks).
    pub apply_units: usize,
    /// Input bytes the statistics units read.
    pub stats_read: u64,
    /// Output bytes written.
    pub written: u64,
    /// Longest dependency chain in seconds: a unit alone, or a chunked tensor's longest
    /// statistics unit followed by its longest apply unit.
    pub critical: f64,
}

impl Shape {
    /// The shape of `plan` split into `units`, which move `moved` bytes each at `bandwidth`.
    pub fn of(plan: &Plan, units: &[UnitPlan], moved: &[u64], bandwidth: f64) -> Shape {
        let tasks = &plan.proto.tasks;
        let chunks = || tasks.iter().filter_map(|t| t.chunk.as_ref());
        let groups: HashSet<u64> = chunks().map(|c| c.group).collect();
        let stats_tasks = chunks().filter(|c| c.pass >= 1).count();
        let dur = |i: usize| moved[i] as f64 / bandwidth;
        // Per chunked tensor: its longest statistics unit and its longest apply unit.
        let mut chain: HashMap<u64, (f64, f64)> = HashMap::new();
        let mut critical = 0f64;
        for (i, u) in units.iter().enumerate() {
            critical = critical.max(dur(i));
            for c in u.tasks.iter().filter_map(|&t| tasks[t].chunk.as_ref()) {
                let e = chain.entry(c.group).or_default();
                let slot = if c.pass >= 1 { &mut e.0 } else { &mut e.1 };
                *slot = slot.max(dur(i));
            }
        }
        let critical = chain.values().map(|(a, b)| a + b).fold(critical, f64::max);
        let stats_units = units.iter().filter(|u| u.stats).count();
        Shape {
            tensors: tasks.iter().filter(|t| t.chunk.is_none()).count() + groups.len(),
            tasks: tasks.len(),
            chunked: groups.len(),
            stats_tasks,
            apply_chunks: chunks().count() - stats_tasks,
            stats_units,
            apply_units: units.len() - stats_units,
            stats_read: units.iter().zip(moved).filter(|(u, _)| u.stats).map(|(_, m)| m).sum(),
            written: units.iter().map(UnitPlan::bytes).sum(),
            critical,
        }
    }
}
