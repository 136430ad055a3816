"""The user-data path, measured as ratios in one run (this machine is noisy):

1. ingest: images/s that distgan's Ray Data pipeline delivers to a training loop (read, decode,
   resize in map tasks; the worker's shuffle buffer; uint8 -> float) vs a bare
   `torch.utils.data.DataLoader` with the same number of (persistent) worker processes running the
   same decode over the same Parquet files, at 32 and 64 px. Both are timed over as many images as
   one pass of distgan's pipeline holds, after a warm-up epoch: the pause at the start of each pass
   is in the figure at its real rate. Target >= 1.0.
   Also the copy `distgan search` decodes once for all its trials vs streaming (decoding every epoch),
   and the same images written as one row group (pandas' and pyarrow's default) vs 128-row groups.
2. checks: wall time and peak memory (max RSS of a fresh process) of the driver's checks
   (`data.inspect`, the unit list, the fingerprint) on 100k rows vs 10k rows, in eleven alternating
   fresh processes (medians). Time twice: the first checks of a process, and the checks repeated in
   it with distgan's caches cleared (their own work, without one-time start-up costs). Target <= 1.2.
3. step: the digits job's training step (its `step_time` after two warm-up eval intervals, as
   `ray_overhead.py` times it: eval and checkpoints not in it) run by `distgan train` on the digits
   written as a Parquet file of PNGs (streaming through Ray Data) vs on the in-memory built-in
   digits at the same resolution; one torch thread, so the Train worker holds one CPU and Ray Data
   the other, as a real job on a 2-CPU machine lays them out. Timed over at least one pass of the
   pipeline (one pause), in-memory before and after. Target <= 1.10.

    python benchmarks/data_pipeline.py [--procs 1] [--images 3072] [--parts ingest checks step]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from distgan import data, storage
from distgan.data import builtin, files
from distgan.spec.job import DataSpec, load_spec

REPO = Path(__file__).parents[1]


def png(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def photo_like(n: int, size: int, seed: int = 0) -> list[bytes]:
    """Smooth colour fields plus a little noise: PNGs of about photo-like size and decode cost."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        a = rng.uniform(0, 6, (3, 3))
        rgb = np.stack([np.sin(a[c, 0] * xx + a[c, 1] * yy + a[c, 2]) for c in range(3)], -1)
        img = (127 + 100 * rgb + rng.normal(0, 8, rgb.shape)).clip(0, 255).astype(np.uint8)
        out.append(png(img))
    return out


# ------------------------------------------------------------------ 1. ingest


class UnitDataset(torch.utils.data.IterableDataset):
    """The bare baseline: the same units and the same decode, in DataLoader worker processes."""

    def __init__(self, spec: DataSpec, layout: files.Layout):
        self.spec, self.layout, self.units = spec, layout, files.units(spec)
        self.fs = storage.resolve(spec.path)[0]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        mine = self.units[info.id :: info.num_workers] if info else self.units
        dec = files.decoder(self.spec, self.layout)
        for unit in mine:
            part = files.read_unit(self.spec, dec, None, unit, self.fs)
            yield from part["x"]


def _pass_rows(spec: DataSpec, info) -> int:
    from distgan.runtime import ray_data

    return ray_data.pass_repeats(len(files.units(spec))) * info.num_rows


def _delivered(ds, info, batch: int, warmup: int, timed: int) -> float:
    """img/s a ShardStream delivers from `ds`: `timed` images after `warmup`."""
    stream = iter(data.ShardStream(ds.streaming_split(1)[0], batch, seed=0, info=info))
    for n in (warmup, timed):
        t0, seen = time.perf_counter(), 0
        while seen < n:
            x, _ = next(stream)
            seen += len(data.to_unit_range(x))
    stream.close()
    time.sleep(1)  # Ray Data's prefetch threads wind down; one still running at ray.shutdown() ends the process
    return seen / (time.perf_counter() - t0)


def ingest(path: Path, resolution: int, procs: int, batch: int, one_group: Path | None = None) -> tuple:
    import ray

    from distgan.runtime import ray_data

    spec = DataSpec(name="parquet", path=str(path), column="image", resolution=resolution)
    info = data.inspect(spec)
    warmup, timed = info.num_rows // batch * batch, _pass_rows(spec, info) // batch * batch

    loader = torch.utils.data.DataLoader(
        UnitDataset(spec, files.Layout(info.kind, info.sample_shape, info.num_rows, None)),
        batch_size=batch,
        num_workers=procs,
        drop_last=True,
        persistent_workers=True,
    )
    batches = (x for _epoch in itertools.count() for x in loader)  # epoch after epoch
    for n in (warmup, timed):
        t0, seen = time.perf_counter(), 0
        while seen < n:
            seen += len(data.to_unit_range(next(batches)))
    bare = seen / (time.perf_counter() - t0)
    del batches, loader

    one = None  # img/s from `one_group`, when given
    ray.init(num_cpus=procs, include_dashboard=False, log_to_driver=False)
    try:
        ours = _delivered(ray_data.datasets(spec, info)["train"], info, batch, warmup, timed)
        decoded = _delivered(ray_data.datasets(spec, info, materialize=True)["train"], info, batch, warmup, timed)
        if one_group is not None:  # the same rows in one row group: each is read from the group kept in memory
            spec = spec.model_copy(update={"path": str(one_group)})
            one = _delivered(ray_data.datasets(spec, data.inspect(spec))["train"], info, batch, warmup, timed)
    finally:
        ray.shutdown()
    return ours, bare, decoded, one


# ------------------------------------------------------------------ 2. checks

