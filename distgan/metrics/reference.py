"""Reference features of the real data: computed once per (data, feature network) and cached on
disk, keyed by a fingerprint of the images themselves and of the network's weights, so a changed
dataset or network never reuses stale numbers.

Cache: $DISTGAN_CACHE, else ~/.cache/distgan (one small .npz per key).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distgan.metrics.features import FeatureNet


@dataclass
class Reference:
    features: np.ndarray  # [N, F] of the real images
    labels: np.ndarray | None  # their classes, where the data has them
    fingerprint: str


def cache_dir() -> Path:
    return Path(os.environ.get("DISTGAN_CACHE", Path.home() / ".cache" / "distgan")) / "reference"


def fingerprint(images: np.ndarray, net: FeatureNet) -> str:
    h = hashlib.sha256()
    h.update(repr(images.shape).encode())
    h.update(np.ascontiguousarray(images, dtype=np.float32).tobytes())
    h.update(f"{net.name}:{net.digest}".encode())
    return h.hexdigest()[:24]


def reference(
    images: np.ndarray, labels: np.ndarray | None, net: FeatureNet, device: torch.device | str = "cpu"
) -> Reference:
    """Features of `images` under `net`, from the cache when this exact pair was seen before."""
    key = fingerprint(images, net)
    path = cache_dir() / f"{net.name}-{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return Reference(z["features"], labels, key)
    features = net.features(torch.from_numpy(images).to(device))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # write then rename: readers never see half a file
    np.savez(tmp, features=features)
    os.replace(tmp, path)
    return Reference(features, labels, key)
