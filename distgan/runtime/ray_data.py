"""User data through Ray Data: a streaming pipeline from Parquet files or image folders (local or in
object storage) to uint8 images (or float vectors) in the Train workers, never all in memory.

The plan: the data's units (`data.files.units`: small slices of Parquet row groups, or chunks of
image files) are one tiny block each; every pass (an epoch, or several of small data: PASS_UNITS)
visits them in a new random order (a reordering of block references on the driver: no task, no
copy, reseeded each execution); map tasks read and decode each unit (`files.read_unit`: decode,
resize, crop, flip; bad rows fail or are skipped);
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
# Each pass of the pipeline begins with a pause, the training loop waiting: Ray Data starts a new execution
# and the worker's shuffle buffer fills from the first decoded units (~0.5 s on a 2-core machine). A pass
# visits at least this many units, so small data is visited several times per pass: on the 1,797 digits
# (15 units), one pause per 69 epochs instead of one every 14 steps.
PASS_UNITS = 1024
# Units a map task reads and decodes: a task has a fixed cost, and on a 2-core machine 4 units a task
# delivered 27% more images/s than 1 (benchmarks/data_pipeline.py, 32 px). Fewer when their decoded rows
# would pass TASK_BYTES (large images: one unit a task), to keep blocks small in the object store.
TASK_UNITS = 4
TASK_BYTES = 16 * 2**20


def datasets(spec: DataSpec, info: DataInfo, resume_salt: int = 0, materialize: bool = False) -> dict | None:
    """{"train": the Ray Dataset} for user data; None for built-ins (they live in the workers).

    `resume_salt` reseeds the pass order of a resumed run (it does not replay the first one's).
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
        "batch_size": units_per_task(layout),
        "batch_format": "pyarrow",
    }
    # A bad row's InputError reaches the worker as itself (not as Ray Data's UserCodeException),
    # so the worker can tell bad data from a failure a restart would cure.
    ctx = ray.data.DataContext.get_current()
    ctx.raise_original_map_exception = True
    ctx.enable_progress_bars = False  # distgan prints the run's progress; Ray Data's bars only interleave with it
    units = files.units(spec)
    order = RandomSeedConfig(spec.seed * 1_000_003 + resume_salt, reseed_after_execution=True)
    if materialize:  # decoded once; a pass is one epoch (no decoding to wait for, and a pass may not repeat a block)
        # the units shuffled before the map too: a decoded block's units come from random places in the data
        shuffled = ray.data.from_items(units, override_num_blocks=len(units)).randomize_block_order(seed=spec.seed)
        return {"train": shuffled.map_batches(**read).materialize().randomize_block_order(seed=order)}
    repeats = pass_repeats(len(units))
    blocks = ray.data.from_items(units * repeats, override_num_blocks=len(units) * repeats)
    return {"train": blocks.randomize_block_order(seed=order).map_batches(**read)}


def units_per_task(layout: files.Layout) -> int:
    row_bytes = math.prod(layout.sample_shape) * (1 if layout.kind == "image" else 4)  # uint8 images, float32 vectors
    return max(1, min(TASK_UNITS, TASK_BYTES // (files.UNIT_ROWS * row_bytes)))


def pass_repeats(num_units: int) -> int:
    """How many times a pass of the pipeline visits each unit."""
    return math.ceil(PASS_UNITS / num_units)


def _read_units(batch, spec: DataSpec, decoder: files.Decoder, num_classes: int | None, fs) -> dict:
    """A map task's work: the unit(s) of `batch` read and decoded. Random crops and flips draw
    from a fresh generator, so every visit of a unit sees new ones.

    The rows dropped as bad (data.on_bad_image=skip) are counted on the task's first row, a column
    the worker sums (`data.ShardStream`): the count survives the shuffles. A task none of whose rows
    could be used has no row to carry its count; it sends one blank row marked `count_only`, which
    the worker counts and never trains on."""
    rng = np.random.default_rng()
    parts = [files.read_unit(spec, decoder, num_classes, unit, fs, rng) for unit in batch.to_pylist()]
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "skipped"}
    skipped = sum(p["skipped"] for p in parts)
    count_only = not len(out["x"]) and skipped > 0
    if count_only:
        out = {k: np.zeros((1, *v.shape[1:]), v.dtype) for k, v in out.items()}
    out["skipped"] = np.zeros(len(out["x"]), np.int64)
    out["skipped"][:1] = skipped
    out["count_only"] = np.full(len(out["x"]), count_only)
    return out


def worker_cpus(requested: float, workers: int, cluster_cpus: float) -> float:
    """The CPUs each Train worker asks for when a Ray Data pipeline feeds them: what the spec asks,
    unless that leaves Ray Data no CPU; then an equal share of all but DATA_CPUS (at least 0.1 each,
    a share Ray can schedule; the torch threads stay as the spec says)."""
    if requested * workers + DATA_CPUS <= cluster_cpus:
        return requested
    return max(0.1, math.floor((cluster_cpus - DATA_CPUS) / workers * 100) / 100)


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 0)) if ray.is_initialized() else math.inf
