"""Model families: shapes for every supported size, spectral norm where asked, clear shape errors."""

from __future__ import annotations

import pytest
import torch

from distgan import models
from distgan.config import ModelSpec


@pytest.mark.parametrize("size", [8, 16, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("extra_layers", [0, 2])
def test_dcgan_makes_and_judges_every_size(size, channels, extra_layers):
    spec = ModelSpec(arch="dcgan", latent_dim=8, base_channels=8, extra_layers=extra_layers)
    G, D = models.build(spec, (channels, size, size))
    x = G(torch.randn(3, 8))
    assert x.shape == (3, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1
    assert D(x).shape == (3,)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in G.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())


def test_extra_layers_add_depth_at_every_resolution():
    convs = lambda m: [c for c in m.modules() if isinstance(c, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]  # noqa: E731
    plain = models.build(ModelSpec(arch="dcgan", base_channels=8), (1, 8, 8))
    deep = models.build(ModelSpec(arch="dcgan", base_channels=8, extra_layers=1), (1, 8, 8))
    assert [len(convs(m)) for m in plain] == [2, 2]  # classic DCGAN at 8 px: one upsampling, one downsampling
    # + a 3x3 block at 4x4 and a feature map at 8x8 (G: upsample to features, 3x3 conv to pixels; D mirrored)
    assert [len(convs(m)) for m in deep] == [4, 4]
    assert [c.kernel_size for c in convs(deep[0])] == [(4, 4), (3, 3), (4, 4), (3, 3)]
    assert convs(deep[1])[0].kernel_size == (3, 3) and convs(deep[1])[0].out_channels == 8


def test_spectral_norm_only_when_asked():
    shape = (1, 16, 16)
    plain = models.build(ModelSpec(arch="dcgan", base_channels=8), shape)[1]
    sn = models.build(ModelSpec(arch="dcgan", base_channels=8, spectral_norm=True), shape)[1]
    has_sn = lambda m: any("parametrizations" in n for n, _ in m.named_parameters())  # noqa: E731
    assert not has_sn(plain) and has_sn(sn)
    assert has_sn(models.build(ModelSpec(spectral_norm=True), (2,))[1])


def test_mlp_sizes_follow_the_spec_and_images_reshape():
    G, D = models.build(ModelSpec(latent_dim=3, g_hidden=[7, 5], d_hidden=[11]), (2,))
    widths = [m.out_features for m in G.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [7, 5, 2]
    assert [m.out_features for m in D.modules() if isinstance(m, torch.nn.Linear)] == [11, 1]
    G, D = models.build(ModelSpec(latent_dim=3), (1, 8, 8))
    x = G(torch.randn(4, 3))
    assert x.shape == (4, 1, 8, 8) and D(x).shape == (4,)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 28, 28), "this data is 28x28"),
        ((1, 16, 32), "this data is 16x32"),
        ((5, 16, 16), "5 channels"),
        ((2,), "needs images"),
    ],
)
def test_dcgan_refuses_shapes_it_cannot_make(shape, message):
    assert message in models.check_compatible(ModelSpec(arch="dcgan"), shape)
    assert models.check_compatible(ModelSpec(arch="mlp"), shape) is None
