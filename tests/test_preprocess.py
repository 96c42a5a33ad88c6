"""Preprocess with Dask: same content hash on the sync scheduler and a 2-worker LocalCluster."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from trajfm.data.catalog import embedded_files
from trajfm.data.clean import PreprocessParams
from trajfm.data.ingest import ingest
from trajfm.data.preprocess import preprocess, read_preprocess_counts
from trajfm.data.schema import POINT_COLUMNS


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("ingest_root")
    return ingest(embedded_files("small"), root=root)


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


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
    assert m["dask"]["scheduler"] == "sync"
    assert m["params"]["vessel"]["interval_s"] == 60.0
    assert read_preprocess_counts(out)["rows_out"] == m["rows_out"]

    pts = pd.read_parquet(out / "points.parquet")
    assert list(pts.columns) == POINT_COLUMNS
    assert str(pts["t"].dtype) == "datetime64[ns, UTC]"
    pd.testing.assert_frame_equal(pts, pts.sort_values(["traj_id", "t"], ignore_index=True))
    assert pts.groupby("traj_id")["t"].diff().dropna().eq(pd.Timedelta(seconds=60)).all()
    assert pts["traj_id"].str.match(r"^NYHarbor_2020_12_08:[0-9a-f-]+_\d+$").all()
    assert m["n_trajectories"] == pts["traj_id"].nunique()

    again = preprocess(ingested, root=tmp_path / "a", scheduler="sync")
    assert again == out  # complete directory reused


def test_preprocess_same_content_hash_on_sync_and_local_cluster(ingested, tmp_path):
    sync = manifest(preprocess(ingested, root=tmp_path / "sync", scheduler="sync", npartitions=3))
    cluster = manifest(preprocess(ingested, root=tmp_path / "cluster", scheduler="distributed", n_workers=2))
    assert cluster["dask"]["scheduler"] == "distributed-local" and cluster["dask"]["n_workers"] == 2
    assert sync["key"] == cluster["key"]
    assert sync["files"] == cluster["files"]  # identical content hashes of points and quarantine
    for k in ("rows_in", "rows_kept", "rows_quarantined", "quarantined_by_reason", "rows_out"):
        assert sync[k] == cluster[k]


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
    with pytest.raises(ValueError):
        preprocess(ingested, root=tmp_path / "p", scheduler="nope")
