"""Datasets: what the data is (`inspect`, on the driver, before Ray), and batches of it (`batches`, in a worker).

Built-ins live in memory of each worker (mixtures and stacked digits are drawn fresh; digits are
sharded by rank). User data goes through Ray Data (`distgan.runtime.ray_data`): Ray Train shards it
across workers (`get_dataset_shard`), and the worker iterates its shard in epochs here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from distgan.data import builtin, files
from distgan.spec.job import DataSpec

REFERENCE_SEED = 0  # the reference images of drawn image data (stacked_digits), whatever the run's seed


@dataclass(frozen=True)
class DataInfo:
    name: str
    kind: Literal["mixture", "image", "vector"]
    sample_shape: tuple[int, ...]  # (2,) for mixtures, (dim,) for vectors, (C, H, W) for images
    num_rows: int | None  # None: drawn fresh, unlimited
    num_classes: int | None = None  # labeled data: class ids 0..num_classes-1 travel with the samples

    @property
    def uses_ray_data(self) -> bool:
        return self.name in ("parquet", "imagefolder")


def inspect(spec: DataSpec) -> DataInfo:
    """Check the data and describe it, without Ray; InputError names what is wrong."""
    if spec.name in ("ring8", "grid25"):
        return DataInfo(spec.name, "mixture", (2,), None)
    if spec.name == "digits":
        return DataInfo("digits", "image", (1, 8, 8), 1797, num_classes=10)
    if spec.name == "stacked_digits":
        return DataInfo("stacked_digits", "image", (3, 8, 8), None)
    if spec.name == "parquet":
        kind, shape, rows = files.inspect_parquet(spec.path, spec.column)
        return DataInfo("parquet", kind, shape, rows)
    shape, rows = files.inspect_image_folder(spec.path)
    return DataInfo("imagefolder", "image", shape, rows)


Batch = tuple[torch.Tensor, torch.Tensor | None]  # (samples, int64 class ids or None)


def batches(
    spec: DataSpec, info: DataInfo, batch_size: int, rank: int, world: int, seed: int, shard=None
) -> Iterator[Batch]:
    """Endless (samples, labels) batches for one worker (`shard`: its Ray Data shard, for user data).
    Images come as float32 in [-1, 1], or as uint8 in [0, 255] from user data (`to_unit_range` on
    the device turns them into floats: a quarter of the bytes to move).

    `seed` (the run's, moved on at a resume) and the rank pick the stream; the built-in datasets'
    draws (mixture points, digits shuffling) also depend on `spec.seed`."""
    stream_seed = seed * 1_000_003 + rank
    builtin_seed = stream_seed + spec.seed * 1_000_000_007  # data.seed=0: the streams as they always were
    if info.kind == "mixture":
        return ((x, None) for x in builtin.mixture_batches(spec.name, batch_size, builtin_seed))
    if spec.name == "digits":
        data = torch.from_numpy(builtin.digits_array())[rank::world]
        labels = torch.from_numpy(builtin.digits_labels())[rank::world]
        return builtin.tensor_batches(data, labels, batch_size, builtin_seed)
    if spec.name == "stacked_digits":
        return ((x, None) for x in builtin.stacked_digits_batches(batch_size, builtin_seed))
    return _shard_batches(shard, batch_size, stream_seed)


# Rows a worker mixes locally, in batches: on top of the once-shuffled data and the block order
# that changes every epoch (runtime/ray_data.py); reseeded every epoch.
LOCAL_SHUFFLE_BATCHES = 16


def _shard_batches(shard, batch_size: int, seed: int) -> Iterator[Batch]:
    epoch = 0
    while True:
        yielded = False
        for batch in shard.iter_torch_batches(
            batch_size=batch_size,
            drop_last=True,
            local_shuffle_buffer_size=LOCAL_SHUFFLE_BATCHES * batch_size,
            local_shuffle_seed=seed + epoch,
        ):
            yielded = True
            yield batch["x"], batch.get("y")
        if not yielded:  # guarded on the driver too; never spin forever on a tiny shard
            raise RuntimeError(f"this worker's data shard has fewer than {batch_size} rows")
        epoch += 1


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 images [0, 255] -> float32 [-1, 1]; float samples as they are."""
    return x.float().div_(127.5).sub_(1.0) if x.dtype == torch.uint8 else x


def real_images(spec: DataSpec, info: DataInfo, limit: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Up to `limit` real images as [N, C, H, W] float32 in [-1, 1], and their class labels when
    the data has them (the built-in digits): the reference side of the image metrics. Drawn data
    (stacked_digits) is drawn with a fixed seed: every run is measured against the same images."""
    if spec.name == "digits":
        keep = files.spread(info.num_rows, limit)
        return builtin.digits_array()[keep], builtin.digits_labels()[keep]
    if spec.name == "stacked_digits":  # labels: the triple as one of 1,000 classes, 100 R + 10 G + B
        images, triples = builtin.stacked_digits_array(limit, REFERENCE_SEED)
        return images, triples @ np.array([100, 10, 1])
    if spec.name == "parquet":
        return files.read_parquet_images(spec.path, spec.column, info.sample_shape[0], limit), None
    if spec.name == "imagefolder":
        return files.read_folder_images(spec.path, info.sample_shape[0], limit), None
    raise ValueError(f"{spec.name} holds no images")


def describe() -> list[tuple[str, str]]:
    """(name, description) of every data source, for `distgan datasets`."""
    return [
        *builtin.ABOUT.items(),
        ("parquet", "your Parquet file/folder: data.path, data.column = float vectors or encoded image bytes"),
        ("imagefolder", "your folder of images (png/jpg/...), all one size: data.path"),
    ]
