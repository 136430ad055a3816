"""Generators as MLflow models, and the Model Registry: register, the `champion` rule, promote.

A logged generator is an MLflow model of the native PyTorch flavour:
- `data/model.pt2`: a `torch.export` program with a dynamic batch dimension, so
  `mlflow.pytorch.load_model(uri)`, `mlflow.pyfunc.load_model(uri).predict(latents)` and
  `mlflow models serve -m uri` work wherever mlflow and torch are installed, for any batch size,
  without distgan; an input example (latents, float32 [4, latent_dim]) and a signature. A
  class-conditional generator takes class ids (int64 [N]) as a second input, G(latents, classes): its
  signature and input example have both (`mlflow.pytorch.load_model` serves it; MLflow's pyfunc
  `predict` and `mlflow models serve` take one input only, so they cannot);
- `extra_files/generator.pt` + `extra_files/generator.json`: the plain state_dict (loads with
  `torch.load(weights_only=True)`) and the architecture, which `distgan.tracking.hub` rebuilds without
  unpickling code.

Champion rule: a new version takes the alias `champion` only when its headline quality beats the
current champion's. Headline per dataset kind: 2-D mixtures compare (`modes`, then
`high_quality`), higher is better; images compare the Fréchet distance `fd_<featurenet>`, lower is
better, and only when both versions were measured with the same feature network (a version
measured with another network, or with none, never takes `champion` from one that has a number).
The first version of a name always takes it. `promote` moves it by hand.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import tempfile
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import torch

from distgan.errors import InputError
from distgan.metrics.names import is_quality, rank_key
from distgan.tracking.client import configure_env, fluent_uri, mlflow_client

ALIAS = "champion"
WEIGHTS_FILE, META_FILE = "generator.pt", "generator.json"  # in the model's extra_files/
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,255}$")


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise InputError(f"model name {name!r}: use letters, digits, '_', '-', '.' (e.g. grid25-gan)")


def generator_meta(model, info, which: str, steps: int) -> dict:
    """What `log_generator` stores beside the weights (ModelSpec, DataInfo): enough to rebuild and sample it."""
    return {
        "model": model.model_dump(mode="json"),
        "sample_shape": list(info.sample_shape),
        "latent_dim": model.latent_dim,
        "dataset": info.name,
        "kind": info.kind,
        "generator": which,
        "steps": steps,
        "num_classes": info.num_classes if model.conditional else None,  # G(z, y) takes ids 0..num_classes-1
    }


def log_generator(uri: str, run_id: str, generator: torch.nn.Module, meta: dict, tags: dict | None = None) -> str:
    """Log `generator` (eval mode) to the run with MLflow's PyTorch flavour; returns its model URI.
    `meta`: model spec, sample_shape, latent_dim, dataset, kind, num_classes; `tags`: the logged model's."""
    import mlflow

    configure_env()
    generator = generator.eval().cpu()
    # batch 4, not 1: torch.export fixes a size-1 dimension, and the batch must stay dynamic
    example = torch.randn(4, meta["latent_dim"], generator=torch.Generator().manual_seed(0)).numpy()
    num_classes = meta.get("num_classes")
    with torch.no_grad():
        if num_classes is None:
            signature = mlflow.models.infer_signature(example, generator(torch.from_numpy(example)).numpy())
        else:
            classes = (np.arange(4) % num_classes).astype(np.int64)
            samples = generator(torch.from_numpy(example), torch.from_numpy(classes)).numpy()
            signature = _two_input_signature(example, classes, samples)
            example = (example, classes)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(generator.state_dict(), f"{tmp}/{WEIGHTS_FILE}")
        Path(f"{tmp}/{META_FILE}").write_text(json.dumps(meta))
        with fluent_uri(uri), mlflow.start_run(run_id=run_id):  # the caller sets the final status
            info = mlflow.pytorch.log_model(
                generator,
                name="generator",
                serialization_format="pt2",
                input_example=example,
                signature=signature,
                tags=tags,
                extra_files=[f"{tmp}/{WEIGHTS_FILE}", f"{tmp}/{META_FILE}"],
                # explicit: inferring requirements costs ~7 s per call
                pip_requirements=[
                    f"mlflow=={mlflow.__version__}",
                    f"torch=={torch.__version__.split('+')[0]}",
                    "numpy",
                ],
            )
    return info.model_uri


