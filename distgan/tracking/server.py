"""The MLflow tracking server a cluster's head node runs (`distgan tracking-server`)."""

from __future__ import annotations

import ipaddress
import os
import secrets
import shlex
import sys
from pathlib import Path

from distgan.errors import InputError

# What basic-auth needs to create its first (admin) user; MLflow's own settings
ADMIN_PASSWORD_ENV = ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_AUTH_CONFIG_PATH")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_exposure(host: str, auth: bool, insecure: bool) -> None:
    """A server beyond this machine needs users and passwords, or the user's explicit word."""
    if not (is_loopback(host) or auth or insecure):
        raise InputError(
            f"--host {host} exposes the tracking server beyond this machine without a login: add --auth "
            "(MLflow's basic-auth; set MLFLOW_AUTH_ADMIN_PASSWORD) or, on a network you trust, --insecure"
        )
    if auth and not any(os.environ.get(k) for k in ADMIN_PASSWORD_ENV):
        raise InputError(
            "--auth needs the admin's password: set MLFLOW_AUTH_ADMIN_PASSWORD (or MLFLOW_AUTH_CONFIG_PATH to a "
            "basic_auth.ini with admin_password)"
        )


def tracking_server_command(
    host: str,
    port: int,
    backend_store_uri: str | None,
    artifacts_destination: str | None,
    allowed_hosts: str | None,
    workers: int,
    auth: bool = False,
    insecure: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """`mlflow server` with the lean settings (one worker, no job execution: ~0.5 GB instead of 3 GB);
    with `auth`, MLflow's basic-auth app (users in `basic_auth.db` here unless MLFLOW_AUTH_CONFIG_PATH says)."""
    check_exposure(host, auth, insecure)
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
    if auth:
        argv += ["--app-name", "basic-auth"]
        # CSRF key of the login forms: one per server start, shared by its workers (they inherit it)
        env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
    return argv, env


def run_tracking_server(**kwargs) -> None:
    argv, env = tracking_server_command(**kwargs)
    print(" ".join(shlex.quote(a) for a in argv[1:]), file=sys.stderr, flush=True)
    os.execvpe(argv[0], argv, env)  # the server becomes this process: a foreground service
