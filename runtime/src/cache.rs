//! Kernel caches on disk: where they live and their keys (a stable hash of everything the
//! compiled code depends on). Shared by the CPU backend's C libraries and NVRTC's cubins.

use std::path::{Path, PathBuf};

/// `$MUSE_CACHE_DIR`, else `$XDG_CACHE_HOME/muse/kernels`, else `~/.cache/muse/kernels` (an
/// empty variable counts as unset, not as the current folder).
pub fn default_cache_dir() -> PathBuf {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty()).map(PathBuf::from);
    if let Some(d) = var("MUSE_CACHE_DIR") {
        return d;
    }
    let base =
        var("XDG_CACHE_HOME").unwrap_or_else(|| var("HOME").map_or_else(std::env::temp_dir, |h| h.join(".cache")));
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

/// A cache entry's file beside its checksum file `PATH.crc` ("LENGTH CRC32"): the checksum
/// is written after the entry, so an entry without one, or with one that does not match, is
/// incomplete or damaged.
fn checksum_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".crc");
    PathBuf::from(p)
}

fn checksum_line(bytes: &[u8]) -> String {
    format!("{} {:08x}\n", bytes.len(), crc32fast::hash(bytes))
}

/// Writes a cache entry and then its checksum, each atomically.
pub fn write_verified(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic(path, bytes)?;
    write_atomic(&checksum_path(path), checksum_line(bytes).as_bytes())
}

/// A cache entry's bytes when it is whole: `Ok(None)` when there is none, `Err(why)` when
/// it is there but damaged or incomplete (the caller builds it again).
pub fn read_verified(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot be read ({e})")),
    };
    let want = std::fs::read_to_string(checksum_path(path)).map_err(|_| "has no checksum file".to_string())?;
    let have = checksum_line(&bytes);
    if want != have {
        return Err(format!("is damaged ({} bytes, checksum {}; written: {})", bytes.len(), &have.trim(), want.trim()));
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_verify_until_damaged() {
        let dir = std::env::temp_dir().join(format!("muse-cache-verify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("k.so");
        assert_eq!(read_verified(&p), Ok(None));
        write_verified(&p, b"0123456789").unwrap();
        assert_eq!(read_verified(&p), Ok(Some(b"0123456789".to_vec())));
        std::fs::write(&p, b"0123456780").unwrap();
        assert!(read_verified(&p).unwrap_err().contains("damaged"));
        std::fs::write(&p, b"").unwrap();
        assert!(read_verified(&p).unwrap_err().contains("damaged"));
        write_verified(&p, b"0123456789").unwrap();
        std::fs::remove_file(checksum_path(&p)).unwrap();
        assert!(read_verified(&p).unwrap_err().contains("no checksum"));
        let names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(!names.iter().any(|n| is_temporary(n)), "{names:?}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
