"""User data: Parquet (a column of float vectors or encoded image bytes, and an optional column of
int class ids) and image folders, on local disk or object storage (`distgan.storage`).

Data is read in *units*: a slice of at most UNIT_ROWS rows of one Parquet row group, or a chunk of
image files. A unit is the grain of reading, of shuffling (units are visited in a new random order
every epoch) and of error messages (file and row).

- `inspect` runs on the driver before Ray: schema, row counts and label statistics from Parquet
  metadata, and a decode of a bounded sample of images spread over the data. Its time and memory
  do not grow with the number of rows.
- `read_unit` runs in Ray Data tasks: it decodes, converts, resizes, crops and flips one unit to
  uint8 CHW images (floats come on the training device), and fails or skips bad rows.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, ImageOps

from distgan import storage
from distgan.errors import InputError
from distgan.spec.job import DataSpec

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}  # `data build` reads the same
# Rows per unit. Small, so that a worker's shuffle buffer of a few thousand rows holds rows from
# dozens of places in the data: a class-sorted file still gives well-mixed batches. A longer row
# group is read in slices of this size (see GROUP_CACHE_BYTES); `distgan data build` writes row
# groups of this size.
UNIT_ROWS = 128
# A row group longer than a unit is read whole for each of its slices (Parquet has no cheaper way to
# a slice of a group): a file written with one large group, pandas' and pyarrow's default, would be
# read whole for every 128 rows. Each process keeps the groups it read, up to this many bytes of
# them, so each is read once per process; larger groups are read once per slice (the checks warn).
GROUP_CACHE_BYTES = 256 * 2**20
SAMPLE_IMAGES = 256  # decoded by the checks on the driver, spread over the whole data
GRAYSCALE_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"}  # PIL modes read as 1 channel


class BadRow(Exception):
    """One row of the data that cannot be used (undecodable image, wrong size, NaN vector)."""


@dataclass(frozen=True)
class Layout:
    """What `inspect` found: the kind of samples, their shape, rows and classes."""

    kind: str  # "image" | "vector"
    sample_shape: tuple[int, ...]
    num_rows: int
    num_classes: int | None


# ---------------------------------------------------------------- units


def _listing(location: str, kind: str) -> tuple:
    """(filesystem, the data's files: pyarrow FileInfos sorted by path), or InputError."""
    suffixes = {".parquet"} if kind == "parquet" else IMAGE_SUFFIXES
    fs, found = storage.list_files(location, suffixes)
    if not found:
        what = "*.parquet files" if kind == "parquet" else f"images ({', '.join(sorted(IMAGE_SUFFIXES))})"
        raise InputError(f"data.path {location!r} holds no {what}")
    return fs, found


_FOOTERS: dict[tuple, pq.FileMetaData] = {}  # (path, size, mtime) -> footer, parsed once per process


def _footer(fs, path: str, version: tuple) -> pq.FileMetaData:
    """The file's footer, parsed once per process and `version` (size, mtime) of the file: a footer
    lists every row group, and each unit read would otherwise parse all of it again."""
    key = (path, *version)
    if key not in _FOOTERS:
        try:
            with fs.open_input_file(path) as f:
                _FOOTERS[key] = pq.ParquetFile(f).metadata
        except Exception as e:
            raise InputError(f"{path}: not a readable Parquet file ({' '.join(str(e).split())[:160]})") from None
        if len(_FOOTERS) > 256:
            _FOOTERS.pop(next(iter(_FOOTERS)))
    return _FOOTERS[key]


def _version(info) -> tuple:
    return info.size, info.mtime_ns


def units(spec: DataSpec) -> list[dict]:
    """Every unit of the data, in file order (the Ray Data pipeline visits them shuffled)."""
    return _units(spec, *_listing(spec.path, spec.name))


_UNITS: dict[tuple, list[dict]] = {}  # (kind, every file's path and version) -> its units


def _units(spec: DataSpec, fs, found: tuple) -> list[dict]:
    """The units of `found`, listed once per process and version of the files (the checks and the
    pipeline both need them)."""
    key = (spec.name, tuple((f.path, *_version(f)) for f in found))
    if key not in _UNITS:
        _UNITS[key] = _list_units(spec, fs, found)
        if len(_UNITS) > 8:
            _UNITS.pop(next(iter(_UNITS)))
    return list(_UNITS[key])


def _list_units(spec: DataSpec, fs, found: tuple) -> list[dict]:
    if spec.name == "imagefolder":
        paths = [f.path for f in found]
        return [
            {"path": "", "paths": paths[i : i + UNIT_ROWS], "version": [], "row_group": -1, "start": 0, "first_row": i}
            for i in range(0, len(paths), UNIT_ROWS)
        ]
    out = []
    for f in found:
        md, first = _footer(fs, f.path, _version(f)), 0
        for g in range(md.num_row_groups):
            rows = md.row_group(g).num_rows
            for start in range(0, rows, UNIT_ROWS):
                out.append(
                    {"path": f.path, "paths": [], "version": list(_version(f)), "row_group": g, "start": start,
                     "first_row": first + start}
                )  # fmt: skip
            first += rows
    return out


# ---------------------------------------------------------------- decoding


@dataclass(frozen=True)
class Decoder:
    """How rows become samples: the resolved options of a DataSpec."""

    kind: str
    shape: tuple[int, ...]  # (C, R, R) images, (dim,) vectors
    crop: str = "center"
    flip: bool = False
    resize: bool = True  # False: images must already be R x R (data.resolution unset)

    def image(self, blob: bytes, rng: np.random.Generator | None) -> np.ndarray:
        """uint8 [C, R, R] from encoded bytes; BadRow when it cannot be decoded or does not fit.
        `rng` None: no random crop or flip (reference images for the metrics)."""
        channels, size = self.shape[0], self.shape[1]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is a bad image
                with Image.open(io.BytesIO(blob)) as im:
                    im = im.convert("L" if channels == 1 else "RGB")
        except Exception as e:
            reason = re.sub(r" <_io\.BytesIO object at \w+>", "", " ".join(str(e).split()))[:120]
            raise BadRow(f"is not a readable image ({type(e).__name__}: {reason})") from None
        if (im.width, im.height) != (size, size):
            if not self.resize:
                raise BadRow(f"is {im.width}x{im.height}, the data is {size}x{size}; set data.resolution to resize it")
            im = _fit(im, size, self.crop, rng)
        if self.flip and rng is not None and rng.random() < 0.5:
            im = ImageOps.mirror(im)
        array = np.asarray(im, dtype=np.uint8)
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)

    def vector(self, value) -> np.ndarray:
        v = np.asarray(value, dtype=np.float32)
        if v.shape != self.shape:
            raise BadRow(f"is a vector of length {len(v)}, the data has length {self.shape[0]}")
        if not np.isfinite(v).all():
            raise BadRow("has NaN/Inf values; clean the data")
        return v


