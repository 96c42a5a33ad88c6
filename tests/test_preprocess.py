"""Preprocess with Dask: accounting, layout, cache key, engines, and the same content hash whatever
the partitioning (on the sync scheduler here; LocalCluster and a CLI-started cluster in
``test_preprocess_cluster.py``)."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trajfm.data.clean import PreprocessParams
from trajfm.data.preprocess import preprocess, read_points, read_preprocess_counts
from trajfm.data.schema import POINT_COLUMNS
from trajfm.geo import haversine_m
from trajfm.store import StageWriter, frame_hash


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


def ingest_like(root, name, df, row_group_size=None):
    """An ingest-shaped stage directory holding ``df`` (written with the given row groups)."""
    with StageWriter(root, "ingest", name) as w:
        pq.write_table(
            pa.Table.from_pandas(df, preserve_index=False), w.path / "points.parquet", row_group_size=row_group_size
        )
        w.manifest["files"]["points"] = {"rows": len(df), "hash": frame_hash(df)}
        w.manifest.update(rows_kept=len(df))
    return w.final


def test_preprocess_sync_accounting_and_output(ingested, tmp_path):
    out = preprocess(ingested, root=tmp_path / "a", scheduler="sync")
    m = manifest(out)
    ingest_m = manifest(ingested)
    assert out.parent.name == "preprocess"
    assert m["rows_in"] == ingest_m["rows_kept"] == 9091
    assert m["rows_in"] == m["rows_kept"] + m["rows_quarantined"]
    assert m["rows_quarantined"] == sum(m["quarantined_by_reason"].values())
    assert m["rows_out"] == m["files"]["points"]["rows"] > 0
    assert m["files"]["quarantine"]["rows"] == m["rows_quarantined"]
    assert m["dask"]["scheduler"] == "sync" and m["dask"]["partition_by"] == "range"
    assert m["engine"] == "vectorized"
    assert m["params"]["vessel"]["interval_s"] == 60.0
    assert read_preprocess_counts(out)["rows_out"] == m["rows_out"]

    pts = pd.read_parquet(out / "points.parquet")  # a folder of part files reads as one table
    pd.testing.assert_frame_equal(pts, read_points(out))
    assert frame_hash(pts) == m["files"]["points"]["hash"]
    assert frame_hash(read_points(out, "quarantine")) == m["files"]["quarantine"]["hash"]
    assert list(pts.columns) == POINT_COLUMNS
    assert str(pts["t"].dtype) == "datetime64[ns, UTC]"
    pd.testing.assert_frame_equal(pts, pts.sort_values(["traj_id", "t"], ignore_index=True))
    assert pts.groupby("traj_id")["t"].diff().dropna().eq(pd.Timedelta(seconds=60)).all()
    assert pts["traj_id"].str.match(r"^NYHarbor_2020_12_08:[0-9a-f-]+_\d+$").all()
    assert m["n_trajectories"] == pts["traj_id"].nunique()

    again = preprocess(ingested, root=tmp_path / "a", scheduler="sync")
    assert again == out  # complete directory reused


def test_partitions_and_row_groups_never_change_the_tables(ingested, tmp_path):
    """Row groups smaller than a trajectory, partitions of every size, and an unsorted input
    (which falls back to the shuffle by mover): one content hash."""
    df = pd.read_parquet(ingested / "points.parquet")
    base = manifest(preprocess(ingested, root=tmp_path / "base", scheduler="sync"))["files"]
    small_groups = ingest_like(tmp_path / "in", "groups", df, row_group_size=97)
    for parts in (1, 4, 13):
        m = manifest(preprocess(small_groups, root=tmp_path / f"p{parts}", scheduler="sync", npartitions=parts))
        assert m["files"] == base and m["dask"]["partition_by"] == "range"
        assert m["rows_in"] == len(df)
    shuffled = ingest_like(tmp_path / "in", "shuffled", df.sample(frac=1.0, random_state=0).reset_index(drop=True))
    m = manifest(preprocess(shuffled, root=tmp_path / "shuffled", scheduler="sync", npartitions=3))
    assert m["dask"]["partition_by"] == "mover" and m["files"] == base
    m = manifest(
        preprocess(small_groups, root=tmp_path / "movers", scheduler="sync", npartitions=2, partition_by="mover")
    )
    assert m["dask"]["partition_by"] == "mover" and m["files"] == base


def test_preprocess_params_change_the_key_and_result(ingested, tmp_path):
    base = preprocess(ingested, root=tmp_path / "p", scheduler="sync")
    coarse = preprocess(ingested, root=tmp_path / "p", scheduler="sync", params={"interval_s": 300})
    assert base != coarse
    pts = pd.read_parquet(coarse / "points.parquet")
    assert pts.groupby("traj_id")["t"].diff().dropna().eq(pd.Timedelta(seconds=300)).all()
    single = preprocess(ingested, root=tmp_path / "p", scheduler="sync", params=PreprocessParams(interval_s=120))
    assert manifest(single)["params"] == {"*": PreprocessParams(interval_s=120).to_dict()}
    pts = pd.read_parquet(single / "points.parquet")
    assert pts.groupby("traj_id")["t"].diff().dropna().eq(pd.Timedelta(seconds=120)).all()
    stops = preprocess(ingested, root=tmp_path / "p", scheduler="sync", params={"split_stops": True})
    m = manifest(stops)
    assert m["params"]["vessel"]["split_stops"] is True
    assert m["rows_in"] == m["rows_kept"] + m["rows_quarantined"]
    with pytest.raises(ValueError):
        preprocess(ingested, root=tmp_path / "p", scheduler="nope")
    with pytest.raises(ValueError):
        preprocess(ingested, root=tmp_path / "p", engine="nope")


def test_preprocess_with_the_movingpandas_engine(ingested, tmp_path):
    pytest.importorskip("movingpandas")
    df = pd.read_parquet(ingested / "points.parquet")
    df = df[df["traj_id"].isin(df["traj_id"].drop_duplicates().iloc[:3])].reset_index(drop=True)
    src = ingest_like(tmp_path / "in", "three", df)
    fast = preprocess(src, root=tmp_path / "out", scheduler="sync")
    ref = preprocess(src, root=tmp_path / "out", scheduler="sync", engine="movingpandas")
    assert fast != ref and manifest(ref)["engine"] == "movingpandas"
    a, b = read_points(fast), read_points(ref)
    assert a["traj_id"].tolist() == b["traj_id"].tolist() and (a["t"] == b["t"]).all() and len(a) > 100
    assert haversine_m(a["lon"], a["lat"], b["lon"], b["lat"]).max() < 1.0
    for k in ("rows_in", "rows_kept", "quarantined_by_reason", "rows_out"):
        assert manifest(fast)[k] == manifest(ref)[k]


def test_parts_read_back_as_one_table_when_some_are_empty(tmp_path):
    """Quarantine rows only in a later partition (the first part file is empty), kinds as plain
    strings rather than categories: the folders still read back as the hashed tables."""
    import numpy as np

    def track(traj_id, obj_id, n):  # east at ~5 m/s, a fix every 50 s
        t = pd.Timestamp("2020-12-08 00:00:10", tz="UTC") + pd.to_timedelta(np.arange(n) * 50.0, unit="s")
        lon = -74.0 + np.arange(n) * 0.003
        return pd.DataFrame(
            {"traj_id": traj_id, "obj_id": obj_id, "t": t, "lon": lon, "lat": 40.6, "kind": "vessel", "source": "src"}
        )

    frames = [track(f"src:{c}", c, 40) for c in "ABCDEF"]
    frames[4] = pd.concat([frames[4], frames[4].iloc[[3]]], ignore_index=True)  # one duplicate, in E
    df = pd.concat(frames, ignore_index=True).assign(sog=1.0)
    src = ingest_like(tmp_path / "in", "six", df, row_group_size=30)
    out = preprocess(src, root=tmp_path / "out", scheduler="sync", npartitions=6)
    m = manifest(out)
    files = sorted(p.name for p in (out / "quarantine.parquet").iterdir())
    assert len(files) == 2 and files[0] == "part-00000.parquet"  # the empty first part, and E's
    for table in ("points", "quarantine"):
        frame = read_points(out, table)
        assert frame_hash(frame) == m["files"][table]["hash"] and len(frame) == m["files"][table]["rows"]
        assert str(frame["kind"].dtype) == "category"
    assert read_points(out, "quarantine")["reason"].tolist() == ["duplicate_fix"]


def test_prefix_ids_and_tied_quarantine_rows_keep_one_table_order(tmp_path):
    """'src:A' split into pieces _0.._3 and a trajectory named 'src:A_1': as text 'src:A_1_0' sorts
    before 'src:A_2', so two range partitions would not be in table order -> the stage notices
    and falls back to the shuffle by mover; a duplicate of a fix in a too-short piece gives two
    identical quarantine rows with different reasons. One content hash either way."""
    import numpy as np

    def piece(traj_id, start_h, n):
        t = (
            pd.Timestamp("2020-12-08", tz="UTC")
            + pd.Timedelta(hours=start_h)
            + pd.to_timedelta(np.arange(n) * 50.0, unit="s")
        )
        return pd.DataFrame(
            {
                "traj_id": traj_id,
                "obj_id": traj_id,
                "t": t,
                "lon": -74.0 + np.arange(n) * 0.003,
                "lat": 40.6,
                "kind": "vessel",
                "source": "src",
            }
        )

    a = pd.concat(
        [piece("src:A", h, 40) for h in (0, 3, 6)] + [piece("src:A", 9, 4)], ignore_index=True
    )  # 4 gap pieces
    a = pd.concat([a, a.iloc[[len(a) - 2]]], ignore_index=True)  # duplicate of a fix of the short last piece
    b = piece("src:A_1", 0, 120)
    df = pd.concat([a, b], ignore_index=True).sort_values(["traj_id", "t"], kind="stable", ignore_index=True)
    src = ingest_like(tmp_path / "in", "prefix", df)
    one = manifest(preprocess(src, root=tmp_path / "one", scheduler="sync", npartitions=1))
    two = manifest(preprocess(src, root=tmp_path / "two", scheduler="sync", npartitions=2))
    assert one["dask"]["partition_by"] == "range" and two["dask"]["partition_by"] == "mover"
    assert one["files"] == two["files"]
    q = read_points(tmp_path / "two" / "preprocess" / two["key"], "quarantine")
    assert sorted(q["reason"]) == [
        "duplicate_fix",
        "short_trajectory",
        "short_trajectory",
        "short_trajectory",
        "short_trajectory",
    ]
