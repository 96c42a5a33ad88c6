"""Cleaning, splitting, resampling: synthetic tracks with known defects, plus MovingPandas parity
(synthetic here; real AIS and GeoLife data in ``test_engines_agree_on_real_ais_and_geolife``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trajfm.data.clean import (
    KIND_DEFAULTS,
    KNOWN_REASONS,
    PreprocessParams,
    clean_partition,
    normalize_params,
)
from trajfm.data.clean_steps import min_time_delta, speed_outliers
from trajfm.data.schema import POINT_COLUMNS
from trajfm.data.stops import detect_stops
from trajfm.geo import haversine_m, offset_lonlat

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
    assert set(quarantine["reason"]) <= set(KNOWN_REASONS)


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


def test_speed_outliers_match_the_sequential_loop_on_random_tracks():
    """Spikes, runs, teleports and tracks that end inside a run, many tracks at once."""
    rng = np.random.default_rng(7)
    n_tracks, n = 60, 120
    t = np.tile(np.cumsum(rng.integers(5, 60, n)), n_tracks).astype(np.int64) * 10**9
    east = np.cumsum(rng.uniform(0, 400, (n_tracks, n)), axis=1)
    jumps = rng.random((n_tracks, n)) < 0.06
    east = east + np.where(jumps, rng.choice([5e3, 5e4, -2e4], size=(n_tracks, n)), 0.0)
    teleport = rng.random(n_tracks) < 0.2  # a lasting displacement from a random fix on
    east += np.where(teleport[:, None] & (np.arange(n)[None, :] > rng.integers(0, n, n_tracks)[:, None]), 3e5, 0.0)
    lon, lat = offset_lonlat(np.full(east.size, 10.0), np.full(east.size, 50.0), east.ravel(), np.zeros(east.size))
    new_group = np.zeros(n_tracks * n, dtype=bool)
    new_group[::n] = True
    v_max = np.full(len(t), 25.0)
    outlier, speed = speed_outliers(t, lon, lat, new_group, v_max)
    expected = np.zeros(len(t), dtype=bool)
    for g in range(n_tracks):
        prev = g * n
        for i in range(g * n + 1, (g + 1) * n):
            if haversine_m(lon[prev], lat[prev], lon[i], lat[i]) / ((t[i] - t[prev]) / 1e9) > 25.0:
                expected[i] = True
            else:
                prev = i
    assert (outlier == expected).all() and expected.sum() > 300
    assert (speed[outlier] > 25.0).all()


def _window_size() -> int:
    from trajfm.data import clean_steps

    return clean_steps.SEARCH_WINDOW


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
    # Issue 19.8: a kind without parameters is quarantined with its reason, not a failed stage.
    pts, q, counts = clean_partition(track(kind="submarine"))
    assert pts.empty and counts["rows_quarantined"] == counts["rows_in"] == len(q) > 0
    assert set(q["reason"]) == {"unknown_kind"} and q["detail"].str.contains("submarine").all()
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
    ours_outliers = set(
        zip(q.loc[q["reason"] == "speed_outlier", "traj_id"], q.loc[q["reason"] == "speed_outlier", "t"])
    )

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


# ----------------------------------------------------------------------------------------------
# Stops, generalization, zero-length segments, and the MovingPandas engine

STOPS = {"split_stops": True, "stop_max_diameter_m": 100.0, "stop_min_duration_s": 600.0}


def stop_track(n_move=30, n_stop=30, dt_s=50.0, jitter_m=15.0, seed=0, traj_id="src:A", stop_first=False):
    """East at 5 m/s, ``n_stop`` fixes jittering within ``jitter_m`` of one place, east again.

    With ``stop_first`` the track starts with the stop.
    """
    rng = np.random.default_rng(seed)
    moving = lambda n, lon0: track(traj_id=traj_id, n=n, dt_s=dt_s, lon0=lon0)[["lon", "lat"]]  # noqa: E731
    first = moving(0 if stop_first else n_move, -74.0)
    here_lon = first["lon"].iloc[-1] if len(first) else -74.0
    lon, lat = offset_lonlat(
        np.full(n_stop, here_lon), np.full(n_stop, 40.6), *rng.uniform(-jitter_m, jitter_m, (2, n_stop))
    )
    after = moving(n_move, float(lon[-1]))
    xy = pd.concat([first, pd.DataFrame({"lon": lon, "lat": lat}), after], ignore_index=True)
    n = len(xy)
    return xy.assign(
        traj_id=traj_id,
        obj_id=traj_id[-1],
        t=T0 + pd.to_timedelta(np.arange(n) * dt_s, unit="s"),
        kind="vessel",
        source="src",
    )[POINT_COLUMNS]


def mpd_stop_ranges(df, max_diameter, min_duration_s):
    """(first, last) times of MovingPandas' stops on a one-trajectory frame."""
    mpd = pytest.importorskip("movingpandas")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traj = mpd.Trajectory(df.assign(t=df["t"].dt.tz_localize(None)), "x", t="t", x="lon", y="lat", crs="EPSG:4326")
        ranges = mpd.TrajectoryStopDetector(traj).get_stop_time_ranges(
            max_diameter=max_diameter, min_duration=pd.Timedelta(seconds=min_duration_s)
        )
    return [(pd.Timestamp(r.t_0, tz="UTC"), pd.Timestamp(r.t_n, tz="UTC")) for r in ranges]


