"""Is this training run healthy? The failure signals of `distgan.core.stopping`, for plain training.

`HealthMonitor(loss).update(step, metrics)` takes one eval's report and returns the signals that
hold at it, each with a one-line message: the step, what the numbers show, and the likely fix for
this loss type. `report()` is "ok", or the first firing of each signal. The rules are the search's
(`TrialMonitor`, thresholds in `StopRules`); `no_progress` and `converged` are what a search does
with a trial, not failures of a run, and are left out here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from distgan.core.stopping import TrialMonitor
from distgan.metrics.names import LOSS_AND_GRAD
from distgan.spec.search import StopRules

HEALTH_SIGNALS = ("diverged_nan", "grad_explosion", "d_collapse", "mode_collapse")

_LOWER_LR = "lower optim.lr_d and optim.lr_g (e.g. 10x)"
_SMOOTH_D = "add loss.r1 (e.g. 0.1) or model.spectral_norm=true, or lower optim.lr_d or optim.n_critic"

# signal -> loss type -> the likely fix; None: any other loss.
FIXES = {
    "diverged_nan": {
        None: f"{_LOWER_LR}; with train.precision=bf16, try fp32",
        "lsgan": f"the least-squares loss is unbounded and blows up at a high learning rate; {_LOWER_LR}",
    },
    "grad_explosion": {
        None: f"{_LOWER_LR}, or add loss.r1 (e.g. 0.1) to smooth D",
        "lsgan": f"the least-squares loss has unbounded gradients; {_LOWER_LR}, or use loss.type=hinge",
        "wgan_gp": f"{_LOWER_LR}; WGAN-GP is tuned for about 1e-4 with betas (0.5, 0.9)",
    },
    "d_collapse": {
        None: f"D overpowers G: {_SMOOTH_D}",
        "minimax": "G gets no gradient, as the minimax G loss saturates; use loss.type=nonsaturating",
        "rpgan": "D overpowers G: add loss.r1 and loss.r2 (RpGAN is meant with both, e.g. 0.1), or lower optim.lr_d",
        "wgan_gp": "the critic outruns G: raise loss.gp (10 is standard), or lower optim.lr_d or optim.n_critic",
    },
    "mode_collapse": {
        None: "G covers few modes: add loss.r1 (e.g. 0.1), lower optim.lr_g, or try loss.type=wgan_gp",
        "wgan_gp": "G covers few modes: raise optim.n_critic (5 is standard) or lower optim.lr_g",
    },
}


def fix(signal: str, loss: str | None) -> str:
    """The likely fix for `signal` under loss type `loss`."""
    return FIXES[signal].get(loss) or FIXES[signal][None]


@dataclass(frozen=True)
class Signal:
    name: str  # one of HEALTH_SIGNALS
    step: int
    message: str  # "step N: what the numbers show: the likely fix"


class HealthMonitor:
    def __init__(self, loss: str, rules: StopRules | None = None, n_modes: int | None = None):
        """loss: loss.type; n_modes: the mixture's modes, or the classes of labeled images (None: unknown)."""
        self.loss = loss
        self.monitor = TrialMonitor(rules or StopRules(), "modes", "max", n_modes=n_modes, loss=loss)
        self.first: dict[str, Signal] = {}

    def update(self, step: int, metrics: dict) -> list[Signal]:
        """The signals that hold at this eval's report (call once per eval, in step order)."""
        fired = [s for s in self.monitor.signals(metrics) if s in HEALTH_SIGNALS]
        out = [
            Signal(name, step, f"step {step}: {_WHAT[name](self.monitor, metrics)}: {fix(name, self.loss)}")
            for name in fired
        ]
        for signal in out:
            self.first.setdefault(signal.name, signal)
        return out

    def report(self) -> str | list[dict]:
        """'ok', or {name, step, message} of the first firing of each signal, in step order."""
        if not self.first:
            return "ok"
        return [asdict(s) for s in sorted(self.first.values(), key=lambda s: s.step)]


def _nan(mon: TrialMonitor, m: dict) -> str:
    bad = [k for k in (*LOSS_AND_GRAD, "critic_gap") if k in m and (m[k] is None or not math.isfinite(m[k]))]
    return f"{', '.join(bad)} NaN/Inf (diverged)"


def _explosion(mon: TrialMonitor, m: dict) -> str:
    which = max(("grad_norm_d", "grad_norm_g"), key=lambda k: m.get(k, 0.0))
    return f"gradient explosion ({which} {m[which]:.3g} > {mon.rules.grad_norm_max:g})"


def _collapse(mon: TrialMonitor, m: dict) -> str:
    rule, n = mon.collapse, mon.collapse.run
    if rule.evidence == "accuracy":
        return f"D wins outright (loss_d {m['loss_d']:.3g}, accuracy {m['d_accuracy']:.2f}, {n} evals running)"
    if rule.evidence == "gap":
        times = m["critic_gap"] / rule.gap_reference if rule.gap_reference > 0 else float("inf")
        gap = f"critic_gap {m['critic_gap']:.3g}, {times:.0f}x its early size"
        return f"the critic runs away from G ({gap}, growing {n} evals running)"
    return (
        f"D wins outright (loss_d {m['loss_d']:.3g} < {mon.rules.d_loss_floor:g} while loss_g rose {n} evals running)"
    )


def _modes(mon: TrialMonitor, m: dict) -> str:
    of = f" of {mon.n_modes}" if mon.n_modes else ""
    return f"mode collapse ({mon.covered:g}{of} modes covered, at most {mon.peak_modes:g} so far)"


_WHAT = {"diverged_nan": _nan, "grad_explosion": _explosion, "d_collapse": _collapse, "mode_collapse": _modes}
