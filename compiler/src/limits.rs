//! The memory budget every size is checked against before anything is allocated: a model
//! whose tensors cannot fit is a clear error naming the tensor, not an abort in the
//! allocator. The budget is `MUSE_MEMORY_LIMIT` (bytes, with an optional K/M/G/T suffix of
//! powers of 1024) or else the machine's memory.

use std::sync::OnceLock;

/// The environment variable that sets the budget.
pub const MEMORY_LIMIT_VAR: &str = "MUSE_MEMORY_LIMIT";

/// Used where the machine's memory cannot be read.
const FALLBACK_BUDGET: u64 = 16 << 30;

/// The memory budget in bytes (read once per process).
pub fn memory_budget() -> u64 {
    static BUDGET: OnceLock<u64> = OnceLock::new();
    *BUDGET.get_or_init(|| budget_from(std::env::var(MEMORY_LIMIT_VAR).ok().as_deref()))
}

/// The budget from the variable's value when it parses, else the machine's memory; a value
/// that does not parse is reported once on stderr instead of being ignored silently.
fn budget_from(var: Option<&str>) -> u64 {
    match var.map(parse_bytes) {
        Some(Ok(b)) => b,
        Some(Err(e)) => {
            crate::note!("warning: {MEMORY_LIMIT_VAR}: {e}; using the machine's memory instead");
            machine_memory().unwrap_or(FALLBACK_BUDGET)
        }
        None => machine_memory().unwrap_or(FALLBACK_BUDGET),
    }
}

/// The machine's total memory (Linux's /proc/meminfo).
pub fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Parses `123`, `64K`, `512M`, `8G`, `1T` (optionally with a trailing `B` or `iB`).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (digits, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = digits.trim().parse().map_err(|_| format!("`{s}` is not a size in bytes (e.g. 8G, 512M, 1000000)"))?;
    match n.checked_mul(1 << shift) {
        Some(b) if b > 0 => Ok(b),
        Some(_) => Err(format!("`{s}`: the budget must be more than 0 bytes")),
        None => Err(format!("`{s}` is more bytes than 64 bits count")),
    }
}

/// `bytes` for people: `1.5 GiB`, `64.0 MiB`, `512 B`.
pub fn format_bytes(bytes: u128) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes(" 8g "), Ok(8 << 30));
        assert_eq!(parse_bytes("2TB"), Ok(2 << 40));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("99999999999T").is_err());
    }

    #[test]
    fn a_bad_variable_falls_back_to_the_machine() {
        assert_eq!(budget_from(Some("3M")), 3 << 20);
        let machine = machine_memory().unwrap_or(FALLBACK_BUDGET);
        assert_eq!(budget_from(Some("three")), machine);
        assert_eq!(budget_from(None), machine);
        assert!(machine > 1 << 20);
    }

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(64 << 30), "64.0 GiB");
        assert_eq!(format_bytes(u128::MAX), format!("{:.1} EiB", u128::MAX as f64 / (1u128 << 60) as f64));
    }
}
