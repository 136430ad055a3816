"""Differentiable augmentation (DiffAugment, Zhao et al. 2020): random, differentiable image ops
applied to every image D sees, real and fake alike, so D cannot memorize a small data set and G
still gets gradients through them.

Invariants:
- Every op keeps shape [N, C, H, W] and dtype, and draws its randomness per sample: samples never
  interact, so R1/R2 (gradient of each logit w.r.t. its own input) stay per-sample penalties.
- Every op is differentiable w.r.t. its input (twice: R1/R2 backpropagate through it).
- Randomness comes from the global RNG of the input's device, as DiffAugment's reference code
  does: a run is reproducible from its seed, and each DDP rank (seeded per rank) draws its own.
  An empty policy draws nothing, so runs without augmentation see the same random stream as before.

Magnitudes are DiffAugment's: brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5],
translation up to 1/8 of the image side (zero-filled), cutout of a square half the image side.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _uniform(x: Tensor) -> Tensor:
    """One U[0, 1) draw per sample, broadcastable over [N, C, H, W]."""
    return torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device)


def brightness(x: Tensor) -> Tensor:
    return x + (_uniform(x) - 0.5)


def saturation(x: Tensor) -> Tensor:
    gray = x.mean(dim=1, keepdim=True)  # a no-op on 1-channel images
    return (x - gray) * (2 * _uniform(x)) + gray


def contrast(x: Tensor) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(x) + 0.5) + mean


def translation(x: Tensor, ratio: float = 1 / 8) -> Tensor:
    """Shift each image by up to `ratio` of its side in each direction; uncovered pixels are 0."""
    n, _, h, w = x.shape
    max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-max_dy, max_dy + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-max_dx, max_dx + 1, (n, 1, 1), device=x.device)
    # Gather from x padded by one zero pixel per side: source indices past the image clamp onto the
    # padding, so shifted-in pixels read 0. Indexing (not a loop over shifts) keeps it one kernel.
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx + 1).clamp(0, w + 1)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)  # [N, H+2, W+2, C]
    return padded[batch, rows, cols].permute(0, 3, 1, 2)


def cutout(x: Tensor, ratio: float = 1 / 2) -> Tensor:
    """Zero a square of `ratio` times the side at a random center (it may reach past the border)."""
    n, _, h, w = x.shape
    size_h, size_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + 1 - size_h % 2, (n, 1, 1), device=x.device) - size_h // 2
    left = torch.randint(0, w + 1 - size_w % 2, (n, 1, 1), device=x.device) - size_w // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + size_h) & (cols >= left) & (cols < left + size_w)
    return x * (~inside).unsqueeze(1).to(x.dtype)


OPS = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}


def apply(x: Tensor, policy: Sequence[str]) -> Tensor:
    """`x` with the ops of `policy` applied in order (`x` itself when the policy is empty)."""
    if not policy:
        return x
    if x.dim() != 4:
        raise ValueError(f"augmentation is for images [N, C, H, W]; got a batch of shape {tuple(x.shape)}")
    unknown = [op for op in policy if op not in OPS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}; expected one of {', '.join(OPS)}")
    for op in policy:
        for fn in OPS[op]:
            x = fn(x)
    return x
