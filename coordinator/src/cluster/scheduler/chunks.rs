//! Chunk pipelines in the scheduler: units of a later statistics pass (or of apply) wait until
//! every unit of the pass before has settled; a leased unit carries the statistics its chunk
//! tasks receive (see [`crate::chunk_book`]).

use super::{JobEntry, UnitState};
use crate::chunk_book::ChunkBook;
use shardmerge_proto::v1::{TaskStats, WorkUnit};
use std::collections::VecDeque;

/// Whether every task of `unit` may run now.
fn ready(book: &ChunkBook, unit: &WorkUnit) -> bool {
    unit.tasks.iter().all(|t| book.ready(t))
}

/// Builds a job's book from its units and the statistics of its done units (resume), and
/// splits the pending units into ready (queued) and waiting ones.
pub(super) fn resume_book(
    units: &[WorkUnit],
    states: &mut [UnitState],
) -> Result<(ChunkBook, VecDeque<usize>, Vec<usize>), String> {
    let all: Vec<_> = units.iter().flat_map(|u| u.tasks.iter().cloned()).collect();
    let mut book = ChunkBook::new(&all);
    for (u, s) in units.iter().zip(states.iter_mut()) {
        if let UnitState::Done { stats, .. } = s {
            record(&mut book, u, &std::mem::take(stats))?;
        }
    }
    let (mut queue, mut waiting) = (VecDeque::new(), Vec::new());
    for (i, s) in states.iter().enumerate() {
        if *s == UnitState::Pending {
            if ready(&book, &units[i]) {
                queue.push_back(i);
            } else {
                waiting.push(i);
            }
        }
    }
    Ok((book, queue, waiting))
}

/// Records the statistics a unit returned; returns whether a pass completed.
fn record(book: &mut ChunkBook, unit: &WorkUnit, stats: &[TaskStats]) -> Result<bool, String> {
    let mut completed = false;
    for s in stats {
        let task = unit
            .tasks
            .iter()
            .find(|t| t.task_id == s.task_id)
            .ok_or_else(|| format!("unit {}: statistics of unknown task {}", unit.unit_id, s.task_id))?;
        let st = s.stats.clone().unwrap_or_default();
        completed |= book.record(task, st).map_err(|e| e.to_string())?;
    }
    Ok(completed)
}

/// Checks a statistics unit's report: one result per task, in task order (and none from a
/// unit with output).
pub(super) fn check_stats(unit: &WorkUnit, stats: &[TaskStats]) -> Result<(), String> {
    let want: Vec<u64> = if unit.output.is_none() {
        unit.tasks.iter().map(|t| t.task_id).collect()
    } else {
        Vec::new()
    };
    let got: Vec<u64> = stats.iter().map(|s| s.task_id).collect();
    if got != want || stats.iter().any(|s| s.stats.is_none()) {
        return Err(format!(
            "statistics for tasks {got:?} reported where {want:?} are planned"
        ));
    }
    Ok(())
}

/// A settled unit's statistics: records them (then drops them: the book keeps what later
/// passes need, and a resume reads them from the journal) and queues the units they made ready.
pub(super) fn settle_stats(j: &mut JobEntry, i: usize) -> Result<(), String> {
    let UnitState::Done { stats, .. } = &mut j.states[i] else {
        return Ok(());
    };
    let stats = std::mem::take(stats);
    if stats.is_empty() || !record(&mut j.book, &j.units[i], &stats)? {
        return Ok(());
    }
    let waiting = std::mem::take(&mut j.waiting);
    for u in waiting {
        if j.states[u] == UnitState::Pending && ready(&j.book, &j.units[u]) {
            j.queue.push_back(u);
        } else {
            j.waiting.push(u);
        }
    }
    Ok(())
}

/// Fills in the statistics every chunk task of a leased unit receives.
pub(super) fn fill_stats(book: &ChunkBook, unit: &mut WorkUnit) {
    for t in &mut unit.tasks {
        if let Some(filled) = book.dispatch(t) {
            *t = filled;
        }
    }
}
