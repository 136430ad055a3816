"""The one checkpoint format: a directory holding `state.pt` and `state.pt.sha256` (its sha256, hex).

state = {"engine": Engine.state_dict(), "step": int, "rng": [per rank {"cpu": ByteTensor[, "cuda": ...]}], "spec": the
job spec as a dict}. It loads with `torch.load(weights_only=True)`: nothing is unpickled.

`state.pt` is written under a temporary name and renamed, then its checksum: a checkpoint is whole or
has no `state.pt`. A resume reads the newest checkpoint that verifies (`read_newest_good`): one cut
short, altered or missing its state (storage that failed under it, a copy that broke off) is
skipped for the one before it, with a warning. Checkpoints live anywhere `distgan.storage` reaches.
"""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path

import pyarrow.fs as pafs
import torch

from distgan import models, storage
from distgan.errors import InputError
from distgan.spec.job import ModelSpec

CHECKPOINT_FILE = "state.pt"
CHECKSUM_FILE = CHECKPOINT_FILE + ".sha256"
PREFIX = "checkpoint_"  # Ray Train's and LocalSession's checkpoint directories; their names sort by time


class BadCheckpoint(Exception):
    """A checkpoint that does not verify; the message says why."""


def write(directory: str | Path, state: dict) -> Path:
    """`state` as `directory/state.pt` (a local directory), whole or not at all, and its checksum."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data, path, local = buffer.getvalue(), Path(directory) / CHECKPOINT_FILE, pafs.LocalFileSystem()
    storage.write_bytes(local, str(path), data)
    storage.write_bytes(local, str(path.with_name(CHECKSUM_FILE)), hashlib.sha256(data).hexdigest().encode())
    return path


def read(location: str | Path) -> dict:
    """A checkpoint's state, on the CPU, verified: `location` is the checkpoint directory or its state
    file, a local path or a URI. InputError when it does not verify."""
    location = str(location)
    directory = location.rsplit("/", 1)[0] if location.endswith("/" + CHECKPOINT_FILE) else location
    try:
        return _verified(directory)
    except BadCheckpoint as e:
        raise InputError(f"checkpoint {directory} is unusable ({e}); use an earlier checkpoint of the run") from None


def _verified(directory: str) -> dict:
    fs, path = storage.resolve(directory)
    try:
        data = storage.read_bytes(fs, f"{path}/{CHECKPOINT_FILE}")
    except FileNotFoundError:
        raise BadCheckpoint(f"no {CHECKPOINT_FILE}") from None
    try:
        expected = storage.read_bytes(fs, f"{path}/{CHECKSUM_FILE}").decode().strip()
    except FileNotFoundError:
        expected = None  # written before checksums: it must still load
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise BadCheckpoint(f"{CHECKPOINT_FILE} does not match its sha256: {len(data):,} bytes, altered or cut short")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise BadCheckpoint(f"{CHECKPOINT_FILE} does not load: {' '.join(str(e).split())[:120]}") from None


def checkpoints(run_dir: str | Path) -> list[str]:
    """The `checkpoint_*` directories of a run directory (local path or URI), oldest first."""
    fs, path = storage.resolve(str(run_dir))
    try:
        found = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except NotADirectoryError:
        return []
    names = sorted(f.base_name for f in found if f.type == pafs.FileType.Directory and f.base_name.startswith(PREFIX))
    return [storage.join(storage.absolute(str(run_dir)), name) for name in names]


def latest(run_dir: str | Path) -> str | None:
    """The newest `checkpoint_*` directory of a run directory, or None (it is verified when read)."""
    found = checkpoints(run_dir)
    return found[-1] if found else None


def read_newest_good(newest: str, warn=print, doing: str = "resuming from") -> dict:
    """The state of `newest` (a checkpoint directory) or, when it does not verify, of the newest
    checkpoint before it in the same run directory that does, with one warning naming both (and
    what is `doing` with the one taken)."""
    try:
        return _verified(newest)  # the usual case: no listing of the run directory
    except BadCheckpoint as e:
        bad = [f"{newest} ({e})"]
    parent, name = newest.rstrip("/").rsplit("/", 1)
    for candidate in [c for c in reversed(checkpoints(parent)) if c.rsplit("/", 1)[1] < name]:
        try:
            state = _verified(candidate)
        except BadCheckpoint as e:
            bad.append(f"{candidate} ({e})")
            continue
        if bad:
            warn(f"warning: checkpoint {'; '.join(bad)} is unusable; {doing} {candidate} (step {state['step']})")
        return state
    raise RuntimeError(f"no checkpoint in {parent} verifies: {'; '.join(bad)}")


def read_any(path: Path) -> dict:
    """A checkpoint's state from the file, its directory, or a run directory: its newest checkpoint
    that verifies (as a resume would take it: one that does not is skipped, with a warning)."""
    if path.is_dir() and not (path / CHECKPOINT_FILE).is_file():
        newest = latest(path)
        if newest is None:
            raise InputError(
                f"{path} holds no {CHECKPOINT_FILE} and no checkpoint_*/{CHECKPOINT_FILE}; "
                "give a run directory, a checkpoint or a model URI"
            )
        try:
            return read_newest_good(newest, lambda message: print(message, file=sys.stderr), doing="evaluating")
        except RuntimeError as e:
            raise InputError(str(e)) from None
    return read(path)


def generator(state: dict, model: ModelSpec, sample_shape: tuple[int, ...], which: str = "ema") -> torch.nn.Module:
    """The EMA (`which="ema"`) or raw generator a checkpoint's state holds."""
    weights = state["engine"]["G_ema" if which == "ema" else "G"]
    classes = weights["class_embed.weight"].shape[0] if model.conditional else None  # one row per class
    g, _ = models.build(model, sample_shape, classes)
    g.load_state_dict(weights)
    return g
