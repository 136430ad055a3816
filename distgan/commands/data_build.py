"""`distgan data build`: an image folder, a zip, MNIST idx files or a .npz into training Parquet."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from distgan.data import build as data_build
from distgan.errors import InputError


@dataclass
class DataBuildResult:
    """The outcome of a build; `to_json()` is the `--json-out` document (see README)."""

    status: str  # finished
    source: str
    source_kind: str  # folder | zip | idx | npz
    out: str
    images: int
    skipped: int
    skipped_files: list[str]  # the first few skipped images
    classes: list[str] | None
    shards: int
    bytes: int  # encoded image bytes written
    files: list[str]
    wall_s: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def build(src: str, out: str, options: data_build.Options, progress: bool = True) -> DataBuildResult:
    """Build the Parquet dataset OUT from SRC: OUT is checked before anything is read or written."""
    start = time.perf_counter()
    out_path = data_build.check_out(out, options.overwrite)
    src_path = Path(src).expanduser().absolute()
    if out_path == src_path or src_path in out_path.parents or out_path in src_path.parents:
        raise InputError(f"OUT {out} and SRC {src} overlap; write the dataset somewhere else")
    source = data_build.open_source(src)
    total = min(source.count, options.limit) if options.limit is not None else source.count
    with tqdm(total=total, unit="img", disable=not progress, desc="data build") as bar:
        written = data_build.write(source, out_path, options, on_item=bar.update)
    return DataBuildResult(
        "finished",
        src,
        source.kind,
        str(out_path),
        written.images,
        written.skipped,
        written.skipped_names,
        source.classes,
        len(written.files),
        written.bytes,
        written.files,
        round(time.perf_counter() - start, 3),
    )
