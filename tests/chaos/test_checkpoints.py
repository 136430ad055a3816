"""A checkpoint that breaks never breaks the resume: the newest `state.pt` cut short, gone, or with
bytes flipped, and the run resumes from the checkpoint before it with one warning naming both, ends
at exactly `train.steps`, and records each step once. Written whole or not at all, with a checksum."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import metric_steps

from distgan import data
from distgan.core import checkpoint, loop
from distgan.errors import InputError
from distgan.spec.job import load_spec
from distgan.tracking.record import RunRecord

SMALL = [
    "train.batch_size=64",
    "train.eval_every=10",
    "train.checkpoint_every=10",
    "train.eval_samples=200",
    "train.final_eval_seeds=1",
    "model.g_hidden=[32,32]",
    "model.d_hidden=[32,32]",
]


def _run(run_dir: Path, steps: int, lines: list[str] | None = None):
    spec = load_spec(None, [*SMALL, f"train.steps={steps}"])
    session = loop.LocalSession(run_dir, echo=(lines if lines is not None else []).append)
    return loop.run(spec, data.inspect(spec.data), session, RunRecord(run_dir / "distgan")), session


def _truncate(state: Path) -> str:
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    return "does not match its sha256"


def _delete(state: Path) -> str:
    state.unlink()
    return "no state.pt"


def _flip_bytes(state: Path) -> str:
    raw = bytearray(state.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 8] = bytes(b ^ 0xFF for b in raw[middle : middle + 8])  # same length, other bytes
    state.write_bytes(bytes(raw))
    return "does not match its sha256"


@pytest.mark.parametrize("damage", [_truncate, _delete, _flip_bytes], ids=["truncated", "deleted", "flipped"])
def test_a_broken_newest_checkpoint_falls_back_to_the_one_before(tmp_path, damage):
    run_dir = tmp_path / "run"
    _run(run_dir, 20)
    assert [p.name for p in sorted(run_dir.glob("checkpoint_*"))] == ["checkpoint_0000010", "checkpoint_0000020"]
    newest, previous = run_dir / "checkpoint_0000020", run_dir / "checkpoint_0000010"
    why = damage(newest / checkpoint.CHECKPOINT_FILE)

    lines: list[str] = []
    result, session = _run(run_dir, 30, lines)

    warnings = [line for line in lines if line.startswith("warning: checkpoint")]
    assert len(warnings) == 1, lines
    assert str(newest) in warnings[0] and why in warnings[0]
    assert f"resuming from {previous} (step 10)" in warnings[0]
    assert result["resumed_from"] == 10 and result["steps"] == 30 and result["status"] == "finished"
    assert [r["step"] for r in session.reports] == [20, 30]  # steps 11-20 trained again
    assert metric_steps(run_dir) == [10, 20, 30]  # each eval once: the broken attempt's row replaced
    assert checkpoint.read(session.latest_checkpoint())["step"] == 30


def test_no_usable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    run_dir = tmp_path / "run"
    _run(run_dir, 20)
    for state in run_dir.glob("checkpoint_*/state.pt"):
        _truncate(state)
    with pytest.raises(
        RuntimeError, match=r"no checkpoint in \S+/run verifies: .*checkpoint_0000020.*checkpoint_0000010"
    ):
        _run(run_dir, 30)


def test_a_checkpoint_is_written_whole_with_its_checksum(tmp_path):
    import hashlib

    path = checkpoint.write(tmp_path, {"step": 7, "w": torch.arange(5.0)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt", "state.pt.sha256"]  # no temporary left
    assert (tmp_path / "state.pt.sha256").read_text() == hashlib.sha256(path.read_bytes()).hexdigest()
    assert checkpoint.read(tmp_path)["step"] == 7 and checkpoint.read(path)["step"] == 7


def test_reading_a_corrupt_checkpoint_says_which_and_why(tmp_path):
    checkpoint.write(tmp_path, {"step": 7})
    _flip_bytes(tmp_path / "state.pt")
    with pytest.raises(InputError, match=f"checkpoint {tmp_path} is unusable .*does not match its sha256"):
        checkpoint.read(tmp_path)


def test_a_failed_write_leaves_no_partial_state(tmp_path):
    class Unpicklable:  # torch.save fails half way, as a full disk would
        def __reduce__(self):
            raise OSError(28, "No space left on device")

    checkpoint.write(tmp_path, {"step": 1})
    before = (tmp_path / "state.pt").read_bytes()
    with pytest.raises(OSError, match="No space left"):
        checkpoint.write(tmp_path, {"step": 2, "bad": Unpicklable()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt", "state.pt.sha256"]
    assert (tmp_path / "state.pt").read_bytes() == before and checkpoint.read(tmp_path)["step"] == 1


FULL_DISK = r"""
set -e
mount -t tmpfs -o size=10m tmpfs "$STORE"  # room for one checkpoint of these 256-wide nets, not two
train() { python -m distgan train --no-tracking --name full --set train.storage_path="$STORE" \
    --set 'model.g_hidden=[256,256,256]' --set 'model.d_hidden=[256,256,256]' \
    --set train.steps=60 --set train.eval_every=20 --set train.checkpoint_every=20 --set train.batch_size=64 \
    --set train.eval_samples=200 --set train.final_eval_seeds=1 --set train.max_failures=0 "$@"; }
rc=0; train --json-out "$OUT/full.json" 2> "$OUT/full.stderr" || rc=$?; echo "$rc" > "$OUT/full.rc"
python -c "
import json, sys
from distgan.core import checkpoint
found = {}
for c in checkpoint.checkpoints(sys.argv[1]):
    try:
        found[c] = checkpoint._verified(c)['step']
    except checkpoint.BadCheckpoint as e:
        found[c] = str(e)
json.dump(found, open(sys.argv[2], 'w'))
" "$STORE/full" "$OUT/checkpoints.json"
mount -o remount,size=64m "$STORE"  # room again: the same name resumes
train --json-out "$OUT/resumed.json" > "$OUT/resumed.stdout"
cp "$STORE/full/distgan/metrics.jsonl" "$OUT/"
"""


def test_a_full_disk_fails_clearly_and_keeps_the_previous_checkpoint(tmp_path):
    import shutil
    import subprocess
    import sys

    from conftest import read_json

    # A small filesystem of its own: tmpfs in a user and mount namespace (no root needed where user
    # namespaces are allowed; visible to this script's processes only).
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("needs `unshare -rm` (user namespaces) to mount a small filesystem")
    store, out = tmp_path / "store", tmp_path / "out"
    store.mkdir()
    out.mkdir()
    env = {**os.environ, "STORE": str(store), "OUT": str(out)}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", FULL_DISK], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]

    assert (out / "full.rc").read_text().strip() == "1"
    failed = read_json(out / "full.json")
    assert failed["status"] == "failed" and "No space left on device" in failed["error"]
    assert failed["error"] in (out / "full.stderr").read_text()
    saved = read_json(out / "checkpoints.json")
    good = [s for s in saved.values() if isinstance(s, int)]
    partial = [s for s in saved.values() if not isinstance(s, int)]
    # the ones before the disk filled, intact; the one it cut short never verifies
    assert good and good == sorted(good) and max(good) < 60, saved
    assert all("does not match its sha256" in s or "no state.pt" in s for s in partial), saved
    print(f"full disk: {failed['error']}; checkpoints after it: {saved}")

    resumed = read_json(out / "resumed.json")
    assert resumed["status"] == "finished" and resumed["resumed_from"] == max(good) and resumed["steps"] == 60
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [20, 40, 60]
