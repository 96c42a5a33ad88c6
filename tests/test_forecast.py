"""Forecasting: exact baselines, coordinate order, exact timestamps, ADE/FDE bookkeeping."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from synthetic_tracks import (
    T0_NS,
    make_windows,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    stats_of,
    straight_track,
    track_frame,
    vessel_track,
    windows_from_tracks,
)
from trajfm.evaluate import constant_velocity, evaluate_forecast, forecast_points, rollout
from trajfm.evaluate.forecast import forecastable
from trajfm.geo import haversine_m
from trajfm.model import GPTConfig, TrajGPT

NS = 1_000_000_000


def oracle_model(east_m: float, north_m: float, dt_s: float, block_size: int = 32) -> TrajGPT:
    """A model whose every prediction is exactly (east_m, north_m, log1p(dt_s)): head zeroed,
    the mean step stored in the normalization buffers."""
    torch.manual_seed(0)
    m = TrajGPT(GPTConfig(n_layer=1, n_head=2, d_model=16, block_size=block_size, dropout=0.0))
    m.set_normalization([east_m, north_m, math.log1p(dt_s), 0, 0, 0, 0], [100.0, 100.0, 1, 1, 1, 1, 1])
    with torch.no_grad():
        m.head.weight.zero_()
        m.head.bias.zero_()
    return m.eval()


@pytest.fixture(scope="module")
def random_model():
    ws = make_windows(4, 60, 32, seed=5)
    torch.manual_seed(1)
    m = TrajGPT(GPTConfig(n_layer=2, n_head=2, d_model=32, block_size=32, dropout=0.0))
    st = stats_of(ws)
    m.set_normalization(st["mean"], st["std"])
    return m.eval()


# --- constant velocity ---------------------------------------------------------------------


@pytest.mark.parametrize("east,north", [(120.0, 0.0), (0.0, -90.0), (70.0, 55.0)])
def test_constant_velocity_is_exact_on_a_straight_constant_speed_track(east, north):
    tracks = [(f"s{k}", *straight_track(40, east, north, 60 * NS + 250_000_000, lat0=40.6 + k)) for k in range(3)]
    ws = windows_from_tracks(tracks, window=32)
    lon, lat, t = constant_velocity(ws, context_len=16, horizon=10)
    assert lon.shape == lat.shape == t.shape == (3, 10)
    err = haversine_m(lon, lat, ws.lon[:, 16:26], ws.lat[:, 16:26])
    assert err.max() < 1e-6
    assert np.array_equal(t, ws.t_ns[:, 16:26])
    metrics = evaluate_forecast(oracle_model(0, 0, 1), ws, 16, 10)
    assert metrics["cv_ade_m"] < 1e-6 and metrics["cv_fde_m"] < 1e-6 and metrics["cv_fde_m@1"] < 1e-6


# --- rollout -------------------------------------------------------------------------------


def test_rollout_of_a_model_that_predicts_the_true_step_is_exact():
    # 80 m east, 60 m north, 60 s: all exactly representable in float32, so nothing is lost
    tracks = [(f"s{k}", *straight_track(40, 80.0, 60.0, 60 * NS, lon0=-74 + k)) for k in range(3)]
    ws = windows_from_tracks(tracks, window=32)
    lon, lat, t = rollout(oracle_model(80.0, 60.0, 60.0), ws, context_len=8, horizon=20)
    assert haversine_m(lon, lat, ws.lon[:, 8:28], ws.lat[:, 8:28]).max() < 1e-6
    assert np.array_equal(t, ws.t_ns[:, 8:28])  # int64 ns, to the nanosecond
    m = evaluate_forecast(oracle_model(80.0, 60.0, 60.0), ws, 8, 20, batch_size=2)
    assert m["n_windows"] == 3
    assert max(m["ade_m"], m["fde_m"], m["fde_m@1"]) < 1e-6


def test_rollout_longer_than_block_size_slides_the_context():
    tracks = [("s", *straight_track(80, 0.0, 100.0, 30 * NS))]
    ws = windows_from_tracks(tracks, window=80)
    model = oracle_model(0.0, 100.0, 30.0, block_size=16)
    lon, lat, t = rollout(model, ws, context_len=40, horizon=40)  # prefixes up to 79 points
    assert haversine_m(lon, lat, ws.lon[:, 40:], ws.lat[:, 40:]).max() < 1e-6
    assert np.array_equal(t, ws.t_ns[:, 40:])


def test_only_windows_long_enough_are_evaluated(random_model):
    ws = make_windows(10, 36, 32, seed=7)  # 18 to 36 points: some windows are short and padded
    n_real = ws.mask.sum(axis=1)
    sel = forecastable(ws, 16, 10)
    assert np.array_equal(sel, np.flatnonzero(n_real >= 26))
    assert 0 < len(sel) < len(ws)
    lon, lat, t = rollout(random_model, ws, 16, 10, batch_size=3)
    assert lon.shape == (len(sel), 10)
    assert np.isfinite(lon).all() and np.isfinite(lat).all()
    assert (np.diff(t, axis=1) >= 0).all()
    metrics = evaluate_forecast(random_model, ws, 16, 10)
    assert set(metrics) == {
        "n_windows",
        "ade_m",
        "fde_m",
        "cv_ade_m",
        "cv_fde_m",
        *(f"{p}{e}_m@{h}" for p in ("", "cv_") for e in ("ade", "fde") for h in (1, 5, 10)),
    }  # + steps 1, 5, 10
    assert metrics["n_windows"] == len(sel)
    assert all(isinstance(v, float) and np.isfinite(v) for k, v in metrics.items() if k != "n_windows")
    ref_err = haversine_m(lon, lat, ws.lon[sel, 16:26], ws.lat[sel, 16:26])
    assert metrics["ade_m"] == pytest.approx(ref_err.mean(), rel=1e-9)
    assert metrics["fde_m"] == pytest.approx(ref_err[:, -1].mean(), rel=1e-9)
    with pytest.raises(ValueError, match="no window"):
        evaluate_forecast(random_model, ws, 30, 10)


def test_rollout_leaves_training_mode_alone(random_model):
    ws = make_windows(2, 40, 32, seed=8)
    random_model.train()
    rollout(random_model, ws, 8, 2)
    assert random_model.training
    random_model.eval()


# --- forecast_points -----------------------------------------------------------------------


def test_forecast_points_keeps_lon_lat_order_east_and_north():
    east = ("east", *straight_track(20, 100.0, 0.0, 60 * NS, lon0=-74.0, lat0=40.6))
    north = ("north", *straight_track(20, 0.0, 100.0, 60 * NS, lon0=-74.0, lat0=40.6))
    pts = track_frame([east, north])
    out = forecast_points(oracle_model(100.0, 0.0, 60.0), pts[pts.traj_id == "east"], horizon=5)
    assert (out["lat"] == 40.6).all()  # due east: the latitude does not move
    assert (np.diff(out["lon"]) > 0).all() and out["lon"].iloc[0] > east[1][-1]
    assert np.allclose(haversine_m(east[1][-1], 40.6, out["lon"], out["lat"]), 100.0 * np.arange(1, 6), atol=1e-6)
    out = forecast_points(oracle_model(0.0, 100.0, 60.0), pts[pts.traj_id == "north"], horizon=5)
    assert np.allclose(out["lon"], -74.0, atol=1e-12)  # due north: the longitude does not move
    assert (np.diff(out["lat"]) > 0).all()


def test_forecast_points_times_are_exact_to_the_millisecond():
    t0 = pd.Timestamp("2020-06-30 12:34:56.789", tz="UTC").value
    track = ("a", *straight_track(30, 50.0, 0.0, 60 * NS, t0_ns=t0))
    pts = track_frame([track])
    out = forecast_points(oracle_model(50.0, 0.0, 60.0), pts, horizon=4)
    assert str(out["t"].dtype) == "datetime64[ns, UTC]"
    last = pd.Timestamp(track[3][-1], tz="UTC")
    expected = [last + pd.Timedelta(seconds=60 * k) for k in range(1, 5)]
    assert list(out["t"]) == expected
    assert expected[0] == pd.Timestamp("2020-06-30 13:04:56.789", tz="UTC")


def test_forecast_points_times_from_a_real_model_are_whole_milliseconds(random_model):
    rng = np.random.default_rng(2)
    lon, lat, t_ns = vessel_track(rng, 50, t0_ns=T0_NS + 123_456_789)
    pts = track_frame([("v", lon, lat, t_ns)])
    out = forecast_points(random_model, pts, horizon=6)
    gaps = np.diff(np.concatenate([[t_ns[-1]], out["t"].astype("int64").to_numpy()]))
    assert (gaps % 1_000_000 == 0).all() and (gaps >= 0).all()


def test_forecast_points_input_time_zones_and_order(random_model):
    rng = np.random.default_rng(3)
    tracks = [(f"v{k}", *vessel_track(rng, n)) for k, n in enumerate([12, 50, 3])]  # 50 > block_size
    pts = track_frame(tracks)
    ref = forecast_points(random_model, pts, horizon=3)
    assert list(ref.columns) == ["traj_id", "step", "t", "lon", "lat"]
    assert list(ref["traj_id"]) == ["v0"] * 3 + ["v1"] * 3 + ["v2"] * 3
    assert list(ref["step"]) == [1, 2, 3] * 3
    naive = pts.assign(t=pts["t"].dt.tz_localize(None))
    shifted = pts.assign(t=pts["t"].dt.tz_convert("Asia/Tokyo"))
    shuffled = pts.sample(frac=1.0, random_state=0)
    for other in (naive, shifted, shuffled):
        pd.testing.assert_frame_equal(forecast_points(random_model, other, horizon=3), ref)
    # batching (padding short contexts) gives the same forecasts as one trajectory at a time
    for tid in ("v0", "v1", "v2"):
        alone = forecast_points(random_model, pts[pts.traj_id == tid], horizon=3)
        mine = ref[ref.traj_id == tid]
        assert haversine_m(alone["lon"], alone["lat"], mine["lon"], mine["lat"]).max() < 1e-2
        assert (np.abs(alone["t"].astype("int64").to_numpy() - mine["t"].astype("int64").to_numpy()) <= 1_000_000).all()


def test_forecast_points_rejects_bad_input(random_model):
    rng = np.random.default_rng(4)
    pts = track_frame([("a", *vessel_track(rng, 10)), ("b", *vessel_track(rng, 10))])
    with pytest.raises(ValueError, match=r"missing columns \['lat'\]"):
        forecast_points(random_model, pts.drop(columns="lat"), horizon=2)
    one = pd.concat([pts, pts.iloc[[0]].assign(traj_id="lonely")], ignore_index=True)
    with pytest.raises(ValueError, match="fewer than 2 points.*lonely"):
        forecast_points(random_model, one, horizon=2)
    with pytest.raises(ValueError, match="missing"):
        forecast_points(random_model, pts.assign(lon=np.where(pts.index == 3, np.nan, pts.lon)), horizon=2)
    with pytest.raises(ValueError, match="horizon"):
        forecast_points(random_model, pts, horizon=0)
