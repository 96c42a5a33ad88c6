"""Sampling rate is a property of the data (trajfm.data.sampling): no upsampling beyond native by
default, the demo's AIS unchanged, and the coarser views pre-training sees."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trajfm.data.clean import clean_partition
from trajfm.data.sampling import (
    NATIVE_RESAMPLING,
    coarsen_views,
    effective_interval_ns,
    native_interval_s,
    source_native_interval_s,
)

NS = 1_000_000_000


@pytest.fixture(scope="module")
def ais() -> pd.DataFrame:
    from trajfm.data.catalog import embedded_files
    from trajfm.data.readers import read_file

    return pd.concat([read_file(f).points for f in embedded_files("all")], ignore_index=True)  # the demo's


def _thin(points: pd.DataFrame, every_s: float) -> pd.DataFrame:
    """Keep, per trajectory, the first fix and then each fix at least ``every_s`` after the last kept."""
    keep = []
    for _, g in points.sort_values(["traj_id", "t"]).groupby("traj_id", observed=True, sort=False):
        t = g["t"].array.asi8
        last = None
        for i, ti in zip(g.index, t):
            if last is None or ti - last >= every_s * NS:
                keep.append(i)
                last = ti
    return points.loc[keep].reset_index(drop=True)


def _steps(points: pd.DataFrame) -> pd.Series:
    return points.groupby("traj_id", observed=True)["t"].diff().dt.total_seconds().dropna()


def test_a_720s_ais_source_is_not_interpolated_to_60s(ais):
    coarse = _thin(ais[ais["source"] == "NYHarbor_2020_12_first_week"], 720.0)
    coarse["source"] = coarse["source"].astype(str) + "_720s"
    native = source_native_interval_s(coarse)["NYHarbor_2020_12_first_week_720s"]
    assert 720 <= native < 780
    out, _, c = clean_partition(coarse)
    step = _steps(out)
    assert step.min() >= 720 and (step % 60 == 0).all()  # a multiple of the vessel default, >= native
    assert step.median() == 60 * np.ceil(native / 60)
    assert c["n_native_interval"] == c["n_trajectories"] > 0
    assert c["rows_in"] == c["rows_kept"] + c["rows_quarantined"]
    # The old fixed grid (what this replaces) interpolated 11 of every 12 points.
    old, _, _ = clean_partition(coarse, {"upsample_tolerance": float("inf")})
    assert _steps(old).median() == 60 and len(old) > 8 * len(out)


def test_the_real_30_min_danish_ships_keep_their_rate(shared_data):
    from trajfm.data.readers import read_file

    path = shared_data / "corpus" / "dma_ais_kattegat_3ships.parquet"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    pts = read_file(path).points
    out, _, c = clean_partition(pts)
    assert c["n_trajectories"] == 3 and (_steps(out) == 1800).all()
    assert c["rows_out"] == c["rows_kept"] == 144  # one output fix per real fix, none invented


def test_demo_ais_is_resampled_exactly_as_before(ais):
    """The embedded AIS (sources of 70-80 s median, tracks from ~62 to 721 s) stays on the 60 s
    vessel grid: within the 1.5x tolerance, the result equals the old fixed-interval one."""
    assert all(60 < v <= 90 for v in source_native_interval_s(ais).values())
    new, qn, cn = clean_partition(ais)
    old, qo, co = clean_partition(ais, {"upsample_tolerance": float("inf")})
    assert new.equals(old) and qn.equals(qo)
    assert cn["n_native_interval"] == 0 and cn["rows_out"] == co["rows_out"]
    # Deciding per trajectory would not have kept it: many tracks are 2-12x coarser than 60 s.
    per_track = native_interval_s(ais)
    assert (per_track > 90).sum() > 100 and per_track.max() > 700


def test_native_interval_is_the_sources_not_the_partitions(ais, tmp_path):
    """The preprocess stage measures each source over the whole input: 1 or 3 partitions give
    the same tables even when a partition holds only the coarse tracks of a source."""
    from trajfm.data.ingest import ingest
    from trajfm.data.preprocess import preprocess, read_points
    from trajfm.store import read_manifest

    fine = ais[ais["source"] == "NYHarbor_2020_12_08"]
    coarse = _thin(ais[ais["source"] == "VirginiaBeach_2020_06_04_to_06_filtered"], 300.0)
    both = pd.concat([fine, coarse], ignore_index=True)
    for col in ("kind", "source"):
        both[col] = both[col].astype(str)
    both.to_parquet(tmp_path / "mixed.parquet", index=False)
    ing = ingest([str(tmp_path / "mixed.parquet")], root=tmp_path)
    one = preprocess(ing, root=tmp_path / "a", scheduler="sync", npartitions=1)
    three = preprocess(ing, root=tmp_path / "b", scheduler="sync", npartitions=3)
    m1, m3 = read_manifest(one), read_manifest(three)
    assert m1["files"]["points"]["hash"] == m3["files"]["points"]["hash"]
    assert m1["native_interval_s"] == m3["native_interval_s"]
    assert (
        m1["native_interval_s"]["NYHarbor_2020_12_08"]
        <= 90
        < m1["native_interval_s"]["VirginiaBeach_2020_06_04_to_06_filtered"]
    )
    pts = read_points(one)
    by_src = _steps(pts).groupby(pts.loc[_steps(pts).index, "source"].astype(str)).median()
    coarse_native = m1["native_interval_s"]["VirginiaBeach_2020_06_04_to_06_filtered"]
    assert by_src["NYHarbor_2020_12_08"] == 60 and by_src["VirginiaBeach_2020_06_04_to_06_filtered"] == 60 * np.ceil(
        coarse_native / 60
    )
    assert m1["n_native_interval"] > 0 and m1["rows_in"] == m1["rows_kept"] + m1["rows_quarantined"]


def test_effective_interval_rule():
    kind = np.array([60, 60, 60, 60, 900]) * NS
    native = np.array([80, 91, 720, 0, 3526]) * NS
    got = effective_interval_ns(kind, native, np.array([1.5, 1.5, 1.5, 1.5, 1.0])) // NS
    assert got.tolist() == [60, 120, 720, 60, 3600]


@pytest.fixture
def geolife_track(shared_data) -> pd.DataFrame:
    """One real 2 s GeoLife track (user 011+) from the corpus' canonical Parquet."""
    import pyarrow.parquet as pq

    path = shared_data / "corpus" / "geolife_users011_181.parquet"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    pf = pq.ParquetFile(path)
    head = pf.read_row_group(0, columns=["traj_id", "t"]).to_pandas()
    sizes = head["traj_id"].value_counts()
    step = native_interval_s(head)
    tid = min(t for t in sizes[(sizes > 3000) & (sizes < 8000)].index if step[t] == 2.0)
    table = pq.read_table(path, filters=[("traj_id", "=", tid)])
    df = table.to_pandas()
    for col in ("kind", "source"):
        df[col] = df[col].astype("category")
    return df


