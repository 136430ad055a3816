"""Image datasets into training Parquet, as StyleGAN's dataset_tool does for StyleGAN: an image
folder, a zip of one, MNIST idx files or a .npz array become shards of PNG bytes (column `image`)
and int64 class ids (column `label`), class names in the schema metadata (`distgan.classes`).

`open_source` detects the kind of source from a table and returns its images lazily, in source
order; `write` converts them and writes the shards under a temporary name, renamed into place
only when the whole dataset is written.
"""

from __future__ import annotations

import gzip
import io
import json
import operator
import os
import re
import shutil
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps

from distgan import storage
from distgan.data import files
from distgan.errors import InputError

# The trainer reads and shuffles Parquet a unit at a time (a row group, or a slice of a longer one,
# read again for every slice): row groups of one unit make a well-mixed shuffle and no repeated reads.
ROW_GROUP_ROWS = files.UNIT_ROWS
CLASSES_KEY = b"distgan.classes"
SKIPPED_NAMED = 5  # bad images named in the result (all are counted)


@dataclass
class Source:
    """The images of one SRC: `items` yields (name, load, class id or None), where load() reads the
    encoded bytes or the uint8 array (called where a failure makes a bad image, not a failed build)."""

    kind: str
    count: int
    classes: list[str] | None
    items: Iterator[tuple[str, Callable[[], bytes | np.ndarray], int | None]]


@dataclass(frozen=True)
class Options:
    resolution: int | None = None  # square output: shorter side resized to it, then center-cropped
    channels: int | None = None  # 1 or 3; None: grayscale stays 1, everything else becomes RGB
    limit: int | None = None  # the first N images
    shard_mb: float = 256  # encoded image bytes per shard
    strict: bool = False  # the first bad image is an error (else skipped and counted)
    overwrite: bool = False


@dataclass
class Written:
    images: int = 0
    skipped: int = 0
    skipped_names: list[str] = field(default_factory=list)  # the first SKIPPED_NAMED of them
    bytes: int = 0
    files: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- sources


def _labels(names: list[str | None]) -> tuple[list[str] | None, list[int | None]]:
    """Class names sorted, and each item's class id (None everywhere for unlabeled items)."""
    if all(n is None for n in names):
        return None, [None] * len(names)
    classes = sorted(set(names))
    ids = {c: i for i, c in enumerate(classes)}
    return classes, [ids[n] for n in names]


def _layout(paths: list[PurePosixPath], where: str) -> tuple[list[str] | None, list[int | None]]:
    """ImageFolder's rule on paths relative to the root: the first folder is the class; images at
    the top have none. Both at once is ambiguous and refused."""
    top = [p for p in paths if len(p.parts) == 1]
    if top and len(top) < len(paths):
        raise InputError(
            f"{where} has images at its top ({top[0]}) and in class subfolders: put every image in a class "
            "folder (labeled data) or all at the top (unlabeled)"
        )
    return _labels([p.parts[0] if len(p.parts) > 1 else None for p in paths])


def _is_image(name: str) -> bool:
    p = PurePosixPath(name)
    return p.suffix.lower() in files.IMAGE_SUFFIXES and not any(part.startswith(".") for part in p.parts)


def read_folder(src: Path) -> Source:
    paths = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    paths = [PurePosixPath(p) for p in paths if _is_image(p)]
    classes, ids = _layout(paths, str(src))
    items = ((str(src / p), (src / p).read_bytes, i) for p, i in zip(paths, ids))
    return Source("folder", len(paths), classes, items)


def read_zip(src: Path) -> Source:
    archive = zipfile.ZipFile(src)
    names = sorted(n for n in archive.namelist() if not n.endswith("/") and _is_image(n))
    paths = [PurePosixPath(n) for n in names]
    # Zipping a folder puts everything under its name: read such a zip from inside that folder.
    if paths and all(len(p.parts) > 1 for p in paths) and len({p.parts[0] for p in paths}) == 1:
        paths = [PurePosixPath(*p.parts[1:]) for p in paths]
    classes, ids = _layout(paths, str(src))
    items = ((f"{src}:{n}", partial(archive.read, n), i) for n, i in zip(names, ids))
    return Source("zip", len(names), classes, items)


