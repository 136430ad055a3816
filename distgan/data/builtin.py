"""Built-in datasets: the PacGAN 2-D mixtures (ring8, grid25), scikit-learn's 8x8 digits, and the
Stacked MNIST protocol on them (stacked_digits: 1,000 modes)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from distgan.metrics.mixture import MIXTURE_STD, mixture_means

ABOUT = {
    "ring8": "8 Gaussians on the unit circle, std 0.01 (PacGAN); 2-D points drawn fresh each step",
    "grid25": "25 Gaussians on the grid {-4,-2,0,2,4}^2, std 0.05 (PacGAN); 2-D points drawn fresh each step",
    "digits": "scikit-learn's 1,797 real 8x8 handwritten digits, 1 channel, scaled to [-1, 1]",
    "stacked_digits": "Stacked MNIST on the 8x8 digits: 3 channels, each an independently drawn real digit; "
    "1,000 modes (digit triples), drawn fresh each step",
}


def mixture_batches(name: str, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless batches from the mixture: a uniformly chosen mode plus Gaussian noise."""
    means = torch.as_tensor(mixture_means(name), dtype=torch.float32)
    std = MIXTURE_STD[name]
    rng = torch.Generator().manual_seed(seed)
    while True:
        modes = torch.randint(len(means), (batch_size,), generator=rng)
        yield means[modes] + std * torch.randn(batch_size, 2, generator=rng)


def digits_array() -> np.ndarray:
    """[1797, 1, 8, 8] float32 in [-1, 1]; the data ships inside scikit-learn (no download)."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32)  # values 0..16
    return (images / 8.0 - 1.0)[:, None]


def digits_labels() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target


def tensor_batches(
    data: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (samples, labels) batches from an in-memory shard: reshuffled every epoch, last partial
    batch dropped. The order is drawn on the CPU and moved to the data's device once an epoch: the
    same batches on a GPU as on the CPU."""
    rng = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(data), generator=rng).to(data.device)
        for i in range(0, len(data) - batch_size + 1, batch_size):
            pick = order[i : i + batch_size]
            yield data[pick], labels[pick]


def stacked_digits_batches(batch_size: int, seed: int, digits: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Endless [N, 3, H, W] batches: each channel a real digit drawn uniformly at random, independently
    of the other two (Stacked MNIST: the 10^3 digit triples are the modes, about equally likely).

    `digits`: the [1797, H, W] digit planes to stack, on the device the batches are wanted on (the
    8 px digits on the CPU by default). The draws are made on the CPU: the same batches anywhere."""
    digits = torch.from_numpy(digits_array())[:, 0] if digits is None else digits
    rng = torch.Generator().manual_seed(seed)
    while True:
        yield digits[torch.randint(len(digits), (batch_size, 3), generator=rng).to(digits.device)]


def stacked_digits_array(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n stacked digits [n, 3, 8, 8] float32 in [-1, 1] and their digit triples [n, 3] (the class of
    the R, G and B digit), drawn as `stacked_digits_batches` draws them."""
    digits, labels = digits_array()[:, 0], digits_labels()
    pick = torch.randint(len(digits), (n, 3), generator=torch.Generator().manual_seed(seed)).numpy()
    return digits[pick], labels[pick]
