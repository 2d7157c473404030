//! torch's serial CPU sum (see [`super::torch_sum`]) of one part, split into aligned ranges
//! that are summed independently (on different machines) and then combined exactly.
//!
//! # Why aligned ranges decompose
//!
//! Within one of torch's parts ([`super::torch_sum::torch_parts`]) of `part_len` elements, the
//! kernel adds `rows = part_len / (4 * width)` ILP rows (`width` is 8 elements for float32 and
//! 16 for bfloat16) into a 4-level cascade with blocks of `step = 2^p` rows. Level 1
//! is carried into level 2 and cleared exactly when the row counter reaches a multiple of
//! `G = step^2`, and level 0 is clear at that point too. A range starting at a multiple of `G`
//! rows therefore starts with empty levels 0 and 1, and all it passes to the rest of the cascade
//! is the value level 1 holds at each multiple of `G` inside it (its *level-2 inputs*, each 4
//! columns of 8 lanes). The [`granule`] is `G` rows, in elements.
//!
//! Level 2 is in turn carried into level 3 (never cleared) and cleared at each multiple of
//! `S = step^3` rows, which lets a range pre-add most of its level-2 inputs without changing a
//! single rounding: only the inputs before its first multiple of `S` meet the level-2 value left
//! by earlier ranges.
//!
//! # State
//!
//! The [`SumPartial`] of the range `start..start + len` holds (every array is `[[f32; 8]; 4]`,
//! columns of lanes):
//! * `head`: the level-2 inputs up to and including the range's first multiple of `S` (all of them
//!   if it has none); the combiner adds them in order to its running level 2;
//! * only if the range contains a multiple of `S`: `done`, the level-2 value (summed from zero
//!   inside the range) at each later multiple of `S`, which the combiner adds in order to level 3
//!   after carrying its running level 2 there, and `open`, the level-2 value after the range's
//!   last multiple of `S` (summed from zero), which becomes the running level 2;
//! * only for the range that ends the part: `acc`, levels 0 and 1 after its last whole row;
//!   `loads`, the (at most 3) vector loads after the last whole ILP row, which `row_sum` adds to
//!   column 0; and `scalar`, the kernel's scalar tail (the last `part_len % width` elements summed
//!   from 0), or for a part shorter than one vector the whole scalar kernel value.
//!
//! The combiner ([`combine`]) replays the level-2/3 carries in order and then finishes exactly as
//! `multi_row_sum`, `row_sum` and `kernel` do. The wire form ([`SumPartial::to_floats`]) is a
//! header `[1.0, kind, part_len, start, len]` (kind 0 = F32, 1 = Bf16; each integer as three exact
//! floats, base-2^24 digits from the least significant) followed by `head`, then `done` and `open`
//! (if the range contains a multiple of `S`), then `acc[0]`, `acc[1]`, `loads` and `scalar` (if
//! it ends the part); arrays are flattened column by column, lanes in order. How many arrays each
//! list has follows from the header, and [`SumPartial::from_floats`] checks it. Values (NaN
//! payloads included) survive as long as the transport keeps f32 bits.
//!
//! Size: at most `step + 1` arrays of 32 floats plus one per `S` rows of the range (`S` is 4096
//! rows for parts of up to 2^19 rows), plus 89 floats for the last range, so a partial stays
//! small however long its range is.

use super::torch_sum::{Acc, Bf16Vec, F32Vec, ILP, LANES, LEVELS, Load, Scalar, V, add_row, ceil_log2, row_sum};
use super::torch_sum_stream::SumKind;
use std::ops::Range;

/// One cascade level: 4 columns of 8 lanes.
type Cols = [V; ILP];
const ZERO: Cols = [[0.0; LANES]; ILP];
/// Floats in the wire form of one [`Cols`].
const COLS: usize = ILP * LANES;
/// Longest ILP row of any load kind (bf16: 4 vectors of 16 elements).
const MAX_ROW: usize = 64;

