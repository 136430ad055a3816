"""Loss values checked against hand-computed numbers."""

import math

import pytest
import torch

from distgan.core.losses import (
    G_NEEDS_REAL,
    LOSS_TYPES,
    critic_gap,
    d_accuracy,
    d_loss,
    g_loss,
    gradient_penalty,
    input_gradient_penalty,
)

R = [0.0, 2.0]
F_ = [-1.0, 0.5]


def sp(x):  # softplus
    return math.log(1 + math.exp(x))


def mean(xs):
    return sum(xs) / len(xs)


def t(xs, shape=None):
    x = torch.tensor(xs, dtype=torch.float64)
    return x.reshape(shape) if shape else x


EXPECTED_D = {
    "minimax": mean([sp(-r) for r in R]) + mean([sp(f) for f in F_]),
    "nonsaturating": mean([sp(-r) for r in R]) + mean([sp(f) for f in F_]),
    # relu(1-0)=1, relu(1-2)=0 ; relu(1-1)=0, relu(1.5)=1.5
    "hinge": 0.5 + 0.75,
    "wgan_gp": mean(F_) - mean(R),  # -0.25 - 1.0
    # 0.5*mean(1, 1) + 0.5*mean(1, 0.25)
    "lsgan": 0.5 * 1.0 + 0.5 * 0.625,
    # pairs (0, -1) and (2, 0.5): r - f = 1, 1.5
    "rpgan": mean([sp(-1.0), sp(-1.5)]),
}

EXPECTED_G = {
    "minimax": -mean([sp(f) for f in F_]),
    "nonsaturating": mean([sp(-f) for f in F_]),
    "hinge": 0.25,
    "wgan_gp": 0.25,
    # 0.5*mean(4, 0.25)
    "lsgan": 0.5 * 2.125,
    # f - r = -1, -1.5
    "rpgan": mean([sp(1.0), sp(1.5)]),
}


def test_loss_types_covered():
    assert set(EXPECTED_D) == set(LOSS_TYPES) == set(EXPECTED_G)


@pytest.mark.parametrize("kind", LOSS_TYPES)
@pytest.mark.parametrize("shape", [None, (2, 1)])
def test_d_loss(kind, shape):
    out = d_loss(kind, t(R, shape), t(F_, shape))
    assert out.dim() == 0
    assert out.item() == pytest.approx(EXPECTED_D[kind], rel=1e-12)


@pytest.mark.parametrize("kind", LOSS_TYPES)
@pytest.mark.parametrize("shape", [None, (2, 1)])
def test_g_loss(kind, shape):
    out = g_loss(kind, t(F_, shape), t(R, shape))  # kinds outside G_NEEDS_REAL ignore the real logits
    assert out.dim() == 0
    assert out.item() == pytest.approx(EXPECTED_G[kind], rel=1e-12)


def test_hand_values_spelled_out():
    # A few of the constants above written in full, as a check on the table.
    assert EXPECTED_D["minimax"] == pytest.approx(
        0.5 * (math.log(2) + math.log(1 + math.exp(-2)))
        + 0.5 * (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(0.5)))
    )
    assert EXPECTED_G["nonsaturating"] == pytest.approx(0.5 * (math.log(1 + math.e) + math.log(1 + math.exp(-0.5))))


def test_only_paired_losses_need_real_logits():
    assert G_NEEDS_REAL == {"rpgan"}
    with pytest.raises(ValueError, match="'rpgan' generator loss needs D's logits on real data"):
        g_loss("rpgan", t(F_))
    for kind in set(LOSS_TYPES) - G_NEEDS_REAL:
        assert g_loss(kind, t(F_)).item() == pytest.approx(EXPECTED_G[kind], rel=1e-12)


def test_rpgan_is_relativistic():
    # Shifting all logits by a constant changes nothing; the pairing is by index.
    for shift in (-3.0, 10.0):
        assert d_loss("rpgan", t(R) + shift, t(F_) + shift).item() == pytest.approx(EXPECTED_D["rpgan"], rel=1e-12)
        assert g_loss("rpgan", t(F_) + shift, t(R) + shift).item() == pytest.approx(EXPECTED_G["rpgan"], rel=1e-12)
    swapped = d_loss("rpgan", t(R[::-1]), t(F_)).item()  # pairs (2, -1), (0, 0.5): r - f = 3, -0.5
    assert swapped == pytest.approx(mean([sp(-3.0), sp(0.5)]), rel=1e-12)


def test_softplus_stable_for_large_logits():
    big = t([100.0, -100.0])
    assert torch.isfinite(d_loss("minimax", big, -big))
    assert g_loss("nonsaturating", t([100.0])).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("fn", [lambda k: d_loss(k, t(R), t(F_)), lambda k: g_loss(k, t(F_))])
