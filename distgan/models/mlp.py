"""The classic fully-connected GAN (Goodfellow et al. 2014): latent -> hidden layers -> data.
Class-conditional with `num_classes` (`distgan.models.conditioning`)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm

from distgan.models import conditioning
from distgan.spec.job import ModelSpec


def _stack(sizes: list[int], act: nn.Module, sn: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(a, b)
        layers.append(spectral_norm(linear) if sn else linear)
        if i < len(sizes) - 2:
            layers.append(act)
    return nn.Sequential(*layers)


class Generator(nn.Module):
    def __init__(self, spec: ModelSpec, sample_shape: tuple[int, ...], num_classes: int | None = None):
        super().__init__()
        self.latent_dim = spec.latent_dim
        self.sample_shape = tuple(sample_shape)
        dim = int(torch.tensor(sample_shape).prod())
        inputs = conditioning.generator_input_width(spec.latent_dim, num_classes)
        self.net = _stack([inputs, *spec.g_hidden, dim], nn.ReLU())
        self.image = len(sample_shape) == 3
        self.class_embed = conditioning.generator_embedding(num_classes, spec.latent_dim)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = self.net(conditioning.generator_input(z, self.class_embed, y))
        if self.image:  # images live in [-1, 1]
            x = torch.tanh(x)
        return x.view(z.shape[0], *self.sample_shape)


class Discriminator(nn.Module):
    def __init__(self, spec: ModelSpec, dim: int, num_classes: int | None = None):
        super().__init__()
        self.net = _stack([dim, *spec.d_hidden, 1], nn.LeakyReLU(0.2), sn=spec.spectral_norm)
        features = [dim, *spec.d_hidden][-1]  # what the last layer reads
        self.class_embed = conditioning.projection_embedding(num_classes, features, spec.spectral_norm)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return conditioning.judge(self.net, self.class_embed, x.flatten(1), y)
