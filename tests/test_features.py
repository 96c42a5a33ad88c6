"""Windows, chronological split and normalization: the tutorial's traps, each pinned by a test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trajfm.data.schema import time_ns
from trajfm.features.encode import FEATURE_NAMES, calendar_features, decode_step, encode_points
from trajfm.features.windows import WindowParams, WindowSet, build_windows, make_features, normalization_stats
from trajfm.geo import displacement_m, haversine_m, offset_lonlat
from trajfm.store import StageWriter, read_manifest


def track_frame(
    traj_id: str, n: int, lon0: float, lat0: float, t0: str, step_s: int = 60, source: str = "s", east_mps=5.0
):
    t = pd.date_range(t0, periods=n, freq=f"{step_s}s", tz="UTC")
    east = np.arange(n) * east_mps * step_s
    lon, lat = offset_lonlat(np.full(n, lon0), np.full(n, lat0), east, np.arange(n) * 1.0)
    return pd.DataFrame(
        {"traj_id": traj_id, "obj_id": traj_id, "t": t, "lon": lon, "lat": lat, "kind": "vessel", "source": source}
    )


def test_encode_is_in_metres_and_keeps_lon_lat_order():
    # Due east along latitude 40: displacement is all east, none north.
    lon = np.array([-74.0, -73.99, -73.98])
    lat = np.array([40.0, 40.0, 40.0])
    t = np.array([0, 60, 120], dtype=np.int64) * 1_000_000_000 + 1_600_000_000_000_000_000
    f = encode_points(lon, lat, t)
    assert f.shape == (3, len(FEATURE_NAMES))
    assert f[0, 0] == 0 and f[0, 1] == 0  # first point: no predecessor
    assert 840 < f[1, 0] < 860 and abs(f[1, 1]) < 1e-6  # ~852 m east at 40 N
    assert np.isclose(f[1, 2], np.log1p(60.0))


def test_decode_inverts_encode_within_a_millimetre_and_a_millisecond():
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(-179, 179, 50), rng.uniform(-80, 80, 50)
    t = 1_700_000_000_000_000_000 + rng.integers(0, 10**12, 50)
    dx, dy = rng.normal(0, 500, 50), rng.normal(0, 500, 50)
    lon2, lat2 = offset_lonlat(lon, lat, dx, dy)
    east, north = displacement_m(lon, lat, lon2, lat2)
    assert np.allclose(east, dx, atol=1e-3) and np.allclose(north, dy, atol=1e-3)
    _, _, t2 = decode_step(lon, lat, t, dx, dy, np.log1p(np.full(50, 61.25)))
    assert np.array_equal(t2 - t, np.full(50, 61_250_000_000))


def test_times_are_never_float32_seconds():
    # Two fixes 1 s apart in 2020: float32 epoch seconds cannot tell them apart (128 s quantum).
    s = pd.Series(pd.to_datetime(["2020-06-30 12:00:00", "2020-06-30 12:00:01"], utc=True))
    t = time_ns(s)
    assert t.dtype == np.int64 and t[1] - t[0] == 1_000_000_000
    minute = time_ns(pd.Series(pd.date_range("2020-06-30 12:00", periods=60, freq="1s", tz="UTC")))
    assert len(np.unique(np.float32(minute / 1e9))) <= 2  # the trap this avoids: 60 fixes, <= 2 values
    f = encode_points(np.array([0.1, 0.1]), np.array([1.0, 1.0]), t)
    assert np.isclose(f[1, 2], np.log1p(1.0))


def test_calendar_features_use_local_solar_time():
    # 12:00 UTC at lon 0 and 00:00 UTC at lon 180 are both local noon.
    t = np.array([pd.Timestamp("2020-01-06 12:00", tz="UTC").value, pd.Timestamp("2020-01-06 00:00", tz="UTC").value])
    c = calendar_features(t, np.array([0.0, 180.0]))
    assert np.allclose(c[0, :2], c[1, :2]) and np.isclose(c[0, 1], -1.0)  # cos(2*pi*0.5) = -1


def test_chronological_split_puts_the_latest_period_in_test_without_leaks():
    pts = pd.concat([track_frame(f"a{i}", 60, -74.0 + 0.01 * i, 40.5, f"2020-06-{10 + i} 00:00") for i in range(10)])
    sets, counts = build_windows(pts, WindowParams(window=16, stride=16, min_points=8))
    assert min(sets["test"].t_ns[sets["test"].mask]) > max(sets["val"].t_ns[sets["val"].mask])
    assert min(sets["val"].t_ns[sets["val"].mask]) > max(sets["train"].t_ns[sets["train"].mask])
    assert sum(c["windows"] for c in counts.values()) == sum(len(s) for s in sets.values())


def test_short_pieces_are_padded_at_the_end_and_masked():
    pts = pd.concat(
        [track_frame("long", 100, 10.0, 50.0, "2021-01-01"), track_frame("short", 13, 10.1, 50.0, "2021-01-01")]
    )
    sets, _ = build_windows(pts, WindowParams(window=32, stride=32, min_points=5, train_frac=0.99, val_frac=0.0))
    train = sets["train"]
    short = train.subset(train.traj_id == "short")
    assert len(short) == 1 and short.mask[0].sum() == 13 and not short.mask[0, 13:].any()
    assert (short.x[0, 13:] == 0).all()


def test_train_stride_overlaps_training_windows_only():
    pts = pd.concat([track_frame(f"a{i}", 80, -74.0 + 0.01 * i, 40.5, f"2020-06-{10 + i} 00:00") for i in range(10)])
    base, _ = build_windows(pts, WindowParams(window=16, stride=16, min_points=8))
    over, counts = build_windows(pts, WindowParams(window=16, stride=16, train_stride=4, min_points=8))
    for split in ("val", "test"):  # evaluation windows stay disjoint and identical
        assert np.array_equal(over[split].t_ns, base[split].t_ns) and np.array_equal(over[split].x, base[split].x)
    assert counts["train"]["windows"] == len(over["train"]) > 3 * len(base["train"])
    one = over["train"].subset(over["train"].traj_id == "a0")
    starts = one.t_ns[:, 0]
    assert (np.diff(starts)[:-1] == 4 * 60 * 10**9).all()  # a window every 4 fixes (the tail window may be closer)
    assert set(base["train"].t_ns[base["train"].traj_id == "a0"][:, 0]) <= set(
        starts
    )  # a superset of the disjoint ones
    assert np.array_equal(one.x[1, :12], one.x[0, 4:])  # slices of one encoded piece: same features
    with pytest.raises(ValueError, match="train_stride must be >= 1"):
        WindowParams(train_stride=0)


def test_normalization_uses_train_real_points_only():
    x = np.zeros((2, 4, len(FEATURE_NAMES)), np.float32)
    mask = np.array([[True, True, False, False], [True, True, True, True]])
    x[..., 0] = [[1, 3, 1000, 1000], [2, 2, 2, 2]]  # padding holds garbage: must not count
    ws = WindowSet(x, mask, np.zeros((2, 4)), np.zeros((2, 4)), np.zeros((2, 4), np.int64), np.array(["a", "b"]))
    stats = normalization_stats(ws)
    assert np.isclose(stats["mean"][0], 2.0) and stats["n_points"] == 6
    assert stats["mean"][3:] == [0.0] * 4 and stats["std"][3:] == [1.0] * 4  # cycles untouched


def test_features_stage_is_content_addressed_and_saves_without_pickle(tmp_path):
    pts = pd.concat([track_frame(f"v{i}", 80, -70.0 - 0.1 * i, 42.0, f"2020-06-{1 + i} 00:00") for i in range(6)])
    with StageWriter(tmp_path, "preprocess", "k1") as w:
        w.write_frame("points", pts.reset_index(drop=True))
    out = make_features(w.final, root=tmp_path, params=WindowParams(window=16, stride=16, min_points=8))
    assert make_features(w.final, root=tmp_path, params=WindowParams(window=16, stride=16, min_points=8)) == out
    m = read_manifest(out)
    assert m["windows"]["train"] > 0 and set(m["windows"]) == {"train", "val", "test"}
    train = WindowSet.load(out / "train.npz")  # np.load(allow_pickle=False) inside
    # lat/lon round trip: the stored fixes are the input fixes, in (lon, lat) order.
    row = pts.set_index(["traj_id", "t"]).loc[(str(train.traj_id[0]), pd.Timestamp(train.t_ns[0, 0], tz="UTC"))]
    assert train.lon[0, 0] == row["lon"] and train.lat[0, 0] == row["lat"]
    assert haversine_m(train.lon[0, 0], train.lat[0, 0], -70.0, 42.0) < 50_000


def test_empty_train_split_is_a_clear_error(tmp_path):
    pts = track_frame("tiny", 5, 0.5, 0.5, "2020-01-01")
    with StageWriter(tmp_path, "preprocess", "k2") as w:
        w.write_frame("points", pts)
    with pytest.raises(ValueError, match="no training windows"):
        make_features(w.final, root=tmp_path, params=WindowParams(min_points=12))


def test_global_split_keeps_duplicated_fixes_of_overlapping_sources_in_one_split():
    # The same vessel reported by two files over the same hour, plus a later file.
    a = track_frame("x1", 60, -74.0, 40.6, "2020-06-30 00:00", source="coastal")
    b = track_frame("x2", 60, -74.0, 40.6, "2020-06-30 00:00", source="harbour_hour")
    later = track_frame("y", 200, -70.0, 41.0, "2020-12-01 00:00", source="december")
    pts = pd.concat([a, b, later])
    sets, _ = build_windows(pts, WindowParams(window=16, stride=16, min_points=8))
    assert not {"x1", "x2"} & set(sets["test"].traj_id)  # the latest period is December only
    by_source, _ = build_windows(pts, WindowParams(window=16, stride=16, min_points=8, split_by="source"))
    assert {"x1", "x2"} <= set(by_source["test"].traj_id)  # per-source cuts: each source has a test tail
    with pytest.raises(ValueError, match="split_by"):
        build_windows(pts, WindowParams(split_by="nope"))
