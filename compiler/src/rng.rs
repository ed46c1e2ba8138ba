//! The counter-based random numbers, specified once: element `i` of a random op is a pure
//! function of the run seed, the op's seed and `i`, so every backend (interpreter, C, CUDA)
//! draws the same numbers in any order and in parallel. The Rust functions here are what
//! the interpreter runs; each renderer's dialect prints the same steps from the same
//! constants (`render::rng`), and a test per dialect compares its copy bit for bit.

/// SplitMix64's increment (the golden gamma).
pub const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
/// SplitMix64's finaliser: (shift, multiplier) rounds, then a last shift.
pub const ROUNDS: [(u32, u64); 2] = [(30, 0xBF58_476D_1CE4_E5B9), (27, 0x94D0_49BB_1331_11EB)];
/// The finaliser's last shift.
pub const LAST_SHIFT: u32 = 31;
/// Bits of a uniform draw (the top 53 of a mixed word: every double in [0, 1) they give).
pub const UNIFORM_BITS: u32 = 53;

/// SplitMix64's finaliser: a bijective mix of 64 bits.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(GAMMA);
    for (shift, mul) in ROUNDS {
        z = (z ^ (z >> shift)).wrapping_mul(mul);
    }
    z ^ (z >> LAST_SHIFT)
}

/// The stream key of a random op in a run.
pub fn stream_key(run_seed: u64, op_seed: u64) -> u64 {
    mix64(run_seed ^ mix64(op_seed))
}

/// Uniform on [0, 1) with 53 random bits, for counter `i` of stream `key`.
pub fn uniform(key: u64, i: u64) -> f64 {
    (mix64(key ^ mix64(i)) >> (64 - UNIFORM_BITS)) as f64 * (1.0 / (1u64 << UNIFORM_BITS) as f64)
}

/// Standard normal for counter `i` of stream `key` (Box-Muller on counters 2i and 2i+1).
pub fn normal(key: u64, i: u64) -> f64 {
    // Counters wrap as unsigned 64-bit integers do in every generated language.
    let u1 = 1.0 - uniform(key, i.wrapping_mul(2)); // in (0, 1]
    let u2 = uniform(key, i.wrapping_mul(2).wrapping_add(1));
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
