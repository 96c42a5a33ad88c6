"""The ``register`` stage: log a trained model and its evaluation to MLflow, register a version
with its lineage, and decide ``champion`` / ``challenger`` by test ADE on the same evaluation set
(rule in ``trajfm.registry.manage``). Unchanged data + config + evaluation registers nothing new.

MLflow unreachable: the call raises (MLflow's own HTTP retries first) and changes nothing on
disk; the checkpoint stays in the train stage directory, so a retry registers it."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import trajfm
from trajfm.store import read_manifest, stable_hash


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
    reused: bool = False  # the same lineage was registered before: that version, no new one
    decision: str = ""  # champion | challenger | skipped
    reason: str = ""
    lineage_key: str = ""


def code_version() -> str:
    """The git commit of the checkout trajfm runs from, else the package version."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(trajfm.__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{trajfm.__version__}+{sha}" if sha else trajfm.__version__


def eval_identity(features_manifest: dict, metrics: dict) -> str:
    """Hash naming the evaluation set: features key, split, context length, horizon."""
    return stable_hash({
        "features": features_manifest["key"], "split": metrics.get("split", "test"),
        "context_len": metrics.get("context_len"), "horizon": metrics.get("horizon"),
    })


def _data_hash(features_manifest: dict) -> str:
    """JSON of the content hashes of the data behind the features (the upstream stage's files)."""
    upstream = features_manifest.get("upstream")
    files = read_manifest(upstream).get("files", {}) if upstream and Path(upstream).exists() else {}
    return json.dumps({s: f["hash"] for s, f in files.items()} or {"features": features_manifest["key"]})


def register_training(
    train_dir: str | Path, features_dir: str | Path, metrics: dict, root=None, name: str = "trajfm",
    *, reevaluate_champion: bool = True,
) -> Registration:
    """Register the model of a train stage evaluated with ``metrics`` (from ``run_evaluation``).

    Lineage: the version is tagged with the data hash, the full config (``trajfm.config``:
    preset, model, train, features, eval), the code version and a lineage key (train key +
    features key + evaluation set); registering the same lineage again returns the existing
    version (``reused=True``) and logs nothing. With ``reevaluate_champion`` a champion evaluated
    on another set is measured on this version's evaluation set before comparing.
    """
    from trajfm.registry.tracking import log_and_register, tracking_uri

    train_manifest = read_manifest(train_dir)
    features_manifest = read_manifest(features_dir)
    history = json.loads((Path(train_dir) / "history.json").read_text())
    split = metrics.get("split", "test")
    test_metrics = {f"{split}_{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    params = {
        "preset": train_manifest["preset"],
        "model": train_manifest["model_config"],
        "train": train_manifest["train_config"],
        "features": features_manifest.get("params", {}),
        "eval": {"context_len": metrics.get("context_len"), "horizon": metrics.get("horizon"), "split": split},
    }
    eval_id = eval_identity(features_manifest, metrics)
    promote_metric = f"{split}_ade_m"
    lineage_key = stable_hash({
        "train": train_manifest["key"], "features": features_manifest["key"], "eval": eval_id, "metric": promote_metric,
    })
    tags = {
        "trajfm.features_key": features_manifest["key"],
        "trajfm.train_key": train_manifest["key"],
        "trajfm.data_hash": _data_hash(features_manifest),
        "trajfm.config": json.dumps(params, sort_keys=True, default=str),
        "trajfm.preset": train_manifest["preset"],
        "trajfm.code_version": code_version(),
        "trajfm.device": train_manifest.get("device", "?"),
    }
    measure = _champion_on_eval(features_dir, split, metrics, name) if reevaluate_champion else None
    r = log_and_register(
        root, run_name=f"{train_manifest['preset']}-{train_manifest['key'][:8]}", params=params,
        metrics={**test_metrics, **{f"final_{k}": v for k, v in train_manifest.get("final", {}).items() if isinstance(v, (int, float))}},
        history=history, checkpoint_path=Path(train_dir) / "model.pt", tags=tags, name=name,
        promote_metric=promote_metric, lower_is_better=True,
        eval_id=eval_id, lineage_key=lineage_key, champion_metric_on_eval=measure,
    )
    if not r.reused:  # the error-vs-horizon plot and the readable config beside the loss curves
        from trajfm.registry.plots import log_training_artifacts

        log_training_artifacts(tracking_uri(root), r.run_id, params, metrics)
    return Registration(
        name=name, version=r.version, champion_version=r.champion_version, promoted=r.promoted,
        metric_value=r.metric_value, previous_champion_metric=r.previous_champion_metric, run_id=r.run_id,
        model_uri=r.model_uri, run_url=_run_url(tracking_uri(root), r.run_id, root), reused=r.reused,
        decision=r.decision, reason=r.reason, lineage_key=lineage_key,
    )


def _champion_on_eval(features_dir, split: str, metrics: dict, name: str):
    """``version -> ade_m`` of that registered version on this evaluation set (same windows,
    context and horizon as ``metrics``)."""

    def measure(version: int) -> float | None:
        import mlflow

        from trajfm.evaluate.forecast import evaluate_forecast
        from trajfm.features.windows import WindowSet
        # log_and_register has pointed MLflow's registry at this root before it asks.
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model().model
        ws = WindowSet.load(Path(features_dir) / f"{split}.npz")
        return evaluate_forecast(model, ws, int(metrics["context_len"]), int(metrics["horizon"]))["ade_m"]

    return measure


def _run_url(uri: str, run_id: str, root) -> str | None:
    """Where the run shows in the MLflow UI: the tracking server, or the local `mlflow ui` default."""
    try:
        import mlflow

        exp = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id
    except Exception:
        return None
    base = uri.rstrip("/") if uri.startswith("http") else os.environ.get("TRAJFM_MLFLOW_UI", "http://127.0.0.1:5000")
    return f"{base}/#/experiments/{exp}/runs/{run_id}"
