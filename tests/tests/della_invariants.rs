//! bf16 DELLA cannot be byte-identical to mergekit everywhere: it ranks `|delta|` within each
//! row with torch's unstable argsort, and bf16 deltas have many equal magnitudes, so torch
//! orders tied elements arbitrarily (shardmerge: lowest index first). A tied element's rank,
//! hence its keep probability and its Bernoulli outcome, may differ. Everything else is fixed:
//! an element whose magnitude is unique in its row (in every model) has the same rank, the
//! same probability and the same MT19937 word as in mergekit. On `della_linear_bf16`
//! (`rescale: false`, so one different keep cannot change other elements through the L1
//! rescale), every element untied in all models must equal mergekit's output bit for bit, and
//! the rows must really contain ties (that is why the whole file cannot match).

use shardmerge_tests::tie_order::{MergedCase, OffTies, bf16_delta, compare_off_ties, merge_beside_mergekit};

/// For each element, whether its `|delta|` equals another one of its dim-1 row.
fn tied(delta: &[f32], shape: &[usize]) -> Vec<bool> {
    let (outer, len, inner) = match shape {
        [a, b, rest @ ..] => (*a, *b, rest.iter().product::<usize>()),
        _ => (1, delta.len(), 1),
    };
    let mut out = vec![false; delta.len()];
    for o in 0..outer {
        for i in 0..inner {
            let idx: Vec<usize> = (0..len).map(|j| o * len * inner + j * inner + i).collect();
            let mut keys: Vec<(u32, usize)> = idx.iter().map(|&e| (delta[e].abs().to_bits(), e)).collect();
            keys.sort_unstable();
            for w in keys.windows(2) {
                if w[0].0 == w[1].0 {
                    out[w[0].1] = true;
                    out[w[1].1] = true;
                }
            }
        }
    }
    out
}

#[test]
fn della_bf16_untied_elements_equal_mergekit() {
    let MergedCase {
        ours,
        theirs,
        base,
        fts,
    } = merge_beside_mergekit("della_linear_bf16");
    let mut counts = OffTies::default();
    for (ti, (b, (o, t))) in base.iter().zip(ours.iter().zip(&theirs)).enumerate() {
        assert_eq!((&b.0, &b.0), (&o.0, &t.0));
        let mut any_tie = vec![false; b.3.len()];
        for ft in &fts {
            assert_eq!(ft[ti].0, b.0);
            let delta = bf16_delta(&ft[ti].3, &b.3);
            for (a, t) in any_tie.iter_mut().zip(tied(&delta, &b.2)) {
                *a |= t;
            }
        }
        compare_off_ties("della_linear_bf16", &b.0, &any_tie, &o.3, &t.3, &mut counts);
    }
    let OffTies {
        fixed: untied,
        ambiguous: tied_total,
        differing,
    } = counts;
    assert!(untied > 10_000, "{untied} untied elements");
    assert!(
        differing > 0 && differing < tied_total,
        "{differing} of {tied_total} tied elements differ"
    );
}