def _fit(im: Image.Image, size: int, crop: str, rng: np.random.Generator | None) -> Image.Image:
    if crop == "none":
        return im.resize((size, size), Image.Resampling.BICUBIC)
    scale = size / min(im.width, im.height)
    w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
    im = im.resize((w, h), Image.Resampling.BICUBIC)
    if crop == "random" and rng is not None:
        x, y = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
    else:
        x, y = (w - size) // 2, (h - size) // 2
    return im.crop((x, y, x + size, y + size))


def decoder(spec: DataSpec, layout: Layout) -> Decoder:
    return Decoder(layout.kind, layout.sample_shape, spec.crop, spec.flip, resize=spec.resolution is not None)


# ---------------------------------------------------------------- reading units


def _read_rows(spec: DataSpec, unit: dict, fs) -> tuple[list, list | None, list[str]]:
    """(values, labels or None, where each row is) of one unit."""
    if unit["paths"]:
        values = [storage.read_bytes(fs, p) for p in unit["paths"]]
        return values, None, list(unit["paths"])
    columns = [spec.column] + ([spec.label_column] if spec.label_column else [])
    table = _row_group(fs, unit, columns).slice(unit["start"], UNIT_ROWS)
    labels = table.column(spec.label_column).to_pylist() if spec.label_column else None
    where = [f"{unit['path']} row {unit['first_row'] + i}" for i in range(table.num_rows)]
    return table.column(spec.column).to_pylist(), labels, where


