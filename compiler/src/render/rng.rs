//! The counter-based generator's helper functions in any dialect, printed step by step from
//! the one specification in `crate::rng` (its constants and its order of operations), so the
//! C and CUDA copies cannot drift from the interpreter's.

use super::Dialect;
use crate::rng::{GAMMA, LAST_SHIFT, ROUNDS, UNIFORM_BITS};
use std::fmt::Write;

/// The mixing function.
pub const MIX: &str = "muse_mix64";
/// A random op's stream key from the run seed and the op's seed.
pub const KEY: &str = "muse_key";
/// Uniform on [0, 1), as a double.
pub const UNIFORM: &str = "muse_uniform";
/// Standard normal, as a double.
pub const NORMAL: &str = "muse_normal";

/// The definitions of [`MIX`], [`KEY`], [`UNIFORM`] and [`NORMAL`] in dialect `d`.
pub fn helpers(d: &dyn Dialect) -> String {
    let (q, u, f) = (d.helper_qualifier(), d.u64_ty(), d.f64_ty());
    let lit = |v: u64| d.u64_lit(v);
    let mut s = String::new();
    let _ = writeln!(s, "{q} {u} {MIX}({u} z) {{");
    let _ = writeln!(s, "  z += {};", lit(GAMMA));
    for (shift, mul) in ROUNDS {
        let _ = writeln!(s, "  z = (z ^ (z >> {shift})) * {};", lit(mul));
    }
    let _ = writeln!(s, "  return z ^ (z >> {LAST_SHIFT});\n}}");
    let _ = writeln!(s, "{q} {u} {KEY}({u} run_seed, {u} op_seed) {{ return {MIX}(run_seed ^ {MIX}(op_seed)); }}");
    // Spelled as Rust prints them, which round-trips: the same doubles in every language.
    let scale = 1.0 / (1u64 << UNIFORM_BITS) as f64;
    let _ = writeln!(
        s,
        "{q} {f} {UNIFORM}({u} key, {u} i) {{ return ({f})({MIX}(key ^ {MIX}(i)) >> {}) * {scale:e}; }}",
        64 - UNIFORM_BITS
    );
    let two_pi = 2.0 * std::f64::consts::PI;
    let _ = writeln!(s, "{q} {f} {NORMAL}({u} key, {u} i) {{");
    let _ = writeln!(s, "  {f} u1 = 1.0 - {UNIFORM}(key, 2 * i), u2 = {UNIFORM}(key, 2 * i + 1);");
    let (sqrt, log, cos) = (d.f64_math("sqrt"), d.f64_math("log"), d.f64_math("cos"));
    let _ = writeln!(s, "  return {sqrt}(-2.0 * {log}(u1)) * {cos}({two_pi:?} * u2);\n}}");
    s
}
