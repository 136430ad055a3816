"""Pulling generators back from MLflow and sampling them.

    G, meta = distgan.load_generator("models:/grid25-gan@champion")
    samples = G(torch.randn(16, meta["latent_dim"]))
    # a class-conditional generator (meta["num_classes"] is set) takes class ids too:
    samples = G(torch.randn(16, meta["latent_dim"]), torch.full((16,), 3))

URIs: `models:/NAME/VERSION`, `models:/NAME@ALIAS`, `models:/m-<id>` (MLflow 3's logged model, the
run result's `logged_model_uri`), `runs:/RUN_ID/generator`. The weights load
with `torch.load(weights_only=True)` into an architecture rebuilt from its JSON spec: nothing is
unpickled.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from distgan import models
from distgan.core import engine, plots
from distgan.errors import InputError
from distgan.metrics.mixture import mixture_means
from distgan.spec.job import ModelSpec
from distgan.tracking import registry
from distgan.tracking.client import configure_env, fluent_uri, mlflow_client, resolve_uri

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_\-]+))$")
LOGGED_MODEL_URI = re.compile(r"^models:/(?P<model_id>m-[0-9a-f]{32})$")
RUN_URI = re.compile(r"^runs:/(?P<run_id>[0-9a-f]{32})/(?P<path>[\w\-./]+)$")
FORMATS = ("png", "npy", "parquet")


def check_uri(uri: str, tracking_uri: str) -> str:
    """The URI itself if it names something that exists, else InputError listing what does."""
    from mlflow.exceptions import MlflowException

    lm = LOGGED_MODEL_URI.match(uri)
    if lm:
        try:
            mlflow_client(tracking_uri).get_logged_model(lm["model_id"])
        except MlflowException as e:
            if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            raise InputError(f"no logged model {lm['model_id']} at {tracking_uri}") from None
        return uri
    m = MODEL_URI.match(uri)
    if m:
        client = mlflow_client(tracking_uri)
        registry.require_version(client, m["name"], version=m["version"], alias=m["alias"])
        return uri
    r = RUN_URI.match(uri)
    if r:
        if ".." in r["path"].split("/"):
            raise InputError(f"model URI {uri!r} climbs out of its run with '..'; name an artifact inside the run")
        try:
            mlflow_client(tracking_uri).get_run(r["run_id"])
        except MlflowException:
            raise InputError(f"no MLflow run {r['run_id']} at {tracking_uri}") from None
        return uri
    raise InputError(
        f"model URI {uri!r} is malformed; use models:/NAME/VERSION, models:/NAME@ALIAS, models:/m-ID (a logged "
        "model) or runs:/RUN_ID/generator"
    )


def load_generator(uri: str, tracking_uri: str | None = None) -> tuple[torch.nn.Module, dict]:
    """(generator in eval mode, its meta: model spec, sample_shape, latent_dim, dataset, kind, num_classes).
    A class-conditional generator (num_classes set) is called G(latents, class_ids)."""
    import mlflow

    tracking_uri = resolve_uri(tracking_uri)
    check_uri(uri, tracking_uri)
    configure_env()  # among them: no download progress bar (the console has distgan's lines only)
    # The fluent URI, not download_artifacts(registry_uri=): models:/ URIs resolve through the global one.
    with fluent_uri(tracking_uri):
        model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    local = _extra_files(model_dir)
    meta = json.loads((local / registry.META_FILE).read_text())
    spec, shape = ModelSpec.model_validate(meta["model"]), tuple(meta["sample_shape"])
    generator, _ = models.build(spec, shape, meta.get("num_classes"))
    generator.load_state_dict(torch.load(local / registry.WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return generator.eval(), meta


def _extra_files(model_dir: Path) -> Path:
    """Where a logged generator keeps its state_dict and meta: `extra_files/` of the PyTorch
    flavour, or `artifacts/` of the pyfunc that distgan logged before it."""
    for sub in ("extra_files", "artifacts"):
        if (model_dir / sub / registry.META_FILE).exists():
            return model_dir / sub
    raise InputError(f"{model_dir}: not a distgan generator (no {registry.META_FILE})")


def pull(
    uri: str,
    n: int,
    seed: int,
    out: str | Path,
    formats: list[str],
    tracking_uri: str | None = None,
    class_id: int | None = None,
) -> dict:
    """Sample `n` from the generator at `uri` and write them to `out` in each of `formats`. A
    class-conditional generator makes class `class_id`, or (None) classes drawn uniformly."""
    for f in formats:
        if f not in FORMATS:
            raise InputError(f"--format {f!r}: choose from {', '.join(FORMATS)}")
    if n < 1:
        raise InputError(f"--n {n}: need at least 1 sample")
    generator, meta = load_generator(uri, tracking_uri)
    classes = _classes(uri, meta.get("num_classes"), class_id, n, seed)
    samples = engine.sample(generator, n, meta["latent_dim"], torch.device("cpu"), seed, classes=classes).numpy()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if "png" in formats:
        path = out / "samples.png"
        if samples.ndim == 4:
            path.write_bytes(plots.image_grid_png(samples))
        else:
            means = mixture_means(meta["dataset"]) if meta.get("kind") == "mixture" else samples[:0]
            path.write_bytes(plots.scatter_png(samples, means, uri))
        written.append(path)
    if "npy" in formats:
        path = out / "samples.npy"
        np.save(path, samples)
        written.append(path)
    if "parquet" in formats:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = out / "samples.parquet"
        flat = samples.reshape(len(samples), -1)
        columns = {"sample": list(flat), "shape": [list(samples.shape[1:])] * len(samples)}
        if classes is not None:
            columns["class"] = classes.numpy()
        pq.write_table(pa.table(columns), path)
        written.append(path)
    return {
        "status": "finished",
        "model_uri": uri,
        "n": n,
        "seed": seed,
        "files": [str(p) for p in written],
        "sample_shape": list(samples.shape[1:]),
        "class": class_id,
    }


def _classes(uri: str, num_classes: int | None, class_id: int | None, n: int, seed: int) -> torch.Tensor | None:
    """The class ids of the samples: class_id for all, uniformly drawn ones, or None (unconditional)."""
    if num_classes is None:
        if class_id is not None:
            raise InputError(f"--class {class_id}: {uri} is not class-conditional; leave out --class")
        return None
    if class_id is None:
        return engine.random_classes(n, num_classes, seed)
    if not 0 <= class_id < num_classes:
        raise InputError(f"--class {class_id}: {uri} makes classes 0..{num_classes - 1}")
    return torch.full((n,), class_id, dtype=torch.int64)
