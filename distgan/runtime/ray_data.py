"""User data through Ray Data: the pipelines that decode Parquet columns and image folders into
float32 samples (column 'x'), sharded across the Train workers by Ray Train."""

from __future__ import annotations

import numpy as np
import ray.data
from ray.data import RandomSeedConfig

from distgan.data import DataInfo, files
from distgan.spec.job import DataSpec


def datasets(spec: DataSpec, info: DataInfo) -> dict | None:
    """{"train": the materialized Ray Dataset} for user data; None for built-ins.

    Materialized before training starts: with as many Train workers as CPUs, a lazy pipeline
    would have no CPU left for its read tasks and hang. Shuffled then, once, across the whole data
    (seeded by data.seed): files are often sorted (by class, by date), and a worker's local shuffle
    buffer only mixes neighbouring rows. Each epoch then visits the blocks in a new order (a driver-
    side reordering of block references: no tasks, no CPU), and `data._shard_batches` shuffles rows
    locally with a seed of its own per epoch.
    """
    if spec.name == "parquet":
        ds = parquet_dataset(spec.path, spec.column, info.kind, info.sample_shape)
    elif spec.name == "imagefolder":
        ds = image_folder_dataset(spec.path, info.sample_shape)
    else:
        return None
    shuffled = ds.random_shuffle(seed=spec.seed).materialize()
    return {"train": shuffled.randomize_block_order(seed=RandomSeedConfig(spec.seed, reseed_after_execution=True))}


def parquet_dataset(path: str, column: str, kind: str, sample_shape: tuple[int, ...]):
    """Ray Dataset with one column 'x' of float32 samples (vectors, or CHW images in [-1, 1])."""
    ds = ray.data.read_parquet([str(f) for f in files.parquet_files(path)], columns=[column])
    if kind == "vector":
        fn = lambda b: {"x": np.stack(b[column]).astype(np.float32)}  # noqa: E731
    else:
        fn = lambda b: {"x": files.decode(b[column], sample_shape[0])}  # noqa: E731
    return ds.map_batches(fn, batch_format="numpy")


def image_folder_dataset(path: str, sample_shape: tuple[int, int, int]):
    mode = "L" if sample_shape[0] == 1 else "RGB"
    ds = ray.data.read_images(path, mode=mode, file_extensions=[s[1:] for s in files.IMAGE_SUFFIXES])
    return ds.map_batches(lambda b: {"x": files.to_unit_range(np.asarray(b["image"]))}, batch_format="numpy")
