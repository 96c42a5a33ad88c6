"""Next location over H3 cells: rank the cell of the next fix; Acc@1, Acc@5, MRR.

Every pair (point i, point i+1) of real consecutive points of the scored windows with at least
``min_context`` points up to i (default 2, so constant velocity has a step) is one question:
"which H3 cell holds the next fix?", staying in the same cell included (``stay_share`` reports
how often that is the answer). Cells are h3 v4 ``latlng_to_cell(lat, lng, resolution)``.
``resolution`` defaults to the mover's scale: the resolution whose average hexagon edge is
closest (in log) to the median non-zero step of the fitting windows (60 s AIS: ~300 m steps,
resolution 8-9; GeoLife walks at 1-5 s: resolution 12-13), reported as
``next_location.resolution``.

Ranking rule of a point predictor (the model, ``constant_velocity``): draw ``samples`` next
points from the model (``how="sample"``, a seeded ``torch.Generator``; an MSE head's draw is
its point) and take its mode point; candidate cells are the cells of the draws and the cells
within ``k_ring`` rings of the mode point's cell, ranked by the number of draws in them
(descending), then by the distance from the cell centre to the mode point, then by cell id. For
an MSE head (and constant velocity) this is simply "cells by distance of their centre to the
predicted point". A true cell outside the candidates has rank infinity (a miss, 0 in MRR).

Baseline ``markov_h3``: a first-order Markov chain over the cells (``baselines.MarkovChain``)
fit on consecutive points of ``train_ws`` (or of the earlier half of ``ws``; see
``baselines.split_for_fitting``), falling back to "stay in place" for a cell it never saw.
A patched model predicts only after whole patches: with one, only pairs whose point i closes a
patch are scored (by every predictor); windows longer than the model's block_size are cut to
their first block_size points (for every predictor).
"""

from __future__ import annotations

import numpy as np
import torch

from trajfm.evaluate.baselines import MarkovChain, h3_cells, split_for_fitting
from trajfm.evaluate.forecast import can_forecast
from trajfm.evaluate.metrics import rank_metrics
from trajfm.features.windows import WindowSet
from trajfm.geo import displacement_m, haversine_m, offset_lonlat
from trajfm.model.gpt import TrajGPT
from trajfm.model.inputs import ModelInputs


def auto_resolution(ws: WindowSet) -> int:
    """The H3 resolution whose average hexagon edge is closest (log scale) to the median step."""
    import h3

    both = ws.mask[:, 1:] & ws.mask[:, :-1]
    step = haversine_m(ws.lon[:, :-1], ws.lat[:, :-1], ws.lon[:, 1:], ws.lat[:, 1:])[both]
    step = step[step > 0]
    if len(step) == 0:
        raise ValueError("no moving step to choose an H3 resolution from: pass resolution")
    edges = np.array([h3.average_hexagon_edge_length(r, unit="m") for r in range(16)])
    return int(np.argmin(np.abs(np.log(edges) - np.log(np.median(step)))))


def window_cells(ws: WindowSet, resolution: int) -> np.ndarray:
    """(N, L) int64 cells of the real points (0 at padding)."""
    cells = np.zeros(ws.mask.shape, np.int64)
    cells[ws.mask] = h3_cells(ws.lon[ws.mask], ws.lat[ws.mask], resolution)
    return cells