def test_stop_split_cuts_the_track_at_the_stop_like_movingpandas():
    df = stop_track()
    pts, q, counts = clean_partition(df, {"vessel": STOPS})
    check_accounting(df, counts, q)
    [(t_first, t_last)] = mpd_stop_ranges(df, 100.0, 600.0)
    assert set(pts["traj_id"]) == {"src:A_0", "src:A_1"} and counts["n_segments"] == 1
    # The stop's first fix ends piece 0, its last fix starts piece 1, the fixes between are "stop".
    inside = df.loc[(df["t"] > t_first) & (df["t"] < t_last), "t"]
    assert q.loc[q["reason"] == "stop", "t"].tolist() == inside.tolist() and len(inside) > 10
    assert pts.loc[pts["traj_id"] == "src:A_0", "t"].max() <= t_first
    assert pts.loc[pts["traj_id"] == "src:A_1", "t"].min() >= t_last
    # Off by default: the same track is one piece.
    pts, q, _ = clean_partition(df)
    assert set(pts["traj_id"]) == {"src:A_0"} and q.empty


def test_stop_at_the_start_leaves_a_one_fix_piece_that_is_short():
    df = stop_track(stop_first=True)
    pts, q, counts = clean_partition(df, {"vessel": STOPS})
    check_accounting(df, counts, q)
    assert set(pts["traj_id"]) == {"src:A_1"}  # piece 0 is the stop's first fix alone
    assert q.loc[q["t"] == df["t"].iloc[0], "reason"].tolist() == ["short_trajectory"]
    assert counts["quarantined_by_reason"]["stop"] > 10


