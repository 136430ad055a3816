"""distgan: distributed GAN training on Ray, tracked in MLflow.

The Python API is the CLI's commands, for notebooks and scripts:

    from distgan import load_spec, train
    result = train(load_spec("jobs/grid25.yaml", ["train.steps=2000"]))
    result.status, result.metrics["modes"], result.model_uri

`train`, `search`, `evaluate` and `load_generator` are imported on first use, so that
`import distgan` (and `distgan.core`) stays free of Ray and MLflow.
"""

from importlib import import_module

__version__ = "0.1.0"

_API = {
    "load_spec": ("distgan.spec.job", "load_spec"),
    "load_search": ("distgan.commands.search", "load"),
    "train": ("distgan.commands.train", "train"),
    "search": ("distgan.commands.search", "search"),
    "evaluate": ("distgan.commands.evaluate", "evaluate"),
    "load_generator": ("distgan.tracking.hub", "load_generator"),
    "TrackingOptions": ("distgan.tracking.run", "TrackingOptions"),
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'distgan' has no attribute {name!r}")
    module, attr = _API[name]
    return getattr(import_module(module), attr)
