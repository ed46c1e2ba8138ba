//! Counter-based random numbers: element `i` of a random op is a pure function of the run
//! seed, the op's seed and `i`, so every backend (interpreter, C, CUDA) draws the same
//! numbers in any order and in parallel. Specified once, in `muse_compiler::rng`, from
//! whose constants every renderer prints its copy.

pub use muse_compiler::rng::{mix64, normal, stream_key, uniform};

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
