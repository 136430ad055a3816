"""Feature networks for image metrics. A metric's name carries its network (`fd_digits`,
`kid_inception`, `fd_dinov2`, `fd_<your name>`): numbers from different networks are never
comparable, so a network is never switched silently.

- `digits`: a small classifier trained on the built-in digits (weights ship in the package); it
  also predicts classes, for class coverage.
- `inception`: the standard FID Inception-v3 (distgan.metrics.inception), 2,048 features.
- `dinov2`: DINOv2 ViT-S/14 (distgan.metrics.dinov2), 384 features.
  Both are downloaded on first use and verified by sha256 (distgan.metrics.weights).
- your own network as a TorchScript file or a `torch.export` program (.pt2):
  [N, C, H, W] in [-1, 1] -> [N, F] features.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distgan.errors import InputError
from distgan.metrics import weights

PRETRAINED = ("inception", "dinov2")  # fetched on first use (distgan.metrics.weights)
BUILTIN = ("digits", *PRETRAINED)


@dataclass
class FeatureNet:
    name: str  # goes into metric names: fd_<name>
    net: torch.nn.Module
    digest: str  # sha256 of the weights, for cache keys and the run's tags
    num_classes: int | None = None  # set when the net also classifies (class coverage)
    batch: int = 500  # images per forward pass

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch: int | None = None) -> np.ndarray:
        """[N, C, H, W] in [-1, 1] -> [N, F] float32."""
        batch = batch or self.batch
        return np.concatenate(
            [self._features(images[i : i + batch]).float().cpu().numpy() for i in range(0, len(images), batch)]
        )

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch: int = 500) -> np.ndarray:
        """Predicted class of each image (nets with a classifier head only)."""
        return np.concatenate(
            [self.net(images[i : i + batch]).argmax(1).cpu().numpy() for i in range(0, len(images), batch)]
        )

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x) if self.name == "digits" else self.net(x)


def _digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def choose(spec, info) -> str | None:
    """The network the image metrics of this job (JobSpec, DataInfo) use; None: not images, or none."""
    return resolve(spec.metrics.feature_net, info.name) if info.kind == "image" else None


def resolve(choice: str, dataset: str) -> str | None:
    """Which network `metrics.feature_net` means for this data: 'auto' picks `digits` for the
    digits and `inception`, the network published FIDs use, for any other images."""
    if choice != "auto":
        return None if choice == "none" else choice
    return "digits" if dataset == "digits" else "inception"


def network_name(choice: str, feature_name: str | None = None) -> str:
    """The name a resolved choice gives its metrics: digits, inception, dinov2, or the file's."""
    return choice if choice in BUILTIN else (feature_name or Path(choice).stem).lower()


def check(choice: str, sample_shape: tuple[int, ...], feature_name: str | None = None) -> None:
    """InputError when the network cannot take this data or is not available; run on the driver,
    before Ray starts. A pretrained network is downloaded here, on first use, and verified."""
    shape = "x".join(map(str, sample_shape))
    c, h, w = (tuple(sample_shape) + (0, 0, 0))[:3]
    if choice == "digits" and not (c == 1 and h == w >= 8):
        raise InputError(
            f"metrics.feature_net=digits takes 1-channel square images of 8 px or more; this data is {shape}: "
            "use inception, dinov2, a TorchScript file, or none"
        )
    if choice in PRETRAINED:
        if sample_shape[0] not in (1, 3):
            raise InputError(f"metrics.feature_net={choice} takes grayscale or RGB images; this data is {shape}")
        weights.fetch(choice)
    if choice not in BUILTIN:
        path = Path(choice)
        if not path.is_file():
            raise InputError(
                f"metrics.feature_net={choice!r}: not digits, inception, dinov2, none or auto, "
                "and no such TorchScript file"
            )
        if feature_name is None and not re.fullmatch(r"[a-z0-9_]+", path.stem.lower()):
            raise InputError(
                f"metrics.feature_net={choice!r}: set metrics.feature_name (letters, digits, _) to name its metrics"
            )


def load(choice: str, device: torch.device | str = "cpu", feature_name: str | None = None) -> FeatureNet:
    """The network named by a resolved choice ('digits', 'inception', 'dinov2' or a file's path)."""
    if choice == "digits":
        from distgan.metrics import digits_net

        net = digits_net.load()
        return FeatureNet("digits", net.to(device), _digest(net), digits_net.NUM_CLASSES)
    if choice in PRETRAINED:
        from distgan.metrics import dinov2, inception

        module = inception if choice == "inception" else dinov2
        net = module.load(weights.fetch(choice))
        # the verified file's digest names the weights: no need to hash 90 MB of tensors again. Batches
        # of 50: at 299 or 224 px a batch of 500 would hold gigabytes of activations.
        return FeatureNet(choice, net.to(device), weights.REGISTRY[choice].sha256[:16], batch=50)
    if choice.endswith(".pt2"):  # a torch.export program
        net = torch.export.load(choice).module().to(device)
    else:
        net = torch.jit.load(choice, map_location=device).eval()
    return FeatureNet(network_name(choice, feature_name), net, _digest(net))
