"""Cleaning, splitting, resampling: synthetic tracks with known defects, plus MovingPandas parity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trajfm.data.clean import (
    KIND_DEFAULTS,
    PreprocessParams,
    clean_partition,
    normalize_params,
    speed_outliers,
)
from trajfm.data.schema import POINT_COLUMNS, REASONS
from trajfm.geo import haversine_m

T0 = pd.Timestamp("2020-12-08 00:00:10", tz="UTC")  # deliberately off the 60 s grid
VESSEL = KIND_DEFAULTS["vessel"]


def track(traj_id="src:A", obj_id="A", n=40, dt_s=50.0, lon0=-74.0, lat0=40.6, east_mps=5.0, t0=T0, kind="vessel"):
    """A mover going east at ``east_mps`` metres per second, one fix every ``dt_s`` seconds."""
    t = t0 + pd.to_timedelta(np.arange(n) * dt_s, unit="s")
    metres = east_mps * np.arange(n) * dt_s
    lon = lon0 + np.degrees(metres / (6_371_008.8 * np.cos(np.radians(lat0))))
    return pd.DataFrame(
        {
            "traj_id": traj_id,
            "obj_id": obj_id,
            "t": t,
            "lon": lon,
            "lat": np.full(n, lat0),
            "kind": kind,
            "source": "src",
        }
    )


def check_accounting(df_in, counts, quarantine):
    assert counts["rows_in"] == len(df_in)
    assert counts["rows_in"] == counts["rows_kept"] + counts["rows_quarantined"]
    assert counts["rows_quarantined"] == len(quarantine)
    assert sum(counts["quarantined_by_reason"].values()) == len(quarantine)
    assert set(quarantine["reason"]) <= set(REASONS)


def test_clean_track_is_resampled_on_the_interval_grid():
    df = track(n=40, dt_s=50.0)
    pts, q, counts = clean_partition(df)
    check_accounting(df, counts, q)
    assert q.empty and counts["rows_kept"] == 40
    assert list(pts.columns) == POINT_COLUMNS
    assert str(pts["t"].dtype) == "datetime64[ns, UTC]"
    assert set(pts["traj_id"]) == {"src:A_0"}
    t_ns = pts["t"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    assert (np.diff(t_ns) == 60 * 10**9).all()  # exactly the interval
    assert (t_ns % (60 * 10**9) == 0).all()  # on multiples of the interval since the epoch
    # Inside [first, last] fix: first grid time >= 00:00:10 is 00:01:00.
    assert pts["t"].iloc[0] == pd.Timestamp("2020-12-08 00:01:00", tz="UTC")
    assert pts["t"].iloc[-1] <= df["t"].iloc[-1]
    assert counts["rows_out"] == len(pts)
    # Linear in time: at 00:01:00 (50 s after the fix at 00:00:10), 5 m/s east -> 250 m east.
    d = haversine_m(df["lon"].iloc[0], df["lat"].iloc[0], pts["lon"].iloc[0], pts["lat"].iloc[0])
    assert d == pytest.approx(250.0, rel=1e-6)


def test_duplicates_are_quarantined():
    df = track(n=30)
    exact = df.iloc[[5]]
    moved = df.iloc[[7]].assign(lon=df["lon"].iloc[7] + 0.001)
    df_in = pd.concat([df, exact, moved], ignore_index=True)
    pts, q, counts = clean_partition(df_in)
    check_accounting(df_in, counts, q)
    assert counts["quarantined_by_reason"]["duplicate_fix"] == 1
    assert counts["quarantined_by_reason"]["duplicate_time"] == 1
    assert counts["rows_kept"] == 30
    dup_time = q[q["reason"] == "duplicate_time"]
    # Of two positions at one time the first in (lon, lat) order stays: the original fix.
    assert dup_time["lon"].iloc[0] == pytest.approx(df["lon"].iloc[7] + 0.001)


def test_speed_spike_removes_only_the_spike():
    df = track(n=30)
    df.loc[10, "lat"] += 0.1  # ~11 km off in 50 s: ~220 m/s
    pts, q, counts = clean_partition(df)
    check_accounting(df, counts, q)
    assert q["reason"].tolist() == ["speed_outlier"]
    assert q["t"].iloc[0] == df["t"].iloc[10]
    assert counts["rows_kept"] == 29  # the fix after the spike is measured from the fix before it
    assert pts["lat"].max() == pytest.approx(40.6)


def test_run_of_outliers_and_sequential_semantics():
    df = track(n=60)
    df.loc[[20, 21, 22], "lon"] += 0.5  # three fixes ~42 km away in a row
    outlier, speed = speed_outliers(
        df["t"].to_numpy("datetime64[ns]").view(np.int64),
        df["lon"].to_numpy(),
        df["lat"].to_numpy(),
        np.r_[True, np.zeros(59, dtype=bool)],
        np.full(60, 30.0),
    )
    assert np.flatnonzero(outlier).tolist() == [20, 21, 22]
    assert (speed[outlier] > 30.0).all() and np.isnan(speed[~outlier]).all()


def test_long_jump_drops_fixes_until_reachable_again():
    # A mover that teleports 100 km: MovingPandas keeps the reference fix and drops every later
    # fix until one is reachable at <= v_max from it (after ~3,300 s at 30 m/s).
    n = 150
    df = track(n=n, dt_s=50.0, east_mps=1.0)
    df.loc[40:, "lon"] += np.degrees(100_000 / (6_371_008.8 * np.cos(np.radians(40.6))))
    outlier, _ = speed_outliers(
        df["t"].to_numpy("datetime64[ns]").view(np.int64),
        df["lon"].to_numpy(),
        df["lat"].to_numpy(),
        np.r_[True, np.zeros(n - 1, dtype=bool)],
        np.full(n, 30.0),
    )
    # Expected by the sequential definition, computed with a plain loop.
    t = df["t"].to_numpy("datetime64[ns]").view(np.int64) / 1e9
    lon, lat = df["lon"].to_numpy(), df["lat"].to_numpy()
    expected, prev = [], 0
    for i in range(1, n):
        if haversine_m(lon[prev], lat[prev], lon[i], lat[i]) / (t[i] - t[prev]) > 30.0:
            expected.append(i)
        else:
            prev = i
    assert np.flatnonzero(outlier).tolist() == expected
    assert len(expected) > _window_size()  # the search crossed more than one window


def _window_size() -> int:
    from trajfm.data import clean

    return clean._SEARCH_WINDOW


def test_gap_splits_into_two_segments():
    first = track(n=30)
    second = track(n=30, t0=T0 + pd.Timedelta(hours=2), lon0=-73.9)
    df = pd.concat([first, second], ignore_index=True)
    pts, q, counts = clean_partition(df)
    check_accounting(df, counts, q)
    assert q.empty
    assert sorted(pts["traj_id"].unique()) == ["src:A_0", "src:A_1"]
    for _, seg in pts.groupby("traj_id"):
        assert (seg["t"].diff().dropna() == pd.Timedelta(seconds=60)).all()
    # Nothing is interpolated across the gap.
    assert pts.loc[pts["traj_id"] == "src:A_0", "t"].max() <= first["t"].max()
    assert pts.loc[pts["traj_id"] == "src:A_1", "t"].min() >= second["t"].min()
    assert counts["n_trajectories"] == 2 and counts["n_segments"] == 2


def test_short_segments_are_quarantined():
    long_part = track(n=30)
    short_part = track(n=5, t0=T0 + pd.Timedelta(hours=3))  # 5 fixes < min_points 10
    brief = track(n=12, dt_s=20.0, t0=T0 + pd.Timedelta(hours=6))  # 220 s < 600 s
    other = track(traj_id="src:B", obj_id="B", n=4)
    df = pd.concat([long_part, short_part, brief, other], ignore_index=True)
    pts, q, counts = clean_partition(df)
    check_accounting(df, counts, q)
    assert counts["quarantined_by_reason"]["short_trajectory"] == 5 + 12 + 4
    assert set(pts["traj_id"]) == {"src:A_0"}
    assert counts["n_segments"] == 4 and counts["n_trajectories"] == 1
    assert q.loc[q["traj_id"] == "src:B", "detail"].str.contains("4 fixes").all()


def test_accounting_with_everything_at_once_and_row_order_does_not_matter():
    df = pd.concat(
        [
            track(n=50),
            track(traj_id="src:B", obj_id="B", n=50, lat0=40.7),
            track(traj_id="src:C", obj_id="C", n=6, lat0=40.8),
        ],
        ignore_index=True,
    )
    df.loc[10, "lat"] += 0.2
    df = pd.concat([df, df.iloc[[3, 60]]], ignore_index=True)
    pts, q, counts = clean_partition(df)
    check_accounting(df, counts, q)
    pts2, q2, counts2 = clean_partition(df.sample(frac=1.0, random_state=1))
    assert counts2 == counts
    pd.testing.assert_frame_equal(pts, pts2)
    pd.testing.assert_frame_equal(q, q2)


def test_resampling_across_the_antimeridian_goes_the_short_way():
    df = track(n=20, lon0=179.99, east_mps=10.0, dt_s=60.0)
    df["lon"] = (df["lon"] + 180.0) % 360.0 - 180.0  # crosses from +180 to -180
    pts, q, _ = clean_partition(df)
    assert q.empty
    assert (pts["lon"].abs() > 179.8).all()  # never interpolated through 0
    assert (pts["lon"] < 0).sum() > 10 and (pts["lon"] > 0).sum() >= 1
    assert pts["lon"].between(-180, 180).all()


def test_params_normalization_and_unknown_kinds():
    assert normalize_params(None)["vessel"] == VESSEL
    assert normalize_params({"interval_s": 30})["bird"].interval_s == 30
    table = normalize_params({"vessel": {"v_max_mps": 20}})
    assert table["vessel"].v_max_mps == 20 and table["vessel"].max_gap_s == VESSEL.max_gap_s
    assert normalize_params(PreprocessParams(interval_s=10)) == {"*": PreprocessParams(interval_s=10)}
    for params in (None, {"interval_s": 30}, {"vessel": {"v_max_mps": 20}}, PreprocessParams(interval_s=10)):
        once = normalize_params(params)
        assert normalize_params(once) == once  # idempotent: stages pass normalized tables on
    star = normalize_params({"*": {"interval_s": 15}, "bird": {"interval_s": 600}})
    assert set(star) == {"*", "bird"} and star["*"].interval_s == 15
    assert set(KIND_DEFAULTS) >= {"vessel", "person", "vehicle", "bus", "bird", "aircraft"}
    with pytest.raises(ValueError, match="submarine"):
        clean_partition(track(kind="submarine"))
    pts, _, _ = clean_partition(track(kind="submarine"), PreprocessParams())
    assert len(pts) > 0
    with pytest.raises(ValueError):
        PreprocessParams(interval_s=0)


def test_empty_and_invalid_rows():
    pts, q, counts = clean_partition(track(n=0))
    assert pts.empty and q.empty and counts["rows_in"] == 0
    assert str(pts["t"].dtype) == "datetime64[ns, UTC]"
    df = track(n=20)
    df.loc[3, "lon"] = np.nan
    df.loc[4, "t"] = pd.NaT
    pts, q, counts = clean_partition(df)
    check_accounting(df, counts, q)
    assert sorted(q["reason"]) == ["missing_value", "nonfinite_coord"]


def test_parity_with_movingpandas_on_real_tracks():
    """Outliers and gap-split segment ids match MovingPandas on real AIS tracks with injected spikes."""
    mpd = pytest.importorskip("movingpandas")
    import warnings

    from trajfm.data.catalog import embedded_files
    from trajfm.data.readers import read_file

    pts = read_file(embedded_files("small")[0]).points
    ids = pts["traj_id"].drop_duplicates().iloc[:4]
    df = pts[pts["traj_id"].isin(ids)].reset_index(drop=True)
    rng = np.random.default_rng(0)
    spikes = rng.choice(len(df), size=12, replace=False)
    df.loc[spikes, "lat"] += rng.uniform(0.05, 0.3, size=len(spikes))
    gap_rows = rng.choice(len(df), size=3, replace=False)
    for r in gap_rows:  # open a 1 h gap after these fixes
        later = (df["traj_id"] == df.loc[r, "traj_id"]) & (df["t"] > df.loc[r, "t"])
        df.loc[later, "t"] += pd.Timedelta(hours=1)

    params = PreprocessParams(min_points=2, min_duration_s=0.0)
    out, q, _ = clean_partition(df, params)
    ours_outliers = set(zip(q.loc[q["reason"] == "speed_outlier", "traj_id"], q.loc[q["reason"] == "speed_outlier", "t"]))

    frame = df.assign(t=df["t"].dt.tz_localize(None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tc = mpd.TrajectoryCollection(frame, traj_id_col="traj_id", t="t", x="lon", y="lat", crs="EPSG:4326")
        cleaned = mpd.OutlierCleaner(tc).clean(v_max=params.v_max_mps, units=("m", "s"))
        split = mpd.ObservationGapSplitter(cleaned).split(gap=pd.Timedelta(seconds=params.max_gap_s))
    kept = {(tr.id, pd.Timestamp(t, tz="UTC")) for tr in cleaned for t in tr.df.index}
    theirs_outliers = set(zip(df["traj_id"], df["t"])) - kept
    assert ours_outliers == theirs_outliers and len(ours_outliers) >= 10
    assert set(out["traj_id"]) == {tr.id for tr in split}
    # Resampled positions equal MovingPandas' linear interpolation at the same times.
    tr = split.trajectories[0]
    mine = out[out["traj_id"] == tr.id].iloc[::5]
    for _, row in mine.iterrows():
        p = tr.get_position_at(row["t"].tz_localize(None), method="interpolated")
        assert (p.x, p.y) == pytest.approx((row["lon"], row["lat"]), abs=1e-9)
