"""MLflow tracking and registration: where runs go, what a training run logs, who is champion.

Defaults are embedded: runs and the model registry live in ``sqlite:///<root>/mlflow.db`` and
artifacts under ``<root>/mlartifacts`` (``root`` is the data root, see ``trajfm.store``).
Setting ``$MLFLOW_TRACKING_URI`` (e.g. ``http://127.0.0.1:5000``) sends everything to a
tracking server instead; artifacts then go where the server says.

Promotion: every registered version is tagged with its value of ``promote_metric`` and the
identity of its evaluation set; ``champion`` moves to it only when it strictly beats the current
champion on the same evaluation set, otherwise it becomes ``challenger``. The exact rule, the
decision tags and the champion history are in ``trajfm.registry.manage``. Read aliases from
``get_registered_model(name).aliases``: ``search_model_versions`` returns empty ``aliases``.

MLflow is imported inside the functions so ``import trajfm.registry`` stays cheap.
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from trajfm.mlflow_store import (  # noqa: F401 - the store's location is part of this module's API
    ARTIFACTS_DIR,
    DEFAULT_EXPERIMENT,
    global_uris,
    mlflow_metric_name,
    rebase_moved_store,
    recorded_root,
    setup_mlflow,
    sqlite_init_lock,
    tracking_uri,
)
from trajfm.store import data_root

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "trajfm"
CHAMPION = "champion"
MODEL_ARTIFACT_NAME = "model"
LOSS_CURVE_ARTIFACT = "plots/loss_curve.png"
_MAX_PARAM_LENGTH = 6000  # MLflow's limit for a param value


@dataclass
class RegistrationResult:
    """What ``log_and_register`` did: the run, the registered version, and the champion after."""

    run_id: str
    model_uri: str  # models:/<name>/<version>
    version: int
    promoted: bool
    champion_version: int  # the champion after this registration (== version when promoted)
    previous_champion_metric: float | None  # None when there was no comparable champion
    metric_value: float
    reused: bool = False  # an existing version with the same lineage was returned
    decision: str = ""  # champion | challenger | skipped (see trajfm.registry.manage)
    reason: str = ""


def registry_client(root):
    """An MLflow client of the data root's tracking store and registry (a new store migrated once)."""
    from mlflow import MlflowClient

    uri = tracking_uri(root)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with sqlite_init_lock(uri):  # both stores opened (and a new database migrated) once at a time
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)
    return client


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _params_for_mlflow(params: dict) -> dict[str, str]:
    """Nested dicts become dotted keys; values become strings, cut to MLflow's length limit."""
    out = {}
    for key, value in _flatten(params).items():
        text = str(value)
        if len(text) > _MAX_PARAM_LENGTH:
            log.warning("param %s is %d characters; truncated to %d", key, len(text), _MAX_PARAM_LENGTH)
            text = text[: _MAX_PARAM_LENGTH - 3] + "..."
        out[key] = text
    return out


def _as_float(value: Any) -> float | None:
    """A finite-or-NaN float for numbers (bools included), None for anything else."""
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _numeric_metrics(metrics: dict) -> dict[str, float]:
    """The numbers of ``metrics`` (flattened) under MLflow-legal names (``fde_m@5`` -> ``fde_m_at_5``)."""
    out = {}
    for key, value in _flatten(metrics).items():
        number = _as_float(value)
        if number is None:
            log.warning("metric %s=%r is not a number; not logged", key, value)
        else:
            out[mlflow_metric_name(key)] = number
    return out


