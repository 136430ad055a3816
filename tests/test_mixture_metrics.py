"""Mixture metrics checked on hand-constructed samples."""

import math

import numpy as np
import pytest
import torch

from distgan.metrics.mixture import MIXTURE_STD, mixture_means, mixture_quality, mixture_quality_over_seeds


def test_ring8_means():
    m = mixture_means("ring8")
    assert m.shape == (8, 2) and m.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1.0)
    angles = np.mod(np.arctan2(m[:, 1], m[:, 0]), 2 * np.pi)
    np.testing.assert_allclose(np.sort(angles), 2 * np.pi * np.arange(8) / 8, atol=1e-12)
    assert len(np.unique(np.round(m, 9), axis=0)) == 8
    np.testing.assert_allclose(m[0], [1.0, 0.0])
    np.testing.assert_allclose(m[2], [0.0, 1.0], atol=1e-12)


def test_grid25_means():
    m = mixture_means("grid25")
    assert m.shape == (25, 2) and m.dtype == np.float64
    assert len(np.unique(m, axis=0)) == 25
    assert {tuple(p) for p in m} == {(x, y) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)}


def test_unknown_mixture():
    with pytest.raises(ValueError, match="nope"):
        mixture_means("nope")


def test_std_table():
    assert MIXTURE_STD == {"ring8": 0.01, "grid25": 0.05}


@pytest.mark.parametrize("name", ["ring8", "grid25"])
def test_all_modes(name):
    m = mixture_means(name)
    q = mixture_quality(np.repeat(m, 10, axis=0), m, MIXTURE_STD[name])
    assert q["modes"] == len(m)
    assert q["high_quality"] == 1.0
    assert q["reverse_kl"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", ["ring8", "grid25"])
def test_one_mode(name):
    m = mixture_means(name)
    q = mixture_quality(np.repeat(m[3:4], 50, axis=0), m, MIXTURE_STD[name])
    assert q["modes"] == 1
    assert q["high_quality"] == 1.0
    assert q["reverse_kl"] == pytest.approx(math.log(len(m)))


@pytest.mark.parametrize("name,k", [("ring8", 4), ("grid25", 12)])
def test_half_modes(name, k):
    m = mixture_means(name)
    # KL(p||U) with p uniform over K/2 modes: log((2/K) * K) = log 2 (grid25: 12 of 24 -> log(25/12)).
    q = mixture_quality(np.repeat(m[:k], 7, axis=0), m, MIXTURE_STD[name])
    assert q["modes"] == k
    assert q["high_quality"] == 1.0
    assert q["reverse_kl"] == pytest.approx(math.log(len(m) / k))
    if name == "ring8":
        assert q["reverse_kl"] == pytest.approx(math.log(2))


def test_off_mode_noise():
    m = mixture_means("grid25")
    # Midpoints between horizontally adjacent modes: distance 1.0 = 20 std from any mode.
    mid = np.array([[x + 1.0, y] for x in (-4, -2, 0, 2) for y in (-4, -2, 0, 2, 4)])
    q = mixture_quality(mid, m, MIXTURE_STD["grid25"])
    assert q == {"modes": 0.0, "high_quality": 0.0, "reverse_kl": pytest.approx(math.log(25))}


def test_off_mode_at_ten_std():
    m = mixture_means("ring8")
    std = MIXTURE_STD["ring8"]
    off = m * (1 + 10 * std)  # radially 10 std out from each mode
    q = mixture_quality(off, m, std)
    assert q["modes"] == 0 and q["high_quality"] == 0


def test_mixed_on_and_off_mode():
    m = mixture_means("grid25")
    std = MIXTURE_STD["grid25"]
    on = np.repeat(m, 3, axis=0)  # 75 samples
    off = m + np.array([10 * std, 0.0])  # 25 samples, 0.5 from a mode
    q = mixture_quality(np.concatenate([on, off]), m, std)
    assert q["high_quality"] == pytest.approx(0.75)
    assert q["modes"] == 25
    assert q["reverse_kl"] == pytest.approx(0.0, abs=1e-12)


def test_threshold_at_three_std():
    m = mixture_means("grid25")
    std = MIXTURE_STD["grid25"]
    inside = mixture_quality(m[:1] + [[0.0, 2.9 * std]], m, std)
    outside = mixture_quality(m[:1] + [[0.0, 3.1 * std]], m, std)
    assert inside["high_quality"] == 1.0 and inside["modes"] == 1
    assert outside["high_quality"] == 0.0 and outside["modes"] == 0
    assert outside["reverse_kl"] == pytest.approx(math.log(25))


def test_accepts_torch_tensor():
    m = mixture_means("ring8")
    x = torch.tensor(np.repeat(m, 2, axis=0), dtype=torch.float32, requires_grad=True) * 1.0
    q = mixture_quality(x, m, MIXTURE_STD["ring8"])
    assert q["modes"] == 8 and q["high_quality"] == 1.0


def test_returns_plain_floats():
    m = mixture_means("ring8")
    q = mixture_quality(m, m, 0.01)
    assert set(q) == {"modes", "high_quality", "reverse_kl"}
    assert all(type(v) is float for v in q.values())


def test_over_seeds():
    m = mixture_means("ring8")
    std = MIXTURE_STD["ring8"]
    calls = []

    # seed 0: every mode; seed 1: only mode 0; seed 2: half on mode 0-3, half off-mode.
    def sample_fn(n, seed):
        calls.append((n, seed))
        if seed == 0:
            return np.resize(m, (n, 2))
        if seed == 1:
            return np.repeat(m[:1], n, axis=0)
        return np.concatenate([np.resize(m[:4], (n // 2, 2)), np.resize(m * 2.0, (n - n // 2, 2))])

    out = mixture_quality_over_seeds(sample_fn, m, std, seeds=[0, 1, 2], n=400)
    assert calls == [(400, 0), (400, 1), (400, 2)]

    per = {
        "modes": [8.0, 1.0, 4.0],
        "high_quality": [1.0, 1.0, 0.5],
        "reverse_kl": [0.0, math.log(8), math.log(2)],
    }
    assert set(out) == {k for name in per for k in (name, name + "_se")}
    for name, vals in per.items():
        mu = sum(vals) / 3
        se = math.sqrt(sum((v - mu) ** 2 for v in vals) / 2) / math.sqrt(3)
        assert out[name] == pytest.approx(mu)
        assert out[name + "_se"] == pytest.approx(se)


def test_over_one_seed_has_zero_se():
    m = mixture_means("ring8")
    out = mixture_quality_over_seeds(lambda n, s: np.resize(m, (n, 2)), m, 0.01, seeds=[5])
    assert out["modes"] == 8 and out["modes_se"] == 0.0 and out["reverse_kl_se"] == 0.0
