"""Mode coverage on stacked digits, following the Stacked MNIST protocol (VEEGAN, PacGAN).

A sample of `stacked_digits` is three 8x8 digits in its R, G and B channels; each channel is
classified on its own by the digits classifier (`distgan.metrics.digits_net`), so a sample falls
into one of 10^3 = 1,000 modes, the digit triples. *modes* is the number of triples with at least
one sample; *reverse_kl* is KL(p || uniform) = sum_k p_k log(1000 p_k), p the histogram of the
samples over the triples: the generated distribution against the data's (which is uniform over the
triples), in the direction the Stacked MNIST papers report as "KL" (ln 1000 = 6.91 for a generator
stuck on one triple, 0 for a uniform one; the same direction as `metrics.mixture`'s reverse_kl).
"""

from __future__ import annotations

import numpy as np
import torch

N_TRIPLES = 1000


def triples(images, classifier: torch.nn.Module, batch: int = 2048) -> np.ndarray:
    """Digit triple of each image [N, 3, 8, 8] in [-1, 1], as one index 100 R + 10 G + B in [0, 1000)."""
    x = torch.as_tensor(images, dtype=torch.float32)
    channels = x.reshape(-1, 1, *x.shape[2:])  # [3N, 1, 8, 8]: R, G, B of each image in turn
    device = next(classifier.parameters()).device
    with torch.no_grad():
        digits = torch.cat([classifier(c.to(device)).argmax(1).cpu() for c in channels.split(batch)])
    return digits.reshape(-1, 3).numpy() @ np.array([100, 10, 1])


def stacked_modes(images, classifier: torch.nn.Module | None = None) -> dict[str, float]:
    """modes (triples with >= 1 sample, of 1,000) and reverse_kl (KL(generated || uniform), nats) of
    `images` [N, 3, 8, 8]; `classifier`: a digits classifier ([N, 1, 8, 8] -> 10 logits), by default
    the shipped one."""
    if len(images) == 0:
        raise ValueError("stacked_modes needs at least one image")
    if classifier is None:
        from distgan.metrics import digits_net

        classifier = digits_net.load()
    counts = np.bincount(triples(images, classifier), minlength=N_TRIPLES)
    p = counts[counts > 0] / counts.sum()
    return {"modes": float((counts > 0).sum()), "reverse_kl": float((p * np.log(p * N_TRIPLES)).sum())}