def _log_history(client, run_id: str, history: list[dict]) -> None:
    """Per-epoch values as metric steps; the step is the record's ``epoch`` (else its index)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = []
    for index, record in enumerate(history):
        step = int(record.get("epoch", record.get("step", index)))
        for key, value in record.items():
            if key in ("epoch", "step"):
                continue
            number = _as_float(value)
            if number is not None:
                batch.append(Metric(key=key, value=number, timestamp=now, step=step))
    for start in range(0, len(batch), 1000):  # log_batch accepts at most 1000 metrics
        client.log_batch(run_id, metrics=batch[start : start + 1000])


def loss_curve_figure(history: list[dict]):
    """A matplotlib Figure of train/val loss per epoch (no pyplot, so no global backend change)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    keys = [k for k in ("train_loss", "val_loss") if any(k in r for r in history)]
    keys += sorted({k for r in history for k in r if k.endswith("_loss") and k not in keys})
    positive = True
    for key in keys:
        points = [(int(r.get("epoch", r.get("step", i))), _as_float(r[key])) for i, r in enumerate(history) if key in r]
        points = [(x, y) for x, y in points if y is not None and math.isfinite(y)]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
            positive = positive and min(ys) > 0
    if keys and positive:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("training curve")
    ax.grid(True, alpha=0.3)
    if keys:
        ax.legend()
    fig.tight_layout()
    return fig


def _pip_requirements() -> list[str]:
    """Pinned requirements of the served model: public packages only. ``trajfm`` itself is not
    one (no index has it): its code travels in the model (``code_paths``, see ``_log_run``)."""
    reqs = []
    for dist in ("mlflow", "torch", "numpy", "pandas"):
        try:
            version = metadata.version(dist).split("+")[0]  # torch 2.13.0+cpu -> 2.13.0
            reqs.append(f"{dist}=={version}")
        except metadata.PackageNotFoundError:
            reqs.append(dist)
    return reqs


def model_code_path() -> str:
    """The ``trajfm`` package directory, logged with every model (MLflow ``code_paths``): the
    served model imports the code it was trained with, from its own ``code/trajfm``."""
    import trajfm

    return str(Path(trajfm.__file__).resolve().parent)


@contextmanager
def registry_lock(root: str | os.PathLike | None):
    """An exclusive lock on ``<root>/mlflow.lock``: two pipeline runs on one data root register
    one at a time, so a lineage is never registered twice and ``champion`` never moves on a
    stale comparison. (Processes on other machines sharing a tracking server are not covered.)"""
    from trajfm.store import file_lock

    with file_lock(data_root(root) / "mlflow.lock"):
        yield


def _current_champion(client, name: str) -> tuple[int | None, Any]:
    from trajfm.registry.manage import aliases_of

    version = aliases_of(client, name).get(CHAMPION)
    return (version, str(version)) if version is not None else (None, None)


def _log_run(
    experiment_id,
    client,
    run_name,
    tags,
    params,
    metrics,
    history,
    checkpoint_path: Path,
    input_example,
    pip_requirements,
    description: str | None = None,
    datasets=(),
) -> tuple[str, str]:
    """One MLflow run: params, metrics, history, loss curve, datasets (``log_input``), the pyfunc
    model; ``description`` is the run's note. (run id, model URI)."""
    import mlflow

    from trajfm.forecaster import training_interval_s
    from trajfm.model.checkpoint import load_checkpoint
    from trajfm.registry.pyfunc import CHECKPOINT_ARTIFACT, example_points, model_signature

    if input_example is None:  # an example at the model's own cadence, so MLflow's check of it passes
        stats = load_checkpoint(checkpoint_path).get("extra", {}).get("stats")
        input_example = example_points(interval_s=training_interval_s(stats) or 60.0)

    with mlflow.start_run(
        experiment_id=experiment_id, run_name=run_name, tags=tags, nested=mlflow.active_run() is not None
    ) as run:
        if description:
            mlflow.set_tag("mlflow.note.content", description)
        for dataset, context in datasets or ():
            mlflow.log_input(dataset, context=context)
        if params:
            mlflow.log_params(_params_for_mlflow(params))
        mlflow.log_metrics(_numeric_metrics(metrics))
        if history:
            _log_history(client, run.info.run_id, history)
            mlflow.log_figure(loss_curve_figure(history), LOSS_CURVE_ARTIFACT)
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_NAME,
            python_model=str(Path(__file__).with_name("pyfunc_code.py")),  # models from code: nothing pickled
            artifacts={CHECKPOINT_ARTIFACT: str(checkpoint_path.resolve())},
            signature=model_signature(),
            input_example=(input_example, {"horizon": 3}),
            pip_requirements=pip_requirements if pip_requirements is not None else _pip_requirements(),
            code_paths=[model_code_path()],
        )
    return run.info.run_id, info.model_uri


