//! Counter-based random numbers: element `i` of a random op is a pure function of the run
//! seed, the op's seed and `i`, so every backend (interpreter, C, CUDA) draws the same
//! numbers in any order and in parallel.

/// SplitMix64's finaliser: a bijective mix of 64 bits.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The stream key of a random op in a run.
pub fn stream_key(run_seed: u64, op_seed: u64) -> u64 {
    mix64(run_seed ^ mix64(op_seed))
}

/// Uniform on [0, 1) with 53 random bits, for counter `i` of stream `key`.
pub fn uniform(key: u64, i: u64) -> f64 {
    (mix64(key ^ mix64(i)) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Standard normal for counter `i` of stream `key` (Box-Muller on counters 2i and 2i+1).
pub fn normal(key: u64, i: u64) -> f64 {
    let u1 = 1.0 - uniform(key, 2 * i); // in (0, 1]
    let u2 = uniform(key, 2 * i + 1);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_are_right() {
        let key = stream_key(7, 42);
        let n = 200_000u64;
        let u: Vec<f64> = (0..n).map(|i| uniform(key, i)).collect();
        let mean = u.iter().sum::<f64>() / n as f64;
        let var = u.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.005 && (var - 1.0 / 12.0).abs() < 0.002);
        assert!(u.iter().all(|x| (0.0..1.0).contains(x)));
        let z: Vec<f64> = (0..n).map(|i| normal(key, i)).collect();
        let mean = z.iter().sum::<f64>() / n as f64;
        let var = z.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.02, "{mean} {var}");
        assert_ne!(stream_key(7, 42), stream_key(8, 42));
        assert_ne!(stream_key(7, 42), stream_key(7, 43));
    }
}
