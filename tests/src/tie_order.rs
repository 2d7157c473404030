//! Shared by the bf16 tie-order tests (`della_invariants`, `breadcrumbs_invariants`,
//! `sce_invariants`): where torch's unstable sort decides among equal bf16 magnitudes, a golden
//! case cannot match mergekit byte for byte, so these tests merge the case, decode both outputs
//! and the bf16 inputs, and require every element whose result does not depend on the tie order
//! to equal mergekit's bit for bit.

use crate::{cases, golden_dir, run_case, tensors_of};
use shardmerge_worker::kernels::precision::round_bf16;
use std::path::Path;

/// One decoded tensor, as [`tensors_of`] returns it: name, dtype name, shape, values as f32.
pub type Tensor = (String, String, Vec<usize>, Vec<f32>);

/// A golden case merged by shardmerge, beside mergekit's output and the golden inputs.
pub struct MergedCase {
    /// shardmerge's `model.safetensors`, tensors sorted by name.
    pub ours: Vec<Tensor>,
    /// mergekit's `expected/model.safetensors`.
    pub theirs: Vec<Tensor>,
    /// The `base_bf16` model.
    pub base: Vec<Tensor>,
    /// The `ft1_bf16` and `ft2_bf16` models.
    pub fts: [Vec<Tensor>; 2],
}

/// Decodes every tensor of a safetensors file.
pub fn load(path: &Path) -> Vec<Tensor> {
    tensors_of(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// Merges the golden case `name` (2 workers) and decodes its output, mergekit's, and the bf16
/// base and fine-tunes.
pub fn merge_beside_mergekit(name: &str) -> MergedCase {
    let case = cases()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no golden case {name}"));
    let tmp = tempfile::tempdir().expect("temp dir");
    run_case(&case, tmp.path(), 2, None).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let models = golden_dir().join("models");
    MergedCase {
        ours: load(&tmp.path().join("model.safetensors")),
        theirs: load(&case.dir.join("expected/model.safetensors")),
        base: load(&models.join("base_bf16/model.safetensors")),
        fts: [
            load(&models.join("ft1_bf16/model.safetensors")),
            load(&models.join("ft2_bf16/model.safetensors")),
        ],
    }
}

/// A bf16 task vector as torch computes it: `ft - base` rounded to bf16 element by element.
pub fn bf16_delta(ft: &[f32], base: &[f32]) -> Vec<f32> {
    ft.iter().zip(base).map(|(x, y)| round_bf16(x - y)).collect()
}

/// Element counts of [`compare_off_ties`] over a case.
#[derive(Debug, Default)]
pub struct OffTies {
    /// Elements whose result does not depend on the tie order (all equal mergekit's).
    pub fixed: usize,
    /// Elements whose result may depend on it.
    pub ambiguous: usize,
    /// Ambiguous elements that differ from mergekit's.
    pub differing: usize,
}

/// Compares one tensor element by element: an element flagged in `ambiguous` is counted (and
/// counted as differing when its bits differ), every other one must have mergekit's bits
/// (asserted, naming `label`, the tensor and the element).
pub fn compare_off_ties(
    label: &str,
    tensor: &str,
    ambiguous: &[bool],
    ours: &[f32],
    theirs: &[f32],
    counts: &mut OffTies,
) {
    for (e, &tie) in ambiguous.iter().enumerate() {
        let same = ours[e].to_bits() == theirs[e].to_bits();
        if tie {
            counts.ambiguous += 1;
            counts.differing += usize::from(!same);
        } else {
            counts.fixed += 1;
            assert!(
                same,
                "{label}: {tensor} element {e}: shardmerge {} vs mergekit {} (independent of the tie order)",
                ours[e], theirs[e]
            );
        }
    }
}
