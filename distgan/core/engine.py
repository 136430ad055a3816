"""One adversarial step, the EMA generator and sampling: pure PyTorch, no Ray.

The loss (what is optimized) lives in `distgan.core.losses`; this module only runs it. G and D may be
wrapped in DistributedDataParallel; the step order below is the one that is correct under DDP:

1. D step(s): G makes a batch without grad; ONE D forward over cat(real, fake[, interpolates]) so
   each DDP iteration has exactly one forward/backward, penalties included; `opt_d.step()`.
2. G step: all of D frozen (`requires_grad_(False)`: DDP then skips D's all-reduce), a fresh
   `D(G(z))`, `opt_g.step()`. Reusing the D-step forward after `opt_d.step()` would fail with an
   in-place error under autograd, and freezing only part of D breaks DDP. Losses whose G loss
   needs D's logits on real data (rpgan) get them from one D forward over
   cat(real, fake): one D call per iteration, as in the D step, so DDP's per-forward work (buffer
   broadcast, reducer setup) and spectral norm's power iteration happen once, not twice.

With an `augment_policy` (DiffAugment), every batch D sees -- in both steps, real and fake -- goes through
`distgan.core.augment.apply` first. R1/R2 and WGAN-GP are gradients w.r.t. the un-augmented inputs,
taken through the augmentation, as DiffAugment's StyleGAN2 code does (R1 w.r.t. `reals`): the
penalty then smooths D on the data itself, and the ops are differentiable, so this is exact.

Class-conditional models (`labels` given to `step`): G(z, y) and D(x, y). The fakes of a step get the
labels of that step's real batch, in the D step and in the G step, so the classes G is trained on
keep the data's class balance and every real sample has a fake of its class beside it (rpgan's pairs,
WGAN-GP's interpolates). Augmentation and R1/R2/GP act on the images alone; the labels pass unchanged.

Precision (`precision`): fp32; bf16 autocast; or fp16 autocast with one `torch.amp.GradScaler` per
optimizer (D steps `n_critic` times per G step, and a scaler allows one `step` per optimizer between
`update`s). Under fp16 the R1/R2/GP input gradients are taken of the *scaled* logits and unscaled before
the penalty (the AMP docs' gradient-penalty recipe), so they do not underflow in fp16; a step whose
gradients overflow is skipped by the scaler, and its gradient statistics read 0 (`amp_skipped_*` says how
often). On CUDA the optimizers are fused Adam (which also unscales and skips inside its kernel, without a
host sync); nothing in a step reads a value on the host.

`compile=True` runs G and D under `torch.compile` (not the whole step: DDP, two optimizers and the double
backward of R1 are fragile there). D is left eager when a penalty needs its double backward (AOTAutograd has
none). Where compiling fails, the first step says so in one warning and the engine goes on eager.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn

from distgan.core import augment, losses
from distgan.spec.job import LossSpec, OptimSpec

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# optim.lr_schedule: the factor on the spec's learning rates at fraction f in [0, 1] of the run.
LR_SCHEDULES = {
    "constant": lambda f: 1.0,
    "cosine": lambda f: 0.5 * (1 + math.cos(math.pi * f)),
    "linear": lambda f: 1.0 - f,
}


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """The schedule's factor for generator step `step` (1-based) of `steps`."""
    return LR_SCHEDULES[schedule](min(max(step - 1, 0) / steps, 1.0))


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside DDP and `torch.compile` wrappers (or the model itself)."""
    while True:
        inner = getattr(module, "_orig_mod", None)  # torch.compile's OptimizedModule
        if inner is None:
            inner = getattr(module, "module", None)  # DistributedDataParallel
        if not isinstance(inner, nn.Module):
            return module
        module = inner


def to_channels_last(*modules: nn.Module) -> None:
    """Conv weights in NHWC (channels_last) order, in place: tensor-core convolutions on a GPU read them
    without a transpose. Call before DDP wraps the models (its gradient buckets follow the params' strides)."""
    for m in modules:
        m.to(memory_format=torch.channels_last)


def _grad_norm(params) -> torch.Tensor:
    """The 2-norm of all gradients, a device tensor (the value `clip_grad_norm_(params, inf)` returned,
    without its pass that multiplies every gradient by 1)."""
    return nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])


