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

/// Writes `bytes` to `path` through a temporary file (hidden, named `.NAME.tmp-PID-N`) that
/// is synced and renamed over it, so a reader sees the old file or the new one, never a part,
/// and a crash leaves at most a temporary file (see [`is_temporary`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself survives a power loss once the folder is synced.
        if let Ok(d) = std::fs::File::open(dir) {
            d.sync_all().ok();
        }
        Ok(())
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Whether `name` is a temporary file of [`write_atomic`].
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}
