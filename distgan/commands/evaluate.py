"""`distgan eval`: the quality metrics of one generator, from a model URI, a run directory or a
checkpoint, on its own data or another; the same protocol as the run's own evals."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from distgan import data
from distgan.commands import preflight
from distgan.core import checkpoint
from distgan.core.evaluator import Evaluator
from distgan.errors import InputError
from distgan.spec.job import BUILTIN_DATASETS, JobSpec, read_yaml, validate_spec
from distgan.tracking import hub


@dataclass
class EvalResult:
    status: str
    source: str
    dataset: str
    feature_net: str | None
    n: int
    seed: int
    device: str
    metrics: dict

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def evaluate(
    source: str,
    data_arg: str | None = None,
    n: int | None = None,
    seed: int = 0,
    feature_net: str | None = None,
    tracking_uri: str | None = None,
    device: str = "auto",
) -> EvalResult:
    """The metrics of one generator (a model URI, a run directory or a checkpoint) on its data, or
    on `data_arg` (a built-in dataset name or a job spec whose data/metrics it takes), computed on
    `device`: cpu, cuda, or auto (the GPU when there is one)."""
    where = eval_device(device)
    if Path(source).exists():
        state = checkpoint.read_any(Path(source))
        spec = JobSpec.model_validate(state["spec"])
        sample_shape = tuple(data.inspect(spec.data).sample_shape)
        generator = checkpoint.generator(state, spec.model, sample_shape)
    elif source.startswith(("models:/", "runs:/")):
        generator, meta = hub.load_generator(source, tracking_uri)
        sample_shape = tuple(meta["sample_shape"])
        spec = JobSpec.model_validate(
            {"model": meta["model"], "data": {"name": meta["dataset"]}}
            if meta["dataset"] in BUILTIN_DATASETS
            else {"model": meta["model"]}
        )
        if data_arg is None and meta["dataset"] not in BUILTIN_DATASETS:
            raise InputError(f"{source} was trained on {meta['dataset']} data: say which with --data JOB.yaml")
    else:
        raise InputError(
            f"{source!r} is neither a file/directory nor a model URI (models:/NAME/VERSION, "
            "models:/NAME@ALIAS, models:/m-ID, runs:/ID/generator)"
        )
    if data_arg is not None:
        tree = spec.model_dump(mode="json")
        if data_arg in BUILTIN_DATASETS:
            tree["data"] = {"name": data_arg}
        else:
            job = read_yaml(Path(data_arg), "--data", data_arg)
            tree["data"], tree["metrics"] = job.get("data", {}), job.get("metrics", tree["metrics"])
        spec = validate_spec(tree, source=f"--data {data_arg}")
    if feature_net is not None:
        spec.metrics.feature_net = feature_net
    info = preflight.check_job(spec)
    if tuple(info.sample_shape) != sample_shape:
        raise InputError(
            f"the generator makes samples of shape {sample_shape}; {spec.data.name} data is {tuple(info.sample_shape)}"
        )
    n_arg, n = n, n or spec.train.eval_samples
    evaluator = Evaluator(spec, info, where)
    generator.to(where).eval()
    if info.kind == "mixture":
        metrics = evaluator.mixture_over_seeds(generator, n, seed)
    elif evaluator.net is None:
        raise InputError(
            f"no feature network for {spec.data.name} data: pass --feature-net (digits, inception, dinov2 or a "
            "TorchScript file)"
        )
    elif n_arg is None:  # what a run's final eval reports: eval_samples plain, final_samples as final_*
        metrics = evaluator.final_image_metrics(generator, seed)
    else:
        metrics = evaluator.image_metrics(generator, n, seed)
    net = evaluator.net.name if evaluator.net else None
    return EvalResult("finished", source, spec.data.name, net, n, seed, where.type, metrics)


def eval_device(name: str) -> torch.device:
    """The device `distgan eval --device NAME` computes on; InputError for cuda on a machine without one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device cuda: torch {torch.__version__} sees no CUDA GPU here; use --device cpu (or auto)")
    return torch.device(name)
