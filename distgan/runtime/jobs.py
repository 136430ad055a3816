"""Ray Jobs: connect to a cluster's dashboard (token auth, clear errors), submit, follow, list,
inspect and stop jobs. What a distgan job is made of lives in `distgan.commands.submit`."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import yaml

from distgan.errors import InputError

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
            "head node's ~/.ray/auth_token (`ray get-auth-token` on the head) to ~/.ray/auth_token, or set "
            "RAY_AUTH_TOKEN"
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


# --- runtime env -----------------------------------------------------------------------------


def read_runtime_env(file: str | None, json_text: str | None) -> dict:
    """A runtime env as `ray job submit --runtime-env FILE` (YAML or JSON) or `--runtime-env-json`
    reads it; InputError where it is unreadable, not a mapping, or not one Ray accepts."""
    if file is None and json_text is None:
        return {}
    source = runtime_env_source(file, json_text)
    try:
        text = Path(file).read_text() if file is not None else json_text
    except OSError as e:
        raise InputError(f"{source}: cannot read it ({e.strerror}); give a YAML or JSON file") from None
    try:
        tree = yaml.safe_load(text)  # JSON is YAML: one parser reads both, as Ray's CLI does
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputError(f"{source} is not valid YAML or JSON{where}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(tree, dict):
        raise InputError(f"{source} must be a mapping of runtime env fields (pip, env_vars, image_uri, ...)")
    check_runtime_env(tree, source)
    return tree


def runtime_env_source(file: str | None, json_text: str | None) -> str:
    """How error messages name the user's runtime env."""
    if file is not None:
        return f"--runtime-env {file}"
    return "--runtime-env-json" if json_text is not None else "the runtime env"


def check_runtime_env(renv: dict, source: str) -> None:
    """Ray's own checks of a runtime env, here before anything is sent. Ray's `RuntimeEnv` takes an
    unknown top-level key for a plugin's field, so a typo such as `pipp` is refused here."""
    from ray.runtime_env import RuntimeEnv

    if unknown := sorted(set(renv) - RuntimeEnv.known_fields):
        known = ", ".join(sorted(k for k in RuntimeEnv.known_fields if not k.startswith("_")))
        raise InputError(f"{source}: unknown runtime env field(s) {', '.join(unknown)}; Ray knows {known}")
    try:
        RuntimeEnv(**renv)
    except (ValueError, TypeError, OSError) as e:  # OSError: a `pip: requirements.txt` that is not there
        raise InputError(f"{source}: {str(e).splitlines()[0]}") from None


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
