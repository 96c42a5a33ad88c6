"""Forecasting: autoregressive rollout of a TrajGPT, the constant-velocity baseline, ADE/FDE.

A forecast window is one with at least ``context_len + horizon`` real points: its first
``context_len`` points are the context, the next ``horizon`` the ground truth. Every step the
model predicts (dx_m, dy_m, log_dt_s) in raw units; ``decode_step`` turns that into the next
(lon, lat, t_ns) in float64 degrees and int64 nanoseconds, and ``next_point_features`` encodes
it for the next step, so positions and times never pass through float32. Generation uses the
model's KV cache (``trajfm.model.generate.Rollout``) up to ``block_size`` points and then
recomputes the last ``block_size`` points each step; a patched model takes Q points per call.
Errors are great-circle distances in metres (``haversine_m``), averaged in float64.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from trajfm.evaluate.baselines import constant_velocity, forecastable
from trajfm.evaluate.metrics import SUMMARY_STEPS, distance_errors_m, forecast_errors, horizon_errors
from trajfm.features.encode import NS_PER_S, decode_step, encode_points, next_point_features
from trajfm.features.windows import WindowSet
from trajfm.geo import displacement_m, haversine_m, offset_lonlat
from trajfm.model.blend import apply_blend
from trajfm.model.generate import Rollout
from trajfm.model.gpt import TrajGPT


@torch.no_grad()
def rollout_points(
    model: TrajGPT,
    x: np.ndarray,
    n_real: np.ndarray,
    lon: np.ndarray,
    lat: np.ndarray,
    t_ns: np.ndarray,
    horizon: int,
    *,
    how: str = "mode",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    context_lonlat: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Roll one batch forward ``horizon`` steps; returns (lon, lat, t_ns) each (B, horizon).

    ``x`` (B, L, F) raw features of the contexts, padded at the end, ``n_real`` (B,) their real
    lengths (>= 1); ``lon, lat, t_ns`` (B,) the last real fix of each context (degrees, UTC ns).
    ``how``: "mode" (deterministic: the MSE point or the most likely mixture component's mean),
    "mean" (mixture mean) or "sample" (a draw at ``temperature`` from ``generator``).
    ``use_cache``: KV-cache generation (``trajfm.model.generate``); same numbers either way.
    ``context_lonlat`` (B, L, 2) degrees: needed by models that encode absolute position.
    """
    lon, lat, t_ns = np.asarray(lon, np.float64), np.asarray(lat, np.float64), np.asarray(t_ns, np.int64)
    B = len(lon)
    if model.needs_lonlat and context_lonlat is None:
        raise ValueError("this model encodes absolute position: pass context_lonlat (B, L, 2) degrees")
    state = Rollout(
        model,
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(np.asarray(n_real, np.int64)),
        lonlat=None if context_lonlat is None else torch.from_numpy(np.asarray(context_lonlat, np.float64)),
        use_cache=use_cache,
    )
    out_lon, out_lat = np.zeros((B, horizon)), np.zeros((B, horizon))
    out_t = np.zeros((B, horizon), dtype=np.int64)
    h = 0
    while h < horizon:
        pred = state.predict(how, temperature, generator).double().cpu().numpy()  # (B, Q, 3) raw
        k = min(pred.shape[1], horizon - h)  # a patched model gives Q points per call
        feats, fixes = [], []
        for q in range(k):
            lon2, lat2, t2 = decode_step(lon, lat, t_ns, pred[:, q, 0], pred[:, q, 1], pred[:, q, 2])
            feats.append(next_point_features(lon, lat, t_ns, lon2, lat2, t2))
            fixes.append(np.stack([lon2, lat2], axis=-1))
            lon, lat, t_ns = lon2, lat2, t2
            out_lon[:, h], out_lat[:, h], out_t[:, h] = lon, lat, t_ns
            h += 1
        if h < horizon:  # the last points need no encoding
            state.extend(torch.from_numpy(np.stack(feats, axis=1)), torch.from_numpy(np.stack(fixes, axis=1)))
    return out_lon, out_lat, out_t


