"""The foundation-model API: ``trajfm.load(uri).forecast(points, horizon=...)``.

``load`` takes ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/model`` (these
import MLflow and read the registry of ``data_root``), a ``model.pt`` checkpoint or a train
stage directory (these never import MLflow). The returned :class:`Forecaster` forecasts any
number of trajectories at once, batched:

>>> fc = trajfm.load("models:/trajfm@champion")                        # doctest: +SKIP
>>> out = fc.forecast(points, horizon=10)                              # doctest: +SKIP

Input: canonical points (the data contract: ``traj_id, obj_id, t, lon, lat, kind, ...``; only
``traj_id``, ``t``, ``lon``, ``lat`` are read, other columns are ignored). ``t`` is a datetime
(tz-aware, or naive meaning UTC) or ISO-8601 text; ``lon, lat`` WGS84 degrees. Each trajectory
needs at least 2 points; its last ``block_size`` points are the context.

Cadence: a model is trained on points resampled to one interval (60 s for the demo's vessels).
The model's training interval is read from its normalization statistics (``interval_s``); a
trajectory whose median interval is more than ``CADENCE_TOLERANCE`` times off it is refused
with a message naming both, unless ``resample_s`` is given: then every trajectory is first
resampled (linear in time, ``trajfm.data.clean.resample_to_interval``) to fixes every
``resample_s`` seconds (``resample_s="model"``: the model's interval).

Output: one row per trajectory and step: ``traj_id, step`` (1..horizon), ``t``
(datetime64[ns, UTC]), ``lon, lat`` (degrees), the point forecast, plus the uncertainty:
``radius_m_q10, radius_m_q25, radius_m_q50, radius_m_q75, radius_m_q90``: the distance in metres
from the point forecast within which the true fix falls with that probability. For a mixture
head these come from ``n_samples`` sampled futures (seeded), which also give marginal
quantiles ``lon_q10..lon_q90`` and ``lat_q10..lat_q90``. For a point head (``mse``) they come
from backtests on the input itself: the model forecasts from earlier points of every
trajectory long enough (``context + horizon`` points), and the radius at step h is the
quantile of its errors at step h over all those backtests in the call (``n_backtests``
backtests; NaN when no trajectory is long enough).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
CADENCE_TOLERANCE = 1.5  # a median interval within [1/1.5, 1.5] x the model's is accepted as it is
BACKTEST_STRIDE = 5  # points between backtest origins along a trajectory
MAX_BACKTESTS_PER_TRAJECTORY = 8
MIN_BACKTEST_CONTEXT = 8  # points of context a backtest forecasts from, at least


def quantile_label(q: float) -> str:
    return f"q{round(q * 100):02d}"


def radius_columns() -> list[str]:
    return [f"radius_m_{quantile_label(q)}" for q in QUANTILES]


def training_interval_s(stats: dict | None) -> float | None:
    """The model's training interval in seconds from its raw-feature statistics, or None.

    The ``log_dt_s`` feature is ``log1p(seconds since the previous fix)`` and 0 at the first
    point of every piece. For data at one interval L (seconds), the feature takes the values 0
    and ``log1p(L)``, so ``E[x^2] / E[x] = log1p(L)`` whatever the share of first points; for
    data at several intervals it is a weighted mean of their ``log1p``."""
    from trajfm.features.encode import FEATURE_NAMES

    if not stats or "mean" not in stats or "std" not in stats:
        return None
    i = FEATURE_NAMES.index("log_dt_s")
    mean, std = float(stats["mean"][i]), float(stats["std"][i])
    if not (math.isfinite(mean) and math.isfinite(std)) or mean <= 0:
        return None
    return float(np.expm1((std**2 + mean**2) / mean))


@dataclass
class Forecaster:
    """A loaded trajfm model that forecasts canonical points (see the module docstring)."""

    model: object  # trajfm.model.TrajGPT, in eval mode
    info: dict = field(default_factory=dict)  # uri, source, preset, version, n_params, ...
    batch_size: int = 256

    @property
    def interval_s(self) -> float | None:
        """The interval (seconds) of the points the model was trained on, when known."""
        return training_interval_s(self.info.get("normalization"))

    @property
    def block_size(self) -> int:
        return int(self.model.config.block_size)

    def forecast(
        self,
        points: pd.DataFrame,
        horizon: int = 10,
        *,
        resample_s: float | str | None = None,
        n_samples: int = 100,
        n_backtests: int = MAX_BACKTESTS_PER_TRAJECTORY,
        seed: int = 0,
    ) -> pd.DataFrame:
        """Forecast ``horizon`` steps of every trajectory in ``points`` with error radii.

        ``resample_s``: None (refuse a trajectory far off the model's cadence), a number of
        seconds, or ``"model"`` (the model's interval). ``n_samples``: sampled futures per
        trajectory for a mixture head; ``n_backtests``: backtests per trajectory for a point
        head (0: radii are NaN). ``seed`` makes sampling deterministic."""
        from trajfm.evaluate.forecast import forecast_points

        horizon = int(horizon)
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1 step, got {horizon}")
        df = canonical_points(points)
        if resample_s is not None:
            step = self.interval_s if resample_s == "model" else float(resample_s)
            if step is None:
                raise ValueError("resample_s='model': this model's training interval is unknown; give seconds")
            df = resample_points(df, step)
        else:
            self.check_cadence(df)
        out = forecast_points(self.model, df, horizon, batch_size=self.batch_size)
        out["traj_id"] = out["traj_id"].astype("string")
        if self.model.config.output.head == "mixture" and n_samples > 0:
            extra = self._sampled_quantiles(df, out, horizon, n_samples, seed)
        else:
            extra = self._backtest_radii(df, horizon, n_backtests, len(out) // horizon)
        return pd.concat([out.reset_index(drop=True), extra.reset_index(drop=True)], axis=1)

    def check_cadence(self, df: pd.DataFrame) -> None:
        """Raise ``ValueError`` naming the trajectories whose median interval is off the model's."""
        model_s = self.interval_s
        if model_s is None or model_s <= 0:
            return
        t = df["t"].astype("int64").to_numpy()
        same = df["traj_id"].to_numpy()[1:] == df["traj_id"].to_numpy()[:-1]
        dt_s = pd.Series(np.diff(t)[same] / 1e9, index=df["traj_id"].to_numpy()[1:][same])
        median = dt_s.groupby(level=0).median()
        off = median[(median > model_s * CADENCE_TOLERANCE) | (median < model_s / CADENCE_TOLERANCE)]
        if len(off):
            examples = ", ".join(f"{k} ({v:.0f} s)" for k, v in off.head(3).items())
            raise ValueError(
                f"{len(off)} trajectories are not at the model's cadence (~{model_s:.0f} s between fixes), e.g. "
                f"{examples}: "
                f"resample them first (forecast(..., resample_s='model') or trajfm.data.clean.resample_to_interval)"
            )

    def _sampled_quantiles(self, df, out, horizon: int, n_samples: int, seed: int) -> pd.DataFrame:
        """Radius and lon/lat quantiles from ``n_samples`` sampled futures per trajectory."""
        import torch

        from trajfm.evaluate.forecast import forecast_points
        from trajfm.geo import haversine_m

        g = torch.Generator().manual_seed(int(seed))
        lon_s, lat_s = [], []
        for _ in range(n_samples):
            s = forecast_points(self.model, df, horizon, batch_size=self.batch_size, how="sample", generator=g)
            lon_s.append(s["lon"].to_numpy()), lat_s.append(s["lat"].to_numpy())
        lon_s, lat_s = np.stack(lon_s), np.stack(lat_s)  # (S, N*H) degrees
        dist = haversine_m(lon_s, lat_s, out["lon"].to_numpy()[None], out["lat"].to_numpy()[None])  # metres
        cols = {name: np.quantile(dist, q, axis=0) for name, q in zip(radius_columns(), QUANTILES)}
        for q in QUANTILES:
            cols[f"lon_{quantile_label(q)}"] = np.quantile(lon_s, q, axis=0)
        for q in QUANTILES:
            cols[f"lat_{quantile_label(q)}"] = np.quantile(lat_s, q, axis=0)
        return pd.DataFrame(cols)

    def _backtest_radii(self, df: pd.DataFrame, horizon: int, n_backtests: int, n_traj: int) -> pd.DataFrame:
        """Per-step radius quantiles from forecasting earlier points of the input (point head)."""
        from trajfm.evaluate.forecast import forecast_points
        from trajfm.geo import haversine_m

        radii = np.full((horizon, len(QUANTILES)), np.nan)
        pieces, truths = [], []
        if n_backtests > 0:
            for tid, g in df.groupby("traj_id", sort=True):
                n = len(g)
                ends = range(n - horizon, MIN_BACKTEST_CONTEXT - 1, -BACKTEST_STRIDE)  # context = rows [0, end)
                for k, end in enumerate(list(ends)[:n_backtests]):
                    ctx = g.iloc[max(0, end - self.block_size) : end].assign(traj_id=f"{tid}\x1f{k}")
                    pieces.append(ctx)
                    truths.append(g.iloc[end : end + horizon][["lon", "lat"]].to_numpy())
        if pieces:
            back = forecast_points(
                self.model, pd.concat(pieces, ignore_index=True), horizon, batch_size=self.batch_size
            )
            # forecast_points sorts by traj_id; the pieces' ids sort the same as their order only
            # within a trajectory, so align by id.
            order = {tid: i for i, tid in enumerate(pd.concat(pieces)["traj_id"].drop_duplicates())}
            truth = np.stack(truths)  # (B, H, 2)
            idx = np.array([order[t] for t in back["traj_id"].to_numpy()[::horizon]])
            pred = np.stack([back["lon"].to_numpy(), back["lat"].to_numpy()], axis=-1).reshape(len(idx), horizon, 2)
            err = haversine_m(pred[..., 0], pred[..., 1], truth[idx, :, 0], truth[idx, :, 1])  # (B, H) metres
            radii = np.quantile(err, QUANTILES, axis=0).T  # (H, Q)
        tiled = np.tile(radii, (n_traj, 1))
        return pd.DataFrame(tiled, columns=radius_columns())


def canonical_points(points: pd.DataFrame) -> pd.DataFrame:
    """``traj_id`` (string), ``t`` (datetime64[ns, UTC]), ``lon, lat`` (float64 degrees), sorted
    by ``traj_id, t``; a clear ``ValueError`` for missing columns, missing values or bad times."""
    if not isinstance(points, pd.DataFrame):
        points = pd.DataFrame(points)
    need = ["traj_id", "t", "lon", "lat"]
    missing = [c for c in need if c not in points.columns]
    if missing:
        raise ValueError(
            f"points lack columns {missing}; need canonical points with {need} (obj_id, kind, ... are ignored)"
        )
    t = points["t"]
    if isinstance(t.dtype, pd.DatetimeTZDtype):
        t = t.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(t):
        t = t.dt.tz_localize("UTC")  # naive datetimes mean UTC
    else:
        try:
            t = pd.to_datetime(t, utc=True, format="ISO8601")
        except (ValueError, TypeError) as exc:
            raise ValueError(f"column t is not datetimes or ISO-8601 text: {exc}") from None
    df = pd.DataFrame(
        {
            "traj_id": points["traj_id"].astype("string").to_numpy(),
            "t": t.dt.as_unit("ns").to_numpy(),
            "lon": pd.to_numeric(points["lon"], errors="coerce").to_numpy(dtype=np.float64),
            "lat": pd.to_numeric(points["lat"], errors="coerce").to_numpy(dtype=np.float64),
        }
    )
    df["t"] = pd.to_datetime(df["t"], utc=True)
    bad = df[["traj_id", "t", "lon", "lat"]].isna().any(axis=1)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} points have a missing or non-numeric traj_id, t, lon or lat (first row "
            f"{int(np.flatnonzero(bad)[0])})"
        )
    if not (df["lon"].between(-180, 180).all() and df["lat"].between(-90, 90).all()):
        raise ValueError("lon must be in [-180, 180] and lat in [-90, 90] degrees (is the order swapped?)")
    df = df.sort_values(["traj_id", "t"], kind="stable").reset_index(drop=True)
    dup = df.duplicated(["traj_id", "t"])
    if dup.any():
        raise ValueError(
            f"{int(dup.sum())} points repeat a time within their trajectory (e.g. {df.loc[dup, 'traj_id'].iloc[0]})"
        )
    return df


def resample_points(df: pd.DataFrame, interval_s: float) -> pd.DataFrame:
    """Every trajectory of canonical ``df`` resampled to fixes at multiples of ``interval_s``
    seconds (linear in time between fixes, ``trajfm.data.clean.resample_to_interval``)."""
    from trajfm.data.clean import resample_to_interval

    if not interval_s or interval_s <= 0 or not math.isfinite(interval_s):
        raise ValueError(f"resample_s must be a positive number of seconds, got {interval_s}")
    ids = df["traj_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(df)]
    t_ns = df["t"].astype("int64").to_numpy()
    interval_ns = np.full(len(starts), round(interval_s * 1e9), dtype=np.int64)
    seg, grid_t, lon, lat = resample_to_interval(
        t_ns, df["lon"].to_numpy(), df["lat"].to_numpy(), starts, ends, interval_ns
    )
    return pd.DataFrame(
        {
            "traj_id": pd.array(ids[starts][seg], dtype="string"),
            "t": pd.to_datetime(grid_t, unit="ns", utc=True),
            "lon": lon,
            "lat": lat,
        }
    )


def load(uri: str | os.PathLike, data_root: str | os.PathLike | None = None, device: str = "cpu") -> Forecaster:
    """A :class:`Forecaster` for ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
    ``runs:/RUN_ID/model`` (MLflow, in the registry of ``data_root``), a ``model.pt`` or a train
    stage directory (no MLflow import)."""
    from trajfm.evaluate.suite import load_any_model

    loaded = load_any_model(uri, data_root, device=device)
    return Forecaster(loaded.model, dict(loaded.info))


# --- the command line: trajfm forecast ----------------------------------------------------------


def read_points_file(path: str | os.PathLike) -> pd.DataFrame:
    """Canonical points from a Parquet file or dataset directory (``.parquet``) or a CSV file."""
    text = str(path)
    if text.lower().endswith((".csv", ".csv.gz")):
        return pd.read_csv(text, dtype={"traj_id": "string", "obj_id": "string"})
    if not os.path.exists(text) and "://" not in text:
        raise FileNotFoundError(f"--data {text}: no such file")
    return pd.read_parquet(text)


def main(argv: list[str] | None = None) -> int:
    """``trajfm forecast --model URI --data points.parquet --horizon N --out forecast.parquet``."""
    import argparse
    import sys
    import time

    p = argparse.ArgumentParser(
        prog="trajfm forecast",
        description="Forecast the next HORIZON fixes of every trajectory in a canonical points file "
        "(Parquet or CSV: traj_id, t, lon, lat; other columns ignored), with error radii in metres.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model, a model.pt or a train directory",
    )
    p.add_argument("--data", required=True, help="canonical points: .parquet (file or dataset directory) or .csv")
    p.add_argument("--horizon", type=int, default=10, help="steps to forecast (default 10)")
    p.add_argument("--out", required=True, help="output .parquet (or .csv) of forecast points")
    p.add_argument(
        "--data-root", default=None, help="where the MLflow registry lives (default: $TRAJFM_HOME or ./.trajfm)"
    )
    p.add_argument(
        "--resample-s",
        default=None,
        help="resample every trajectory to this interval in seconds first ('model': the model's interval)",
    )
    p.add_argument("--samples", type=int, default=100, help="sampled futures per trajectory (mixture head)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    resample = args.resample_s if args.resample_s in (None, "model") else float(args.resample_s)
    try:
        started = time.perf_counter()
        fc = load(args.model, data_root=args.data_root)
        points = read_points_file(args.data)
        out = fc.forecast(points, horizon=args.horizon, resample_s=resample, n_samples=args.samples, seed=args.seed)
        dest = os.fspath(args.out)
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
        (out.to_csv(dest, index=False) if dest.lower().endswith(".csv") else out.to_parquet(dest, index=False))
    except (ValueError, FileNotFoundError) as exc:
        print(f"trajfm forecast: error: {exc}", file=sys.stderr)
        return 2
    n = out["traj_id"].nunique()
    print(f"{n} trajectories x {args.horizon} steps -> {dest} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