/// `acc += x`, lane by lane (one cascade carry).
fn add_into(acc: &mut Cols, x: &Cols) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a = a.add(*b);
    }
}

/// The cascade geometry of one part.
#[derive(Clone, Copy)]
struct Geometry {
    /// Elements per vector load.
    width: usize,
    /// Elements per ILP row.
    row_len: usize,
    /// Whole ILP rows in the part.
    rows: usize,
    /// `p`: cascade blocks are `2^p` rows.
    power: u32,
}

impl Geometry {
    fn new(kind: SumKind, part_len: usize) -> Self {
        let width = match kind {
            SumKind::F32 => F32Vec::WIDTH,
            SumKind::Bf16 => Bf16Vec::WIDTH,
        };
        let rows = part_len / (ILP * width);
        let power = (ceil_log2(rows) / LEVELS as u32).max(4);
        Geometry {
            width,
            row_len: ILP * width,
            rows,
            power,
        }
    }

    /// Rows between carries of level `level - 1` into `level` (`step^level`).
    fn period(&self, level: u32) -> usize {
        1 << (level * self.power)
    }
}

/// Alignment, in elements, of chunk boundaries inside one torch part of `part_len` elements
/// (`G = step^2` rows times the row length; 8192 for float32 and 16384 for bfloat16 parts of up
/// to 2^19 rows); a part shorter than that is one range.
pub fn granule(kind: SumKind, part_len: usize) -> usize {
    let g = Geometry::new(kind, part_len);
    g.period(2) * g.row_len
}

/// How many arrays of each list a range's partial holds (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    head: usize,
    /// `Some(done.len())` if the range contains a multiple of `S` rows.
    done: Option<usize>,
    /// `Some(loads.len())` if the range ends the part.
    loads: Option<usize>,
}

impl Layout {
    /// Checks that `start..start + len` is an aligned range of the part, and returns its layout.
    fn of(kind: SumKind, part_len: usize, start: usize, len: usize) -> Result<Layout, String> {
        let g = Geometry::new(kind, part_len);
        let gran = granule(kind, part_len);
        let end = start.checked_add(len).filter(|&e| e <= part_len);
        let Some(end) = end else {
            return Err(format!("range {start}+{len} exceeds the part of {part_len} elements"));
        };
        if !start.is_multiple_of(gran) {
            return Err(format!("range start {start} is not a multiple of the granule {gran}"));
        }
        if len == 0 && part_len > 0 {
            return Err(format!("empty range at {start} of a part of {part_len} elements"));
        }
        let last = end == part_len;
        if !last && !end.is_multiple_of(gran) {
            return Err(format!(
                "range end {end} is neither a multiple of {gran} nor the part end"
            ));
        }
        let (group, sup) = (g.period(2), g.period(3));
        let first_row = start / g.row_len;
        let end_row = if last { g.rows } else { end / g.row_len };
        let groups = (end_row - first_row) / group;
        let last_group = first_row + groups * group;
        let first_sup = (first_row / sup + 1) * sup;
        let (head, done) = if first_sup <= last_group {
            (
                (first_sup - first_row) / group,
                Some(last_group / sup - first_sup / sup),
            )
        } else {
            (groups, None)
        };
        let loads = last.then(|| (part_len - g.rows * g.row_len) / g.width);
        Ok(Layout { head, done, loads })
    }

    /// Floats in the wire form, or `None` if that overflows.
    fn floats(&self) -> Option<usize> {
        let mut arrays = self.head;
        if let Some(d) = self.done {
            arrays = arrays.checked_add(d)?.checked_add(1)?;
        }
        let mut n = arrays.checked_mul(COLS)?.checked_add(HEADER)?;
        if let Some(l) = self.loads {
            n = n.checked_add(2 * COLS + l * LANES + 1)?;
        }
        Some(n)
    }
}

