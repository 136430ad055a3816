"""`distgan` command line: argument parsing only; every command calls the library.

Exit codes: 0 ok, 2 bad input (spec, data, address), 1 runtime failure, 130 / 143 a train stopped by SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import warnings

from distgan import __version__
from distgan.errors import InputError


def _job_overrides(args: argparse.Namespace) -> list[str]:
    """--set assignments, plus the --workers/--gpu shorthands."""
    overrides = list(args.set)
    if args.workers is not None:
        overrides.append(f"scaling.workers={args.workers}")
    if args.gpu:
        overrides.append("scaling.gpu=true")
    return overrides


def _echo(line: str) -> None:
    """Progress lines: distgan's logger (hidden by -q)."""
    logging.getLogger("distgan").info(line)


def _registered(result) -> str:
    return f"; registered {result.model_uri}{' (champion)' if result.champion else ''}" if result.model_uri else ""


def _train(args: argparse.Namespace) -> int:
    from distgan.commands import train
    from distgan.metrics import names
    from distgan.spec.job import load_spec
    from distgan.tracking.run import TrackingOptions

    overrides = _job_overrides(args)
    if args.name:
        overrides.append(f"train.name={args.name}")
    if args.stop_on_failure:
        overrides.append("train.stop_on_failure=true")
    spec = load_spec(args.job, overrides)
    tracking = TrackingOptions(
        not args.no_tracking,
        args.tracking_uri,
        args.experiment,
        args.register,
        args.generator,
        system_metrics=args.system_metrics,
    )
    result = train.train(spec, address=args.address, tracking=tracking, echo=_echo)
    _write_json(args.json_out, result.to_json())
    print(
        f"{result.status}: {result.steps} steps in {result.wall_s:.0f}s  {names.summary(result.metrics)}  "
        f"run {result.run_dir}"
    )
    if result.health not in ("ok", None):
        print("health: " + "; ".join(s["message"] for s in result.health))
    if result.mlflow_run_id:
        print(f"mlflow run {result.mlflow_run_id} at {result.tracking_uri}{_registered(result)}")
    if result.error:
        print(result.error, file=sys.stderr)
    if result.interrupted_by:  # the shell's code for a process ended by that signal
        print(f"stopped by {result.interrupted_by}; run it again to resume from {result.checkpoint}", file=sys.stderr)
        return 128 + signal.Signals[result.interrupted_by]
    return 0 if result.status == "finished" else 1


def _search(args: argparse.Namespace) -> int:
    from distgan.commands import search
    from distgan.spec.search import load_search
    from distgan.tracking.run import TrackingOptions

    overrides = list(args.set)
    if args.trials is not None:
        overrides.append(f"search.trials={args.trials}")
    if args.no_early_stop:
        overrides += ["search.early_stop=false"]
    if args.resume and (args.spec or overrides):
        raise InputError("--resume runs the search with the spec it started with: leave out SEARCH.yaml and --set")
    # search() checks the spec against the data (metric, feature network) before Ray: once, there
    resume = None
    if args.resume:
        spec, search_spec, resume = search.load_resumed(args.resume)
    else:
        spec, search_spec = load_search(args.spec, overrides)
    tracking = TrackingOptions(
        not args.no_tracking, args.tracking_uri, args.experiment, args.register, system_metrics=args.system_metrics
    )
    result = search.search(spec, search_spec, address=args.address, tracking=tracking, echo=_echo, resume=resume)
    _write_json(args.json_out, result.to_json())
    print(
        f"{result.status}: {len(result.trials)} trials, {result.steps} steps in {result.wall_s:.0f}s; best "
        f"{result.best}"
    )
    if result.mlflow_run_id:
        print(f"mlflow parent run {result.mlflow_run_id}{_registered(result)}")
    return 0 if result.status == "finished" else 1


