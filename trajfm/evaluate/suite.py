"""Evaluate any model on any data with one call: the library behind ``trajfm evaluate``.

``evaluate_model(model_uri, data, ...)``:

1. **Model**: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/RUN_ID/model`` (the
   MLflow store of the data root, ``trajfm.mlflow_store.tracking_uri``; the logged pyfunc carries the
   checkpoint as its ``checkpoint`` artifact, which is downloaded and loaded with
   ``weights_only=True``), a checkpoint file (``model.pt``), or a train stage directory. The checkpoint
   holds the weights and the normalization statistics of the model's own training data, so the
   windows below are raw features and the model normalizes them itself.
2. **Data**: files, directories, globs or fsspec URLs any reader of ``trajfm.data.readers``
   accepts (``format`` forces one, else it is detected per file), or ``embedded:SUBSET`` for the
   embedded AIS files (``trajfm.data.catalog.embedded_files``), or a finished ``preprocess``
   stage directory (used as it is). They go through the pipeline's own
   stages, cached under the data root: ``ingest`` (readers, quarantine), ``preprocess`` (the same
   cleaning code and per-kind defaults, ``trajfm.data.clean``), an optional ``select`` stage
   (whole trajectories kept or dropped by region and time, for transfer protocols) and
   ``features`` (windows of ``window`` points).
3. **Split**: the earliest ``fit_frac`` of the data's time span is the *fit* part (baselines that
   learn from data, e.g. the Markov chain and the historical-average speed, fit on it); every
   metric is measured on the later *eval* part, on exactly the same windows for the model and
   every baseline.
4. **Tasks**: ``trajfm.evaluate.tasks.run_tasks`` (forecast, recovery, travel time, next
   location, generation, similarity); metric keys ``<task>.<metric>.<predictor>`` where the
   predictor is ``model`` or a baseline's name.

The result (and the JSON written to ``out``) holds ``metrics``, the row ``accounting`` of every
stage (rows read = kept + quarantined), what model and data were used, and, next to the JSON, an
``.npz`` of what ``trajfm report`` draws (``trajfm.evaluate.report.collect_plot_data``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from trajfm.data.catalog import EMBEDDED_PREFIX, expand_data  # noqa: F401 - part of this module's API
from trajfm.evaluate.tables import (  # noqa: F401 - the suite's tables, part of this module's API
    format_value,
    metrics_rows,
    metrics_table_markdown,
    metrics_table_text,
)
from trajfm.store import StageWriter, data_root, file_sha256, is_complete, read_manifest, stable_hash

RESULTS_FORMAT = "trajfm.evaluate"
DEFAULT_WINDOW = 32
DEFAULT_FIT_FRAC = 0.3
SELECT_VERSION = 1
INGEST_OPTION_KEYS = ("columns", "timezone", "time_format", "delimiter", "source")


# ---------------------------------------------------------------------------------------------
# Models


@dataclass
class LoadedModel:
    """A model ready to evaluate and where it came from."""

    model: object  # TrajGPT, in eval mode
    info: dict = field(default_factory=dict)  # uri, source, version, preset, config, checkpoint sha256


def load_any_model(model_uri: str | os.PathLike, root=None, device: str = "cpu") -> LoadedModel:
    """Load a model from the registry (``models:/...``), a checkpoint file or a train stage directory."""
    from trajfm.mlflow_store import download_registered_checkpoint, registered_version
    from trajfm.model.checkpoint import load_checkpoint, model_from_checkpoint

    uri = str(model_uri)
    info: dict = {"uri": uri}
    if uri.startswith(("models:/", "runs:/")):
        info.update(
            **(
                {"source": "registry", **registered_version(uri, root)}
                if uri.startswith("models:/")
                else {"source": "run"}
            )
        )
        tmp = Path(tempfile.mkdtemp(prefix="trajfm-model-"))
        try:
            path = download_registered_checkpoint(uri, root, tmp)
            info["checkpoint_sha256"] = file_sha256(path)
            ckpt = load_checkpoint(path, map_location=device)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        path = Path(uri).expanduser()
        if path.is_dir():
            path = path / "model.pt"
            info["source"] = "train_dir"
        else:
            info["source"] = "checkpoint"
        if not path.is_file():
            raise FileNotFoundError(
                f"model {uri!r}: no such checkpoint; give models:/NAME@ALIAS, models:/NAME/VERSION, "
                "a model.pt or a train stage directory"
            )
        info["checkpoint"] = str(path.resolve())
        info["checkpoint_sha256"] = file_sha256(path)
        ckpt = load_checkpoint(path, map_location=device)
    model = model_from_checkpoint(ckpt, map_location=device)
    stats = ckpt.get("extra", {}).get("stats") or {}
    info.update(
        preset=str(ckpt.get("extra", {}).get("preset", "?")),
        config=model.config.to_dict(),
        n_params=int(model.num_params()),
        # the training data's statistics the model normalizes its raw inputs with (recorded, not recomputed)
        normalization={k: [float(x) for x in stats[k]] for k in ("mean", "std") if k in stats},
    )
    return LoadedModel(model, info)


# ---------------------------------------------------------------------------------------------
# Data: the pipeline's own stages


def ingest_params(format: str | None = None, kind: str | None = None, options: dict | None = None) -> dict:
    """The ``ingest`` stage params for a format, a kind and reader options (columns, timezone, ...)."""
    options = dict(options or {})
    unknown = set(options) - set(INGEST_OPTION_KEYS)
    if unknown:
        raise ValueError(f"unknown reader option(s) {sorted(unknown)}; known: {list(INGEST_OPTION_KEYS)}")
    params = {k: v for k, v in {"format": format, "kind": kind, **options}.items() if v is not None}
    return params


def ingest_and_clean(
    data,
    *,
    format: str | None = None,
    kind: str | None = None,
    options: dict | None = None,
    root=None,
    preprocess_params: dict | None = None,
) -> tuple[Path | None, Path]:
    """Run the ``ingest`` and ``preprocess`` stages on ``data``; returns their directories.

    ``data`` may also be a finished ``preprocess`` stage directory (of any data root): it is used
    as it is, with the ingest directory its manifest names (None when that is gone)."""
    from trajfm.data.ingest import ingest
    from trajfm.data.preprocess import preprocess

    stage = _preprocess_stage(data)
    if stage is not None:
        if format or kind or options or preprocess_params:
            raise ValueError(
                f"{data} is already preprocessed: format, kind, reader options and cleaning params do not apply"
            )
        ingest_dir = Path(read_manifest(stage).get("ingest", {}).get("dir") or "")
        return (ingest_dir if (ingest_dir / "manifest.json").is_file() else None), stage
    root = data_root(root)
    ingest_dir = ingest(expand_data(data), root=root, params=ingest_params(format, kind, options))
    m = read_manifest(ingest_dir)
    if m["rows_kept"] == 0:
        raise ValueError(
            f"no valid point in {data!r}: read {m['rows_read']}, "
            f"quarantined {m['rows_quarantined']} {m.get('quarantined_by_reason')}"
        )
    pre_dir = preprocess(ingest_dir, root=root, params=preprocess_params, scheduler="sync")
    return Path(ingest_dir), Path(pre_dir)


def _preprocess_stage(data) -> Path | None:
    """``data`` as a complete ``preprocess`` stage directory, else None."""
    if isinstance(data, (list, tuple)):
        if len(data) != 1:
            return None
        data = data[0]
    path = Path(os.fspath(data)).expanduser()
    if not (path / "manifest.json").is_file():
        return None
    try:
        return path if read_manifest(path).get("stage") == "preprocess" else None
    except (OSError, ValueError):
        return None


def _bbox(value, name: str) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    box = [float(v) for v in value]
    if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
        raise ValueError(f"{name} must be [lon_min, lat_min, lon_max, lat_max] with min < max, got {value!r}")
    return box[0], box[1], box[2], box[3]


def _time_range(value) -> tuple[pd.Timestamp | None, pd.Timestamp | None] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"time_range must be [start, end] (ISO times, either may be null), got {value!r}")
    start, end = (None if v is None else pd.Timestamp(v) for v in value)
    start, end = (t if t is None or t.tzinfo else t.tz_localize("UTC") for t in (start, end))
    if start is not None and end is not None and not start < end:
        raise ValueError(f"time_range start must be before end, got {value!r}")
    return start, end


def check_selection(selection: dict | None) -> dict:
    """Validate a trajectory selection: ``bbox`` (keep trajectories entirely inside),
    ``exclude_bbox`` (drop trajectories with any point inside), both ``[lon_min, lat_min, lon_max,
    lat_max]`` degrees; ``time_range`` ``[start, end)`` (keep trajectories starting inside, UTC
    unless the times say otherwise). Returns the JSON form."""
    selection = dict(selection or {})
    unknown = set(selection) - {"bbox", "exclude_bbox", "time_range"}
    if unknown:
        raise ValueError(f"unknown selection key(s) {sorted(unknown)}; known: bbox, exclude_bbox, time_range")
    _bbox(selection.get("bbox"), "bbox"), _bbox(selection.get("exclude_bbox"), "exclude_bbox")
    tr = _time_range(selection.get("time_range"))
    out = {k: [float(v) for v in selection[k]] for k in ("bbox", "exclude_bbox") if selection.get(k) is not None}
    if tr is not None:
        out["time_range"] = [None if t is None else t.isoformat() for t in tr]
    return out


def selected_trajectories(points: pd.DataFrame, selection: dict) -> np.ndarray:
    """Boolean per row: does its whole trajectory pass ``selection`` (see ``check_selection``)?"""
    keep = pd.Series(True, index=points.index)
    traj = points["traj_id"].astype(str)
    lon, lat = points["lon"], points["lat"]
    box = _bbox(selection.get("bbox"), "bbox")
    if box is not None:
        inside = (lon >= box[0]) & (lat >= box[1]) & (lon <= box[2]) & (lat <= box[3])
        keep &= inside.groupby(traj).transform("all")
    box = _bbox(selection.get("exclude_bbox"), "exclude_bbox")
    if box is not None:
        inside = (lon >= box[0]) & (lat >= box[1]) & (lon <= box[2]) & (lat <= box[3])
        keep &= ~inside.groupby(traj).transform("any")
    tr = _time_range(selection.get("time_range"))
    if tr is not None:
        start = points["t"].groupby(traj).transform("min")
        if tr[0] is not None:
            keep &= start >= tr[0]
        if tr[1] is not None:
            keep &= start < tr[1]
    return keep.to_numpy()


def select_stage(parts: list[tuple[Path, dict]], root=None) -> Path:
    """Stage ``select``: processed points of several preprocess outputs, each filtered by its
    selection (whole trajectories), as one table; ``rows_in = rows_kept + rows_filtered``."""
    root = data_root(root)
    parts = [(Path(d), check_selection(s)) for d, s in parts]
    key = stable_hash(
        {"parts": [(read_manifest(d)["key"], read_manifest(d)["files"], s) for d, s in parts], "v": SELECT_VERSION}
    )
    out = root / "select" / key
    if is_complete(out):
        return out
    frames, per_part, seen = [], [], set()
    for d, s in parts:
        pts = pd.read_parquet(d / "points.parquet")
        keep = selected_trajectories(pts, s) if s else np.ones(len(pts), bool)
        ids = set(pts["traj_id"][keep].astype(str).unique())
        if ids & seen:  # the same trajectory twice: overlapping source entries
            raise ValueError(f"trajectories selected by more than one source entry, e.g. {sorted(ids & seen)[:3]}")
        seen |= ids
        frames.append(pts[keep])
        per_part.append(
            {
                "preprocess_dir": str(d),
                "selection": s,
                "rows_in": int(len(pts)),
                "rows_kept": int(keep.sum()),
                "rows_filtered": int((~keep).sum()),
                "trajectories_kept": int(pts["traj_id"][keep].nunique()),
            }
        )
    points = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    points = points.sort_values(["traj_id", "t"], kind="stable").reset_index(drop=True)
    for col in points.columns:  # categories of different parts: back to one category dtype
        if points[col].dtype == object and col in ("kind", "source"):
            points[col] = points[col].astype("category")
    rows_in = sum(p["rows_in"] for p in per_part)
    with StageWriter(root, "select", key) as w:
        w.write_frame("points", points)
        w.manifest.update(
            rows_in=rows_in,
            rows_kept=int(len(points)),
            rows_filtered=rows_in - int(len(points)),
            n_trajectories=int(points["traj_id"].nunique()),
            parts=per_part,
        )
    return out


def window_sets(
    points_dir: Path,
    root=None,
    *,
    window: int = DEFAULT_WINDOW,
    train_frac: float = DEFAULT_FIT_FRAC,
    val_frac: float = 0.0,
    min_points: int | None = None,
) -> Path:
    """The ``features`` stage on a preprocess/select output: chronological windows, train (fit /
    fine-tune) = the earliest ``train_frac`` of the time span, then ``val_frac``, test = the rest."""
    from trajfm.features.windows import WindowParams, make_features

    if window < 2:
        raise ValueError(f"window must be >= 2 points, got {window}")
    params = WindowParams(
        window=window, stride=window, min_points=min_points or min(12, window), train_frac=train_frac, val_frac=val_frac
    )
    return Path(make_features(points_dir, root=root, params=params))


def accounting(
    ingest_dir: Path | None, preprocess_dir: Path, select_dir: Path | None = None, features_dir: Path | None = None
) -> dict:
    """Row accounting of each stage, checked: read = kept + quarantined (ingest and preprocess)."""
    out = {}
    if ingest_dir is not None:
        ing = read_manifest(ingest_dir)
        if ing["rows_read"] != ing["rows_kept"] + ing["rows_quarantined"]:
            raise AssertionError(f"ingest accounting broken in {ingest_dir}")
        out["ingest"] = {k: ing[k] for k in ("rows_read", "rows_kept", "rows_quarantined", "quarantined_by_reason")}
    pre = read_manifest(preprocess_dir)
    if pre["rows_in"] != pre["rows_kept"] + pre["rows_quarantined"]:
        raise AssertionError(f"preprocess accounting broken in {preprocess_dir}")
    out["preprocess"] = {
        k: pre[k]
        for k in ("rows_in", "rows_kept", "rows_quarantined", "quarantined_by_reason", "rows_out", "n_trajectories")
    }
    if select_dir is not None:
        sel = read_manifest(select_dir)
        out["select"] = {k: sel[k] for k in ("rows_in", "rows_kept", "rows_filtered", "n_trajectories")}
    if features_dir is not None:
        feat = read_manifest(features_dir)
        out["windows"] = dict(feat["windows"])
        out["window_points"] = dict(feat["points"])
    return out


# ---------------------------------------------------------------------------------------------
# Tasks


def task_names() -> list[str]:
    from trajfm.evaluate.tasks import TASKS

    return list(TASKS)


def _takes_train_ws(name: str) -> bool:
    import inspect

    from trajfm.evaluate.tasks import TASKS

    return "train_ws" in inspect.signature(TASKS[name]).parameters


def check_tasks(tasks: list[str] | str | None) -> list[str] | None:
    """``None`` (every task) or a list of known task names; ``"a,b"`` is split."""
    if tasks is None:
        return None
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    known = task_names()
    unknown = [t for t in tasks if t not in known]
    if unknown or not tasks:
        raise ValueError(f"unknown task(s) {unknown or tasks!r}; known: {', '.join(known)}")
    return list(tasks)


def run_suite(
    model, eval_ws, fit_ws, tasks: list[str] | None = None, *, seed: int = 0, params: dict | None = None
) -> dict[str, float]:
    """Every metric of ``tasks`` on ``eval_ws`` (model=None: baselines only); learning baselines
    fit on ``fit_ws`` (given to each task as ``train_ws``)."""
    from trajfm.evaluate.tasks import run_tasks

    merged: dict[str, dict] = {}
    for name in tasks or task_names():
        fit = {"train_ws": fit_ws} if fit_ws is not None and len(fit_ws) and _takes_train_ws(name) else {}
        merged[name] = {**fit, **(params or {}).get(name, {})}
    metrics = run_tasks(model, eval_ws, tasks, seed=seed, params=merged)
    return {k: float(v) for k, v in metrics.items()}


def _finite(metrics: dict) -> dict:
    return {k: (v if isinstance(v, float) and math.isfinite(v) else None) for k, v in metrics.items()}


# ---------------------------------------------------------------------------------------------
# The call


def evaluate_model(
    model_uri: str | os.PathLike,
    data,
    *,
    format: str | None = None,
    kind: str | None = None,
    options: dict | None = None,
    tasks: list[str] | str | None = None,
    root=None,
    seed: int = 0,
    params: dict | None = None,
    window: int = DEFAULT_WINDOW,
    fit_frac: float = DEFAULT_FIT_FRAC,
    preprocess_params: dict | None = None,
    selection: dict | None = None,
    out: str | os.PathLike | None = None,
    device: str = "cpu",
) -> dict:
    """Evaluate a model on data (see the module docstring); writes ``out`` (JSON) and the report's
    plot data beside it (``<out stem>.plots.npz``) when ``out`` is given. ``params[task]`` go to
    that task (e.g. ``{"forecast": {"context_len": 20, "horizons": [1, 5, 10]}}``)."""
    from trajfm.features.windows import load_features

    tasks = check_tasks(tasks)
    root = data_root(root)
    loaded = load_any_model(model_uri, root, device=device)
    ingest_dir, pre_dir = ingest_and_clean(
        data, format=format, kind=kind, options=options, root=root, preprocess_params=preprocess_params
    )
    sel_dir = select_stage([(pre_dir, selection)], root) if selection else None
    feat_dir = window_sets(sel_dir or pre_dir, root, window=window, train_frac=fit_frac)
    sets, _ = load_features(feat_dir)
    fit_ws, eval_ws = sets["train"], sets["test"]
    if len(eval_ws) == 0:
        raise ValueError(
            f"no evaluation window from {data!r}: the data after the fit part "
            f"({fit_frac:.0%} of its time span) is too short"
        )
    metrics = run_suite(loaded.model, eval_ws, fit_ws, tasks, seed=seed, params=params)
    result = {
        "format": RESULTS_FORMAT,
        "metrics": _finite(metrics),
        "model": loaded.info,
        "data": {
            "sources": [str(d) for d in (data if isinstance(data, (list, tuple)) else [data])],
            "format": format,
            "kind": kind,
            "options": options or {},
            "selection": check_selection(selection) if selection else {},
        },
        "tasks": tasks or task_names(),
        "seed": int(seed),
        "params": _json_params(params),
        "split": {"fit_frac": fit_frac, "window": window, "fit_windows": len(fit_ws), "eval_windows": len(eval_ws)},
        "accounting": accounting(ingest_dir, pre_dir, sel_dir, feat_dir),
        "stages": {
            "ingest": str(ingest_dir),
            "preprocess": str(pre_dir),
            "select": str(sel_dir) if sel_dir else None,
            "features": str(feat_dir),
        },
        "data_root": str(root),
    }
    if out is not None:
        from trajfm.evaluate.report import collect_plot_data, plot_data_path

        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        plots = collect_plot_data(loaded.model, eval_ws, seed=seed, **_forecast_shape(params))
        plot_file = plot_data_path(out)
        np.savez(plot_file, **plots)
        result["plot_data"] = plot_file.name
        write_json(out, result)
    return result


def _forecast_shape(params: dict | None) -> dict:
    """Context length and longest horizon of the forecast task's params, for the plot data: the
    same windows as the task's table (it needs ``max(horizons, mae_points)`` points after the
    context; defaults as in ``forecast_task``)."""
    import inspect

    from trajfm.evaluate.forecast import forecast_task

    defaults = {k: v.default for k, v in inspect.signature(forecast_task).parameters.items()}
    p = (params or {}).get("forecast", {})
    horizons = p.get("horizons") or defaults["horizons"]
    return {
        "context_len": int(p.get("context_len", defaults["context_len"])),
        "horizon": max(max(int(h) for h in horizons), int(p.get("mae_points", defaults["mae_points"]))),
    }


def _json_params(params: dict | None) -> dict:
    """Task params as JSON (window sets passed in are left out)."""
    return {t: {k: v for k, v in p.items() if k != "train_ws"} for t, p in (params or {}).items()}


def write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` as JSON atomically (temporary sibling, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
