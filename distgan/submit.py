"""Ray Jobs: submit a job spec to a Ray cluster, follow it, list, inspect and stop jobs; and the
MLflow tracking server a cluster's head node runs.

`submit` validates the spec here (nothing is sent when it is wrong), then hands the cluster one
Ray job through `JobSubmissionClient`: the spec file travels as the job's `working_dir`, the
overrides as `--set` arguments, and the cluster-side command is `distgan train|search ... --address
auto`. The job's Python is the interpreter Ray itself runs in on the cluster (see `DEFAULT_PYTHON`),
so the job never depends on which `python` the raylet's PATH happens to find.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import socket
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

from distgan.errors import InputError

# The entrypoint's shell is a child of the job's supervisor, a Ray worker process: /proc/$PPID/exe
# is the interpreter Ray runs in on the cluster (where cluster.yaml installs distgan), whatever
# PATH the raylet was started with. `python3` only where /proc is missing (not Linux).
DEFAULT_PYTHON = '"$(readlink /proc/$PPID/exe || echo python3)"'
RESULT_MARK = "--- distgan result.json ---"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
CONNECT_TIMEOUT_S = 5.0


# --- connecting -------------------------------------------------------------------------------


def dashboard_address(address: str | None) -> str:
    """--address, else RAY_API_SERVER_ADDRESS / RAY_ADDRESS (as Ray's own clients read them), as an
    http(s) URL of the head node's dashboard."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise InputError("no Ray cluster given: pass --address http://HEAD:8265 (the dashboard) or set RAY_ADDRESS")
    if "://" not in address:
        address = f"http://{address}"
    if urlparse(address).scheme not in ("http", "https"):
        raise InputError(f"--address {address}: give the dashboard's http://HOST:PORT (default port 8265)")
    return address.rstrip("/")


def auth_token() -> tuple[str | None, str]:
    """(token, where it came from), read from the places Ray reads it: RAY_AUTH_TOKEN, the file at
    RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token. None with RAY_AUTH_MODE=disabled or when there is none."""
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    if mode == "disabled":
        return None, "RAY_AUTH_MODE=disabled"
    if token := os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return token, "RAY_AUTH_TOKEN"
    if explicit := os.environ.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(explicit)
        if not (path.is_file() and path.read_text().strip()):  # Ray itself aborts on this
            raise InputError(
                f"RAY_AUTH_TOKEN_PATH={explicit} is missing or empty: point it at the cluster's token file"
            )
        return path.read_text().strip(), str(path)
    path = Path.home() / ".ray" / "auth_token"
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip(), str(path)
    if mode == "token":
        raise InputError(
            f"RAY_AUTH_MODE=token but no Ray auth token here ({path} is missing or empty): copy the head node's "
            "~/.ray/auth_token (`ray get-auth-token` on the head) there, or set RAY_AUTH_TOKEN"
        )
    return None, "no token"


def _check_listening(address: str) -> None:
    """Fail in seconds where nothing answers (Ray's client waits on the OS's connect timeout)."""
    url = urlparse(address)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise InputError(
            f"no Ray dashboard answers at {address} ({e.strerror or type(e).__name__}): check the head node's address "
            f"and port (default 8265; `ray dashboard cluster.yaml` forwards it to localhost)"
        ) from None


@contextmanager
def _ray_errors(address: str, token_source: str):
    """Ray's client errors as one- or two-line InputErrors that say how to mend them."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as e:
        if "Authentication failed" in str(e):  # 403: a token was sent and refused
            raise InputError(
                f"the Ray cluster at {address} refused the auth token from {token_source}: use the head node's token "
                "(`ray get-auth-token` on the head) in ~/.ray/auth_token or RAY_AUTH_TOKEN"
            ) from None
        raise InputError(
            f"the Ray cluster at {address} requires an auth token and none was found here ({token_source}): copy the "
            "head node's ~/.ray/auth_token (`ray get-auth-token` on the head) to ~/.ray/auth_token, or set RAY_AUTH_TOKEN"
        ) from None
    except ConnectionError as e:
        raise InputError(f"lost the Ray dashboard at {address}: {e}") from None
    except RuntimeError as e:  # Ray's client: an HTTP answer it did not expect
        if "does not exist" in str(e):
            raise InputError(
                f"{str(e).split(': ', 1)[-1].rstrip('.')} at {address}; `distgan jobs list` shows the jobs"
            ) from None
        if "Version check returned 404" in str(e):
            raise InputError(
                f"{address} answers HTTP but is not a Ray dashboard: give the head node's dashboard address (port 8265)"
            ) from None
        raise InputError(f"the Ray cluster at {address} answered: {str(e).splitlines()[0]}") from None


@dataclass
class Cluster:
    """A connected JobSubmissionClient and how it authenticated."""

    address: str
    client: object
    token_source: str
    uses_token: bool

    def call(self, method: str, *args, **kwargs):
        with _ray_errors(self.address, self.token_source):
            return getattr(self.client, method)(*args, **kwargs)


def connect(address: str | None) -> Cluster:
    address = dashboard_address(address)
    token, source = auth_token()
    _check_listening(address)
    from ray.job_submission import JobSubmissionClient

    # Ray's client lets RAY_ADDRESS override the address it is given: --address must win.
    for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        os.environ.pop(var, None)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    with _ray_errors(address, source):
        client = JobSubmissionClient(address, headers=headers)
    return Cluster(address, client, source, token is not None)


# --- submitting -------------------------------------------------------------------------------


@dataclass
class Submission:
    """What the user asked `distgan submit` for."""

    job: str
    overrides: list[str] = field(default_factory=list)
    tracking: bool = True
    tracking_uri: str | None = None
    experiment: str = "distgan"
    register: str | None = None
    python: str = DEFAULT_PYTHON
    ship_code: bool = False
    workdir: str | None = None  # on the cluster; default $HOME/distgan_jobs/<job id>


def validate(sub: Submission) -> tuple[str, list[Path]]:
    """The spec as `distgan train|search` will read it on the cluster; InputError before anything
    is sent. Returns the command and the files the job needs (the spec, and a search spec's base)."""
    from distgan import config, search_config

    path = Path(sub.job)
    tree = config.read_yaml(path, "job spec", sub.job)
    if "search" in tree:
        search_config.load_search(path, sub.overrides)
        base = path.parent / tree["base"] if isinstance(tree.get("base"), str) else None
        return "search", [path] + ([base] if base is not None and base.is_file() else [])
    config.load_spec(path, sub.overrides)
    return "train", [path]


def _is_loopback(host: str | None) -> bool:
    return host in ("localhost", "127.0.0.1", "::1") or (host or "").startswith("127.")


def job_env(sub: Submission, address: str, uses_token: bool) -> dict[str, str]:
    """Env vars of the job (its driver and every Ray worker it starts)."""
    from distgan import tracking

    env = dict(tracking.MLFLOW_ENV)
    # distgan's driver passes its MLFLOW_* vars on to its workers through ray.init(runtime_env=...);
    # Ray refuses a driver that re-declares a job env var unless told that the driver's copy wins
    # (the values are the same).
    env["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"
    if uses_token:
        # `ray.init(address="auto")` in the job must speak token auth too (it reads the head's token file).
        env["RAY_AUTH_MODE"] = "token"
    if sub.tracking:
        uri = tracking.resolve_uri(sub.tracking_uri)
        remote = not _is_loopback(urlparse(address).hostname)
        if tracking.is_local(uri) and remote:
            raise InputError(
                f"tracking URI {uri} is a SQLite file on this machine, which the cluster at {address} cannot see: "
                "pass --tracking-uri http://HEAD:5000 (`distgan tracking-server` on the head), or --no-tracking"
            )
        if remote and _is_loopback(urlparse(uri).hostname):
            raise InputError(
                f"tracking URI {uri} means each cluster node itself: pass an address the workers reach, e.g. "
                "--tracking-uri http://HEAD_PRIVATE_IP:5000"
            )
        env["MLFLOW_TRACKING_URI"] = uri
    return env


def entrypoint(sub: Submission, command: str, files: list[str], job_id: str) -> str:
    """The job's shell command. Ray deletes the uploaded working_dir once the driver disconnects
    from Ray (while it still logs the model and writes its result), and runs would be lost with it:
    the job copies its files to a lasting directory and runs there."""
    workdir = shlex.quote(sub.workdir) if sub.workdir else f'"$HOME/distgan_jobs/{job_id}"'
    args = [command, files[0], "--address", "auto", "--json-out", "result.json"]
    for assignment in sub.overrides:
        args += ["--set", assignment]
    if not sub.tracking:
        args.append("--no-tracking")
    else:
        args += ["--experiment", sub.experiment] + (["--register", sub.register] if sub.register else [])
    setup = f"mkdir -p {workdir} && cp {shlex.join(files)} {workdir}/ && cd {workdir}"
    run = f"{sub.python} -m distgan {shlex.join(args)}"
    # The result document comes back in the job's log, after a marker line (see `result_from_logs`).
    return f'{setup} && {{ {run}; rc=$?; if [ -f result.json ]; then echo "{RESULT_MARK}"; cat result.json; fi; exit $rc; }}'


def runtime_env(workdir: Path, env: dict[str, str], ship_code: bool) -> dict:
    renv: dict = {"working_dir": str(workdir), "env_vars": env}
    if ship_code:
        # This checkout's distgan package, importable on every node ahead of an installed one.
        renv["py_modules"] = [str(Path(__file__).resolve().parent)]
        renv["excludes"] = ["__pycache__", "*.pyc"]
    return renv


def submit(sub: Submission, address: str | None) -> tuple[Cluster, dict]:
    """Validate, connect, submit; returns the connection and {job_id, address, entrypoint}."""
    from distgan import registry

    command, files = validate(sub)
    if sub.register:
        registry.check_name(sub.register)
    address = dashboard_address(address)
    env = job_env(sub, address, uses_token=auth_token()[0] is not None)  # tracking checks before any connection
    cluster = connect(address)
    with tempfile.TemporaryDirectory(prefix="distgan-submit-") as tmp:
        workdir = Path(tmp)
        for f in files:
            shutil.copy(f, workdir / f.name)
        job_id = f"distgan-{command}-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        ep = entrypoint(sub, command, [f.name for f in files], job_id)
        cluster.call(
            "submit_job",
            submission_id=job_id,
            entrypoint=ep,
            runtime_env=runtime_env(workdir, env, sub.ship_code),
            metadata={"distgan.command": command, "distgan.spec": files[0].name},
        )
    return cluster, {"job_id": job_id, "address": cluster.address, "entrypoint": ep}


# --- watching ---------------------------------------------------------------------------------


def follow(cluster: Cluster, job_id: str, out=sys.stdout) -> str:
    """Stream the job's log until it ends (the result document is held back); its final status."""

    async def tail() -> None:
        pending, hidden = "", False
        async for chunk in cluster.client.tail_job_logs(job_id):
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                hidden = hidden or line == RESULT_MARK
                if not hidden:
                    out.write(line + "\n")
            out.flush()
        if pending and not hidden:
            out.write(pending + "\n")

    with _ray_errors(cluster.address, cluster.token_source):
        asyncio.run(tail())
    return wait(cluster, job_id, timeout=30)


def wait(cluster: Cluster, job_id: str, timeout: float) -> str:
    """Status once terminal, or the current status after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        status = str(cluster.call("get_job_status", job_id))
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def result_from_logs(logs: str) -> dict | None:
    """The cluster-side `--json-out` document, printed after RESULT_MARK at the end of the job."""
    if RESULT_MARK not in logs:
        return None
    try:
        return json.loads(logs.rsplit(RESULT_MARK, 1)[1])
    except json.JSONDecodeError:
        return None


def logs(cluster: Cluster, job_id: str) -> str:
    return cluster.call("get_job_logs", job_id)


def info(cluster: Cluster, job_id: str) -> dict:
    job = cluster.call("get_job_info", job_id)
    return _job_doc(job)


def list_jobs(cluster: Cluster) -> list[dict]:
    jobs = [_job_doc(j) for j in cluster.call("list_jobs") if j.submission_id]  # driver-only jobs have none
    return sorted(jobs, key=lambda j: j["start_time"] or 0)


def stop(cluster: Cluster, job_id: str, timeout: float = 60) -> str:
    """Ask Ray to stop the job (SIGTERM to its process group, then SIGKILL); its status afterwards."""
    cluster.call("stop_job", job_id)
    return wait(cluster, job_id, timeout)


def _job_doc(job) -> dict:
    return {
        "job_id": job.submission_id or job.job_id,
        "status": str(job.status),
        "message": job.message,
        "entrypoint": job.entrypoint,
        "start_time": job.start_time,
        "end_time": job.end_time,
        "metadata": job.metadata or {},
        "driver_exit_code": getattr(job, "driver_exit_code", None),
    }


# --- the tracking server ----------------------------------------------------------------------


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
