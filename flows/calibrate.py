from __future__ import annotations

from flows._params import documented
from flows._redact import flow
from tasks.calibrate import calibrate_task


@flow(name="calibrate", flow_run_name="calibrate", log_prints=True)
@documented
def calibrate_flow(
    features_dir: str, train_dir: str, data_root: str | None = None, context_len: int = 20, horizon: int = 10
) -> str:
    """The trained model with its per-step blend with constant velocity and its error scale,
    fitted on the validation split (a model directory the evaluate and register stages take)."""
    return calibrate_task(features_dir, train_dir, data_root=data_root, context_len=context_len, horizon=horizon)
