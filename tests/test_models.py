"""Model families: shapes for every supported size, spectral norm where asked, clear shape errors."""

from __future__ import annotations

import pytest
import torch

from distgan import models
from distgan.models import resnet
from distgan.spec.job import JobSpec, ModelSpec


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
        ((1, 30, 30), "this data is 30x30"),
        ((1, 16, 32), "this data is 16x32"),
        ((5, 16, 16), "5 channels"),
        ((2,), "needs images"),
    ],
)
def test_dcgan_refuses_shapes_it_cannot_make(shape, message):
    assert message in models.check_compatible(ModelSpec(arch="dcgan"), shape)
    assert models.check_compatible(ModelSpec(arch="mlp"), shape) is None


# --- every family at every size: s0 * 2^k px (distgan.models.sizes) ---

SPECS = {
    "mlp": ModelSpec(arch="mlp", latent_dim=8, g_hidden=[16], d_hidden=[16]),
    "dcgan": ModelSpec(arch="dcgan", latent_dim=8, base_channels=4),
    "resnet": ModelSpec(arch="resnet", latent_dim=8, base_channels=4),
}
CASES = [(arch, size) for arch in SPECS for size in (8, 16, 28, 32, 48, 64)] + [("resnet", 96)]


@pytest.mark.parametrize("arch, size", CASES)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_family_makes_judges_and_backpropagates(arch, size, channels):
    torch.manual_seed(0)
    spec = SPECS[arch]
    assert models.check_compatible(spec, (channels, size, size)) is None
    G, D = models.build(spec, (channels, size, size))
    x = G(torch.randn(3, 8))
    assert x.shape == (3, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0
    logits = D(torch.cat([x, torch.rand(3, channels, size, size) * 2 - 1]))
    assert logits.shape == (6,)
    logits.square().sum().backward()
    for name, p in [*G.named_parameters(), *D.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("shape", [(1, 30, 30), (3, 300, 300), (1, 6, 6), (1, 512, 512)])
@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_unsupported_sizes_list_the_sizes_that_exist(arch, shape):
    message = models.check_compatible(ModelSpec(arch=arch), shape)
    listing = "8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256 px"
    assert f"model.arch={arch} makes square images of {listing}" in message
    assert f"this data is {shape[1]}x{shape[2]}: resize it" in message and "\n" not in message


def _dcgan_parameters(extra_layers: int, size: int) -> int:
    spec = ModelSpec(arch="dcgan", latent_dim=8, base_channels=8, extra_layers=extra_layers)
    return sum(p.numel() for net in models.build(spec, (3, size, size)) for p in net.parameters())


def test_dcgan_8_to_64_px_keeps_its_classic_nets():
    # Parameter counts of the 4x4-start DCGAN before sizes were generalized (3 channels, base 8, latent 8).
    counts = _dcgan_parameters
    assert [counts(0, s) for s in (8, 16, 32, 64)] == [1948, 7244, 26028, 96364]
    assert [counts(1, s) for s in (8, 16, 32, 64)] == [11564, 48876, 193132, 398316]


@pytest.mark.parametrize("size, start", [(28, 7), (48, 6), (40, 5), (32, 4), (256, 4)])
def test_dcgan_starts_from_the_s0_map(size, start):
    G, D = models.build(ModelSpec(arch="dcgan", base_channels=4), (1, size, size))
    assert G.net[0].kernel_size == (start, start) and D.net[-1].kernel_size == (start, start)


def test_resnet_blocks_start_as_identity_without_normalization():
    spec = ModelSpec(arch="resnet", latent_dim=8, base_channels=4, blocks_per_stage=2)
    G, D = models.build(spec, (3, 32, 32))  # stages at 4, 8, 16, 32 px
    for net in (G, D):
        blocks = [m for m in net.modules() if isinstance(m, resnet.ResidualBlock)]
        assert len(blocks) == 2 * 4
        x = torch.randn(2, blocks[0].conv1.in_channels, 5, 5)
        assert torch.equal(blocks[0](x), x)
        norms = (torch.nn.BatchNorm2d, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.InstanceNorm2d)
        assert not any(isinstance(m, norms) for m in net.modules())
        assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in net.modules())  # resampling by interpolation
    widths = [m.conv1.in_channels for m in G.modules() if isinstance(m, resnet.ResidualBlock)]
    assert widths == [32, 32, 16, 16, 8, 8, 4, 4]  # base next to the image, doubling per halving, at most 8x


def test_resnet_residual_branches_are_scaled_by_depth():
    # Fix-up: the first conv of each branch is He-initialized and scaled by L^-1/2 (L = blocks in the net).
    torch.manual_seed(0)
    G, _ = models.build(ModelSpec(arch="resnet", base_channels=64, blocks_per_stage=4), (3, 8, 8))  # 2 stages, L = 8
    conv1 = next(m for m in G.modules() if isinstance(m, resnet.ResidualBlock)).conv1
    he_std = (2 / (1 + resnet.SLOPE**2) / (conv1.in_channels * 9)) ** 0.5
    assert conv1.weight.std().item() == pytest.approx(he_std / 8**0.5, rel=0.02)


def test_resnet_refuses_spectral_norm_and_point_data():
    with pytest.raises(ValueError, match="model.spectral_norm is for mlp/dcgan"):
        ModelSpec(arch="resnet", spectral_norm=True)
    with pytest.raises(ValueError, match="model.arch=resnet makes images; ring8 is 2-D points"):
        JobSpec.model_validate({"data": {"name": "ring8"}, "model": {"arch": "resnet"}})


# --- class conditioning (model.conditional): a class-embedded G and a projection D ---

VECTOR_AND_IMAGE_SHAPES = [("mlp", (5,))] + [
    (arch, (channels, size, size)) for arch in SPECS for size in (8, 28, 32) for channels in (1, 3)
]


@pytest.mark.parametrize("arch, shape", VECTOR_AND_IMAGE_SHAPES)
@pytest.mark.parametrize("conditional", [False, True])
def test_every_family_conditional_or_not_makes_judges_and_backpropagates(arch, shape, conditional):
    torch.manual_seed(0)
    spec = SPECS[arch].model_copy(update={"conditional": conditional})
    G, D = models.build(spec, shape, num_classes=10)
    y = torch.tensor([0, 3, 9]) if conditional else None
    args = (y,) if conditional else ()
    x = G(torch.randn(3, 8), *args)
    assert x.shape == (3, *shape) and x.std() > 0
    logits = D(torch.cat([x, torch.rand(3, *shape) * 2 - 1]), *((y.repeat(2),) if conditional else ()))
    assert logits.shape == (6,)
    logits.square().sum().backward()
    for name, p in [*G.named_parameters(), *D.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    embeddings = [n for n, _ in [*G.named_parameters(), *D.named_parameters()] if "class_embed" in n]
    assert len(embeddings) == (2 if conditional else 0)


@pytest.mark.parametrize("arch", list(SPECS))
def test_the_class_changes_the_sample_and_the_judgement(arch):
    torch.manual_seed(0)
    spec = SPECS[arch].model_copy(update={"conditional": True})
    G, D = models.build(spec, (1, 8, 8), num_classes=10)
    with torch.no_grad():  # a trained-looking projection: the untrained D's embedding is small but not zero
        z = torch.randn(1, 8).repeat(2, 1)
        a, b = G(z, torch.tensor([1, 2]))
        assert not torch.allclose(a, b)
        x = torch.rand(1, 1, 8, 8).repeat(2, 1, 1, 1)
        d1, d2 = D(x, torch.tensor([1, 2]))
        assert d1 != d2
    with pytest.raises(ValueError, match="class-conditional: pass class ids"):
        G(z)


@pytest.mark.parametrize("arch", list(SPECS))
def test_projection_d_is_the_plain_head_plus_the_class_inner_product(arch):
    torch.manual_seed(0)
    spec = SPECS[arch].model_copy(update={"conditional": True})
    _, D = models.build(spec, (1, 8, 8), num_classes=10)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 9])
    with torch.no_grad():
        body = x.flatten(1) if arch == "mlp" else x
        phi = D.net[:-1](body)
        expected = D.net[-1](phi).flatten() + (D.class_embed.weight[y] * phi.flatten(1)).sum(1)
        assert torch.allclose(D(x, y), expected, atol=1e-6)


