//! The wire form of a [`SumPartial`]: a flat `repeated float` (header, then the state arrays),
//! decoded with every count and digit checked, never a panic.

use super::*;

/// First float of the wire form (format version).
const FORMAT: f32 = 1.0;
/// Floats in the wire header: format, kind, then part_len, start, len as 3 digits each.
pub(super) const HEADER: usize = 2 + 3 * INT_DIGITS;
const INT_DIGITS: usize = 3;
const DIGIT: u64 = 1 << 24;

/// Appends `n` as [`INT_DIGITS`] exact floats, base-2^24 digits from the least significant.
fn push_int(v: &mut Vec<f32>, n: usize) {
    let mut n = n as u64;
    for _ in 0..INT_DIGITS {
        v.push((n % DIGIT) as f32);
        n /= DIGIT;
    }
}

/// Reads an integer written by [`push_int`], checking every digit.
fn read_int(v: &[f32], what: &str) -> Result<usize, String> {
    let mut n = 0u64;
    for (i, &d) in v.iter().enumerate().rev() {
        let max = if i + 1 == INT_DIGITS { 1 << 16 } else { DIGIT };
        if !(d >= 0.0 && d < max as f32 && d.fract() == 0.0) {
            return Err(format!("{what}: digit {i} is {d}, not an integer in 0..{max}"));
        }
        n = n * DIGIT + d as u64;
    }
    usize::try_from(n).map_err(|_| format!("{what} {n} does not fit in usize"))
}
impl SumPartial {
    /// Flat f32 encoding for the wire (a protobuf `repeated float`); see the module docs.
    pub fn to_floats(&self) -> Vec<f32> {
        let kind = match self.kind {
            SumKind::F32 => 0.0,
            SumKind::Bf16 => 1.0,
        };
        let mut v = vec![FORMAT, kind];
        for n in [self.part_len, self.start, self.len] {
            push_int(&mut v, n);
        }
        let mut arrays: Vec<&Cols> = self.head.iter().collect();
        if let Some(c) = &self.carried {
            arrays.extend(&c.done);
            arrays.push(&c.open);
        }
        if let Some(e) = &self.end {
            arrays.extend(&e.acc);
        }
        v.extend(arrays.into_iter().flatten().flatten());
        if let Some(e) = &self.end {
            v.extend(e.loads.iter().flatten());
            v.push(e.scalar);
        }
        v
    }

    /// Decodes [`SumPartial::to_floats`], checking the header and the length; a malformed vector
    /// is an `Err` describing the problem.
    pub fn from_floats(v: &[f32]) -> Result<Self, String> {
        if v.len() < HEADER {
            return Err(format!("{} floats, fewer than the {HEADER}-float header", v.len()));
        }
        if v[0] != FORMAT {
            return Err(format!("unknown partial sum format {}", v[0]));
        }
        let kind = match v[1] {
            0.0 => SumKind::F32,
            1.0 => SumKind::Bf16,
            k => return Err(format!("unknown tensor kind {k}")),
        };
        let int = |i: usize, what| read_int(&v[2 + i * INT_DIGITS..2 + (i + 1) * INT_DIGITS], what);
        let (part_len, start, len) = (int(0, "part_len")?, int(1, "start")?, int(2, "len")?);
        let layout = Layout::of(kind, part_len, start, len)?;
        let want = layout.floats().ok_or("partial length overflows")?;
        if v.len() != want {
            return Err(format!(
                "{} floats, expected {want} for range {start}+{len} of {part_len}",
                v.len()
            ));
        }
        let mut body = v[HEADER..].iter().copied();
        let mut lanes = || -> V { std::array::from_fn(|_| body.next().unwrap_or_default()) };
        let mut cols = || -> Cols { std::array::from_fn(|_| lanes()) };
        let head = (0..layout.head).map(|_| cols()).collect();
        let carried = layout.done.map(|d| Carried {
            done: (0..d).map(|_| cols()).collect(),
            open: cols(),
        });
        let acc = layout.loads.map(|_| [cols(), cols()]);
        let end = layout.loads.zip(acc).map(|(l, acc)| End {
            acc,
            loads: (0..l).map(|_| lanes()).collect(),
            scalar: v[v.len() - 1],
        });
        Ok(SumPartial {
            kind,
            part_len,
            start,
            len,
            head,
            carried,
            end,
        })
    }
}
