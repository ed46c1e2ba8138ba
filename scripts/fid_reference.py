#!/usr/bin/env python3
"""Writes the feature sets and the reference FIDs that muse's Frechet distance is tested
against (tests/fixtures/fid/): features drawn by NumPy, saved as .npy, and each pair's FID
computed exactly as pytorch-fid's calculate_frechet_distance does (np.cov, scipy's general
matrix square root of sigma1 @ sigma2 with its eps fallback, the real part). Needs numpy and
scipy: python3 -m venv /tmp/v && /tmp/v/bin/pip install numpy scipy && /tmp/v/bin/python $0
"""
import json
import os
import sys

import numpy as np
from scipy import linalg


def pytorch_fid(mu1, sigma1, mu2, sigma2, eps=1e-6):
    # pytorch-fid's formula (src/pytorch_fid/fid_score.py), restated.
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def stats(x):
    x = x.astype(np.float64)
    return np.mean(x, axis=0), np.cov(x, rowvar=False)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "fid")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20261130)
    cases = []

    def case(name, a, b):
        np.save(os.path.join(out, f"{name}_a.npy"), a)
        np.save(os.path.join(out, f"{name}_b.npy"), b)
        cases.append({"name": name, "a": f"{name}_a.npy", "b": f"{name}_b.npy",
                      "fid": pytorch_fid(*stats(a), *stats(b))})
        return f"{name}_a.npy"

    # Correlated features (ReLU-like, non-negative as pool3's are), means and spreads apart.
    d = 48
    mix_a = rng.normal(size=(d, d)) / np.sqrt(d)
    mix_b = mix_a + 0.3 * rng.normal(size=(d, d)) / np.sqrt(d)
    a = np.maximum(rng.normal(size=(600, d)) @ mix_a + 0.5, 0).astype(np.float32)
    b = np.maximum(rng.normal(size=(500, d)) @ mix_b + 0.6, 0).astype(np.float32)
    relu_a = case("relu", a, b)
    # Fewer vectors than dimensions: singular covariances (pytorch-fid's eps path may run).
    case("singular", rng.normal(size=(40, 64)).astype(np.float32), (rng.normal(size=(30, 64)) * 1.3 + 0.2).astype(np.float32))
    # A large common offset: the accumulation must not lose the covariance to it (float64).
    c = rng.normal(size=(300, 16)) * 0.01 + 1e6
    e = rng.normal(size=(300, 16)) * 0.012 + 1e6 + 0.005
    case("offset", c, e)
    # The same set twice: zero up to rounding.
    cases.append({"name": "same", "a": relu_a, "b": relu_a, "fid": pytorch_fid(*stats(a), *stats(a))})
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump({"generator": "scripts/fid_reference.py", "numpy": np.__version__,
                   "scipy": __import__("scipy").__version__, "cases": cases}, f, indent=1)
    for c in cases:
        print(c["name"], c["fid"])


if __name__ == "__main__":
    main()
