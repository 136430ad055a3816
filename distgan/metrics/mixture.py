"""Sample quality on 2-D Gaussian mixtures, following the PacGAN protocol.

A sample is *high quality* when it lies within 3 standard deviations of its
nearest mode; a mode is *covered* when at least one high-quality sample is
assigned to it; *reverse_kl* is KL(p || uniform) for p the histogram of
high-quality samples over modes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

MIXTURE_STD = {"ring8": 0.01, "grid25": 0.05}


def mixture_means(name: str) -> np.ndarray:
    """Mode centres, shape [K, 2] float64."""
    if name == "ring8":
        angles = 2 * np.pi * np.arange(8) / 8  # not linspace(0, 2pi, 8): that repeats 0
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if name == "grid25":
        xs = np.arange(-4.0, 5.0, 2.0)
        gx, gy = np.meshgrid(xs, xs, indexing="ij")
        return np.stack([gx.ravel(), gy.ravel()], axis=1)
    raise ValueError(f"unknown mixture {name!r}; expected one of {tuple(MIXTURE_STD)}")


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def mixture_quality(samples, means, std: float) -> dict[str, float]:
    """Modes covered, high-quality fraction and reverse KL for ``samples`` [N, 2].

    If no sample is high quality, reverse_kl is log(K), the same value as a
    total collapse onto a single mode.
    """
    x = _to_numpy(samples).reshape(-1, 2)
    mu = _to_numpy(means).reshape(-1, 2)
    k = len(mu)
    d2 = ((x[:, None, :] - mu[None, :, :]) ** 2).sum(axis=2)  # [N, K]
    nearest = d2.argmin(axis=1)
    dist = np.sqrt(d2[np.arange(len(x)), nearest])
    good = dist <= 3 * std
    counts = np.bincount(nearest[good], minlength=k)
    n_good = int(counts.sum())
    if n_good == 0:
        return {"modes": 0.0, "high_quality": 0.0, "reverse_kl": math.log(k)}
    p = counts[counts > 0] / n_good
    return {
        "modes": float((counts > 0).sum()),
        "high_quality": n_good / len(x),
        "reverse_kl": float((p * np.log(p * k)).sum()),
    }


def mixture_quality_over_seeds(
    sample_fn: Callable[[int, int], object],
    means,
    std: float,
    seeds: Iterable[int],
    n: int = 2500,
) -> dict[str, float]:
    """Mean of each metric over seeds, plus its standard error under ``<name>_se``."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must be non-empty")
    runs = [mixture_quality(sample_fn(n, s), means, std) for s in seeds]
    out: dict[str, float] = {}
    for key in runs[0]:
        vals = np.array([r[key] for r in runs], dtype=np.float64)
        out[key] = float(vals.mean())
        out[key + "_se"] = float(vals.std(ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else 0.0
    return out
