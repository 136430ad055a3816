"""`distgan submit`: a job or search spec as one Ray job on a cluster.

The spec is validated here (nothing is sent when it is wrong), then handed to the cluster through
Ray's `JobSubmissionClient`: the spec file travels inside the entrypoint (so the runtime env stays
free for the user's own `working_dir`, `image_uri`, ...), the overrides as `--set` arguments, and
the cluster-side command is `distgan train|search ... --address auto`. The job's Python is the
interpreter Ray itself runs in on the cluster (see `DEFAULT_PYTHON`), so the job never depends on
which `python` the raylet's PATH happens to find.
"""

from __future__ import annotations

import base64
import shlex
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

from distgan.commands import preflight
from distgan.errors import InputError
from distgan.runtime.jobs import (
    RESULT_MARK,
    Cluster,
    auth_token,
    check_runtime_env,
    connect,
    dashboard_address,
    read_runtime_env,
    runtime_env_source,
)
from distgan.spec import job as job_spec
from distgan.spec import search as search_spec
from distgan.tracking import client as tracking_client
from distgan.tracking import registry

# The entrypoint's shell is a child of the job's supervisor, a Ray worker process that runs in the
# Python where cluster.yaml installed Ray and distgan, whatever PATH the raylet was started with.
# Its /proc/$PPID/exe alone is not that Python when it is a virtualenv: the venv's `python` is a
# symlink, and exe resolves it to the base interpreter, which lacks the venv's packages (nor does
# /proc/$PPID/cmdline help: Ray retitles its workers "ray::..."). The supervisor has loaded
# ray/_raylet.so from its own site-packages (/proc/$PPID/maps): when that lies in a virtualenv
# (a pyvenv.cfg two levels above lib/pythonX.Y), that venv's bin/python is the job's Python; else
# exe is. `python3` only where /proc is missing (not Linux).
_SUPERVISOR_PYTHON = (
    "r=$(grep -o -m1 '/[^ ]*/lib/python[0-9.]*/site-packages/ray/_raylet[^ /]*[.]so' /proc/$PPID/maps 2>/dev/null); "
    'v="${r%/lib/python*}"; '
    'if [ -n "$r" ] && [ -f "$v/pyvenv.cfg" ] && [ -x "$v/bin/python" ]; then echo "$v/bin/python"; '
    "else readlink /proc/$PPID/exe || echo python3; fi"
)
DEFAULT_PYTHON = f'"$({_SUPERVISOR_PYTHON})"'


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
    runtime_env_file: str | None = None  # the user's runtime env, as `ray job submit --runtime-env` takes it
    runtime_env_json: str | None = None


def validate(sub: Submission) -> tuple[str, list[Path]]:
    """The spec as `distgan train|search` will read it on the cluster; InputError before anything
    is sent. Returns the command and the files the job needs (the spec, and a search spec's base)."""
    path = Path(sub.job)
    tree = job_spec.read_yaml(path, "job spec", sub.job)
    if "search" in tree:
        spec, search = search_spec.load_search(path, sub.overrides)
        preflight.check_search(spec, search)
        base = path.parent / tree["base"] if isinstance(tree.get("base"), str) else None
        return "search", [path] + ([base] if base is not None and base.is_file() else [])
    job_spec.load_spec(path, sub.overrides)
    return "train", [path]


def _is_loopback(host: str | None) -> bool:
    return host in ("localhost", "127.0.0.1", "::1") or (host or "").startswith("127.")


def job_env(sub: Submission, address: str, uses_token: bool) -> dict[str, str]:
    """Env vars of the job (its driver and every Ray worker it starts)."""
    env = dict(tracking_client.MLFLOW_ENV)
    if uses_token:
        # `ray.init(address="auto")` in the job must speak token auth too (it reads the head's token file).
        env["RAY_AUTH_MODE"] = "token"
    if sub.tracking:
        uri = tracking_client.resolve_uri(sub.tracking_uri)
        remote = not _is_loopback(urlparse(address).hostname)
        if tracking_client.is_local(uri) and remote:
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
        env |= tracking_client.credentials_env()  # the submitting shell's login to the tracking server
    return env


