"""The ``register`` stage: log a trained model and its evaluation to MLflow, register a version
with its lineage, and decide ``champion`` / ``challenger`` by test ADE on the same evaluation set
(rule in ``trajfm.registry.manage``). Unchanged data + config + evaluation registers nothing new.

MLflow unreachable: the call raises (MLflow's own HTTP retries first) and changes nothing on
disk; the checkpoint stays in the train stage directory, so a retry registers it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import trajfm
from trajfm.store import read_manifest, stable_hash, within_root

log = logging.getLogger(__name__)


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
    worse_than_constant_velocity: bool = False  # flagged: tag trajfm.worse_than_constant_velocity=true


def code_version() -> str:
    """The git commit of the checkout trajfm runs from, else the package version."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(trajfm.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{trajfm.__version__}+{sha}" if sha else trajfm.__version__


def eval_identity(features_manifest: dict, metrics: dict) -> str:
    """Hash naming the evaluation set: features key, split, context length, horizon."""
    return stable_hash(
        {
            "features": features_manifest["key"],
            "split": metrics.get("split", "test"),
            "context_len": metrics.get("context_len"),
            "horizon": metrics.get("horizon"),
        }
    )


def _data_hash(features_manifest: dict, root=None) -> str:
    """JSON of the content hashes of the data behind the features (the upstream stage's files,
    looked up under this data root, so a moved root reads its own copy)."""
    upstream = features_manifest.get("upstream")
    upstream = within_root(upstream, root) if upstream else None
    files = read_manifest(upstream).get("files", {}) if upstream and upstream.exists() else {}
    return json.dumps({s: f["hash"] for s, f in files.items()} or {"features": features_manifest["key"]})


# Evaluation settings: the run's params (``eval.*``), never metrics.
EVAL_SETTINGS = ("context_len", "horizon")
WORSE_THAN_CV_TAG = "trajfm.worse_than_constant_velocity"


def worse_than_constant_velocity(metrics: dict) -> bool:
    """True when the model's ADE is above constant velocity's on the same windows."""
    ade, cv = metrics.get("ade_m"), metrics.get("cv_ade_m")
    return isinstance(ade, (int, float)) and isinstance(cv, (int, float)) and ade > cv


def model_card(train_manifest: dict, features_manifest: dict, metrics: dict, tags: dict) -> str:
    """The model version's description (markdown): what it takes, in what units, what data it saw
    and how it scores against constant velocity on its evaluation set."""
    from trajfm.forecaster import training_interval_s
    from trajfm.model.checkpoint import load_checkpoint

    split = metrics.get("split", "test")
    counts = features_manifest.get("counts", {})
    windows = ", ".join(f"{s} {c.get('windows', 0):,}" for s, c in counts.items()) or "?"
    final = train_manifest.get("final", {})
    ckpt = Path(train_manifest.get("_dir", "")) / "model.pt"
    interval = training_interval_s(load_checkpoint(ckpt).get("extra", {}).get("stats")) if ckpt.is_file() else None
    ade, cv = metrics.get("ade_m"), metrics.get("cv_ade_m")
    gain = f"{(1 - ade / cv) * 100:+.1f}% vs constant velocity" if ade and cv else "no baseline"
    verdict = (
        "**Worse than constant velocity on its evaluation set: do not serve it as it is.**"
        if worse_than_constant_velocity(metrics)
        else "Better than constant velocity on its evaluation set."
    )
    rows = [("ADE (m)", "ade_m", "cv_ade_m"), ("FDE (m)", "fde_m", "cv_fde_m"), ("step 1 (m)", "fde_m@1", "cv_fde_m@1")]
    table = "\n".join(
        f"| {label} | {metrics[m]:,.1f} | {metrics[c]:,.1f} |" for label, m, c in rows if m in metrics and c in metrics
    )
    trained = (
        f"trained {final.get('epoch', '?')} epochs ({final.get('step', '?')} steps) on "
        f"{train_manifest.get('device', '?')}; {final.get('n_params', 0):,} parameters"
    )
    scored = (
        f"{metrics.get('n_windows', '?')} windows, context {metrics.get('context_len')} points, "
        f"horizon {metrics.get('horizon')} steps"
    )
    return f"""# trajfm model: preset `{train_manifest.get("preset")}`

{verdict}

## Input contract
Canonical points, one row per fix: `traj_id` (string), `t` (UTC datetime or ISO-8601 text),
`lon`, `lat` (WGS84 degrees, float64); other columns (`obj_id`, `kind`, ...) are ignored. At least
2 points per trajectory, at the model's cadence: fixes every ~{f"{interval:.0f}" if interval else "?"} s
(the interval of its training data; other input is refused unless param `resample_s` is
`"model"` or a number of seconds). Param `horizon`: steps to forecast (default 10).
Output: `traj_id, step, t, lon, lat` and error radii `radius_m_q10..radius_m_q90` (metres).
Python: `trajfm.load("models:/NAME@champion").forecast(points, horizon=10)`; see docs/forecast-api.md.

## Data it saw
- features stage `{features_manifest.get("key")}` (windows: {windows}); data hash `{tags.get("trajfm.data_hash", "?")}`
- feature params: `{json.dumps(features_manifest.get("params", {}), sort_keys=True, default=str)[:400]}`
- {trained}
- code `{tags.get("trajfm.code_version", "?")}`

## Score on the {split} split ({scored})
{gain}

| metric | model | constant velocity |
|---|---|---|
{table}
"""