# Sums of G's and D's outputs and the parameter count of unconditional nets for a seed, computed with
# the code from before class conditioning existed: checkpoints and seeded runs depend on them.
BEFORE_CONDITIONING = {
    "mlp": ((1, 8, 8), -2.3871204252, -0.4971393272, 2289),
    "dcgan": ((3, 28, 28), -792.0025239064, -0.0513117146, 4976),
    "resnet": ((3, 32, 32), -1356.3255543965, 1.0575900599, 55780),
}


@pytest.mark.parametrize("arch", list(BEFORE_CONDITIONING))
def test_unconditional_nets_are_the_nets_from_before_conditioning(arch):
    shape, g_sum, d_sum, count = BEFORE_CONDITIONING[arch]
    torch.manual_seed(0)
    G, D = models.build(SPECS[arch], shape, num_classes=10)  # ignored without model.conditional
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = G(z)
        d = D(x)
    assert x.double().sum().item() == pytest.approx(g_sum, abs=1e-6)
    assert d.double().sum().item() == pytest.approx(d_sum, abs=1e-6)
    assert sum(p.numel() for p in [*G.parameters(), *D.parameters()]) == count


def test_unconditional_nets_are_unchanged_by_the_conditional_option():
    spec = ModelSpec(arch="dcgan", latent_dim=8, base_channels=8)
    torch.manual_seed(0)
    G, D = models.build(spec, (1, 8, 8), num_classes=10)  # num_classes is ignored without model.conditional
    assert not any("class_embed" in n for n, _ in [*G.named_parameters(), *D.named_parameters()])
    torch.manual_seed(0)
    G0, D0 = models.build(spec, (1, 8, 8))
    z = torch.randn(2, 8)
    assert torch.equal(G(z), G0(z)) and torch.equal(D(G(z)), D0(G0(z)))
    with pytest.raises(ValueError, match="needs the number of classes"):
        models.build(spec.model_copy(update={"conditional": True}), (1, 8, 8))
