"""Realistic synthetic tracks for model tests: vessel-like, 60 s sampling, turns, GPS noise.

Not a test module (no ``test_`` prefix); the model, train and forecast tests import it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from trajfm.features.encode import encode_points
from trajfm.features.windows import WindowSet, stack_windows
from trajfm.geo import offset_lonlat

T0_NS = 1_593_475_200_000_000_000  # 2020-06-30 00:00:00 UTC


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run faster on one thread, and far faster when other jobs share the 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def vessel_track(rng: np.random.Generator, n: int, lon0: float = -74.02, lat0: float = 40.60, t0_ns: int = T0_NS):
    """(lon, lat, t_ns) of one track: ~4-7 m/s, smooth heading drift, turns, 5 m noise, ~60 s."""
    speed = rng.uniform(4.0, 7.0)
    heading = rng.uniform(0, 2 * np.pi)
    turn_rate = 0.0
    dt_s = np.clip(60.0 + rng.normal(0, 2.0, n - 1), 50.0, 70.0)
    dt_s[rng.random(n - 1) < 0.03] *= 2  # a missed fix now and then
    lon, lat = np.empty(n), np.empty(n)
    lon[0], lat[0] = lon0, lat0
    for i in range(1, n):
        if rng.random() < 0.05:  # start or stop a turn
            turn_rate = rng.normal(0, 0.15) if turn_rate == 0.0 else 0.0
        heading += turn_rate + rng.normal(0, 0.02)
        speed = float(np.clip(speed + rng.normal(0, 0.1), 2.0, 9.0))
        d = speed * dt_s[i - 1]
        lon[i], lat[i] = offset_lonlat(lon[i - 1], lat[i - 1], d * np.sin(heading), d * np.cos(heading))
    noise_e, noise_n = rng.normal(0, 5.0, n), rng.normal(0, 5.0, n)
    lon, lat = offset_lonlat(lon, lat, noise_e, noise_n)
    t_ns = t0_ns + np.concatenate([[0], np.cumsum(np.round(dt_s * 1000).astype(np.int64) * 1_000_000)])
    return lon, lat, t_ns.astype(np.int64)


def straight_track(n: int, east_m: float, north_m: float, dt_ns: int, lon0=-74.0, lat0=40.6, t0_ns=T0_NS):
    """Constant step in the local tangent plane and a constant time gap (int64 ns)."""
    lon, lat = np.empty(n), np.empty(n)
    lon[0], lat[0] = lon0, lat0
    for i in range(1, n):
        lon[i], lat[i] = offset_lonlat(lon[i - 1], lat[i - 1], east_m, north_m)
    return lon, lat, t0_ns + dt_ns * np.arange(n, dtype=np.int64)


def windows_from_tracks(tracks: list[tuple], window: int, stride: int | None = None) -> WindowSet:
    """Encode each (traj_id, lon, lat, t_ns) whole and cut windows, padding short ones at the end."""
    stride = stride or window
    items = []
    for tid, lon, lat, t_ns in tracks:
        feats = encode_points(lon, lat, t_ns)
        n = len(lon)
        starts = [0] if n <= window else list(range(0, n - window + 1, stride))
        for s in starts:
            e = min(s + window, n)
            items.append((feats[s:e], lon[s:e], lat[s:e], t_ns[s:e], tid))
    return stack_windows(items, window)


def make_windows(n_tracks: int, points: int, window: int, seed: int = 0, stride: int | None = None) -> WindowSet:
    rng = np.random.default_rng(seed)
    tracks = []
    for k in range(n_tracks):
        n = int(rng.integers(points // 2, points + 1))
        lon0, lat0 = -74.05 + rng.uniform(-0.2, 0.2), 40.55 + rng.uniform(-0.2, 0.2)
        tracks.append(
            (f"v{k}", *vessel_track(rng, n, lon0, lat0, T0_NS + int(rng.integers(0, 86_400)) * 1_000_000_000))
        )
    return windows_from_tracks(tracks, window, stride)


def stats_of(ws: WindowSet) -> dict:
    """Mean/std of real points only, as the lead's pipeline computes them for the train split."""
    real = ws.x[ws.mask].astype(np.float64)
    mean, std = real.mean(axis=0), real.std(axis=0)
    return {"mean": mean.tolist(), "std": np.where(std < 1e-6, 1.0, std).tolist()}


def track_frame(tracks: list[tuple]) -> pd.DataFrame:
    """Canonical-ish points frame (traj_id, t UTC, lon, lat) from (traj_id, lon, lat, t_ns) tuples."""
    frames = [
        pd.DataFrame({"traj_id": tid, "t": pd.to_datetime(t_ns, unit="ns", utc=True), "lon": lon, "lat": lat})
        for tid, lon, lat, t_ns in tracks
    ]
    return pd.concat(frames, ignore_index=True)


def jittered_model(ws: WindowSet, **config):
    """An eval-mode ``TrajGPT`` of ``GPTConfig.from_dict(config)`` with ``ws``'s statistics and weights
    moved off GPT-2's init (nearly constant in its input), so equality tests can fail."""
    from trajfm.model import GPTConfig, TrajGPT

    torch.manual_seed(0)
    m = TrajGPT(GPTConfig.from_dict(config))
    st = stats_of(ws)
    m.set_normalization(st["mean"], st["std"])
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()
