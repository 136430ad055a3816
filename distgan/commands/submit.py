"""`distgan submit`: a job or search spec as one Ray job on a cluster.

The spec is validated here (nothing is sent when it is wrong), then handed to the cluster through
Ray's `JobSubmissionClient`: the spec file travels as the job's `working_dir`, the overrides as
`--set` arguments, and the cluster-side command is `distgan train|search ... --address auto`. The
job's Python is the interpreter Ray itself runs in on the cluster (see `DEFAULT_PYTHON`), so the
job never depends on which `python` the raylet's PATH happens to find.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

from distgan.commands import preflight
from distgan.errors import InputError
from distgan.runtime.jobs import RESULT_MARK, Cluster, auth_token, connect, dashboard_address
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
    show_result = f'if [ -f result.json ]; then echo "{RESULT_MARK}"; cat result.json; fi'
    return f"{setup} && {{ {run}; rc=$?; {show_result}; exit $rc; }}"


def runtime_env(workdir: Path, env: dict[str, str], ship_code: bool) -> dict:
    renv: dict = {"working_dir": str(workdir), "env_vars": env}
    if ship_code:
        # This checkout's distgan package, importable on every node ahead of an installed one.
        renv["py_modules"] = [str(Path(__file__).resolve().parents[1])]
        renv["excludes"] = ["__pycache__", "*.pyc"]
    return renv


def submit(sub: Submission, address: str | None) -> tuple[Cluster, dict]:
    """Validate, connect, submit; returns the connection and {job_id, address, entrypoint}."""
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
