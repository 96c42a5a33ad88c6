from __future__ import annotations

from flows._params import documented
from flows._redact import flow
from tasks.register import register_task
from trajfm.preflight import check_model_name


@flow(name="register", flow_run_name="register-{name}", log_prints=True)
@documented
def register_flow(
    train_dir: str, features_dir: str, metrics: dict, data_root: str | None = None, name: str = "trajfm"
) -> dict:
    """Log to MLflow, register a version (or find the same lineage), move champion only if it is better
    on the same evaluation set, else tag it challenger."""
    check_model_name(name)
    return register_task(train_dir, features_dir, metrics, data_root=data_root, name=name)