/// The level-2 values of a range that contains a multiple of `S` rows.
#[derive(Debug, Clone, PartialEq, Default)]
struct Carried {
    /// Level 2 at each multiple of `S` after the first, summed from zero inside the range.
    done: Vec<Cols>,
    /// Level 2 at the range's end, summed from zero after its last multiple of `S`.
    open: Cols,
}

/// The final state of the range that ends the part.
#[derive(Debug, Clone, PartialEq)]
struct End {
    /// Levels 0 and 1 after the part's last whole ILP row.
    acc: [Cols; 2],
    /// Vector loads after the last whole ILP row (`row_sum` adds them to column 0).
    loads: Vec<V>,
    /// The scalar tail summed from 0, or the whole value of a part shorter than one vector.
    scalar: f32,
}

/// Partial state of torch's serial cascade sum over one aligned range of one part (layout in the
/// module docs). Built by [`PartialStream`] or [`SumPartial::from_floats`], merged by [`combine`].
#[derive(Debug, Clone, PartialEq)]
pub struct SumPartial {
    kind: SumKind,
    part_len: usize,
    start: usize,
    len: usize,
    /// Level-2 inputs added to the running level 2, up to the first multiple of `S` rows.
    head: Vec<Cols>,
    carried: Option<Carried>,
    end: Option<End>,
}

impl SumPartial {
    /// The tensor kind the partial was computed for.
    pub fn kind(&self) -> SumKind {
        self.kind
    }

    /// Length of the part the range belongs to.
    pub fn part_len(&self) -> usize {
        self.part_len
    }

    /// The part-relative element range the partial covers.
    pub fn range(&self) -> Range<usize> {
        self.start..self.start + self.len
    }

    /// The partial of the part-relative `range` of a part of `part_len` elements that are all
    /// zero: exactly what [`PartialStream`] returns when fed `range.len()` zeros (every value
    /// `+0.0`, the layout of the range), built without feeding anything. For simulations and
    /// tests that need well-formed statistics of any size. `Err` as [`PartialStream::new`]
    /// for an unaligned range (or a reversed one).
    pub fn of_zeros(kind: SumKind, part_len: usize, range: Range<usize>) -> Result<SumPartial, String> {
        let len = (range.end.checked_sub(range.start)).ok_or_else(|| format!("reversed range {range:?}"))?;
        let layout = Layout::of(kind, part_len, range.start, len)?;
        Ok(SumPartial {
            kind,
            part_len,
            start: range.start,
            len,
            head: vec![ZERO; layout.head],
            carried: layout.done.map(|d| Carried {
                done: vec![ZERO; d],
                open: ZERO,
            }),
            end: layout.loads.map(|l| End {
                acc: [ZERO; 2],
                loads: vec![[0.0; LANES]; l],
                scalar: 0.0,
            }),
        })
    }
}

/// Incremental computation of one range's [`SumPartial`]: [`PartialStream::new`], then
/// [`PartialStream::feed`] with consecutive pieces of any length, then [`PartialStream::finish`].
pub struct PartialStream {
    kind: SumKind,
    geo: Geometry,
    part_len: usize,
    start: usize,
    len: usize,
    /// Elements fed so far (possibly more than `len`, which `finish` rejects).
    fed: usize,
    /// Part-relative index of the next ILP row, and the row the range stops adding rows at.
    row: usize,
    end_row: usize,
    /// Levels 0 and 1.
    acc: [Cols; 2],
    /// A started row, or (after the part's last whole row) the trailing elements.
    rest: [f32; MAX_ROW],
    rest_len: usize,
    head: Vec<Cols>,
    carried: Option<Carried>,
}