def training_datasets(features_dir: str | Path, features_manifest: dict, split: str) -> list[tuple[object, str]]:
    """MLflow datasets for ``log_input``: the training windows ("training") and the evaluation
    split ("evaluation"), named and digested by the features stage (its key is a hash of its
    inputs), with the source given relative to the data root (``features/<key>/<split>.npz``)
    so a moved root still names them right."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.types.schema import ColSpec, Schema

    from trajfm.features.encode import FEATURE_NAMES

    schema = Schema([ColSpec("float", n) for n in FEATURE_NAMES])
    key = features_manifest["key"]
    counts = features_manifest.get("counts", {})
    out = []
    for part, context in (("train", "training"), (split, "evaluation")):
        digest = stable_hash({"key": key, "part": part, "counts": counts.get(part, {})}, length=16)
        source = LocalArtifactDatasetSource(f"features/{key}/{part}.npz")
        out.append(
            (MetaDataset(source=source, name=f"features-{key[:8]}-{part}", digest=digest, schema=schema), context)
        )
    return out


def _run_params(train_manifest: dict, features_manifest: dict, metrics: dict, split: str) -> dict:
    """The run's params: preset, model, train and features configs, evaluation settings."""
    return {
        "preset": train_manifest["preset"],
        "model": train_manifest["model_config"],
        "train": train_manifest["train_config"],
        "features": features_manifest.get("params", {}),
        "eval": {"context_len": metrics.get("context_len"), "horizon": metrics.get("horizon"), "split": split},
    }


def _lineage_tags(train_manifest: dict, features_manifest: dict, params: dict, root, extra_tags: dict | None) -> dict:
    """The run's and version's lineage tags: stage keys, data hash, config, preset, code, device."""
    return {
        "trajfm.features_key": features_manifest["key"],
        "trajfm.train_key": train_manifest["key"],
        "trajfm.data_hash": _data_hash(features_manifest, root),
        "trajfm.config": json.dumps(params, sort_keys=True, default=str),
        "trajfm.preset": train_manifest["preset"],
        "trajfm.code_version": code_version(),
        "trajfm.device": train_manifest.get("device", "?"),
        **{str(k): str(v) for k, v in (extra_tags or {}).items() if v is not None},
    }


def _flag_if_worse(metrics: dict, tags: dict, preset: str, split: str) -> bool:
    """Tag ``WORSE_THAN_CV_TAG`` in ``tags`` (true or false) and warn when it is true."""
    worse = worse_than_constant_velocity(metrics)
    tags[WORSE_THAN_CV_TAG] = str(worse).lower()
    if worse:
        log.warning(
            "%s: %s ADE %.1f m is worse than constant velocity's %.1f m on the same windows; "
            "registered and flagged (%s=true)",
            preset,
            split,
            metrics["ade_m"],
            metrics["cv_ade_m"],
            WORSE_THAN_CV_TAG,
        )
    return worse


