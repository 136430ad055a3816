"""Sample-quality metrics on features of a feature network: Fréchet distance, KID,
precision/recall, density/coverage, and class coverage. Pure numpy/torch; no network here.

Every function takes real features first, generated features second, as [N, F] arrays.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from distgan.metrics import names


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance, in float64."""
    x = np.asarray(features, dtype=np.float64)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    tr((S1 S2)^(1/2)) is the sum of square roots of the eigenvalues of S1 S2, which are real and
    non-negative for covariance matrices (S1 S2 is similar to S1^(1/2) S2 S1^(1/2)); this avoids
    scipy's sqrtm and its complex round-off.
    """
    eig = np.linalg.eigvals(np.asarray(sigma1) @ np.asarray(sigma2))
    tr_sqrt = np.sqrt(np.clip(eig.real, 0, None)).sum()
    diff = np.asarray(mu1) - np.asarray(mu2)
    # >= 0 in exact arithmetic; round-off takes a set against itself to about -5e-4
    return max(0.0, float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_sqrt))


def kid(
    real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD^2 estimate with the
    cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets.
    Returns (mean, standard deviation over subsets), as torchmetrics reports it: the subsets overlap,
    so std/sqrt(subsets) would understate how much KID varies between independent draws."""
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    m = min(subset_size, len(real), len(fake))
    d = real.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        # Unbiased: the diagonals (each point with itself) are left out of the within-set means.
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(within - 2 * kxy.mean())
    values = np.asarray(values)
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return float(values.mean()), float(std)


def _pairwise(a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> torch.Tensor:
    """Euclidean distances [len(a), len(b)], in float32 chunks (10k x 10k is 400 MB)."""
    ta, tb = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
    return torch.cat([torch.cdist(ta[i : i + chunk], tb) for i in range(0, len(ta), chunk)])


def _kth_neighbour_radius(x: np.ndarray, k: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point."""
    return _pairwise(x, x).kthvalue(k + 1, dim=1).values  # +1: the point itself is at distance 0


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
    """Improved precision/recall (Kynkäänniemi et al. 2019): each set's manifold is the union of
    balls reaching every point's k-th nearest neighbour. Precision: share of fake points inside the
    real manifold; recall: share of real points inside the fake manifold."""
    r_real, r_fake = _kth_neighbour_radius(real, k), _kth_neighbour_radius(fake, k)
    d = _pairwise(fake, real)  # [fake, real]
    precision = (d <= r_real[None, :]).any(dim=1).float().mean()
    recall = (d.T <= r_fake[None, :]).any(dim=1).float().mean()
    return {"precision": float(precision), "recall": float(recall)}


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020), on the real manifold only (robust to outliers).
    Density: mean count of real balls around each fake point, over k (1 when distributions match).
    Coverage: share of real balls that hold at least one fake point."""
    r_real = _kth_neighbour_radius(real, k)
    inside = _pairwise(fake, real) <= r_real[None, :]  # [fake, real]
    return {"density": float(inside.sum() / (k * len(fake))), "coverage": float(inside.any(dim=0).float().mean())}


def class_coverage(
    real_labels: np.ndarray, fake_predictions: np.ndarray, num_classes: int, min_share: float = 0.2
) -> dict[str, float]:
    """classes_covered: share of classes whose generated frequency reaches `min_share` of their
    frequency in the data (2% of samples for ten balanced classes), so that a handful of stray
    samples, or the feature net's own errors (0.5% on real digits), does not count a class.
    class_kl: KL(generated class histogram || data's), with 1e-6 smoothing so empty classes stay finite."""
    p_data = np.bincount(real_labels, minlength=num_classes) / len(real_labels)
    p_fake = np.bincount(fake_predictions, minlength=num_classes) / len(fake_predictions)
    covered = (p_fake >= min_share * p_data) & (p_data > 0)
    eps = 1e-6
    p, q = (p_fake + eps) / (1 + num_classes * eps), (p_data + eps) / (1 + num_classes * eps)
    return {"classes_covered": float(covered.sum() / (p_data > 0).sum()), "class_kl": float((p * np.log(p / q)).sum())}


def class_accuracy(classes: np.ndarray, predictions: np.ndarray) -> float:
    """A class-conditional generator's class_accuracy: for each class k asked for, the share of its
    samples that the classifier calls k; the mean over those classes (each class counts once, however
    many samples it drew)."""
    classes, predictions = np.asarray(classes), np.asarray(predictions)
    return float(np.mean([(predictions[classes == k] == k).mean() for k in np.unique(classes)]))


def image_quality(
    real: np.ndarray,
    fake: np.ndarray,
    net_name: str,
    real_labels: np.ndarray | None = None,
    fake_predictions: np.ndarray | None = None,
    num_classes: int | None = None,
) -> dict[str, float]:
    """Every image metric, named after its feature network: fd_<net>, kid_<net> (+ kid_<net>_std),
    precision, recall, density, coverage, and classes_covered/class_kl where classes are known.
    Non-finite features (a diverged generator) give NaN for every metric, not an exception."""
    if not (np.isfinite(real).all() and np.isfinite(fake).all()):
        keys = [names.fd(net_name), names.kid(net_name), names.kid_std(net_name), *names.IMAGE]
        if real_labels is not None and fake_predictions is not None and num_classes:
            keys += list(names.CLASS)
        return dict.fromkeys(keys, math.nan)
    fd = frechet_distance(*feature_stats(real), *feature_stats(fake))
    kid_mean, kid_std = kid(real, fake)
    out = {names.fd(net_name): fd, names.kid(net_name): kid_mean, names.kid_std(net_name): kid_std}
    out |= precision_recall(real, fake) | density_coverage(real, fake)
    if real_labels is not None and fake_predictions is not None and num_classes:
        out |= class_coverage(real_labels, fake_predictions, num_classes)
    return out