def _read_idx(path: Path) -> np.ndarray:
    """An idx array (the MNIST format: a big-endian header, then unsigned bytes)."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise InputError(f"{path}: cannot read it ({type(e).__name__}: {e})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise InputError(f"{path}: not an idx file of unsigned bytes (MNIST format: magic 0x0000080N)")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", ndim, offset=4))
    if len(raw) != 4 + 4 * ndim + int(np.prod(shape)):
        raise InputError(f"{path}: {len(raw)} bytes do not hold the {shape} array its header declares")
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _value_classes(labels: np.ndarray, where: str) -> tuple[list[str], np.ndarray]:
    """Class ids 0..K-1 for integer label values (MNIST's 0..9 stay as they are), named by the values."""
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{where}: labels must be one integer per image, got {labels.dtype} of shape {labels.shape}")
    values, ids = np.unique(labels, return_inverse=True)
    return [str(v) for v in values], ids


def _array_source(kind: str, images: np.ndarray, labels: np.ndarray | None, where: str) -> Source:
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3, 4)):
        raise InputError(
            f"{where}: images must be uint8 [N, H, W] or [N, H, W, C] with C 1, 3 or 4; got {images.dtype} "
            f"of shape {images.shape}"
        )
    classes, ids = None, [None] * len(images)
    if labels is not None:
        if len(labels) != len(images):
            raise InputError(f"{where}: {len(labels)} labels for {len(images)} images")
        classes, ids = _value_classes(labels, where)
        ids = ids.tolist()
    items = ((f"{where}[{i}]", partial(operator.getitem, images, i), ids[i]) for i in range(len(images)))
    return Source(kind, len(images), classes, items)


def read_idx(src: Path) -> Source:
    """MNIST's images file, with its labels file when there is one beside it (gzipped or not)."""
    stem = re.sub(r"images([.-])idx3", r"labels\1idx1", src.name.removesuffix(".gz"))
    pair = [src.with_name(n) for n in (stem, f"{stem}.gz") if n != src.name.removesuffix(".gz")]
    found = [p for p in pair if p.is_file()]
    return _array_source("idx", _read_idx(src), _read_idx(found[0]) if found else None, str(src))


def read_npz(src: Path) -> Source:
    try:
        arrays = np.load(src, allow_pickle=False)
        key = next((k for k in ("x", "images", "arr_0") if k in arrays.files), None)
        label_key = next((k for k in ("y", "labels") if k in arrays.files), None)
        images, labels = (arrays[key] if key else None), (arrays[label_key] if label_key else None)
    except Exception as e:  # not a zip of .npy files, or arrays of Python objects (never unpickled)
        raise InputError(f"{src}: not a readable .npz file ({type(e).__name__}: {e})") from None
    if images is None:
        raise InputError(f"{src}: no images array (keys x, images or arr_0); it holds {', '.join(arrays.files)}")
    return _array_source("npz", images, labels, str(src))


# (test on SRC, reader): the first that matches reads it
SOURCES: list[tuple[Callable[[Path], bool], Callable[[Path], Source]]] = [
    (lambda p: p.is_dir(), read_folder),
    (lambda p: p.suffix.lower() == ".zip", read_zip),
    (lambda p: p.suffix.lower() == ".npz", read_npz),
    (lambda p: re.search(r"idx\d-ubyte(\.gz)?$", p.name) is not None, read_idx),
]


def open_source(src: str) -> Source:
    """The images of SRC; InputError when it is missing, of no known kind, or holds no images."""
    if storage.is_remote(src):
        raise InputError(f"{src}: data build reads local sources; copy it here first")
    path = Path(src).expanduser()
    if not path.exists():
        raise InputError(f"{src} does not exist")
    reader = next((read for matches, read in SOURCES if matches(path)), None)
    if reader is None:
        raise InputError(
            f"{src}: not a source data build knows: an image folder, a .zip of images, an MNIST idx file "
            "(*-images-idx3-ubyte[.gz]) or a .npz"
        )
    try:
        source = reader(path)
    except zipfile.BadZipFile as e:
        raise InputError(f"{src}: not a readable zip ({e})") from None
    if source.count == 0:
        raise InputError(f"{src} holds no images ({', '.join(sorted(files.IMAGE_SUFFIXES))})")
    return source


# ---------------------------------------------------------------- converting


class BadImage(Exception):
    pass


def _decoded(load: Callable[[], bytes | np.ndarray]) -> Image.Image:
    try:
        payload = load()
        if isinstance(payload, np.ndarray):
            return Image.fromarray(payload[..., 0] if payload.ndim == 3 and payload.shape[2] == 1 else payload)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # over MAX_IMAGE_PIXELS: a bad image
            im = Image.open(io.BytesIO(payload))
            im.load()
            return im
    except Image.UnidentifiedImageError:
        raise BadImage("not a format PIL decodes, or corrupt") from None
    except Exception as e:
        raise BadImage(f"{type(e).__name__}: {' '.join(str(e).split())[:120]}") from None