def _write_json(path: str | None, doc: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(doc, f, indent=2)


def _models(args: argparse.Namespace) -> int:
    from distgan.tracking import registry
    from distgan.tracking.client import check_reachable, resolve_uri

    uri = resolve_uri(args.tracking_uri)
    check_reachable(uri)
    if args.action == "list":
        rows = registry.list_models(uri)
        for r in rows:
            aliases = ", ".join(f"@{a}=v{v}" for a, v in sorted(r["aliases"].items()))
            print(f"{r['name']:30} latest v{r['latest_version']}  {aliases}")
        if not rows:
            print(f"no registered models at {uri}")
        return 0
    if not args.name:
        raise InputError(f"models {args.action} needs a model NAME")
    if args.action == "show":
        doc = registry.show_model(uri, args.name)
        print(doc["name"])
        for v in doc["versions"]:
            metrics = "  ".join(
                f"{k.removeprefix('metric.')} {val}" for k, val in sorted(v["tags"].items()) if k.startswith("metric.")
            )
            aliases = " ".join(f"@{a}" for a in v["aliases"])
            print(f"  v{v['version']:<4} {aliases:12} run {v['run_id']}  {metrics}")
        return 0
    if args.version is None:
        raise InputError("models promote needs NAME VERSION, e.g. distgan models promote grid25-gan 3")
    doc = registry.promote(uri, args.name, args.version)
    print(f"{doc['name']}@champion -> v{doc['champion']} (was v{doc['previous_champion']})")
    return 0


def _pull(args: argparse.Namespace) -> int:
    from distgan.tracking import hub

    formats = args.format or ["png", "npy"]
    result = hub.pull(args.model_uri, args.n, args.seed, args.out, formats, args.tracking_uri, args.class_id)
    _write_json(args.json_out, result)
    of_class = f" of class {result['class']}" if result["class"] is not None else ""
    print(
        f"{result['n']} samples{of_class} of shape {tuple(result['sample_shape'])} from {args.model_uri}: "
        f"{', '.join(result['files'])}"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from distgan.commands.evaluate import evaluate
    from distgan.metrics import names

    result = evaluate(args.source, args.data, args.n, args.seed, args.feature_net, args.tracking_uri, args.device)
    _write_json(args.json_out, result.to_json())
    print(f"{result.source} on {result.dataset} ({result.n} samples, {result.device}): {names.summary(result.metrics)}")
    for k, v in sorted(result.metrics.items()):
        print(f"  {k:18} {v:.5g}")
    return 0


def _data_build(args: argparse.Namespace) -> int:
    from distgan.commands import data_build
    from distgan.data.build import Options

    options = Options(args.resolution, args.channels, args.limit, args.shard_mb, args.strict, args.overwrite)
    result = data_build.build(args.src, args.out, options, progress=args.verbose - args.quiet >= 0)
    _write_json(args.json_out, result.to_json())
    if result.skipped:
        print(
            f"warning: skipped {result.skipped} unreadable image(s): {', '.join(result.skipped_files)}"
            f"{', ...' if result.skipped > len(result.skipped_files) else ''} (--strict makes them an error)",
            file=sys.stderr,
        )
    classes = f"{len(result.classes)} classes" if result.classes else "no labels"
    print(
        f"wrote {result.images:,} images ({result.skipped} skipped), {classes}, {result.shards} shard(s), "
        f"{result.bytes:,} bytes: {result.out}"
    )
    return 0


def _track_sync(args: argparse.Namespace) -> int:
    from distgan.commands import track_sync

    out = track_sync.sync(args.run_dir, args.tracking_uri, echo=_echo)
    _write_json(args.json_out, out)
    if out["status"] == "nothing":
        print(
            f"nothing to sync: MLflow run {out['mlflow_run_id']} at {out['tracking_uri']} has all of {out['run_dir']}"
        )
        return 0
    if out["status"] != "synced":
        print(
            f"could not sync MLflow run {out['mlflow_run_id']}: {out['error']}; nothing is lost, run it again "
            "when the server is back",
            file=sys.stderr,
        )
        return 1
    print(f"synced MLflow run {out['mlflow_run_id']} ({out['run_status']} after {out['steps']} steps)")
    print(f"metric points sent: {out['metric_points']}")
    print(f"sample images sent: {out['images']}")
    if out["logged_model_uri"]:
        print(f"generator {'logged' if out['logged'] else 'already logged'}: {out['logged_model_uri']}")
    if out["model_uri"]:
        registered = "registered" if out["registered"] else "already registered"
        print(f"{registered}: {out['model_uri']}{' (champion)' if out['champion'] else ''}")
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from distgan import data

    for name, about in data.describe():
        print(f"{name:15} {about}")
    return 0


# --- submit, jobs, tracking-server (Ray Jobs on a cluster) ----------------------------------------


def _submit(args: argparse.Namespace) -> int:
    from distgan.commands import submit
    from distgan.runtime import jobs

    overrides = _job_overrides(args)
    sub = submit.Submission(
        args.job,
        overrides,
        not args.no_tracking,
        args.tracking_uri,
        args.experiment,
        args.register,
        args.python or submit.DEFAULT_PYTHON,
        args.ship_code,
        args.workdir,
        args.runtime_env,
        args.runtime_env_json,
    )
    cluster, doc = submit.submit(sub, args.address)
    job_id = doc["job_id"]
    print(f"submitted {job_id} to {doc['address']}", file=sys.stderr, flush=True)
    if not args.follow:
        print(job_id)
        print(f"follow it: distgan jobs logs {job_id} --follow --address {doc['address']}", file=sys.stderr)
        _write_json(args.json_out, {**doc, "status": "submitted", "job_status": "PENDING"})
        return 0
    try:
        status = jobs.follow(cluster, job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; {job_id} keeps running (distgan jobs stop {job_id} stops it)", file=sys.stderr)
        return 130
    result = jobs.result_from_logs(jobs.logs(cluster, job_id)) or {}
    _write_json(
        args.json_out,
        {**result, **doc, "status": result.get("status", "failed"), "job_status": status, "result": result or None},
    )
    print(f"job {job_id} {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def _jobs(args: argparse.Namespace) -> int:
    import time

    from distgan.runtime import jobs as ray_jobs

    if args.action != "list" and not args.job_id:
        raise InputError(f"jobs {args.action} needs a job ID (distgan jobs list shows them)")
    cluster = ray_jobs.connect(args.address)
    if args.action == "list":
        jobs = ray_jobs.list_jobs(cluster)
        for j in jobs:
            started = (
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j["start_time"] / 1000)) if j["start_time"] else "-"
            )
            what = (
                f"{j['metadata'].get('distgan.command', '')} {j['metadata'].get('distgan.spec', '')}".strip()
                or j["entrypoint"][:60]
            )
            print(f"{j['job_id']:40} {j['status']:10} {started}  {what}")
        if not jobs:
            print(f"no jobs on {cluster.address}")
    elif args.action == "status":
        j = ray_jobs.info(cluster, args.job_id)
        print(j["status"] + (f": {j['message']}" if j["message"] else ""))
    elif args.action == "logs":
        if args.follow:
            return 0 if ray_jobs.follow(cluster, args.job_id) == "SUCCEEDED" else 1
        print(ray_jobs.logs(cluster, args.job_id), end="")
    elif args.action == "stop":
        print(f"{args.job_id}: {ray_jobs.stop(cluster, args.job_id)}")
    return 0


def _tracking_server(args: argparse.Namespace) -> int:
    from distgan.tracking import server

    server.run_tracking_server(
        host=args.host,
        port=args.port,
        backend_store_uri=args.backend_store_uri,
        artifacts_destination=args.artifacts_destination,
        allowed_hosts=args.allowed_hosts,
        workers=args.workers,
        auth=args.auth,
        insecure=args.insecure,
    )
    return 0  # not reached: the server replaces this process


def _positive(cast):
    """An argparse type: a number above 0."""

    def parse(text: str):
        value = cast(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} is not above 0")
        return value

    return parse


def _system_metrics_option(p: argparse.ArgumentParser, of_what: str) -> None:
    p.add_argument(
        "--system-metrics",
        action="store_true",
        help=f"record MLflow system metrics (CPU, memory, disk, network, GPU) of {of_what} as system/* metrics",
    )


def _tracking_options(p: argparse.ArgumentParser, uri_help: str, register_help: str, off_help: str) -> None:
    """MLflow options of the commands that train (train, search, submit)."""
    p.add_argument("--tracking-uri", help=uri_help)
    p.add_argument("--experiment", default="distgan", help="MLflow experiment name (default: distgan)")
    p.add_argument("--register", metavar="NAME", help=register_help)
    p.add_argument("--no-tracking", action="store_true", help=off_help)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distgan", description="Distributed GAN training on Ray, tracked in MLflow.")
    p.add_argument("--version", action="version", version=f"distgan {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="also show Ray's and MLflow's own logs")
    p.add_argument("-q", "--quiet", action="count", default=0, help="only the result line and errors")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a GAN from a job spec (default: the built-in grid25 job)")
    t.add_argument("job", nargs="?", help="job spec YAML (omit for the built-in default job)")
    t.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec key, e.g. optim.lr_g=2e-4"
    )
    t.add_argument("--address", help="join this Ray cluster (default: start a local Ray in-process)")
    t.add_argument("--workers", type=int, help="number of Train workers (scaling.workers)")
    t.add_argument("--gpu", action="store_true", help="one GPU per worker (scaling.gpu)")
    t.add_argument("--name", help="run name (train.name); an existing name resumes that run")
    t.add_argument("--json-out", metavar="FILE", help="write the result as one JSON document")
    t.add_argument(
        "--stop-on-failure", action="store_true", help="end the run (status diverged) when a health signal fires"
    )
    _tracking_options(
        t,
        "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
        "register the generator in the Model Registry under NAME",
        "no MLflow run (the run directory still records everything)",
    )
    t.add_argument("--generator", choices=["ema", "raw"], default="ema", help="which generator to log (default: ema)")
    _system_metrics_option(t, "rank 0's node")
    t.set_defaults(fn=_train)

    s = sub.add_parser("search", help="search hyperparameters with Ray Tune (default: jobs/search-grid25.yaml)")
    s.add_argument("spec", nargs="?", help="search spec YAML: a job spec plus a search section")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a job key or search.* key")
    s.add_argument("--trials", type=int, help="number of trials (search.trials)")
    s.add_argument("--address", help="join this Ray cluster (default: start a local Ray in-process)")
    s.add_argument(
        "--no-early-stop", action="store_true", help="no divergence stopper and no ASHA: every trial runs to the end"
    )
    s.add_argument(
        "--resume",
        metavar="DIR",
        help="go on with a search whose driver stopped: its directory (printed at its start) or its name under "
        "distgan_runs/; ended trials are not run again",
    )
    _tracking_options(
        s,
        "MLflow tracking URI (default as for train)",
        "register the best trial's generator under NAME",
        "no MLflow runs",
    )
    _system_metrics_option(s, "each trial's rank-0 node, in the trial's nested run")
    s.add_argument("--json-out", metavar="FILE", help="write the result as one JSON document")
    s.set_defaults(fn=_search)

    m = sub.add_parser("models", help="registered generators: list | show NAME | promote NAME VERSION")
    m.add_argument("action", choices=["list", "show", "promote"])
    m.add_argument("name", nargs="?")
    m.add_argument("version", nargs="?")
    m.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default as for train)")
    m.set_defaults(fn=_models)

    p_ = sub.add_parser("pull", help="sample a registered or logged generator")
    p_.add_argument(
        "model_uri", help="models:/NAME/VERSION, models:/NAME@ALIAS, models:/m-ID or runs:/RUN_ID/generator"
    )
    p_.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    p_.add_argument("--seed", type=int, default=0)
    p_.add_argument(
        "--class",
        dest="class_id",
        type=int,
        metavar="K",
        help="class-conditional models: samples of class K (default: classes drawn uniformly)",
    )
    p_.add_argument("--out", default="samples", help="output directory (default ./samples)")
    p_.add_argument(
        "--format", action="append", choices=["png", "npy", "parquet"], help="repeatable (default: png and npy)"
    )
    p_.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default as for train)")
    p_.add_argument("--json-out", metavar="FILE")
    p_.set_defaults(fn=_pull)

    e = sub.add_parser("eval", help="quality metrics of a generator: a model URI, a run directory or a checkpoint")
    e.add_argument(
        "source", help="models:/NAME/VERSION, models:/NAME@ALIAS, runs:/ID/generator, a run directory or a checkpoint"
    )
    e.add_argument(
        "--data", help="a built-in dataset or a job spec (its data and metrics sections); default: the generator's own"
    )
    e.add_argument(
        "--n",
        type=int,
        help="samples (default for images: as a run's final eval, train.eval_samples [2,500] plus "
        "metrics.final_samples [10,000] as final_*; 2,500 x 10 seeds for mixtures)",
    )
    e.add_argument("--seed", type=int, default=0)
    e.add_argument(
        "--feature-net",
        help="digits, inception, dinov2 or a TorchScript file (default: metrics.feature_net of the spec)",
    )
    e.add_argument("--tracking-uri", help="MLflow tracking/registry URI, for model URIs (default as for train)")
    e.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where to sample and extract features (default auto: the GPU when torch sees one)",
    )
    e.add_argument("--json-out", metavar="FILE")
    e.set_defaults(fn=_eval)

    db = sub.add_parser("data", help="prepare data: build SRC OUT").add_subparsers(dest="action", required=True)
    b = db.add_parser(
        "build", help="an image folder, a .zip of images, MNIST idx files or a .npz into Parquet for training"
    )
    b.add_argument("src", help="image folder (class = subfolder), .zip, *-images-idx3-ubyte[.gz] or .npz")
    b.add_argument("out", help="OUT.parquet (one file when it fits one shard) or a directory of part-NNNNN.parquet")
    b.add_argument(
        "--resolution", type=_positive(int), metavar="N", help="square N x N: shorter side to N, center crop"
    )
    b.add_argument("--channels", type=int, choices=[1, 3], help="1 (grayscale) or 3 (RGB); default: keep")
    b.add_argument("--limit", type=_positive(int), metavar="N", help="only the first N images")
    b.add_argument(
        "--shard-mb", type=_positive(float), default=256, metavar="MB", help="image bytes per shard (default 256)"
    )
    b.add_argument("--strict", action="store_true", help="an unreadable image is an error (default: skip it)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    b.add_argument("--json-out", metavar="FILE", help="write the result as one JSON document")
    b.set_defaults(fn=_data_build)

    tr = sub.add_parser("track", help="MLflow runs of training runs: sync RUN_DIR").add_subparsers(
        dest="action", required=True
    )
    ty = tr.add_parser(
        "sync", help="send a run's MLflow run what a tracking server away at its end missed (each thing once)"
    )
    ty.add_argument("run_dir", help="the run's directory, <train.storage_path>/<train.name> (a path or a URI)")
    ty.add_argument("--tracking-uri", help="the run's tracking URI (default: the one it was trained with)")
    ty.add_argument("--json-out", metavar="FILE", help="write what was sent as one JSON document")
    ty.set_defaults(fn=_track_sync)

    d = sub.add_parser("datasets", help="list the data sources")
    d.set_defaults(fn=_datasets)

    sb = sub.add_parser("submit", help="submit a job or search spec to a Ray cluster as a Ray job")
    sb.add_argument("job", help="job spec YAML, or a search spec (one with a search: section)")
    sb.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265 (default: $RAY_ADDRESS)")
    sb.add_argument(
        "--follow",
        action="store_true",
        help="stream the job's log and exit with its outcome (0 SUCCEEDED, 1 otherwise)",
    )
    sb.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key (checked here, applied there)",
    )
    sb.add_argument("--workers", type=int, help="number of Train workers (scaling.workers)")
    sb.add_argument("--gpu", action="store_true", help="one GPU per worker (scaling.gpu)")
    _tracking_options(
        sb,
        "MLflow server the cluster reaches, http://HEAD:5000 (default: $MLFLOW_TRACKING_URI)",
        "register the generator under NAME",
        "no MLflow run",
    )
    sb.add_argument(
        "--ship-code", action="store_true", help="send this machine's distgan package with the job (py_modules)"
    )
    sb.add_argument("--python", help="the cluster's Python for the job (default: the interpreter Ray runs in there)")
    sb.add_argument(
        "--workdir", metavar="DIR", help="directory on the cluster the job runs in (default: ~/distgan_jobs/JOB_ID)"
    )
    renv = sb.add_mutually_exclusive_group()
    renv.add_argument(
        "--runtime-env",
        metavar="FILE",
        help="your Ray runtime env (YAML or JSON, as `ray job submit --runtime-env`), merged with distgan's",
    )
    renv.add_argument("--runtime-env-json", metavar="JSON", help="the same, given inline as JSON")
    sb.add_argument("--json-out", metavar="FILE", help="write the job id and, with --follow, the run's result as JSON")
    sb.set_defaults(fn=_submit)

    jb = sub.add_parser("jobs", help="Ray jobs on a cluster: list | status ID | logs ID [--follow] | stop ID")
    jb.add_argument("action", choices=["list", "status", "logs", "stop"])
    jb.add_argument("job_id", nargs="?", help="the job's submission ID (raysubmit_...)")
    jb.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265 (default: $RAY_ADDRESS)")
    jb.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    jb.set_defaults(fn=_jobs)

    ts = sub.add_parser("tracking-server", help="run an MLflow tracking server with lean settings (foreground)")
    ts.add_argument("--host", default="127.0.0.1", help="interface to listen on; 0.0.0.0 on a cluster's head node")
    ts.add_argument("--port", type=int, default=5000)
    ts.add_argument("--backend-store-uri", help="runs and registry (default: sqlite:///$PWD/mlflow.db)")
    ts.add_argument(
        "--artifacts-destination", help="where artifacts go: s3://BUCKET/PREFIX, or a path (default: ./mlartifacts)"
    )
    ts.add_argument(
        "--allowed-hosts",
        help="Host headers to accept beyond localhost and private IPs, e.g. mlflow.example.com,HEAD:5000",
    )
    ts.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    ts.add_argument(
        "--auth", action="store_true", help="users and passwords (MLflow's basic-auth; set MLFLOW_AUTH_ADMIN_PASSWORD)"
    )
    ts.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without --auth")
    ts.set_defaults(fn=_tracking_server)
    return p


def _configure_logging(verbosity: int) -> None:
    """distgan's own lines on stdout (progress at INFO); Ray's and MLflow's only with -v."""
    log = logging.getLogger("distgan")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    if verbosity <= 0:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its logger's level at import
        warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\.")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"mlflow\.")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _configure_logging(args.verbose - args.quiet)
    try:
        return args.fn(args)
    except InputError as e:
        print(f"distgan {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once
        print(f"distgan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
