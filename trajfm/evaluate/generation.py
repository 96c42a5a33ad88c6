"""Generation realism: do generated continuations move like real ones? Jensen-Shannon divergence.

For every window with ``context_len + horizon`` real points, each generator continues the
first ``context_len`` points for ``horizon`` points; the real continuation of the same window is
the reference. Over all windows, five distributions are compared (``metrics.motion_statistics``,
each track = the last context fix + its continuation): step length (m), speed (m/s), turn angle
(degrees, steps under 1 m have no heading and are left out), trip duration (s) and radius of
gyration (m). Each pair of distributions is binned on fixed bins (``metrics.BINS``: 10 bins per
decade for the positive scales, 5-degree bins for turns; the same for every dataset) and scored
by the Jensen-Shannon divergence in bits (0 = same histogram, 1 = disjoint).

Generators: ``model`` samples its head (``how="sample"`` at ``temperature``, a
``torch.Generator`` seeded with ``seed``; an MSE head has no randomness and gives its point);
``constant_velocity`` (no randomness: no turns at all) and ``resampled_steps`` (each step a
random real step, ``numpy`` RNG seeded with ``seed``: right step lengths and speeds, random
turns), drawn from ``train_ws`` when given, else from the context points of the same windows
(never from the held-out continuations). Keys ``generation.jsd_<statistic>.<generator>``, their
mean ``generation.jsd_mean.<generator>``, and ``generation.n_windows``.
"""

from __future__ import annotations

import numpy as np
import torch

from trajfm.evaluate.baselines import real_steps, resampled_steps
from trajfm.evaluate.forecast import can_forecast, constant_velocity, forecastable, rollout
from trajfm.evaluate.metrics import distribution_jsd, motion_statistics
from trajfm.features.windows import WindowSet
from trajfm.model.gpt import TrajGPT


def generation_task(
    model: TrajGPT | None,
    ws: WindowSet,
    *,
    seed: int = 0,
    context_len: int = 8,
    horizon: int = 16,
    temperature: float = 1.0,
    train_ws: WindowSet | None = None,
    batch_size: int = 256,
) -> dict[str, float]:
    """JSD between generated and real continuations, per motion statistic and generator."""
    if context_len < 2 or horizon < 2:
        raise ValueError(f"generation needs context_len >= 2 and horizon >= 2, got {context_len}, {horizon}")
    sel = forecastable(ws, context_len, horizon)
    if len(sel) == 0:
        raise ValueError(f"no window has {context_len + horizon} real points (context_len + horizon)")
    last = context_len - 1
    start = (ws.lon[sel, last], ws.lat[sel, last], ws.t_ns[sel, last])
    span = slice(last, context_len + horizon)
    real = motion_statistics(ws.lon[sel, span], ws.lat[sel, span], ws.t_ns[sel, span])

    if train_ws is not None:
        pool = real_steps(train_ws)
    else:  # only the contexts: the continuations are what is judged
        ctx = ws.subset(sel)
        ctx.mask = ctx.mask & (np.arange(ctx.mask.shape[1])[None, :] < context_len)
        pool = real_steps(ctx)
    generated = {
        "constant_velocity": constant_velocity(ws, context_len, horizon),
        "resampled_steps": resampled_steps(*start, pool, horizon, np.random.default_rng(seed)),
    }
    if model is not None and can_forecast(model):
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        generated = {
            "model": rollout(
                model, ws, context_len, horizon, batch_size, how="sample", temperature=temperature, generator=gen
            ),
            **generated,
        }
    out = {"generation.n_windows": float(len(sel))}
    for name, (lon, lat, t_ns) in generated.items():
        track = (np.c_[start[0], lon], np.c_[start[1], lat], np.c_[start[2], t_ns])
        jsd = distribution_jsd(motion_statistics(*track), real)
        for stat, v in jsd.items():
            out[f"generation.jsd_{stat}.{name}"] = v
        out[f"generation.jsd_mean.{name}"] = float(np.mean(list(jsd.values())))
    return out