def _reused_result(client, name: str, existing, promote_metric: str, metric_value: float) -> RegistrationResult:
    """What ``log_and_register`` returns for a version that already holds the lineage (decided)."""
    from trajfm.registry.manage import DECISION, aliases_of

    champion = aliases_of(client, name).get(CHAMPION)
    return RegistrationResult(
        run_id=existing.run_id,
        model_uri=f"models:/{name}/{existing.version}",
        version=int(existing.version),
        promoted=False,
        champion_version=int(champion) if champion is not None else int(existing.version),
        previous_champion_metric=None,
        metric_value=_as_float(existing.tags.get(promote_metric)) or metric_value,
        reused=True,
        decision=existing.tags.get(DECISION + "decision", ""),
        reason="same lineage: no new version",
    )


def _version_tags(
    tags: dict | None,
    promote_metric: str,
    metric_value: float,
    lower_is_better: bool,
    eval_id: str | None,
    lineage_key: str | None,
) -> dict[str, str]:
    """The tags of a new version: the caller's, the promotion metric's value and direction, the
    evaluation set's id and the lineage key (when given)."""
    from trajfm.registry.manage import EVAL_ID_TAG, LINEAGE_TAG

    version_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    version_tags.update({promote_metric: repr(metric_value), "trajfm.lower_is_better": str(bool(lower_is_better))})
    if eval_id:
        version_tags[EVAL_ID_TAG] = eval_id
    if lineage_key:
        version_tags[LINEAGE_TAG] = lineage_key
    return version_tags


def _register_version(client, model_uri: str, name: str, version_tags: dict, description: str | None) -> int:
    """Register ``model_uri`` as a new version of ``name`` with its tags (one call, so a version
    never lacks its lineage) and its description; returns the version number."""
    import mlflow

    version = int(mlflow.register_model(model_uri, name, tags=version_tags).version)
    if description:
        client.update_model_version(name, str(version), description=description)
    return version


def _checked_inputs(metrics: dict, promote_metric: str, checkpoint_path) -> tuple[float, Path]:
    """(the finite value of ``promote_metric`` in ``metrics``, the checkpoint path that exists)."""
    metric_value = _as_float(_flatten(metrics).get(promote_metric))
    if metric_value is None or not math.isfinite(metric_value):
        raise ValueError(
            f"metrics must hold a finite {promote_metric!r} to decide promotion; got {metrics.get(promote_metric)!r}"
        )
    checkpoint_path = Path(checkpoint_path)
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint_path} does not exist")
    return metric_value, checkpoint_path


