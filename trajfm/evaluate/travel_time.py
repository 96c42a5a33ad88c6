"""Travel-time estimation: how long a trip takes, in seconds; MAE (s) and MAPE (%).

Trips are defined in SPACE, never by a count of fixes: with fixes every 60 s, "the next 10
points" always take 540 s and a model would only have to count. A trip starts at a window's
first point and ends where the track has covered ``distance_m`` metres along its path (the end
fix and its time interpolated on the segment that crosses it); windows that never cover it are
not used, nor trips that take no time. The route is then re-sampled at ``route_points`` points
evenly spaced along the path: the route and the departure time are known, the times of the
fixes are not. The true travel time is the interpolated arrival minus the departure (int64 ns).
``distance_m`` defaults to half the median path length of the fitting windows (the mover's
scale; reported as ``travel_time.distance_m``). Two settings:

- ``path``: the whole route is known. The model walks it and predicts each step's time gap
  (its ``log_dt_s``), writing its own clock into the next point's features (KV-cache rollout,
  ``trajfm.model.generate``): the sum of the gaps is the travel time. Needs a next-point model
  (objective "next" or "mixed") that knows absolute time gaps: a model with ``norm="context"``
  takes its time scale from the points before it, and a route starts from one, so it is not
  scored here (``can_time_paths``). Baseline: route length / historical speed.
- ``od``: only origin, destination and departure time. The model infills the ``route_points - 2``
  points between them with the arrival time hidden (``trajfm.model.infill.infill(hide_time=True)``;
  objective "infill" or "mixed"). Baseline: straight-line distance / historical
  origin-destination speed.

``historical_speed`` (``baselines.HistoricalSpeed``) learns, per local hour of departure, the
average speed (route length, resp. straight distance, over duration) of the fitting trips: from
``train_ws``, or from the earlier half of ``ws`` (``baselines.split_for_fitting``; every
predictor is then scored on the later half). Keys ``travel_time.{path,od}_{mae_s,mape}.<p>``
and ``travel_time.n_trips``; a model's keys are left out in a setting it was not trained for.
"""

from __future__ import annotations

import numpy as np
import torch

from trajfm.evaluate.baselines import HistoricalSpeed, local_hour, path_length_m, split_for_fitting
from trajfm.evaluate.forecast import can_forecast
from trajfm.evaluate.metrics import mape
from trajfm.evaluate.recovery import can_infill
from trajfm.features.encode import NS_PER_S, encode_points, next_point_features
from trajfm.features.windows import WindowSet, stack_windows
from trajfm.geo import displacement_m, haversine_m, offset_lonlat
from trajfm.model.generate import Rollout
from trajfm.model.gpt import TrajGPT
from trajfm.model.infill import infill


def window_path_m(ws: WindowSet) -> np.ndarray:
    """(N,) metres along the real points of each window."""
    step = haversine_m(ws.lon[:, :-1], ws.lat[:, :-1], ws.lon[:, 1:], ws.lat[:, 1:])
    return np.where(ws.mask[:, 1:] & ws.mask[:, :-1], step, 0.0).sum(axis=1)


def trips(ws: WindowSet, distance_m: float, route_points: int) -> WindowSet:
    """The trips of ``ws`` (module docstring): ``route_points`` fixes evenly spaced along the
    first ``distance_m`` metres of each window's path; their times interpolated (only the first
    and the last are ever read: departure and the true arrival)."""
    if route_points < 3:
        raise ValueError(f"a route needs at least 3 points (origin, a point between, destination), got {route_points}")
    if not distance_m > 0:
        raise ValueError(f"trip distance must be > 0 m, got {distance_m}")
    items = []
    where = np.linspace(0.0, distance_m, route_points)
    for i in range(len(ws)):
        k = int(ws.mask[i].sum())
        lon, lat, t = ws.lon[i, :k], ws.lat[i, :k], ws.t_ns[i, :k]
        arc = np.r_[0.0, np.cumsum(haversine_m(lon[:-1], lat[:-1], lon[1:], lat[1:]))]
        if k < 2 or arc[-1] < distance_m:
            continue
        j = np.clip(np.searchsorted(arc, where, side="right"), 1, k - 1)  # segment [j-1, j] holding each point
        seg = arc[j] - arc[j - 1]
        frac = np.where(seg > 0, (where - arc[j - 1]) / np.where(seg > 0, seg, 1.0), 0.0)
        east, north = displacement_m(lon[j - 1], lat[j - 1], lon[j], lat[j])
        rlon, rlat = offset_lonlat(lon[j - 1], lat[j - 1], frac * east, frac * north)
        rt = t[j - 1] + np.round(frac * (t[j] - t[j - 1]).astype(np.float64)).astype(np.int64)
        if rt[-1] <= rt[0]:
            continue
        items.append((encode_points(rlon, rlat, rt), rlon, rlat, rt, ws.traj_id[i]))
    return stack_windows(items, route_points)


def duration_s(tr: WindowSet) -> np.ndarray:
    return (tr.t_ns[:, -1] - tr.t_ns[:, 0]).astype(np.float64) / NS_PER_S


