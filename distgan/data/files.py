"""User data: Parquet (a column of float vectors or encoded image bytes) and image folders.

`inspect_*` run on the driver with pyarrow and PIL before Ray starts: they read the schema, every
vector value (NaN/Inf, lengths) and every image header (size, mode; pixels are not decoded), and
raise InputError naming the file and column. `*_dataset` build the Ray Data pipeline that decodes
and shards the same data across the Train workers.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from distgan.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def _parquet_files(path: str) -> list[Path]:
    p = Path(path)
    if not p.exists():
        raise InputError(f"data.path {path!r} does not exist; point it at a Parquet file or a directory of them")
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*.parquet") if f.is_file())
    if not files:
        raise InputError(f"data.path {path!r} holds no *.parquet files")
    return files


def _image_shape(blob: bytes, where: str) -> tuple[int, int, int]:
    try:
        with Image.open(io.BytesIO(blob)) as im:
            w, h = im.size
            return (1 if im.mode in ("L", "1", "I", "I;16", "F") else 3, h, w)
    except Exception as e:
        raise InputError(f"{where}: not a readable image ({type(e).__name__}: {e})") from None


def _same_shape(shapes: dict[tuple, str], what: str) -> tuple[int, int, int]:
    """One (C, H, W) for the whole dataset, else an error naming two files that differ."""
    if len(shapes) > 1:
        (s1, w1), (s2, w2) = list(shapes.items())[:2]
        raise InputError(
            f"mixed image sizes in {what}: {w1} is {s1[2]}x{s1[1]} ({s1[0]} ch) but {w2} is "
            f"{s2[2]}x{s2[1]} ({s2[0]} ch); resize all images to one size"
        )
    return next(iter(shapes))


def inspect_parquet(path: str, column: str) -> tuple[str, tuple[int, ...], int]:
    """(kind 'vector'|'image', sample shape, row count) of a Parquet column, or InputError."""
    files = _parquet_files(path)
    kind, rows, vector_len, image_shapes = None, 0, None, {}
    for f in files:
        schema = pq.read_schema(f)
        if column not in schema.names:
            raise InputError(f"{f}: no column {column!r} (columns: {', '.join(schema.names)}); set data.column")
        col_type = schema.field(column).type
        if (
            pa.types.is_list(col_type) or pa.types.is_fixed_size_list(col_type) or pa.types.is_large_list(col_type)
        ) and pa.types.is_floating(col_type.value_type):
            this = "vector"
        elif pa.types.is_binary(col_type) or pa.types.is_large_binary(col_type):
            this = "image"
        else:
            raise InputError(
                f"{f}: column {column!r} is {col_type}; expected a list of floats (vectors) or binary (encoded images)"
            )
        if kind and this != kind:
            raise InputError(f"{f}: column {column!r} holds {this}s but earlier files hold {kind}s")
        kind = this
        values = pq.read_table(f, columns=[column]).column(column)
        if values.null_count:
            raise InputError(f"{f}: column {column!r} has {values.null_count} null rows; drop or fill them")
        rows += len(values)
        if kind == "vector":
            lengths = pc.list_value_length(values)
            lo, hi = pc.min(lengths).as_py(), pc.max(lengths).as_py()
            if lo is not None and (lo != hi or (vector_len is not None and lo != vector_len)):
                raise InputError(
                    f"{f}: column {column!r} has vectors of different lengths ({lo} to {hi}, earlier {vector_len}); all must match"
                )
            vector_len = lo if lo is not None else vector_len
            flat = pc.list_flatten(values)
            bad = pc.invert(pc.is_finite(flat))
            if pc.any(bad).as_py():
                row = int(pc.index(bad, True).as_py()) // max(lo, 1)
                raise InputError(f"{f}: column {column!r} has NaN/Inf values (first at row {row}); clean the data")
        else:
            for i, blob in enumerate(values.to_pylist()):
                image_shapes.setdefault(_image_shape(blob, f"{f}: column {column!r} row {i}"), f"{f} row {i}")
    if rows == 0:
        raise InputError(f"data.path {path!r}: column {column!r} is empty (0 rows in {len(files)} file(s))")
    if kind == "vector":
        return kind, (vector_len,), rows
    return kind, _same_shape(image_shapes, f"column {column!r} of {path}"), rows


def inspect_image_folder(path: str) -> tuple[tuple[int, int, int], int]:
    """(sample shape (C, H, W), image count) of a folder of images, or InputError."""
    p = Path(path)
    if not p.is_dir():
        raise InputError(f"data.path {path!r} is not a directory; imagefolder needs a folder of images")
    files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise InputError(f"data.path {path!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    shapes: dict[tuple, str] = {}
    for f in files:
        shapes.setdefault(_image_shape(f.read_bytes(), str(f)), str(f))
    return _same_shape(shapes, path), len(files)


def _to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W(, C)] -> float32 [N, C, H, W] in [-1, 1]."""
    if images.ndim == 3:
        images = images[..., None]
    return (images.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2)


def _decode(blobs, channels: int) -> np.ndarray:
    mode = "L" if channels == 1 else "RGB"
    return _to_unit_range(np.stack([np.asarray(Image.open(io.BytesIO(b)).convert(mode)) for b in blobs]))


def parquet_dataset(path: str, column: str, kind: str, sample_shape: tuple[int, ...]):
    """Ray Dataset with one column 'x' of float32 samples (vectors, or CHW images in [-1, 1])."""
    import ray.data

    ds = ray.data.read_parquet([str(f) for f in _parquet_files(path)], columns=[column])
    if kind == "vector":
        fn = lambda b: {"x": np.stack(b[column]).astype(np.float32)}  # noqa: E731
    else:
        fn = lambda b: {"x": _decode(b[column], sample_shape[0])}  # noqa: E731
    return ds.map_batches(fn, batch_format="numpy")


def image_folder_dataset(path: str, sample_shape: tuple[int, int, int]):
    import ray.data

    mode = "L" if sample_shape[0] == 1 else "RGB"
    ds = ray.data.read_images(path, mode=mode, file_extensions=[s[1:] for s in IMAGE_SUFFIXES])
    return ds.map_batches(lambda b: {"x": _to_unit_range(np.asarray(b["image"]))}, batch_format="numpy")


def _spread(n: int, limit: int) -> np.ndarray:
    """`limit` indices spread evenly over n rows (data is often sorted by class)."""
    return np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(int))


def read_parquet_images(path: str, column: str, channels: int, limit: int) -> np.ndarray:
    """Up to `limit` images of a Parquet column, spread over all rows: [N, C, H, W] in [-1, 1]."""
    blobs = [b for f in _parquet_files(path) for b in pq.read_table(f, columns=[column]).column(column).to_pylist()]
    return _decode([blobs[i] for i in _spread(len(blobs), limit)], channels)


def read_folder_images(path: str, channels: int, limit: int) -> np.ndarray:
    files = sorted(f for f in Path(path).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    return _decode([files[i].read_bytes() for i in _spread(len(files), limit)], channels)