def pairs_of(ws: WindowSet, min_context: int, patch: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of every point i that has a real next point and ``min_context`` points up to it."""
    col = np.arange(ws.mask.shape[1])[None, :]
    ok = np.zeros_like(ws.mask)
    ok[:, :-1] = ws.mask[:, :-1] & ws.mask[:, 1:]
    ok &= col >= min_context - 1
    ok &= (col + 1) % patch == 0
    return np.nonzero(ok)


@torch.no_grad()
def model_next_points(model: TrajGPT, ws: WindowSet, rows, cols, samples: int, seed: int, batch_size: int = 256):
    """Mode (lon, lat) (n,) and ``samples`` draws (n, S) of the next point after each (row, col)."""
    P, device = model.config.patching.patch_in, next(model.parameters()).device
    n, S = len(rows), max(samples, 1)
    mode = np.zeros((n, 2))
    draws = np.zeros((n, S, 2))
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        for w0 in range(0, len(ws), batch_size):
            w1 = min(w0 + batch_size, len(ws))
            sel = np.flatnonzero((rows >= w0) & (rows < w1))
            if len(sel) == 0:
                continue
            x = torch.from_numpy(ws.x[w0:w1]).to(device)
            mask = torch.from_numpy(ws.mask[w0:w1]).to(device)
            ll = (
                torch.from_numpy(np.stack([ws.lon[w0:w1], ws.lat[w0:w1]], -1)).to(device)
                if model.needs_lonlat
                else None
            )
            context = model.config.normalisation.norm == "context"
            norm = model.context_scale(x, mask) if context else None  # (B, 2) or None
            out = model(ModelInputs(x, mask, ll, norm=norm))  # (B, Lt, Q*W)
            r, tok = torch.from_numpy(rows[sel] - w0).to(device), torch.from_numpy(cols[sel] // P).to(device)
            o, cur = out[r, tok], x[r, torch.from_numpy(cols[sel]).to(device)]  # (n, Q*W), (n, F) the point i
            lon0, lat0 = ws.lon[rows[sel], cols[sel]], ws.lat[rows[sel], cols[sel]]
            nr = None if norm is None else norm[r]
            step = model.decode(o, "mode", cur=cur, norm=nr)[:, 0].double().cpu().numpy()
            mode[sel] = np.stack(offset_lonlat(lon0, lat0, step[:, 0], step[:, 1]), -1)
            for s in range(S):
                step = model.decode(o, "sample", 1.0, gen, cur, nr)[:, 0].double().cpu().numpy()
                draws[sel, s] = np.stack(offset_lonlat(lon0, lat0, step[:, 0], step[:, 1]), -1)
    finally:
        model.train(was_training)
    return mode, draws


def point_ranks(mode: np.ndarray, draws: np.ndarray, truth: np.ndarray, resolution: int, k_ring: int) -> np.ndarray:
    """1-based rank of each true cell by the module's rule; ``mode`` (n, 2), ``draws`` (n, S, 2) lon/lat."""
    from h3.api import basic_int as h3

    n, S = draws.shape[:2]
    mode_cells = h3_cells(mode[:, 0], mode[:, 1], resolution)
    draw_cells = h3_cells(draws[..., 0], draws[..., 1], resolution).reshape(n, S)
    centres: dict[int, tuple[float, float]] = {}
    ranks = np.full(n, np.inf)
    for i in range(n):
        counts: dict[int, int] = {int(c): 0 for c in h3.grid_disk(int(mode_cells[i]), k_ring)}
        for c in draw_cells[i]:
            counts[int(c)] = counts.get(int(c), 0) + 1
        if int(truth[i]) not in counts:
            continue
        cells = np.fromiter(counts, np.int64, len(counts))
        for c in cells:
            if int(c) not in centres:
                centres[int(c)] = h3.cell_to_latlng(int(c))  # (lat, lng)
        lat, lon = np.array([centres[int(c)] for c in cells]).T
        dist = haversine_m(lon, lat, mode[i, 0], mode[i, 1])
        order = np.lexsort((cells, dist, -np.array([counts[int(c)] for c in cells])))
        ranks[i] = np.flatnonzero(cells[order] == truth[i])[0] + 1
    return ranks


def next_location_task(
    model: TrajGPT | None,
    ws: WindowSet,
    *,
    seed: int = 0,
    resolution: int | None = None,
    train_ws: WindowSet | None = None,
    min_context: int = 2,
    samples: int = 32,
    k_ring: int = 2,
    batch_size: int = 256,
) -> dict[str, float]:
    """Acc@1, Acc@5 and MRR of the next fix's H3 cell: model, ``constant_velocity``, ``markov_h3``."""
    if min_context < 2:
        raise ValueError(f"min_context must be >= 2 (constant velocity needs a step), got {min_context}")
    if resolution is not None and not 0 <= int(resolution) <= 15:
        raise ValueError(f"H3 resolution must be 0..15, got {resolution}")
    fit_ws, eval_ws = split_for_fitting(ws, train_ws)
    res = auto_resolution(fit_ws) if resolution is None else int(resolution)
    use_model = model is not None and can_forecast(model)
    if use_model and eval_ws.mask.shape[1] > model.config.block_size:  # the model reads one window at once
        k = model.config.block_size
        eval_ws = WindowSet(
            eval_ws.x[:, :k],
            eval_ws.mask[:, :k],
            eval_ws.lon[:, :k],
            eval_ws.lat[:, :k],
            eval_ws.t_ns[:, :k],
            eval_ws.traj_id,
        )
    rows, cols = pairs_of(eval_ws, min_context, model.config.patching.patch_in if use_model else 1)
    if len(rows) == 0:
        raise ValueError(f"no window has {min_context + 1} real points: no next location to predict")
    cells = window_cells(eval_ws, res)
    cur, truth = cells[rows, cols], cells[rows, cols + 1]
    fit_cells = window_cells(fit_ws, res)
    both = fit_ws.mask[:, 1:] & fit_ws.mask[:, :-1]
    chain = MarkovChain().fit(fit_cells[:, :-1][both], fit_cells[:, 1:][both])

    e, nn = displacement_m(
        eval_ws.lon[rows, cols - 1], eval_ws.lat[rows, cols - 1], eval_ws.lon[rows, cols], eval_ws.lat[rows, cols]
    )
    cv = np.stack(offset_lonlat(eval_ws.lon[rows, cols], eval_ws.lat[rows, cols], e, nn), -1)
    ranks = {
        "constant_velocity": point_ranks(cv, cv[:, None, :], truth, res, k_ring),
        "markov_h3": chain.rank_of(cur, truth),
    }
    if use_model:
        mode, draws = model_next_points(
            model, eval_ws, rows, cols, samples if model.config.output.head == "mixture" else 1, seed, batch_size
        )
        ranks = {"model": point_ranks(mode, draws, truth, res, k_ring), **ranks}
    out = {
        "next_location.n_pairs": float(len(rows)),
        "next_location.resolution": float(res),
        "next_location.stay_share": float((cur == truth).mean()),
    }
    for name, r in ranks.items():
        for metric, v in rank_metrics(r, ks=(1, 5)).items():
            out[f"next_location.{metric}.{name}"] = v
    return out
