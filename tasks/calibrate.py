"""Prefect task over ``trajfm.evaluate.calibrate``: fit the model's never-worse-than-constant-
velocity blend and its calibrated error on the validation split, into a model stage directory."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from tasks._common import STAGE_TASK
from trajfm.evaluate.calibrate import calibrate_stage, read_calibration


@task(name="calibrate", **STAGE_TASK)
def calibrate_task(
    features_dir: str, train_dir: str, data_root: str | None = None, context_len: int = 20, horizon: int = 10
) -> str:
    out = calibrate_stage(features_dir, train_dir, root=data_root, context_len=context_len, horizon=horizon)
    info = read_calibration(out)
    if info.get("skipped"):
        get_run_logger().warning("calibrate: %s", info["skipped"])
        return str(out)
    errors = info["val_error_m"]
    create_table_artifact(
        [
            {
                "step": h + 1,
                "model_weight": info["blend"][h],
                "radius80_m": round(info["radius_m"][h][info["radius_levels"].index(0.8)], 1),
                **{f"val_{k}_m": round(v[h], 1) for k, v in errors.items()},
            }
            for h in range(len(info["blend"]))
        ],
        key="forecast-calibration",
        description=(
            "per step: blend weight of the model vs constant velocity, radius of the 80% region (validation split)"
        ),
    )
    get_run_logger().info("calibrate: blend %s", info["blend"])
    return str(out)
