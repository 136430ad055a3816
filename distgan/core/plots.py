"""Pictures of samples as PNG bytes: an image grid, or a scatter of 2-D samples over the true modes."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image


def image_grid_png(images: np.ndarray, columns: int | None = None, scale: int = 4, limit: int = 64) -> bytes:
    """[N, C, H, W] in [-1, 1] -> one PNG grid of the first `limit` (nearest-neighbour upscaled so small
    images are visible), `columns` wide (default: about square)."""
    images = np.asarray(images)[:limit]
    n, c, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * (h + 1) + 1, columns * (w + 1) + 1, c), dtype=np.float32)
    for i, img in enumerate(images):
        r, k = divmod(i, columns)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + k * (w + 1) : 1 + k * (w + 1) + w] = img.transpose(1, 2, 0)
    pixels = ((grid.clip(-1, 1) + 1) * 127.5).round().astype(np.uint8)
    im = Image.fromarray(pixels[..., 0] if c == 1 else pixels).resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST
    )
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def scatter_png(samples: np.ndarray, means: np.ndarray, title: str = "") -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4, label="generated")
    ax.scatter(means[:, 0], means[:, 1], s=30, marker="x", c="red", label="true modes")
    span = np.abs(means if len(means) else samples[:, :2]).max() * 1.5
    ax.set(xlim=(-span, span), ylim=(-span, span), title=title, aspect="equal")
    ax.legend(loc="upper right", fontsize=7)
    return _figure_png(fig)


def curves_png(series: dict[str, list[tuple[int, float]]], title: str) -> bytes:
    """One panel per metric: value over step."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3), dpi=100, squeeze=False)
    for ax, (name, points) in zip(axes[0], series.items()):
        steps, values = zip(*points)
        ax.plot(steps, values)
        ax.set(title=name, xlabel="step")
    fig.suptitle(title)
    return _figure_png(fig)


STOP_COLORS = {
    "converged": "tab:green",
    "completed": "tab:blue",
    "asha": "tab:gray",
    "pbt": "tab:gray",
    "no_progress": "tab:olive",
    "mode_collapse": "tab:orange",
    "d_collapse": "tab:purple",
    "grad_explosion": "tab:red",
    "diverged_nan": "black",
    "failed": "black",
}


def stability_map_png(trials: list[dict], keys: list[str]) -> bytes:
    """Each trial at its (first two numeric search keys), coloured by why it ended."""
    plt = _pyplot()
    numeric = [k for k in keys if all(isinstance(t["config"].get(k), (int, float)) for t in trials)]
    x_key, y_key = (numeric + [None, None])[:2]
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    for reason in sorted({t["stop_reason"] for t in trials}):
        group = [t for t in trials if t["stop_reason"] == reason]
        xs = [t["config"].get(x_key, i) if x_key else i for i, t in enumerate(group)]
        ys = [t["config"].get(y_key, 0) if y_key else 0 for t in group]
        ax.scatter(xs, ys, label=reason, c=STOP_COLORS.get(reason, "tab:cyan"), s=40)
    if x_key and x_key.startswith("optim.lr"):
        ax.set_xscale("log")
    if y_key and y_key.startswith("optim.lr"):
        ax.set_yscale("log")
    ax.set(xlabel=x_key or "trial", ylabel=y_key or "", title="stability map")
    ax.legend(fontsize=7)
    return _figure_png(fig)


def trial_curves_png(histories: dict[str, list[tuple[int, float]]], metric: str) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for trial_id, points in histories.items():
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, label=trial_id, lw=1)
    ax.set(xlabel="step", ylabel=metric, title=f"{metric} of every trial")
    if len(histories) <= 16:
        ax.legend(fontsize=6)
    return _figure_png(fig)