def entrypoint(sub: Submission, command: str, files: dict[str, bytes], job_id: str) -> str:
    """The job's shell command. It writes the spec files (carried in the command itself, base64)
    to a lasting directory and runs there: the runs it makes outlive the job."""
    workdir = shlex.quote(sub.workdir) if sub.workdir else f'"$HOME/distgan_jobs/{job_id}"'
    names = list(files)
    args = [command, names[0], "--address", "auto", "--json-out", "result.json"]
    for assignment in sub.overrides:
        args += ["--set", assignment]
    if not sub.tracking:
        args.append("--no-tracking")
    else:
        args += ["--experiment", sub.experiment] + (["--register", sub.register] if sub.register else [])
    writes = " && ".join(
        f"echo {base64.b64encode(data).decode()} | base64 -d > {shlex.quote(name)}" for name, data in files.items()
    )
    setup = f"mkdir -p {workdir} && cd {workdir} && {writes}"
    run = f"{sub.python} -m distgan {shlex.join(args)}"
    # The result document comes back in the job's log, after a marker line (see `result_from_logs`).
    show_result = f'if [ -f result.json ]; then echo "{RESULT_MARK}"; cat result.json; fi'
    return f"{setup} && {{ {run}; rc=$?; {show_result}; exit $rc; }}"


# Env vars distgan must set for the job to work as asked: the user's runtime env may not change them.
REQUIRED_ENV = {
    "MLFLOW_TRACKING_URI": "pass --tracking-uri instead",
    "RAY_AUTH_MODE": "the cluster uses token auth and the job must too",
}


def runtime_env(env: dict[str, str], ship_code: bool, user: dict, source: str) -> dict:
    """distgan's runtime env with the user's merged in. The user's env_vars override distgan's MLflow
    settings, but not the REQUIRED_ENV ones distgan sets (InputError on a different value); distgan
    adds no pip packages, so the user's `pip` (and every other field) passes through; `--ship-code`
    puts this checkout ahead of the user's own py_modules."""
    if "worker_process_setup_hook" in user:
        raise InputError(
            f"{source}: drop worker_process_setup_hook: distgan's job sets its own, and Ray fails a job whose "
            "runtime env and driver both set one"
        )
    renv = dict(user)
    user_env = user.get("env_vars") or {}
    for key in REQUIRED_ENV.keys() & env.keys() & user_env.keys():
        if user_env[key] != env[key]:
            raise InputError(
                f"{source} sets env var {key}={user_env[key]}, but this job needs {key}={env[key]} "
                f"({REQUIRED_ENV[key]}): remove it from the runtime env"
            )
    renv["env_vars"] = {**env, **user_env}
    if ship_code:
        # This checkout's distgan package, importable on every node ahead of an installed one.
        renv["py_modules"] = [str(Path(__file__).resolve().parents[1])] + list(user.get("py_modules") or [])
        renv["excludes"] = ["__pycache__", "*.pyc"] + list(user.get("excludes") or [])
    check_runtime_env(renv, f"{source} with distgan's own settings")
    return renv


def submit(sub: Submission, address: str | None) -> tuple[Cluster, dict]:
    """Validate, connect, submit; returns the connection and {job_id, address, entrypoint}."""
    command, files = validate(sub)
    if sub.register:
        registry.check_name(sub.register)
    address = dashboard_address(address)
    user_env = read_runtime_env(sub.runtime_env_file, sub.runtime_env_json)
    env = job_env(sub, address, uses_token=auth_token()[0] is not None)  # tracking checks before any connection
    renv = runtime_env(env, sub.ship_code, user_env, runtime_env_source(sub.runtime_env_file, sub.runtime_env_json))
    cluster = connect(address)
    job_id = f"distgan-{command}-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    ep = entrypoint(sub, command, {f.name: f.read_bytes() for f in files}, job_id)
    cluster.call(
        "submit_job",
        submission_id=job_id,
        entrypoint=ep,
        runtime_env=renv,
        metadata={"distgan.command": command, "distgan.spec": files[0].name},
    )
    return cluster, {"job_id": job_id, "address": cluster.address, "entrypoint": ep}
