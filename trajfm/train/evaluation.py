"""Evaluation during training: the validation loss (every epoch), and with ``select_by="fde"``
the validation forecast error that picks the epoch kept.

The forecast error is measured by a *forecast evaluator* the caller passes in (the training layer
sits below ``trajfm.evaluate`` and never imports it): ``trajfm.evaluate.forecast.evaluate_forecast``,
or any function of its signature ``(model, windows, context_len, horizon) -> {"fde_m": ..., ...}``.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch

from trajfm.features.windows import WindowSet
from trajfm.model.config import GPTConfig
from trajfm.model.gpt import TrajGPT
from trajfm.train.config import TrainConfig, autocast
from trajfm.train.distributed import Group, sum_over_ranks

ForecastEvaluator = Callable[[TrajGPT, WindowSet, int, int], Mapping[str, float]]
EVALUATOR_HINT = "trajfm.evaluate.forecast.evaluate_forecast"


def loss_sums(model, x, mask, batch_size, device, lonlat=None, amp_dtype=None) -> tuple[float, int]:
    """(sum over batches of loss x real pairs, real pairs) of ``model.loss`` over a dataset."""
    total, pairs = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb, mb = x[i : i + batch_size].to(device), mask[i : i + batch_size].to(device)
        lb = None if lonlat is None else lonlat[i : i + batch_size].to(device)
        n = int((mb[:, :-1] & mb[:, 1:]).sum())
        if n:
            with autocast(device, amp_dtype):
                total += float(model.loss(xb, mb, lonlat=lb)) * n
            pairs += n
    return total, pairs


@torch.no_grad()
def evaluate_loss(
    model: TrajGPT,
    x: torch.Tensor,
    mask: torch.Tensor,
    batch_size: int,
    device: torch.device,
    lonlat: torch.Tensor | None = None,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """Mean next-point loss (``model.loss``: MSE in normalized units, or mixture NLL) over a
    dataset, each batch weighted by its real consecutive pairs. ``lonlat`` (N, L, 2) degrees
    only for models that encode absolute position; ``amp_dtype`` an autocast dtype (or None)."""
    was_training = model.training
    model.eval()
    total, pairs = loss_sums(model, x, mask, batch_size, device, lonlat, amp_dtype)
    model.train(was_training)
    return total / pairs if pairs else float("nan")


@torch.no_grad()
def validation_loss(model, vx, vmask, vlonlat, batch_size, device, amp_dtype, group: Group) -> float:
    """``evaluate_loss``; in a group each process scores a contiguous slice and the sums add up."""
    if not group.parallel:
        return evaluate_loss(model, vx, vmask, batch_size, device, vlonlat, amp_dtype)
    part = torch.tensor_split(torch.arange(len(vx)), group.world)[group.rank]
    lo, hi = (int(part[0]), int(part[-1]) + 1) if len(part) else (0, 0)
    was_training = model.training
    model.eval()
    total, pairs = loss_sums(
        model, vx[lo:hi], vmask[lo:hi], batch_size, device, None if vlonlat is None else vlonlat[lo:hi], amp_dtype
    )
    model.train(was_training)
    total, pairs = sum_over_ranks([total, float(pairs)], group, device)
    return total / pairs if pairs else float("nan")


def forecast_selection(
    val: WindowSet, model_config: GPTConfig, cfg: TrainConfig, evaluator: ForecastEvaluator | None
) -> Callable[[TrajGPT], float] | None:
    """With ``select_by="fde"``: a function giving a model's mean great-circle error (metres) at
    step ``select_horizon`` of a forecast from the first ``select_context`` points of every
    validation window long enough, as ``evaluator`` measures it (the benchmark's own protocol);
    None with ``select_by="loss"``."""
    if cfg.select_by != "fde":
        return None
    if evaluator is None:
        raise ValueError(
            f"select_by 'fde' needs a forecast evaluator: pass forecast_evaluator={EVALUATOR_HINT} "
            f"(python -m trajfm.train: --forecast-evaluator {EVALUATOR_HINT.rsplit('.', 1)[0]}:evaluate_forecast)"
        )
    if model_config.infilling.objective == "infill":
        raise ValueError("select_by 'fde' needs a model that forecasts (objective 'next' or 'mixed'), not 'infill'")
    if not np.any(val.mask.sum(axis=1) >= cfg.select_context + cfg.select_horizon):
        raise ValueError(
            f"select_by 'fde': no validation window has select_context + select_horizon = "
            f"{cfg.select_context + cfg.select_horizon} real points"
        )

    def val_fde(model: TrajGPT) -> float:
        with torch.no_grad():
            return evaluator(model, val, cfg.select_context, cfg.select_horizon)["fde_m"]

    return val_fde
