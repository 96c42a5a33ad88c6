from __future__ import annotations

from typing import Literal

from flows._params import documented
from flows._redact import flow
from tasks.validate import validate_task
from trajfm.params import QualityOptions, as_dict


@flow(name="validate", flow_run_name="validate-{stage}", log_prints=True)
@documented
def validate_flow(
    stage_dir: str,
    stage: Literal["raw", "processed"] = "processed",
    params: QualityOptions | None = None,
    data_root: str | None = None,
) -> dict:
    """Great Expectations gate on a stage's points (raw after ingest, processed after preprocess).

    Args:
        params: Overrides of the gate's thresholds, fractions and severities.
    """
    return validate_task(stage_dir, stage, params=as_dict(params), data_root=data_root)
