"""The one checkpoint format: a directory holding `state.pt`.

state = {"engine": Engine.state_dict(), "step": int, "rng": [per rank {"cpu": ByteTensor[, "cuda": ...]}], "spec": the
job spec as a dict}. It loads with `torch.load(weights_only=True)`: nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path

import torch

from distgan import models
from distgan.errors import InputError
from distgan.spec.job import ModelSpec

CHECKPOINT_FILE = "state.pt"


def write(directory: str | Path, state: dict) -> Path:
    path = Path(directory) / CHECKPOINT_FILE
    torch.save(state, path)
    return path


def read(path: str | Path) -> dict:
    """A checkpoint's state, on the CPU: `path` is the checkpoint directory or its state file."""
    path = Path(path)
    return torch.load(path / CHECKPOINT_FILE if path.is_dir() else path, map_location="cpu", weights_only=True)


def latest(run_dir: str | Path) -> Path | None:
    """The newest `checkpoint_*` directory of a run directory, or None."""
    found = sorted(Path(run_dir).glob(f"checkpoint_*/{CHECKPOINT_FILE}"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent if found else None


def read_any(path: Path) -> dict:
    """A checkpoint's state from the file, its directory, or the newest checkpoint of a run directory."""
    if path.is_dir() and not (path / CHECKPOINT_FILE).is_file():
        newest = latest(path)
        if newest is None:
            raise InputError(
                f"{path} holds no {CHECKPOINT_FILE} and no checkpoint_*/{CHECKPOINT_FILE}; "
                "give a run directory, a checkpoint or a model URI"
            )
        path = newest
    return read(path)


def generator(state: dict, model: ModelSpec, sample_shape: tuple[int, ...], which: str = "ema") -> torch.nn.Module:
    """The EMA (`which="ema"`) or raw generator a checkpoint's state holds."""
    weights = state["engine"]["G_ema" if which == "ema" else "G"]
    classes = weights["class_embed.weight"].shape[0] if model.conditional else None  # one row per class
    g, _ = models.build(model, sample_shape, classes)
    g.load_state_dict(weights)
    return g