def test_detect_stops_matches_movingpandas_on_noisy_walks():
    """Slow and fast phases with GPS noise: every stop of MovingPandas' detector, no other."""
    rng = np.random.default_rng(3)
    frames = []
    for k in range(4):
        n = 240
        speed = np.repeat(rng.choice([0.0, 0.05, 0.3, 2.0, 6.0], size=n // 20), 20)  # m/s, in phases
        heading = np.cumsum(rng.normal(0, 0.3, n))
        dt = rng.choice([10.0, 20.0, 30.0], size=n)
        east, north = np.cumsum(speed * dt * np.sin(heading)), np.cumsum(speed * dt * np.cos(heading))
        lon, lat = offset_lonlat(116.3 + k, 39.9, east + rng.normal(0, 8, n), north + rng.normal(0, 8, n))
        t = T0 + pd.to_timedelta(np.cumsum(dt), unit="s")
        frames.append(pd.DataFrame({"traj_id": f"w{k}", "t": t, "lon": lon, "lat": lat}))
    found = theirs = 0
    for diameter, minutes in ((60.0, 5), (150.0, 10)):
        for f in frames:
            t_ns = f["t"].to_numpy("datetime64[ns]").view(np.int64)
            first, last = detect_stops(
                t_ns,
                f["lon"].to_numpy(),
                f["lat"].to_numpy(),
                np.array([0]),
                np.array([len(f)]),
                np.array([diameter]),
                np.array([minutes * 60 * 10**9]),
            )
            mine = list(zip(f["t"].iloc[first], f["t"].iloc[last]))
            ref = mpd_stop_ranges(f, diameter, minutes * 60)
            assert mine == ref
            found, theirs = found + len(mine), theirs + len(ref)
    assert found >= 8


def test_generalization_keeps_fixes_min_time_delta_apart():
    rng = np.random.default_rng(1)
    t = np.cumsum(rng.integers(1, 30, 400)).astype(np.int64) * NS
    start, end, tol = np.array([0, 150]), np.array([150, 400]), np.array([60, 45]) * NS
    keep = min_time_delta(t, start, end, tol)
    expected = np.zeros(len(t), bool)
    for s, e, tl in zip(start, end, tol):  # MovingPandas' loop
        prev = t[s]
        expected[s] = expected[e - 1] = True
        for i in range(s, e):
            if t[i] - prev >= tl:
                expected[i], prev = True, t[i]
    assert (keep == expected).all()

    df = track(n=60, dt_s=10.0)
    pts, q, counts = clean_partition(df, {"vessel": {"generalize_s": 30.0, "min_duration_s": 60}})
    check_accounting(df, counts, q)
    assert counts["quarantined_by_reason"]["generalized"] == 60 - 21  # every third fix, and the last
    assert counts["rows_kept"] == 21 and len(pts) > 0


NS = 10**9


def test_zero_length_segment_is_short_like_movingpandas():
    moving = track(n=30)
    parked = track(n=30, t0=T0 + pd.Timedelta(hours=3), east_mps=0.0)  # 30 fixes at one position
    df = pd.concat([moving, parked], ignore_index=True)
    pts, q, counts = clean_partition(df)
    check_accounting(df, counts, q)
    assert set(pts["traj_id"]) == {"src:A_0"}
    assert (q["reason"] == "short_trajectory").sum() == 30 and q["detail"].str.contains("0 m").all()


def test_movingpandas_engine_gives_the_same_output_on_synthetic_defects():
    pytest.importorskip("movingpandas")
    a = stop_track()
    a.loc[10, "lat"] += 0.2  # a spike
    a.loc[len(a) - 40 :, "t"] += pd.Timedelta(hours=2)  # a gap
    b = stop_track(traj_id="src:B", seed=2, stop_first=True).assign(obj_id="B")
    df = pd.concat([a, b, a.iloc[[3]], track(traj_id="src:C", obj_id="C", n=1)], ignore_index=True)
    params = {"vessel": {**STOPS, "min_points": 2, "min_duration_s": 0.0, "generalize_s": 90.0}}
    fast = clean_partition(df, params)
    ref = clean_partition(df, params, engine="movingpandas")
    for _pts, q, counts in (fast, ref):
        check_accounting(df, counts, q)
    assert fast[2] == ref[2]
    pd.testing.assert_frame_equal(fast[1].drop(columns="detail"), ref[1].drop(columns="detail"))
    pd.testing.assert_frame_equal(fast[0], ref[0], check_exact=False, atol=1e-9)
    assert {"speed_outlier", "stop", "duplicate_fix", "generalized", "short_trajectory"} <= set(fast[1]["reason"])


def read_plt(path, n=None):
    """A GeoLife .plt file (6 header lines; lat, lon, 0, alt ft, days, date, time) as canonical points."""
    raw = pd.read_csv(
        path, skiprows=6, header=None, names=["lat", "lon", "zero", "alt", "days", "date", "time"], nrows=n
    )
    user = path.parent.parent.name
    return pd.DataFrame(
        {
            "traj_id": f"geolife:{user}/{path.stem}",
            "obj_id": f"geolife:{user}",
            "t": pd.to_datetime(raw["date"] + " " + raw["time"], utc=True),
            "lon": raw["lon"],
            "lat": raw["lat"],
            "kind": "person",
            "source": "geolife",
        }
    )


def test_engines_agree_on_real_ais_and_geolife(shared_data):
    """Real AIS (tracktable-data) and a real GeoLife file, spikes and a gap injected: the
    vectorized engine, the MovingPandas engine and MovingPandas' own OutlierCleaner ->
    ObservationGapSplitter -> StopSplitter chain give the same pieces; positions within 1 m."""
    mpd = pytest.importorskip("movingpandas")
    import warnings

    from trajfm.data.catalog import embedded_files
    from trajfm.data.readers import read_file

    ais = read_file(embedded_files("small")[0]).points
    ais = ais[ais["traj_id"].isin(ais["traj_id"].drop_duplicates().iloc[[0, 2, 5]])]
    plt = sorted((shared_data / "geolife" / "000" / "Trajectory").glob("*.plt"))[0]
    df = pd.concat([ais, read_plt(plt, n=700)], ignore_index=True)[POINT_COLUMNS]
    rng = np.random.default_rng(0)
    spikes = rng.choice(len(df), size=8, replace=False)
    df.loc[spikes, "lat"] += rng.uniform(0.05, 0.2, size=len(spikes))
    later = (df["traj_id"] == df["traj_id"].iloc[-1]) & (df.index > len(df) - 200)
    df.loc[later, "t"] += pd.Timedelta(hours=1)
    params = {
        "vessel": {
            "split_stops": True,
            "stop_max_diameter_m": 150.0,
            "stop_min_duration_s": 600.0,
            "interval_s": 120.0,
            "min_points": 2,
            "min_duration_s": 0.0,
        },
        "person": {
            "split_stops": True,
            "stop_max_diameter_m": 50.0,
            "stop_min_duration_s": 60.0,
            "interval_s": 30.0,
            "min_points": 2,
            "min_duration_s": 0.0,
        },
    }
    fast_pts, fast_q, fast_counts = clean_partition(df, params)
    ref_pts, ref_q, ref_counts = clean_partition(df, params, engine="movingpandas")
    check_accounting(df, fast_counts, fast_q)
    check_accounting(df, ref_counts, ref_q)
    assert fast_counts == ref_counts
    assert (
        fast_counts["quarantined_by_reason"]["stop"] > 0 and fast_counts["quarantined_by_reason"]["speed_outlier"] >= 8
    )
    assert fast_pts["traj_id"].tolist() == ref_pts["traj_id"].tolist() and (fast_pts["t"] == ref_pts["t"]).all()
    assert haversine_m(fast_pts["lon"], fast_pts["lat"], ref_pts["lon"], ref_pts["lat"]).max() < 1.0

    # MovingPandas' public chain, kind by kind: same pieces (as their grid times), same positions.
    pieces = {}
    for kind, p in normalize_params(params).items():
        sub = df[df["kind"] == kind].drop_duplicates(["traj_id", "t"])
        if sub.empty:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tc = mpd.TrajectoryCollection(
                sub.assign(t=sub["t"].dt.tz_localize(None)),
                traj_id_col="traj_id",
                t="t",
                x="lon",
                y="lat",
                crs="EPSG:4326",
            )
            tc = mpd.OutlierCleaner(tc).clean(v_max=p.v_max_mps, units=("m", "s"))
            tc = mpd.ObservationGapSplitter(tc).split(gap=pd.Timedelta(seconds=p.max_gap_s))
            tc = mpd.StopSplitter(tc).split(
                max_diameter=p.stop_max_diameter_m, min_duration=pd.Timedelta(seconds=p.stop_min_duration_s)
            )
        step = pd.Timedelta(seconds=p.interval_s)
        for tr in tc:
            grid = pd.date_range(
                pd.Timestamp(tr.get_start_time()).ceil(step), pd.Timestamp(tr.get_end_time()).floor(step), freq=step
            )
            if len(grid) >= 2:
                pieces[tuple(grid)] = tr
    ours = {tuple(g["t"].dt.tz_localize(None)): g for _, g in fast_pts.groupby("traj_id")}
    assert set(ours) == set(pieces) and len(ours) >= 6
    for times, g in list(ours.items())[::3]:
        tr = pieces[times]
        p = [tr.get_position_at(t) for t in times[::4]]
        assert haversine_m([q.x for q in p], [q.y for q in p], g["lon"].iloc[::4], g["lat"].iloc[::4]).max() < 1.0


@pytest.mark.parametrize("engine", ["vectorized", "movingpandas"])
def test_degenerate_inputs_on_both_engines(engine):
    if engine == "movingpandas":
        pytest.importorskip("movingpandas")
    cases = {
        "no valid fix": track(n=5).assign(lon=np.nan),
        "one fix": track(n=1),
        "never moves": track(n=3, east_mps=0.0),
    }
    for name, df in cases.items():
        pts, q, counts = clean_partition(
            df, {"vessel": {**STOPS, "min_points": 1, "min_duration_s": 0.0}}, engine=engine
        )
        check_accounting(df, counts, q)
        assert pts.empty and len(q) == len(df), name


def test_interpolation_of_pieces_spanning_centuries_does_not_overflow():
    """Pieces whose durations add up past int64 nanoseconds (~292 years; e.g. decades of daily
    iceberg fixes over a thousand tracks) interpolate inside their own fixes: a regression of the
    end-to-end time axis, which overflowed and put icebergs at latitude -101."""
    import numpy as np

    from trajfm.data.clean_steps import interpolate_at

    day = 86_400 * 1_000_000_000
    t = np.concatenate([np.arange(0, 150 * 365, 30) * day - 60 * 365 * day for _ in range(3)]).astype(np.int64)
    n = len(t) // 3
    start, end = np.array([0, n, 2 * n]), np.array([n, 2 * n, 3 * n])
    lat = np.concatenate([np.linspace(-70, -75, n), np.linspace(-60, -61, n), np.linspace(-50, -52, n)])
    lon = np.concatenate([np.linspace(-40, -42, n), np.linspace(10, 11, n), np.linspace(100, 99, n)])
    piece = np.repeat(np.arange(3), 5)
    grid_t = np.tile(t[:n][[1, 10, 100, 500, n - 1]] + day, 3)
    grid_t[4::5] = t[n - 1]  # the last fix itself
    out_lon, out_lat = interpolate_at(t, lon, lat, start, end, piece, grid_t)
    for p, (lo, hi) in enumerate([(-75, -70), (-61, -60), (-52, -50)]):
        assert ((out_lat[piece == p] >= lo) & (out_lat[piece == p] <= hi)).all(), out_lat[piece == p]
    assert out_lat[4] == -75.0 and out_lon[14] == 99.0  # at a piece's last fix: that fix