def png(load: Callable[[], bytes | np.ndarray], options: Options) -> bytes:
    """The PNG bytes of one image, in the channels and at the resolution asked for; BadImage when
    it cannot be read or decoded."""
    im = _decoded(load)
    if im.mode == "P":  # a palette's transparency is read through RGBA
        im = im.convert("RGBA")
    channels = options.channels or (1 if im.mode in files.GRAYSCALE_MODES else 3)
    mode = "L" if channels == 1 else "RGB"
    if im.mode != mode:
        im = im.convert(mode)
    if options.resolution:
        size = (options.resolution, options.resolution)
        im = ImageOps.fit(im, size, Image.Resampling.LANCZOS)  # the shorter side to N, the center kept
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- writing


def check_out(out: str, overwrite: bool) -> Path:
    """OUT as a local path; InputError when it exists with something in it and overwrite is off."""
    if storage.is_remote(out):
        raise InputError(f"{out}: data build writes to a local path; copy the result up afterwards")
    path = Path(out).expanduser().absolute()
    if not overwrite and path.exists() and (path.is_file() or any(path.iterdir())):
        raise InputError(f"{out} exists and is not empty; pass --overwrite to replace it, or choose another OUT")
    return path


def _schema(classes: list[str] | None) -> pa.Schema:
    if classes is None:
        return pa.schema([("image", pa.binary())])
    return pa.schema([("image", pa.binary()), ("label", pa.int64())], metadata={CLASSES_KEY: json.dumps(classes)})


class _Shards:
    """Parquet files of at most `shard_bytes` image bytes each (one image more than that is a shard
    of its own), in `folder`, row groups of ROW_GROUP_ROWS rows."""

    def __init__(self, folder: Path, schema: pa.Schema, shard_bytes: int):
        self.folder, self.schema, self.shard_bytes = folder, schema, shard_bytes
        self.writer: pq.ParquetWriter | None = None
        self.rows: list[tuple[bytes, int | None]] = []
        self.shard_size = 0
        self.files: list[Path] = []

    def add(self, image: bytes, label: int | None) -> None:
        if self.writer is None or (self.shard_size and self.shard_size + len(image) > self.shard_bytes):
            self._next_shard()
        self.rows.append((image, label))
        self.shard_size += len(image)
        if len(self.rows) == ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            columns = [[r[0] for r in self.rows]] + ([[r[1] for r in self.rows]] if len(self.schema) == 2 else [])
            self.writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))
            self.rows = []

    def _next_shard(self) -> None:
        self.close()
        self.files.append(self.folder / f"part-{len(self.files):05d}.parquet")
        # PNG is compressed already; statistics only for the labels (the trainer reads their range)
        self.writer = pq.ParquetWriter(
            self.files[-1], self.schema, compression={"image": "none", "label": "snappy"}, write_statistics=["label"]
        )
        self.shard_size = 0

    def close(self) -> None:
        if self.writer is not None:
            self._flush()
            self.writer.close()
            self.writer = None


def _put_in_place(tmp: Path, files: list[Path], out: Path) -> list[Path]:
    """The shards moved to OUT (one file when OUT ends in .parquet and one shard holds it all), the
    old OUT removed only after the new one is in place."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    if out.suffix == ".parquet" and len(files) == 1:
        files[0].rename(out)
        shutil.rmtree(tmp)
        placed = [out]
    else:
        tmp.rename(out)
        placed = [out / f.name for f in files]
    if old.is_dir():
        shutil.rmtree(old)
    elif old.exists():
        old.unlink()
    return placed


def write(source: Source, out: Path, options: Options, on_item: Callable[[], None] = lambda: None) -> Written:
    """Convert every image of `source` and write the dataset to `out`, whole or not at all: the
    shards go to a temporary folder beside OUT, moved into place at the end. A bad image is skipped
    and counted, or under `options.strict` an InputError naming it (and nothing is left behind)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.mkdir()
    done = Written()
    try:
        shards = _Shards(tmp, _schema(source.classes), int(options.shard_mb * 2**20))
        for name, load, label in source.items:
            if options.limit is not None and done.images >= options.limit:
                break
            on_item()  # written or skipped
            try:
                image = png(load, options)
            except BadImage as e:
                if options.strict:
                    raise InputError(f"{name} is not a readable image ({e}); remove it, or drop --strict") from None
                done.skipped += 1
                if len(done.skipped_names) < SKIPPED_NAMED:
                    done.skipped_names.append(name)
                continue
            shards.add(image, label)
            done.images += 1
            done.bytes += len(image)
        shards.close()
        if done.images == 0:
            raise InputError(f"none of the {done.skipped} images could be read (first: {done.skipped_names[0]})")
        done.files = [str(p) for p in _put_in_place(tmp, shards.files, out)]
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return done
