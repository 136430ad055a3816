"""The MLflow tracking server a cluster's head node runs (`distgan tracking-server`)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path


def tracking_server_command(
    host: str,
    port: int,
    backend_store_uri: str | None,
    artifacts_destination: str | None,
    allowed_hosts: str | None,
    workers: int,
) -> tuple[list[str], dict[str, str]]:
    """`mlflow server` with the lean settings (one worker, no job execution: ~0.5 GB instead of 3 GB)."""
    backend = backend_store_uri or f"sqlite:///{Path('mlflow.db').resolve()}"
    artifacts = artifacts_destination or str(Path("mlartifacts").resolve())
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        artifacts,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    if allowed_hosts:
        argv += ["--allowed-hosts", allowed_hosts]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return argv, env


def run_tracking_server(**kwargs) -> None:
    argv, env = tracking_server_command(**kwargs)
    print(" ".join(shlex.quote(a) for a in argv[1:]), file=sys.stderr, flush=True)
    os.execvpe(argv[0], argv, env)  # the server becomes this process: a foreground service