class Engine:
    def __init__(
        self,
        G: nn.Module,
        D: nn.Module,
        loss: LossSpec,
        optim: OptimSpec,
        latent_dim: int,
        device: torch.device,
        bf16: bool = False,
        augment_policy: Sequence[str] = (),
        precision: str | None = None,
        compile: bool = False,
    ):
        """`precision`: fp32 | bf16 | fp16 (None: bf16 when `bf16`, else fp32)."""
        self.G, self.D = G, D
        self.augment_policy = tuple(augment_policy)
        self.loss, self.n_critic, self.ema_decay = loss, optim.n_critic, optim.ema
        self.latent_dim, self.device = latent_dim, device
        self.precision = precision or ("bf16" if bf16 else "fp32")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}: expected one of {PRECISIONS}")
        # Fused Adam on CUDA: one kernel for all parameters, and it honours a GradScaler without a host sync.
        fused = {"fused": True} if device.type == "cuda" else {}
        self.opt_g = torch.optim.Adam(G.parameters(), lr=optim.lr_g, betas=optim.betas_g, **fused)
        self.opt_d = torch.optim.Adam(D.parameters(), lr=optim.lr_d, betas=optim.betas_d, **fused)
        self.scaler_d = self.scaler_g = None
        if self.precision == "fp16":
            self.scaler_d, self.scaler_g = torch.amp.GradScaler(device.type), torch.amp.GradScaler(device.type)
        self.G_ema = copy.deepcopy(unwrap(G)).eval().requires_grad_(False)
        self.ema_updates = 0  # also the count of G steps, which places the lazy R1/R2 steps
        self._penalties: dict[str, torch.Tensor] = {}  # R1/R2 as last measured (loss.reg_every > 1)
        self._eager: tuple[nn.Module, nn.Module] | None = None
        if compile:
            self._eager = (G, D)
            self.G = torch.compile(G)
            if not (loss.r1 > 0 or loss.r2 > 0 or loss.type == "wgan_gp"):
                self.D = torch.compile(D)

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    @bf16.setter
    def bf16(self, on: bool) -> None:
        self.precision = "bf16" if on else "fp32"

    @property
    def compiled(self) -> bool:
        """Whether G runs under torch.compile (False after a failed compile fell back to eager)."""
        return hasattr(self.G, "_orig_mod")

    def _autocast(self):
        dtype = _AUTOCAST_DTYPES.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _scale(self, scaler: torch.amp.GradScaler | None) -> torch.Tensor | None:
        """The scaler's current loss scale as a device tensor (no host sync), or None without fp16."""
        return None if scaler is None else scaler.scale(torch.ones((), device=self.device))

    def _update(self, loss: torch.Tensor, opt, params, scaler, scale) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Backward and one optimizer step; (gradient norm, skipped: a bool tensor under fp16, else None)."""
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            grad_norm = _grad_norm(params)
            opt.step()
            return grad_norm, None
        scaler.scale(loss).backward()
        # The norm of the scaled gradients over the scale: no unscale_ pass (fused Adam unscales in its
        # kernel). Inf/NaN in any gradient = a skipped step, as the scaler's own check finds.
        grad_norm = _grad_norm(params) / scale
        scaler.step(opt)
        scaler.update()
        skipped = ~torch.isfinite(grad_norm)
        return torch.where(skipped, 0.0, grad_norm), skipped

    def _latents(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, device=self.device)

    def _generate(self, n: int, labels: torch.Tensor | None) -> torch.Tensor:
        z = self._latents(n)
        return self.G(z) if labels is None else self.G(z, labels)

    def _judge(self, x: torch.Tensor, labels: torch.Tensor | None, copies: int) -> torch.Tensor:
        """D's logits on `x` (augmented), a batch of `copies` stacked batches that share `labels`."""
        x = augment.apply(x, self.augment_policy)
        return self.D(x) if labels is None else self.D(x, labels.repeat(copies))

    def d_step(
        self, real: torch.Tensor, labels: torch.Tensor | None = None, regularize: bool = True
    ) -> dict[str, torch.Tensor]:
        """One D update. `regularize`: this step takes R1/R2 (weighted `loss.reg_every` times); one
        that does not reports the penalties last measured, so a mean over steps stays their mean."""
        n, spec = real.shape[0], self.loss
        r1, r2 = (spec.r1 * spec.reg_every, spec.r2 * spec.reg_every) if regularize else (0.0, 0.0)
        with torch.no_grad(), self._autocast():
            fake = self._generate(n, labels).float()
        real = real.detach().requires_grad_(r1 > 0)
        fake = fake.detach().requires_grad_(r2 > 0)
        inputs = [real, fake]
        if spec.type == "wgan_gp":
            eps = torch.rand(n, *[1] * (real.dim() - 1), device=self.device)
            inputs.append(torch.lerp(real.detach(), fake.detach(), eps).requires_grad_(True))
        with self._autocast():
            logits = self._judge(torch.cat(inputs), labels, len(inputs)).float()
        parts = logits.split(n)
        loss = losses.d_loss(spec.type, parts[0], parts[1])
        real_logits, fake_logits = parts[0].detach(), parts[1].detach()
        scale = self._scale(self.scaler_d)
        # Bounded health statistics next to the loss (whose scale depends on the loss type).
        stats = {"loss_d": loss.detach(), "critic_gap": losses.critic_gap(real_logits, fake_logits)}
        accuracy = losses.d_accuracy(spec.type, real_logits, fake_logits)
        if accuracy is not None:
            stats["d_accuracy"] = accuracy
        for key, gamma, part, x in (("r1", r1, parts[0], real), ("r2", r2, parts[1], fake)):
            if gamma > 0:
                penalty = losses.input_gradient_penalty(part, x, scale)
                loss = loss + 0.5 * gamma * penalty
                stats[key] = penalty.detach()
        if spec.type == "wgan_gp":
            gp = losses.gradient_penalty(parts[2], inputs[2], scale)
            loss = loss + spec.gp * gp
            stats["gp"] = gp.detach()
        stats["grad_norm_d"], skipped = self._update(loss, self.opt_d, self.D.parameters(), self.scaler_d, scale)
        if skipped is not None:  # an overflowing penalty of a skipped step is no measurement
            for key in ("r1", "r2", "gp"):
                if key in stats:
                    stats[key] = torch.where(skipped, 0.0, stats[key])
            stats["amp_skipped_d"] = skipped.float()
        if regularize:
            self._penalties.update({k: stats[k] for k in ("r1", "r2") if k in stats})
        else:
            stats.update(self._penalties)
        return stats

    def g_step(self, real: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One G update on as many fakes as `real` has samples (of `real`'s classes when conditional);
        `real` itself reaches D only for losses in `losses.G_NEEDS_REAL` (each fake is paired with one real)."""
        n, paired = real.shape[0], self.loss.type in losses.G_NEEDS_REAL
        self.D.requires_grad_(False)
        try:
            with self._autocast():
                fake = self._generate(n, labels).float()
                inputs = torch.cat([real.detach(), fake]) if paired else fake
                logits = self._judge(inputs, labels, 2 if paired else 1).float()
            loss = losses.g_loss(self.loss.type, logits[-n:], logits[:n] if paired else None)
            scale = self._scale(self.scaler_g)
            grad_norm, skipped = self._update(loss, self.opt_g, self.G.parameters(), self.scaler_g, scale)
        finally:
            self.D.requires_grad_(True)
        self.update_ema()
        stats = {"loss_g": loss.detach(), "grad_norm_g": grad_norm}
        if skipped is not None:
            stats["amp_skipped_g"] = skipped.float()
        return stats

    def step(
        self, real_batches: list[torch.Tensor], labels: list[torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """One generator step after `n_critic` discriminator steps (one real batch each; `labels`: the
        batches' class ids, for class-conditional models only).

        Returns detached scalar tensors (no host sync here; the loop reads them when it reports).
        D's statistics are means over the critic steps: the last one alone is the D most fitted to
        this G, and would overstate how far D is ahead.
        """
        assert len(real_batches) == self.n_critic, f"need {self.n_critic} real batches, got {len(real_batches)}"
        labels = labels if labels is not None else [None] * len(real_batches)
        if self._eager is not None:
            return self._first_compiled_step(real_batches, labels)
        return self._step(real_batches, labels)

    def _first_compiled_step(self, real_batches: list[torch.Tensor], labels: list) -> dict[str, torch.Tensor]:
        """The first step under torch.compile (where it compiles); where that fails, one warning, the
        state and RNG from before it put back, and the step again eager."""
        eager, self._eager = self._eager, None
        state, rng = copy.deepcopy(self.state_dict()), _rng_state(self.device)
        try:
            return self._step(real_batches, labels)
        except Exception as e:  # dynamo/inductor errors, a missing compiler, no double backward, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            warnings.warn(
                f"train.compile: torch.compile failed ({type(e).__name__}: {first[:200]}); running G and D eager",
                RuntimeWarning,
                stacklevel=3,
            )
            self.G, self.D = eager
            self.load_state_dict(state)
            _set_rng_state(rng, self.device)
            return self._step(real_batches, labels)

    def _step(self, real_batches: list[torch.Tensor], labels: list) -> dict[str, torch.Tensor]:
        # D steps are numbered across G steps (the count resumes from a checkpoint): with
        # loss.reg_every = k, the 0th, kth, 2kth, ... take R1/R2
        first, every = self.ema_updates * self.n_critic, self.loss.reg_every
        d_stats = [
            self.d_step(real, y, regularize=(first + i) % every == 0)
            for i, (real, y) in enumerate(zip(real_batches, labels))
        ]
        stats = {k: torch.stack([s[k] for s in d_stats]).mean() for k in d_stats[0]}
        stats.update(self.g_step(real_batches[-1], labels[-1]))
        return stats

    @torch.no_grad()
    def update_ema(self) -> None:
        # Ramp the decay up early on (as TF's ExponentialMovingAverage does) so the EMA does not
        # average in the random initialization for the first thousands of steps.
        self.ema_updates += 1
        decay = min(self.ema_decay, (1 + self.ema_updates) / (10 + self.ema_updates))
        g = unwrap(self.G)
        torch._foreach_lerp_(list(self.G_ema.parameters()), [p.detach() for p in g.parameters()], 1 - decay)
        for b_ema, b in zip(self.G_ema.buffers(), g.buffers()):
            b_ema.copy_(b)

    def set_lrs(self, lr_g: float, lr_d: float) -> None:
        for group in self.opt_g.param_groups:
            group["lr"] = lr_g
        for group in self.opt_d.param_groups:
            group["lr"] = lr_d

    def state_dict(self) -> dict:
        state = {
            "G": unwrap(self.G).state_dict(),
            "D": unwrap(self.D).state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "ema_updates": self.ema_updates,
            "penalties": self._penalties,
        }
        if self.scaler_d is not None:  # fp16: the loss scales go on from where they were
            state["scaler_d"], state["scaler_g"] = self.scaler_d.state_dict(), self.scaler_g.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.G).load_state_dict(state["G"])
        unwrap(self.D).load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.ema_updates = state["ema_updates"]
        self._penalties = {k: v.to(self.device) for k, v in state.get("penalties", {}).items()}
        if self.scaler_d is not None and "scaler_d" in state:
            self.scaler_d.load_state_dict(state["scaler_d"])
            self.scaler_g.load_state_dict(state["scaler_g"])


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def all_finite(stats: dict[str, torch.Tensor]) -> bool:
    """NaN/Inf in any loss or gradient norm: the signal that a run has diverged."""
    return bool(torch.isfinite(torch.stack([v.float() for v in stats.values()])).all())


def random_classes(n: int, num_classes: int, seed: int) -> torch.Tensor:
    """n class ids drawn uniformly, from their own RNG stream (not the latents' of the same seed)."""
    return torch.from_numpy(np.random.default_rng([seed, 1]).integers(num_classes, size=n))


@torch.no_grad()
def sample(
    generator: nn.Module,
    n: int,
    latent_dim: int,
    device: torch.device,
    seed: int,
    batch: int = 4096,
    classes: torch.Tensor | None = None,
) -> torch.Tensor:
    """n samples from `generator` with latents drawn from a private RNG (leaves global RNG alone);
    `classes`: [n] class ids, for a class-conditional generator."""
    # All latents drawn at once, so the samples do not depend on `batch` (the CPU normal sampler
    # draws differently for different tensor sizes).
    latents = torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed))
    was_training = generator.training
    generator.eval()
    try:
        if classes is None:
            chunks = [generator(z.to(device)).float().cpu() for z in latents.split(batch)]
        else:
            pairs = zip(latents.split(batch), classes.long().split(batch))
            chunks = [generator(z.to(device), y.to(device)).float().cpu() for z, y in pairs]
    finally:
        generator.train(was_training)
    return torch.cat(chunks)