_GROUPS: OrderedDict[tuple, pa.Table] = OrderedDict()  # (path, version, group, columns) -> the group, newest last


def clear_caches() -> None:
    """Forget the footers, unit lists and row groups this process keeps: the next read parses and
    reads them again (a changed file is noticed without it: the caches key on size and mtime)."""
    _FOOTERS.clear()
    _UNITS.clear()
    _GROUPS.clear()


def _row_group(fs, unit: dict, columns: list[str]) -> pa.Table:
    """The unit's row group (`columns` only). A group longer than a unit is kept for its other slices
    while the kept groups fit GROUP_CACHE_BYTES, the oldest dropped first."""
    version = tuple(unit["version"])
    key = (unit["path"], version, unit["row_group"], tuple(columns))
    if key in _GROUPS:
        _GROUPS.move_to_end(key)
        return _GROUPS[key]
    with fs.open_input_file(unit["path"]) as f:
        table = pq.ParquetFile(f, metadata=_footer(fs, unit["path"], version)).read_row_group(
            unit["row_group"], columns=columns
        )
    if table.num_rows > UNIT_ROWS and table.nbytes <= GROUP_CACHE_BYTES:
        _GROUPS[key] = table
        while sum(t.nbytes for t in _GROUPS.values()) > GROUP_CACHE_BYTES:
            _GROUPS.popitem(last=False)
    return table


def read_unit(spec: DataSpec, dec: Decoder, num_classes: int | None, unit: dict, fs, rng=None) -> dict:
    """One unit as {"x": samples, "y": labels (when labeled), "skipped": how many rows were dropped}:
    uint8 [n, C, R, R] images or float32 [n, dim] vectors. A bad row raises InputError naming file,
    column and row (data.on_bad_image=fail) or is dropped and counted (skip)."""
    values, labels, where = _read_rows(spec, unit, fs)
    samples, kept, skipped = [], [], 0
    for i, value in enumerate(values):
        sample = _decode_row(spec, dec, value, where[i], rng)
        if sample is None:
            skipped += 1
        else:
            samples.append(sample)
            kept.append(i)
    x = np.stack(samples) if samples else np.zeros((0, *dec.shape), np.uint8 if dec.kind == "image" else np.float32)
    out = {"x": x, "skipped": skipped}
    if labels is not None:
        y = np.array([labels[i] for i in kept], dtype=np.int64)
        bad = np.flatnonzero((y < 0) | (y >= num_classes))
        if len(bad):
            row = where[kept[bad[0]]]
            raise InputError(f"{row}: label {y[bad[0]]} is not a class id in 0..{num_classes - 1}")
        out["y"] = y
    return out


def _decode_row(spec: DataSpec, dec: Decoder, value, where: str, rng) -> np.ndarray | None:
    """The sample of one row; None for a bad row under on_bad_image=skip, InputError under fail."""
    try:
        if value is None:
            raise BadRow("is null")
        return dec.image(value, rng) if dec.kind == "image" else dec.vector(value)
    except BadRow as e:
        if spec.on_bad_image == "fail":
            raise InputError(
                f"{where} (column {spec.column!r}) {e}; fix or remove it, or set data.on_bad_image=skip"
            ) from None
        return None


# ---------------------------------------------------------------- the checks on the driver


def inspect(spec: DataSpec) -> Layout:
    """Check the data and describe it, in time and memory bounded by the number of files (not rows)."""
    fs, found = _listing(spec.path, spec.name)
    if spec.name == "imagefolder":
        return _sampled_layout(spec, fs, found, "image", None, len(found), None)
    kind, vector_len, rows, max_label = None, None, 0, -1
    for f in found:
        md = _footer(fs, f.path, _version(f))
        schema = md.schema.to_arrow_schema()
        this, length = _column_kind(schema, spec.column, f.path)
        if kind and this != kind:
            raise InputError(f"{f.path}: column {spec.column!r} holds {this}s but earlier files hold {kind}s")
        kind, vector_len = this, vector_len or length
        if spec.label_column:
            max_label = max(max_label, _label_range(fs, f.path, md, schema, spec.label_column))
        if md.num_rows > UNIT_ROWS * md.num_row_groups:  # some groups are longer than a unit
            _warn_if_groups_are_large(f.path, md, [spec.column, spec.label_column])
        rows += md.num_rows
    if rows == 0:
        raise InputError(f"data.path {spec.path!r}: column {spec.column!r} is empty (0 rows in {len(found)} file(s))")
    num_classes = max_label + 1 if spec.label_column else None
    try:
        return _sampled_layout(spec, fs, found, kind, vector_len, rows, num_classes)
    finally:
        _GROUPS.clear()  # the driver keeps no row groups for the run


