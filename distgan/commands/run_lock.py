"""One `distgan train` per run directory at a time: an `flock` on `<run_dir>/.distgan.lock`. The
kernel releases it when its holder ends, a crash or SIGKILL included, so a lock is never left stuck.
Local (and POSIX network) directories only: object storage has no flock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from datetime import datetime
from pathlib import Path

from distgan import storage
from distgan.errors import InputError

LOCK_FILE = ".distgan.lock"


@contextlib.contextmanager
def hold(location: str, name: str):
    """Holds the run's lock for the block; InputError when another process holds it. A run in
    object storage is not locked (no flock there)."""
    if storage.is_remote(location):
        yield
        return
    run_dir = Path(location)
    new = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _locked(run_dir, name):
            yield
    finally:
        # A run refused before it wrote anything (a check after the lock) leaves no directory behind.
        if new and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:
            (run_dir / LOCK_FILE).unlink()
            run_dir.rmdir()


@contextlib.contextmanager
def _locked(run_dir: Path, name: str):
    with open(run_dir / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            with contextlib.suppress(ValueError):  # a holder between its truncate and its write
                holder = json.loads(f.read())
                raise InputError(
                    f"run {name} is in use by pid {holder['pid']} on host {holder['host']} since {holder['since']}; "
                    "wait for it or pick another train.name"
                ) from None
            raise InputError(
                f"run {name} is in use by another process; wait for it or pick another train.name"
            ) from None
        # who holds it, for the message a second `distgan train` of this name prints
        f.seek(0)
        f.truncate()
        f.write(
            json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "since": f"{datetime.now():%Y-%m-%d %H:%M:%S}"}
            )
        )
        f.flush()
        yield  # closing the file releases the lock
