"""User data through Ray Data: a streaming pipeline from Parquet files or image folders (local or in
object storage) to uint8 images (or float vectors) in the Train workers, never all in memory.

The plan: the data's units (`data.files.units`: small slices of Parquet row groups, or chunks of
image files) are one tiny block each; every epoch visits them in a new random order (a reordering
of block references on the driver: no task, no copy, reseeded each execution); map tasks read and
decode each unit (`files.read_unit`: decode, resize, crop, flip; bad rows fail or are skipped);
Ray Train splits the stream across the workers, which mix it again in a local shuffle buffer
(`data.ShardStream`) and turn it into floats on their device.

Ray Data runs its tasks on the CPUs the Train workers leave free, so `worker_cpus` leaves it one.
"""

from __future__ import annotations

import math

import numpy as np
import ray
import ray.data
from ray.data import RandomSeedConfig

from distgan import storage
from distgan.data import DataInfo, files
from distgan.spec.job import DataSpec

DATA_CPUS = 1.0  # kept free for Ray Data's read/decode tasks when the Train workers would take every CPU


def datasets(spec: DataSpec, info: DataInfo, resume_salt: int = 0, materialize: bool = False) -> dict | None:
    """{"train": the Ray Dataset} for user data; None for built-ins (they live in the workers).

    `resume_salt` reseeds the epoch order of a resumed run (it does not replay the first one's).
    `materialize`: decode everything once, before training (for `distgan search`: every trial reads
    the same decoded copy instead of decoding it again; the copy lives in the object store and
    spills to disk when larger)."""
    if not info.uses_ray_data:
        return None
    layout = files.Layout(info.kind, tuple(info.sample_shape), info.num_rows, info.num_classes)
    fs = storage.resolve(spec.path)[0]  # resolved once, here; the map tasks get it with their arguments
    read = {
        "fn": _read_units,
        "fn_kwargs": {"spec": spec, "decoder": files.decoder(spec, layout), "num_classes": info.num_classes, "fs": fs},
        "batch_size": 1,
        "batch_format": "pyarrow",
    }
    # A bad row's InputError reaches the worker as itself (not as Ray Data's UserCodeException),
    # so the worker can tell bad data from a failure a restart would cure.
    ctx = ray.data.DataContext.get_current()
    ctx.raise_original_map_exception = True
    ctx.enable_progress_bars = False  # distgan prints the run's progress; Ray Data's bars only interleave with it
    units = files.units(spec)
    blocks = ray.data.from_items(units, override_num_blocks=len(units))
    order = RandomSeedConfig(spec.seed * 1_000_003 + resume_salt, reseed_after_execution=True)
    if materialize:
        return {"train": blocks.map_batches(**read).materialize().randomize_block_order(seed=order)}
    return {"train": blocks.randomize_block_order(seed=order).map_batches(**read)}


def _read_units(batch, spec: DataSpec, decoder: files.Decoder, num_classes: int | None, fs) -> dict:
    """A map task's work: the unit(s) of `batch` read and decoded. Random crops and flips draw
    from a fresh generator, so every epoch sees new ones."""
    rng = np.random.default_rng()
    parts = [files.read_unit(spec, decoder, num_classes, unit, fs, rng) for unit in batch.to_pylist()]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def worker_cpus(requested: float, workers: int, cluster_cpus: float) -> float:
    """The CPUs each Train worker asks for when a Ray Data pipeline feeds them: what the spec asks,
    unless that leaves Ray Data no CPU; then an equal share of all but DATA_CPUS (at least 0.1 each,
    a share Ray can schedule; the torch threads stay as the spec says)."""
    if requested * workers + DATA_CPUS <= cluster_cpus:
        return requested
    return max(0.1, math.floor((cluster_cpus - DATA_CPUS) / workers * 100) / 100)


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 0)) if ray.is_initialized() else math.inf
