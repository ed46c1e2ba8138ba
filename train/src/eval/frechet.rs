//! The Frechet distance between two feature sets (SPEC-models.md section 9): each set as a
//! Gaussian (mean, covariance dividing by n-1, accumulated in f64 around a shift so large
//! means cost no precision), and FID = |mu_a - mu_b|^2 + tr S_a + tr S_b - 2 tr sqrt(S_a S_b),
//! where tr sqrt(S_a S_b) is the sum of the square roots of the eigenvalues of the symmetric
//! S_a^1/2 S_b S_a^1/2: symmetric eigendecompositions only, no general matrix square root.

use crate::error::Error;
use nalgebra::{DMatrix, DVector, SymmetricEigen};
use std::path::Path;

/// Feature vectors summed as they come, so that any number of images is one pass in
/// constant memory.
#[derive(Clone, Debug)]
pub struct Moments {
    dim: usize,
    count: usize,
    /// The first vector: every other is summed as its difference from it.
    shift: Vec<f64>,
    sum: Vec<f64>,
    /// Upper triangle (row-major, full square storage) of the sum of outer products.
    outer: Vec<f64>,
}

/// A feature set as a Gaussian.
#[derive(Clone, Debug, PartialEq)]
pub struct Gaussian {
    /// Vectors it was fitted to.
    pub count: usize,
    /// Mean.
    pub mean: DVector<f64>,
    /// Covariance (dividing by count - 1).
    pub cov: DMatrix<f64>,
}

impl Moments {
    /// Nothing summed yet, of vectors of length `dim`.
    pub fn new(dim: usize) -> Moments {
        Moments { dim, count: 0, shift: Vec::new(), sum: vec![0.0; dim], outer: vec![0.0; dim * dim] }
    }

    /// Adds `rows` vectors stored one after another.
    pub fn add(&mut self, features: &[f64]) -> Result<(), Error> {
        let d = self.dim;
        if d == 0 || !features.len().is_multiple_of(d) {
            return Err(Error::Usage(format!("{} feature values are not whole vectors of {d}", features.len())));
        }
        if let Some(bad) = features.iter().position(|v| !v.is_finite()) {
            return Err(Error::Usage(format!("feature {} of vector {} is {}", bad % d, bad / d, features[bad])));
        }
        for row in features.chunks(d) {
            if self.count == 0 {
                self.shift = row.to_vec();
            }
            let x: Vec<f64> = row.iter().zip(&self.shift).map(|(a, s)| a - s).collect();
            for i in 0..d {
                self.sum[i] += x[i];
                let xi = x[i];
                if xi != 0.0 {
                    let out = &mut self.outer[i * d..(i + 1) * d];
                    for j in i..d {
                        out[j] += xi * x[j];
                    }
                }
            }
            self.count += 1;
        }
        Ok(())
    }

    /// Vectors summed.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The Gaussian: mean and unbiased covariance (at least two vectors needed).
    pub fn gaussian(&self) -> Result<Gaussian, Error> {
        let (d, n) = (self.dim, self.count);
        if n < 2 {
            return Err(Error::Usage(format!("a covariance needs at least 2 feature vectors, not {n}")));
        }
        let mean_shifted: Vec<f64> = self.sum.iter().map(|s| s / n as f64).collect();
        let mean = DVector::from_iterator(d, mean_shifted.iter().zip(&self.shift).map(|(m, s)| m + s));
        let mut cov = DMatrix::zeros(d, d);
        for i in 0..d {
            for j in i..d {
                let c = (self.outer[i * d + j] - n as f64 * mean_shifted[i] * mean_shifted[j]) / (n - 1) as f64;
                cov[(i, j)] = c;
                cov[(j, i)] = c;
            }
        }
        Ok(Gaussian { count: n, mean, cov })
    }
}

/// The square root of a symmetric positive semi-definite matrix (negative eigenvalues of
/// rounding clamped to zero).
fn sqrt_psd(m: &DMatrix<f64>) -> DMatrix<f64> {
    let e = SymmetricEigen::new(m.clone());
    let roots = e.eigenvalues.map(|l| l.max(0.0).sqrt());
    &e.eigenvectors * DMatrix::from_diagonal(&roots) * e.eigenvectors.transpose()
}

/// The Frechet distance between two Gaussians.
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> Result<f64, Error> {
    if a.mean.len() != b.mean.len() {
        return Err(Error::Usage(format!("features of {} and of {} dimensions", a.mean.len(), b.mean.len())));
    }
    let diff = (&a.mean - &b.mean).norm_squared();
    let root_a = sqrt_psd(&a.cov);
    let mut middle = &root_a * &b.cov * &root_a;
    // Symmetric in exact arithmetic; make it so in floating point for the eigensolver.
    middle = (&middle + middle.transpose()) * 0.5;
    let tr_sqrt: f64 = SymmetricEigen::new(middle).eigenvalues.iter().map(|l| l.max(0.0).sqrt()).sum();
    Ok(diff + a.cov.trace() + b.cov.trace() - 2.0 * tr_sqrt)
}