def _two_input_signature(latents: np.ndarray, classes: np.ndarray, samples: np.ndarray):
    """(latents float32 [-1, latent_dim], classes int64 [-1]) -> samples: the pt2 format needs tensor specs,
    in the order of the forward's arguments."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    batch = lambda a: (-1, *a.shape[1:])  # noqa: E731
    inputs = Schema(
        [TensorSpec(latents.dtype, batch(latents), "latents"), TensorSpec(classes.dtype, batch(classes), "classes")]
    )
    return ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(samples.dtype, batch(samples))]))


def register(
    uri: str, model_uri: str, name: str, kind: str, metrics: dict, tags: dict, description: str, healthy: bool = True
) -> dict:
    """A new version of `name`; it takes `champion` under the rule above, and never when the run
    that made it was not healthy (a health signal fired). Returns
    {"version", "model_uri", "champion": bool, "previous_champion"}."""
    import mlflow

    client = mlflow_client(uri)
    quality = {k: v for k, v in metrics.items() if is_quality(k) and v is not None}
    version_tags = {**tags, "distgan.kind": kind, **{f"metric.{k}": str(v) for k, v in quality.items()}}
    # MLflow prints "Successfully registered model ..." itself; distgan's result line says it (-v shows it)
    quiet = (
        contextlib.nullcontext()
        if logging.getLogger("distgan").isEnabledFor(logging.DEBUG)
        else redirect_stderr(io.StringIO())
    )
    with fluent_uri(uri), quiet:
        mv = mlflow.register_model(model_uri, name, tags=version_tags)
    client.update_model_version(name, mv.version, description=description)
    current = _champion(client, name)
    mine = rank_key(kind, quality)
    if not healthy:
        take = False
    elif current is None:
        take = True
    else:
        theirs = rank_key(
            current.tags.get("distgan.kind", ""),
            {k.removeprefix("metric."): v for k, v in current.tags.items() if k.startswith("metric.")},
        )
        take = mine is not None and (theirs is None or (mine[0] == theirs[0] and mine[1] > theirs[1]))
    if take:
        client.set_registered_model_alias(name, ALIAS, mv.version)
    return {
        "version": int(mv.version),
        "model_uri": f"models:/{name}/{mv.version}",
        "champion": take,
        "previous_champion": int(current.version) if current else None,
    }


def publish_generator(
    uri: str,
    run_id: str,
    generator,
    meta: dict,
    register_as: str | None,
    metrics: dict,
    tags: dict,
    description: str,
    healthy: bool = True,
    key: dict[str, str] | None = None,
) -> dict:
    """Log the generator to the run and, when `register_as` names a model, register it under the
    champion rule. `generator`: the module, or a function that makes it (called only to log it).

    With `key` (tags that tell this generator from the run's others, e.g. its step), each part is done
    once however often it is called: a generator the run already logged under `key` is not logged again,
    one already registered under `register_as` not registered again. Returns {"logged_model_uri",
    "model_uri", "champion", "logged": bool, "registered": bool} (False: found done already)."""
    client = mlflow_client(uri)
    logged = _logged_model(client, run_id, key) if key else None
    out = {"logged_model_uri": logged, "model_uri": None, "champion": None, "logged": logged is None}
    if logged is None:
        module = generator() if callable(generator) and not isinstance(generator, torch.nn.Module) else generator
        out["logged_model_uri"] = log_generator(uri, run_id, module, meta, key)
    out["registered"] = False
    if register_as:
        version = None if logged is None else _version_of(client, register_as, run_id, logged)
        if version is None:
            reg = register(uri, out["logged_model_uri"], register_as, meta["kind"], metrics, tags, description, healthy)
            out["model_uri"], out["champion"], out["registered"] = reg["model_uri"], reg["champion"], True
        else:
            champion = _champion(client, register_as)
            out["model_uri"] = f"models:/{register_as}/{version.version}"
            out["champion"] = champion is not None and champion.version == version.version
    return out


def _logged_model(client, run_id: str, key: dict[str, str]) -> str | None:
    """The URI of the run's logged model (READY: completely uploaded) with the tags `key`, or None."""
    from mlflow.entities import LoggedModelStatus

    experiment_id = client.get_run(run_id).info.experiment_id
    where = " AND ".join([f"source_run_id = '{run_id}'", *(f"tags.`{k}` = '{v}'" for k, v in key.items())])
    found = client.search_logged_models([experiment_id], filter_string=where)
    ready = [m for m in found if m.status == LoggedModelStatus.READY]
    return ready[0].model_uri if ready else None


def _version_of(client, name: str, run_id: str, model_uri: str):
    """The version of `name` registered from the logged model `model_uri` of `run_id`, or None."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return next((v for v in versions if v.source == model_uri), None)


def _champion(client, name: str):
    """The version holding `champion`, or None when there is none (no alias yet: MLflow answers
    INVALID_PARAMETER_VALUE "alias ... not found"; no model: RESOURCE_DOES_NOT_EXIST). Anything
    else (the server away, a 5xx) is raised: it must not hand the alias to an unranked version."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _model_names(client) -> list[str]:
    return sorted(m.name for m in client.search_registered_models())


def require_model(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        names = _model_names(client)
        raise InputError(f"no registered model {name!r}; registered: {', '.join(names) or 'none'}") from None


def require_version(client, name: str, version: str | None = None, alias: str | None = None):
    from mlflow.exceptions import MlflowException

    model = require_model(client, name)
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        if alias:
            raise InputError(
                f"model {name!r} has no alias {alias!r}; aliases: {', '.join(sorted(model.aliases)) or 'none'}"
            ) from None
        raise InputError(
            f"model {name!r} has no version {version}; versions: {', '.join(map(str, versions)) or 'none'}"
        ) from None


def list_models(uri: str) -> list[dict]:
    client = mlflow_client(uri)
    out = []
    for m in sorted(client.search_registered_models(), key=lambda m: m.name):
        latest = max((int(v.version) for v in client.search_model_versions(f"name='{m.name}'")), default=None)
        out.append({"name": m.name, "latest_version": latest, "aliases": dict(m.aliases)})
    return out


def show_model(uri: str, name: str) -> dict:
    client = mlflow_client(uri)
    model = require_model(client, name)
    aliases_of: dict[str, list[str]] = {}
    for alias, version in model.aliases.items():
        aliases_of.setdefault(str(version), []).append(alias)
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    return {
        "name": name,
        "description": model.description,
        "versions": [
            {
                "version": int(v.version),
                "aliases": aliases_of.get(str(v.version), []),
                "run_id": v.run_id,
                "tags": dict(v.tags),
                "description": v.description,
            }
            for v in versions
        ],
    }


def promote(uri: str, name: str, version: str) -> dict:
    client = mlflow_client(uri)
    require_version(client, name, version=str(version))
    previous = _champion(client, name)
    client.set_registered_model_alias(name, ALIAS, str(version))
    return {"name": name, "champion": int(version), "previous_champion": int(previous.version) if previous else None}
