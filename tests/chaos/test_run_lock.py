"""Two `distgan train` with one name at once: the second is refused (exit 2) before Ray starts while
the first holds the run's lock; a holder killed with SIGKILL leaves nothing stuck."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import read_json, run_cli

NAME = "locked"

HOLDER = """
import sys, time
from pathlib import Path
from distgan.commands import run_lock
with run_lock.hold(Path(sys.argv[1]), "locked"):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(run_dir) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _train(tmp_path, *extra: str, ray_tmp=None) -> subprocess.CompletedProcess:
    env = {"RAY_TMPDIR": str(ray_tmp)} if ray_tmp else None
    return run_cli(
        "train",
        "--name",
        NAME,
        "--no-tracking",
        "--set",
        f"train.storage_path={tmp_path}",
        *extra,
        cwd=tmp_path,
        env=env,
    )


def test_second_train_of_a_name_is_refused_before_ray_starts(tmp_path):
    holder = _holder(tmp_path / NAME)
    try:
        ray_tmp = Path(tempfile.mkdtemp(prefix="dgl-", dir="/tmp"))  # short: Ray's socket paths
        t0 = time.monotonic()
        r = _train(tmp_path, "--workers", "1", "--set", "train.steps=10", ray_tmp=ray_tmp)  # short if not refused
        refused_s = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert lines == [
        f"distgan train: error: run {NAME} is in use by pid {holder.pid} on host {socket.gethostname()} since "
        f"{json.loads((tmp_path / NAME / '.distgan.lock').read_text())['since']}; wait for it or pick another "
        "train.name"
    ]
    assert list(ray_tmp.iterdir()) == []  # Ray never started
    assert sorted(p.name for p in (tmp_path / NAME).iterdir()) == [".distgan.lock"]  # nothing written
    print(f"refused in {refused_s:.1f}s (a fresh Python process importing distgan included)")


@pytest.mark.cluster
def test_lock_of_a_holder_killed_with_sigkill_is_not_stuck(tmp_path):
    holder = _holder(tmp_path / NAME)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    out = tmp_path / "r.json"
    r = _train(tmp_path, "--workers", "1", "--set", "train.steps=20", "--json-out", str(out))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = read_json(out)
    assert res["status"] == "finished" and res["steps"] == 20
