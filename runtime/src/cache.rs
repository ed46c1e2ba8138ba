//! Kernel caches on disk: where they live and their keys (a stable hash of everything the
//! compiled code depends on). Shared by the CPU backend's C libraries and NVRTC's cubins.

use std::path::{Path, PathBuf};

/// `$MUSE_CACHE_DIR`, else `$XDG_CACHE_HOME/muse/kernels`, else `~/.cache/muse/kernels`.
pub fn default_cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("MUSE_CACHE_DIR") {
        return PathBuf::from(d);
    }
    let base = std::env::var("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|_| {
        std::env::var("HOME").map(|h| PathBuf::from(h).join(".cache")).unwrap_or_else(|_| std::env::temp_dir())
    });
    base.join("muse").join("kernels")
}

/// 128-bit FNV-1a: stable across runs and platforms, for cache keys.
pub fn hash128(parts: &[&[u8]]) -> String {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for p in parts {
        for b in p.iter().chain(&[0xffu8]) {
            h ^= *b as u128;
            h = h.wrapping_mul(0x0000000001000000000000000000013B);
        }
    }
    format!("{h:032x}")
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that a reader sees the
/// old file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
    std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path)).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
