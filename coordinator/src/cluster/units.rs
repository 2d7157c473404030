//! Work units: the tensors that fill one contiguous byte range of one output shard.
//!
//! Units group consecutive tensors (in file order) until they reach a target size, so small
//! tensors share a unit and an S3 multipart part is never smaller than the 5 MiB minimum
//! (except the last part of a shard). A unit larger than the maximum part size uploads several
//! parts. The first unit of a shard starts at byte 0 and carries the shard header.

use crate::plan::Plan;
use shardmerge_proto::v1::{MergeTask, UnitOutput, WorkUnit};

/// Minimum size of every multipart part but the last (the S3 limit).
pub const MIN_PART: u64 = 5 << 20;
/// Target size of one part (and of one unit of small tensors).
pub const TARGET_PART: u64 = 64 << 20;
/// Tasks of one statistics unit at most: its report carries every task's statistics (a TIES
/// histogram can reach about 1 MB per input), which must fit a gRPC message.
pub const MAX_STATS_UNIT_TASKS: usize = 16;

/// A planned unit before it is bound to an upload.
#[derive(Debug, Clone)]
pub struct UnitPlan {
    /// Unit id (its index).
    pub unit_id: u64,
    /// Shard index.
    pub shard: usize,
    /// Byte range in the shard.
    pub start: u64,
    /// End of the byte range.
    pub end: u64,
    /// Indices into `plan.proto.tasks`.
    pub tasks: Vec<usize>,
    /// Index of this unit's first multipart part within its shard.
    pub first_part: u32,
    /// Start offset of each part of this unit.
    pub part_starts: Vec<u64>,
    /// A unit of statistics chunk tasks: no output range, no parts.
    pub stats: bool,
}

impl UnitPlan {
    /// Output bytes this unit covers.
    pub fn bytes(&self) -> u64 {
        self.end - self.start
    }
}

/// Splits every shard of `plan` into units of about `target` bytes.
pub fn plan_units(plan: &Plan, target: u64) -> Vec<UnitPlan> {
    let target = target.max(MIN_PART);
    let mut units = Vec::new();
    for (si, shard) in plan.proto.shards.iter().enumerate() {
        // Tasks of this shard in file order.
        let mut tasks: Vec<(u64, u64, usize)> = plan
            .proto
            .tasks
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let o = t.output.as_ref()?;
                (o.shard_index as usize == si).then_some((o.offset, o.offset + o.length, i))
            })
            .collect();
        tasks.sort_unstable();
        let mut groups: Vec<(u64, u64, Vec<usize>)> = Vec::new();
        let mut cur: Option<(u64, u64, Vec<usize>)> = None;
        for (start, end, ti) in tasks {
            match cur.as_mut() {
                Some(c) if c.1 - c.0 < target => {
                    c.1 = end;
                    c.2.push(ti);
                }
                _ => {
                    if let Some(c) = cur.take() {
                        groups.push(c);
                    }
                    let s = if groups.is_empty() { 0 } else { start };
                    cur = Some((s, end, vec![ti]));
                }
            }
        }
        if let Some(c) = cur.take() {
            groups.push(c);
        }
        if groups.is_empty() {
            groups.push((0, shard.total_bytes, vec![]));
        }
        // A trailing group below the part minimum joins its predecessor.
        if groups.len() > 1 && groups[groups.len() - 1].1 - groups[groups.len() - 1].0 < MIN_PART {
            let last = groups.pop().expect("len > 1");
            let prev = groups.last_mut().expect("len > 1");
            prev.1 = last.1;
            prev.2.extend(last.2);
        }
        let mut part = 0u32;
        for (start, end, tasks) in groups {
            let mut part_starts = vec![start];
            let mut p = start + TARGET_PART;
            while p + MIN_PART <= end {
                part_starts.push(p);
                p += TARGET_PART;
            }
            let n = part_starts.len() as u32;
            units.push(UnitPlan {
                unit_id: units.len() as u64,
                shard: si,
                start,
                end,
                tasks,
                first_part: part,
                part_starts,
                stats: false,
            });
            part += n;
        }
    }
    stats_units(plan, target, &mut units);
    units
}

/// Appends units of statistics chunk tasks: consecutive chunks of one pass of one tensor, up
/// to `target` bytes of input read per unit.
fn stats_units(plan: &Plan, target: u64, units: &mut Vec<UnitPlan>) {
    let mut cur: Option<((u64, u32), u64, Vec<usize>)> = None;
    let flush = |cur: &mut Option<((u64, u32), u64, Vec<usize>)>, units: &mut Vec<UnitPlan>| {
        if let Some((_, _, tasks)) = cur.take() {
            units.push(UnitPlan {
                unit_id: units.len() as u64,
                shard: 0,
                start: 0,
                end: 0,
                tasks,
                first_part: 0,
                part_starts: Vec::new(),
                stats: true,
            });
        }
    };
    for (i, t) in plan.proto.tasks.iter().enumerate() {
        let Some(c) = t.chunk.as_ref().filter(|c| c.pass >= 1) else {
            continue;
        };
        let key = (c.group, c.pass);
        let bytes: u64 = t
            .inputs
            .iter()
            .filter_map(|i| i.source.as_ref())
            .map(|s| shardmerge_worker::chunk::input_range(t, s).1)
            .sum();
        match cur.as_mut() {
            Some((k, b, tasks)) if *k == key && *b < target && tasks.len() < MAX_STATS_UNIT_TASKS => {
                *b += bytes;
                tasks.push(i);
            }
            _ => {
                flush(&mut cur, units);
                cur = Some((key, bytes, vec![i]));
            }
        }
    }
    flush(&mut cur, units);
}

/// The wire form of a unit, bound to the shard location and upload id.
pub fn work_unit(
    plan: &Plan,
    job_id: &str,
    unit: &UnitPlan,
    shard_uri: &str,
    upload_id: &str,
    attempt: u32,
) -> WorkUnit {
    let tasks: Vec<MergeTask> = unit
        .tasks
        .iter()
        .map(|&i| {
            let mut t = plan.proto.tasks[i].clone();
            if let Some(o) = t.output.as_mut() {
                o.uri = shard_uri.to_string();
            }
            t
        })
        .collect();
    let header = if unit.start == 0 && !upload_id.is_empty() {
        plan.proto.shards[unit.shard].header.clone()
    } else {
        Vec::new()
    };
    WorkUnit {
        job_id: job_id.to_string(),
        unit_id: unit.unit_id,
        tasks,
        output: (!unit.stats).then(|| UnitOutput {
            shard_uri: shard_uri.to_string(),
            start: unit.start,
            end: unit.end,
            upload_id: upload_id.to_string(),
            first_part: unit.first_part,
            part_starts: unit.part_starts.clone(),
            header,
        }),
        attempt,
    }
}
