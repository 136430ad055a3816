"""Generator/discriminator families. `build` is the one entry point the loop uses."""

from __future__ import annotations

import torch.nn as nn

from distgan.models import dcgan, mlp, resnet, sizes
from distgan.spec.job import ModelSpec

CONV_FAMILIES = {"dcgan": dcgan, "resnet": resnet}  # image-only: sizes from `distgan.models.sizes`


def build(spec: ModelSpec, sample_shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    """(G, D) for data whose samples have `sample_shape`: (dim,) for vectors, (C, H, W) for images."""
    if spec.arch == "mlp":
        dim = 1
        for s in sample_shape:
            dim *= s
        return mlp.Generator(spec, sample_shape), mlp.Discriminator(spec, dim)
    family = CONV_FAMILIES[spec.arch]
    return family.Generator(spec, sample_shape), family.Discriminator(spec, sample_shape)


def check_compatible(spec: ModelSpec, sample_shape: tuple[int, ...]) -> str | None:
    """Why this architecture cannot make samples of this shape, or None when it can."""
    if spec.arch in CONV_FAMILIES:
        return sizes.shape_problem(spec.arch, sample_shape)
    return None
