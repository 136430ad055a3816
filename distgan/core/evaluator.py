"""The quality of a generator, during training (at each eval, on EMA-G) and on demand (`distgan eval`).

- 2-D mixtures: rank 0 samples and scores them (PacGAN protocol, `metrics.mixture`).
- Images: every rank draws its share of the samples and embeds them with the feature network;
  rank 0 gathers the features and scores them against the cached features of the real data
  (`metrics.image`, `metrics.reference`). With no feature network, only the sample grid is kept.
- Stacked digits, besides: rank 0 counts the digit triples of its samples (`metrics.stacked`):
  `modes` of 1,000 and `reverse_kl`, on `train.eval_samples` samples during training and on
  `names.STACKED_FINAL_SAMPLES` (or `metrics.final_samples`, if more) at the final eval.
- Class-conditional generators: every sample's class is drawn uniformly (`engine.random_classes`);
  the sample picture is a grid of one row per class; where the feature network classifies (digits),
  `class_accuracy` is the share of class-k samples classified as k, averaged over the classes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from distgan import data
from distgan.core import engine, plots
from distgan.data import DataInfo
from distgan.metrics import features, names, reference, stacked
from distgan.metrics.image import class_accuracy, image_quality
from distgan.metrics.mixture import MIXTURE_STD, mixture_means, mixture_quality, mixture_quality_over_seeds
from distgan.spec.job import JobSpec

SAMPLE_CHUNK = 1000  # images drawn and embedded at a time (10k 64-px RGB images would be 500 MB)
GRID_CLASSES, GRID_COLUMNS = 32, 8  # a conditional run's sample picture: a row of 8 for each of the first 32 classes


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
        self._digits: torch.nn.Module | None = None  # stacked digits: the per-channel digit classifier
        self.num_classes = info.num_classes if spec.model.conditional else None  # G(z, y) takes class ids
        if info.kind == "mixture":
            self.means, self.std = mixture_means(info.name), MIXTURE_STD[info.name]
        choice = features.choose(spec, info)
        if choice:
            self.net = features.load(choice, device, spec.metrics.feature_name)

    @property
    def n_modes(self) -> int | None:
        """What mode collapse is counted against: the mixture's modes, or the classes the feature
        network tells apart (None: neither)."""
        if self.info.kind == "mixture":
            return len(self.means)
        if self.info.name == "stacked_digits":
            return stacked.N_TRIPLES
        return self.net.num_classes if self.net is not None else None

    def _classes(self, n: int, seed: int) -> torch.Tensor | None:
        """The class ids of n samples of a conditional G (None for an unconditional one)."""
        return None if self.num_classes is None else engine.random_classes(n, self.num_classes, seed)

    def _sample(self, G, n: int, seed: int, classes: torch.Tensor | None = None) -> torch.Tensor:
        classes = classes if classes is not None else self._classes(n, seed)
        return engine.sample(G, n, self.spec.model.latent_dim, self.device, seed, classes=classes)

    def sample_grid(self, G, seed: int) -> bytes:
        """The sample picture: 64 samples, or for a conditional G one row of samples per class."""
        if self.num_classes is None:
            return plots.image_grid_png(self._sample(G, 64, seed).numpy())
        rows = min(self.num_classes, GRID_CLASSES)
        classes = torch.arange(rows).repeat_interleave(GRID_COLUMNS)
        images = self._sample(G, len(classes), seed, classes).numpy()
        return plots.image_grid_png(images, columns=GRID_COLUMNS, limit=len(classes))

    def evaluate(self, G, step: int, final: bool, record) -> dict[str, float]:
        """Metrics of `G` on rank 0 ({} elsewhere); the sample picture goes to `record` (rank 0's,
        when there is one)."""
        if self.info.kind == "mixture":
            return self._mixture(G, step, final, record) if self.rank == 0 else {}
        if self.info.kind != "image":
            return {}
        seed = self.spec.train.seed
        if record is not None:
            record.log_image(self.sample_grid(G, seed), f"samples_{step:07d}.png", step)
        q = {}
        if self.net is not None:
            q = (
                self.final_image_metrics(G, seed)
                if final
                else self.image_metrics(G, self.spec.train.eval_samples, seed)
            )
        if self.info.name == "stacked_digits" and self.rank == 0:
            n = self.spec.train.eval_samples
            q |= self.stacked_modes(
                G, max(names.STACKED_FINAL_SAMPLES, self.spec.metrics.final_samples) if final else n, seed
            )
        return q

    def final_image_metrics(self, G, seed: int) -> dict[str, float]:
        """The final eval: the metrics at `train.eval_samples` under their plain names (comparable
        with every other eval and every other run: what ranks and promotes), and at
        `metrics.final_samples` under `final_<name>` (FD's bias shrinks with the sample size)."""
        n, n_final = self.spec.train.eval_samples, self.spec.metrics.final_samples
        out = self.image_metrics(G, n, seed)
        big = out if n_final == n else self.image_metrics(G, n_final, seed)
        return out | {names.final(k): v for k, v in big.items()}

    def stacked_modes(self, G, n: int, seed: int) -> dict[str, float]:
        """modes (digit triples seen, of 1,000) and reverse_kl of n samples from G (rank 0 alone)."""
        if self._digits is None:
            from distgan.metrics import digits_net

            self._digits = digits_net.load().to(self.device)
        chunks = range(0, n, SAMPLE_CHUNK)
        x = [self._sample(G, min(SAMPLE_CHUNK, n - s), seed + 1000 + i).to(self.device) for i, s in enumerate(chunks)]
        return stacked.stacked_modes(torch.cat(x), self._digits)

    def _mixture(self, G, step: int, final: bool, record) -> dict[str, float]:
        n, seed = self.spec.train.eval_samples, self.spec.train.seed
        samples = self._sample(G, n, seed).numpy()
        if record is not None:
            record.log_image(plots.scatter_png(samples, self.means, f"step {step}"), f"samples_{step:07d}.png", step)
        q = self.mixture_over_seeds(G, n, seed) if final else mixture_quality(samples, self.means, self.std)
        # One number that orders runs as (modes, then high_quality) do: for search and ranking.
        return q | {names.MIXTURE_SCORE: q["modes"] + q["high_quality"]}

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
        """n samples in all, in chunks of SAMPLE_CHUNK seeded by their index in the whole set; rank r
        draws chunks r, r + world, ...; rank 0 puts them back in chunk order and scores them. So the
        numbers do not depend on the number of workers: `distgan eval` reproduces a run's."""
        chunks = range(self.rank, -(-n // SAMPLE_CHUNK), self.world)
        mine = []  # (chunk index, features, predicted classes or None, the classes asked for or None)
        for i in chunks:
            size, chunk_seed = min(SAMPLE_CHUNK, n - i * SAMPLE_CHUNK), seed + 7919 * (i + 1)
            classes = self._classes(size, chunk_seed)
            x = self._sample(G, size, chunk_seed, classes).to(self.device)
            predicted = self.net.predict(x) if self.net.num_classes else None
            mine.append((i, self.net.features(x), predicted, None if classes is None else classes.numpy()))
        gathered = sorted((c for share in self.gather(mine) for c in share), key=lambda c: c[0])
        if self.rank != 0:
            return {}
        ref = self.reference()
        fake = np.concatenate([c[1] for c in gathered])
        predicted = np.concatenate([c[2] for c in gathered]) if self.net.num_classes else None
        q = image_quality(ref.features, fake, self.net.name, ref.labels, predicted, self.net.num_classes)
        if predicted is not None and self.num_classes is not None:
            q[names.CLASS_ACCURACY] = class_accuracy(np.concatenate([c[3] for c in gathered]), predicted)
        return q
