//! A unit's output range as its multipart parts, each buffered only until it is complete: tasks
//! run in offset order, so once a task is done every byte before its end is final, and the parts
//! below it are handed out for upload while later tasks compute.

use parking_lot::Mutex;
use shardmerge_proto::v1::UnitOutput;

/// The unit's parts: byte range in the shard and, until taken, its buffer (allocated on first
/// write).
pub(super) struct PartBuffers {
    ranges: Vec<(u64, u64)>,
    bufs: Vec<Mutex<Part>>,
}

enum Part {
    Empty,
    Filling(Vec<u8>),
    Taken,
}

impl PartBuffers {
    /// The parts of `out`; the shard header is placed into the first part of a unit at offset 0.
    pub(super) fn new(out: &UnitOutput) -> Self {
        let ranges: Vec<(u64, u64)> = out
            .part_starts
            .iter()
            .enumerate()
            .map(|(i, &s)| (s, out.part_starts.get(i + 1).copied().unwrap_or(out.end)))
            .collect();
        let bufs = ranges.iter().map(|_| Mutex::new(Part::Empty)).collect();
        let parts = PartBuffers { ranges, bufs };
        if out.start == 0 && !out.header.is_empty() {
            let h = (out.header.len() as u64).min(out.end) as usize;
            // The header lies inside the unit's range, so this cannot fail.
            let _ = parts.write(0, &out.header[..h]);
        }
        parts
    }

    /// Copies `bytes` to shard offset `offset`; `Err` if they fall outside the unit's parts or
    /// into a part already taken.
    pub(super) fn write(&self, offset: u64, bytes: &[u8]) -> Result<(), String> {
        let end = offset + bytes.len() as u64;
        let first = self.ranges.partition_point(|&(_, e)| e <= offset);
        let mut covered = offset;
        for (i, &(s, e)) in self.ranges.iter().enumerate().skip(first) {
            if s >= end {
                break;
            }
            if s > covered {
                break;
            }
            let (from, to) = (covered.max(s), end.min(e));
            let mut part = self.bufs[i].lock();
            if matches!(*part, Part::Empty) {
                *part = Part::Filling(vec![0u8; (e - s) as usize]);
            }
            let Part::Filling(buf) = &mut *part else {
                return Err(format!("write at {offset} into part {i}, already uploaded"));
            };
            buf[(from - s) as usize..(to - s) as usize]
                .copy_from_slice(&bytes[(from - offset) as usize..(to - offset) as usize]);
            covered = to;
        }
        if covered < end || bytes.is_empty() && first >= self.ranges.len() {
            return Err(format!(
                "write of {} bytes at {offset} is outside the unit's range",
                bytes.len()
            ));
        }
        Ok(())
    }

    /// Takes every part that is complete once all bytes below `done_to` are final (index within
    /// the unit, bytes), in order.
    pub(super) fn take_complete(&self, done_to: u64) -> Vec<(usize, Vec<u8>)> {
        let mut out = Vec::new();
        for (i, &(s, e)) in self.ranges.iter().enumerate() {
            if e > done_to {
                break;
            }
            let mut part = self.bufs[i].lock();
            match std::mem::replace(&mut *part, Part::Taken) {
                Part::Filling(buf) => out.push((i, buf)),
                // Never written (padding only): zeros.
                Part::Empty => out.push((i, vec![0u8; (e - s) as usize])),
                Part::Taken => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(start: u64, end: u64, parts: Vec<u64>, header: &[u8]) -> UnitOutput {
        UnitOutput {
            start,
            end,
            part_starts: parts,
            header: header.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn writes_across_part_boundaries_and_hands_out_finished_parts_in_order() {
        let p = PartBuffers::new(&out(0, 10, vec![0, 4, 8], b"hh"));
        p.write(3, b"abc").unwrap();
        assert!(p.take_complete(3).is_empty(), "part 0 ends at 4");
        assert_eq!(p.take_complete(6), vec![(0, b"hh\0a".to_vec())]);
        assert!(p.write(2, b"x").is_err(), "part 0 is gone");
        p.write(6, b"defg").unwrap();
        assert_eq!(p.take_complete(10), vec![(1, b"bcde".to_vec()), (2, b"fg".to_vec())]);
        assert!(p.take_complete(10).is_empty(), "each part once");
    }

    #[test]
    fn refuses_writes_outside_the_unit() {
        let p = PartBuffers::new(&out(100, 110, vec![100], b""));
        assert!(p.write(95, b"abcdefgh").is_err());
        assert!(p.write(108, b"abc").is_err());
        p.write(100, b"0123456789").unwrap();
        assert_eq!(p.take_complete(110), vec![(0, b"0123456789".to_vec())]);
    }
}
