//! `torch.mean(rows, dim=0)` of the aligned rows before a padding run, fed a batch of rows at a
//! time, so a chunk task that holds padding rows never builds the whole tensor. Gives exactly
//! the bits of the one-shot form in [`super::aligned`] (ATen's cascade for a reduced outer dim:
//! [`outer_cascade`] for the columns of full vector groups, [`interleaved_cascade`] for the
//! rest), because both cascades only ever add the next element to the first accumulator and
//! fold accumulators after whole steps, which a running state reproduces given the length.

use crate::kernels::WorkDType;
use crate::kernels::nuslerp::OUTER_GROUP;
#[cfg(test)]
use crate::kernels::nuslerp::{interleaved_cascade, outer_cascade};

const LEVELS: usize = 4;

/// `ceil(log2(x))`, but 1 for `x <= 2` (ATen's `CeilLog2`, as the cascades use it).
fn ceil_log2(x: usize) -> u32 {
    if x <= 2 {
        1
    } else {
        usize::BITS - (x - 1).leading_zeros()
    }
}

/// The step structure of a cascade over `len` elements, shared by every column.
#[derive(Debug, Clone, Copy)]
struct Steps {
    power: usize,
    step: usize,
    mask: usize,
}

impl Steps {
    fn of(len: usize) -> Steps {
        let power = 4.max(ceil_log2(len) as usize / LEVELS);
        let step = 1usize << power;
        Steps {
            power,
            step,
            mask: step - 1,
        }
    }
}

/// One running cascade (the accumulators of [`outer_cascade`]).
#[derive(Debug, Clone, Copy, Default)]
struct Cascade {
    acc: [f32; LEVELS],
    /// Elements consumed in whole steps.
    done: usize,
    /// Elements of the current step.
    fill: usize,
}

impl Cascade {
    fn push(&mut self, s: Steps, x: f32) {
        self.acc[0] += x;
        self.fill += 1;
        if self.fill == s.step {
            self.fill = 0;
            self.done += s.step;
            for j in 1..LEVELS {
                self.acc[j] += self.acc[j - 1];
                self.acc[j - 1] = 0.0;
                if self.done & (s.mask << (j * s.power)) != 0 {
                    break;
                }
            }
        }
    }

    fn finish(mut self) -> f32 {
        for j in 1..LEVELS {
            self.acc[0] += self.acc[j];
        }
        self.acc[0]
    }
}

/// One column past the last full vector group: 4 interleaved lanes and the leftover elements.
#[derive(Debug, Clone, Default)]
struct Interleaved {
    lanes: [Cascade; 4],
    leftover: Vec<f32>,
}

/// The column means of `rows` rows of `row` elements, fed in row order.
#[derive(Debug)]
pub(super) struct ColumnMean {
    rows: usize,
    row: usize,
    /// Rows fed so far.
    fed: usize,
    outer: Steps,
    lane: Steps,
    /// Columns of full vector groups.
    grouped: Vec<Cascade>,
    /// The other columns.
    rest: Vec<Interleaved>,
}

impl ColumnMean {
    /// A mean over `rows` rows (at least one) of `row` elements.
    pub(super) fn new(rows: usize, row: usize) -> ColumnMean {
        let full = row / OUTER_GROUP * OUTER_GROUP;
        ColumnMean {
            rows,
            row,
            fed: 0,
            outer: Steps::of(rows),
            lane: Steps::of(rows / 4),
            grouped: vec![Cascade::default(); full],
            rest: vec![Interleaved::default(); row - full],
        }
    }

    /// Feeds the next whole rows (`values.len()` a multiple of the row length).
    pub(super) fn feed(&mut self, values: &[f32]) {
        let lanes_end = self.rows / 4 * 4;
        for r in values.chunks_exact(self.row.max(1)) {
            let (g, rest) = r.split_at(self.grouped.len());
            for (c, &x) in self.grouped.iter_mut().zip(g) {
                c.push(self.outer, x);
            }
            for (c, &x) in self.rest.iter_mut().zip(rest) {
                if self.fed < lanes_end {
                    c.lanes[self.fed % 4].push(self.lane, x);
                } else {
                    c.leftover.push(x);
                }
            }
            self.fed += 1;
        }
    }

    /// Rows fed so far.
    pub(super) fn fed(&self) -> usize {
        self.fed
    }

    /// The means, each divided in f32 and rounded once to the working dtype.
    pub(super) fn finish(self, work: WorkDType) -> Vec<f32> {
        let n = self.rows as f32;
        let grouped = self.grouped.into_iter().map(Cascade::finish);
        let rest = self.rest.into_iter().map(|c| {
            let [first, others @ ..] = c.lanes;
            let mut acc = first.finish();
            for x in c.leftover {
                acc += x;
            }
            for lane in others {
                acc += lane.finish();
            }
            acc
        });
        grouped.chain(rest).map(|sum| work.round(sum / n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 20_001) as f32 / 997.0 - 10.0
            })
            .collect()
    }

    /// The running cascade equals the one-shot cascades bit for bit, for lengths around every
    /// step boundary and past the point where the step grows (`2^20` rows).
    #[test]
    fn running_cascades_equal_the_one_shot_ones() {
        let mut lens: Vec<usize> = (1..70).collect();
        lens.extend([255, 256, 257, 4095, 4096, 4097, 65_535, 65_536, 65_537, (1 << 20) + 37]);
        for &len in &lens {
            let xs = values(len, len as u32);
            let s = Steps::of(len);
            let mut c = Cascade::default();
            xs.iter().for_each(|&x| c.push(s, x));
            assert_eq!(c.finish().to_bits(), outer_cascade(&xs).to_bits(), "len {len}");
        }
    }

    /// Column means fed in batches of any size equal the whole-buffer mean, for rows with full
    /// vector groups and leftover columns.
    #[test]
    fn column_means_fed_in_batches_equal_the_whole_mean() {
        for (rows, row) in [(1, 3), (2, 40), (7, 33), (66, 32), (131, 70), (1000, 5)] {
            let xs = values(rows * row, (rows * 31 + row) as u32);
            let full = row / OUTER_GROUP * OUTER_GROUP;
            let want: Vec<u32> = (0..row)
                .map(|c| {
                    let col: Vec<f32> = (0..rows).map(|r| xs[r * row + c]).collect();
                    let sum = if c < full {
                        outer_cascade(&col)
                    } else {
                        interleaved_cascade(&col)
                    };
                    WorkDType::Bf16.round(sum / rows as f32).to_bits()
                })
                .collect();
            for batch in [1, 3, rows] {
                let mut m = ColumnMean::new(rows, row);
                for b in xs.chunks(batch * row) {
                    m.feed(b);
                }
                assert_eq!(m.fed(), rows);
                let got: Vec<u32> = m.finish(WorkDType::Bf16).iter().map(|x| x.to_bits()).collect();
                assert_eq!(got, want, "{rows} rows of {row}, batches of {batch}");
            }
        }
    }
}
