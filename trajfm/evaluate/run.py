"""The ``evaluate`` stage: a trained model on a held-out split, next to the baselines.

Writes ``<root>/evaluate/<key>/metrics.json`` and returns the metrics (metres):
``ade_m`` (mean error over the horizon), ``fde_m`` (error at the last step), ``ade_m@h`` and
``fde_m@h`` at steps 1, 5 and 10 (the keys of ``trajfm.evaluate.metrics``), and the same for the
constant-velocity baseline (``cv_*``) and the Kalman filter fitted on the training split
(``kf_*``), computed on exactly the same windows; coverage of the 50/80/90% regions and CRPS of
each (``trajfm.evaluate.forecast.evaluate_forecast``). ``train_dir`` may be a calibrate stage
(``trajfm.evaluate.calibrate``): its model then carries the blend and error scale.
"""

from __future__ import annotations

import json
from pathlib import Path

from trajfm.evaluate.metrics import SUMMARY_STEPS
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
            f"no {split} window has {context_len + horizon} real points: "
            "lower context_len/horizon or use longer windows"
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
    from trajfm.evaluate.metrics import step_errors_m

    sel = forecastable(ws, context_len, horizon)
    truth = slice(context_len, context_len + horizon)
    true_lon, true_lat = ws.lon[sel, truth], ws.lat[sel, truth]
    model_lon, model_lat = rollout(model, ws, context_len, horizon, batch_size)[:2]
    cv_lon, cv_lat = constant_velocity(ws, context_len, horizon)[:2]
    return {
        "error_by_step_m": step_errors_m(model_lon, model_lat, true_lon, true_lat),
        "cv_error_by_step_m": step_errors_m(cv_lon, cv_lat, true_lon, true_lat),
    }


def metrics_table(metrics: dict) -> list[dict]:
    """Rows model vs baselines (constant velocity, the Kalman filter when measured) for a Prefect
    table artifact or a printed table: ADE, FDE, the error at steps 1, 5, 10 (``fde_m@h``), coverage of the 80%
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
            **{f"fde_m@{h}": round(metrics[f"{p}fde_m@{h}"], 1) for h in SUMMARY_STEPS if f"{p}fde_m@{h}" in metrics},
        }
        if f"{p}coverage80" in metrics:
            row.update(coverage80=round(metrics[f"{p}coverage80"], 3), crps_m=round(metrics[f"{p}crps_m"], 1))
        rows.append(row)
    return rows


def forecast_rows(m: dict, w: int) -> list[str]:
    """The demo's forecast table: error (m) at steps 1, 5 and 10 (those within the horizon) and
    ADE, of constant velocity, the Kalman filter (when measured) and the model; then the model's
    never-worse rule and the coverage of each one's 80% region (when measured)."""
    steps = [h for h in SUMMARY_STEPS if f"fde_m@{h}" in m]
    head = (
        "".join(f"{f'@{h} (m)':>10}" for h in steps)
        + f"{'ADE (m)':>10}"
        + (f"{'80% cov':>9}" if "coverage80" in m or "cv_coverage80" in m else "")
    )
    lines = [f"            {'':{w}}{head}"]
    for label, p in (("constant velocity", "cv_"), ("Kalman filter", "kf_"), ("model " + m["preset"], "")):
        if f"{p}ade_m" not in m:
            continue
        cov = f"{100 * m[f'{p}coverage80']:8.0f}%" if f"{p}coverage80" in m else ""
        lines.append(
            f"            {label:{w}}"
            + "".join(f"{m[f'{p}fde_m@{h}']:10.1f}" for h in steps)
            + f"{m[f'{p}ade_m']:10.1f}"
            + cov
        )
    if m.get("blend") is not None:
        lines.append(
            f"            (the model blends with constant velocity per step, weights {m['blend']}: "
            "chosen on validation)"
        )
    return lines
