"""Class conditioning shared by the families (`model.conditional`): how G reads a class and how D
judges one. Unconditional nets have none of these layers, so they stay as they were.

- G: a learned class embedding concatenated to z (cGAN, Mirza & Osindero 2014, with an embedding
  in place of the one-hot code; R3GAN conditions its G the same way), `latent_dim` wide and drawn
  N(0, 1) like z, so both halves of G's input start on one scale.
- D: the projection discriminator (Miyato & Koyama 2018), D(x, y) = head(phi(x)) + <embed(y), phi(x)>,
  phi(x) the input of D's last layer, flattened. The embedding starts at the scale of a default
  linear head (std 1/sqrt(dim)), and is spectral-normalized when D's layers are.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def generator_input_width(latent_dim: int, num_classes: int | None) -> int:
    """z, and its class embedding (as wide) when conditional."""
    return latent_dim * (2 if num_classes else 1)


def generator_embedding(num_classes: int | None, latent_dim: int) -> nn.Embedding | None:
    return None if num_classes is None else nn.Embedding(num_classes, latent_dim)


def generator_input(z: torch.Tensor, embedding: nn.Embedding | None, y: torch.Tensor | None) -> torch.Tensor:
    """What G's first layer reads: z, or cat(z, embed(y)) for a conditional G."""
    if embedding is None:
        return z
    if y is None:
        raise ValueError("this generator is class-conditional: pass class ids, G(z, y)")
    return torch.cat([z, embedding(y)], 1)


def projection_embedding(num_classes: int | None, feature_dim: int, sn: bool) -> nn.Module | None:
    if num_classes is None:
        return None
    embedding = nn.Embedding(num_classes, feature_dim)
    nn.init.normal_(embedding.weight, std=feature_dim**-0.5)
    return spectral_norm(embedding) if sn else embedding


def judge(net: nn.Sequential, embedding: nn.Module | None, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """D's [N] logits: `net(x)`, or for a conditional D the projection on the input of net's last layer."""
    if embedding is None:
        return net(x).flatten()
    return project(net[:-1](x), net[-1], embedding, y)


def project(features: torch.Tensor, head: nn.Module, embedding: nn.Module, y: torch.Tensor | None) -> torch.Tensor:
    """[N] logits of a projection D from phi(x) (`features`, any shape [N, ...]) and class ids `y`."""
    if y is None:
        raise ValueError("this discriminator is class-conditional: pass class ids, D(x, y)")
    return head(features).flatten() + (embedding(y) * features.flatten(1)).sum(1)
