"""DCGAN (Radford et al. 2016) for square images of s0 * 2^k px, 8 to 256 (`distgan.models.sizes`).

G upsamples an s0 x s0 map (4x4 for 8, 16, 32, 64 px: the classic nets, unchanged) by strided
transposed convolutions, with BatchNorm; D mirrors it with
strided convolutions and LeakyReLU but no BatchNorm, so that real and fake batches can share one
D forward (needed for R1/GP under DDP) and batch statistics never mix them.

Class-conditional with `num_classes` (`distgan.models.conditioning`): G's first transposed conv reads
cat(z, class embedding) (so the class sets the start map; conditional BatchNorm would also be an
option here, but one conditioning scheme for all three families keeps them comparable); D projects
its s0 x s0 feature map onto the class embedding.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm

from distgan.models import conditioning
from distgan.models.sizes import start_map
from distgan.spec.job import ModelSpec


def _widths(size: int, base: int, image_level: bool) -> list[int]:
    """Channel widths from the start map up, capped at 8x base; `image_level` adds a feature map at
    the image's own resolution (base wide)."""
    levels = start_map(size)[1] + image_level
    return [min(base * 2 ** (levels - 1 - i), base * 8) for i in range(levels)]


def _refine(width: int, count: int, norm: bool, sn=lambda m: m) -> list[nn.Module]:
    """`count` 3x3 conv blocks that keep resolution and width (DCGAN's "extra layers")."""
    layers: list[nn.Module] = []
    for _ in range(count):
        if norm:  # G
            layers += [nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
        else:  # D
            layers += [sn(nn.Conv2d(width, width, 3, 1, 1)), nn.LeakyReLU(0.2, True)]
    return layers


class Generator(nn.Module):
    """Classic DCGAN when model.extra_layers=0. With extra layers: that many 3x3 blocks after each
    upsampling below the image's resolution, and the last upsampling makes features from which a
    3x3 conv makes the pixels: depth that small images (8-16 px, one or two upsamplings) lack."""

    def __init__(self, spec: ModelSpec, sample_shape: tuple[int, int, int], num_classes: int | None = None):
        super().__init__()
        self.latent_dim = spec.latent_dim
        channels, size, _ = sample_shape
        inputs = conditioning.generator_input_width(spec.latent_dim, num_classes)
        k = spec.extra_layers
        widths = _widths(size, spec.base_channels, image_level=k > 0)
        s0 = start_map(size)[0]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(inputs, widths[0], s0, 1, 0, bias=False),  # 1x1 -> s0 x s0
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(True),
        ]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += _refine(a, k, norm=True)
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        if k:
            layers += [nn.Conv2d(widths[-1], channels, 3, 1, 1), nn.Tanh()]
        else:
            layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.class_embed = conditioning.generator_embedding(num_classes, spec.latent_dim)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(conditioning.generator_input(z, self.class_embed, y)[:, :, None, None])


class Discriminator(nn.Module):
    """G mirrored: strided convs down to s0 x s0 (a 3x3 conv reads the pixels first when there are
    extra layers, and that many 3x3 blocks follow each downsampling), then an s0 x s0 conv to one score."""

    def __init__(self, spec: ModelSpec, sample_shape: tuple[int, int, int], num_classes: int | None = None):
        super().__init__()
        channels, size, _ = sample_shape
        k = spec.extra_layers
        widths = _widths(size, spec.base_channels, image_level=k > 0)[::-1]  # grows toward the start map
        sn = spectral_norm if spec.spectral_norm else (lambda m: m)
        layers: list[nn.Module] = []
        if k:
            layers += [sn(nn.Conv2d(channels, widths[0], 3, 1, 1)), nn.LeakyReLU(0.2, True)]
            pairs = zip(widths[:-1], widths[1:])
        else:
            pairs = zip([channels, *widths[:-1]], widths)
        for a, b in pairs:
            layers += [sn(nn.Conv2d(a, b, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
            layers += _refine(b, k, norm=False, sn=sn)
        layers.append(sn(nn.Conv2d(widths[-1], 1, start_map(size)[0], 1, 0)))  # s0 x s0 -> 1x1
        self.net = nn.Sequential(*layers)
        features = widths[-1] * start_map(size)[0] ** 2  # the s0 x s0 map the last conv reads
        self.class_embed = conditioning.projection_embedding(num_classes, features, spec.spectral_norm)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return conditioning.judge(self.net, self.class_embed, x, y)