def test_a_2s_geolife_track_yields_native_x2_x4_views(geolife_track):
    raw_step = native_interval_s(geolife_track).iloc[0]
    assert raw_step == 2.0
    # Pre-training's resampling: each source at its own rate (2 s here, not the person 10 s).
    native, _, c = clean_partition(geolife_track, NATIVE_RESAMPLING)
    assert c["rows_in"] == c["rows_kept"] + c["rows_quarantined"] and c["n_trajectories"] >= 1
    assert _steps(native).median() == 2.0
    views, counts = coarsen_views(native, (1, 2, 4))
    assert set(views["multiplier"]) == {1, 2, 4}
    for m in (1, 2, 4):
        v = views[views["multiplier"] == m]
        assert _steps(v).median() == 2.0 * m
        assert v["traj_id"].str.endswith(f"@x{m}").all() if m > 1 else not v["traj_id"].str.contains("@x").any()
        k = counts[m]
        assert k["rows_in"] == len(native) == k["rows_kept"] + k["rows_skipped"] + k["rows_in_short_views"]
        assert k["rows_kept"] == len(v)
    # Views are subsets of the native points: no position is invented.
    x4 = views[views["multiplier"] == 4]
    base = x4["traj_id"].str.removesuffix("@x4")
    merged = pd.DataFrame({"traj_id": base.to_numpy(), "t": x4["t"].to_numpy()}).merge(
        native[["traj_id", "t"]].astype({"traj_id": str}), on=["traj_id", "t"], how="left", indicator=True
    )
    assert (merged["_merge"] == "both").all()
    # The person default (10 s) is coarser than native: kept, never finer than the data.
    default, _, _ = clean_partition(geolife_track)
    assert _steps(default).median() == 10.0


def test_coarsen_views_drops_short_views_and_checks_input():
    t = pd.date_range("2024-01-01", periods=7, freq="60s", tz="UTC")
    pts = pd.DataFrame(
        {
            "traj_id": ["a"] * 5 + ["b"] * 2,
            "obj_id": "o",
            "t": list(t[:5]) + list(t[:2]),
            "lon": np.arange(7.0),
            "lat": 0.5,
            "kind": "bus",
            "source": "s",
        }
    )
    views, counts = coarsen_views(pts, (4, 1), min_points=2)
    assert sorted(set(views["traj_id"])) == ["a", "a@x4", "b"]
    assert counts[4] == {
        "rows_in": 7,
        "rows_kept": 2,
        "rows_skipped": 4,
        "rows_in_short_views": 1,
        "n_views": 1,
        "n_short_views": 1,
    }
    assert counts[1]["rows_kept"] == 7
    with pytest.raises(ValueError, match="distinct whole numbers >= 1"):
        coarsen_views(pts, (1, 0))


def test_gate_min_points_relaxes_only_when_a_source_used_its_own_interval():
    from trajfm.quality.params import processed_gate_params

    manifest = {"params": {"vessel": {"v_max_mps": 30.0, "min_duration_s": 600.0, "interval_s": 60.0}}}
    assert processed_gate_params(manifest, ["vessel"])["min_points"] == 10
    assert processed_gate_params({**manifest, "n_native_interval": 3}, ["vessel"])["min_points"] == 2


def test_median_step_per_source_ignores_repeats_and_other_trajectories():
    from trajfm.data.sampling import median_step_ns

    codes = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    t = np.array([0, 10, 10, 40, 1000, 1100, np.iinfo(np.int64).min, 5], dtype=np.int64)  # a repeat (0 s), a NaT
    group = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    # source 0: steps 10, 30 (trajectory 0) and 100 (trajectory 1) -> 30; source 1: only a NaT step -> 0
    assert median_step_ns(codes, t, group, 2).tolist() == [30, 0]
    assert median_step_ns(codes[:4], t[:4], group[:4], 1).tolist() == [20]  # even count: mean of the middle two
