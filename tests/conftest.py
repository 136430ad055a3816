"""Shared fixtures. Every Ray the tests start gets its own short RAY_TMPDIR (Unix socket paths
must stay short); runs go to pytest's tmp dirs; nothing is stopped by name."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def ray_tmpdir():
    path = tempfile.mkdtemp(prefix="dgt-", dir="/tmp")
    os.environ["RAY_TMPDIR"] = path
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    yield path


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`distgan ARGS` in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "distgan", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def blob_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Grayscale images of one bright square at a random place: simple, structured, learnable."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = np.zeros((size, size), dtype=np.uint8)
        x, y = rng.integers(0, size - size // 2, 2)
        img[y : y + size // 2, x : x + size // 2] = 255
        out.append(img)
    return out


def write_image_parquet(path: Path, images: list[np.ndarray], column: str = "image") -> Path:
    pq.write_table(pa.table({column: [png_bytes(im) for im in images], "label": list(range(len(images)))}), path)
    return path
