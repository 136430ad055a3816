"""Image metrics on constructed feature sets: FD against the closed form, KID's unbiasedness,
precision/recall and density/coverage on point clouds, class coverage."""

import numpy as np
import pytest
import scipy.linalg

from distgan.metrics.image import (
    class_coverage,
    density_coverage,
    feature_stats,
    frechet_distance,
    image_quality,
    kid,
    precision_recall,
)


def _random_gaussian(rng, d):
    a = rng.normal(size=(d, d))
    return rng.normal(size=d), a @ a.T / d + 0.1 * np.eye(d)


def _scipy_fd(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.parametrize("d", [2, 16, 64])
def test_fd_matches_closed_form(d):
    rng = np.random.default_rng(d)
    (mu1, s1), (mu2, s2) = _random_gaussian(rng, d), _random_gaussian(rng, d)
    ours, ref = frechet_distance(mu1, s1, mu2, s2), _scipy_fd(mu1, s1, mu2, s2)
    assert ref > 0.1
    assert abs(ours - ref) <= 1e-3 * ref


def test_fd_diagonal_case_by_hand():
    # Same covariance diag(4, 9) shifted by (3, 4): FD = 25 exactly; scaled covariance: sum (sqrt(a) - sqrt(b))^2.
    s = np.diag([4.0, 9.0])
    assert frechet_distance(np.zeros(2), s, np.array([3.0, 4.0]), s) == pytest.approx(25.0, abs=1e-9)
    assert frechet_distance(np.zeros(2), s, np.zeros(2), 4 * s) == pytest.approx((2 - 4) ** 2 + (3 - 6) ** 2, abs=1e-9)


def test_fd_of_a_sample_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(2000, 32))
    assert abs(frechet_distance(*feature_stats(x), *feature_stats(x))) < 1e-6


def test_fd_grows_with_the_shift():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 8))
    fds = [
        frechet_distance(*feature_stats(x), *feature_stats(rng.normal(size=(3000, 8)) + shift))
        for shift in (0.0, 0.5, 1.0)
    ]
    assert fds[0] < 0.05 < fds[1] < fds[2]
    assert fds[2] == pytest.approx(8.0, rel=0.1)  # |shift|^2 summed over 8 dims


def test_kid_unbiased_on_equal_distributions():
    rng = np.random.default_rng(2)
    means = []
    for seed in range(5):
        mean, std = kid(
            rng.normal(size=(1500, 16)), rng.normal(size=(1500, 16)), subsets=20, subset_size=500, seed=seed
        )
        assert abs(mean) < 4 * std / np.sqrt(20) + 1e-4
        means.append(mean)
    assert abs(np.mean(means)) < 2e-3  # an unbiased estimate averages to 0, a biased one would not
    shifted, std = kid(rng.normal(size=(1500, 16)), rng.normal(size=(1500, 16)) + 0.5, subsets=20, subset_size=500)
    assert shifted > 4 * std and shifted > 0.05


def test_precision_recall_identical_disjoint_nested():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(800, 4))
    same = precision_recall(x, x.copy())
    assert same == {"precision": 1.0, "recall": 1.0}
    far = precision_recall(x, rng.normal(size=(800, 4)) + 100)
    assert far == {"precision": 0.0, "recall": 0.0}
    # fake covers only a narrow core of real: precise, but recalls little of it
    core = rng.normal(size=(800, 4)) * 0.2
    nested = precision_recall(x, core)
    assert nested["precision"] > 0.95 and nested["recall"] < 0.3
    # and the other way round: fake spreads wider than real
    wide = precision_recall(core, x)
    assert wide["precision"] < 0.3 and wide["recall"] > 0.95


def test_density_coverage():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(1000, 4))
    match = density_coverage(real, rng.normal(size=(1000, 4)))
    assert 0.8 < match["density"] < 1.2 and match["coverage"] > 0.9
    half = density_coverage(real, np.abs(rng.normal(size=(1000, 4))))  # only one orthant of the real ones
    assert half["coverage"] < 0.25
    far = density_coverage(real, real + 100)
    assert far == {"density": 0.0, "coverage": 0.0}


def test_class_coverage():
    labels = np.repeat(np.arange(10), 100)
    assert class_coverage(labels, labels.copy(), 10) == {
        "classes_covered": 1.0,
        "class_kl": pytest.approx(0.0, abs=1e-9),
    }
    collapsed = class_coverage(labels, np.full(1000, 3), 10)
    assert collapsed["classes_covered"] == 0.1
    assert collapsed["class_kl"] == pytest.approx(np.log(10), rel=1e-3)
    # stray samples of a class do not count it as generated (under 20% of its data share) ...
    stray = np.concatenate([np.full(985, 3), np.full(15, 2)])
    assert class_coverage(labels, stray, 10)["classes_covered"] == 0.1
    # ... and a class at a quarter of its share does
    assert class_coverage(labels, np.concatenate([np.full(975, 3), np.full(25, 2)]), 10)["classes_covered"] == 0.2


def test_image_quality_names_its_network():
    rng = np.random.default_rng(5)
    q = image_quality(
        rng.normal(size=(500, 8)), rng.normal(size=(500, 8)), "digits", np.zeros(500, int), np.zeros(500, int), 10
    )
    assert {
        "fd_digits",
        "kid_digits",
        "kid_digits_std",
        "precision",
        "recall",
        "density",
        "coverage",
        "classes_covered",
        "class_kl",
    } == set(q)
    assert "classes_covered" not in image_quality(rng.normal(size=(500, 8)), rng.normal(size=(500, 8)), "mine")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_image_quality_of_non_finite_features_is_nan(bad):
    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    fake[3, 2] = bad  # a diverged generator
    q = image_quality(real, fake, "digits", np.zeros(200, int), np.zeros(200, int), 10)
    assert set(q) == set(image_quality(real, real, "digits", np.zeros(200, int), np.zeros(200, int), 10))
    assert all(np.isnan(v) for v in q.values())
    assert all(np.isnan(v) for v in image_quality(real, np.full_like(fake, np.nan), "mine").values())


def test_fd_of_a_set_with_itself_is_not_negative():
    # eigvals round-off made this about -5e-4 (tr sqrt(S S) a hair above tr S)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(50, 64)) * rng.uniform(0, 100, 64)
        assert frechet_distance(*feature_stats(x), *feature_stats(x)) == 0.0


def test_kid_spread_is_the_subset_std_not_a_standard_error():
    """The second number KID reports must describe how much KID varies between independent
    draws of samples; std/sqrt(subsets) over overlapping subsets of the same samples understated it
    (here ~7x; ~3.4x at the default 100 subsets of 1,000 out of 10,000)."""
    d, n, m = 8, 600, 400
    means, spreads = [], []
    for draw in range(12):
        rng = np.random.default_rng(100 + draw)
        real, fake = rng.normal(size=(n, d)), rng.normal(loc=0.2, size=(n, d))
        mean, spread = kid(real, fake, subsets=50, subset_size=m, seed=draw)
        means.append(mean)
        spreads.append(spread)
    across_draws = np.std(means, ddof=1)
    assert np.mean(spreads) > 0.5 * across_draws, (np.mean(spreads), across_draws)
    assert np.mean(spreads) < 4 * across_draws, (np.mean(spreads), across_draws)
