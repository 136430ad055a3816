"""The job spec: a YAML file plus `--set a.b=c` overrides, typed and validated by pydantic.

Everything that can be checked without Ray or data is checked here, so bad input fails in
milliseconds with exit code 2. Data files and model/data shapes are checked by
`distgan.commands.preflight`, cluster resources by the train command before it asks Ray for workers.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from distgan.errors import InputError

BUILTIN_DATASETS = ("ring8", "grid25", "digits", "stacked_digits")
POINT_DATASETS = ("ring8", "grid25")  # 2-D mixtures: no images, so no conv models and no image augmentation
# The job `distgan train` runs with no spec; the ready specs ship in the package (jobs/ links here).
JOBS_DIR = Path(__file__).parents[1] / "jobs"
DEFAULT_JOB = JOBS_DIR / "grid25.yaml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSpec(Section):
    name: Literal["ring8", "grid25", "digits", "stacked_digits", "parquet", "imagefolder"] = "grid25"
    # parquet: a file or a directory of them; imagefolder: a folder of images. A local path or a URI
    # (s3://, gs://, anything pyarrow.fs resolves), read with the SDKs' usual credentials.
    path: str | None = None
    column: str | None = None  # parquet column: fixed-length float vectors or encoded image bytes
    label_column: str | None = None  # parquet column of int class ids 0..K-1 that travel with the samples
    # Images: the square size they are trained at (8..1024). None: as stored (then all one square size).
    # The built-in digits and stacked_digits are resized from 8 px; user images are resized and cropped.
    resolution: int | None = Field(None, ge=8, le=1024)
    crop: Literal["center", "random", "none"] = "center"  # to a square after resizing the short side; none: squash
    flip: bool = False  # random horizontal flips of user images (a fresh draw every epoch)
    channels: Literal[1, 3] | None = None  # None: 1 if the sampled images are all grayscale, else 3 (RGBA -> RGB)
    on_bad_image: Literal["fail", "skip"] = "fail"  # skip: drop undecodable images, counted as data_skipped
    seed: int = 0  # seeds the built-in datasets' draws and the order user data is read in

    @model_validator(mode="after")
    def _path_matches_source(self) -> DataSpec:
        if self.name in ("parquet", "imagefolder") and not self.path:
            raise ValueError(f"data.name={self.name} needs data.path (a {self.name} location)")
        if self.name in BUILTIN_DATASETS and self.path:
            raise ValueError(f"data.path is only for parquet/imagefolder data, not the built-in {self.name!r}")
        if self.name == "parquet" and not self.column:
            raise ValueError("data.name=parquet needs data.column (the column holding vectors or image bytes)")
        if self.label_column and self.name != "parquet":
            raise ValueError(f"data.label_column is for parquet data; {self.name} has no label column")
        if self.resolution and self.name in POINT_DATASETS:
            raise ValueError(f"data.resolution is for images; {self.name} is 2-D points")
        user_options = {"crop": "center", "flip": False, "channels": None, "on_bad_image": "fail"}
        for key, default in user_options.items():
            if self.name in BUILTIN_DATASETS and getattr(self, key) != default:
                raise ValueError(f"data.{key} is for parquet/imagefolder images, not the built-in {self.name!r}")
        return self


class ModelSpec(Section):
    arch: Literal["mlp", "dcgan", "resnet"] = "mlp"
    latent_dim: int = Field(64, ge=1, le=4096)
    # mlp: widths of the hidden layers of G and D
    g_hidden: list[int] = Field(default_factory=lambda: [256, 256, 256])
    d_hidden: list[int] = Field(default_factory=lambda: [256, 256, 256])
    # dcgan, resnet: channel width of the layer next to the image (doubles per halving of resolution, up to 8x)
    base_channels: int = Field(64, ge=4, le=1024)
    # dcgan: 3x3 conv blocks after each resolution change below the image's; >= 1 also gives G and D
    # a feature map at the image's own resolution. Depth for small images (8 px: one upsampling).
    extra_layers: int = Field(0, ge=0, le=8)
    blocks_per_stage: int = Field(1, ge=1, le=8)  # resnet: residual blocks at each resolution, in G and in D
    spectral_norm: bool = False  # spectral norm on D's layers (mlp, dcgan)
    # class-conditional G and D (labels from the data): a class embedding beside z in G, a projection D
    conditional: bool = False

    @model_validator(mode="after")
    def _positive_widths(self) -> ModelSpec:
        for name in ("g_hidden", "d_hidden"):
            if any(w < 1 for w in getattr(self, name)):
                raise ValueError(f"model.{name} widths must be >= 1, got {getattr(self, name)}")
        if self.arch == "resnet" and self.spectral_norm:
            # Its residual branches start at zero weight, where spectral norm divides by zero.
            raise ValueError(
                "model.spectral_norm is for mlp/dcgan; resnet's D is kept smooth by loss.r1/loss.r2 instead"
            )
        return self


class LossSpec(Section):
    type: Literal["minimax", "nonsaturating", "hinge", "wgan_gp", "lsgan", "rpgan"] = "nonsaturating"
    r1: float = Field(0.0, ge=0)  # gamma of the R1 penalty on real data (gamma/2 * E|grad D(x)|^2)
    r2: float = Field(0.0, ge=0)  # gamma of the R2 penalty on generated data
    # R1/R2 on every k-th D step only, weighted k times (StyleGAN2's lazy regularization): the
    # penalty's double backward is most of a small D step's cost, and its effect builds up slowly
    reg_every: int = Field(1, ge=1, le=64)
    gp: float = Field(10.0, ge=0)  # weight of the WGAN-GP gradient penalty (used by wgan_gp only)


class OptimSpec(Section):
    lr_g: float = Field(1e-4, gt=0, le=1)
    lr_d: float = Field(1e-4, gt=0, le=1)
    betas_g: tuple[float, float] = (0.5, 0.999)
    betas_d: tuple[float, float] = (0.5, 0.999)
    n_critic: int = Field(1, ge=1, le=100)  # D steps per G step
    ema: float = Field(0.999, ge=0, lt=1)  # decay of the EMA generator (0 = EMA is a copy of G)
    # lr over the run (both nets): constant, cosine to 0 at train.steps, or linear to 0 (core.engine.LR_SCHEDULES)
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"

    @model_validator(mode="after")
    def _betas_in_range(self) -> OptimSpec:
        for name in ("betas_g", "betas_d"):
            if not all(0 <= b < 1 for b in getattr(self, name)):
                raise ValueError(f"optim.{name} must be two numbers in [0, 1), got {list(getattr(self, name))}")
        return self


class AugmentSpec(Section):
    """DiffAugment (`distgan.core.augment`): ops applied, in this order, to every image D sees."""

    policy: list[Literal["color", "translation", "cutout"]] = Field(default_factory=list)  # [] = off


class TrainSpec(Section):
    steps: int = Field(5000, ge=1)  # generator steps
    batch_size: int = Field(512, ge=1)  # global batch, split evenly across workers
    eval_every: int = Field(500, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    eval_samples: int = Field(2500, ge=16)  # samples drawn from EMA-G at each eval
    final_eval_seeds: int = Field(10, ge=1)  # the final mixture metrics average this many seeds
    seed: int = 0
    # auto: conv nets on a GPU run bf16 autocast (fp16 autocast + GradScaler where the GPU lacks native
    # bf16); everything else fp32. The run result says which ran (`precision`).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False  # torch.compile G and D (falls back to eager, with one warning, where it fails)
    max_failures: int = Field(3, ge=0)  # worker-group restarts from the latest checkpoint
    stop_on_failure: bool = False  # end the run (status diverged) when a health signal fires
    name: str | None = None  # run name; reusing one resumes that run
    storage_path: str | None = None  # where runs live (default ./distgan_runs)


class MetricsSpec(Section):
    """Image quality (see distgan.metrics): which feature network, and how many samples."""

    # auto: `digits` for the built-in digits, else `inception`; or digits | inception | dinov2 |
    # none | a TorchScript/.pt2 file ([N,C,H,W] in [-1,1] -> [N,F]). inception and dinov2 are
    # downloaded on first use into the torch hub cache and verified by sha256 (README).
    feature_net: str = "auto"
    feature_name: str | None = Field(None, pattern=r"^[a-z0-9_]+$")  # names a TorchScript net's metrics
    final_samples: int = Field(
        10000, ge=16
    )  # generated samples for the final metrics (train.eval_samples during training)
    reference_samples: int = Field(10000, ge=16)  # real images in the cached reference features


class ScalingSpec(Section):
    workers: int = Field(1, ge=1, le=1024)
    gpu: bool = False
    cpus_per_worker: float = Field(1.0, ge=0)
    placement: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = "PACK"


class JobSpec(Section):
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    loss: LossSpec = Field(default_factory=LossSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)

    @model_validator(mode="after")
    def _combinations(self) -> JobSpec:
        if self.train.batch_size % self.scaling.workers:
            raise ValueError(
                f"train.batch_size={self.train.batch_size} does not split evenly over "
                f"scaling.workers={self.scaling.workers}; use a multiple of the worker count"
            )
        if self.model.arch in ("dcgan", "resnet") and self.data.name in POINT_DATASETS:
            arch, data = self.model.arch, self.data.name
            raise ValueError(f"model.arch={arch} makes images; {data} is 2-D points: use model.arch=mlp")
        if self.augment.policy and self.data.name in POINT_DATASETS:
            raise ValueError(f"augment.policy is for images; {self.data.name} is 2-D points: use augment.policy=[]")
        return self


def _field_names(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _section_for(loc: tuple) -> type[BaseModel]:
    """The pydantic class that owns the key at `loc` (to suggest near names for typos)."""
    cls: type[BaseModel] = JobSpec
    for key in loc[:-1]:
        field = cls.model_fields.get(str(key))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            break
        cls = ann
    return cls


def describe_error(err: dict) -> str:
    loc = tuple(err["loc"])
    dotted = ".".join(str(p) for p in loc) or "spec"
    if err["type"] == "extra_forbidden":
        valid = _field_names(_section_for(loc))
        near = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = (
            f"did you mean '{'.'.join(map(str, loc[:-1] + (near[0],)))}'?"
            if near
            else f"valid keys: {', '.join(valid)}"
        )
        return f"unknown key '{dotted}': {hint}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error":  # our own validators name their keys
        return msg
    return f"{dotted}: {msg} (got {err.get('input')!r})"


def apply_override(tree: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise InputError(f"--set {assignment!r}: expected key.path=value, e.g. --set optim.lr_g=2e-4")
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise InputError(f"--set {assignment!r}: '{key}' is a value, not a section")
        node = child
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        value = raw  # YAML 1.1 reads on/off/yes/no as booleans; only true/false mean that here
    node[keys[-1]] = value


def read_yaml(path: Path, what: str, source: str) -> dict:
    """A YAML mapping from `path`, or InputError naming `source` and what is wrong."""
    if not path.is_file():
        raise InputError(f"{what} {source!r} not found; give a YAML file such as jobs/grid25.yaml")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{what} {source!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(tree, dict):
        raise InputError(f"{what} {source!r} must be a mapping of sections (data, model, loss, ...)")
    return tree


def load_spec(path: str | Path | None = None, overrides: list[str] = ()) -> JobSpec:
    """Read a job spec (the built-in default job when `path` is None), apply overrides, validate."""
    source = str(path) if path is not None else "the default job"
    p = Path(path) if path is not None else DEFAULT_JOB
    tree = read_yaml(p, "job spec", source)
    for assignment in overrides:
        apply_override(tree, assignment)
    return validate_spec(tree, source=source)


def validate_spec(tree: dict, source: str = "job spec") -> JobSpec:
    try:
        return JobSpec.model_validate(tree)
    except ValidationError as e:
        problems = [describe_error(err) for err in e.errors()]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(f"{source}: {problems[0]}{more}" + "".join(f"\n  {p}" for p in problems[1:3])) from None


def flatten(spec: JobSpec) -> dict[str, Any]:
    """Dotted keys -> values, e.g. {'optim.lr_g': 0.0001}; for params and tables."""
    out: dict[str, Any] = {}
    for section, values in spec.model_dump().items():
        for key, value in values.items():
            out[f"{section}.{key}"] = value
    return out
