"""The in-memory trainer: ``train`` on windows held in memory (``trajfm.features.windows.WindowSet``).

Deterministic: the same windows, statistics and configs give the same losses. Model init uses
``torch.manual_seed(seed)``; the batch order of epoch ``e`` is a permutation drawn from its own
generator seeded from ``(seed, e)``, so a run resumed at any step sees exactly the batches and
dropout masks (global RNG state is checkpointed) an uninterrupted run would.

``batch_size`` is the number of windows per optimizer step, whatever the number of processes and
``grad_accum_steps``: a step takes the next ``batch_size`` windows of the epoch's order (the
global batch), gives process ``r`` of ``W`` the r-th of W contiguous slices of it, and cuts that
slice into ``grad_accum_steps`` micro-batches, each loss weighted by its share of the global
batch's scored targets (``trajfm.train.loop.accumulate``), so one process, W processes and any
accumulation compute the same gradient up to float rounding (tests/test_train_ddp.py). Every
process holds all windows and computes the same batch order; only rank 0 writes checkpoints,
shows progress and logs metrics. ``checkpoint_dir`` must be on a file system every process sees.

With validation data, ``best.pt`` keeps the weights of the epoch with the lowest validation loss,
or with ``select_by="fde"`` the lowest forecast error on the validation windows (FDE in metres at
``select_horizon`` steps from ``select_context`` points, as the ``forecast_evaluator`` measures it;
each epoch's ``val_fde_m`` is in the history). ``ema_decay`` > 0 validates, keeps and returns the
weight average (``trajfm.train.averaging``; without validation data written to ``average.pt``).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from trajfm.features.windows import WindowSet
from trajfm.model.config import GPTConfig
from trajfm.progress import progress_enabled
from trajfm.train.checkpoint import starting_weights
from trajfm.train.config import TrainConfig, config_identity, planned_steps, resolve_device
from trajfm.train.distributed import process_group
from trajfm.train.evaluation import ForecastEvaluator, forecast_selection, validation_loss
from trajfm.train.loop import Batch, Run, TrainResult, run_loop, start_run, stop_on, target_count


def window_tensors(ws: WindowSet, block_size: int, n_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L', F) float32 features and (N, L') bool mask, truncated to ``block_size`` points."""
    if ws.x.ndim != 3 or ws.x.shape[-1] != n_features:
        raise ValueError(f"windows need shape (N, L, {n_features}), got {ws.x.shape}")
    x = torch.from_numpy(np.ascontiguousarray(ws.x[:, :block_size], dtype=np.float32))
    mask = torch.from_numpy(np.ascontiguousarray(ws.mask[:, :block_size], dtype=bool))
    return x, mask


def window_lonlat(ws: WindowSet, block_size: int) -> torch.Tensor:
    """(N, L', 2) float64 (lon, lat) degrees, for models that encode absolute position."""
    return torch.from_numpy(np.ascontiguousarray(np.stack([ws.lon, ws.lat], axis=-1)[:, :block_size], dtype=np.float64))


def fingerprint(x: torch.Tensor, mask: torch.Tensor) -> str:
    h = hashlib.sha256(str(tuple(x.shape)).encode())
    h.update(x.numpy().tobytes())
    h.update(mask.numpy().tobytes())
    return h.hexdigest()[:16]


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # independent of global RNG
    return torch.randperm(n, generator=g)