def test_unknown_kind(fn):
    with pytest.raises(ValueError, match="bogus") as err:
        fn("bogus")
    for kind in LOSS_TYPES:
        assert kind in str(err.value)


W = [1.0, -2.0, 0.5]  # ||w||^2 = 5.25


def test_r1_linear_discriminator():
    w = t(W)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert input_gradient_penalty(x @ w, x).item() == pytest.approx(5.25)


def test_r1_linear_discriminator_column_logits():
    w = t(W).reshape(3, 1)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert input_gradient_penalty(x @ w, x).item() == pytest.approx(5.25)


def test_r1_quadratic_discriminator():
    # logits_i = sum_j x_ij^2 -> grad 2 x_i -> mean_i 4 ||x_i||^2
    x = t([[1.0, 2.0], [0.0, -3.0]]).requires_grad_()
    logits = (x**2).sum(dim=1)
    expected = mean([4 * (1 + 4), 4 * 9])  # 28
    assert input_gradient_penalty(logits, x).item() == pytest.approx(expected)


def test_r1_image_shaped_inputs():
    # Norm is over all non-batch dims.
    x = t([[[[1.0, 2.0]]], [[[3.0, 0.0]]]]).requires_grad_()  # [2,1,1,2]
    logits = (x**2).sum(dim=(1, 2, 3))
    assert input_gradient_penalty(logits, x).item() == pytest.approx(mean([4 * 5, 4 * 9]))


def test_wgan_gp_linear():
    w = t([2.0, 1.0, 2.0])  # ||w|| = 3
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert gradient_penalty(x @ w, x).item() == pytest.approx(4.0)


def test_wgan_gp_quadratic():
    # grad 2x: norms 2*sqrt(5) and 2*3 -> mean((2 sqrt5 - 1)^2, 25)
    x = t([[1.0, 2.0], [0.0, -3.0]]).requires_grad_()
    expected = mean([(2 * math.sqrt(5) - 1) ** 2, 25.0])
    assert gradient_penalty((x**2).sum(dim=1), x).item() == pytest.approx(expected)


def test_r1_differentiable_wrt_parameter():
    w = t(W).requires_grad_()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    pen = input_gradient_penalty(x @ w, x)  # = ||w||^2
    pen.backward()
    assert w.grad.tolist() == pytest.approx([2 * v for v in W])


def test_wgan_gp_differentiable_wrt_parameter():
    # penalty = (||w|| - 1)^2 -> d/dw = 2 (||w|| - 1) w / ||w|| = (4/3) w for ||w|| = 3
    w0 = [2.0, 1.0, 2.0]
    w = t(w0).requires_grad_()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    gradient_penalty(x @ w, x).backward()
    assert w.grad.tolist() == pytest.approx([4 / 3 * v for v in w0])


def test_penalty_works_with_module():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 1, bias=True).double()
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    pen = input_gradient_penalty(lin(x), x)
    pen.backward()
    w = lin.weight.detach().reshape(-1)
    assert pen.item() == pytest.approx((w**2).sum().item())
    assert lin.weight.grad.reshape(-1).tolist() == pytest.approx((2 * w).tolist())
    # The bias does not enter dD/dx, so the penalty leaves it untouched.
    assert lin.bias.grad is None or lin.bias.grad.abs().item() == 0.0


# real > 0: all three; fake < 0: two of three. Against lsgan's 0.5: one real, two fakes.
R_ACC, F_ACC = [0.3, 0.2, 2.0], [-1.0, -0.5, 0.7]
EXPECTED_ACCURACY = {
    "minimax": 5 / 6,
    "nonsaturating": 5 / 6,
    "hinge": 5 / 6,
    "lsgan": 3 / 6,
    "wgan_gp": None,
    "rpgan": 3 / 3,
}


def test_accuracy_types_covered():
    assert set(EXPECTED_ACCURACY) == set(LOSS_TYPES)


@pytest.mark.parametrize("kind", LOSS_TYPES)
def test_d_accuracy_uses_each_loss_decision_boundary(kind):
    out = d_accuracy(kind, t(R_ACC, (3, 1)), t(F_ACC))
    if EXPECTED_ACCURACY[kind] is None:
        assert out is None
    else:
        assert out.dim() == 0 and out.item() == pytest.approx(EXPECTED_ACCURACY[kind])


def test_critic_gap_is_the_difference_of_mean_scores():
    assert critic_gap(t(R_ACC), t(F_ACC, (3, 1))).item() == pytest.approx(2.5 / 3 + 0.8 / 3)
