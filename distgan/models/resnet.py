"""Residual G and D without normalization, after R3GAN (Huang et al. 2025, "The GAN is dead; long
live the GAN!"), for square images of s0 * 2^k px, 8 to 256 (`distgan.models.sizes`).

One stage per resolution, s0 x s0 up to the image's side, each `model.blocks_per_stage` residual
blocks wide. Between stages a plain transition: in G a 1x1 conv to the next width, then bilinear
2x upsampling; in D 2x2 average pooling, then a 1x1 conv (channels change at the lower resolution,
where it is cheaper). Widths as in dcgan: `base_channels` next to the image, doubling per halving
of resolution, capped at 8x base.

Invariants:
- No normalization layers: real and fake share one D forward and batch statistics never mix them,
  and the nets need no train/eval switch.
- Fix-up init: the last conv of every residual branch starts at zero, so every block starts as
  the identity and each net as its plain path (a linear map, then tanh in G). The first conv of
  each branch is He-initialized and scaled by L^-1/2 (L: blocks in the net), so the variance the
  L branches add stays bounded once training moves their last convs off zero. Every other layer is
  variance-preserving (He init, zero bias).
- D's output is [N] logits; G's images are in [-1, 1] (tanh, as the data; R3GAN's is linear).

Class-conditional with `num_classes` (`distgan.models.conditioning`), as R3GAN: G's first linear
layer reads cat(z, class embedding); D projects its flattened s0 x s0 features onto the class embedding.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from distgan.models import conditioning
from distgan.models.sizes import start_map
from distgan.spec.job import ModelSpec

SLOPE = 0.2  # LeakyReLU's negative slope


def _he_init(layer: nn.Conv2d | nn.Linear, scale: float = 1.0, slope: float = 1.0) -> nn.Module:
    """He-normal weights for a layer followed by LeakyReLU(`slope`) (slope 1: linear), times `scale`; zero bias."""
    nn.init.kaiming_normal_(layer.weight, a=slope, nonlinearity="leaky_relu")
    with torch.no_grad():
        layer.weight.mul_(scale)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class ResidualBlock(nn.Module):
    """x + conv3x3(LeakyReLU(conv3x3(x))), starting as the identity (see the module's init note)."""

    def __init__(self, width: int, blocks_in_net: int):
        super().__init__()
        self.conv1 = _he_init(nn.Conv2d(width, width, 3, 1, 1), scale=blocks_in_net**-0.5, slope=SLOPE)
        self.act = nn.LeakyReLU(SLOPE)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


def _widths(size: int, base: int) -> list[int]:
    """Channel width of each stage, from the start map up to the image's resolution."""
    k = start_map(size)[1]
    return [min(base * 2 ** (k - i), base * 8) for i in range(k + 1)]


def _stage(width: int, spec: ModelSpec, stages: int) -> list[nn.Module]:
    return [ResidualBlock(width, spec.blocks_per_stage * stages) for _ in range(spec.blocks_per_stage)]


class Generator(nn.Module):
    def __init__(self, spec: ModelSpec, sample_shape: tuple[int, int, int], num_classes: int | None = None):
        super().__init__()
        self.latent_dim = spec.latent_dim
        channels, size, _ = sample_shape
        widths = _widths(size, spec.base_channels)
        self.start_shape = (widths[0], start_map(size)[0], start_map(size)[0])
        inputs = conditioning.generator_input_width(spec.latent_dim, num_classes)
        self.start = _he_init(nn.Linear(inputs, widths[0] * start_map(size)[0] ** 2))
        layers = _stage(widths[0], spec, len(widths))
        for a, b in itertools.pairwise(widths):
            if a != b:
                layers.append(_he_init(nn.Conv2d(a, b, 1)))
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), *_stage(b, spec, len(widths))]
        layers += [_he_init(nn.Conv2d(widths[-1], channels, 1)), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.class_embed = conditioning.generator_embedding(num_classes, spec.latent_dim)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        start = self.start(conditioning.generator_input(z, self.class_embed, y))
        return self.net(start.view(z.shape[0], *self.start_shape))


class Discriminator(nn.Module):
    def __init__(self, spec: ModelSpec, sample_shape: tuple[int, int, int], num_classes: int | None = None):
        super().__init__()
        channels, size, _ = sample_shape
        widths = _widths(size, spec.base_channels)[::-1]  # from the image's resolution down
        layers: list[nn.Module] = [_he_init(nn.Conv2d(channels, widths[0], 1)), *_stage(widths[0], spec, len(widths))]
        for a, b in itertools.pairwise(widths):
            layers.append(nn.AvgPool2d(2))
            if a != b:
                layers.append(_he_init(nn.Conv2d(a, b, 1)))
            layers += _stage(b, spec, len(widths))
        features = widths[-1] * start_map(size)[0] ** 2
        layers += [nn.Flatten(), _he_init(nn.Linear(features, 1))]
        self.net = nn.Sequential(*layers)
        self.class_embed = conditioning.projection_embedding(num_classes, features, sn=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return conditioning.judge(self.net, self.class_embed, x, y)