/// A 2-d array of features from a NumPy `.npy` file (float32 or float64, C order), as
/// (values, rows, columns): how features written by other tools come in.
pub fn read_npy(path: &Path) -> Result<(Vec<f64>, usize, usize), Error> {
    let at = |what: String| Error::Data(format!("{}: {what}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| at(e.to_string()))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(at("not a NumPy .npy file (no \\x93NUMPY magic)".into()));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(at(format!("unsupported .npy version {v}"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| at("truncated or unreadable header".into()))?;
    let field = |key: &str| {
        let i = header.find(&format!("'{key}'"))?;
        Some(header[i + key.len() + 2..].trim_start().trim_start_matches(':').trim_start())
    };
    let descr = field("descr").ok_or_else(|| at("header has no 'descr'".into()))?;
    let size = if descr.starts_with("'<f4'") {
        4
    } else if descr.starts_with("'<f8'") {
        8
    } else {
        return Err(at(format!(
            "features must be little-endian float32 or float64, not {}",
            &descr[..descr.find(',').unwrap_or(descr.len())]
        )));
    };
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        return Err(at("Fortran-ordered arrays are not read; save with np.ascontiguousarray".into()));
    }
    let shape = field("shape").ok_or_else(|| at("header has no 'shape'".into()))?;
    let dims: Vec<usize> = shape
        .trim_start_matches('(')
        .split(')')
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| at(format!("unreadable shape {shape}")))?;
    let [rows, cols] = dims[..] else {
        return Err(at(format!("features must be a 2-d array (images x features), not of shape {dims:?}")));
    };
    let data = &bytes[start + header_len..];
    if data.len() != rows * cols * size {
        return Err(at(format!("{} data bytes for {rows} x {cols} values of {size} bytes", data.len())));
    }
    let values = if size == 4 {
        data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect()
    } else {
        data.chunks_exact(8).map(|c| f64::from_le_bytes(std::array::from_fn(|k| c[k]))).collect()
    };
    Ok((values, rows, cols))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/fid")
    }

    fn gaussian(path: &Path) -> Gaussian {
        let (v, _, cols) = read_npy(path).unwrap();
        let mut m = Moments::new(cols);
        m.add(&v).unwrap();
        m.gaussian().unwrap()
    }

    #[test]
    fn fid_equals_pytorch_fid_on_features_written_by_numpy() {
        // expected.json: pytorch-fid's formula (scipy's sqrtm of S_a S_b) on the same .npy
        // files (scripts/fid_reference.py).
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap()).unwrap();
        let cases = expected["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 4);
        for c in cases {
            let a = gaussian(&fixtures().join(c["a"].as_str().unwrap()));
            let b = gaussian(&fixtures().join(c["b"].as_str().unwrap()));
            let (ours, theirs) = (frechet_distance(&a, &b).unwrap(), c["fid"].as_f64().unwrap());
            let tol = 1e-3 * theirs.abs().clamp(1e-3, 1.0);
            assert!((ours - theirs).abs() <= tol, "{}: {ours} vs pytorch-fid {theirs}", c["name"]);
        }
    }

    #[test]
    fn moments_match_a_plain_two_pass_covariance_and_stream_in_any_chunks() {
        let (v, rows, cols) = read_npy(&fixtures().join("relu_b.npy")).unwrap();
        let mean: Vec<f64> = (0..cols).map(|j| (0..rows).map(|i| v[i * cols + j]).sum::<f64>() / rows as f64).collect();
        let cov = |j: usize, k: usize| {
            (0..rows).map(|i| (v[i * cols + j] - mean[j]) * (v[i * cols + k] - mean[k])).sum::<f64>()
                / (rows - 1) as f64
        };
        let mut m = Moments::new(cols);
        for chunk in v.chunks(cols * 37) {
            m.add(chunk).unwrap();
        }
        let g = m.gaussian().unwrap();
        assert_eq!(g.count, rows);
        for (j, mean_j) in mean.iter().enumerate() {
            assert!((g.mean[j] - mean_j).abs() < 1e-12);
            for k in 0..cols {
                assert!((g.cov[(j, k)] - cov(j, k)).abs() < 1e-12, "({j}, {k})");
            }
        }
    }

    #[test]
    fn bad_features_are_refused_with_a_reason() {
        let mut m = Moments::new(3);
        assert!(m.add(&[1.0, 2.0]).is_err());
        assert!(m.add(&[1.0, f64::NAN, 0.0]).is_err());
        m.add(&[1.0, 2.0, 3.0]).unwrap();
        assert!(m.gaussian().is_err(), "one vector has no covariance");
        let dir = std::env::temp_dir().join(format!("muse-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x.npy");
        std::fs::write(&f, b"not numpy").unwrap();
        assert!(read_npy(&f).unwrap_err().to_string().contains("magic"));
        let mut truncated = std::fs::read(fixtures().join("singular_b.npy")).unwrap();
        truncated.truncate(truncated.len() - 4);
        std::fs::write(&f, truncated).unwrap();
        assert!(read_npy(&f).unwrap_err().to_string().contains("data bytes"));
        let a = Gaussian { count: 2, mean: DVector::zeros(2), cov: DMatrix::identity(2, 2) };
        let b = Gaussian { count: 2, mean: DVector::zeros(3), cov: DMatrix::identity(3, 3) };
        assert!(frechet_distance(&a, &b).is_err());
        std::fs::remove_dir_all(dir).ok();
    }
}