def _registration(r, name: str, uri: str, root, lineage_key: str, worse: bool) -> Registration:
    """The stage's ``Registration`` from ``log_and_register``'s result."""
    return Registration(
        name=name,
        version=r.version,
        champion_version=r.champion_version,
        promoted=r.promoted,
        metric_value=r.metric_value,
        previous_champion_metric=r.previous_champion_metric,
        run_id=r.run_id,
        model_uri=r.model_uri,
        run_url=_run_url(uri, r.run_id, root),
        reused=r.reused,
        decision=r.decision,
        reason=r.reason,
        lineage_key=lineage_key,
        worse_than_constant_velocity=worse,
    )


def register_training(
    train_dir: str | Path,
    features_dir: str | Path,
    metrics: dict,
    root=None,
    name: str = "trajfm",
    *,
    reevaluate_champion: bool = True,
    extra_tags: dict | None = None,
) -> Registration:
    """Register the model of a train stage evaluated with ``metrics`` (from ``run_evaluation``).

    Lineage: the version is tagged with the data hash, the full config (``trajfm.config``:
    preset, model, train, features, eval), the code version and a lineage key (train key +
    features key + evaluation set); registering the same lineage again returns the existing
    version (``reused=True``) and logs nothing. With ``reevaluate_champion`` a champion evaluated
    on another set is measured on this version's evaluation set before comparing.

    The version's description is its model card (``model_card``); the training and evaluation
    windows are logged as run inputs (``training_datasets``); ``extra_tags`` (e.g. the Prefect
    flow run's id and URL) go on the run and the version. A version whose ADE is above constant
    velocity's is tagged ``trajfm.worse_than_constant_velocity=true`` and a warning is logged.
    """
    from trajfm.mlflow_store import mlflow_metric_name
    from trajfm.registry.tracking import log_and_register, tracking_uri

    train_manifest = read_manifest(train_dir)
    features_manifest = read_manifest(features_dir)
    history = json.loads((Path(train_dir) / "history.json").read_text())
    split = metrics.get("split", "test")
    test_metrics = {  # MLflow names: test_ade_m, test_fde_m_at_5 (trajfm.evaluate.metrics keys)
        mlflow_metric_name(f"{split}_{k}"): v
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in EVAL_SETTINGS
    }
    params = _run_params(train_manifest, features_manifest, metrics, split)
    eval_id = eval_identity(features_manifest, metrics)
    promote_metric = f"{split}_ade_m"
    lineage_key = stable_hash(
        {
            "train": train_manifest["key"],
            "features": features_manifest["key"],
            "eval": eval_id,
            "metric": promote_metric,
        }
    )
    tags = _lineage_tags(train_manifest, features_manifest, params, root, extra_tags)
    worse = _flag_if_worse(metrics, tags, train_manifest["preset"], split)
    card = model_card({**train_manifest, "_dir": str(train_dir)}, features_manifest, metrics, tags)
    datasets = training_datasets(features_dir, features_manifest, split)
    measure = _champion_on_eval(features_dir, split, metrics, name) if reevaluate_champion else None
    r = log_and_register(
        root,
        run_name=f"{train_manifest['preset']}-{train_manifest['key'][:8]}",
        params=params,
        metrics={
            **test_metrics,
            **{f"final_{k}": v for k, v in train_manifest.get("final", {}).items() if isinstance(v, (int, float))},
        },
        history=history,
        checkpoint_path=Path(train_dir) / "model.pt",
        tags=tags,
        name=name,
        promote_metric=promote_metric,
        lower_is_better=True,
        eval_id=eval_id,
        lineage_key=lineage_key,
        champion_metric_on_eval=measure,
        description=card,
        datasets=datasets,
    )
    if not r.reused:  # the error-vs-horizon plot and the readable config beside the loss curves
        from trajfm.registry.plots import log_training_artifacts

        log_training_artifacts(tracking_uri(root), r.run_id, params, metrics)
    return _registration(r, name, tracking_uri(root), root, lineage_key, worse)


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
