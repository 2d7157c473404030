//! Merge campaigns: AutoMerger's loop (draw two models from a pool, draw SLERP or DARE-TIES,
//! merge with its fixed recipes), many merges at once on a cluster or one after another
//! embedded, recorded in a dataset (`PREFIX/campaign.jsonl`) that an interrupted campaign
//! resumes from and that `shardmerge campaign report` summarizes.
//!
//! Reproducible: the draws come from MT19937 seeded with `--seed` (the generator torch uses,
//! implemented in [`shardmerge_worker::rng`], so the sequence never changes with a crate
//! upgrade), in a fixed order per merge: first model, second model, method, merge seed.

pub mod hook;
pub mod record;
pub mod report;
pub mod run;

use crate::demo::{dare_ties_recipe, slerp_recipe};
use shardmerge_worker::rng::Mt19937;
use std::path::Path;

/// AutoMerger's default probability of SLERP (else DARE-TIES).
pub const DEFAULT_SLERP_PROBABILITY: f64 = 0.4;

/// One drawn merge.
#[derive(Debug, Clone, PartialEq)]
pub struct Draw {
    /// Position in the campaign, from 0.
    pub index: usize,
    /// The two models (pool entries); the first is the base.
    pub models: [String; 2],
    /// `slerp` or `dare_ties`.
    pub method: &'static str,
    /// `--random-seed` of this merge.
    pub seed: u64,
    /// Output name under the campaign prefix, e.g. `0003-dare_ties`.
    pub name: String,
}

/// Why a pool file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Reading it failed.
    #[error("reading pool {path}: {source}")]
    Read {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Fewer than two distinct models.
    #[error("pool {path}: need at least two distinct models, found {found}")]
    TooSmall {
        /// Path.
        path: String,
        /// Distinct models found.
        found: usize,
    },
    /// A model is listed twice.
    #[error("pool {path}:{line}: `{model}` is already listed at line {first}")]
    Duplicate {
        /// Path.
        path: String,
        /// 1-based line.
        line: usize,
        /// The repeated reference.
        model: String,
        /// Line of its first listing.
        first: usize,
    },
}

/// Reads a pool file: one model reference (path or `s3://` URI) a line; blank lines and lines
/// starting with `#` are skipped.
pub fn read_pool(path: &Path) -> Result<Vec<String>, PoolError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| PoolError::Read {
        path: shown.clone(),
        source,
    })?;
    let mut pool: Vec<(String, usize)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let m = line.trim();
        if m.is_empty() || m.starts_with('#') {
            continue;
        }
        if let Some((_, first)) = pool.iter().find(|(p, _)| p == m) {
            return Err(PoolError::Duplicate {
                path: shown,
                line: i + 1,
                model: m.to_string(),
                first: *first,
            });
        }
        pool.push((m.to_string(), i + 1));
    }
    if pool.len() < 2 {
        return Err(PoolError::TooSmall {
            path: shown,
            found: pool.len(),
        });
    }
    Ok(pool.into_iter().map(|(p, _)| p).collect())
}

/// A uniform integer in `0..n` (rejection sampling, so no modulo bias).
fn below(rng: &mut Mt19937, n: u32) -> u32 {
    let limit = u32::MAX - u32::MAX % n;
    loop {
        let w = rng.next_u32();
        if w < limit {
            return w % n;
        }
    }
}

/// A uniform float in `[0, 1)` with 24 random bits.
fn unit(rng: &mut Mt19937) -> f64 {
    f64::from(rng.next_u32() >> 8) / f64::from(1u32 << 24)
}

/// The campaign's `count` merges over `pool`, drawn from `seed`.
pub fn draws(pool: &[String], count: usize, seed: u64, slerp_probability: f64) -> Vec<Draw> {
    // MT19937 takes a 32-bit seed; fold the high half in so every u64 seed counts.
    let mut rng = Mt19937::new((seed ^ (seed >> 32)) as u32);
    let n = pool.len() as u32;
    (0..count)
        .map(|index| {
            let a = below(&mut rng, n);
            let mut b = below(&mut rng, n - 1);
            if b >= a {
                b += 1;
            }
            let method = if unit(&mut rng) < slerp_probability {
                "slerp"
            } else {
                "dare_ties"
            };
            let seed = u64::from(rng.next_u32());
            Draw {
                index,
                models: [pool[a as usize].clone(), pool[b as usize].clone()],
                method,
                seed,
                name: format!("{index:04}-{method}"),
            }
        })
        .collect()
}

/// The YAML of a drawn merge: AutoMerger's recipe for its method (`layers`: the first model's
/// layer count, for SLERP's full-range slices).
pub fn recipe(draw: &Draw, layers: u64) -> String {
    let [a, b] = &draw.models;
    if draw.method == "slerp" {
        slerp_recipe(Path::new(a), Path::new(b), layers)
    } else {
        dare_ties_recipe(Path::new(a), Path::new(b))
    }
}

#[cfg(test)]
mod tests;