impl PartialStream {
    /// A stream over the part-relative range `range_start..range_start + range_len` of a part of
    /// `part_len` elements. `range_start` must be a multiple of [`granule`]`(kind, part_len)`,
    /// and the range end a multiple of it or `part_len`; only an empty part has an empty range.
    pub fn new(kind: SumKind, part_len: usize, range_start: usize, range_len: usize) -> Result<Self, String> {
        Layout::of(kind, part_len, range_start, range_len)?;
        let geo = Geometry::new(kind, part_len);
        let end = range_start + range_len;
        Ok(PartialStream {
            kind,
            geo,
            part_len,
            start: range_start,
            len: range_len,
            fed: 0,
            row: range_start / geo.row_len,
            end_row: if end == part_len { geo.rows } else { end / geo.row_len },
            acc: [ZERO; 2],
            rest: [0.0; MAX_ROW],
            rest_len: 0,
            head: Vec::new(),
            carried: None,
        })
    }

    /// Adds the next `xs.len()` elements of the range, already transformed (e.g. `|x|`).
    /// Elements past the range's length are not added; [`PartialStream::finish`] then fails.
    pub fn feed(&mut self, xs: &[f32]) {
        self.fed = self.fed.saturating_add(xs.len());
        if self.fed > self.len {
            return;
        }
        match self.kind {
            SumKind::F32 => self.feed_l::<F32Vec>(xs),
            SumKind::Bf16 => self.feed_l::<Bf16Vec>(xs),
        }
    }

    fn stash(&mut self, xs: &[f32]) {
        self.rest[self.rest_len..self.rest_len + xs.len()].copy_from_slice(xs);
        self.rest_len += xs.len();
    }

    /// [`super::torch_sum_stream::TorchSumStream`]'s row handling, up to `end_row`.
    #[inline(always)]
    fn feed_l<L: Load<A = V>>(&mut self, mut xs: &[f32]) {
        let row_len = self.geo.row_len;
        if self.row < self.end_row && self.rest_len > 0 {
            let take = (row_len - self.rest_len).min(xs.len());
            self.stash(&xs[..take]);
            xs = &xs[take..];
            if self.rest_len < row_len {
                return;
            }
            let row = self.rest;
            self.rest_len = 0;
            self.add_rows::<L>(&row[..row_len]);
        }
        let whole = (xs.len() / row_len).min(self.end_row - self.row);
        self.add_rows::<L>(&xs[..whole * row_len]);
        self.stash(&xs[whole * row_len..]);
    }

    /// Adds whole rows in blocks of `step`, carrying level 0 into level 1 after each block.
    #[inline(always)]
    fn add_rows<L: Load<A = V>>(&mut self, data: &[f32]) {
        let mask = self.geo.period(1) - 1;
        let mut rows = data.chunks_exact(self.geo.row_len);
        let mut left = rows.len();
        while left > 0 {
            let take = (mask + 1 - (self.row & mask)).min(left);
            let mut a0 = self.acc[0];
            for row in rows.by_ref().take(take) {
                add_row::<L>(&mut a0, row, &|x| x);
            }
            self.acc[0] = a0;
            left -= take;
            self.row += take;
            if self.row & mask == 0 {
                self.carry();
            }
        }
    }

    /// `multi_row_sum`'s carries after a block ending at `self.row`, with levels 2 and 3 kept
    /// as the partial's lists.
    fn carry(&mut self) {
        let [a0, a1] = &mut self.acc;
        add_into(a1, a0);
        *a0 = ZERO;
        if !self.row.is_multiple_of(self.geo.period(2)) {
            return;
        }
        let x = std::mem::replace(a1, ZERO);
        match &mut self.carried {
            None => self.head.push(x),
            Some(c) => add_into(&mut c.open, &x),
        }
        if self.row.is_multiple_of(self.geo.period(3)) {
            match &mut self.carried {
                None => self.carried = Some(Carried::default()),
                Some(c) => c.done.push(std::mem::replace(&mut c.open, ZERO)),
            }
        }
    }