def train(
    train: WindowSet,
    val: WindowSet | None,
    model_config: GPTConfig,
    stats: dict,
    cfg: TrainConfig,
    checkpoint_dir: str | Path,
    on_epoch: Callable[[dict], None] | None = None,
    on_progress: Callable[[int, int, dict], None] | None = None,
    forecast_evaluator: ForecastEvaluator | None = None,
) -> TrainResult:
    """Train a ``TrajGPT`` on ``train`` windows (raw features); returns the model and history.

    ``stats`` is ``{"mean": [F], "std": [F]}`` of the train split (raw units). ``on_epoch`` gets
    each history record as it is made (for logging; rank 0 only under torchrun);
    ``on_progress(step, total_steps, metrics)`` is called after every optimizer step (rank 0 only;
    ``metrics``: epoch, loss, lr), e.g. to drive a progress bar elsewhere. With
    ``cfg.init_checkpoint`` the model starts from that checkpoint's weights and normalization (its
    config must equal ``model_config``; ``stats`` is then ignored). Windows longer
    than ``block_size`` keep their first ``block_size`` points. ``forecast_evaluator`` (needed by
    ``select_by="fde"``): ``trajfm.evaluate.forecast.evaluate_forecast`` or one of its signature.
    Raises ``TrainingInterrupted`` after SIGTERM, once the state is checkpointed.
    """
    checkpoint_dir = Path(checkpoint_dir)
    with process_group(resolve_device(cfg.device)) as (group, device), stop_on() as stop:
        if group.main:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
        init_state, stats = starting_weights(cfg, model_config, stats)
        x, mask = window_tensors(train, model_config.block_size, model_config.n_features)
        if len(x) == 0:
            raise ValueError("no training windows")
        has_val = val is not None and len(val) > 0
        vx, vmask = window_tensors(val, model_config.block_size, model_config.n_features) if has_val else (None, None)
        val_fde = forecast_selection(val, model_config, cfg, forecast_evaluator) if has_val else None
        spatial = model_config.inputs.space_encoding != "none"  # the model reads absolute (lon, lat)
        lonlat = window_lonlat(train, model_config.block_size) if spatial else None
        vlonlat = window_lonlat(val, model_config.block_size) if spatial and has_val else None
        identity = {
            "model_config": model_config.to_dict(),
            "train_config": config_identity(cfg),
            "stats": stats,
            "train_data": fingerprint(x, mask),
            "val_data": fingerprint(vx, vmask) if has_val else None,
        }
        run = start_run(
            cfg,
            model_config,
            init_state,
            group,
            device,
            stop=stop,
            checkpoint_dir=checkpoint_dir,
            identity=identity,
            stats=stats,
            total_steps=planned_steps(len(x), cfg),
            per_epoch=math.ceil(len(x) / cfg.batch_size),
            has_val=has_val,
            on_epoch=on_epoch,
            on_progress=on_progress,
        )

        def validate() -> tuple[float | None, dict]:
            args = (run.model, vx, vmask, vlonlat, cfg.batch_size, device, run.amp_dtype, group)
            val_loss = validation_loss(*args) if has_val else None
            fde = val_fde(run.model) if val_fde is not None else None  # every rank: the same weights, the same number
            return (fde if val_fde is not None else val_loss), {"val_loss": val_loss, "val_fde_m": fde}

        show = (progress_enabled() if cfg.progress is None else cfg.progress) if group.main else False
        return run_loop(run, window_batches(run, x, mask, lonlat, model_config), validate, show)


def window_batches(run: Run, x, mask, lonlat, model_config: GPTConfig) -> Callable[[], Batch]:
    """The next step's batch of ``run``: the global batch from the epoch's order, this rank's slice
    of it in micro-batches weighted by their scored targets."""
    P, Q, first = model_config.patching.patch_in, model_config.patching.patch_out, model_config.first_scored_token
    cfg, group = run.cfg, run.group
    cache: dict = {"epoch": -1, "order": None}

    def next_batch() -> Batch:
        epoch, i = divmod(run.step, run.per_epoch)
        if cache["epoch"] != epoch:
            cache["order"], cache["epoch"] = epoch_order(cfg.seed, epoch, len(x)), epoch
        idx = cache["order"][i * cfg.batch_size : (i + 1) * cfg.batch_size]  # the global batch
        mine = torch.tensor_split(idx, group.world)[group.rank]
        micro = [m for m in torch.tensor_split(mine, cfg.grad_accum_steps) if len(m)]
        n_targets = max(target_count(mask[idx], P, Q, first), 1)
        weights = [target_count(mask[mi], P, Q, first) / n_targets for mi in micro]
        if not micro:  # a last batch shorter than the group: this rank joins DDP's all-reduce with zeros
            micro, weights = [idx[:1]], [0.0]
        if len(micro) == 1 and not group.parallel:
            weights = [1.0]  # one process, one micro-batch: the plain step
        return Batch(x, mask, lonlat, micro, weights, points=int(mask[idx].sum()))

    return next_batch
