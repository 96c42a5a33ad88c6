from __future__ import annotations

from typing import Any

from flows._params import documented
from flows._redact import flow
from tasks.train import train_task
from trajfm.params import DEFAULT_PRESET, PresetName, TrainOverrides, as_dict
from trajfm.preflight import check_run


@flow(name="train", flow_run_name="train-{preset}", log_prints=True)
@documented
def train_flow(
    features_dir: str,
    data_root: str | None = None,
    preset: PresetName = DEFAULT_PRESET,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: TrainOverrides | None = None,
    nproc: int = 1,
    torchrun_args: list[str] | None = None,
) -> str:
    """Train a model preset on a features stage (GPU when present, CPU otherwise) in a child
    process; nproc > 1 runs it data-parallel under torchrun (one process per GPU)."""
    check_run(data_root=data_root, preset=preset)
    return train_task(
        features_dir,
        data_root=data_root,
        preset=preset,
        model_overrides=model_overrides,
        train_overrides=as_dict(train_overrides),
        nproc=nproc,
        torchrun_args=torchrun_args,
    )
