"""Trajectory recovery: hide interior points of each window, reconstruct them, error in metres.

Two maskings, both drawn from ``numpy.random.default_rng(seed)`` so a seed fixes the points:

- random: ``mask_ratio`` (default 50%) of the interior points (never the first or last point),
  chosen uniformly; the hidden points fall into maximal consecutive runs.
- block: one contiguous run of ``block_points`` interior points (default: the same share,
  ``round(mask_ratio * (n - 2))``) at a uniform position.

Each run is recovered on its own, from the OBSERVED points only: the window is reduced to its
visible points plus that run, re-encoded (``encode_points``: a visible point after a removed one
carries the step across the gap, which is observed), and the run is the span [s, e) of that
reduced trajectory. The model fills it with ``trajfm.model.infill.infill`` (MASK/SEP
infilling, one point at a time); the baseline ``linear_interp`` puts the hidden points evenly
on the straight line between the fixes around the run (``infill.linear_interpolation``: the
hidden times are not given to either). A model trained only for next-point prediction
(objective "next") has no infilling tokens: its keys are left out (autoregressive filling would
ignore the far end of the gap and is no fair comparison).

Windows are cut to their first ``max_points`` points (and to what the model's block_size holds
with MASK and SEP). Metrics: MAE and RMSE in metres (haversine) over all hidden points.
"""

from __future__ import annotations

import numpy as np

from trajfm.evaluate.metrics import distance_errors_m, mae_rmse
from trajfm.features.encode import encode_points
from trajfm.features.windows import WindowSet, stack_windows
from trajfm.model.gpt import TrajGPT
from trajfm.model.infill import infill, linear_interpolation


def can_infill(model: TrajGPT) -> bool:
    """True for models trained to infill (objective "infill" or "mixed")."""
    return model.config.infilling.objective != "next"


def random_hidden(n: np.ndarray, ratio: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Per window of ``n`` real points, the sorted hidden interior indices (a ``ratio`` share)."""
    out = []
    for k in n:
        interior = np.arange(1, k - 1)
        m = min(len(interior), max(1, int(round(ratio * len(interior)))))
        out.append(np.sort(rng.choice(interior, size=m, replace=False)))
    return out


def block_hidden(n: np.ndarray, block: int | None, ratio: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Per window, one contiguous run of hidden interior indices (``block`` points, or the
    ``ratio`` share of the interior); a window too short for the block gets none."""
    out = []
    for k in n:
        b = block if block is not None else max(1, int(round(ratio * (k - 2))))
        if k - 2 < b:
            out.append(np.zeros(0, np.int64))
            continue
        s = int(rng.integers(1, k - b))  # 1 .. k-1-b
        out.append(np.arange(s, s + b))
    return out


def runs_of(hidden: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs ``[a, b)`` of consecutive indices in the sorted array ``hidden``."""
    if len(hidden) == 0:
        return []
    cut = np.flatnonzero(np.diff(hidden) > 1) + 1
    return [(int(r[0]), int(r[-1]) + 1) for r in np.split(hidden, cut)]


def reduced_windows(ws: WindowSet, n: np.ndarray, hidden: list[np.ndarray]) -> tuple[WindowSet, np.ndarray, np.ndarray]:
    """One row per hidden run: the window's visible points plus that run, re-encoded.

    Returns (windows, spans (R, 2) [s, e) in the reduced rows, source window index (R,)), rows
    ordered by span length.
    """
    items, spans, src = [], [], []
    for i, h in enumerate(hidden):
        k = int(n[i])
        visible = np.ones(k, bool)
        visible[h] = False
        for a, b in runs_of(h):
            keep = visible.copy()
            keep[a:b] = True
            idx = np.flatnonzero(keep)
            lon, lat, t = ws.lon[i, idx], ws.lat[i, idx], ws.t_ns[i, idx]
            items.append((encode_points(lon, lat, t), lon, lat, t, ws.traj_id[i]))
            s = int(np.searchsorted(idx, a))
            spans.append((s, s + b - a))
            src.append(i)
    spans, src = np.array(spans, np.int64).reshape(-1, 2), np.array(src, np.int64)
    order = np.argsort(spans[:, 1] - spans[:, 0], kind="stable")  # similar spans share a batch: fewer model calls
    width = max((len(it[1]) for it in items), default=1)
    return stack_windows([items[j] for j in order], width), spans[order], src[order]


def _score(rws: WindowSet, spans: np.ndarray, lon: np.ndarray, lat: np.ndarray) -> tuple[float, float]:
    """MAE, RMSE in metres of (R, M) reconstructions (NaN beyond a row's span) against the truth."""
    M = lon.shape[1]
    cols = spans[:, :1] + np.arange(M)[None, :]
    live = np.arange(M)[None, :] < (spans[:, 1] - spans[:, 0])[:, None]
    rows = np.repeat(np.arange(len(rws)), M).reshape(-1, M)
    cols = np.where(live, cols, 0)
    err = distance_errors_m(lon[live], lat[live], rws.lon[rows[live], cols[live]], rws.lat[rows[live], cols[live]])
    return mae_rmse(err)


def recovery_task(
    model: TrajGPT | None,
    ws: WindowSet,
    *,
    seed: int = 0,
    mask_ratio: float = 0.5,
    block_points: int | None = None,
    max_points: int = 30,
    how: str = "mode",
    batch_size: int = 256,
) -> dict[str, float]:
    """Recovery MAE/RMSE (metres) of random and block masking: ``model`` and ``linear_interp``.

    Keys ``recovery.{random,block}_{mae_m,rmse_m}.<predictor>`` and the counts
    ``recovery.{random,block}_n_points`` (hidden points scored) and ``..._n_runs``.
    """
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    if block_points is not None and block_points < 1:
        raise ValueError(f"block_points must be >= 1, got {block_points}")
    use_model = model is not None and can_infill(model)
    cap = max_points if not use_model else min(max_points, model.config.n_tokens - 2)
    if cap < 3:
        raise ValueError(f"recovery needs windows of at least 3 points, max_points is {cap}")
    n = np.minimum(ws.mask.sum(axis=1), cap)
    ok = np.flatnonzero(n >= 3)  # a first point, a hidden one, a last one
    if len(ok) == 0:
        raise ValueError("no window has 3 real points: nothing to hide")
    sub, n = ws.subset(ok), n[ok]
    rng = np.random.default_rng(seed)
    maskings = {"random": random_hidden(n, mask_ratio, rng), "block": block_hidden(n, block_points, mask_ratio, rng)}
    out: dict[str, float] = {}
    for name, hidden in maskings.items():
        rws, spans, _ = reduced_windows(sub, n, hidden)
        if len(rws) == 0:
            continue
        out[f"recovery.{name}_n_points"] = float((spans[:, 1] - spans[:, 0]).sum())
        out[f"recovery.{name}_n_runs"] = float(len(rws))
        preds = {"linear_interp": linear_interpolation(rws, spans)}
        if use_model:
            res = infill(model, rws, spans, how=how, batch_size=batch_size)
            preds = {"model": (res.lon, res.lat), **preds}
        for pred, (lon, lat) in preds.items():
            mae, rmse = _score(rws, spans, lon, lat)
            out[f"recovery.{name}_mae_m.{pred}"] = mae
            out[f"recovery.{name}_rmse_m.{pred}"] = rmse
    return out