def _warn_if_groups_are_large(path: str, md, columns: list[str | None]) -> None:
    leaves = [i for i in range(md.num_columns) if md.schema.column(i).path in columns]
    groups = [md.row_group(g) for g in range(md.num_row_groups)]
    size, g = max((sum(rg.column(i).total_uncompressed_size for i in leaves), g) for g, rg in enumerate(groups))
    if size > GROUP_CACHE_BYTES:
        warnings.warn(
            f"{path}: row group {g} holds {groups[g].num_rows:,} rows ({size / 2**20:,.0f} MiB), too large to keep: "
            f"it is read whole for each {UNIT_ROWS}-row slice. Rewrite the file with smaller row groups "
            f"(pyarrow's row_group_size={UNIT_ROWS}) to read it once.",
            stacklevel=2,
        )


def _column_kind(schema: pa.Schema, column: str, path: str) -> tuple[str, int | None]:
    if column not in schema.names:
        raise InputError(f"{path}: no column {column!r} (columns: {', '.join(schema.names)}); set data.column")
    t = schema.field(column).type
    if (pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t)) and pa.types.is_floating(
        t.value_type
    ):
        return "vector", (t.list_size if pa.types.is_fixed_size_list(t) else None)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "image", None
    raise InputError(
        f"{path}: column {column!r} is {t}; expected binary (encoded images) or a list of floats (vectors)"
    )


def _label_range(fs, path: str, md, schema: pa.Schema, label: str) -> int:
    """The largest label of one file, from the row groups' statistics (read from the column only
    where a writer left no statistics); InputError for a non-integer type, nulls or negatives."""
    if label not in schema.names:
        raise InputError(f"{path}: no column {label!r} (columns: {', '.join(schema.names)}); set data.label_column")
    t = schema.field(label).type
    if not pa.types.is_integer(t):
        raise InputError(f"{path}: label column {label!r} is {t}; labels must be integer class ids 0..K-1")
    leaf = next(i for i in range(md.num_columns) if md.schema.column(i).path == label)
    lo, hi, nulls = math.inf, -1, 0
    for g in range(md.num_row_groups):
        stats = md.row_group(g).column(leaf).statistics
        if stats is None or not stats.has_min_max:
            with fs.open_input_file(path) as f:
                values = pq.ParquetFile(f, metadata=md).read_row_group(g, columns=[label]).column(label)
            lo_g, hi_g = pc.min(values).as_py(), pc.max(values).as_py()
            nulls += values.null_count
        else:
            lo_g, hi_g = stats.min, stats.max
            nulls += stats.null_count or 0
        if lo_g is not None:
            lo, hi = min(lo, lo_g), max(hi, hi_g)
    if nulls:
        raise InputError(f"{path}: label column {label!r} has {nulls} null rows; every row needs a class id")
    if lo < 0:
        raise InputError(f"{path}: label column {label!r} holds {lo}; labels must be class ids 0..K-1 (not negative)")
    return hi