def od_distance_m(tr: WindowSet) -> np.ndarray:
    return haversine_m(tr.lon[:, 0], tr.lat[:, 0], tr.lon[:, -1], tr.lat[:, -1])


def can_time_paths(model: TrajGPT) -> bool:
    """True if the model can walk a route from its first point and give absolute time gaps: a
    next-point model with global statistics (``norm="context"`` has no time scale at one point)."""
    return can_forecast(model) and model.config.normalisation.norm != "context"


@torch.no_grad()
def path_travel_time_s(model: TrajGPT, tr: WindowSet, batch_size: int = 256, how: str = "mode") -> np.ndarray:
    """(N,) seconds the model gives each trip along its known route (module docstring: ``path``)."""
    N, K = tr.x.shape[:2]
    out = np.zeros(N)
    was_training = model.training
    model.eval()
    try:
        for i in range(0, N, batch_size):
            b = np.arange(i, min(i + batch_size, N))
            lonlat = np.stack([tr.lon[b, :1], tr.lat[b, :1]], -1) if model.needs_lonlat else None
            state = Rollout(
                model,
                torch.from_numpy(tr.x[b, :1]),
                torch.ones(len(b), dtype=torch.long),
                lonlat=None if lonlat is None else torch.from_numpy(lonlat),
            )
            t = tr.t_ns[b, 0].copy()
            for k in range(1, K):
                log_dt = state.predict(how)[:, 0, 2].double().cpu().numpy()
                dt_s = np.expm1(np.clip(log_dt, 0.0, 20.0))
                t_next = t + np.round(dt_s * 1000.0).astype(np.int64) * 1_000_000
                if k < K - 1:
                    feats = next_point_features(
                        tr.lon[b, k - 1], tr.lat[b, k - 1], t, tr.lon[b, k], tr.lat[b, k], t_next
                    )
                    ll = (
                        None
                        if lonlat is None
                        else torch.from_numpy(np.stack([tr.lon[b, k], tr.lat[b, k]], -1)[:, None])
                    )
                    state.extend(torch.from_numpy(feats[:, None]), ll)
                t = t_next
            out[b] = (t - tr.t_ns[b, 0]).astype(np.float64) / NS_PER_S
    finally:
        model.train(was_training)
    return out


def travel_time_task(
    model: TrajGPT | None,
    ws: WindowSet,
    *,
    seed: int = 0,
    distance_m: float | None = None,
    route_points: int = 10,
    train_ws: WindowSet | None = None,
    min_trips_per_hour: int = 5,
    batch_size: int = 256,
) -> dict[str, float]:
    """Travel-time MAE (s) and MAPE (%) of the model and ``historical_speed``, same trips.
    ``seed`` is unused (deterministic: "mode" predictions)."""
    fit_ws, eval_ws = split_for_fitting(ws, train_ws)
    if distance_m is None:
        distance_m = float(np.median(window_path_m(fit_ws))) / 2
    fit, tr = trips(fit_ws, distance_m, route_points), trips(eval_ws, distance_m, route_points)
    if len(fit) == 0 or len(tr) == 0:
        raise ValueError(
            f"travel time needs windows whose path covers {distance_m:.0f} m, "
            f"to fit ({len(fit)}) and to score ({len(tr)}): pass a shorter distance_m"
        )
    true = duration_s(tr)
    fit_hour, hour = local_hour(fit.t_ns[:, 0], fit.lon[:, 0]), local_hour(tr.t_ns[:, 0], tr.lon[:, 0])
    preds: dict[str, dict[str, np.ndarray]] = {"path": {}, "od": {}}
    if model is not None and can_time_paths(model):
        preds["path"]["model"] = path_travel_time_s(model, tr, batch_size)
    if model is not None and can_infill(model):
        if route_points + 2 > model.config.n_tokens:
            raise ValueError(
                f"routes of {route_points} points do not fit block_size {model.config.block_size} with MASK and SEP"
            )
        res = infill(model, tr, (1, route_points - 1), hide_time=True, batch_size=batch_size)
        preds["od"]["model"] = res.travel_time_s
    path_speed = HistoricalSpeed(min_trips_per_hour).fit(path_length_m(fit.lon, fit.lat), duration_s(fit), fit_hour)
    od_speed = HistoricalSpeed(min_trips_per_hour).fit(od_distance_m(fit), duration_s(fit), fit_hour)
    preds["path"]["historical_speed"] = path_speed.predict(path_length_m(tr.lon, tr.lat), hour)
    preds["od"]["historical_speed"] = od_speed.predict(od_distance_m(tr), hour)
    out = {
        "travel_time.n_trips": float(len(tr)),
        "travel_time.distance_m": float(distance_m),
        "travel_time.mean_s": float(true.mean()),
    }
    for setting, by in preds.items():
        for name, p in by.items():
            out[f"travel_time.{setting}_mae_s.{name}"] = float(np.abs(p - true).mean())
            out[f"travel_time.{setting}_mape.{name}"] = mape(p, true)
    return out
