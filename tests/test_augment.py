"""DiffAugment ops: what each does to the pixels, differentiability, and how a policy is checked."""

from __future__ import annotations

import typing

import pytest
import torch
from conftest import REPO

from distgan.core import augment
from distgan.errors import InputError
from distgan.spec.job import AugmentSpec, JobSpec, load_spec

ALL_OPS = [augment.brightness, augment.saturation, augment.contrast, augment.translation, augment.cutout]


def _images(n=16, c=3, size=16):
    torch.manual_seed(0)
    return torch.rand(n, c, size, size) + 1  # in [1, 2): no zeros, so zero fill shows


def _shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x[:, i + dy, j + dx] where that exists, else 0 (the reference for `translation`)."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[:, max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)] = x[
        :, max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)
    ]
    return out


@pytest.mark.parametrize(
    "op", ALL_OPS + [lambda x: augment.apply(x, list(augment.OPS))], ids=lambda f: getattr(f, "__name__", "all")
)
@pytest.mark.parametrize("channels", [1, 3])
def test_ops_keep_shape_and_pass_gradients_to_the_input(op, channels):
    x = _images(c=channels).requires_grad_()
    out = op(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    (grad,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)  # as R1 takes it
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    grad.square().sum().backward()  # twice differentiable: R1's penalty backpropagates through it
    assert torch.isfinite(x.grad).all()


def test_translation_shifts_each_image_by_up_to_an_eighth_with_zero_fill():
    x = _images(size=16)  # shifts of -2..2 px
    out = augment.translation(x)
    shifts = []
    for xi, oi in zip(x, out):
        match = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if torch.equal(oi, _shifted(xi, dy, dx))]
        assert len(match) == 1
        shifts.append(match[0])
    assert len(set(shifts)) > 1 and any(s != (0, 0) for s in shifts)
    assert not torch.equal(out, x)


def test_cutout_zeroes_one_square_of_half_the_side_at_most():
    x = _images(n=64, size=16)
    out = augment.cutout(x)
    zero = out == 0
    assert torch.equal(out[~zero], x[~zero])  # everything else untouched
    assert torch.equal(zero, zero[:, :1].expand_as(zero))  # the same pixels in every channel
    for mask in zero[:, 0]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert 1 <= len(rows) <= 8 and 1 <= len(cols) <= 8
        assert mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all() and mask.sum() == len(rows) * len(
            cols
        )  # one rectangle
    assert (zero[:, 0].sum((1, 2)) == 64).any()  # a whole 8x8 square when it lies inside


def test_color_ops_are_per_sample_and_keep_what_they_should():
    x = _images(n=32)
    delta = augment.brightness(x) - x  # one offset per image, in [-0.5, 0.5)
    offsets = delta.flatten(1)
    assert torch.allclose(offsets, offsets[:, :1].expand_as(offsets), atol=1e-6) and offsets.abs().max() <= 0.5
    assert offsets[:, 0].std() > 0.1
    gray = x.mean(1)
    torch.testing.assert_close(augment.saturation(x).mean(1), gray)  # moves colors toward/away from gray
    torch.testing.assert_close(augment.contrast(x).mean((1, 2, 3)), x.mean((1, 2, 3)))  # keeps each image's mean
    one_channel = x[:, :1]
    assert torch.equal(augment.saturation(one_channel), one_channel)


def test_empty_policy_is_the_identity_and_draws_nothing():
    x = _images()
    state = torch.get_rng_state()
    assert augment.apply(x, []) is x
    assert torch.equal(state, torch.get_rng_state())


def test_policies_are_checked():
    assert set(typing.get_args(typing.get_args(AugmentSpec.model_fields["policy"].annotation)[0])) == set(augment.OPS)
    with pytest.raises(ValueError, match="unknown augmentation 'flip'; expected one of color, translation, cutout"):
        augment.apply(_images(), ["color", "flip"])
    with pytest.raises(ValueError, match=r"augmentation is for images \[N, C, H, W\]; got a batch of shape \(4, 2\)"):
        augment.apply(torch.zeros(4, 2), ["color"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["data.name=digits", "augment.policy=[color, flip]"],
            "augment.policy.1: Input should be 'color', 'translation' or 'cutout' (got 'flip')",
        ),
        (["augment.policy=[translation]"], "augment.policy is for images; grid25 is 2-D points: use augment.policy=[]"),
    ],
)
def test_spec_refuses_bad_policies_in_one_line(overrides, message):
    with pytest.raises(InputError) as e:
        load_spec(REPO / "jobs" / "grid25.yaml", overrides)
    assert str(e.value) == f"{REPO / 'jobs' / 'grid25.yaml'}: {message}"


def test_spec_default_is_off():
    assert JobSpec().augment.policy == []
    assert load_spec(None, ["data.name=digits", "augment.policy=[color, translation, cutout]"]).augment.policy == [
        "color",
        "translation",
        "cutout",
    ]


def test_preflight_refuses_a_policy_on_vector_data(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distgan.commands import preflight

    pq.write_table(pa.table({"x": [[0.0, 1.0, 2.0]] * 8}), tmp_path / "v.parquet")
    data = {"name": "parquet", "path": str(tmp_path / "v.parquet"), "column": "x"}
    spec = JobSpec.model_validate({"data": data, "augment": {"policy": ["cutout"]}, "train": {"batch_size": 4}})
    with pytest.raises(InputError, match=r"augment.policy is for images; parquet samples have shape \(3,\)"):
        preflight.check_job(spec)
    spec.augment.policy = []
    assert preflight.check_job(spec).sample_shape == (3,)
