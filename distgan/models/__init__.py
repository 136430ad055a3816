"""Generator/discriminator families. `build` is the one entry point the loop uses."""

from __future__ import annotations

import torch.nn as nn

from distgan.models import dcgan, mlp, resnet, sizes
from distgan.spec.job import ModelSpec

CONV_FAMILIES = {"dcgan": dcgan, "resnet": resnet}  # image-only: sizes from `distgan.models.sizes`


def build(
    spec: ModelSpec, sample_shape: tuple[int, ...], num_classes: int | None = None
) -> tuple[nn.Module, nn.Module]:
    """(G, D) for data whose samples have `sample_shape`: (dim,) for vectors, (C, H, W) for images.
    With `model.conditional`, for `num_classes` classes: G(z, y) and D(x, y), y int64 class ids."""
    if spec.conditional and not num_classes:
        raise ValueError("model.conditional needs the number of classes (labeled data)")
    classes = num_classes if spec.conditional else None
    if spec.arch == "mlp":
        dim = 1
        for s in sample_shape:
            dim *= s
        return mlp.Generator(spec, sample_shape, classes), mlp.Discriminator(spec, dim, classes)
    family = CONV_FAMILIES[spec.arch]
    return family.Generator(spec, sample_shape, classes), family.Discriminator(spec, sample_shape, classes)


def check_compatible(spec: ModelSpec, sample_shape: tuple[int, ...]) -> str | None:
    """Why this architecture cannot make samples of this shape, or None when it can."""
    if spec.arch in CONV_FAMILIES:
        return sizes.shape_problem(spec.arch, sample_shape)
    return None