    /// The range's partial; `Err` unless exactly the range's length was fed.
    pub fn finish(self) -> Result<SumPartial, String> {
        if self.fed != self.len {
            return Err(format!("fed {} elements to a range of {}", self.fed, self.len));
        }
        let end = (self.start + self.len == self.part_len).then(|| match self.kind {
            SumKind::F32 => self.end_l::<F32Vec>(),
            SumKind::Bf16 => self.end_l::<Bf16Vec>(),
        });
        let p = SumPartial {
            kind: self.kind,
            part_len: self.part_len,
            start: self.start,
            len: self.len,
            head: self.head,
            carried: self.carried,
            end,
        };
        debug_assert_eq!(
            Some(p.to_floats().len()),
            Layout::of(p.kind, p.part_len, p.start, p.len)?.floats()
        );
        Ok(p)
    }

    /// `kernel`'s and `row_sum`'s handling of the elements after the last whole ILP row.
    fn end_l<L: Load<A = V>>(&self) -> End {
        let id = |x: f32| x;
        let tail = &self.rest[..self.rest_len];
        if self.part_len < L::WIDTH {
            return End {
                acc: [ZERO; 2],
                loads: Vec::new(),
                scalar: row_sum::<Scalar>(tail, &id),
            };
        }
        let vec_elems = tail.len() / L::WIDTH * L::WIDTH;
        End {
            acc: self.acc,
            loads: tail[..vec_elems]
                .chunks_exact(L::WIDTH)
                .map(|s| L::load(s, &id))
                .collect(),
            scalar: tail[vec_elems..].iter().fold(0.0f32, |a, &x| a + x),
        }
    }
}

/// The serial kernel value of the whole part from the partials of its ranges in order; equals
/// `kernel::<L>(part)` and [`super::torch_sum_stream::TorchSumStream::finish`] bit for bit.
/// `Err` if a partial is for another kind or part length, or the ranges do not tile the part.
pub fn combine(kind: SumKind, part_len: usize, partials: &[SumPartial]) -> Result<f32, String> {
    let (mut level2, mut level3) = (ZERO, ZERO);
    let mut end = None;
    let mut at = 0;
    for p in partials {
        if p.kind != kind || p.part_len != part_len {
            return Err(format!(
                "partial of a {:?} part of {} elements, expected {kind:?} and {part_len}",
                p.kind, p.part_len
            ));
        }
        if p.start != at || end.is_some() {
            return Err(format!(
                "partial range {:?} does not continue at element {at}",
                p.range()
            ));
        }
        at += p.len;
        for x in &p.head {
            add_into(&mut level2, x);
        }
        if let Some(c) = &p.carried {
            add_into(&mut level3, &level2);
            for d in &c.done {
                add_into(&mut level3, d);
            }
            level2 = c.open;
        }
        end = p.end.as_ref();
    }
    let Some(e) = end else {
        return Err(format!("partials cover 0..{at}, not the part's {part_len} elements"));
    };
    if part_len < Geometry::new(kind, part_len).width {
        return Ok(e.scalar);
    }
    let mut p = e.acc[0];
    for level in [&e.acc[1], &level2, &level3] {
        add_into(&mut p, level);
    }
    for l in &e.loads {
        p[0] = p[0].add(*l);
    }
    let lanes = p[1..].iter().fold(p[0], |a, &b| a.add(b));
    Ok(lanes.iter().fold(e.scalar, |a, &l| a + l))
}

/// Splits a part of `part_len` elements into aligned ranges of `target` elements rounded up to
/// whole granules (the last range takes the rest), for planners; there is at least one range.
pub fn ranges(kind: SumKind, part_len: usize, target: usize) -> Vec<Range<usize>> {
    let gran = granule(kind, part_len);
    let size = target.div_ceil(gran).max(1).saturating_mul(gran);
    if part_len == 0 {
        return std::iter::once(0..0).collect();
    }
    (0..part_len)
        .step_by(size)
        .map(|s| s..s.saturating_add(size).min(part_len))
        .collect()
}

mod wire;
use wire::HEADER;

#[cfg(test)]
mod tests;
