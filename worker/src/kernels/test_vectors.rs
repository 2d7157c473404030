//! Test inputs shared by the torch-order reduction tests: the generators of
//! `tests/golden/torch_sum_vectors.py` and `torch_norm_vectors.py`, whose torch outputs the tests
//! hold as expected bits.

/// splitmix64 of element `i` under `seed`.
pub fn mix(seed: u64, i: usize) -> u64 {
    let mut z = seed.wrapping_add((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `m * 2^exp`, negative when `z`'s low bit is set.
pub fn signed(z: u64, m: f32, exp: i32) -> f32 {
    let x = m * 2f32.powi(exp);
    if z & 1 == 1 { -x } else { x }
}

/// `gen_a`: float32 values with 24-bit mantissas over 16 binades.
pub fn gen_a(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| mix(1, i))
        .map(|z| signed(z, (z >> 40) as f32, ((z >> 8) & 15) as i32 - 40))
        .collect()
}

/// `gen_b`: bf16-exact values with cancelling ±2^30 spikes.
pub fn gen_b(n: usize) -> Vec<f32> {
    let zs: Vec<u64> = (0..n).map(|i| mix(2, i)).collect();
    let mut xs: Vec<f32> = zs
        .iter()
        .map(|&z| signed(z, (z >> 56) as f32, ((z >> 8) & 7) as i32))
        .collect();
    let bigs: Vec<usize> = (0..n).filter(|&i| (zs[i] >> 16) & 15 == 0).collect();
    for pair in bigs.chunks_exact(2) {
        xs[pair[0]] = 2f32.powi(30);
        xs[pair[1]] = -(2f32.powi(30));
    }
    xs
}
