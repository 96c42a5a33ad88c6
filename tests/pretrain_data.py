"""Generated shards for the pre-training tests: vessel-like tracks (``synthetic_tracks``) as
two or three sources of processed points, sharded by ``trajfm.features.shards``.

Not a test module; the pretrain tests import it (and it is the data of their subprocesses)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthetic_tracks import T0_NS, track_frame, vessel_track
from trajfm.features.shards import ShardParams, write_shards
from trajfm.features.windows import WindowParams

PARAMS = ShardParams(WindowParams(window=32, stride=32, min_points=8, split_by="source"), max_windows=24)


def source_points(name: str, n_tracks: int, points: int, seed: int):
    rng = np.random.default_rng(seed)
    tracks = []
    for k in range(n_tracks):
        n = int(rng.integers(points // 2, points + 1))
        lon0, lat0 = -74.05 + rng.uniform(-0.2, 0.2), 40.55 + rng.uniform(-0.2, 0.2)
        t0 = T0_NS + int(rng.integers(0, 30 * 86_400)) * 1_000_000_000  # a month of starts: every split gets tracks
        tracks.append((f"{name}-{k:03d}", *vessel_track(rng, n, lon0, lat0, t0)))
    return track_frame(tracks).sort_values(["traj_id", "t"]).reset_index(drop=True)


def generated_shards(
    out: Path,
    sources=(("ships", 30, 120, 1), ("boats", 12, 80, 2), ("ferries", 3, 60, 3)),
    params: ShardParams = PARAMS,
) -> dict:
    """Write each source's points to ``out/points/<name>.parquet`` and their shards to ``out/shards``."""
    (out / "points").mkdir(parents=True, exist_ok=True)
    paths = []
    for name, n_tracks, points, seed in sources:
        path = out / "points" / f"{name}.parquet"
        source_points(name, n_tracks, points, seed).to_parquet(path, index=False)
        paths.append((name, str(path)))
    return write_shards(paths, out / "shards", params)
