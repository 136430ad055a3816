"""The one vocabulary of metric names: what the loop reports, which names are sample quality, which
is the headline of each kind of data, and which way is better. The registry, the search, the
stopper, the quality curves and the console all read it from here.
"""

from __future__ import annotations

# The loop's own numbers: averaged over an eval interval (losses, gradient norms, penalties) or rates.
LOSS_AND_GRAD = ("loss_d", "loss_g", "grad_norm_d", "grad_norm_g")
PENALTIES = ("r1", "r2", "gp")
# D's health next to its loss (bounded, comparable across losses): see distgan.core.losses.
D_HEALTH = ("d_accuracy", "critic_gap")
# fp16 only: the fraction of D's and G's optimizer steps the GradScaler skipped (gradients overflowed).
AMP = ("amp_skipped_d", "amp_skipped_g")
# data_skipped: user-data rows dropped so far (data.on_bad_image=skip), all workers together.
LOOP = (*LOSS_AND_GRAD, *D_HEALTH, *PENALTIES, *AMP, "img_per_s", "step_time", "eval_s", "lr_g", "lr_d", "data_skipped")

MIXTURE = ("modes", "high_quality", "reverse_kl")  # 2-D mixtures (metrics.mixture)
STACKED = ("modes", "reverse_kl")  # stacked digits (metrics.stacked): digit triples covered, of 1,000
STACKED_FINAL_SAMPLES = 25_600  # the final eval's stacked-digits sample (Stacked MNIST protocol: 25.6 per mode)
MIXTURE_SCORE = "mixture_score"  # modes + high_quality: one number that orders mixture runs
IMAGE = ("precision", "recall", "density", "coverage")  # images, beside fd_<net> and kid_<net> (metrics.image)
CLASS = ("classes_covered", "class_kl")  # labeled images, when the feature network classifies
# class-conditional generators, when the feature network classifies: the share of class-k samples
# classified as k, averaged over the classes (higher is better)
CLASS_ACCURACY = "class_accuracy"


# Image metrics depend on the number of samples (FD's bias shrinks with it): every eval, the final
# one included, reports them at `train.eval_samples` under their plain names, and those are what
# runs are ranked and promoted on. The final eval adds the same metrics at `metrics.final_samples`
# under FINAL_PREFIX + name (final_fd_digits, final_kid_digits_std, final_precision, ...).
FINAL_PREFIX = "final_"
SPREAD_SUFFIXES = ("_se", "_std")  # a standard error (mixtures over seeds), KID's std over subsets


def fd(net: str) -> str:
    return f"fd_{net}"


def kid(net: str) -> str:
    return f"kid_{net}"


def kid_std(net: str) -> str:
    """KID's standard deviation over its random subsets (what torchmetrics reports beside the mean)."""
    return f"kid_{net}_std"


def final(key: str) -> str:
    """The name of `key` measured on the final eval's larger sample (metrics.final_samples)."""
    return FINAL_PREFIX + key


def is_final(key: str) -> bool:
    return key.startswith(FINAL_PREFIX)


def is_quality(key: str) -> bool:
    """A sample-quality metric at the eval sample size (not a loss, a rate, a spread, or a
    final_* figure at another sample size, which is never compared with the others)."""
    return key in (*MIXTURE, *IMAGE, *CLASS, CLASS_ACCURACY) or (
        key.startswith(("fd_", "kid_")) and not key.endswith(SPREAD_SUFFIXES)
    )


def is_reported(key: str) -> bool:
    """A number the loop reports (not Tune's bookkeeping such as training_iteration or pid)."""
    key = key.removeprefix(FINAL_PREFIX)
    return (
        key in LOOP
        or key == MIXTURE_SCORE
        or is_quality(key)
        or key.startswith("kid_")
        or key.endswith(SPREAD_SUFFIXES)
    )


def lower_is_better(metric: str) -> bool:
    """Distances and losses: fd_*, kid_*, loss_*, *_kl (reverse_kl, class_kl), and their final_* figures."""
    metric = metric.removeprefix(FINAL_PREFIX)
    return metric.startswith(("fd_", "kid_", "loss_")) or metric.endswith("_kl")


def reported(
    kind: str, net: str | None, classifies: bool, dataset: str | None = None, conditional: bool = False
) -> set[str]:
    """Every metric the loop reports for data of `kind` (`dataset`) scored with feature network `net`
    (`conditional`: of a class-conditional generator)."""
    names = set(LOOP)
    if kind == "mixture":
        names |= {*MIXTURE, MIXTURE_SCORE}
    if dataset == "stacked_digits":
        names |= set(STACKED)
    if net:
        names |= {fd(net), kid(net), *IMAGE, *(CLASS if classifies else ())}
        if classifies and conditional:
            names.add(CLASS_ACCURACY)
    return names


def headline_metric(kind: str, net: str | None, dataset: str | None = None) -> str | None:
    """The number that ranks runs of this data (search default, champion rule); None: none measured.
    Stacked digits: the modes covered (the Stacked MNIST figure), not a feature distance."""
    if kind == "mixture":
        return MIXTURE_SCORE
    if dataset == "stacked_digits":
        return "modes"
    return fd(net) if net else None


def rank_key(kind: str, metrics: dict) -> tuple[str, tuple] | None:
    """(what was measured, values where higher is better) for comparing two runs, or None when
    there is no number. Mixtures compare (modes, then high_quality); stacked digits, the one image
    data that reports modes, (modes, then the lower reverse_kl); other images their Fréchet distance,
    and only against runs scored by the same feature network (the name says which)."""
    if kind == "mixture" and all(metrics.get(k) is not None for k in ("modes", "high_quality")):
        return "mixture", (float(metrics["modes"]), float(metrics["high_quality"]))
    if kind == "image" and all(metrics.get(k) is not None for k in STACKED):
        return "stacked", (float(metrics["modes"]), -float(metrics["reverse_kl"]))
    fds = sorted(k for k in metrics if k.startswith("fd_") and is_quality(k) and metrics[k] is not None)
    if kind == "image" and fds:
        return fds[0], (-float(metrics[fds[0]]),)
    return None


def summary(metrics: dict) -> str:
    """The few numbers a person reads first, e.g. 'modes 25 high_quality 0.88 reverse_kl 0.005'."""
    fds = sorted(k for k in metrics if k.startswith("fd_") and is_quality(k))
    keys = [*MIXTURE, *fds, "precision", "recall", "classes_covered", CLASS_ACCURACY]
    return "  ".join(f"{k} {metrics[k]:.3g}" for k in keys if metrics.get(k) is not None)
