"""The ``register`` stage: log a trained model and its evaluation to MLflow, register a version,
move ``champion`` only if the new version's test ADE beats the current champion's."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import trajfm
from trajfm.store import read_manifest


@dataclass
class Registration:
    name: str
    version: int
    champion_version: int
    promoted: bool
    metric_value: float
    previous_champion_metric: float | None
    run_id: str
    model_uri: str
    run_url: str | None


def code_version() -> str:
    """The git commit of the checkout trajfm runs from, else the package version."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(trajfm.__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{trajfm.__version__}+{sha}" if sha else trajfm.__version__


def register_training(
    train_dir: str | Path, features_dir: str | Path, metrics: dict, root=None, name: str = "trajfm"
) -> Registration:
    from trajfm.registry.tracking import log_and_register, tracking_uri

    train_manifest = read_manifest(train_dir)
    features_manifest = read_manifest(features_dir)
    history = json.loads((Path(train_dir) / "history.json").read_text())
    test_metrics = {f"{metrics.get('split', 'test')}_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
    params = {
        "preset": train_manifest["preset"],
        "model": train_manifest["model_config"],
        "train": train_manifest["train_config"],
        "features": features_manifest["params"],
        "eval": {"context_len": metrics.get("context_len"), "horizon": metrics.get("horizon"), "split": metrics.get("split")},
    }
    tags = {
        "trajfm.features_key": features_manifest["key"],
        "trajfm.train_key": train_manifest["key"],
        "trajfm.data_hash": json.dumps({s: f["hash"] for s, f in read_manifest(features_manifest["upstream"]).get("files", {}).items()}),
        "trajfm.code_version": code_version(),
        "trajfm.device": train_manifest.get("device", "?"),
    }
    r = log_and_register(
        root, run_name=f"{train_manifest['preset']}-{train_manifest['key'][:8]}", params=params,
        metrics={**test_metrics, **{f"final_{k}": v for k, v in train_manifest.get("final", {}).items() if isinstance(v, (int, float))}},
        history=history, checkpoint_path=Path(train_dir) / "model.pt", tags=tags, name=name,
        promote_metric=f"{metrics.get('split', 'test')}_ade_m", lower_is_better=True,
    )
    return Registration(
        name=name, version=r.version, champion_version=r.champion_version, promoted=r.promoted,
        metric_value=r.metric_value, previous_champion_metric=r.previous_champion_metric, run_id=r.run_id,
        model_uri=r.model_uri, run_url=_run_url(tracking_uri(root), r.run_id, root),
    )


def _run_url(uri: str, run_id: str, root) -> str | None:
    """Where the run shows in the MLflow UI: the tracking server, or the local `mlflow ui` default."""
    try:
        import mlflow

        exp = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id
    except Exception:
        return None
    base = uri.rstrip("/") if uri.startswith("http") else os.environ.get("TRAJFM_MLFLOW_UI", "http://127.0.0.1:5000")
    return f"{base}/#/experiments/{exp}/runs/{run_id}"