def _sampled_layout(spec, fs, found, kind, vector_len, rows, num_classes) -> Layout:
    """Decode SAMPLE_IMAGES rows spread over the data: the sample shape (channels, size) comes from
    them, and a bad row among them is reported now, before Ray."""
    all_units = _units(spec, fs, found)
    sample = [all_units[i] for i in spread(len(all_units), 16)]
    per_unit = max(1, SAMPLE_IMAGES // len(sample))
    values, where = [], []
    for unit in sample:
        v, _, w = _read_rows(spec, unit, fs)
        for i in spread(len(v), per_unit):
            values.append(v[i])
            where.append(w[i])
    if kind == "vector":
        dim = vector_len or next((len(v) for v in values if v is not None), 0)
        layout = Layout("vector", (dim,), rows, num_classes)
    else:
        layout = Layout("image", _image_shape(spec, values, where), rows, num_classes)
    dec = decoder(spec, layout)
    for value, w in zip(values, where):
        _decode_row(spec, dec, value, w, None)
    return layout


def _image_shape(spec: DataSpec, blobs: list, where: list[str]) -> tuple[int, int, int]:
    """(C, R, R): data.channels/resolution, or what the sampled images agree on."""
    sizes, modes, unreadable = {}, set(), None
    for blob, w in zip(blobs, where):
        try:
            with Image.open(io.BytesIO(blob)) as im:  # the header only: no pixels decoded
                sizes.setdefault(im.size, w)
                modes.add(im.mode)
        except Exception as e:  # reported by the decode that follows (or skipped)
            unreadable = unreadable or f"{w} (column {spec.column!r}) is not a readable image ({type(e).__name__})"
    if not sizes:
        raise InputError(f"{unreadable}; none of the {len(blobs)} sampled images could be read")
    channels = spec.channels or (1 if modes <= GRAYSCALE_MODES else 3)
    if spec.resolution:
        return channels, spec.resolution, spec.resolution
    (w, h), first = next(iter(sizes.items()))
    if len(sizes) > 1:
        (w2, h2), second = list(sizes.items())[1]
        raise InputError(
            f"mixed image sizes: {first} is {w}x{h} but {second} is {w2}x{h2}; set data.resolution "
            "(images are resized and cropped to it)"
        )
    if w != h:
        raise InputError(f"{first} is {w}x{h}, not square; set data.resolution (and data.crop) to train on it")
    if w < 8:
        raise InputError(f"{first} is {w}x{h}; images smaller than 8x8 are not supported: set data.resolution")
    return channels, w, w


def fingerprint(spec: DataSpec) -> str:
    """10 hex digits that change with the data: the column, and each file's relative path, size and
    first and last 64 KiB (bounded work however large the data; Parquet keeps its footer at the end).
    The same data anywhere, local or in a bucket, gives the same digest."""
    fs, found = _listing(spec.path, spec.name)
    root = storage.resolve(spec.path)[1]
    h = hashlib.sha256(f"{spec.column}|{spec.label_column}".encode())
    for path, size in ((f.path, f.size) for f in found):
        with fs.open_input_file(path) as f:
            head = f.read(min(size, 1 << 16))
            f.seek(max(0, size - (1 << 16)))
            tail = f.read()
        relative = path[len(root) :].lstrip("/") if path != root else path.rsplit("/", 1)[-1]
        h.update(f"{relative}|{size}|".encode() + head + tail)
    return h.hexdigest()[:10]


# ---------------------------------------------------------------- reference images


def spread(n: int, limit: int) -> np.ndarray:
    """`limit` indices spread evenly over n rows (data is often sorted by class)."""
    return np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(int))


def sample(spec: DataSpec, layout: Layout, limit: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Up to `limit` samples spread over the data, as the metrics' reference: images as float32
    [N, C, H, W] in [-1, 1] (center crop, no flip), and their labels when the data has them. Whole
    units spread evenly, so the time is bounded by `limit`, not by the data."""
    fs, found = _listing(spec.path, spec.name)
    all_units = _units(spec, fs, found)
    picked = [all_units[i] for i in spread(len(all_units), math.ceil(limit / UNIT_ROWS) + 1)]
    lenient = spec.model_copy(update={"on_bad_image": "skip"})  # the training run decides what bad rows mean
    # no rng: the centre crop and no flip, whatever data.crop and data.flip say
    try:
        parts = [read_unit(lenient, decoder(spec, layout), layout.num_classes, u, fs) for u in picked]
    finally:
        _GROUPS.clear()
    x = np.concatenate([p["x"] for p in parts])
    keep = spread(len(x), limit)
    if layout.kind == "image":
        x = x.astype(np.float32) / 127.5 - 1.0
    labels = np.concatenate([p["y"] for p in parts])[keep] if layout.num_classes else None
    return x[keep], labels