def log_and_register(
    root: str | os.PathLike | None,
    run_name: str,
    params: dict,
    metrics: dict,
    history: list[dict],
    checkpoint_path: str | os.PathLike,
    tags: dict | None = None,
    name: str = DEFAULT_MODEL_NAME,
    promote_metric: str = "test_ade_m",
    lower_is_better: bool = True,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    input_example=None,
    pip_requirements: list[str] | None = None,
    eval_id: str | None = None,
    lineage_key: str | None = None,
    champion_metric_on_eval: Callable[[int], float | None] | None = None,
    description: str | None = None,
    datasets=(),
) -> RegistrationResult:
    """Log a training run, register its pyfunc model as a new version of ``name``, and decide
    ``champion`` / ``challenger`` by ``promote_metric`` (rule: ``trajfm.registry.manage``).

    Logs ``params`` (nested dicts flattened to dotted keys), ``metrics``, ``history`` (one
    record per epoch, e.g. ``{"epoch": 3, "train_loss": .., "val_loss": ..}``, as metric
    steps), a loss-curve PNG and the model (:class:`~trajfm.registry.pyfunc.TrajFMPyfunc` with
    the checkpoint as artifact ``checkpoint``). ``tags`` go on the run and on the version (set
    when the version is created). ``metrics[promote_metric]`` must be a finite number.

    ``eval_id`` names the evaluation set (versions are compared directly only on equal ids);
    ``champion_metric_on_eval(version)`` re-measures a champion evaluated elsewhere on this set.
    ``lineage_key``: when a version with that key exists, nothing is logged and that version is
    returned (``reused=True``); if its registration was interrupted before the decision, the
    decision is made now. Registrations under one data root take turns (``registry_lock``).
    ``description`` (markdown, e.g. a model card) becomes the version's description and the
    run's note; ``datasets``: ``(mlflow Dataset, context)`` pairs logged with ``log_input``.
    """
    from trajfm.registry.manage import DECISION, decide, find_by_lineage

    metric_value, checkpoint_path = _checked_inputs(metrics, promote_metric, checkpoint_path)
    experiment_id = setup_mlflow(root, experiment)
    client = registry_client(root)
    with registry_lock(root):  # find, register and decide as one step per data root
        existing = find_by_lineage(client, name, lineage_key) if lineage_key else None
        if existing is not None and (existing.tags or {}).get(DECISION + "decision"):
            log.info("%s v%s already holds lineage %s: no new version", name, existing.version, lineage_key)
            return _reused_result(client, name, existing, promote_metric, metric_value)

        version_tags = _version_tags(tags, promote_metric, metric_value, lower_is_better, eval_id, lineage_key)
        if existing is not None:  # registered, but stopped before the decision: decide now
            version, run_id = int(existing.version), existing.run_id
        else:
            run_tags = {**version_tags, "trajfm.promote_metric": promote_metric, "trajfm.registered_model": name}
            logged = (params, metrics, history, checkpoint_path, input_example, pip_requirements, description, datasets)
            run_id, model_uri = _log_run(experiment_id, client, run_name, run_tags, *logged)
            version = _register_version(client, model_uri, name, version_tags, description)

        d = decide(
            client, name, version, promote_metric, metric_value, lower_is_better, eval_id, champion_metric_on_eval
        )
        client.set_model_version_tag(name, str(version), "trajfm.promoted", str(d.promoted).lower())
    return RegistrationResult(
        run_id=run_id,
        model_uri=f"models:/{name}/{version}",
        version=version,
        promoted=d.promoted,
        champion_version=d.champion_version,
        previous_champion_metric=d.compared_value,
        metric_value=metric_value,
        decision=d.decision,
        reason=d.reason,
    )


def champion_info(root: str | os.PathLike | None = None, name: str = DEFAULT_MODEL_NAME) -> dict | None:
    """The current champion of ``name`` (version, run, tags, run metrics, URIs), or None.

    Does not change MLflow's global tracking URI, and does not create a store that is not
    there (a fresh SQLite store costs seconds of schema migrations).
    """
    uri = tracking_uri(root)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        return None
    client = registry_client(root)
    champion, raw = _current_champion(client, name)
    if champion is None:
        return None
    mv = client.get_model_version(name, str(raw))
    run = client.get_run(mv.run_id) if mv.run_id else None
    return {
        "name": name,
        "version": champion,
        "model_uri": f"models:/{name}@{CHAMPION}",
        "version_uri": f"models:/{name}/{champion}",
        "run_id": mv.run_id,
        "source": mv.source,
        "tags": dict(mv.tags or {}),
        "metrics": dict(run.data.metrics) if run else {},
        "created_ms": mv.creation_timestamp,
    }
