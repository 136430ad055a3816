"""Where a run's record goes: params, per-step metrics, images. The training loop calls only this.

For now the record is files in the run's directory (`<storage>/<name>/distgan/`):
`spec.yaml`, `metrics.jsonl` (one {"step", name: value} line per report) and `images/`.
MLflow plugs in behind the same methods.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml


class RunRecord:
    def __init__(self, run_dir: str | Path, resume_step: int = 0):
        """Open the record; on resume, drop rows past the checkpoint so no step appears twice."""
        self.dir = Path(run_dir)
        (self.dir / "images").mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / "metrics.jsonl"
        if self.metrics_path.exists():
            kept = [line for line in self.metrics_path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
            self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def log_spec(self, spec: dict) -> None:
        (self.dir / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def log_image(self, png: bytes, name: str) -> None:
        (self.dir / "images" / name).write_bytes(png)

    def metric_history(self) -> list[dict]:
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]


def read_spec(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / "spec.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else None