def rollout(
    model: TrajGPT, ws: WindowSet, context_len: int, horizon: int, batch_size: int = 256, **options
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model forecasts (lon, lat, t_ns) each (N, horizon) for the ``forecastable`` windows.

    The context is each window's first ``context_len`` points; degrees float64, UTC ns int64.
    ``options`` go to ``rollout_points`` (``how``, ``temperature``, ``generator``, ``use_cache``).
    A model whose config has a ``forecast_blend`` (fitted on validation, part of the model) has
    its point forecasts blended with constant velocity step by step (``trajfm.model.blend``).
    """
    sel = forecastable(ws, context_len, horizon)
    if model.config.calibration.forecast_blend is not None and context_len < 2:
        raise ValueError("a model with a forecast_blend blends with constant velocity: needs context_len >= 2")
    out_lon, out_lat = np.zeros((len(sel), horizon)), np.zeros((len(sel), horizon))
    out_t = np.zeros((len(sel), horizon), dtype=np.int64)
    was_training = model.training
    model.eval()
    try:
        c = context_len - 1
        for i in range(0, len(sel), batch_size):
            b = sel[i : i + batch_size]
            n_real = np.full(len(b), context_len)
            lonlat = (
                np.stack([ws.lon[b, :context_len], ws.lat[b, :context_len]], axis=-1) if model.needs_lonlat else None
            )
            lo, la, t = rollout_points(
                model,
                ws.x[b, :context_len],
                n_real,
                ws.lon[b, c],
                ws.lat[b, c],
                ws.t_ns[b, c],
                horizon,
                context_lonlat=lonlat,
                **options,
            )
            if options.get("how", "mode") != "sample":  # the model's own never-worse rule (trajfm.model.blend)
                lo, la = apply_blend(
                    model.config, ws.lon[b, c - 1], ws.lat[b, c - 1], ws.lon[b, c], ws.lat[b, c], lo, la
                )
            out_lon[i : i + len(b)], out_lat[i : i + len(b)], out_t[i : i + len(b)] = lo, la, t
    finally:
        model.train(was_training)
    return out_lon, out_lat, out_t


def evaluate_forecast(
    model: TrajGPT,
    ws: WindowSet,
    context_len: int,
    horizon: int,
    batch_size: int = 256,
    fit_ws: WindowSet | None = None,
) -> dict:
    """ADE, FDE and 1-step error in metres of the model and of constant velocity, same windows;
    with ``fit_ws`` (the training windows) also of the Kalman filter fitted on them.

    Keys (``trajfm.evaluate.metrics.forecast_errors``): ``n_windows``, ``ade_m, fde_m`` over the
    whole horizon, ``ade_m@h, fde_m@h`` at each of ``SUMMARY_STEPS`` within it, the same with
    ``cv_`` (``cv_ade_m``, ``cv_fde_m@5``, ...); with ``fit_ws``:
    ``kf_*`` the same for the Kalman filter tuned on them for its forecasts, ``kf_q_m2_s3`` /
    ``kf_r_m2`` its noise, and the probabilistic scores averaged over steps 1..horizon
    (``trajfm.evaluate.scores``): ``coverage50/80/90`` and ``crps_m`` of the model (when it has a
    fitted error model, ``forecast_radius_m``), the same with ``cv_`` (constant velocity + radial
    error quantiles per step fitted on ``fit_ws``) and ``kf_`` (the covariance of the filter fitted
    by maximum likelihood, ``kf_mle_q_m2_s3`` / ``kf_mle_r_m2``: a forecast-tuned noise is no
    error model).
    """
    sel = forecastable(ws, context_len, horizon)
    if len(sel) == 0:
        raise ValueError(
            f"no window has {context_len + horizon} real points (context_len {context_len} + horizon {horizon})"
        )
    truth = slice(context_len, context_len + horizon)
    true_lon, true_lat = ws.lon[sel, truth], ws.lat[sel, truth]
    m_lon, m_lat, _ = rollout(model, ws, context_len, horizon, batch_size)
    c_lon, c_lat, _ = constant_velocity(ws, context_len, horizon)
    out = {
        "n_windows": int(len(sel)),
        **forecast_errors(m_lon, m_lat, true_lon, true_lat, SUMMARY_STEPS, whole_horizon=True),
        **{f"cv_{k}": v for k, v in forecast_errors(c_lon, c_lat, true_lon, true_lat, SUMMARY_STEPS, True).items()},
    }
    if fit_ws is None:
        return out
    from trajfm.evaluate.kalman import fit_kalman, kalman_forecast
    from trajfm.evaluate.scores import error_vectors_m, probabilistic_scores, radial_scores
    from trajfm.model.blend import fit_radius, radius_table

    params = fit_kalman(fit_ws, context_len, horizon)  # tuned for its forecasts: the point reference
    k_lon, k_lat, _ = kalman_forecast(ws, context_len, horizon, params)
    out.update(
        {f"kf_{k}": v for k, v in forecast_errors(k_lon, k_lat, true_lon, true_lat, SUMMARY_STEPS, True).items()}
    )
    out.update(kf_q_m2_s3=params.q_m2_s3, kf_r_m2=params.r_m2)
    mle = fit_kalman(fit_ws, context_len, horizon, objective="likelihood")  # its covariance: the filter's error model
    l_lon, l_lat, _, l_cov = kalman_forecast(ws, context_len, horizon, mle, with_cov=True)
    out.update(kf_mle_q_m2_s3=mle.q_m2_s3, kf_mle_r_m2=mle.r_m2)
    fsel = forecastable(fit_ws, context_len, horizon)
    if len(fsel):  # constant velocity's own error model, from the training windows
        f_lon, f_lat, _ = constant_velocity(fit_ws, context_len, horizon)
        cv_table = fit_radius(haversine_m(f_lon, f_lat, fit_ws.lon[fsel, truth], fit_ws.lat[fsel, truth]))
        scores = {
            "cv_": radial_scores(error_vectors_m(c_lon, c_lat, true_lon, true_lat), cv_table),
            "kf_": probabilistic_scores(error_vectors_m(l_lon, l_lat, true_lon, true_lat), l_cov),
        }
        if model.config.calibration.forecast_radius_m is not None:
            scores[""] = radial_scores(
                error_vectors_m(m_lon, m_lat, true_lon, true_lat),
                radius_table(model.config.calibration.forecast_radius_m, horizon),
            )
        for prefix, sc in scores.items():
            out.update({f"{prefix}coverage{p}": float(np.mean(v)) for p, v in sc["coverage"].items()})
            out[f"{prefix}crps_m"] = float(np.mean(sc["crps_m"]))
    return out


def _points_frame(points: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """``traj_id, t_ns`` (int64 UTC ns), ``lon, lat`` (float64 degrees) of ``points``, checked."""
    missing = [c for c in ("traj_id", "t", "lon", "lat") if c not in points.columns]
    if missing:
        raise ValueError(f"points is missing columns {missing}; need traj_id, t, lon, lat")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if points[["traj_id", "t", "lon", "lat"]].isna().any().any():
        raise ValueError("points has missing traj_id, t, lon or lat values")
    df = pd.DataFrame(
        {
            "traj_id": points["traj_id"].to_numpy(),
            "t_ns": pd.to_datetime(points["t"], utc=True).dt.as_unit("ns").astype("int64").to_numpy(),
            "lon": points["lon"].to_numpy(dtype=np.float64),
            "lat": points["lat"].to_numpy(dtype=np.float64),
        }
    )
    return df


def forecast_points(
    model: TrajGPT, points: pd.DataFrame, horizon: int, batch_size: int = 256, **options
) -> pd.DataFrame:
    """Forecast ``horizon`` next fixes of every trajectory in ``points``; ``options`` go to
    ``rollout_points`` (e.g. ``how="sample", generator=g`` for a sampled future).

    ``points`` has columns ``traj_id, t`` (datetime; tz-aware, or naive meaning UTC), ``lon, lat``
    (WGS84 degrees). Each trajectory is sorted by time and encoded whole; its last (up to)
    ``block_size`` points are the context. Returns columns ``traj_id, step`` (1..horizon), ``t``
    (datetime64[ns, UTC]), ``lon, lat`` (degrees), sorted by traj_id then step. The model's
    ``forecast_blend`` applies as in ``rollout``; its quantiles: ``trajfm.model.blend.add_quantiles``.
    """
    df = _points_frame(points, horizon)
    groups = df.sort_values(["traj_id", "t_ns"], kind="stable").groupby("traj_id", sort=True)
    sizes = groups.size()
    short = sizes.index[sizes < 2].tolist()
    if short:
        raise ValueError(f"{len(short)} trajectories have fewer than 2 points, e.g. {short[:5]}")
    block = model.config.block_size
    ids, contexts = [], []
    for tid, g in groups:
        lon, lat, t_ns = g["lon"].to_numpy(), g["lat"].to_numpy(), g["t_ns"].to_numpy()
        feats = encode_points(lon, lat, t_ns)[-block:]  # whole-track encoding: true first delta
        ids.append(tid)
        contexts.append((feats, lon[-1], lat[-1], t_ns[-1], np.stack([lon, lat], axis=-1)[-block:], lon[-2], lat[-2]))

    was_training = model.training
    model.eval()
    out_lon, out_lat, out_t = [], [], []
    try:
        for i in range(0, len(contexts), batch_size):
            chunk = contexts[i : i + batch_size]
            n_real = np.array([len(c[0]) for c in chunk])
            x = np.zeros((len(chunk), n_real.max(), model.config.n_features), dtype=np.float32)
            lonlat = np.zeros((len(chunk), n_real.max(), 2))
            for j, c in enumerate(chunk):
                x[j, : len(c[0])] = c[0]
                lonlat[j, : len(c[0])] = c[4]
            lo, la, t = rollout_points(
                model,
                x,
                n_real,
                np.array([c[1] for c in chunk]),
                np.array([c[2] for c in chunk]),
                np.array([c[3] for c in chunk], dtype=np.int64),
                horizon,
                context_lonlat=lonlat if model.needs_lonlat else None,
                **options,
            )
            lo, la = apply_blend(
                model.config,
                np.array([c[5] for c in chunk]),
                np.array([c[6] for c in chunk]),
                np.array([c[1] for c in chunk]),
                np.array([c[2] for c in chunk]),
                lo,
                la,
            )
            out_lon.append(lo), out_lat.append(la), out_t.append(t)
    finally:
        model.train(was_training)
    lon, lat, t_ns = np.concatenate(out_lon), np.concatenate(out_lat), np.concatenate(out_t)
    return pd.DataFrame(
        {
            "traj_id": pd.Series(np.repeat(np.asarray(ids, dtype=object), horizon)).astype(points["traj_id"].dtype),
            "step": np.tile(np.arange(1, horizon + 1), len(ids)),
            "t": pd.to_datetime(t_ns.ravel(), unit="ns", utc=True),
            "lon": lon.ravel(),
            "lat": lat.ravel(),
        }
    )


# --- the forecast task of the evaluation suite (trajfm.evaluate.tasks) ---------------------


def can_forecast(model: TrajGPT) -> bool:
    """True when the model was trained to predict the next point (objective "next" or "mixed");
    an "infill"-only model's next-point head is untrained, so its forecasts are not reported."""
    return model.config.infilling.objective != "infill"


def position_at(
    lon: np.ndarray, lat: np.ndarray, t_ns: np.ndarray, when_ns: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) lon, lat of (N, K) tracks at times ``when_ns`` (N,), linear in time between fixes
    (along the tangent-plane step); before the first fix: the first, after the last: the last."""
    K = t_ns.shape[1]
    rows = np.arange(len(t_ns))
    k = np.clip((t_ns < when_ns[:, None]).sum(axis=1), 1, max(K - 1, 1))
    a, b = k - 1, np.minimum(k, K - 1)
    span = (t_ns[rows, b] - t_ns[rows, a]).astype(np.float64)
    frac = np.where(span > 0, (when_ns - t_ns[rows, a]).astype(np.float64) / np.where(span > 0, span, 1.0), 1.0)
    frac = np.clip(frac, 0.0, 1.0)
    east, north = displacement_m(lon[rows, a], lat[rows, a], lon[rows, b], lat[rows, b])
    return offset_lonlat(lon[rows, a], lat[rows, a], frac * east, frac * north)


def _minutes_label(m: float) -> str:
    return f"{m:g}".replace(".", "p") + "min"  # keys are split on "." by readers of the report


def forecast_task(
    model: TrajGPT | None,
    ws: WindowSet,
    *,
    seed: int = 0,
    context_len: int = 20,
    horizons=(1, 5, 10),
    minutes=(1, 5, 10),
    mae_points: int = 5,
    batch_size: int = 256,
    train_ws: WindowSet | None = None,
) -> dict[str, float]:
    """Forecast metrics of the model and of constant velocity on the same windows (metres).

    Windows with at least ``context_len + max(horizons, mae_points)`` real points; the first
    ``context_len`` are the context. Per predictor (``model`` in "mode", ``constant_velocity``):
    ``ade_m@h`` (mean error over steps 1..h) and ``fde_m@h`` (error at step h) for each ``h`` in
    ``horizons`` (steps); ``mae_m@5`` / ``rmse_m@5`` over the next ``mae_points`` points (the
    literature's "next 5 points" setting), the same for ``linear_extrapolation``
    (``trajfm.evaluate.baselines``); and ``fde_m@<m>min``: the error at ``m`` minutes after
    the last context fix, both tracks interpolated in time (the forecast holds its last point
    when its predicted clock ends sooner), over the windows whose real continuation lasts that
    long (``n_windows@<m>min``; the metric is left out when none does). With ``train_ws`` (the
    windows baselines fit on) the same for ``kalman`` (``trajfm.evaluate.kalman``, its noise fitted
    on them by maximum likelihood; ``forecast.kalman_q_m2_s3`` / ``forecast.kalman_r_m2``); without,
    the Kalman keys are left out (it would be fitted on the windows it is scored on). ``seed`` is
    unused (deterministic). The model keys are left out for a model that cannot forecast
    (objective "infill").
    """
    horizons = sorted({int(h) for h in horizons})
    if not horizons or horizons[0] < 1 or mae_points < 1 or any(m <= 0 for m in minutes):
        raise ValueError(
            f"need horizons >= 1, mae_points >= 1 and minutes > 0, got {horizons}, {mae_points}, {minutes}"
        )
    H = max(horizons[-1], mae_points)
    sel = forecastable(ws, context_len, H)
    if len(sel) == 0:
        raise ValueError(f"no window has {context_len + H} real points (context_len {context_len} + horizon {H})")
    truth = slice(context_len, context_len + H)
    true_lon, true_lat, true_t = ws.lon[sel, truth], ws.lat[sel, truth], ws.t_ns[sel, truth]
    last = context_len - 1
    t0 = ws.t_ns[sel, last]
    # the truth from the last context fix on, so times between it and step 1 interpolate too
    track = (np.c_[ws.lon[sel, last], true_lon], np.c_[ws.lat[sel, last], true_lat], np.c_[t0, true_t])
    from trajfm.evaluate.baselines import linear_extrapolation

    preds = {
        "constant_velocity": constant_velocity(ws, context_len, H),
        "linear_extrapolation": linear_extrapolation(ws, context_len, H),
    }
    out = {"forecast.n_windows": float(len(sel)), "forecast.context_len": float(context_len)}
    if train_ws is not None and len(forecastable(train_ws, context_len, H)):
        from trajfm.evaluate.kalman import fit_kalman, kalman_forecast

        params = fit_kalman(train_ws, context_len, H)
        preds["kalman"] = kalman_forecast(ws, context_len, H, params)
        out.update({"forecast.kalman_q_m2_s3": params.q_m2_s3, "forecast.kalman_r_m2": params.r_m2})
    if model is not None and can_forecast(model):
        preds = {"model": rollout(model, ws, context_len, H, batch_size), **preds}
    for m in minutes:
        out[f"forecast.n_windows@{_minutes_label(m)}"] = float((true_t[:, -1] - t0 >= round(m * 60 * NS_PER_S)).sum())
    for name, (lon, lat, t_ns) in preds.items():
        err = distance_errors_m(lon, lat, true_lon, true_lat)  # (N, H) metres
        out.update({f"forecast.{k}.{name}": v for k, v in horizon_errors(err, horizons).items()})
        e = err[:, :mae_points]
        out[f"forecast.mae_m@{mae_points}.{name}"] = float(e.mean())
        out[f"forecast.rmse_m@{mae_points}.{name}"] = float(np.sqrt(np.square(e).mean()))
        for m in minutes:
            when = t0 + round(m * 60 * NS_PER_S)
            ok = true_t[:, -1] >= when
            if not ok.any():
                continue
            tl, ta = position_at(*(a[ok] for a in track), when[ok])
            pl, pa = position_at(
                np.c_[ws.lon[sel, last], lon][ok], np.c_[ws.lat[sel, last], lat][ok], np.c_[t0, t_ns][ok], when[ok]
            )
            out[f"forecast.fde_m@{_minutes_label(m)}.{name}"] = float(haversine_m(pl, pa, tl, ta).mean())
    return out
