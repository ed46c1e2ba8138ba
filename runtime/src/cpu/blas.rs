//! A CBLAS library chosen at run time with `MUSE_BLAS=/path/to/libopenblas.so` (or a name
//! the dynamic loader finds). Off by default: on this project's machines the `gemm` crate
//! measured 122-134 GFLOP/s against 32-40 for Debian's OpenBLAS 0.3.21 (a newer OpenBLAS,
//! as bundled with numpy, measured 164-203; docs/performance.md). A layout CBLAS does not
//! take, or no library, falls back to the `gemm` crate.

use std::sync::OnceLock;

type Sgemm =
    unsafe extern "C" fn(i32, i32, i32, i32, i32, i32, f32, *const f32, i32, *const f32, i32, f32, *mut f32, i32);

/// A loaded CBLAS.
pub struct Blas {
    _lib: libloading::Library,
    sgemm: Sgemm,
    /// Which library it is.
    pub name: String,
}

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

/// The system's OpenBLAS, if it can be loaded.
pub fn get() -> Option<&'static Blas> {
    static B: OnceLock<Option<Blas>> = OnceLock::new();
    B.get_or_init(|| {
        let choice = std::env::var("MUSE_BLAS").ok().filter(|c| !c.is_empty() && c != "none")?;
        for name in [choice] {
            // SAFETY: loading a BLAS runs no initialisers that could misbehave; the symbol has
            // the standard CBLAS signature.
            unsafe {
                let Ok(lib) = libloading::Library::new(&name) else { continue };
                let Ok(f) = lib.get::<Sgemm>(b"cblas_sgemm") else { continue };
                let sgemm = *f;
                return Some(Blas { _lib: lib, sgemm, name });
            }
        }
        None
    })
    .as_ref()
}

/// How a strided matrix operand is passed to CBLAS: transpose flag and leading dimension.
fn layout(rs: isize, cs: isize, rows: usize, cols: usize) -> Option<(i32, i32)> {
    if cs == 1 && rs >= cols.max(1) as isize {
        Some((NO_TRANS, i32::try_from(rs).ok()?))
    } else if rs == 1 && cs >= rows.max(1) as isize {
        Some((TRANS, i32::try_from(cs).ok()?))
    } else {
        None
    }
}

impl Blas {
    /// `c = a @ b` for row-major `c` (`m x n`); `a` (`m x k`) and `b` (`k x n`) given by
    /// their row and column strides. Returns false (doing nothing) when the layout is not
    /// one CBLAS takes, so the caller can use another GEMM.
    ///
    /// # Safety
    /// The pointers must address matrices of those shapes and strides.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sgemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: *const f32,
        (a_rs, a_cs): (isize, isize),
        b: *const f32,
        (b_rs, b_cs): (isize, isize),
        c: *mut f32,
    ) -> bool {
        let (Some((ta, lda)), Some((tb, ldb))) = (layout(a_rs, a_cs, m, k), layout(b_rs, b_cs, k, n)) else {
            return false;
        };
        let (Ok(mi), Ok(ni), Ok(ki)) = (i32::try_from(m), i32::try_from(n), i32::try_from(k)) else { return false };
        if m == 0 || n == 0 {
            return true;
        }
        (self.sgemm)(ROW_MAJOR, ta, tb, mi, ni, ki, 1.0, a, lda, b, ldb, 0.0, c, ni.max(1));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_cblas_takes() {
        // Row-major 3x4 with padding rows of 6: no transpose, lda 6.
        assert_eq!(layout(6, 1, 3, 4), Some((NO_TRANS, 6)));
        // The transpose of a row-major 4x3 (a permuted weight): rows step 1, columns 3.
        assert_eq!(layout(1, 3, 3, 4), Some((TRANS, 3)));
        // A broadcast row (stride 0) or a doubly strided view is not BLAS-shaped.
        assert_eq!(layout(0, 1, 3, 4), None);
        assert_eq!(layout(8, 2, 3, 4), None);
    }
}
