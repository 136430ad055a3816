"""Pictures of samples as PNG bytes: an image grid, or a scatter of 2-D samples over the true modes."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image


def image_grid_png(images: np.ndarray, columns: int | None = None, scale: int = 4) -> bytes:
    """[N, C, H, W] in [-1, 1] -> one PNG grid (nearest-neighbour upscaled so small images are visible)."""
    images = np.asarray(images)[:64]
    n, c, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * (h + 1) + 1, columns * (w + 1) + 1, c), dtype=np.float32)
    for i, img in enumerate(images):
        r, k = divmod(i, columns)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + k * (w + 1) : 1 + k * (w + 1) + w] = img.transpose(1, 2, 0)
    pixels = ((grid.clip(-1, 1) + 1) * 127.5).round().astype(np.uint8)
    im = Image.fromarray(pixels[..., 0] if c == 1 else pixels).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def scatter_png(samples: np.ndarray, means: np.ndarray, title: str = "") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4, label="generated")
    ax.scatter(means[:, 0], means[:, 1], s=30, marker="x", c="red", label="true modes")
    span = np.abs(means if len(means) else samples[:, :2]).max() * 1.5
    ax.set(xlim=(-span, span), ylim=(-span, span), title=title, aspect="equal")
    ax.legend(loc="upper right", fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def curves_png(series: dict[str, list[tuple[int, float]]], title: str) -> bytes:
    """One panel per metric: value over step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3), dpi=100, squeeze=False)
    for ax, (name, points) in zip(axes[0], series.items()):
        steps, values = zip(*points)
        ax.plot(steps, values)
        ax.set(title=name, xlabel="step")
    fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
