"""The quality of a generator, during training (at each eval, on EMA-G) and on demand (`distgan eval`).

- 2-D mixtures: rank 0 samples and scores them (PacGAN protocol, `metrics.mixture`).
- Images: every rank draws its share of the samples and embeds them with the feature network;
  rank 0 gathers the features and scores them against the cached features of the real data
  (`metrics.image`, `metrics.reference`). With no feature network, only the sample grid is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from distgan import data, engine, plots
from distgan.config import JobSpec
from distgan.data import DataInfo
from distgan.errors import InputError
from distgan.metrics import features, reference
from distgan.metrics.image import image_quality
from distgan.metrics.mixture import MIXTURE_STD, mixture_means, mixture_quality, mixture_quality_over_seeds

SAMPLE_CHUNK = 1000  # images drawn and embedded at a time (10k 64-px RGB images would be 500 MB)


def single_process_gather(obj) -> list:
    return [obj]


class Evaluator:
    """Built on every rank; `evaluate` is a collective for images (every rank must call it)."""

    def __init__(
        self,
        spec: JobSpec,
        info: DataInfo,
        device: torch.device,
        rank: int = 0,
        world: int = 1,
        gather: Callable[[object], list] = single_process_gather,
    ):
        self.spec, self.info, self.device = spec, info, device
        self.rank, self.world, self.gather = rank, world, gather
        self.net: features.FeatureNet | None = None
        self._reference: reference.Reference | None = None
        if info.kind == "mixture":
            self.means, self.std = mixture_means(info.name), MIXTURE_STD[info.name]
        choice = features.choose(spec, info)
        if choice:
            self.net = features.load(choice, device, spec.metrics.feature_name)

    def _sample(self, G, n: int, seed: int) -> torch.Tensor:
        return engine.sample(G, n, self.spec.model.latent_dim, self.device, seed)

    def evaluate(self, G, step: int, final: bool, record) -> dict[str, float]:
        """Metrics of `G` on rank 0 ({} elsewhere); the sample picture goes to `record` (rank 0's)."""
        if self.info.kind == "mixture":
            return self._mixture(G, step, final, record) if self.rank == 0 else {}
        if self.info.kind != "image":
            return {}
        seed = self.spec.train.seed
        if self.rank == 0:
            record.log_image(plots.image_grid_png(self._sample(G, 64, seed).numpy()), f"samples_{step:07d}.png")
        if self.net is None:
            return {}
        n = self.spec.metrics.final_samples if final else self.spec.train.eval_samples
        return self.image_metrics(G, n, seed)

    def _mixture(self, G, step: int, final: bool, record) -> dict[str, float]:
        n, seed = self.spec.train.eval_samples, self.spec.train.seed
        samples = self._sample(G, n, seed).numpy()
        record.log_image(plots.scatter_png(samples, self.means, f"step {step}"), f"samples_{step:07d}.png")
        q = self.mixture_over_seeds(G, n, seed) if final else mixture_quality(samples, self.means, self.std)
        # One number that orders runs as (modes, then high_quality) do: for search and ranking.
        return q | {"mixture_score": q["modes"] + q["high_quality"]}

    def mixture_over_seeds(self, G, n: int, seed: int) -> dict[str, float]:
        """The headline mixture figures: mean and standard error over `train.final_eval_seeds`
        seeds of n samples each (PacGAN protocol)."""
        seeds = [seed + 1000 + i for i in range(self.spec.train.final_eval_seeds)]
        return mixture_quality_over_seeds(lambda k, s: self._sample(G, k, s).numpy(), self.means, self.std, seeds, n)

    def reference(self) -> reference.Reference:
        """Features of the real data (rank 0), from the cache after the first time."""
        if self._reference is None:
            images, labels = data.real_images(self.spec.data, self.info, self.spec.metrics.reference_samples)
            self._reference = reference.reference(images, labels, self.net, self.device)
        return self._reference

    def image_metrics(self, G, n: int, seed: int) -> dict[str, float]:
        """n samples in all, each rank drawing its share with its own seeds; scored on rank 0."""
        share = n // self.world + (self.rank < n % self.world)
        feats, preds = [], []
        for i, start in enumerate(range(0, share, SAMPLE_CHUNK)):
            x = self._sample(G, min(SAMPLE_CHUNK, share - start), seed + 7919 * (self.rank * 1000 + i + 1)).to(
                self.device
            )
            feats.append(self.net.features(x))
            if self.net.num_classes:
                preds.append(self.net.predict(x))
        mine = (np.concatenate(feats), np.concatenate(preds) if preds else None) if feats else None  # None: n < world
        shares = [s for s in self.gather(mine) if s is not None]
        if self.rank != 0:
            return {}
        ref = self.reference()
        fake = np.concatenate([f for f, _ in shares])
        predicted = np.concatenate([p for _, p in shares]) if self.net.num_classes else None
        return image_quality(ref.features, fake, self.net.name, ref.labels, predicted, self.net.num_classes)


def headline(metrics: dict) -> str:
    """The few numbers a person reads first, e.g. 'modes 25 high_quality 0.88 reverse_kl 0.005'."""
    keys = [
        "modes",
        "high_quality",
        "reverse_kl",
        *sorted(k for k in metrics if k.startswith("fd_")),
        "precision",
        "recall",
        "classes_covered",
    ]
    return "  ".join(f"{k} {metrics[k]:.3g}" for k in keys if metrics.get(k) is not None)


def _checkpoint_state(path: Path) -> dict:
    """A checkpoint's state: the file, its directory, or the newest checkpoint of a run directory."""
    from distgan.loop import CHECKPOINT_FILE, read_checkpoint

    if path.is_dir() and not (path / CHECKPOINT_FILE).is_file():
        found = sorted(path.glob(f"checkpoint_*/{CHECKPOINT_FILE}"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise InputError(
                f"{path} holds no {CHECKPOINT_FILE} and no checkpoint_*/{CHECKPOINT_FILE}; give a run directory, a checkpoint or a model URI"
            )
        path = found[-1]
    return read_checkpoint(path)


def evaluate_generator(
    source: str,
    data_arg: str | None = None,
    n: int | None = None,
    seed: int = 0,
    feature_net: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """`distgan eval`: the metrics of one generator (a model URI, a run directory or a checkpoint)
    on its data, or on `data_arg` (a built-in dataset name or a job spec whose data/metrics it takes)."""
    from distgan import config, hub
    from distgan.loop import checkpoint_generator
    from distgan.train import preflight

    if Path(source).exists():
        state = _checkpoint_state(Path(source))
        spec = JobSpec.model_validate(state["spec"])
        sample_shape = tuple(data.inspect(spec.data).sample_shape)
        generator = checkpoint_generator(state, spec.model, sample_shape)
    elif source.startswith(("models:/", "runs:/")):
        generator, meta = hub.load_generator(source, tracking_uri)
        sample_shape = tuple(meta["sample_shape"])
        spec = JobSpec.model_validate(
            {"model": meta["model"], "data": {"name": meta["dataset"]}}
            if meta["dataset"] in config.BUILTIN_DATASETS
            else {"model": meta["model"]}
        )
        if data_arg is None and meta["dataset"] not in config.BUILTIN_DATASETS:
            raise InputError(f"{source} was trained on {meta['dataset']} data: say which with --data JOB.yaml")
    else:
        raise InputError(
            f"{source!r} is neither a file/directory nor a model URI (models:/NAME/VERSION, models:/NAME@ALIAS, runs:/ID/generator)"
        )
    if data_arg is not None:
        tree = spec.model_dump(mode="json")
        if data_arg in config.BUILTIN_DATASETS:
            tree["data"] = {"name": data_arg}
        else:
            job = config.read_yaml(Path(data_arg), "--data", data_arg)
            tree["data"], tree["metrics"] = job.get("data", {}), job.get("metrics", tree["metrics"])
        spec = config.validate_spec(tree, source=f"--data {data_arg}")
    if feature_net is not None:
        spec.metrics.feature_net = feature_net
    info = preflight(spec)
    if tuple(info.sample_shape) != sample_shape:
        raise InputError(
            f"the generator makes samples of shape {sample_shape}; {spec.data.name} data is {tuple(info.sample_shape)}"
        )
    n = n or (spec.metrics.final_samples if info.kind == "image" else spec.train.eval_samples)
    evaluator = Evaluator(spec, info, torch.device("cpu"))
    generator.eval()
    if info.kind == "mixture":
        metrics = evaluator.mixture_over_seeds(generator, n, seed)
    elif evaluator.net is None:
        raise InputError(
            f"no feature network for {spec.data.name} data: pass --feature-net (digits, inception or a TorchScript file)"
        )
    else:
        metrics = evaluator.image_metrics(generator, n, seed)
    net = evaluator.net.name if evaluator.net else None
    return {
        "status": "finished",
        "source": source,
        "dataset": spec.data.name,
        "feature_net": net,
        "n": n,
        "seed": seed,
        "metrics": metrics,
    }
