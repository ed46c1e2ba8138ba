//! Range checks of numeric flags, as clap value parsers: a value outside its range is refused
//! with the range in the message (`--lr=-1`, `--cfg nan`, `--batch 0`), never run with.

/// A whole number of at least 1 (sizes and counts).
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(v) => Ok(v),
        Err(_) => Err(format!("`{s}` is not a whole number (at least 1)")),
    }
}

/// A whole number of at least 1, as steps are counted.
pub fn at_least_one_u64(s: &str) -> Result<u64, String> {
    at_least_one(s).map(|v| v as u64)
}

fn finite(s: &str, range: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a finite number ({range})")),
    }
}

/// A finite number above 0 (learning rates).
pub fn positive(s: &str) -> Result<f64, String> {
    const RANGE: &str = "a number above 0";
    match finite(s, RANGE)? {
        v if v > 0.0 => Ok(v),
        v => Err(format!("must be {RANGE}, not {v}")),
    }
}

/// A finite number of at least 0 (weight decay, clipping norms, temperatures).
pub fn non_negative(s: &str) -> Result<f64, String> {
    const RANGE: &str = "a number of at least 0";
    match finite(s, RANGE)? {
        v if v >= 0.0 => Ok(v),
        v => Err(format!("must be {RANGE}, not {v}")),
    }
}

/// Any finite number (guidance scales).
pub fn any_finite(s: &str) -> Result<f64, String> {
    finite(s, "any finite number")
}

/// A probability: 0 to 1.
pub fn probability(s: &str) -> Result<f64, String> {
    const RANGE: &str = "from 0 to 1";
    match finite(s, RANGE)? {
        v if (0.0..=1.0).contains(&v) => Ok(v),
        v => Err(format!("must be {RANGE}, not {v}")),
    }
}

/// A decay rate of a moving average: at least 0 and below 1 (0: none).
pub fn decay(s: &str) -> Result<f64, String> {
    const RANGE: &str = "at least 0 and below 1";
    match finite(s, RANGE)? {
        v if (0.0..1.0).contains(&v) => Ok(v),
        v => Err(format!("must be {RANGE}, not {v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_outside_their_range_are_refused_with_it() {
        assert_eq!(at_least_one("3"), Ok(3));
        assert!(at_least_one("0").unwrap_err().contains("at least 1"));
        assert!(at_least_one("-2").unwrap_err().contains("not a whole number"));
        assert_eq!(positive("1e-3"), Ok(1e-3));
        for bad in ["-1", "0", "nan", "inf", "x"] {
            assert!(positive(bad).is_err(), "{bad}");
        }
        assert!(positive("nan").unwrap_err().contains("above 0"));
        assert_eq!(non_negative("0"), Ok(0.0));
        assert!(non_negative("-0.5").unwrap_err().contains("at least 0"));
        assert_eq!(any_finite("-2.5"), Ok(-2.5));
        assert!(any_finite("NaN").is_err());
        assert_eq!(probability("1"), Ok(1.0));
        assert!(probability("1.5").is_err());
        assert_eq!(decay("0.999"), Ok(0.999));
        assert!(decay("1").is_err());
    }
}
