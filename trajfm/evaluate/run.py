"""The ``evaluate`` stage: a trained model on a held-out split, next to the baselines.

Writes ``<root>/evaluate/<key>/metrics.json`` and returns the metrics (metres):
``ade_m`` (mean error over the horizon), ``fde_m`` (error at the last step), ``step1_m``
(one step ahead), the error at steps 1, 5 and 10 (``fde1_m``, ...), and the same for the
constant-velocity baseline (``cv_*``) and the Kalman filter fitted on the training split
(``kf_*``), computed on exactly the same windows; coverage of the 50/80/90% regions and CRPS of
each (``trajfm.evaluate.forecast.evaluate_forecast``). ``train_dir`` may be a calibrate stage
(``trajfm.evaluate.calibrate``): its model then carries the blend and error scale.
"""

from __future__ import annotations

import json
from pathlib import Path

from trajfm.store import StageWriter, data_root, is_complete, read_manifest, stable_hash


def run_evaluation(
    features_dir: str | Path,
    train_dir: str | Path,
    root=None,
    split: str = "test",
    context_len: int = 20,
    horizon: int = 10,
    batch_size: int = 256,
) -> dict:
    from trajfm.evaluate.forecast import evaluate_forecast
    from trajfm.features.windows import WindowSet
    from trajfm.model.checkpoint import load_model

    root = data_root(root)
    train_manifest = read_manifest(train_dir)
    key = stable_hash(
        {
            "features": read_manifest(features_dir)["key"],
            "train": train_manifest["key"],
            "split": split,
            "context_len": context_len,
            "horizon": horizon,
            "v": 4,
        }
    )
    out = root / "evaluate" / key
    if is_complete(out):
        return json.loads((out / "metrics.json").read_text())
    model = load_model(Path(train_dir) / "model.pt")
    ws = WindowSet.load(Path(features_dir) / f"{split}.npz")
    if context_len < 2 or horizon < 1:
        raise ValueError(f"need context_len >= 2 and horizon >= 1, got {context_len}, {horizon}")
    train_ws = Path(features_dir) / "train.npz"
    fit_ws = WindowSet.load(train_ws) if train_ws.is_file() else None
    metrics = evaluate_forecast(
        model, ws, context_len=context_len, horizon=horizon, batch_size=batch_size, fit_ws=fit_ws
    )
    if metrics["n_windows"] == 0:
        raise ValueError(
            f"no {split} window has {context_len + horizon} real points: lower context_len/horizon or use longer windows"
        )
    metrics = {
        **{k: (float(v) if isinstance(v, float) else v) for k, v in metrics.items()},
        "split": split,
        "context_len": context_len,
        "horizon": horizon,
        "preset": train_manifest.get("preset", "?"),
        **errors_by_step(model, ws, context_len, horizon, batch_size),
        "blend": list(model.config.calibration.forecast_blend or ()) or None,
    }
    with StageWriter(root, "evaluate", key) as w:
        w.write_json("metrics", metrics)
        w.manifest.update(features_dir=str(features_dir), train_dir=str(train_dir), split=split)
    return metrics


def errors_by_step(model, ws, context_len: int, horizon: int, batch_size: int = 256) -> dict[str, list[float]]:
    """Mean great-circle error (metres) at each step ahead, model and constant velocity, on the
    windows ``evaluate_forecast`` scores (their mean over the steps is its ``ade_m``, the last its
    ``fde_m``): the error-vs-horizon plot of the MLflow run."""
    from trajfm.evaluate.forecast import constant_velocity, forecastable, rollout
    from trajfm.geo import haversine_m

    sel = forecastable(ws, context_len, horizon)
    truth = slice(context_len, context_len + horizon)
    true_lon, true_lat = ws.lon[sel, truth], ws.lat[sel, truth]
    model_lon, model_lat = rollout(model, ws, context_len, horizon, batch_size)[:2]
    cv_lon, cv_lat = constant_velocity(ws, context_len, horizon)[:2]
    return {
        "error_by_step_m": [float(e) for e in haversine_m(model_lon, model_lat, true_lon, true_lat).mean(axis=0)],
        "cv_error_by_step_m": [float(e) for e in haversine_m(cv_lon, cv_lat, true_lon, true_lat).mean(axis=0)],
    }


def metrics_table(metrics: dict) -> list[dict]:
    """Rows model vs baselines (constant velocity, the Kalman filter when measured) for a Prefect
    table artifact or a printed table: ADE, FDE, the error at steps 1, 5, 10, coverage of the 80%
    region and CRPS where measured."""
    rows = []
    for label, p in (
        (f"model ({metrics.get('preset', '?')})", ""),
        ("constant velocity", "cv_"),
        ("Kalman filter", "kf_"),
    ):
        if f"{p}ade_m" not in metrics:
            continue
        row = {
            "predictor": label,
            "ade_m": round(metrics[f"{p}ade_m"], 1),
            "fde_m": round(metrics[f"{p}fde_m"], 1),
            "step1_m": round(metrics[f"{p}step1_m"], 1),
        }
        row.update(
            {
                k[len(p) :]: round(metrics[k], 1)
                for k in sorted(metrics)
                if k.startswith(f"{p}fde") and k[len(p) + 3 : -2].isdigit()
            }
        )
        if f"{p}coverage80" in metrics:
            row.update(coverage80=round(metrics[f"{p}coverage80"], 3), crps_m=round(metrics[f"{p}crps_m"], 1))
        rows.append(row)
    return rows
