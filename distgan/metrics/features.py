"""Feature networks for image metrics. A metric's name carries its network (`fd_digits`,
`kid_inception`, `fd_<your name>`): numbers from different networks are never comparable, so a
network is never switched silently.

- `digits`: a small classifier trained on the built-in digits (weights ship in the package); it
  also predicts classes, for class coverage.
- `inception`: the standard FID Inception-v3 (pytorch-fid), only when its weights are already in
  the local torch cache; nothing is ever downloaded here.
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

INCEPTION_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"  # the file name pytorch-fid caches
INCEPTION_FETCH = (
    'pip install pytorch-fid && python -c "from pytorch_fid.inception import fid_inception_v3; fid_inception_v3()"'
)


@dataclass
class FeatureNet:
    name: str  # goes into metric names: fd_<name>
    net: torch.nn.Module
    digest: str  # sha256 of the weights, for cache keys and the run's tags
    num_classes: int | None = None  # set when the net also classifies (class coverage)

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch: int = 500) -> np.ndarray:
        """[N, C, H, W] in [-1, 1] -> [N, F] float32."""
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
        if self.name == "digits":
            return self.net.features(x)
        if self.name == "inception":
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # gray -> RGB
            return self.net((x + 1) / 2)[0].flatten(1)  # pytorch-fid takes [0, 1], resizes to 299
        return self.net(x)


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
    digits, else `inception` when its weights are cached, else none (the run says so)."""
    if choice != "auto":
        return None if choice == "none" else choice
    if dataset == "digits":
        return "digits"
    return "inception" if inception_cached() else None


def network_name(choice: str, feature_name: str | None = None) -> str:
    """The name a resolved choice gives its metrics: digits, inception, or the TorchScript file's."""
    return choice if choice in ("digits", "inception") else (feature_name or Path(choice).stem).lower()


def check(choice: str, sample_shape: tuple[int, ...], feature_name: str | None = None) -> None:
    """InputError when the network cannot take this data or is not available; run on the driver."""
    if choice == "digits" and tuple(sample_shape) != (1, 8, 8):
        raise InputError(
            f"metrics.feature_net=digits takes 1x8x8 images; this data is {'x'.join(map(str, sample_shape))}: "
            "use inception, a TorchScript file, or none"
        )
    if choice == "inception":
        _check_inception()
    if choice not in ("digits", "inception"):
        path = Path(choice)
        if not path.is_file():
            raise InputError(
                f"metrics.feature_net={choice!r}: not digits, inception, none or auto, and no such TorchScript file"
            )
        if feature_name is None and not re.fullmatch(r"[a-z0-9_]+", path.stem.lower()):
            raise InputError(
                f"metrics.feature_net={choice!r}: set metrics.feature_name (letters, digits, _) to name its metrics"
            )


def inception_cached() -> bool:
    return (Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS).is_file()


def _check_inception() -> None:
    try:
        import pytorch_fid  # noqa: F401
    except ImportError:
        raise InputError("metrics.feature_net=inception needs pytorch-fid: pip install 'distgan[fid]'") from None
    if not inception_cached():
        raise InputError(
            f"the FID Inception weights are not in the torch cache ({Path(torch.hub.get_dir()) / 'checkpoints'}); "
            f"fetch them once with: {INCEPTION_FETCH}"
        )


def load(choice: str, device: torch.device | str = "cpu", feature_name: str | None = None) -> FeatureNet:
    """The network named by a resolved choice ('digits', 'inception' or a TorchScript path)."""
    if choice == "digits":
        from distgan.metrics import digits_net

        net = digits_net.load()
        return FeatureNet("digits", net.to(device), _digest(net), digits_net.NUM_CLASSES)
    if choice == "inception":
        _check_inception()
        from pytorch_fid.inception import InceptionV3

        net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()  # loads from the cache, checked above
        return FeatureNet("inception", net.to(device), _digest(net))
    if choice.endswith(".pt2"):  # a torch.export program
        net = torch.export.load(choice).module().to(device)
    else:
        net = torch.jit.load(choice, map_location=device).eval()
    return FeatureNet(network_name(choice, feature_name), net, _digest(net))
