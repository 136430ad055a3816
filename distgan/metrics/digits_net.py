"""The feature network for the built-in digits: a small CNN classifier on scikit-learn's 8x8 digits.

Its weights ship in the package (`digits_net.pt`, a plain state_dict) so that `fd_digits` and
class coverage need no download. Regenerate them (deterministic on CPU) with

    python -m distgan.metrics.digits_net

which trains on a fixed 80% split and prints the held-out accuracy on the other 20%.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

WEIGHTS = Path(__file__).with_name("digits_net.pt")
FEATURE_DIM = 64
NUM_CLASSES = 10


class DigitsNet(nn.Module):
    """[N, 1, 8, 8] in [-1, 1] -> 64 features (penultimate layer) -> 10 logits. Larger square images
    (the digits at data.resolution) are first averaged down to 8x8, the size the net was trained at."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 2x2
            nn.Flatten(), nn.Linear(256, FEATURE_DIM), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != 8:
            x = nn.functional.interpolate(x, size=(8, 8), mode="area")
        return self.conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def load() -> DigitsNet:
    net = DigitsNet()
    net.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return net.eval()


def split(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the fixed 80/20 train/held-out split of the 1,797 digits."""
    order = np.random.default_rng(seed).permutation(1797)
    return order[:1437], order[1437:]


def train_classifier(epochs: int = 60, seed: int = 0) -> tuple[DigitsNet, float]:
    """Train on the 80% split with small random shifts; returns (net, held-out accuracy)."""
    from distgan.data.builtin import digits_array, digits_labels

    torch.manual_seed(seed)
    x, y = torch.from_numpy(digits_array()), torch.from_numpy(digits_labels())
    train_idx, test_idx = split(seed)
    net = DigitsNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for batch in torch.randperm(len(train_idx), generator=g).split(64):
            xb, yb = x[train_idx[batch.numpy()]], y[train_idx[batch.numpy()]]
            # A shift of up to one pixel: the generator's digits will not be centred exactly.
            dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(net(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(x[test_idx]).argmax(1) == y[test_idx]).float().mean().item()
    return net, accuracy


def main() -> None:
    p = argparse.ArgumentParser(description="Train the digits feature network and write its weights.")
    p.add_argument("--out", default=str(WEIGHTS))
    p.add_argument("--epochs", type=int, default=60)
    args = p.parse_args()
    torch.set_num_threads(1)  # bit-for-bit reproducible on CPU
    net, accuracy = train_classifier(args.epochs)
    torch.save(net.state_dict(), args.out)
    print(f"held-out accuracy {accuracy:.4f} on 360 digits; weights -> {args.out}")


if __name__ == "__main__":
    main()
