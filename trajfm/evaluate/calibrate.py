"""Fit a trained model's forecast calibration on the validation split (``trajfm.model.blend``):
the per-step blend with constant velocity (never worse than it on that split) and the per-step
quantiles of the blended forecast's distance to the truth (its regions cover their level of the
validation windows). Both are written into
the model's config, so every consumer of the checkpoint forecasts the same way.

``calibrate_stage(features_dir, train_dir)`` is the pipeline's ``calibrate`` stage: it writes
``<root>/calibrate/<key>/`` with the calibrated ``model.pt``, the training ``history.json`` and a
manifest carrying the train manifest's fields (``preset``, ``model_config`` (calibrated),
``train_config``, ``final``, ...) plus ``calibration``: the evaluate and register stages take it
as they take a train directory.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np

from trajfm.evaluate.forecast import constant_velocity, forecastable, rollout
from trajfm.features.windows import WindowSet
from trajfm.geo import haversine_m
from trajfm.model.blend import fit_blend, fit_radius, mix
from trajfm.model.config import RADIUS_LEVELS
from trajfm.model.gpt import TrajGPT


def with_calibration(model: TrajGPT, blend=None, radius_m=None) -> TrajGPT:
    """A view of ``model`` (same weights, shared) whose config carries ``blend`` / ``radius_m``."""
    out = copy.copy(model)
    out.config = model.config.with_overrides(forecast_blend=blend, forecast_radius_m=radius_m)
    return out


def calibrate_model(
    model: TrajGPT, val_ws: WindowSet, context_len: int = 20, horizon: int = 10, batch_size: int = 256
) -> tuple[TrajGPT, dict]:
    """(calibrated model, what was fitted) from the ``forecastable`` validation windows: per step
    1..``horizon`` the blend weight (``fit_blend``) and then the radial error quantiles of the
    blended forecast (``fit_radius``). Any calibration the model had is replaced. The dict has
    ``blend``, ``radius_m`` (per step, at ``RADIUS_LEVELS``) and the validation errors (m) per step of ``model`` (raw),
    ``constant_velocity`` and ``blended``, and ``n_windows``."""
    sel = forecastable(val_ws, context_len, horizon)
    if len(sel) == 0:
        raise ValueError(f"no validation window has {context_len + horizon} real points to calibrate on")
    raw = with_calibration(model)
    m_lon, m_lat, _ = rollout(raw, val_ws, context_len, horizon, batch_size)
    c_lon, c_lat, _ = constant_velocity(val_ws, context_len, horizon)
    true_lon, true_lat = (
        val_ws.lon[sel, context_len : context_len + horizon],
        val_ws.lat[sel, context_len : context_len + horizon],
    )
    last_lon, last_lat = val_ws.lon[sel, context_len - 1], val_ws.lat[sel, context_len - 1]
    blend = fit_blend(last_lon, last_lat, m_lon, m_lat, c_lon, c_lat, true_lon, true_lat)
    b_lon, b_lat = mix(np.asarray(blend), last_lon, last_lat, m_lon, m_lat, c_lon, c_lat)
    err = haversine_m(b_lon, b_lat, true_lon, true_lat)
    radius = fit_radius(err)
    info = {
        "split": "val",
        "n_windows": int(len(sel)),
        "context_len": context_len,
        "horizon": horizon,
        "blend": list(blend),
        "radius_m": [list(r) for r in radius],
        "radius_levels": list(RADIUS_LEVELS),
        "val_error_m": {
            "model": haversine_m(m_lon, m_lat, true_lon, true_lat).mean(axis=0).round(2).tolist(),
            "constant_velocity": haversine_m(c_lon, c_lat, true_lon, true_lat).mean(axis=0).round(2).tolist(),
            "blended": err.mean(axis=0).round(2).tolist(),
        },
    }
    return with_calibration(model, blend, radius), info


def calibrate_stage(
    features_dir: str | Path, train_dir: str | Path, root=None, context_len: int = 20, horizon: int = 10
) -> Path:
    """The calibrated model as a stage directory a train directory's consumers accept (cached by
    the train stage's key, the features' key and the protocol). When the validation split has no
    window long enough, the model is written uncalibrated and ``calibration.json`` says why
    (``skipped``)."""
    from trajfm.model.checkpoint import load_checkpoint, model_from_checkpoint
    from trajfm.store import data_root, is_complete, read_manifest, stable_hash, stage_dir

    root = data_root(root)
    train_manifest = read_manifest(train_dir)
    key = stable_hash(
        {
            "train": train_manifest["key"],
            "features": read_manifest(features_dir)["key"],
            "context_len": context_len,
            "horizon": horizon,
            "v": 1,
        }
    )
    out = stage_dir(root, "calibrate", key)
    if is_complete(out):
        return out
    ckpt = load_checkpoint(Path(train_dir) / "model.pt")
    model = model_from_checkpoint(ckpt)
    if model.config.infilling.objective == "infill":
        raise ValueError("an infill-only model does not forecast: nothing to calibrate")
    val = WindowSet.load(Path(features_dir) / "val.npz")
    if len(forecastable(val, context_len, horizon)):
        calibrated, info = calibrate_model(model, val, context_len, horizon)
    else:  # nothing to choose a rule on: the model stays as trained, and says why
        calibrated = with_calibration(model)
        info = {
            "split": "val",
            "n_windows": 0,
            "context_len": context_len,
            "horizon": horizon,
            "blend": None,
            "radius_m": None,
            "skipped": f"no validation window has {context_len + horizon} real points: the model is left uncalibrated "
            "(no never-worse rule, no error model)",
        }
    return _write_calibrated(root, key, train_dir, ckpt, calibrated, info, "train")


def calibrate_pretrained(
    pretrain_dir: str | Path,
    shards_dir: str | Path,
    root=None,
    context_len: int = 20,
    horizon: int = 10,
    max_windows: int = 4000,
) -> Path:
    """``calibrate_stage`` for a pre-trained model: the blend with constant velocity and the error
    radii fitted on up to ``max_windows`` validation windows of the shards (every source's
    validation period, at every sampling view), so ``trajfm-base`` is registered with its
    never-worse rule. The stage's manifest carries the pretrain stage's (preset, configs,
    final losses, mixing) for the registration."""
    from trajfm.features.shards import sample_split
    from trajfm.model.checkpoint import load_checkpoint, model_from_checkpoint
    from trajfm.store import data_root, is_complete, read_manifest, stable_hash, stage_dir

    root = data_root(root)
    stage = read_manifest(pretrain_dir)
    key = stable_hash(
        {
            "pretrain": stage["key"],
            "shards": read_manifest(shards_dir)["key"],
            "context_len": context_len,
            "horizon": horizon,
            "max_windows": max_windows,
            "v": 1,
        }
    )
    out = stage_dir(root, "calibrate", key)
    if is_complete(out):
        return out
    ckpt = load_checkpoint(Path(pretrain_dir) / "model.pt")
    model = model_from_checkpoint(ckpt)
    calibrated, info = calibrate_model(
        model, sample_split(shards_dir, "val", context_len + horizon, max_windows), context_len, horizon
    )
    return _write_calibrated(root, key, pretrain_dir, ckpt, calibrated, info, "pretrain")


def _write_calibrated(
    root, key: str, source_dir: str | Path, ckpt: dict, calibrated: TrajGPT, info: dict, source: str
) -> Path:
    """The calibrate stage directory: the calibrated checkpoint, the source stage's history and
    manifest fields (preset, configs, final losses, ...), and ``calibration.json``; ``source``
    names the stage it came from (``train`` or ``pretrain``: ``<source>_dir`` / ``<source>_key``)."""
    from trajfm.model.checkpoint import save_checkpoint
    from trajfm.store import StageWriter, read_manifest

    manifest = read_manifest(source_dir)
    with StageWriter(root, "calibrate", key) as w:
        save_checkpoint(w.path / "model.pt", calibrated, extra={**ckpt.get("extra", {}), "calibration": info})
        shutil.copyfile(Path(source_dir) / "history.json", w.path / "history.json")
        w.write_json("calibration", info)
        carried = {
            k: v for k, v in manifest.items() if k not in ("stage", "key", "schema_version", "files", "contents")
        }
        w.manifest.update(
            {
                **carried,
                "model_config": calibrated.config.to_dict(),
                f"{source}_dir": str(source_dir),
                f"{source}_key": manifest["key"],
                "calibration": info,
            }
        )
    return w.final


def uncalibrated_checkpoint(path: str | Path, root=None) -> Path:
    """``path`` itself when its model has no calibration, else a copy without it (same weights,
    config as trained) under ``<root>/calibrate/uncalibrated/``: what fine-tuning starts from
    (training takes the init checkpoint's config, so it would carry a stale rule, applied even by
    its validation forecasts; the rule is fitted again after training)."""
    import hashlib

    from trajfm.model.checkpoint import atomic_torch_save, load_checkpoint
    from trajfm.store import data_root

    ckpt = load_checkpoint(path)
    calibration = ckpt["config"]["calibration"]
    if calibration["forecast_blend"] is None and calibration["forecast_radius_m"] is None:
        return Path(path)
    config = {**ckpt["config"], "calibration": {"forecast_blend": None, "forecast_radius_m": None}}
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    out = data_root(root) / "calibrate" / "uncalibrated" / f"{digest}.pt"
    if not out.is_file():
        atomic_torch_save({**ckpt, "config": config}, out)
    return out


def read_calibration(model_dir: str | Path) -> dict | None:
    """The ``calibration.json`` of a calibrate stage directory, or None for a plain train directory."""
    path = Path(model_dir) / "calibration.json"
    return json.loads(path.read_text()) if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    """``python -m trajfm.evaluate.calibrate --features DIR --train-dir DIR [--root R]``: calibrate
    a trained model, run the evaluate stage on it and print the demo summary's forecast table."""
    import argparse

    from trajfm.evaluate.run import forecast_rows, run_evaluation

    parser = argparse.ArgumentParser(
        prog="python -m trajfm.evaluate.calibrate", description=main.__doc__.split("\n")[0]
    )
    parser.add_argument("--features", required=True, help="a features stage directory (train/val/test windows)")
    parser.add_argument("--train-dir", required=True, help="a train stage directory (model.pt, manifest.json)")
    parser.add_argument("--root", default=None, help="data root (default: $TRAJFM_HOME or ./.trajfm)")
    parser.add_argument("--context-len", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=10)
    args = parser.parse_args(argv)
    out = calibrate_stage(
        args.features, args.train_dir, root=args.root, context_len=args.context_len, horizon=args.horizon
    )
    m = run_evaluation(args.features, out, root=args.root, context_len=args.context_len, horizon=args.horizon)
    print(f"calibrated model: {out / 'model.pt'}")
    print(
        f"evaluate    test split, {m['n_windows']:,} windows, {m['context_len']} points of context, "
        f"{m['horizon']} steps ahead"
    )
    print("\n".join(forecast_rows(m, max(18, len(m["preset"]) + 7))))
    print(json.dumps({k: v for k, v in m.items() if "coverage" in k or "crps" in k}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
