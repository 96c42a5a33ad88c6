from __future__ import annotations

from flows._params import documented
from flows._redact import flow
from tasks.features import features_task
from trajfm.params import WindowOptions, as_dict


@flow(name="features", flow_run_name="features", log_prints=True)
@documented
def features_flow(preprocess_dir: str, data_root: str | None = None, params: WindowOptions | None = None) -> str:
    """Windows, chronological train/val/test split, train-only normalization statistics.

    Args:
        params: Window length and stride, split fractions (defaults: 32 points, no overlap, 70/15/15).
    """
    return features_task(preprocess_dir, data_root=data_root, params=as_dict(params))
