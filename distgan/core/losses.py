"""Adversarial losses and gradient regularizers.

Convention: every function takes raw discriminator outputs (logits, shape [N]
or [N, 1]; they are flattened) and returns a scalar to be *minimized* -- the
discriminator loss by D's optimizer, the generator loss by G's. Means are over
the batch. Regularizer weights (gamma/2 for R1/R2, lambda for WGAN-GP) are
applied by the caller, not here. Relativistic losses (rpgan) pair the i-th real
with the i-th fake, so their G loss needs D's logits on real data too
(`G_NEEDS_REAL`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOSS_TYPES = ("minimax", "nonsaturating", "hinge", "wgan_gp", "lsgan", "rpgan")


def _flat(x: Tensor) -> Tensor:
    return x.reshape(-1)


# softplus(-x) = -log(sigmoid(x)) and softplus(x) = -log(1 - sigmoid(x)),
# written this way for numerical stability at large |x|.
def _d_logistic(r: Tensor, f: Tensor) -> Tensor:
    return F.softplus(-r).mean() + F.softplus(f).mean()


_D_LOSSES = {
    "minimax": _d_logistic,
    "nonsaturating": _d_logistic,
    "hinge": lambda r, f: F.relu(1 - r).mean() + F.relu(1 + f).mean(),
    "wgan_gp": lambda r, f: f.mean() - r.mean(),
    "lsgan": lambda r, f: 0.5 * ((r - 1) ** 2).mean() + 0.5 * (f**2).mean(),
    # Relativistic pairing (Jolicoeur-Martineau 2019; R3GAN, Huang et al. 2025): D scores how much
    # more real each real looks than its paired fake, which avoids mode dropping of the plain logistic loss.
    "rpgan": lambda r, f: F.softplus(-(r - f)).mean(),
}

_G_LOSSES = {
    # G minimizes log(1 - sigmoid(f)) = -softplus(f); saturates when D wins.
    "minimax": lambda f: -F.softplus(f).mean(),
    # G minimizes -log(sigmoid(f)): same fixed point, strong early gradients.
    "nonsaturating": lambda f: F.softplus(-f).mean(),
    "hinge": lambda f: -f.mean(),
    "wgan_gp": lambda f: -f.mean(),
    "lsgan": lambda f: 0.5 * ((f - 1) ** 2).mean(),
}

# G losses of (real logits, fake logits): G's loss depends on how D scores real data.
_G_LOSSES_PAIRED = {
    "rpgan": lambda r, f: F.softplus(-(f - r)).mean(),
}
G_NEEDS_REAL = frozenset(_G_LOSSES_PAIRED)


def _check(kind: str) -> None:
    if kind not in LOSS_TYPES:
        raise ValueError(f"unknown loss kind {kind!r}; expected one of {LOSS_TYPES}")


def d_loss(kind: str, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator loss (scalar) for ``kind``."""
    _check(kind)
    return _D_LOSSES[kind](_flat(real_logits), _flat(fake_logits))


def g_loss(kind: str, fake_logits: Tensor, real_logits: Tensor | None = None) -> Tensor:
    """Generator loss (scalar) for ``kind``. ``real_logits`` (same size as ``fake_logits``) is needed
    by the kinds in ``G_NEEDS_REAL`` and ignored by the others."""
    _check(kind)
    if kind not in G_NEEDS_REAL:
        return _G_LOSSES[kind](_flat(fake_logits))
    if real_logits is None:
        raise ValueError(f"the {kind!r} generator loss needs D's logits on real data (real_logits)")
    return _G_LOSSES_PAIRED[kind](_flat(real_logits), _flat(fake_logits))


def _input_grad(logits: Tensor, inputs: Tensor, scale: Tensor | None = None) -> Tensor:
    # Summing the logits gives each sample's gradient w.r.t. its own input,
    # since samples do not interact in D. create_graph keeps the penalty
    # differentiable w.r.t. D's parameters.
    if scale is None:
        (grad,) = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    else:
        # fp16 autocast (the AMP docs' gradient-penalty recipe): differentiate the GradScaler-scaled
        # output, so the fp16 backward through D does not underflow, then unscale (out of place).
        (grad,) = torch.autograd.grad(logits.sum() * scale, inputs, create_graph=True)
        grad = grad / scale
    return grad.reshape(grad.shape[0], -1)


def input_gradient_penalty(logits: Tensor, inputs: Tensor, scale: Tensor | None = None) -> Tensor:
    """Mean over the batch of ||dD/dx||^2 (R1 on real inputs, R2 on fakes).

    ``inputs`` must require grad and ``logits`` must be computed from it.
    The caller multiplies by gamma / 2. ``scale``: the GradScaler's loss scale under fp16 (or None).
    """
    return _input_grad(logits, inputs, scale).pow(2).sum(dim=1).mean()


def gradient_penalty(logits: Tensor, interpolates: Tensor, scale: Tensor | None = None) -> Tensor:
    """WGAN-GP: mean over the batch of (||dD/dx||_2 - 1)^2 at ``interpolates``."""
    return (_input_grad(logits, interpolates, scale).norm(2, dim=1) - 1).pow(2).mean()


# D's decisions, per loss: which real and fake logits count as classified right. A bounded number
# (the fraction right) says "D wins outright" the same way for every loss whose D is a classifier,
# where the loss values themselves are on different scales. The critic of wgan_gp has no decision
# boundary (its scores mean something only as differences): no entry, no accuracy.
_DECISIONS = {
    "minimax": lambda r, f: (r > 0, f < 0),
    "nonsaturating": lambda r, f: (r > 0, f < 0),
    "hinge": lambda r, f: (r > 0, f < 0),
    "lsgan": lambda r, f: (r > 0.5, f < 0.5),  # targets 1 (real) and 0 (fake)
    "rpgan": lambda r, f: (r - f > 0,),  # relativistic: a logistic decision on each pair's gap
}


def d_accuracy(kind: str, real_logits: Tensor, fake_logits: Tensor) -> Tensor | None:
    """Fraction of D's decisions that are right, over real and fake samples; None for losses whose
    D does not classify (wgan_gp). 1.0 sustained: D wins outright."""
    _check(kind)
    if kind not in _DECISIONS:
        return None
    right = _DECISIONS[kind](_flat(real_logits), _flat(fake_logits))
    return torch.cat(right).float().mean()


def critic_gap(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """mean(D(real)) - mean(D(fake)), for every loss; for wgan_gp the critic's estimate of the
    Wasserstein-1 distance (it keeps growing when the critic runs away from G)."""
    return _flat(real_logits).mean() - _flat(fake_logits).mean()
