//! Output shard layout: which tensor goes to which file at which byte offset.
//!
//! Tensors are taken in save order; a shard is closed when adding the next tensor would exceed
//! the size limit (so a tensor larger than the limit gets a shard of its own). Inside a shard
//! the safetensors header fixes the order (dtype descending, then name), exactly as the
//! `safetensors` library writes it.

use shardmerge_worker::safetensors_io::{Dtype, build_header, dtype_size, pt_metadata};

use super::PlanError;

/// One tensor to place.
#[derive(Debug, Clone)]
pub struct LayoutTensor {
    /// Output name.
    pub name: String,
    /// Output dtype.
    pub dtype: Dtype,
    /// Output shape.
    pub shape: Vec<u64>,
}

/// One planned shard.
#[derive(Debug, Clone)]
pub struct ShardLayout {
    /// Final file name.
    pub file_name: String,
    /// Serialized header (length prefix, JSON, padding).
    pub header: Vec<u8>,
    /// Total file length.
    pub file_len: u64,
    /// `(tensor index in the input list, absolute offset, length)` in save order.
    pub placements: Vec<(usize, u64, u64)>,
}

/// The file name of shard `si` (0-based) of a model with `k` shards, as mergekit names them.
pub fn shard_file_name(si: usize, k: usize) -> String {
    if k == 1 {
        "model.safetensors".to_string()
    } else {
        format!("model-{:05}-of-{k:05}.safetensors", si + 1)
    }
}

/// Splits `tensors` (in save order) into shards of at most `max_bytes` data bytes.
pub fn layout(tensors: &[LayoutTensor], max_bytes: u64) -> Result<Vec<ShardLayout>, PlanError> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut current_bytes = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        let bytes = tensor_bytes(t)?;
        if !current.is_empty() && max_bytes > 0 && current_bytes + bytes > max_bytes {
            groups.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current.push(i);
        current_bytes += bytes;
    }
    if !current.is_empty() || groups.is_empty() {
        groups.push(current);
    }
    let k = groups.len();
    let mut shards = Vec::with_capacity(k);
    for (si, group) in groups.into_iter().enumerate() {
        let entries: Vec<(String, Dtype, Vec<u64>)> = group
            .iter()
            .map(|&i| (tensors[i].name.clone(), tensors[i].dtype, tensors[i].shape.clone()))
            .collect();
        let header = build_header(&entries, &pt_metadata())
            .map_err(|e| PlanError::Invalid(format!("building the output header: {e}")))?;
        let mut placements = Vec::with_capacity(group.len());
        for &i in &group {
            let (_, start, len) = header
                .entries
                .iter()
                .find(|(n, _, _)| *n == tensors[i].name)
                .ok_or_else(|| {
                    PlanError::Invalid(format!("tensor `{}` missing from its shard header", tensors[i].name))
                })?;
            placements.push((i, *start, *len));
        }
        let file_name = shard_file_name(si, k);
        shards.push(ShardLayout {
            file_name,
            header: header.bytes,
            file_len: header.file_len,
            placements,
        });
    }
    Ok(shards)
}

/// Data bytes of one tensor.
pub fn tensor_bytes(t: &LayoutTensor) -> Result<u64, PlanError> {
    let size =
        dtype_size(t.dtype).ok_or_else(|| PlanError::Invalid(format!("unsupported dtype {:?}", t.dtype)))? as u64;
    t.shape
        .iter()
        .try_fold(size, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| PlanError::Invalid(format!("tensor `{}` is too large", t.name)))
}

/// Parses a shard size the way mergekit does: an integer with an optional `k`/`m`/`b` suffix
/// (powers of 1000, case-insensitive).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_lowercase()) {
        Some('k') => (&t[..t.len() - 1], 1_000u64),
        Some('m') => (&t[..t.len() - 1], 1_000_000),
        Some('b') => (&t[..t.len() - 1], 1_000_000_000),
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid size `{text}`: expected an integer with an optional k/m/b suffix, e.g. 5B"))?;
    n.checked_mul(mult).ok_or_else(|| format!("size `{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, n: u64) -> LayoutTensor {
        LayoutTensor {
            name: name.into(),
            dtype: Dtype::BF16,
            shape: vec![n],
        }
    }

    #[test]
    fn single_shard_is_named_model_safetensors() {
        let s = layout(&[t("b", 4), t("a", 4)], 5_000_000_000).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].file_name, "model.safetensors");
        // header order is by name; placements keep save order
        assert_eq!(s[0].placements[0].0, 0);
        assert!(s[0].placements[0].1 > s[0].placements[1].1, "b is stored after a");
    }

    #[test]
    fn splits_before_overflow_and_oversized_tensors_get_their_own_shard() {
        let s = layout(&[t("a", 5), t("b", 5), t("c", 50), t("d", 1)], 20).unwrap();
        let names: Vec<Vec<usize>> = s.iter().map(|s| s.placements.iter().map(|p| p.0).collect()).collect();
        assert_eq!(names, vec![vec![0, 1], vec![2], vec![3]]);
        assert_eq!(s[1].file_name, "model-00002-of-00003.safetensors");
    }

    #[test]
    fn parses_mergekit_sizes() {
        assert_eq!(parse_size("5B").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("20k").unwrap(), 20_000);
        assert_eq!(parse_size("3m").unwrap(), 3_000_000);
        assert_eq!(parse_size("1234").unwrap(), 1234);
        assert!(parse_size("12x").is_err());
        assert!(parse_size("").is_err());
    }
}
