//! shardmerge's benchmark and simulation programs (`src/bin`, run by `scripts/bench-*.sh` and
//! `scripts/sim-405b.sh`; a workspace member of their own so that `cargo test` never builds
//! them). The helpers here are shared by the benchmark binaries (`scripts/bench-cluster.sh`):
//! medians and the `key=value` result lines the script turns into its table; and the sparse
//! Llama-shaped model writer ([`llama_headers`]) of `make_405b_headers` and `sim_405b`.

pub mod llama_headers;

/// Median of `xs` (mean of the two middle values for an even count); NaN when empty.
pub fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Prints one result line, `key=value`, on stdout (the script greps these); details go to stderr.
pub fn result(key: &str, value: impl std::fmt::Display) {
    println!("{key}={value}");
}

/// Formats the individual measurements of a repeated run, e.g. `[1.20 1.31 1.25]`.
pub fn runs(xs: &[f64], precision: usize) -> String {
    let parts: Vec<String> = xs.iter().map(|x| format!("{x:.precision$}")).collect();
    format!("[{}]", parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn medians() {
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[3.0]), 3.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