CHECK = """
import resource, sys, time
from distgan import data
from distgan.data import files
from distgan.spec.job import DataSpec
spec = DataSpec(name="parquet", path=sys.argv[1], column="image", label_column="label")
def checks():
    t = time.perf_counter()
    data.inspect(spec)
    files.units(spec)
    files.fingerprint(spec)
    return time.perf_counter() - t
first = checks()
rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
again = []
for _ in range(5):
    files.clear_caches()
    again.append(checks())
print(first, sorted(again)[2], rss_kb)
"""


def checks(path: Path) -> tuple[float, float, int]:
    """(the first checks in a fresh process s, the median of five more in it with distgan's caches
    cleared s, max RSS KiB after the first). The first includes one-time costs common to any data
    (lazy imports, PIL's plugins) and the noise of a new process; the repeats time the checks' own
    work, so their ratio is the stricter measure of growth with the rows."""
    out = subprocess.run([sys.executable, "-c", CHECK, str(path)], capture_output=True, text=True, check=True)
    first, again, rss_kb = out.stdout.split()
    return float(first), float(again), int(rss_kb)


def labeled_digits_parquet(path: Path, rows: int) -> None:
    digits = ((builtin.digits_array()[:, 0] + 1) * 127.5).round().astype(np.uint8)
    blobs = [png(d) for d in digits]
    labels = builtin.digits_labels()
    pick = np.arange(rows) % len(blobs)
    table = pa.table({"image": [blobs[i] for i in pick], "label": labels[pick]})
    pq.write_table(table, path, row_group_size=files.UNIT_ROWS)


# ------------------------------------------------------------------ 3. step


def streaming_vs_memory(tmp: Path, warmup: int) -> tuple[float, float, int]:
    """(streaming s/step, in-memory s/step, timed steps): the digits job's `step_time` in `distgan
    train` runs (`ray_overhead.ray_step_time`: after two warm-up eval intervals, eval and checkpoints
    not in it) on the built-in digits (before and after: drift cancels) and on the same digits as a
    Parquet file of PNGs, timed over at least one pass of the pipeline (one pause)."""
    from ray_overhead import ray_step_time  # this script's folder is on sys.path when it runs

    path = tmp / "digits.parquet"
    labeled_digits_parquet(path, 1797)
    common = [
        "scaling.cpus_per_worker=1",  # one torch thread: the Train worker holds one CPU, Ray Data the other
        "metrics.feature_net=digits",  # the same evals on both (their time is not in step_time)
    ]
    memory = load_spec(REPO / "jobs" / "digits.yaml", common)
    parquet = ["data.name=parquet", f"data.path={path}", "data.column=image", "data.label_column=label"]
    streaming = load_spec(REPO / "jobs" / "digits.yaml", [*common, *parquet])
    pass_steps = _pass_rows(streaming.data, data.inspect(streaming.data)) / memory.train.batch_size
    timed = math.ceil(pass_steps / warmup) * warmup
    before = ray_step_time(memory, timed, warmup, str(tmp / "memory-before"))
    streamed = ray_step_time(streaming, timed, warmup, str(tmp / "streaming"))
    after = ray_step_time(memory, timed, warmup, str(tmp / "memory-after"))
    return streamed, (before + after) / 2, timed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, default=1, help="DataLoader workers = Ray Data CPUs")
    p.add_argument("--images", type=int, default=3072)
    p.add_argument("--parts", nargs="+", choices=("ingest", "checks", "step"), default=["ingest", "checks", "step"])
    args = p.parse_args()
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="rb-", dir="/tmp"))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = []
        if "ingest" in args.parts:
            photos = tmp / "photos.parquet"
            table = pa.table({"image": photo_like(args.images, 96)})
            pq.write_table(table, photos, row_group_size=files.UNIT_ROWS)
            pq.write_table(table, one_group := tmp / "photos-one-group.parquet")  # pandas' and pyarrow's default
            for res in (32, 64):
                ours, bare, decoded, one = ingest(photos, res, args.procs, 64, one_group if res == 32 else None)
                name = f"ingest {res}px, {args.procs} proc: distgan / DataLoader img/s"
                rows.append((name, ours, bare, ours / bare))
                name = f"ingest {res}px: decoded once (search) / streaming img/s"
                rows.append((name, decoded, ours, decoded / ours))
                if one is not None:
                    name = f"ingest {res}px: one row group / {files.UNIT_ROWS}-row groups img/s"
                    rows.append((name, one, ours, one / ours))
        if "checks" in args.parts:
            small, large = tmp / "10k.parquet", tmp / "100k.parquet"
            labeled_digits_parquet(small, 10_000)
            labeled_digits_parquet(large, 100_000)
            runs = [(checks(small), checks(large)) for _ in range(11)]  # alternating; medians of eleven processes
            first_s, again_s, rss_s = np.median([r[0] for r in runs], axis=0)  # 10k rows
            first_l, again_l, rss_l = np.median([r[1] for r in runs], axis=0)  # 100k rows
            rows.append(("driver checks time s, repeated: 100k / 10k rows", again_l, again_s, again_l / again_s))
            name = "driver checks time s, first in a process: 100k / 10k rows"
            rows.append((name, first_l, first_s, first_l / first_s))
            rows.append(("driver checks max RSS KiB: 100k / 10k rows", rss_l, rss_s, rss_l / rss_s))
        if "step" in args.parts:
            stream_s, memory_s, steps = streaming_vs_memory(tmp, 250)
            name = f"digits job step s ({steps} steps, distgan train): streaming / in-memory"
            rows.append((name, stream_s, memory_s, stream_s / memory_s))
    width = max(len(r[0]) for r in rows)
    for name, a, b, ratio in rows:
        print(f"{name:{width}}  {a:12.4g}  {b:12.4g}  ratio {ratio:.3f}")
    print(json.dumps({r[0]: round(r[3], 3) for r in rows}))


if __name__ == "__main__":
    main()
