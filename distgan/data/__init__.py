"""Datasets: what the data is (`inspect`, on the driver, before Ray), and batches of it (`batches`, in a worker).

Built-ins live in memory of each worker, the images on its device (mixtures and stacked digits are
drawn fresh; digits are sharded by rank; `data.resolution` resizes the 8 px digits). User data
streams through Ray Data (`distgan.runtime.ray_data`, reading `files` units): Ray Train shards it
across workers (`get_dataset_shard`), and the worker iterates its shard pass after pass here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from distgan.data import builtin, files
from distgan.errors import InputError
from distgan.spec.job import DataSpec

REFERENCE_SEED = 0  # the reference images of drawn image data (stacked_digits), whatever the run's seed
RESIZED_BYTES = 256 * 2**20  # the built-in digits are resized once up to this (all 1,797: 193 px), else per batch


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
    size = spec.resolution or 8
    if spec.name == "digits":
        return DataInfo("digits", "image", (1, size, size), 1797, num_classes=10)
    if spec.name == "stacked_digits":
        return DataInfo("stacked_digits", "image", (3, size, size), None)
    layout = files.inspect(spec)
    return DataInfo(spec.name, layout.kind, layout.sample_shape, layout.num_rows, layout.num_classes)


def _layout(info: DataInfo) -> files.Layout:
    return files.Layout(info.kind, tuple(info.sample_shape), info.num_rows, info.num_classes)


def _resized(images: np.ndarray | torch.Tensor, size: int):
    """The 8 px built-in digits at data.resolution (bilinear); as they are at 8."""
    if images.shape[-1] == size:
        return images
    x = torch.as_tensor(images)
    out = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return out.clamp_(-1, 1) if isinstance(images, torch.Tensor) else out.clamp_(-1, 1).numpy()


Batch = tuple[torch.Tensor, torch.Tensor | None]  # (samples, int64 class ids or None)


def batches(
    spec: DataSpec,
    info: DataInfo,
    batch_size: int,
    rank: int,
    world: int,
    seed: int,
    shard=None,
    device: torch.device | str = "cpu",
) -> Iterator[Batch]:
    """Endless (samples, labels) batches for one worker (`shard`: its Ray Data shard, for user data).
    Images come as float32 in [-1, 1], or as uint8 in [0, 255] from user data (`to_unit_range` on
    the device turns them into floats: a quarter of the bytes to move).

    The built-in images are kept on `device`, where their batches are gathered: on a GPU, no batch
    crosses from the host. They are resized to data.resolution once where that takes at most
    RESIZED_BYTES, else batch by batch there. User data and mixture points come on the host.

    `seed` (the run's, moved on at a resume) and the rank pick the stream; the built-in datasets'
    draws (mixture points, digits shuffling) also depend on `spec.seed`."""
    stream_seed = seed * 1_000_003 + rank
    builtin_seed = stream_seed + spec.seed * 1_000_000_007  # data.seed=0: the streams as they always were
    if info.kind == "mixture":
        return ((x, None) for x in builtin.mixture_batches(spec.name, batch_size, builtin_seed))
    if spec.name in ("digits", "stacked_digits"):
        size, digits = info.sample_shape[-1], torch.from_numpy(builtin.digits_array())
        if spec.name == "digits":
            digits = digits[rank::world]
        # Resized here where that fits in RESIZED_BYTES, else batch by batch (`_resized` passes a batch
        # already at the size through): the same values either way, since bilinear works plane by plane.
        if len(digits) * size * size * 4 <= RESIZED_BYTES:
            digits = _resized(digits, size)
        digits = digits.to(device)
        if spec.name == "digits":
            labels = torch.from_numpy(builtin.digits_labels())[rank::world].to(device)
            return ((_resized(x, size), y) for x, y in builtin.tensor_batches(digits, labels, batch_size, builtin_seed))
        return (
            (_resized(x, size), None) for x in builtin.stacked_digits_batches(batch_size, builtin_seed, digits[:, 0])
        )
    return ShardStream(shard, batch_size, stream_seed, info)


class ShardStream:
    """Endless (samples, labels) batches from a worker's Ray Data shard, pass after pass (a pass of
    the pipeline is an epoch or more: `ray_data.PASS_UNITS`).

    Shuffled twice over: Ray Data visits the data's units in a new order every pass
    (runtime/ray_data.py), and here a local buffer of thousands of rows, drawn from dozens of
    units, mixes them again with a seed of its own per pass and per resume. `skipped` counts the
    bad rows the readers dropped (data.on_bad_image=skip), exactly: also those counted on the short
    last batch of a pass, and those of a read task that kept no row (its blank `count_only` row is
    counted, and the batch it lands in is not trained on)."""

    MIN_BUFFER_BATCHES = 16
    BUFFER_UNITS = 32  # units whose rows the buffer holds, when they fit in BUFFER_BYTES
    BUFFER_BYTES = 256 * 2**20

    def __init__(self, shard, batch_size: int, seed: int, info: DataInfo):
        self.shard, self.batch_size, self.seed, self.info = shard, batch_size, seed, info
        sample_shape = info.sample_shape
        row_bytes = int(np.prod(sample_shape)) * 4
        wanted = min(self.BUFFER_UNITS * files.UNIT_ROWS, self.BUFFER_BYTES // row_bytes)
        self.buffer_rows = max(self.MIN_BUFFER_BATCHES * batch_size, wanted)
        self.skipped = 0
        self.error: str | None = None  # a bad row under data.on_bad_image=fail (see __iter__)

    def __iter__(self) -> Iterator[Batch]:
        pass_, last = 0, None
        while True:
            yielded = False
            try:
                for batch in self.shard.iter_torch_batches(
                    batch_size=self.batch_size,
                    drop_last=False,  # the short last batch of a pass is counted (below), then dropped
                    local_shuffle_buffer_size=self.buffer_rows,
                    local_shuffle_seed=self.seed + pass_,
                    prefetch_batches=4,
                    # On the host, pinned (by Ray's prefetch threads) where there is a GPU: Ray's "auto"
                    # would copy to a Train worker's GPU on the default stream, and counting `skipped`
                    # there would make the host wait for the step before; the loop's Prefetcher copies.
                    device="cpu",
                    pin_memory=torch.cuda.is_available(),
                ):
                    if "skipped" in batch:
                        self.skipped += int(batch["skipped"].sum())
                    if len(batch["x"]) < self.batch_size or ("count_only" in batch and batch["count_only"].any()):
                        continue  # not trained on; its rows are met again next pass
                    yielded = True
                    last = batch["x"], batch.get("y")
                    yield last
            except Exception as e:
                message = _input_error(e)
                if message is None:
                    raise  # a worker failure: Ray Train restarts the group from the latest checkpoint
                # Bad data is no worker failure (a restart would meet it again): this rank keeps its
                # collectives in step on its last batch (or a blank one) until the loop, which checks
                # `error` on every rank every few steps, ends the run with it.
                self.error = message
                while True:
                    yield last or self._blank()
            if not yielded:  # guarded on the driver too; never spin forever on a tiny shard
                rows = f"usable rows ({self.skipped} bad rows skipped)" if self.skipped else "rows"
                raise RuntimeError(f"this worker's data shard has fewer than {self.batch_size} {rows}")
            pass_ += 1

    def _blank(self) -> Batch:
        x = torch.zeros((self.batch_size, *self.info.sample_shape), dtype=torch.float32)
        labels = torch.zeros(self.batch_size, dtype=torch.int64) if self.info.num_classes else None
        return (x.to(torch.uint8) if self.info.kind == "image" else x), labels


def _input_error(e: BaseException) -> str | None:
    """The message of the InputError (a bad row) that a Ray Data task raised, however Ray wrapped it."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, InputError):  # Ray's RayTaskError(InputError) keeps the original as `cause`
            return str(getattr(e, "cause", None) or e).strip().splitlines()[0]
        e = e.__cause__ or e.__context__
    return None


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 images [0, 255] -> float32 [-1, 1]; float samples as they are."""
    return x.float().div_(127.5).sub_(1.0) if x.dtype == torch.uint8 else x


def real_images(spec: DataSpec, info: DataInfo, limit: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Up to `limit` real images as [N, C, H, W] float32 in [-1, 1], and their class labels when
    the data has them (the built-in digits): the reference side of the image metrics. Drawn data
    (stacked_digits) is drawn with a fixed seed: every run is measured against the same images."""
    size = info.sample_shape[-1]
    if spec.name == "digits":
        keep = files.spread(info.num_rows, limit)
        return _resized(builtin.digits_array()[keep], size), builtin.digits_labels()[keep]
    if spec.name == "stacked_digits":  # labels: the triple as one of 1,000 classes, 100 R + 10 G + B
        images, triples = builtin.stacked_digits_array(limit, REFERENCE_SEED)
        return _resized(images, size), triples @ np.array([100, 10, 1])
    if spec.name in ("parquet", "imagefolder") and info.kind == "image":
        return files.sample(spec, _layout(info), limit)
    raise ValueError(f"{spec.name} holds no images")


def describe() -> list[tuple[str, str]]:
    """(name, description) of every data source, for `distgan datasets`."""
    return [
        *builtin.ABOUT.items(),
        (
            "parquet",
            "your Parquet file/folder (local or s3://, gs://...): data.path, data.column = float vectors or "
            "encoded image bytes, data.label_column = int class ids",
        ),
        ("imagefolder", "your folder of images (png/jpg/...; local or s3://, gs://...): data.path"),
    ]
